// Example 01: the first program of MLX's distributed guide — every rank sums an array of ones
// with all the others and prints its rank and the result.
//
// Run (4 ranks as threads of this process):
//   bazel run //examples:01_all_sum            # or: bazel-bin/examples/01_all_sum 8
#include <collie/collie.hpp>

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  const int ranks = argc > 1 ? std::atoi(argv[1]) : 4;
  if (ranks < 1) {
    std::fprintf(stderr, "usage: %s [ranks >= 1]\n", argv[0]);
    return 2;
  }
  std::mutex print;
  try {
    collie::run_as_threads(ranks, [&](collie::Group& world) {
      std::vector<float> x(10, 1.0f);
      world.all_sum(x);  // in place: every element becomes world.size()
      std::string values;
      for (float v : x) values += (values.empty() ? "" : ", ") + std::to_string(static_cast<int>(v));
      std::lock_guard lock(print);
      std::printf("rank %d of %d: [%s]\n", world.rank(), world.size(), values.c_str());
    });
  } catch (const collie::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
