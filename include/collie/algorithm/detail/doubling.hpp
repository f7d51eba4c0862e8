// Recursive doubling: the all-reduce with the fewest message rounds, log2(p) for a power of two
// and two more otherwise, one partner per round. Ring uses it for small messages, where a
// round's wake-ups cost more than its bytes.
#pragma once

#include <cstddef>
#include <span>
#include <system_error>

#include "collie/algorithm/detail/power_of_two.hpp"
#include "collie/algorithm/detail/requests.hpp"
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

}  // namespace collie::detail
