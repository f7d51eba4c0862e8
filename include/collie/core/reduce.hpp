// The element-wise reduction kernels every algorithm runs on received data: `reduce_into`
// (one source into the destination) and `reduce_many` (several sources, in a fixed order).
// The only element-typed code on the data path, so the place where vectorization matters.
#pragma once

#include <cstddef>
#include <type_traits>

#include "collie/core/element.hpp"
#include "collie/core/ops.hpp"

// GCC 12 vectorizes at -O2 only under its "very-cheap" cost model, which gives up on any loop
// whose trip count is not a known multiple of the vector width, that is on every kernel here.
// Users build with -O2, so the kernels ask for the vectorizer (and its usual cost model)
// themselves; the rest of the user's flags still apply. The loops also process whole tiles of
// a compile-time length, which even the very-cheap model vectorizes, in case a build strips
// the attribute. Clang vectorizes at -O2 by default and has no such attribute.
#if defined(__GNUC__) && !defined(__clang__)
#define COLLIE_DETAIL_VECTORIZE __attribute__((optimize("tree-vectorize")))
#else
#define COLLIE_DETAIL_VECTORIZE
#endif

namespace collie::detail {

/// The type a kernel computes in: float for float16/bfloat16 under a built-in op (the op is
/// applied in float and the result rounded once), the element type itself otherwise (a user
/// functor sees the values it was written for).
template <class T, class Op>
using accumulator_t = std::conditional_t<is_16bit_float_v<T> && is_builtin_op_v<Op>, float, T>;

/// Elements per tile: for `reduce_many`, 4 KiB of accumulators on the stack, small enough to
/// stay in L1 next to the source lines being streamed in, large enough that the per-tile
/// overhead (one pass per source over the tile) is amortised. `reduce_into` uses the same
/// length only to give the vectorizer constant trip counts.
template <class A>
inline constexpr std::size_t tile_elements_v = 4096 / sizeof(A);

// A block of reduce_into. `length` is either a std::integral_constant (whole tiles: a constant
// trip count, which the vectorizer likes best) or a std::size_t (the last, partial tile).
template <class T, class Op, class Length>
COLLIE_DETAIL_VECTORIZE inline void reduce_into_block(T* __restrict dst, const T* __restrict src,
                                                      Length length, const Op& op) noexcept {
  using A = accumulator_t<T, Op>;
  const std::size_t n = length;
  for (std::size_t i = 0; i < n; ++i) {
    dst[i] = static_cast<T>(static_cast<A>(op(static_cast<A>(dst[i]), static_cast<A>(src[i]))));
  }
}

/// dst[i] = op(dst[i], src[i]) for i < count.
///
/// `dst` and `src` must not overlap at all. float16/bfloat16 under a built-in op are widened
/// to float, combined, and rounded back: one rounding per call, so a chain of k calls rounds k
/// times (use reduce_many when all sources are at hand). Vectorized for the built-in ops on
/// every arithmetic element type the target has vector instructions for (complex products and
/// max/min excepted); the cost is one pass over both arrays, 3 * count * sizeof(T) bytes moved.
template <Element T, class Op>
  requires ReduceOp<Op, T>
COLLIE_DETAIL_VECTORIZE void reduce_into(T* __restrict dst, const T* __restrict src,
                                         std::size_t count, const Op& op) noexcept {
  constexpr std::size_t tile = tile_elements_v<accumulator_t<T, Op>>;
  std::size_t offset = 0;
  for (; count - offset >= tile; offset += tile) {
    reduce_into_block(dst + offset, src + offset, std::integral_constant<std::size_t, tile>{}, op);
  }
  if (offset < count) reduce_into_block(dst + offset, src + offset, count - offset, op);
}

// One tile of reduce_many; `length` as in reduce_into_block.
template <class T, class A, class Op, class Length>
COLLIE_DETAIL_VECTORIZE inline void reduce_tile(A* __restrict accumulator, T* dst,
                                                const T* const* srcs, std::size_t nsrc,
                                                std::size_t offset, Length length,
                                                const Op& op) noexcept {
  const std::size_t n = length;
  const T* first = srcs[0] + offset;
  for (std::size_t j = 0; j < n; ++j) accumulator[j] = static_cast<A>(first[j]);
  for (std::size_t s = 1; s < nsrc; ++s) {
    const T* src = srcs[s] + offset;
    for (std::size_t j = 0; j < n; ++j) {
      accumulator[j] = static_cast<A>(op(accumulator[j], static_cast<A>(src[j])));
    }
  }
  // Only now is dst written: every source of this tile has been read, so dst may be one of
  // them.
  T* out = dst + offset;
  for (std::size_t j = 0; j < n; ++j) out[j] = static_cast<T>(accumulator[j]);
}

/// dst[i] = op(...op(op(srcs[0][i], srcs[1][i]), srcs[2][i])..., srcs[nsrc-1][i]) for i < count.
///
/// - Order: exactly the source order given, for every element. Floating-point ops are not
///   associative, so callers that pass sources in rank order get bit-identical results on
///   every rank.
/// - float16/bfloat16 under a built-in op: all sources are combined in float and the result is
///   rounded once, so reducing p contributions costs one rounding, not p - 1 (no drift along a
///   chain). A user functor is applied to the 16-bit values, rounding at every step.
/// - Aliasing: `dst` may be the very same pointer as any of the sources (in-place reduction);
///   otherwise no two ranges may overlap. Sources may repeat.
/// - Preconditions: nsrc >= 1; each srcs[k] and dst hold `count` elements.
/// - Cost: one streaming pass over every source and one over dst, (nsrc + 1) * count *
///   sizeof(T) bytes moved, with work done in L1-resident tiles of `tile_elements_v` elements.
template <Element T, class Op>
  requires ReduceOp<Op, T>
COLLIE_DETAIL_VECTORIZE void reduce_many(T* dst, const T* const* srcs, std::size_t nsrc,
                                         std::size_t count, const Op& op) noexcept {
  using A = accumulator_t<T, Op>;
  constexpr std::size_t tile = tile_elements_v<A>;
  // Accumulating into a local tile, not into dst, is what makes an aliased dst safe without
  // giving up vectorization: the compiler can prove the tile overlaps nothing, so it needs no
  // run-time overlap checks (which an exactly aliased dst would fail, falling back to scalar).
  A accumulator[tile];
  std::size_t offset = 0;
  for (; count - offset >= tile; offset += tile) {
    reduce_tile(accumulator, dst, srcs, nsrc, offset, std::integral_constant<std::size_t, tile>{},
                op);
  }
  if (offset < count) reduce_tile(accumulator, dst, srcs, nsrc, offset, count - offset, op);
}

}  // namespace collie::detail

#undef COLLIE_DETAIL_VECTORIZE
