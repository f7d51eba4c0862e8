// The ring engine behind `Ring`: reduce-scatter and all-gather around one or more rings, each
// block cut into segments that are pipelined (a segment is forwarded as soon as it is reduced).
#pragma once

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <span>
#include <system_error>

#include "collie/core/detail/requests.hpp"
#include "collie/core/call.hpp"
#include "collie/core/concepts.hpp"

namespace collie::detail {

// Geometry shared by every rank (computed from global sizes only, so all ranks agree on every
// message size without telling each other).
//
// The buffer of `count` elements is cut into p blocks (`piece(count, p, k)`); the block of rank k
// is the one it owns after the reduce-scatter. Ring j carries sub-piece j of every block; rings
// alternate direction (even: send to rank+1, odd: send to rank-1) so both directions of every
// link carry data. Each sub-piece is cut into `chunks` segments, the unit of pipelining. A
// (ring, segment) pair is a "lane"; lanes progress in lockstep through the steps.
//
// Positions: in ring j, rank r sits at position pos(j); its right neighbour is pos+1. At step g
// it sends position-block pos-g-1 and receives pos-g-2 (mod p). Steps 0..p-2 are the
// reduce-scatter, after which rank r holds block pos fully reduced; steps p-1..2p-3 are the
// all-gather. Position-block q is data block rank_at(q), i.e. the block of the rank at position q,
// so every rank ends the reduce-scatter owning its own data block.
struct RingGeometry {
  int p = 0;
  int r = 0;
  std::size_t element_size = 1;
  std::size_t count = 0;   // elements in the whole buffer (p blocks)
  std::size_t rings = 1;
  std::size_t chunks = 1;  // segments per (block, ring)
  std::size_t max_chunk_elements = 0;

  RingGeometry(int size, int rank, std::size_t element_bytes, std::size_t elements,
               std::size_t ring_count, std::size_t segment_bytes)
      : p(size), r(rank), element_size(element_bytes), count(elements) {
    const std::size_t largest_block = piece(count, static_cast<std::size_t>(p), 0).count;
    // A ring with nothing to carry only adds messages: use as many rings as the largest block
    // has elements, at least one.
    rings = std::clamp<std::size_t>(ring_count, 1, std::max<std::size_t>(largest_block, 1));
    const std::size_t largest_sub = piece(largest_block, rings, 0).count;
    const std::size_t segment_elements = std::max<std::size_t>(segment_bytes / element_size, 1);
    // A sub-piece that fits one segment goes whole: cutting it in two would overlap its
    // reduction with its arrival, but the extra message costs more than that saves (n = 2,
    // 1-2 MiB: 3.6-3.7 GB/s busbw whole, 3.1-3.2 in halves, 5 alternating runs; with BBR's
    // pacing on loopback, before the transport chose reno there, halves had won).
    chunks = std::max<std::size_t>((largest_sub + segment_elements - 1) / segment_elements, 1);
    max_chunk_elements = piece(largest_sub, chunks, 0).count;
  }

  std::size_t lanes() const noexcept { return rings * chunks; }
  int steps() const noexcept { return 2 * (p - 1); }
  bool reverse(std::size_t ring) const noexcept { return ring % 2 == 1; }
  int pos(std::size_t ring) const noexcept { return reverse(ring) ? (p - r) % p : r; }
  int rank_at(std::size_t ring, int q) const noexcept { return reverse(ring) ? (p - q) % p : q; }
  int send_peer(std::size_t ring) const noexcept {
    return reverse(ring) ? (r - 1 + p) % p : (r + 1) % p;
  }
  int recv_peer(std::size_t ring) const noexcept {
    return reverse(ring) ? (r + 1) % p : (r - 1 + p) % p;
  }
  int send_block(std::size_t ring, int g) const noexcept {
    return ((pos(ring) - g - 1) % p + p) % p;
  }
  int recv_block(std::size_t ring, int g) const noexcept {
    return ((pos(ring) - g - 2) % p + p) % p;
  }

  // Elements [begin, begin + count) of the whole buffer carried by lane `lane` for
  // position-block q.
  Piece region(std::size_t lane, int q) const noexcept {
    const std::size_t ring = lane / chunks;
    const std::size_t chunk = lane % chunks;
    const Piece block =
        piece(count, static_cast<std::size_t>(p), static_cast<std::size_t>(rank_at(ring, q)));
    const Piece sub = piece(block.count, rings, ring);
    const Piece seg = piece(sub.count, chunks, chunk);
    return {block.begin + sub.begin + seg.begin, seg.count};
  }

