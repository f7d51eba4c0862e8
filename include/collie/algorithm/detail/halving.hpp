// Recursive halving and doubling (Rabenseifner's all-reduce): a reduce-scatter that halves the
// data each round, then an all-gather that doubles it back. It sends the ring's bytes in
// 2·log2(p) rounds instead of the ring's 2(p-1), so Ring uses it for middle sizes, where the
// ring's rounds cost more than its pipelining saves.
#pragma once

#include <algorithm>
#include <cstddef>
#include <span>
#include <system_error>
#include <utility>

#include "collie/algorithm/detail/requests.hpp"
#include "collie/core/call.hpp"
#include "collie/core/concepts.hpp"

namespace collie::detail {

/// All-reduce by recursive halving and doubling, in place on `data`.
///
/// With q the largest power of two ≤ p and e = p - q, ranks 2i and 2i+1 (i < e) first pair up as
/// in `doubling_all_reduce`: the even rank hands its buffer to the odd one, which folds the two and
/// stands for both as group member i; ranks from 2e on are members r - e. The buffer is cut into
/// q blocks, block m belonging to member m.
///
/// Reduce-scatter, log2(q) rounds, distance d = q/2, q/4, ..., 1: every member holds a run of
/// blocks; it sends the half of the run that belongs to the members on the partner's side of
/// bit d to member m ^ d, receives the partner's copy of its own half, and folds it in (the lower
/// member's partial first). Each round halves the run; at the end member m holds block m fully
/// reduced. All-gather, log2(q) rounds, d = 1, 2, ..., q/2: members swap the runs they hold with
/// member m ^ d, doubling them. Finally the odd paired ranks hand the result to their partners.
///
/// Every element is reduced by one member and then copied, so all ranks end bit-identical. Each
/// member sends 2(q-1)/q·S bytes (S more for the paired ranks); staging is S/2 bytes.
template <Transport T>
std::error_code halving_all_reduce(T& t, Call& call, std::span<std::byte> data,
                                   const Reduction& reduction) {
  const int p = t.size();
  const int r = t.rank();
  if (p == 1) return {};
  int q = 1;
  while (q * 2 <= p) q *= 2;
  const int extra = p - q;
  const std::size_t es = reduction.element_size;
  const std::size_t count = data.size() / es;
  int rounds = 0;
  for (int d = 1; d < q; d *= 2) ++rounds;
  // Steps: the fold (if any), the reduce-scatter rounds, the all-gather rounds, the hand-back.
  const int first = extra > 0 ? 1 : 0;
  const int steps = 2 * rounds + (extra > 0 ? 2 : 0);
  auto tag = [&](int step) { return call.tag(static_cast<Tag>(step)); };
  auto phase = [&](int step) {
    return step >= first && step < first + rounds ? "reduce-scatter" : step >= first + rounds &&
           step < first + 2 * rounds ? "all-gather" : "fold";
  };

  const bool paired = r < 2 * extra;
  if (paired && r % 2 == 0) {
    // Hand this rank's data to r+1, then take the result back.
    Requests<T> requests(t, call);
    requests.send(r + 1, tag(0), data, phase(0), 0, steps);
    if (auto ec = requests.wait_all()) return ec;
    requests.recv(r + 1, tag(steps - 1), data, phase(steps - 1), steps - 1, steps);
    return requests.wait_all();
  }
  // Elements of blocks [from, to) of the q blocks.
  auto run = [&](int from, int to) {
    const std::size_t begin = piece(count, static_cast<std::size_t>(q), static_cast<std::size_t>(from)).begin;
    const Piece last = piece(count, static_cast<std::size_t>(q), static_cast<std::size_t>(to - 1));
    return Piece{begin, last.begin + last.count - begin};
  };
  auto bytes = [&](Piece elements) { return data.subspan(elements.begin * es, elements.count * es); };
  // The largest run received is the lower half (blocks are never smaller than later ones).
  auto staging = call.scratch(std::max(run(0, q / 2).count * es, paired ? data.size() : 0));
  // Folds `elements` staged elements into `target`, the lower member's partial first.
  auto fold = [&](std::byte* target, std::size_t elements, bool staged_first) {
    const std::byte* sources[2] = {target, staging.data()};
    if (staged_first) std::swap(sources[0], sources[1]);
    reduction.many(target, sources, 2, elements);
  };
  if (paired) {
    Requests<T> requests(t, call);
    requests.recv(r - 1, tag(0), staging.first(data.size()), phase(0), 0, steps);
    if (auto ec = requests.wait_all()) return ec;
    fold(data.data(), count, true);
  }

  const int member = paired ? r / 2 : r - extra;
  auto rank_of = [&](int m) { return m < extra ? 2 * m + 1 : m + extra; };

  // Reduce-scatter: this member's run of blocks [lo, lo + width) halves every round.
  int lo = 0;
  int width = q;
  for (int k = 0, d = q / 2; d >= 1; ++k, d /= 2) {
    const int partner = member ^ d;
    const int half = width / 2;
    const bool upper = (member & d) != 0;
    const Piece keep = run(upper ? lo + half : lo, upper ? lo + width : lo + half);
    const Piece give = run(upper ? lo : lo + half, upper ? lo + half : lo + width);
    Requests<T> requests(t, call);
    requests.reserve(2);
    requests.recv(rank_of(partner), tag(first + k), staging.first(keep.count * es),
                  phase(first + k), first + k, steps);
    requests.send(rank_of(partner), tag(first + k), bytes(give), phase(first + k), first + k,
                  steps);
    if (auto ec = requests.wait_all()) return ec;
    fold(data.data() + keep.begin * es, keep.count, partner < member);
    if (upper) lo += half;
    width = half;
  }
  // All-gather: the run [lo, lo + width) doubles every round.
  for (int k = 0, d = 1; d < q; ++k, d *= 2) {
    const int partner = member ^ d;
    const int partner_lo = lo ^ d;  // runs are aligned to their width, which is d here
    const int step = first + rounds + k;
    Requests<T> requests(t, call);
    requests.reserve(2);
    requests.recv(rank_of(partner), tag(step), bytes(run(partner_lo, partner_lo + width)),
                  phase(step), step, steps);
    requests.send(rank_of(partner), tag(step), bytes(run(lo, lo + width)), phase(step), step,
                  steps);
    if (auto ec = requests.wait_all()) return ec;
    lo = std::min(lo, partner_lo);
    width *= 2;
  }
  if (paired) {
    Requests<T> requests(t, call);
    requests.send(r - 1, tag(steps - 1), data, phase(steps - 1), steps - 1, steps);
    if (auto ec = requests.wait_all()) return ec;
  }
  return {};
}

}  // namespace collie::detail
