// Micro-benchmarks of the reduction kernels (core/reduce.hpp) against memcpy of the same bytes,
// in cache and out of cache, ending with a table of every kernel's speed relative to memcpy's.
//
// Kernels, in the two shapes the algorithms call them (through `Reduction`, core/call.hpp):
//   into     a[i] = op(a[i], b[i])   reduce_into: the ring all-reduce folding a received segment
//   combine  c[i] = op(a[i], b[i])   reduce_many, two sources: the ring reduce-scatter
// for each element type and each built-in op, and memcpy(c, a, N) as the reference.
//
// Bytes: every benchmark, memcpy included, counts bytes = elements × sizeof(E), the size of ONE
// buffer, and memcpy copies one buffer of that size. A kernel's bytes/s over memcpy's bytes/s at
// the same size is therefore the inverse ratio of their times: 1.00 means "as fast as copying
// the data once". The memory traffic behind those bytes differs: memcpy reads N and writes N
// (glibc streams the writes of large copies past the cache), `into` reads 2N and writes N back
// to lines it has just read, `combine` reads 2N and writes N to lines it must fetch first, so
// out of cache `combine` moves a third stream that `into` and memcpy do not. Rates are per CPU
// second (Google Benchmark's default), which leaves out time spent descheduled on a shared
// machine; the real time is printed next to it.
//
// Sizes: 32 KiB per buffer (64-96 KiB per kernel call: resident in L2 after the first pass) and
// 64 MiB per buffer (128-192 MiB: beyond any last-level cache here). Buffers are allocated,
// filled and touched once per size, before any timing, and reused by every benchmark.
//
// Kernels run as the algorithms get them: the compilation reduce.hpp selects for this CPU
// (AVX2 + F16C on x86-64 where present). --isa=portable or --isa=x86-avx2 forces one, to
// compare them on one machine; the chosen one is printed in the context and above the table.
//
//   bazel build --config=bench //bench:kernels
//   bazel-bin/bench/kernels --benchmark_min_time=0.2 --benchmark_repetitions=5
//       --benchmark_report_aggregates_only=true    # the table uses the medians
//   bazel-bin/bench/kernels --benchmark_filter='float16|memcpy' --isa=portable
#include <benchmark/benchmark.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "collie/core/element.hpp"
#include "collie/core/ops.hpp"
#include "collie/core/reduce.hpp"

