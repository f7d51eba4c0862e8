// The program every consumer project builds: it checks that what a build system hands to a user's
// translation unit (include path, C++20, Asio, nlohmann-json, -pthread and, in separate mode,
// COLLIE_SEPARATE_COMPILATION plus the compiled library) is enough to start a group and move data.
//
// Each rank sums a vector with all the others, gathers every rank's number, compares both with
// what they must be, and prints one line:
//   consumer rank R of N (MODE, collie X.Y.Z): ok
// where MODE is "separate" when COLLIE_SEPARATE_COMPILATION is defined and "header-only" otherwise.
// A wrong value prints "WRONG: ..." instead of "ok" and exits with 1; a collie error exits with 2.
// Run it with scripts/run_local.sh N; started alone it is a group of one rank and still checks.
#include <collie/collie.hpp>
#include <collie/version.hpp>

#include <cstdio>
#include <string>
#include <vector>

#ifdef COLLIE_SEPARATE_COMPILATION
static constexpr const char* mode = "separate";
#else
static constexpr const char* mode = "header-only";
#endif

int main() {
  try {
    collie::Group world = collie::init();
    const int rank = world.rank();
    const int size = world.size();
    std::string wrong;

    // all_sum in place: element i of rank r holds r + i, so the sum is size * i + size*(size-1)/2.
    std::vector<int> x(7);
    for (int i = 0; i < static_cast<int>(x.size()); ++i) x[i] = rank + i;
    world.all_sum(x);
    for (int i = 0; i < static_cast<int>(x.size()); ++i) {
      const int expected = size * i + size * (size - 1) / 2;
      if (x[i] != expected) {
        wrong += " all_sum[" + std::to_string(i) + "]=" + std::to_string(x[i]) +
                 " (expected " + std::to_string(expected) + ")";
      }
    }

    // all_gather, rank-major: rank r contributes {r, 10 * r}.
    std::vector<float> all(2 * static_cast<std::size_t>(size), -1.0f);
    world.all_gather(std::vector<float>{float(rank), 10.0f * float(rank)}, all);
    for (int r = 0; r < size; ++r) {
      if (all[2 * r] != float(r) || all[2 * r + 1] != 10.0f * float(r)) {
        wrong += " all_gather[" + std::to_string(r) + "]=" + std::to_string(all[2 * r]) + "," +
                 std::to_string(all[2 * r + 1]);
      }
    }

    std::printf("consumer rank %d of %d (%s, collie %d.%d.%d): %s\n", rank, size, mode,
                COLLIE_VERSION_MAJOR, COLLIE_VERSION_MINOR, COLLIE_VERSION_PATCH,
                wrong.empty() ? "ok" : ("WRONG:" + wrong).c_str());
    return wrong.empty() ? 0 : 1;
  } catch (const collie::Error& e) {
    std::fprintf(stderr, "consumer: %s\n", e.what());
    return 2;
  }
}
