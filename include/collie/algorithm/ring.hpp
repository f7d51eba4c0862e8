// Ring: the bandwidth-optimal all-reduce (reduce-scatter, then all-gather, around a ring),
// pipelined over segments, with several rings at once so both directions of every link work.
#pragma once

#include <array>
#include <cstddef>
#include <cstring>
#include <span>
#include <string_view>
#include <system_error>

#include "collie/algorithm/detail/bruck.hpp"
#include "collie/core/detail/direct.hpp"
#include "collie/algorithm/detail/doubling.hpp"
#include "collie/algorithm/detail/halving.hpp"
#include "collie/algorithm/detail/power_of_two.hpp"
#include "collie/core/detail/requests.hpp"
#include "collie/algorithm/detail/ring_schedule.hpp"
#include "collie/core/call.hpp"
#include "collie/core/concepts.hpp"
#include "collie/core/knob.hpp"

namespace collie {

/// Ring algorithm, as in MLX's ring backend, NCCL and Gloo.
///
/// On the ring each rank talks only to its two neighbours; the paths for small and middle sizes
/// (recursive doubling and halving) talk to partners 1, 2, 4, ... ranks away. For p ranks and S
/// bytes per rank:
///
/// | collective     | steps        | bytes sent per rank | staging              |
/// |----------------|--------------|---------------------|----------------------|
/// | all_reduce ≤ small_bytes (≤ halving_from_bytes if p = 2^k ≥ 4) | ⌊log2 p⌋, +2 if p is no power of two | ⌊log2 p⌋ · S (recursive doubling) | S |
/// | all_reduce ≤ halving_bytes, p = 2^k ≥ 4 | 2 log2(p) | 2(p-1)/p · S (recursive halving, doubling) | S/2 |
/// | all_reduce     | 2(p-1)       | 2(p-1)/p · S        | 3 segments per lane  |
/// | reduce_scatter, S_in ≤ halving_bytes, p = 2^k ≥ 4 | log2 p | (p-1)/p · S_in (recursive halving) | 1.5 S_in |
/// | reduce_scatter | p-1          | (p-1)/p · S_in      | 3 segments per lane  |
/// | all_gather, p·S_in ≤ small_bytes, p = 2^k ≥ 4 | log2 p | (p-1) · S_in (recursive doubling) | none |
/// | all_gather, p·S_in ≤ small_bytes, other p ≥ 5 | ⌈log2 p⌉ | (p-1) · S_in (Bruck) | none |
/// | all_gather     | p-1          | (p-1) · S_in        | none                 |
/// | broadcast      | p-1 + segments - 1 | S (a pipelined chain from the root) | none |
/// | all_to_all ≤ all_to_all_small_bytes, p ≥ 4 | ⌈log2 p⌉ | about p/2 · log2(p) blocks (Bruck) | about 2 S |
/// | all_to_all     | 1 (every peer at once) | (p-1)/p · S | none |
///
/// which is the minimum any algorithm can send, so a ring wins when bandwidth, not latency,
/// dominates. Below `small_bytes` latency dominates instead: 2(p-1) steps, each a message
/// round, would cost far more than the bytes, so a small all-reduce is recursive doubling
/// (`detail::doubling_all_reduce`): log2(p) rounds of one partner each, beyond the neighbours.
/// Fewer rounds beat fewer bytes up to a few hundred KiB. Up to
/// `halving_bytes`, when p is a power of two from 4 on, recursive halving and doubling
/// (`detail::halving_all_reduce`) sends the ring's bytes in 2·log2(p) rounds instead of 2(p-1)
/// It takes over from recursive doubling above `halving_from_bytes`, since it sends 2(p-1)/p·S
/// where doubling sends log2(p)·S. Larger messages gain more from the
/// ring's pipelining, which overlaps the reduction with the transfer; with p = 2 both schedules
/// are the same rounds, and with other p the extra ranks' fold costs more than it saves.
/// Within each step the block is cut into `segment_bytes` segments (a part that fits one goes
/// whole); a segment is reduced and forwarded as soon as it arrives, so reduction overlaps
/// transfer. `rings` rings run at once over disjoint parts of every block, alternating
/// direction (ring 0 sends to rank+1, ring 1 to rank-1, ...), so a full-duplex link carries data
/// both ways and a transport with several connections per neighbour can stripe rings across them.
///
/// On the ring each element is reduced by one owner and then copied; recursive doubling folds the
/// same partials in the same order on every rank. Either way every rank ends with bit-identical
/// results; the reduction order differs between positions in the buffer and between the paths.
///
/// Where each threshold comes from (measurements against the ring and OpenMPI): docs/algorithms.md
/// and docs/performance.md.
///
/// Thread safety: a Ring is a value; its members are const and keep no state between calls
/// (per-call staging comes from the `Call`), so one Ring may serve any number of collectives.
///
/// Example: `collie::Collective<collie::TcpTransport, collie::Ring> c{t, {.rings = 4}};`
struct Ring {
  using algorithm_concept = algorithm_t;
  static constexpr std::string_view name = "ring";

