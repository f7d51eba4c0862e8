// Bruck's algorithms: ⌈log2 p⌉ rounds for any rank count. Ring uses the all-gather for small
// all-gathers when p is no power of two (for a power of two, recursive doubling takes the same
// rounds with one message each), and the all-to-all for small all-to-alls, where one round with
// every peer at once costs more than log2(p) rounds with one.
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstring>
#include <span>
#include <string_view>
#include <system_error>

#include "collie/core/detail/requests.hpp"
#include "collie/core/call.hpp"
#include "collie/core/concepts.hpp"

namespace collie::detail {

/// ⌈log2 p⌉: the rounds of either algorithm.
constexpr int bruck_rounds(int p) noexcept {
  int rounds = 0;
  for (int d = 1; d < p; d *= 2) ++rounds;
  return rounds;
}

/// All-gather by Bruck's algorithm into `out` (p blocks of `block` bytes, this rank's own block
/// already in place), for any p.
///
/// Before round k (d = 2^k) rank r holds the d blocks r, r+1, ..., r+d-1 (mod p). It sends the
/// first min(d, p-d) of them to rank r-d, and receives from rank r+d the blocks that rank holds,
/// which are the ones right after its own run; after ⌈log2 p⌉ rounds it holds all p. The
/// ring's (p-1) blocks, straight into `out` with no staging and no final rotation: a run that
/// wraps past the last block goes as two messages.
template <Transport T>
std::error_code bruck_all_gather(T& t, Call& call, std::span<std::byte> out, std::size_t block) {
  const int p = t.size();
  const int r = t.rank();
  const int steps = bruck_rounds(p);
  constexpr std::string_view phase = "bruck all_gather";
  // The run of `n` blocks from block `first`, mod p: its part up to the last block, then the
  // part that wrapped to the first (empty if none did). Sender and receiver cut the same run
  // the same way, so the parts match one to one.
  auto run = [&](int first, int n) -> std::array<std::span<std::byte>, 2> {
    const int head = std::min(n, p - first);
    return {out.subspan(static_cast<std::size_t>(first) * block,
                        static_cast<std::size_t>(head) * block),
            out.first(static_cast<std::size_t>(n - head) * block)};
  };
  Requests<T> requests(t, call);
  requests.reserve(4);
  for (int k = 0, d = 1; d < p; ++k, d *= 2) {
    const int n = std::min(d, p - d);
    const int from = (r + d) % p;
    const int to = (r - d + p) % p;
    const auto incoming = run(from, n);
    const auto outgoing = run(r, n);
    for (std::size_t part = 0; part < 2; ++part) {
      const Tag tag = call.tag(static_cast<Tag>(2 * k) + part);
      if (!incoming[part].empty()) requests.recv(from, tag, incoming[part], phase, k, steps);
      if (!outgoing[part].empty()) requests.send(to, tag, outgoing[part], phase, k, steps);
    }
    if (auto ec = requests.wait_all()) return ec;
  }
  return {};
}

/// All-to-all by Bruck's algorithm: `in` and `out` hold p blocks of `block` bytes; block k of
/// `in` goes to rank k and arrives as block `rank` of its `out`.
///
/// The blocks are first rotated so that slot i holds the block for rank r+i (mod p). In round k
/// (d = 2^k) every slot whose number has bit k set moves d ranks on: packed into one message to
/// rank r+d, while the same slots come from rank r-d. A block in slot i thus travels i ranks, to
/// its destination, and slot i ends holding the block from rank r-i. ⌈log2 p⌉ rounds instead of
/// one round with p-1 peers, for about p/2·log2(p) blocks sent instead of p-1, so it suits small
/// blocks only. Staging: about 2p blocks.
template <Transport T>
std::error_code bruck_all_to_all(T& t, Call& call, std::span<const std::byte> in,
                                 std::span<std::byte> out) {
  const int p = t.size();
  const int r = t.rank();
  const std::size_t block = in.size() / static_cast<std::size_t>(p);
  const auto slots = static_cast<std::size_t>(p);
  const std::size_t moving = slots / 2;  // at most this many slots have any one bit set
  auto scratch = call.scratch((slots + 2 * moving) * block);
  const auto slot = [&](int i) {
    return scratch.subspan(static_cast<std::size_t>(i) * block, block);
  };
  const auto outgoing = scratch.subspan(slots * block, moving * block);
  const auto incoming = scratch.subspan((slots + moving) * block, moving * block);
  for (int i = 0; i < p; ++i) {
    std::memcpy(slot(i).data(), in.data() + static_cast<std::size_t>((r + i) % p) * block, block);
  }
  // Calls `move(slot, offset)` for every slot with bit d set, in the order and at the offset it
  // has in the packed message of that round; returns the message's size.
  const auto each_moving = [&](int d, auto&& move) {
    std::size_t offset = 0;
    for (int i = d; i < p; ++i) {
      if ((i & d) == 0) continue;
      move(slot(i), offset);
      offset += block;
    }
    return offset;
  };
  const int steps = bruck_rounds(p);
  Requests<T> requests(t, call);
  requests.reserve(2);
  for (int k = 0, d = 1; d < p; ++k, d *= 2) {
    const std::size_t bytes = each_moving(d, [&](std::span<std::byte> s, std::size_t offset) {
      std::memcpy(outgoing.data() + offset, s.data(), block);
    });
    const Tag tag = call.tag(static_cast<Tag>(k));
    requests.recv((r - d + p) % p, tag, incoming.first(bytes), "bruck all_to_all", k, steps);
    requests.send((r + d) % p, tag, outgoing.first(bytes), "bruck all_to_all", k, steps);
    if (auto ec = requests.wait_all()) return ec;
    each_moving(d, [&](std::span<std::byte> s, std::size_t offset) {
      std::memcpy(s.data(), incoming.data() + offset, block);
    });
  }
  for (int i = 0; i < p; ++i) {
    std::memcpy(out.data() + static_cast<std::size_t>((r - i + p) % p) * block, slot(i).data(),
                block);
  }
  return {};
}

}  // namespace collie::detail
