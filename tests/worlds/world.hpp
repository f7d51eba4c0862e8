// Test worlds: how the tests start p ranks of a transport. Each transport has a `TestWorld<T>`
// (in a file of this folder, included by worlds.hpp) whose
//
//   static std::vector<std::string> run(int p, Fn fn);
//
// calls `fn(T transport, Board& board)` once for every rank r in [0, p), each with rank r's
// connected transport, all running at once, and returns what failed: what the ranks wrote on
// the board, and any rank that threw, crashed or hung. The conformance suite and the transport
// contract suite are written once over these, so a new transport runs both as soon as it has a
// world.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "../harness/board.hpp"

namespace collie::testing {

/// The world of transport T. A transport without one fails to compile in the suites, naming
/// this template.
template <class T>
struct TestWorld {
  static_assert(sizeof(T) == 0,
                "this transport has no test world: add tests/worlds/<transport>.hpp with a "
                "TestWorld specialisation and include it from tests/worlds/worlds.hpp");
};

}  // namespace collie::testing