namespace {

constexpr std::size_t in_cache_bytes = std::size_t{32} << 10;
constexpr std::size_t out_of_cache_bytes = std::size_t{64} << 20;

std::string size_label(std::size_t bytes) {
  return bytes >= (std::size_t{1} << 20) ? std::to_string(bytes >> 20) + "MiB"
                                         : std::to_string(bytes >> 10) + "KiB";
}

// ---------------------------------------------------------------------------------------------
// Buffers

struct FreeDeleter {
  void operator()(std::byte* p) const noexcept { std::free(p); }
};

// Three buffers per size (a, b, c), shared by every benchmark of that size. First touch of fresh
// pages costs far more than the kernels themselves (about 10 µs per 4 KiB page here), so it must
// happen once, outside any timed region; transparent huge pages, where granted, make that touch
// and the later TLB misses cheaper.
struct Buffers {
  std::unique_ptr<std::byte, FreeDeleter> data[3];
  // What a and b were last filled with, so a benchmark refills only when that changes (filling
  // 64 MiB of float16 takes longer than a timed pass, and the benchmark function runs several
  // times per benchmark while the iteration count is calibrated).
  collie::DataType filled_type{};
  bool filled_with_units = false;
  bool filled = false;
};

Buffers& buffers_of(std::size_t bytes) {
  static std::map<std::size_t, Buffers> all;
  Buffers& set = all[bytes];
  if (set.data[0] == nullptr) {
    constexpr std::size_t huge_page = std::size_t{2} << 20;
    const std::size_t rounded = (bytes + huge_page - 1) / huge_page * huge_page;
    for (auto& buffer : set.data) {
      void* memory = std::aligned_alloc(huge_page, rounded);
      if (memory == nullptr) throw std::bad_alloc();
      ::madvise(memory, rounded, MADV_HUGEPAGE);  // advice only: failure is harmless
      std::memset(memory, 0, rounded);
      buffer.reset(static_cast<std::byte*>(memory));
    }
  }
  return set;
}

// Deterministic, well-spread sample values. Floating values are multiples of 2^-8 in [-1, 1)
// (or ±1 for products, `units`), so that sums, products, maxima and minima repeated in place
// for millions of iterations never reach subnormals, whose slow paths on some CPUs would
// measure the data instead of the kernel (float16 sums do reach Inf, which costs nothing
// extra, and never NaN: each element keeps adding a value of one sign). Integers use all
// their bits and wrap.
template <class E>
E sample(std::size_t i, bool units) {
  const std::uint64_t hash = (std::uint64_t{i} + 1) * 0x9e37'79b9'7f4a'7c15u;
  const auto top = static_cast<std::uint32_t>(hash >> 32);
  if constexpr (std::is_integral_v<E>) {
    if constexpr (std::is_same_v<E, bool>) {
      return (top & 1u) != 0;
    } else {
      return static_cast<E>(hash >> 8);
    }
  } else {
    const float value = units ? ((top & 1u) != 0 ? 1.0f : -1.0f)
                              : static_cast<float>(static_cast<int>(top % 512u) - 256) / 256.0f;
    return E(value);
  }
}

// Buffers a, b, c of `bytes` bytes each, with a and b holding samples of E.
template <class E, class Op>
Buffers& prepare(std::size_t bytes) {
  Buffers& set = buffers_of(bytes);
  const bool units = std::is_same_v<Op, collie::Prod>;
  if (!set.filled || set.filled_type != collie::data_type_v<E> || set.filled_with_units != units) {
    const std::size_t count = bytes / sizeof(E);
    for (int k = 0; k < 2; ++k) {
      E* values = reinterpret_cast<E*>(set.data[k].get());
      for (std::size_t i = 0; i < count; ++i) values[i] = sample<E>(i + k * count, units);
    }
    set.filled = true;
    set.filled_type = collie::data_type_v<E>;
    set.filled_with_units = units;
  }
  return set;
}

// ---------------------------------------------------------------------------------------------
// Benchmarks

// Which compilation of the kernels a benchmark runs: the one reduce_into/reduce_many select
// for this CPU (what the algorithms get), or one instruction set forced (--isa).
enum class Path { selected, portable, x86_avx2 };

template <Path path, class E, class Op>
void run_into(E* a, const E* b, std::size_t count) {
  if constexpr (path == Path::selected) {
    collie::detail::reduce_into(a, b, count, Op{});
  } else {
    constexpr auto isa =
        path == Path::portable ? collie::detail::Isa::portable : collie::detail::Isa::x86_avx2;
    collie::detail::reduce_into_on<isa>(a, b, count, Op{});
  }
}

template <Path path, class E, class Op>
void run_many(E* c, const E* const* sources, std::size_t count) {
  if constexpr (path == Path::selected) {
    collie::detail::reduce_many(c, sources, 2, count, Op{});
  } else {
    constexpr auto isa =
        path == Path::portable ? collie::detail::Isa::portable : collie::detail::Isa::x86_avx2;
    collie::detail::reduce_many_on<isa>(c, sources, 2, count, Op{});
  }
}

template <Path path, class E, class Op>
void into(benchmark::State& state, std::size_t bytes) {
  Buffers& set = prepare<E, Op>(bytes);
  E* a = reinterpret_cast<E*>(set.data[0].get());
  const E* b = reinterpret_cast<const E*>(set.data[1].get());
  const std::size_t count = bytes / sizeof(E);
  for (auto _ : state) {
    run_into<path, E, Op>(a, b, count);
    benchmark::DoNotOptimize(a);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes));
}

template <Path path, class E, class Op>
void combine(benchmark::State& state, std::size_t bytes) {
  Buffers& set = prepare<E, Op>(bytes);
  const E* sources[2] = {reinterpret_cast<const E*>(set.data[0].get()),
                         reinterpret_cast<const E*>(set.data[1].get())};
  E* c = reinterpret_cast<E*>(set.data[2].get());
  const std::size_t count = bytes / sizeof(E);
  for (auto _ : state) {
    run_many<path, E, Op>(c, sources, count);
    benchmark::DoNotOptimize(c);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes));
}

void copy(benchmark::State& state, std::size_t bytes) {
  Buffers& set = buffers_of(bytes);
  const std::byte* a = set.data[0].get();
  std::byte* c = set.data[2].get();
  for (auto _ : state) {
    std::memcpy(c, a, bytes);
    benchmark::DoNotOptimize(c);
    benchmark::ClobberMemory();
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * bytes));
}

// ---------------------------------------------------------------------------------------------
// Registration and the final table

struct Row {
  std::string type;
  std::string op;
};