  /// Rings running at once (alternating direction). 2 uses both directions of each link; with
  /// every rank on one host there is no link to fill, and 1 is faster (init() picks it then).
  std::size_t rings = 2;
  /// Pipeline segment: the unit that is reduced and forwarded on its own.
  std::size_t segment_bytes = 1 << 20;
  /// All-reduces of at most this many bytes use recursive doubling, and so do all-gathers of at
  /// most this many bytes in all when the rank count is a power of two, 4 or more; with 5 ranks
  /// or more and no power of two, such all-gathers use Bruck's algorithm instead; 0 never does.
  std::size_t small_bytes = 256 * 1024;
  /// Larger all-reduces up to this many bytes use recursive halving and doubling when the rank
  /// count is a power of two, 4 or more, and so do reduce-scatters of up to this much input (the
  /// halving half alone); 0 never does.
  std::size_t halving_bytes = 4 << 20;
  /// With p a power of two from 4 on, all-reduces larger than this use recursive halving and
  /// doubling even below `small_bytes`.
  std::size_t halving_from_bytes = 64 * 1024;
  /// All-to-alls of at most this many bytes per rank use Bruck's algorithm when there are 4
  /// ranks or more: ⌈log2 p⌉ rounds with one peer each, where the direct exchange is one round
  /// with all p-1 at once, but about p/2·log2(p) blocks sent instead of p-1, which pays only
  /// for small blocks; 0 never does.
  std::size_t all_to_all_small_bytes = 16 * 1024;

  friend bool operator==(const Ring&, const Ring&) = default;

  /// The environment's overrides (read by init() and the benchmark drivers, before connecting):
  /// COLLIE_RING_RINGS (1-64), COLLIE_RING_SEGMENT_BYTES (4 KiB-1 GiB),
  /// COLLIE_RING_SMALL_BYTES, COLLIE_RING_HALVING_BYTES, COLLIE_RING_HALVING_FROM_BYTES and
  /// COLLIE_RING_ALL_TO_ALL_SMALL_BYTES (0-1 GiB; k, M, G suffixes).
  static constexpr auto knobs() {
    constexpr std::size_t gib = std::size_t{1} << 30;
    return std::array{
        Knob<Ring>{"RING_RINGS", &Ring::rings, 1, 64, false},
        Knob<Ring>{"RING_SEGMENT_BYTES", &Ring::segment_bytes, 4096, gib, true},
        Knob<Ring>{"RING_SMALL_BYTES", &Ring::small_bytes, 0, gib, true},
        Knob<Ring>{"RING_HALVING_BYTES", &Ring::halving_bytes, 0, gib, true},
        Knob<Ring>{"RING_HALVING_FROM_BYTES", &Ring::halving_from_bytes, 0, gib, true},
        Knob<Ring>{"RING_ALL_TO_ALL_SMALL_BYTES", &Ring::all_to_all_small_bytes, 0, gib, true},
    };
  }

  /// The algorithm's all-reduce of `data` in place (the paths and costs in the table above).
  /// Called by `Collective`, which has checked the arguments and erased type and op into
  /// `reduction`; returns the transport's failure, with the step and peer recorded in `call`.
  template <Transport T>
  std::error_code all_reduce(T& t, Call& call, std::span<std::byte> data,
                             const Reduction& reduction) const {
    const int p = t.size();
    const bool halving = data.size() <= halving_bytes && detail::power_of_two_from_4(p);
    if (data.size() <= small_bytes && p > 1 && !(halving && data.size() > halving_from_bytes)) {
      return detail::doubling_all_reduce(t, call, data, reduction);
    }
    if (halving) return detail::halving_all_reduce(t, call, data, reduction);
    const detail::RingGeometry geo(t.size(), t.rank(), reduction.element_size,
                                   data.size() / reduction.element_size, rings, segment_bytes);
    return detail::run_ring(t, call, geo, detail::RingMode::all_reduce, data, data, &reduction);
  }