  Tag tag_offset(std::size_t lane, int g) const noexcept {
    const std::size_t ring = lane / chunks;
    const std::size_t chunk = lane % chunks;
    return (static_cast<Tag>(ring) * static_cast<Tag>(steps()) + static_cast<Tag>(g)) *
               static_cast<Tag>(chunks) +
           static_cast<Tag>(chunk);
  }
};

enum class RingMode {
  all_reduce,      // steps 0..2p-3 in place on `data`
  reduce_scatter,  // steps 0..p-2 from `in` into `out` (this rank's block only)
  all_gather,      // steps p-1..2p-3 in place on `data` (this rank's block already in place)
};

// Runs the ring for `mode`. Buffers: all_reduce and all_gather work in place on `data` (the whole
// buffer); reduce_scatter reads the whole buffer from `in` and writes this rank's block to `data`.
template <Transport T>
std::error_code run_ring(T& t, Call& call, const RingGeometry& geo, RingMode mode,
                         std::span<const std::byte> in, std::span<std::byte> data,
                         const Reduction* reduction) {
  const int p = geo.p;
  const int first = mode == RingMode::all_gather ? p - 1 : 0;
  const int last = mode == RingMode::reduce_scatter ? p - 1 : geo.steps();  // exclusive
  const std::size_t lanes = geo.lanes();
  const std::size_t es = geo.element_size;
  const std::size_t slot_bytes = geo.max_chunk_elements * es;
  constexpr int slots = 3;  // staging slots, used round-robin by reduce-scatter steps

  std::span<std::byte> staging;
  if (mode != RingMode::all_gather) {
    staging = call.scratch(static_cast<std::size_t>(slots) * lanes * slot_bytes);
  }
  auto staged = [&](int g, std::size_t lane) {
    return staging.data() + (static_cast<std::size_t>(g % slots) * lanes + lane) * slot_bytes;
  };
  // Where this rank's own block starts, for the reduce-scatter output (which holds only it).
  const std::size_t own_begin =
      piece(geo.count, static_cast<std::size_t>(p), static_cast<std::size_t>(geo.r)).begin;

  Requests<T> requests(t, call);
  requests.reserve(2 * static_cast<std::size_t>(last - first) * lanes);
  constexpr std::size_t none = ~std::size_t{0};
  // Request ids per step and lane, so a step's sends can be waited on before their memory is
  // overwritten, and a lane's receive can be waited on in order.
  const std::size_t ids = static_cast<std::size_t>(geo.steps()) * lanes;
  const auto send_ids = call.array<std::size_t>(ids);
  const auto recv_ids = call.array<std::size_t>(ids);
  std::fill(send_ids.begin(), send_ids.end(), none);
  std::fill(recv_ids.begin(), recv_ids.end(), none);
  auto at = [&](int g, std::size_t lane) { return static_cast<std::size_t>(g) * lanes + lane; };
  auto phase = [&](int g) { return g < p - 1 ? "reduce-scatter" : "all-gather"; };
  auto phase_step = [&](int g) { return g < p - 1 ? g : g - (p - 1); };

  auto wait_sends = [&](int g) -> std::error_code {
    if (g < first || g >= last) return {};
    for (std::size_t lane = 0; lane < lanes; ++lane) {
      if (send_ids[at(g, lane)] == none) continue;
      if (auto ec = requests.wait(send_ids[at(g, lane)])) return ec;
    }
    return {};
  };

  auto post_recvs = [&](int g) -> std::error_code {
    if (g >= p - 1) {
      // All-gather receives overwrite the block sent at reduce-scatter step g+1-p.
      if (auto ec = wait_sends(g + 1 - p)) return ec;
    } else if (mode == RingMode::reduce_scatter) {
      // Staging slot g%3 still feeds the send of step g-2 (the partial made at step g-3).
      if (auto ec = wait_sends(g - 2)) return ec;
    }
    for (std::size_t lane = 0; lane < lanes; ++lane) {
      const Piece region = geo.region(lane, geo.recv_block(lane / geo.chunks, g));
      if (region.count == 0) continue;
      std::span<std::byte> target =
          g < p - 1 ? std::span<std::byte>(staged(g, lane), region.count * es)
                    : data.subspan(region.begin * es, region.count * es);
      recv_ids[at(g, lane)] =
          requests.recv(geo.recv_peer(lane / geo.chunks), call.tag(geo.tag_offset(lane, g)),
                        target, phase(g), phase_step(g), p - 1);
    }
    return {};
  };

  auto post_send = [&](int g, std::size_t lane) {
    const Piece region = geo.region(lane, geo.send_block(lane / geo.chunks, g));
    if (region.count == 0) return;
    std::span<const std::byte> source;
    if (mode == RingMode::reduce_scatter) {
      source = g == 0 ? in.subspan(region.begin * es, region.count * es)
                      : std::span<const std::byte>(staged(g - 1, lane), region.count * es);
    } else {
      source = data.subspan(region.begin * es, region.count * es);
    }
    send_ids[at(g, lane)] =
        requests.send(geo.send_peer(lane / geo.chunks), call.tag(geo.tag_offset(lane, g)), source,
                      phase(g), phase_step(g), p - 1);
  };

  // A received reduce-scatter segment: fold it into the running partial.
  auto reduce = [&](int g, std::size_t lane) {
    const Piece region = geo.region(lane, geo.recv_block(lane / geo.chunks, g));
    std::byte* received = staged(g, lane);
    if (mode == RingMode::all_reduce) {
      reduction->into(data.data() + region.begin * es, received, region.count);
      return;
    }
    const std::byte* sources[2] = {in.data() + region.begin * es, received};
    std::byte* target =
        g == p - 2 ? data.data() + (region.begin - own_begin) * es : received;
    reduction->many(target, sources, 2, region.count);
  };

  if (auto ec = post_recvs(first)) return ec;
  for (std::size_t lane = 0; lane < lanes; ++lane) post_send(first, lane);
  for (int g = first; g < last; ++g) {
    if (g + 1 < last) {
      if (auto ec = post_recvs(g + 1)) return ec;
    }
    for (std::size_t lane = 0; lane < lanes; ++lane) {
      const std::size_t id = recv_ids[at(g, lane)];
      if (id != none) {
        if (auto ec = requests.wait(id)) return ec;
        if (g < p - 1) reduce(g, lane);
      }
      if (g + 1 < last) post_send(g + 1, lane);
    }
  }
  return requests.wait_all();
}

}  // namespace collie::detail
