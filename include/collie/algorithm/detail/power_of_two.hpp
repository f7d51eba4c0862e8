// The power-of-two group that recursive doubling and recursive halving run on, and the steps
// that fold the ranks left over into it before and hand them the result after.
#pragma once

#include <cstddef>
#include <span>
#include <string_view>
#include <system_error>
#include <utility>

#include "collie/core/detail/requests.hpp"
#include "collie/core/call.hpp"
#include "collie/core/concepts.hpp"

namespace collie::detail {

/// Whether recursive halving, and the doubling all-gather, apply to `p` ranks: a power of two
/// from 4 on (with 2 ranks they are the ring's own rounds).
constexpr bool power_of_two_from_4(int p) noexcept { return p >= 4 && (p & (p - 1)) == 0; }

/// With q the largest power of two ≤ p and e = p - q, ranks 2i and 2i+1 (i < e) pair up: the
/// even rank hands its buffer to the odd one, which folds the two (the even rank's first) and
/// stands for both as group member i; ranks from 2e on are members r - e. So members are
/// numbered in rank order, and each stands for a run of consecutive ranks. Steps: 0 is the
/// fold and the last one the hand-back when e > 0; the group's own rounds come in between.
struct PowerOfTwoGroup {
  int size = 1;     // q, the members
  int extra = 0;    // e, the ranks left over
  int rounds = 0;   // log2(q)
  int member = -1;  // this rank's number in the group; -1 for an even rank that only hands over
  bool paired = false;

  PowerOfTwoGroup(int p, int r) noexcept {
    while (size * 2 <= p) {
      size *= 2;
      ++rounds;
    }
    extra = p - size;
    paired = r < 2 * extra;
    member = paired ? (r % 2 == 1 ? r / 2 : -1) : r - extra;
  }

  /// The rank that is member `m`.
  int rank_of(int m) const noexcept { return m < extra ? 2 * m + 1 : m + extra; }
  /// The step number of the group's round `k`.
  int step(int k) const noexcept { return (extra > 0 ? 1 : 0) + k; }
  /// All steps, for a schedule of `group_rounds` rounds inside the group.
  int steps(int group_rounds) const noexcept { return group_rounds + (extra > 0 ? 2 : 0); }
};

/// Folds the `count` elements at `staged` into `target`: staged ⊕ target if `staged_first`,
/// else target ⊕ staged.
inline void fold_pair(const Reduction& reduction, std::byte* target, const std::byte* staged,
                      std::size_t count, bool staged_first) noexcept {
  const std::byte* sources[2] = {target, staged};
  if (staged_first) std::swap(sources[0], sources[1]);
  reduction.many(target, sources, 2, count);
}

/// One round with `peer`: receives into `into` and sends `from`, both tagged with `step`, and
/// waits for both. `requests` is the caller's, reused round after round.
template <Transport T>
std::error_code swap_with(Requests<T>& requests, Call& call, int peer, int step, int steps,
                          std::span<std::byte> into, std::span<const std::byte> from,
                          std::string_view phase) {
  const Tag tag = call.tag(static_cast<Tag>(step));
  requests.recv(peer, tag, into, phase, step, steps);
  requests.send(peer, tag, from, phase, step, steps);
  return requests.wait_all();
}

/// The even rank of a pair: hands `data` to its odd partner at step 0 and takes the result back
/// at the last step.
template <Transport T>
std::error_code hand_over(T& t, Call& call, std::span<std::byte> data, int partner, int steps,
                          std::string_view phase) {
  Requests<T> requests(t, call);
  requests.send(partner, call.tag(0), data, phase, 0, steps);
  if (auto ec = requests.wait_all()) return ec;
  const int last = steps - 1;
  requests.recv(partner, call.tag(static_cast<Tag>(last)), data, phase, last, steps);
  return requests.wait_all();
}

/// The odd rank of a pair: receives its partner's buffer into `staging` at step 0 and folds it
/// in, the partner's first.
template <Transport T>
std::error_code take_over(T& t, Call& call, std::span<std::byte> data,
                          std::span<std::byte> staging, const Reduction& reduction, int partner,
                          int steps, std::string_view phase) {
  Requests<T> requests(t, call);
  requests.recv(partner, call.tag(0), staging.first(data.size()), phase, 0, steps);
  if (auto ec = requests.wait_all()) return ec;
  fold_pair(reduction, data.data(), staging.data(), data.size() / reduction.element_size, true);
  return {};
}

/// The odd rank of a pair: sends the result back at the last step.
template <Transport T>
std::error_code hand_back(T& t, Call& call, std::span<const std::byte> data, int partner,
                          int steps, std::string_view phase) {
  Requests<T> requests(t, call);
  const int last = steps - 1;
  requests.send(partner, call.tag(static_cast<Tag>(last)), data, phase, last, steps);
  return requests.wait_all();
}

}  // namespace collie::detail
