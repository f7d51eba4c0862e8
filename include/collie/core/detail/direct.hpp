// Direct exchanges: every rank talks to every other rank in one round. They are what a
// `Collective` composes for the collectives an algorithm leaves out (broadcast, all_to_all, ...),
// and the Mesh algorithm is made of them.
#pragma once

#include <cstddef>
#include <cstring>
#include <span>
#include <system_error>

#include "collie/core/detail/requests.hpp"
#include "collie/core/call.hpp"
#include "collie/core/concepts.hpp"

namespace collie::detail {

/// The bytes of block `k` when `count` elements of `element_size` bytes are cut into `parts`
/// balanced blocks (see `piece`).
struct BlockLayout {
  std::size_t count;
  std::size_t element_size;
  std::size_t parts;
  Piece bytes(std::size_t k) const noexcept {
    const Piece p = piece(count, parts, k);
    return {p.begin * element_size, p.count * element_size};
  }
  std::size_t max_bytes() const noexcept { return bytes(0).count; }  // block 0 is never smaller
};

/// Peers in the order this rank talks to them: r+1, r+2, ..., r-1. Starting at a different peer
/// on every rank keeps all links busy at once instead of queueing everyone on rank 0.
inline int peer_at(int rank, int size, int i) noexcept { return (rank + 1 + i) % size; }

/// Reduce-scatter by direct exchange: rank r sends block k of `in` to rank k, receives block r
/// from every peer, and reduces the p contributions in rank order 0, 1, ..., p-1 into `out`
/// (which may be block r of `in` itself). One round; each rank sends and receives (p-1)/p of the
/// data; bit-identical on every rank because the order is fixed.
template <Transport T>
std::error_code direct_reduce_scatter(T& t, Call& call, std::span<const std::byte> in,
                                      std::span<std::byte> out, const Reduction& reduction,
                                      const BlockLayout& layout) {
  const int p = t.size();
  const int r = t.rank();
  const Piece own = layout.bytes(static_cast<std::size_t>(r));
  const std::size_t slot = own.count;
  auto staging = call.scratch(slot * static_cast<std::size_t>(p - 1));
  Requests<T> requests(t, call);
  requests.reserve(2 * static_cast<std::size_t>(p));
  for (int i = 0; i < p - 1; ++i) {
    const int peer = peer_at(r, p, i);
    requests.recv(peer, call.tag(0), staging.subspan(static_cast<std::size_t>(i) * slot, slot),
                  "reduce-scatter");
  }
  for (int i = 0; i < p - 1; ++i) {
    const int peer = peer_at(r, p, i);
    const Piece block = layout.bytes(static_cast<std::size_t>(peer));
    requests.send(peer, call.tag(0), in.subspan(block.begin, block.count), "reduce-scatter");
  }
  if (auto ec = requests.wait_all()) return ec;
  const auto sources = call.array<const std::byte*>(static_cast<std::size_t>(p));
  for (int i = 0; i < p - 1; ++i) {
    sources[static_cast<std::size_t>(peer_at(r, p, i))] =
        staging.data() + static_cast<std::size_t>(i) * slot;
  }
  sources[static_cast<std::size_t>(r)] = in.data() + own.begin;
  reduction.many(out.data(), sources.data(), sources.size(), own.count / reduction.element_size);
  return {};
}

/// All-gather in place by direct exchange: block r of `data` is this rank's; afterwards every
/// block holds its owner's bytes. One round; (p-1)/p of the data in and out per rank.
template <Transport T>
std::error_code direct_all_gather_in_place(T& t, Call& call, std::span<std::byte> data,
                                           const BlockLayout& layout) {
  const int p = t.size();
  const int r = t.rank();
  const Piece own = layout.bytes(static_cast<std::size_t>(r));
  Requests<T> requests(t, call);
  requests.reserve(2 * static_cast<std::size_t>(p));
  for (int i = 0; i < p - 1; ++i) {
    const int peer = peer_at(r, p, i);
    const Piece block = layout.bytes(static_cast<std::size_t>(peer));
    requests.recv(peer, call.tag(1), data.subspan(block.begin, block.count), "all-gather");
  }
  for (int i = 0; i < p - 1; ++i) {
    requests.send(peer_at(r, p, i), call.tag(1), data.subspan(own.begin, own.count),
                  "all-gather");
  }
  return requests.wait_all();
}

/// All-gather: `out` is p blocks of `in.size()` bytes, rank-major.
template <Transport T>
std::error_code direct_all_gather(T& t, Call& call, std::span<const std::byte> in,
                                  std::span<std::byte> out) {
  const auto r = static_cast<std::size_t>(t.rank());
  if (!in.empty() && out.data() + r * in.size() != in.data()) {
    std::memmove(out.data() + r * in.size(), in.data(), in.size());
  }
  const BlockLayout layout{static_cast<std::size_t>(t.size()), in.size(),
                           static_cast<std::size_t>(t.size())};
  return direct_all_gather_in_place(t, call, out, layout);
}

/// All-reduce by full exchange: every rank sends its whole buffer to every peer and reduces the
/// p buffers in rank order. One round, so it is the latency path for small messages; (p-1)·S
/// bytes out per rank, so only for small S. Bit-identical on every rank.
template <Transport T>
std::error_code direct_all_reduce(T& t, Call& call, std::span<std::byte> data,
                                  const Reduction& reduction) {
  const int p = t.size();
  const int r = t.rank();
  const std::size_t bytes = data.size();
  auto staging = call.scratch(bytes * static_cast<std::size_t>(p - 1));
  Requests<T> requests(t, call);
  requests.reserve(2 * static_cast<std::size_t>(p));
  for (int i = 0; i < p - 1; ++i) {
    requests.recv(peer_at(r, p, i), call.tag(0),
                  staging.subspan(static_cast<std::size_t>(i) * bytes, bytes), "exchange");
  }
  for (int i = 0; i < p - 1; ++i) {
    requests.send(peer_at(r, p, i), call.tag(0), data, "exchange");
  }
  if (auto ec = requests.wait_all()) return ec;
  const auto sources = call.array<const std::byte*>(static_cast<std::size_t>(p));
  for (int i = 0; i < p - 1; ++i) {
    sources[static_cast<std::size_t>(peer_at(r, p, i))] =
        staging.data() + static_cast<std::size_t>(i) * bytes;
  }
  sources[static_cast<std::size_t>(r)] = data.data();
  reduction.many(data.data(), sources.data(), sources.size(), bytes / reduction.element_size);
  return {};
}

/// Broadcast from `root` straight to every rank: one round, (p-1)·S bytes out of the root.
template <Transport T>
std::error_code direct_broadcast(T& t, Call& call, std::span<std::byte> data, int root) {
  const int p = t.size();
  Requests<T> requests(t, call);
  if (t.rank() == root) {
    requests.reserve(static_cast<std::size_t>(p));
    for (int i = 0; i < p - 1; ++i) {
      requests.send(peer_at(root, p, i), call.tag(0), data, "broadcast");
    }
  } else {
    requests.recv(root, call.tag(0), data, "broadcast");
  }
  return requests.wait_all();
}

/// All-to-all: block k of `in` goes to rank k and arrives as block r of rank k's `out`.
template <Transport T>
std::error_code direct_all_to_all(T& t, Call& call, std::span<const std::byte> in,
                                  std::span<std::byte> out) {
  const int p = t.size();
  const int r = t.rank();
  const std::size_t block = in.size() / static_cast<std::size_t>(p);
  const auto at = [&](int k) { return static_cast<std::size_t>(k) * block; };
  if (block != 0) std::memcpy(out.data() + at(r), in.data() + at(r), block);
  Requests<T> requests(t, call);
  requests.reserve(2 * static_cast<std::size_t>(p));
  for (int i = 0; i < p - 1; ++i) {
    const int peer = peer_at(r, p, i);
    requests.recv(peer, call.tag(0), out.subspan(at(peer), block), "all-to-all");
  }
  for (int i = 0; i < p - 1; ++i) {
    const int peer = peer_at(r, p, i);
    requests.send(peer, call.tag(0), in.subspan(at(peer), block), "all-to-all");
  }
  return requests.wait_all();
}

}  // namespace collie::detail
