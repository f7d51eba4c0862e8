// One rank that sums MIB MiB of float32 in a loop over the ring backend, configured by the
// environment like any collie program (MLX_RANK + MLX_HOSTFILE). It prints "ready" after the
// first sum; on failure it prints the error and exits 3. tcp/kill_test.py kills one of them.
//   worker big_sum MIB
#include "collie/collie.hpp"

#include <cstdio>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  const std::size_t mib = argc > 2 ? std::stoul(argv[2]) : 256;
  try {
    collie::Group world = collie::init("ring", /*strict=*/true);
    std::vector<float> x(mib * (std::size_t{1} << 20) / sizeof(float), 1.0f);
    for (int round = 0;; ++round) {
      std::error_code ec;
      world.all_sum(x, ec);
      if (ec) {
        std::fprintf(stderr, "rank %d: %s\n", world.rank(), collie::Group::last_error().c_str());
        return 3;
      }
      if (round == 0) {
        std::printf("rank %d: ready\n", world.rank());
        std::fflush(stdout);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
}
