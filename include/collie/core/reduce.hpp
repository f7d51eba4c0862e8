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
// themselves; the rest of the user's flags still apply. The loops also run over whole tiles of
// a compile-time length, which even the very-cheap model vectorizes, so the bulk of the work
// stays vectorized where the attribute is not honoured. Clang vectorizes at -O2 by default
// (and would warn about the attribute).
#if defined(__GNUC__) && !defined(__clang__)
#define COLLIE_DETAIL_VECTORIZE __attribute__((optimize("tree-vectorize")))
#else
#define COLLIE_DETAIL_VECTORIZE
#endif

// How an algorithm reaches the kernels: through the type-erased `Reduction` (call.hpp), built
// once per call for the element type and op, e.g.
//
//   [](const void* op, std::byte* dst, const std::byte* src, std::size_t n) noexcept {
//     reduce_into(reinterpret_cast<T*>(dst), reinterpret_cast<const T*>(src), n,
//                 *static_cast<const Op*>(op));
//   }
//
// Both kernels are reentrant and keep no state; they may run on any thread. They never
// allocate (reduce_many keeps its 4 KiB tile on the stack).

namespace collie::detail {

/// The type a kernel computes in: float for float16/bfloat16 under a built-in op (the op is
/// applied in float and the result rounded once), the element type itself otherwise (a user
/// functor sees the values it was written for).
template <class T, class Op>
using accumulator_t = std::conditional_t<is_16bit_float_v<T> && is_builtin_op_v<Op>, float, T>;

/// Elements per tile. `reduce_many` accumulates a tile of this many elements on the stack
/// (4 KiB: it stays in L1 next to the source lines being streamed in, and the per-tile
/// overhead of one pass per source is amortised); every kernel also walks its arrays in tiles
/// of this length so that its loops have a compile-time trip count.
template <class A>
inline constexpr std::size_t tile_elements_v = 4096 / sizeof(A);

// The element-wise passes the kernels are made of. Each pass touches only arrays that are
// distinct from one another (or the same array through one pointer: `dst` for in/out), which
// is what lets their pointers be __restrict: the vectorizer then needs no run-time overlap
// check, which an exactly aliased destination would fail, falling back to scalar code.
enum class Pass {
  into,             // dst = op(dst, a)
  into_reversed,    // dst = op(a, dst)
  combine,          // dst = op(a, b)
  convert,          // dst = a                    (one source; rounds 16-bit floats via A)
  round_trip,       // dst = dst                  (one source, in place; quiets 16-bit NaNs)
  first,            // accumulator = op(a, b)
  accumulate,       // accumulator = op(accumulator, a)
  finish,           // dst = op(accumulator, a)
  finish_in_place,  // dst = op(accumulator, dst)
  store,            // dst = accumulator
};

// One pass over `length` elements: a std::integral_constant (whole tiles: a constant trip
// count, which the vectorizer likes best) or a std::size_t (the last, partial tile). Values are
// widened to A, combined, and rounded back to T only when stored to a T array.
template <Pass P, class T, class Op, class Length>
COLLIE_DETAIL_VECTORIZE inline void run_pass(T* __restrict dst, const T* __restrict a,
                                             const T* __restrict b,
                                             accumulator_t<T, Op>* __restrict accumulator,
                                             Length length, const Op& op) noexcept {
  using A = accumulator_t<T, Op>;
  const std::size_t n = length;
  const auto apply = [&op](A x, A y) { return static_cast<A>(op(x, y)); };
  for (std::size_t j = 0; j < n; ++j) {
    if constexpr (P == Pass::into) {
      dst[j] = static_cast<T>(apply(static_cast<A>(dst[j]), static_cast<A>(a[j])));
    } else if constexpr (P == Pass::into_reversed) {
      dst[j] = static_cast<T>(apply(static_cast<A>(a[j]), static_cast<A>(dst[j])));
    } else if constexpr (P == Pass::combine) {
      dst[j] = static_cast<T>(apply(static_cast<A>(a[j]), static_cast<A>(b[j])));
    } else if constexpr (P == Pass::convert) {
      dst[j] = static_cast<T>(static_cast<A>(a[j]));
    } else if constexpr (P == Pass::round_trip) {
      dst[j] = static_cast<T>(static_cast<A>(dst[j]));
    } else if constexpr (P == Pass::first) {
      accumulator[j] = apply(static_cast<A>(a[j]), static_cast<A>(b[j]));
    } else if constexpr (P == Pass::accumulate) {
      accumulator[j] = apply(accumulator[j], static_cast<A>(a[j]));
    } else if constexpr (P == Pass::finish) {
      dst[j] = static_cast<T>(apply(accumulator[j], static_cast<A>(a[j])));
    } else if constexpr (P == Pass::finish_in_place) {
      dst[j] = static_cast<T>(apply(accumulator[j], static_cast<A>(dst[j])));
    } else {
      static_assert(P == Pass::store);
      dst[j] = static_cast<T>(accumulator[j]);
    }
  }
}

// `pointer + offset`, leaving an unused null pointer null (offsetting it would be undefined).
template <class T>
constexpr T* offset_by(T* pointer, std::size_t offset) noexcept {
  return pointer == nullptr ? pointer : pointer + offset;
}

// A pass without accumulator over whole arrays, tile by tile.
template <Pass P, class T, class Op>
COLLIE_DETAIL_VECTORIZE inline void run_tiled(T* dst, const T* a, const T* b, std::size_t count,
                                              const Op& op) noexcept {
  constexpr std::size_t tile = tile_elements_v<accumulator_t<T, Op>>;
  std::size_t offset = 0;
  for (; count - offset >= tile; offset += tile) {
    run_pass<P, T, Op>(dst + offset, offset_by(a, offset), offset_by(b, offset), nullptr,
                       std::integral_constant<std::size_t, tile>{}, op);
  }
  if (offset < count) {
    run_pass<P, T, Op>(dst + offset, offset_by(a, offset), offset_by(b, offset), nullptr,
                       count - offset, op);
  }
}

/// dst[i] = op(dst[i], src[i]) for i < count.
///
/// `dst` and `src` must not overlap at all. float16/bfloat16 under a built-in op are widened
/// to float, combined, and rounded back: one rounding per call, so a chain of k calls rounds k
/// times (use reduce_many when all sources are at hand). Vectorized for the built-in ops on
/// every arithmetic element type the target has vector instructions for (not for complex
/// products and max/min, nor for 64-bit integer products and max/min on plain x86-64 SSE2);
/// the cost is one pass over both arrays, 3 * count * sizeof(T) bytes moved.
template <Element T, class Op>
  requires ReduceOp<Op, T>
COLLIE_DETAIL_VECTORIZE void reduce_into(T* __restrict dst, const T* __restrict src,
                                         std::size_t count, const Op& op) noexcept {
  run_tiled<Pass::into>(dst, src, static_cast<const T*>(nullptr), count, op);
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
///   sizeof(T) bytes moved (nsrc * count * sizeof(T) in place). Two sources take one fused
///   pass, as fast as reduce_into; more go through L1-resident tiles of `tile_elements_v`
///   accumulators, with the first two sources and the last one fused into their passes.
template <Element T, class Op>
  requires ReduceOp<Op, T>
COLLIE_DETAIL_VECTORIZE void reduce_many(T* dst, const T* const* srcs, std::size_t nsrc,
                                         std::size_t count, const Op& op) noexcept {
  using A = accumulator_t<T, Op>;
  constexpr const T* none = nullptr;
  if (nsrc == 1) {
    if (dst != srcs[0]) {
      run_tiled<Pass::convert>(dst, srcs[0], none, count, op);
    } else if constexpr (!std::is_same_v<A, T>) {
      run_tiled<Pass::round_trip>(dst, none, none, count, op);
    }
    return;
  }
  // Two different sources: one pass, with dst bound to whichever source it is (if any).
  if (nsrc == 2 && srcs[0] != srcs[1]) {
    if (dst == srcs[0]) {
      run_tiled<Pass::into>(dst, srcs[1], none, count, op);
    } else if (dst == srcs[1]) {
      run_tiled<Pass::into_reversed>(dst, srcs[0], none, count, op);
    } else {
      run_tiled<Pass::combine>(dst, srcs[0], srcs[1], count, op);
    }
    return;
  }
  // Tiles: accumulate the tile of every source but the last into a local array, then combine
  // it with the last source while storing. dst is written only in that final pass, after all
  // other sources of the tile have been read, so dst may be any of them; when it is the last
  // source itself, the final pass reads and writes it through one pointer.
  constexpr std::size_t tile = tile_elements_v<A>;
  A accumulator[tile];
  const T* last = srcs[nsrc - 1];
  auto reduce_tile = [&](std::size_t offset, auto length) {
    run_pass<Pass::first, T, Op>(nullptr, srcs[0] + offset, srcs[1] + offset, accumulator,
                                 length, op);
    for (std::size_t s = 2; s + 1 < nsrc; ++s) {
      run_pass<Pass::accumulate, T, Op>(nullptr, srcs[s] + offset, none, accumulator, length, op);
    }
    if (nsrc == 2) {  // the same source twice
      run_pass<Pass::store, T, Op>(dst + offset, none, none, accumulator, length, op);
    } else if (dst == last) {
      run_pass<Pass::finish_in_place, T, Op>(dst + offset, none, none, accumulator, length, op);
    } else {
      run_pass<Pass::finish, T, Op>(dst + offset, last + offset, none, accumulator, length, op);
    }
  };
  std::size_t offset = 0;
  for (; count - offset >= tile; offset += tile) {
    reduce_tile(offset, std::integral_constant<std::size_t, tile>{});
  }
  if (offset < count) reduce_tile(offset, count - offset);
}

}  // namespace collie::detail

#undef COLLIE_DETAIL_VECTORIZE
