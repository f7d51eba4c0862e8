// Recursive doubling: the all-reduce with the fewest message rounds, log2(p) for a power of two
// and two more otherwise, one partner per round. Ring uses it for small messages, where a
// round's wake-ups cost more than its bytes.
#pragma once

#include <cstddef>
#include <span>
#include <system_error>
#include <utility>

#include "collie/algorithm/detail/requests.hpp"
#include "collie/core/call.hpp"
#include "collie/core/concepts.hpp"

namespace collie::detail {

/// All-reduce by recursive doubling, in place on `data`.
///
/// With q the largest power of two ≤ p and e = p - q ranks left over, the first 2e ranks pair up
/// (2i, 2i+1): the even rank hands its data to the odd one, which folds the two and joins the
/// doubling as group member i; ranks from 2e on join as members r - e. In round k every member
/// swaps its partial result with the member whose number differs in bit k, and both fold the two
/// partials, the lower member's first. After log2(q) rounds every member holds the full result,
/// and the odd ranks of the first 2e hand it back to their even partners.
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
  int q = 1;
  while (q * 2 <= p) q *= 2;
  const int extra = p - q;
  const std::size_t count = data.size() / reduction.element_size;
  auto staging = call.scratch(data.size());
  // Rounds: 0 the fold of the left-over ranks, 1..log2(q) the doubling, then the hand-back.
  int rounds = 0;
  for (int d = 1; d < q; d *= 2) ++rounds;
  const int steps = rounds + (extra > 0 ? 2 : 0);
  const int first = extra > 0 ? 1 : 0;  // step number of doubling round 0

  // Swaps `data` with `peer` (either side may only send or only receive) in one step.
  auto exchange = [&](int peer, int step, bool send, bool receive) -> std::error_code {
    Requests<T> requests(t, call);
    requests.reserve(2);
    if (receive) requests.recv(peer, call.tag(static_cast<Tag>(step)), staging, "doubling", step, steps);
    if (send) requests.send(peer, call.tag(static_cast<Tag>(step)), data, "doubling", step, steps);
    return requests.wait_all();
  };
  // Folds the staged partial with this rank's, the lower run of ranks first.
  auto fold = [&](bool staged_first) {
    const std::byte* sources[2] = {data.data(), staging.data()};
    if (staged_first) std::swap(sources[0], sources[1]);
    reduction.many(data.data(), sources, 2, count);
  };

  const bool paired = r < 2 * extra;
  if (paired && r % 2 == 0) {
    // Hand this rank's data to r+1, then take the result back.
    if (auto ec = exchange(r + 1, 0, true, false)) return ec;
    Requests<T> requests(t, call);
    requests.recv(r + 1, call.tag(static_cast<Tag>(steps - 1)), data, "doubling", steps - 1, steps);
    return requests.wait_all();
  }
  if (paired) {
    if (auto ec = exchange(r - 1, 0, false, true)) return ec;
    fold(true);
  }
  const int member = paired ? r / 2 : r - extra;
  auto rank_of = [&](int m) { return m < extra ? 2 * m + 1 : m + extra; };
  for (int k = 0, d = 1; d < q; ++k, d *= 2) {
    const int partner = member ^ d;
    if (auto ec = exchange(rank_of(partner), first + k, true, true)) return ec;
    fold(partner < member);
  }
  if (paired) {
    if (auto ec = exchange(r - 1, steps - 1, true, false)) return ec;
  }
  return {};
}

}  // namespace collie::detail
