// Example 01: the first program of MLX's distributed guide. Every rank sums an array of ones
// with all the others and prints its rank and the result.
//
// Run 4 ranks as processes over TCP on this machine:
//   bazel build //examples:01_all_sum && scripts/run_local.sh 4 bazel-bin/examples/01_all_sum
// or by hand, one shell per rank, with a hostfile listing where each rank listens:
//   echo '[["127.0.0.1:5000"],["127.0.0.1:5001"],["127.0.0.1:5002"],["127.0.0.1:5003"]]' > h.json
//   MLX_RANK=0 MLX_HOSTFILE=h.json bazel-bin/examples/01_all_sum     # ... up to MLX_RANK=3
// Started without any of those variables it runs alone (a group of one rank).
#include <collie/collie.hpp>

#include <cstdio>
#include <string>
#include <vector>

int main() {
  try {
    collie::Group world = collie::init();
    std::vector<float> x(10, 1.0f);
    world.all_sum(x);  // in place: every element becomes world.size()
    std::string values;
    for (float v : x) values += (values.empty() ? "" : ", ") + std::to_string(static_cast<int>(v));
    std::printf("rank %d of %d: [%s]\n", world.rank(), world.size(), values.c_str());
  } catch (const collie::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
