// Recursive halving and doubling (Rabenseifner's all-reduce): a reduce-scatter that halves the
// data each round, then an all-gather that doubles it back. It sends the ring's bytes in
// 2·log2(p) rounds instead of the ring's 2(p-1), so Ring uses it for middle sizes, where the
// ring's rounds cost more than its pipelining saves.
#pragma once

#include <algorithm>
#include <cstddef>
#include <span>
#include <string_view>
#include <system_error>
#include <utility>

#include "collie/algorithm/detail/power_of_two.hpp"
#include "collie/core/detail/requests.hpp"
#include "collie/core/call.hpp"
#include "collie/core/concepts.hpp"

namespace collie::detail {

/// All-reduce by recursive halving and doubling, in place on `data`.
///
/// Runs on the `PowerOfTwoGroup` (the ranks left over fold into their partners first and get
/// the result back last). The buffer is cut into q blocks, block m belonging to member m.
///
/// Reduce-scatter, log2(q) rounds, distance d = q/2, q/4, ..., 1: every member holds a run of
/// blocks; it sends the half of the run that belongs to the members on the partner's side of
/// bit d to member m ^ d, receives the partner's copy of its own half, and folds it in (the lower
/// member's partial first). Each round halves the run; at the end member m holds block m fully
/// reduced. All-gather, log2(q) rounds, d = 1, 2, ..., q/2: members swap the runs they hold with
/// member m ^ d, doubling them.
///
/// Every element is reduced by one member and then copied, so all ranks end bit-identical. Each
/// member sends 2(q-1)/q·S bytes (S more for the paired ranks); staging is S/2 bytes (S on a
/// paired rank).
template <Transport T>
std::error_code halving_all_reduce(T& t, Call& call, std::span<std::byte> data,
                                   const Reduction& reduction) {
  const int p = t.size();
  const int r = t.rank();
  if (p == 1) return {};
  const PowerOfTwoGroup group(p, r);
  const int q = group.size;
  const int steps = group.steps(2 * group.rounds);
  if (group.member < 0) return hand_over(t, call, data, r + 1, steps, "fold");

  const std::size_t es = reduction.element_size;
  const std::size_t count = data.size() / es;
  // Elements of blocks [from, to) of the q blocks.
  auto run = [&](int from, int to) {
    const auto q_size = static_cast<std::size_t>(q);
    const std::size_t begin = piece(count, q_size, static_cast<std::size_t>(from)).begin;
    const Piece last = piece(count, q_size, static_cast<std::size_t>(to - 1));
    return Piece{begin, last.begin + last.count - begin};
  };
  auto bytes = [&](Piece elements) { return data.subspan(elements.begin * es, elements.count * es); };
  // The largest run received is the lower half (blocks are never smaller than later ones).
  auto staging = call.scratch(std::max(run(0, q / 2).count * es, group.paired ? data.size() : 0));
  if (group.paired) {
    if (auto ec = take_over(t, call, data, staging, reduction, r - 1, steps, "fold")) return ec;
  }
  const int member = group.member;
  Requests<T> requests(t, call);
  requests.reserve(2);

  // Reduce-scatter: this member's run of blocks [lo, lo + width) halves every round.
  int lo = 0;
  int width = q;
  for (int k = 0, d = q / 2; d >= 1; ++k, d /= 2) {
    const int partner = member ^ d;
    const int half = width / 2;
    const bool upper = (member & d) != 0;
    const Piece keep = run(upper ? lo + half : lo, upper ? lo + width : lo + half);
    const Piece give = run(upper ? lo : lo + half, upper ? lo + half : lo + width);
    if (auto ec = swap_with(requests, call, group.rank_of(partner), group.step(k), steps,
                            staging.first(keep.count * es), bytes(give), "reduce-scatter")) {
      return ec;
    }
    fold_pair(reduction, data.data() + keep.begin * es, staging.data(), keep.count,
              partner < member);
    if (upper) lo += half;
    width = half;
  }
  // All-gather: the run [lo, lo + width) doubles every round.
  for (int k = 0, d = 1; d < q; ++k, d *= 2) {
    const int partner_lo = lo ^ d;  // runs are aligned to their width, which is d here
    if (auto ec = swap_with(requests, call, group.rank_of(member ^ d),
                            group.step(group.rounds + k), steps,
                            bytes(run(partner_lo, partner_lo + width)), bytes(run(lo, lo + width)),
                            "all-gather")) {
      return ec;
    }
    lo = std::min(lo, partner_lo);
    width *= 2;
  }
  if (group.paired) return hand_back(t, call, data, r - 1, steps, "fold");
  return {};
}

/// Reduce-scatter by recursive halving, for p a power of two: `in` holds p blocks of
/// `out.size()` bytes, block m for rank m, and `out` receives this rank's block, reduced.
///
/// The first half of `halving_all_reduce`: in round k (d = p/2, p/4, ..., 1) a rank sends the
/// half of its run of blocks that belongs to the ranks on the partner's side of bit d to rank
/// r ^ d, and folds the partner's copy of its own half into its partial (the lower rank's
/// first). The first round reads `in`, the last one writes `out`. The ring's bytes, (p-1)/p of
/// `in`, in log2(p) rounds instead of p-1. Staging: 1.5 × `in` (the partials, of which only the
/// half kept after the first round is touched, and what arrives).
template <Transport T>
std::error_code halving_reduce_scatter(T& t, Call& call, std::span<const std::byte> in,
                                       std::span<std::byte> out, const Reduction& reduction) {
  const int p = t.size();
  const int r = t.rank();
  const int steps = PowerOfTwoGroup(p, r).rounds;  // p is a power of two: every rank a member
  const std::size_t block = out.size();
  auto scratch = call.scratch(in.size() + in.size() / 2);
  const auto partial = scratch.first(in.size());
  const auto received = scratch.subspan(in.size());
  Requests<T> requests(t, call);
  requests.reserve(2);
  // This rank's run of blocks [lo, lo + width) halves every round.
  int lo = 0;
  int width = p;
  for (int k = 0, d = p / 2; d >= 1; ++k, d /= 2) {
    const int partner = r ^ d;
    const int half = width / 2;
    const bool upper = (r & d) != 0;
    const auto keep = static_cast<std::size_t>(upper ? lo + half : lo) * block;
    const auto give = static_cast<std::size_t>(upper ? lo : lo + half) * block;
    const std::size_t bytes = static_cast<std::size_t>(half) * block;
    const std::span<const std::byte> source = k == 0 ? in : partial;
    if (auto ec = swap_with(requests, call, partner, k, steps, received.first(bytes),
                            source.subspan(give, bytes), "reduce-scatter")) {
      return ec;
    }
    const std::byte* sources[2] = {source.data() + keep, received.data()};
    if (partner < r) std::swap(sources[0], sources[1]);
    std::byte* target = d == 1 ? out.data() : partial.data() + keep;
    reduction.many(target, sources, 2, bytes / reduction.element_size);
    if (upper) lo += half;
    width = half;
  }
  return {};
}

}  // namespace collie::detail
