// The pairs the conformance suite runs — every enabled Collective<Transport, Algorithm> — and how
// it runs one: p ranks in the transport's test world, each with its own Collective, sharing a
// board. Nothing here names a transport or an algorithm, so a new pair is covered as soon as it is
// in the enabled lists and its transport has a world.
#pragma once

#include <doctest/doctest.h>

#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../harness/board.hpp"
#include "../harness/values.hpp"
#include "../worlds/worlds.hpp"
#include "collie/collie.hpp"

namespace collie::testing {

template <class C>
using transport_of = typename C::core_type::transport_type;
template <class C>
using algorithm_of = typename C::core_type::algorithm_type;

/// Every enabled pair, for TEST_CASE_TEMPLATE_APPLY.
using Pairs = AsTuple<EnabledCollectives>::type;

/// The enabled pairs whose algorithm is A (for what is particular to an algorithm).
template <class A, class List>
struct WithAlgorithm;
template <class A, class... C>
struct WithAlgorithm<A, std::tuple<C...>> {
  using type = decltype(std::tuple_cat(
      std::declval<std::conditional_t<std::is_same_v<algorithm_of<C>, A>, std::tuple<C>,
                                       std::tuple<>>>()...));
};
template <class A>
using PairsWith = typename WithAlgorithm<A, Pairs>::type;

/// Whether the reduction suite runs its whole element type × op matrix through transport T: only
/// where its world says so (`full_reduction_matrix`, the in-process reference). A transport moves
/// bytes and never sees an element type or an op (algorithms get them erased), so through the
/// others the suite runs every type with sum, and every op with a few types of each kind: every
/// element size and every count still crosses the wire, at a fraction of the processes' time.
template <class T>
constexpr bool full_reduction_matrix = requires { requires TestWorld<T>::full_reduction_matrix; };

/// "tcp/ring, ranks as processes over TCP on 127.0.0.1".
template <class C>
std::string pair_name() {
  return C::core_type::policy_name() + ", " + std::string(TestWorld<transport_of<C>>::name);
}

/// Runs `body(collective, board)` on `p` ranks of pair C, each rank with its own collective made
/// from `algorithm` and `options`; returns the failures.
template <class C, class Body>
std::vector<std::string> run_pair(int p, Body&& body, algorithm_of<C> algorithm = {},
                                  Options options = {}) {
  return TestWorld<transport_of<C>>::run(p, [&](transport_of<C> transport, Board& board) {
    C c(std::move(transport), algorithm, options);
    body(c, board);
    // Every rank is done before any goes: a rank that never talked to a peer must not leave
    // while that peer is still setting up its connections to it.
    board.sync();
  });
}

/// Reports failures through doctest, naming the pair and the rank count.
template <class C>
void report(int p, const std::vector<std::string>& failures) {
  for (const auto& f : failures) {
    const std::string text = pair_name<C>() + ", " + std::to_string(p) + " ranks: " + f;
    FAIL_CHECK(text);
  }
}

/// Runs `body` for every rank count of the suite ({1, 2, 3, 4, 5, 8}).
template <class C, class Body>
void for_every_rank_count(Body&& body, algorithm_of<C> algorithm = {}, Options options = {}) {
  for (int p : rank_counts) report<C>(p, run_pair<C>(p, body, algorithm, options));
}

}  // namespace collie::testing
