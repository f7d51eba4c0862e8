// Example 02: data-parallel training's gradient averaging. Every rank holds the gradients of
// its own mini-batch — many tensors of different sizes — and all ranks need their mean. The
// fused all_sum packs the small tensors into few messages (32 MiB each by default), as MLX's
// average_gradients does, then each rank divides by the group size.
//
// Run: bazel build //examples:02_average_gradients &&
//      scripts/run_local.sh 4 bazel-bin/examples/02_average_gradients
#include <collie/collie.hpp>

#include <cstdio>
#include <vector>

int main() {
  try {
    collie::Group world = collie::init();
    // A toy model: 200 parameter tensors from 10 to 100 000 elements.
    std::vector<std::vector<float>> gradients;
    for (int t = 0; t < 200; ++t) {
      gradients.emplace_back(static_cast<std::size_t>(10 + (t * 7919) % 100000),
                             static_cast<float>(world.rank() + 1));  // this rank's "gradient"
    }
    world.all_sum_fused(gradients);
    const float scale = 1.0f / static_cast<float>(world.size());
    for (auto& g : gradients) {
      for (float& v : g) v *= scale;
    }
    // The mean of 1, 2, ..., n is (n + 1) / 2 on every rank, in every tensor.
    const float expected = static_cast<float>(world.size() + 1) / 2.0f;
    bool ok = true;
    for (const auto& g : gradients) ok = ok && g.front() == expected && g.back() == expected;
    std::printf("rank %d: averaged %zu tensors, mean gradient %g (%s)\n", world.rank(),
                gradients.size(), static_cast<double>(gradients[0][0]), ok ? "ok" : "WRONG");
    return ok ? 0 : 1;
  } catch (const collie::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
