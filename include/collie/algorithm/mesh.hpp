// Mesh: every rank exchanges directly with every other rank. Few rounds, so it is the latency
// algorithm, and its reductions happen in rank order, so results are bit-identical everywhere.
#pragma once

#include <array>
#include <cstddef>
#include <span>
#include <string_view>
#include <system_error>

#include "collie/core/detail/direct.hpp"
#include "collie/core/call.hpp"
#include "collie/core/concepts.hpp"
#include "collie/core/knob.hpp"

namespace collie {

/// Direct exchange with every peer (a full mesh of connections, as jaccl uses).
///
/// Costs for p ranks and S bytes per rank:
///
/// | collective     | rounds | bytes sent per rank          | staging        |
/// |----------------|--------|------------------------------|----------------|
/// | all_reduce ≤ small_bytes | 1 | (p-1)·S (whole buffer to everyone) | (p-1)·S |
/// | all_reduce larger        | 2 | 2·(p-1)/p·S (reduce-scatter + all-gather) | (p-1)/p·S |
/// | reduce_scatter | 1      | (p-1)/p·S                    | (p-1)/p·S      |
/// | all_gather     | 1      | (p-1)·S_in                   | none           |
///
/// Every reduction combines the p contributions in rank order 0, 1, ..., p-1 (rounding once for
/// 16-bit floats), so all ranks hold bit-identical results, and the same inputs give the same
/// result for any number of repetitions. The small-message path finishes in a single round
/// trip, which is what small all-reduces (gradient norms, flags, counters) pay for.
///
/// A Mesh is a value with no state between calls: one may serve any number of collectives.
///
/// Example: `collie::Collective<collie::InProcessTransport, collie::Mesh> c{t, {.small_bytes = 4096}};`
struct Mesh {
  using algorithm_concept = algorithm_t;
  static constexpr std::string_view name = "mesh";

  /// All-reduces of at most this many bytes use the one-round full exchange.
  std::size_t small_bytes = 64 * 1024;

  friend bool operator==(const Mesh&, const Mesh&) = default;

  /// The environment's override: COLLIE_MESH_SMALL_BYTES (0-1 GiB; k, M, G suffixes).
  static constexpr auto knobs() {
    return std::array{Knob<Mesh>{"MESH_SMALL_BYTES", &Mesh::small_bytes, 0, std::size_t{1} << 30, true}};
  }

  /// The all-reduce of `data` in place: up to `small_bytes`, every rank sends its whole buffer
  /// to every peer and folds the p buffers itself (one round); above, a direct reduce-scatter
  /// then a direct all-gather (two rounds). Called by `Collective` with checked arguments.
  template <Transport T>
  std::error_code all_reduce(T& t, Call& call, std::span<std::byte> data,
                             const Reduction& reduction) const {
    if (data.size() <= small_bytes) return detail::direct_all_reduce(t, call, data, reduction);
    const detail::BlockLayout layout{data.size() / reduction.element_size,
                                     reduction.element_size, static_cast<std::size_t>(t.size())};
    const detail::Piece own = layout.bytes(static_cast<std::size_t>(t.rank()));
    if (auto ec = detail::direct_reduce_scatter(t, call, data, data.subspan(own.begin, own.count),
                                                reduction, layout)) {
      return ec;
    }
    return detail::direct_all_gather_in_place(t, call, data, layout);
  }

  /// The reduce-scatter of `in` (p blocks) into `out`: rank k receives block k from everyone and
  /// folds the p contributions in rank order. One round.
  template <Transport T>
  std::error_code reduce_scatter(T& t, Call& call, std::span<const std::byte> in,
                                 std::span<std::byte> out, const Reduction& reduction) const {
    const auto p = static_cast<std::size_t>(t.size());
    const detail::BlockLayout layout{p, in.size() / p, p};
    return detail::direct_reduce_scatter(t, call, in, out, reduction, layout);
  }

  /// The all-gather of every rank's `in` into `out`, straight from every peer. One round.
  template <Transport T>
  std::error_code all_gather(T& t, Call& call, std::span<const std::byte> in,
                             std::span<std::byte> out) const {
    return detail::direct_all_gather(t, call, in, out);
  }
};

}  // namespace collie
