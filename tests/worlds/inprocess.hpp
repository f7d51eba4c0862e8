// The world of the in-process transport: ranks are threads of the test process.
#pragma once

#include <exception>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "collie/transport/inprocess.hpp"
#include "world.hpp"

namespace collie::testing {

template <>
struct TestWorld<InProcessTransport> {
  /// Whether the ranks of one run live in one process (and so share its allocator).
  static constexpr bool ranks_share_a_process = true;
  /// The reference transport: the reduction suite runs every element type with every op here.
  static constexpr bool full_reduction_matrix = true;
  static constexpr std::string_view name = "ranks as threads";

  template <class Fn>
  static std::vector<std::string> run(int p, Fn&& fn) {
    InProcessWorld world(p);
    Board* board = Board::create(p);
    std::vector<std::thread> threads;
    for (int r = 0; r < p; ++r) {
      threads.emplace_back([&, r] {
        try {
          fn(world.transport(r), *board);
        } catch (const std::exception& e) {
          board->fail("rank " + std::to_string(r) + " threw: " + e.what());
          // Its peers learn at once that it is gone, instead of waiting for it.
          world.kill(r);
          board->drop();
        }
      });
    }
    for (auto& t : threads) t.join();
    auto failures = board->failures();
    Board::destroy(board);
    return failures;
  }
};

}  // namespace collie::testing
