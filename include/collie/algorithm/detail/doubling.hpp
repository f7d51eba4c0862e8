// Recursive doubling: the all-reduce with the fewest message rounds, log2(p) for a power of two
// and two more otherwise, one partner per round, and the all-gather of the same rounds for a
// power of two. Ring uses them for small messages, where a round's wake-ups cost more than its
// bytes.
#pragma once

#include <cstddef>
#include <span>
#include <system_error>

#include "collie/algorithm/detail/power_of_two.hpp"
#include "collie/core/detail/requests.hpp"
#include "collie/core/call.hpp"
#include "collie/core/concepts.hpp"

namespace collie::detail {

/// All-reduce by recursive doubling, in place on `data`.
///
/// Runs on the `PowerOfTwoGroup` (the ranks left over fold into their partners first and get
/// the result back last). In round k every member swaps its partial result with the member whose
/// number differs in bit k, and both fold the two partials, the lower member's first. After
/// log2(q) rounds every member holds the full result.
///
/// Every member folds the same partials in the same order (each partial covers a run of
/// consecutive ranks, and the lower run always comes first), so all ranks end bit-identical.
/// Each member sends its whole buffer once per round: log2(q)·S bytes, against the ring's
/// 2(p-1)/p·S, in log2(q) rounds against the ring's 2(p-1). Staging: S bytes.
template <Transport T>
std::error_code doubling_all_reduce(T& t, Call& call, std::span<std::byte> data,
                                    const Reduction& reduction) {
  const int p = t.size();
  const int r = t.rank();
  if (p == 1) return {};
  const PowerOfTwoGroup group(p, r);
  const int steps = group.steps(group.rounds);
  constexpr std::string_view phase = "doubling";
  if (group.member < 0) return hand_over(t, call, data, r + 1, steps, phase);
  auto staging = call.scratch(data.size());
  if (group.paired) {
    if (auto ec = take_over(t, call, data, staging, reduction, r - 1, steps, phase)) return ec;
  }
  const std::size_t count = data.size() / reduction.element_size;
  Requests<T> requests(t, call);
  requests.reserve(2);
  for (int k = 0, d = 1; d < group.size; ++k, d *= 2) {
    const int partner = group.member ^ d;
    if (auto ec = swap_with(requests, call, group.rank_of(partner), group.step(k), steps, staging,
                            data, phase)) {
      return ec;
    }
    fold_pair(reduction, data.data(), staging.data(), count, partner < group.member);
  }
  if (group.paired) return hand_back(t, call, data, r - 1, steps, phase);
  return {};
}

/// All-gather by recursive doubling into `out` (p blocks of `block` bytes, this rank's own block
/// already in place), for p a power of two.
///
/// In round k every rank swaps the run of 2^k blocks it holds (the aligned run that contains its
/// own) with the rank whose number differs in bit k; after log2(p) rounds every rank holds all p.
/// The same (p-1)·block bytes as the ring, in log2(p) rounds instead of p-1, straight into `out`:
/// no staging.
template <Transport T>
std::error_code doubling_all_gather(T& t, Call& call, std::span<std::byte> out, std::size_t block) {
  const int p = t.size();
  const int r = t.rank();
  const int steps = PowerOfTwoGroup(p, r).rounds;  // p is a power of two: every rank a member
  constexpr std::string_view phase = "doubling all_gather";
  Requests<T> requests(t, call);
  requests.reserve(2);
  for (int k = 0, d = 1; d < p; ++k, d *= 2) {
    const int partner = r ^ d;
    const auto run_of = [&](int rank) {
      return out.subspan(static_cast<std::size_t>(rank & ~(d - 1)) * block,
                         static_cast<std::size_t>(d) * block);
    };
    if (auto ec = swap_with(requests, call, partner, k, steps, run_of(partner), run_of(r), phase)) {
      return ec;
    }
  }
  return {};
}

}  // namespace collie::detail