struct Registry {
  Path path = Path::selected;
  std::vector<Row> rows;           // table order
  std::vector<std::size_t> sizes;  // table columns
  static constexpr const char* kernels[] = {"into", "combine"};
};

std::string name_of(std::string_view kernel, std::string_view type, std::string_view op,
                    std::size_t bytes) {
  std::string name(kernel);
  if (!type.empty()) name.append("/").append(type).append("/").append(op);
  return name.append("/").append(size_label(bytes));
}

template <Path path, class E, class Op>
void register_kernels(const Registry& registry) {
  const std::string_view type = collie::name(collie::data_type_v<E>);
  for (std::size_t bytes : registry.sizes) {
    benchmark::RegisterBenchmark(name_of("into", type, Op::name, bytes).c_str(),
                                 into<path, E, Op>, bytes);
    benchmark::RegisterBenchmark(name_of("combine", type, Op::name, bytes).c_str(),
                                 combine<path, E, Op>, bytes);
  }
}

template <class E, class Op>
void register_kernels(Registry& registry) {
  registry.rows.push_back({std::string(collie::name(collie::data_type_v<E>)),
                           std::string(Op::name)});
  switch (registry.path) {
    case Path::selected: register_kernels<Path::selected, E, Op>(registry); break;
    case Path::portable: register_kernels<Path::portable, E, Op>(registry); break;
    case Path::x86_avx2: register_kernels<Path::x86_avx2, E, Op>(registry); break;
  }
}

template <class E>
void register_type(Registry& registry) {
  register_kernels<E, collie::Sum>(registry);
  register_kernels<E, collie::Prod>(registry);
  register_kernels<E, collie::Max>(registry);
  register_kernels<E, collie::Min>(registry);
}

// Prints as the console reporter does, and keeps every run's bytes/s for the table: the median
// aggregate where repetitions produced one, else the median of the runs reported.
class TableReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    ConsoleReporter::ReportRuns(runs);
    for (const Run& run : runs) {
      if (run.error_occurred) continue;
      const auto counter = run.counters.find("bytes_per_second");
      if (counter == run.counters.end()) continue;
      Result& result = results_[run.run_name.function_name];
      if (run.run_type == Run::RT_Aggregate) {
        if (run.aggregate_name == "median") result.median = counter->second.value;
      } else {
        result.samples.push_back(counter->second.value);
      }
    }
  }

  // Bytes/s of the named benchmark, or 0 when it did not run.
  double bytes_per_second(const std::string& name) const {
    const auto found = results_.find(name);
    if (found == results_.end()) return 0;
    if (found->second.median > 0) return found->second.median;
    std::vector<double> samples = found->second.samples;
    if (samples.empty()) return 0;
    std::nth_element(samples.begin(), samples.begin() + samples.size() / 2, samples.end());
    return samples[samples.size() / 2];
  }

 private:
  struct Result {
    double median = 0;
    std::vector<double> samples;
  };
  std::map<std::string, Result> results_;
};

void print_table(const Registry& registry, const TableReporter& reporter,
                 collie::detail::Isa isa) {
  std::vector<std::size_t> sizes;
  for (std::size_t bytes : registry.sizes) {
    if (reporter.bytes_per_second(name_of("memcpy", "", "", bytes)) > 0) sizes.push_back(bytes);
  }
  if (sizes.empty()) return;  // the filter left out memcpy: nothing to compare with
  std::printf("\nKernels (%s) relative to memcpy of the same bytes (1.00 = as fast as copying "
              "one buffer)\n",
              std::string(collie::detail::name(isa)).c_str());
  std::printf("%-10s %-5s", "type", "op");
  for (std::size_t bytes : sizes) {
    const std::string label = size_label(bytes) + (bytes <= in_cache_bytes ? " (in cache)" : "");
    std::printf(" | %-18s", label.c_str());
  }
  std::printf("\n%-16s", "");
  for (std::size_t k = 0; k < sizes.size(); ++k) std::printf(" | %8s %9s", "into", "combine");
  std::printf("\n");
  for (const Row& row : registry.rows) {
    std::string line;
    bool any = false;
    char cell[64];
    std::snprintf(cell, sizeof cell, "%-10s %-5s", row.type.c_str(), row.op.c_str());
    line = cell;
    for (std::size_t bytes : sizes) {
      const double reference = reporter.bytes_per_second(name_of("memcpy", "", "", bytes));
      line += " |";
      for (const char* kernel : Registry::kernels) {
        const double rate = reporter.bytes_per_second(name_of(kernel, row.type, row.op, bytes));
        any = any || rate > 0;
        if (rate > 0) {
          std::snprintf(cell, sizeof cell, " %*.2f", kernel[0] == 'i' ? 8 : 9, rate / reference);
        } else {
          std::snprintf(cell, sizeof cell, " %*s", kernel[0] == 'i' ? 8 : 9, "-");
        }
        line += cell;
      }
    }
    if (any) std::printf("%s\n", line.c_str());
  }
  std::printf("%-16s", "memcpy GB/s");
  for (std::size_t bytes : sizes) {
    std::printf(" | %18.1f", reporter.bytes_per_second(name_of("memcpy", "", "", bytes)) / 1e9);
  }
  std::printf("\n");
}

