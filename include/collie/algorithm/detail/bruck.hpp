// Bruck's all-gather: ⌈log2 p⌉ rounds for any rank count, where the ring takes p-1. Ring uses
// it for small all-gathers when p is no power of two (for a power of two, recursive doubling
// takes the same rounds with one message each).
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <span>
#include <string_view>
#include <system_error>

#include "collie/algorithm/detail/requests.hpp"
#include "collie/core/call.hpp"
#include "collie/core/concepts.hpp"

namespace collie::detail {

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
  int steps = 0;
  for (int d = 1; d < p; d *= 2) ++steps;
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

}  // namespace collie::detail