  /// The reduce-scatter of `in` (p blocks of `out.size()` bytes) into `out`, block rank().
  template <Transport T>
  std::error_code reduce_scatter(T& t, Call& call, std::span<const std::byte> in,
                                 std::span<std::byte> out, const Reduction& reduction) const {
    if (detail::power_of_two_from_4(t.size()) && in.size() <= halving_bytes) {
      return detail::halving_reduce_scatter(t, call, in, out, reduction);
    }
    const detail::RingGeometry geo(t.size(), t.rank(), reduction.element_size,
                                   in.size() / reduction.element_size, rings, segment_bytes);
    return detail::run_ring(t, call, geo, detail::RingMode::reduce_scatter, in, out, &reduction);
  }

  /// The all-gather of every rank's `in` into `out` (p blocks, in rank order); `in` may be this
  /// rank's block of `out`.
  template <Transport T>
  std::error_code all_gather(T& t, Call& call, std::span<const std::byte> in,
                             std::span<std::byte> out) const {
    const std::size_t block = in.size();
    const auto r = static_cast<std::size_t>(t.rank());
    if (block != 0 && out.data() + r * block != in.data()) {
      std::memmove(out.data() + r * block, in.data(), block);
    }
    // With 3 ranks Bruck's rounds are the ring's two, and it was 1.5-2 us slower (5 alternating
    // runs, 96 B to 6 KiB), so the ring stays there.
    if (t.size() >= 4 && out.size() <= small_bytes) {
      if (detail::power_of_two_from_4(t.size())) return detail::doubling_all_gather(t, call, out, block);
      return detail::bruck_all_gather(t, call, out, block);
    }
    // Bytes as elements: blocks are whole input buffers, so any split of them is valid.
    const detail::RingGeometry geo(t.size(), t.rank(), 1, out.size(), rings, segment_bytes);
    return detail::run_ring(t, call, geo, detail::RingMode::all_gather, {}, out, nullptr);
  }

  /// All-to-alls of at most `all_to_all_small_bytes` per rank, with 4 ranks or more, take
  /// Bruck's ⌈log2 p⌉ rounds; larger ones (and fewer ranks) exchange with every peer at once.
  template <Transport T>
  std::error_code all_to_all(T& t, Call& call, std::span<const std::byte> in,
                             std::span<std::byte> out) const {
    if (t.size() >= 4 && in.size() <= all_to_all_small_bytes) {
      return detail::bruck_all_to_all(t, call, in, out);
    }
    return detail::direct_all_to_all(t, call, in, out);
  }

  /// A pipelined chain root -> root+1 -> ... -> root-1: each segment is forwarded as soon as it
  /// arrives, so the time is about (p-1 + segments) segment transfers, not (p-1) whole buffers.
  template <Transport T>
  std::error_code broadcast(T& t, Call& call, std::span<std::byte> data, int root) const {
    const int p = t.size();
    const int r = t.rank();
    const int position = (r - root + p) % p;
    const int next = (r + 1) % p;
    const int previous = (r - 1 + p) % p;
    const std::size_t segments =
        data.empty() ? 0 : (data.size() + segment_bytes - 1) / segment_bytes;
    detail::Requests<T> requests(t, call);
    requests.reserve(2 * segments);
    auto segment = [&](std::size_t s) {
      const detail::Piece piece = detail::piece(data.size(), segments, s);
      return data.subspan(piece.begin, piece.count);
    };
    if (position == 0) {
      for (std::size_t s = 0; s < segments; ++s) {
        requests.send(next, call.tag(s), segment(s), "broadcast", position, p - 1);
      }
      return requests.wait_all();
    }
    const auto received = call.array<std::size_t>(segments);
    for (std::size_t s = 0; s < segments; ++s) {
      received[s] = requests.recv(previous, call.tag(s), segment(s), "broadcast", position, p - 1);
    }
    for (std::size_t s = 0; s < segments; ++s) {
      if (auto ec = requests.wait(received[s])) return ec;
      if (position != p - 1) {
        requests.send(next, call.tag(s), segment(s), "broadcast", position, p - 1);
      }
    }
    return requests.wait_all();
  }
};

}  // namespace collie
