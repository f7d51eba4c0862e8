// Linked into every binary that uses @openmpi//:mpi. OpenMPI, its plugins and
// hwloc/libevent keep allocations alive past MPI_Finalize by design, which
// LeakSanitizer (bazel test --config=asan) would otherwise report as leaks.
// The hooks are only consulted by the sanitizer runtimes; in other builds they
// are unused.

extern "C" {

// Plugins are dlclose()d before the leak report, so only a full (slow) unwind
// reaches a frame inside libmpi/libopen-* that the suppressions can match.
__attribute__((visibility("default"), used)) const char* __asan_default_options() {
    return "fast_unwind_on_malloc=0";
}

__attribute__((visibility("default"), used)) const char* __lsan_default_options() {
    return "print_suppressions=0";
}

__attribute__((visibility("default"), used)) const char* __lsan_default_suppressions() {
    return "leak:libmpi.so\n"
           "leak:libopen-pal.so\n"
           "leak:libopen-rte.so\n"
           "leak:libhwloc.so\n"
           "leak:libevent\n"
           "leak:libpmix.so\n";
}

}  // extern "C"