// The kernel targets, on the all-reduce's kernel (`into`, run on every received segment) out of
// cache: float32 sum at 0.80 of memcpy or better, the 16-bit floats at 0.50 (they widen to
// float, compute and round back every element). `combine` is not held to them: out of cache it
// moves a third stream that memcpy does not (see the top of this file).
void print_targets(const TableReporter& reporter) {
  const double reference = reporter.bytes_per_second(name_of("memcpy", "", "", out_of_cache_bytes));
  if (reference <= 0) return;
  struct Target {
    const char* type;
    double at_least;
  };
  bool printed_header = false;
  for (const Target& target : {Target{"float32", 0.80}, Target{"float16", 0.50},
                               Target{"bfloat16", 0.50}}) {
    const double rate =
        reporter.bytes_per_second(name_of("into", target.type, "sum", out_of_cache_bytes));
    if (rate <= 0) continue;
    if (!printed_header) {
      std::printf("\nTargets (sum, into, %s):\n", size_label(out_of_cache_bytes).c_str());
      printed_header = true;
    }
    const double ratio = rate / reference;
    std::printf("%s %-8s %.2f of memcpy, target >= %.2f\n",
                ratio >= target.at_least ? "PASS" : "FAIL", target.type, ratio, target.at_least);
  }
}

// Takes --isa=portable or --isa=x86-avx2 out of the command line (Google Benchmark rejects
// flags it does not know). Returns false, having said why, for a value this CPU cannot run.
bool take_isa_flag(int& argc, char** argv, Path& path) {
  constexpr std::string_view flag = "--isa=";
  int kept = 1;
  bool ok = true;
  for (int i = 1; i < argc; ++i) {
    const std::string_view argument = argv[i];
    if (argument.substr(0, flag.size()) != flag) {
      argv[kept++] = argv[i];
      continue;
    }
    const std::string_view value = argument.substr(flag.size());
    if (value == collie::detail::name(collie::detail::Isa::portable)) {
      path = Path::portable;
    } else if (value == collie::detail::name(collie::detail::Isa::x86_avx2) &&
               collie::detail::isa_supported(collie::detail::Isa::x86_avx2)) {
      path = Path::x86_avx2;
    } else {
      std::fprintf(stderr, "kernels: --isa=%.*s: expected portable%s\n",
                   static_cast<int>(value.size()), value.data(),
                   collie::detail::isa_supported(collie::detail::Isa::x86_avx2)
                       ? " or x86-avx2"
                       : " (no AVX2 and F16C kernels on this machine)");
      ok = false;
    }
  }
  argc = kept;
  argv[argc] = nullptr;
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  Registry registry;
  if (!take_isa_flag(argc, argv, registry.path)) return 1;
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  const collie::detail::Isa isa = registry.path == Path::selected
                                      ? collie::detail::selected_isa()
                                  : registry.path == Path::portable
                                      ? collie::detail::Isa::portable
                                      : collie::detail::Isa::x86_avx2;
  benchmark::AddCustomContext("collie_kernels",
                              std::string(collie::detail::name(isa)) +
                                  (registry.path == Path::selected ? " (selected)" : " (forced)"));
  registry.sizes = {in_cache_bytes, out_of_cache_bytes};
  for (std::size_t bytes : registry.sizes) {
    benchmark::RegisterBenchmark(name_of("memcpy", "", "", bytes).c_str(), copy, bytes);
  }
  register_type<float>(registry);
  register_type<double>(registry);
  register_type<collie::float16>(registry);
  register_type<collie::bfloat16>(registry);
  register_type<std::int8_t>(registry);
  register_type<std::int32_t>(registry);
  register_type<std::int64_t>(registry);

  TableReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  print_table(registry, reporter, isa);
  print_targets(reporter);
  benchmark::Shutdown();
  return 0;
}
