// The element-wise passes the reduction kernels (core/reduce.hpp) are made of, in portable C++:
// what every CPU runs, what the compiler vectorizes for whatever instruction set it targets, and
// the reference every hand-written SIMD pass (reduce_x86.hpp) must match bit for bit.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
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
//
// COLLIE_DETAIL_PASS also forces inlining: the passes and tile loops are instantiated once per
// instruction set (reduce.hpp), and only code inlined into a function compiled for AVX2 is
// compiled for AVX2. Inlining plain code into such a function is always allowed.
// x86-64 builds carry a second compilation of the kernels, for AVX2 (reduce_x86.hpp).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define COLLIE_DETAIL_X86_KERNELS 1
#else
#define COLLIE_DETAIL_X86_KERNELS 0
#endif

#if defined(__GNUC__) && !defined(__clang__)
#define COLLIE_DETAIL_VECTORIZE __attribute__((optimize("tree-vectorize")))
#else
#define COLLIE_DETAIL_VECTORIZE
#endif
#if defined(__GNUC__) || defined(__clang__)
#define COLLIE_DETAIL_PASS COLLIE_DETAIL_VECTORIZE inline __attribute__((always_inline))
#else
#define COLLIE_DETAIL_PASS inline
#endif

namespace collie::detail {

/// The type a kernel computes in: float for float16/bfloat16 under a built-in op (the op is
/// applied in float and the result rounded once), the element type itself otherwise (a user
/// functor sees the values it was written for).
template <class T, class Op>
using accumulator_t = std::conditional_t<is_16bit_float_v<T> && is_builtin_op_v<Op>, float, T>;

/// Elements per tile. `reduce_many` accumulates a tile of this many elements on the stack
/// (4 KiB: it stays in L1 next to the source lines being streamed in, and the per-tile
/// overhead of one pass per source is amortised); the portable kernels also walk their arrays
/// in tiles of this length so that their loops have a compile-time trip count.
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

/// The larger (`is_max`) or smaller of two floating values, exactly as `Max`/`Min` define it
/// (ops.hpp: the first NaN operand; otherwise the larger, or smaller, with -0 below +0), in a
/// form compilers vectorize into seven instructions.
///
/// Every comparison is made before the first select, and combined with `&`, not `&&`. With
/// comparisons and selects interleaved, as in ops.hpp, GCC threads the selects into branches
/// and leaves the later comparisons on one path only; an ordered comparison may trap on NaN,
/// so under -ftrapping-math it is not speculated back out, and the control flow left in the
/// loop stops the vectorizer (float and double max/min then ran at a sixth of a sum's speed).
template <bool is_max, class F>
constexpr F float_extremum(F x, F y) noexcept {
  using U = float_bits_t<F>;
  const U x_bits = std::bit_cast<U>(x);
  const U y_bits = std::bit_cast<U>(y);
  const bool x_is_number = x == x;
  // True when y is NaN, or lies beyond x (above it for max, below it for min).
  const bool y_beyond = is_max ? !(x >= y) : !(x <= y);
  const bool equal = x == y;
  // Equal operands differ at most in the sign of zero: AND keeps +0 (max), OR keeps -0 (min).
  const F tie = std::bit_cast<F>(static_cast<U>(is_max ? (x_bits & y_bits) : (x_bits | y_bits)));
  const F result = (x_is_number & y_beyond) ? y : x;
  return equal ? tie : result;
}

/// op(x, y) as the kernels compute it, in the accumulator type A of element type T. A user
/// functor is called as it is.
///
/// Besides vectorizable max/min, this fixes on x86-64 one thing the ops leave open: which NaN a
/// sum or product of two NaNs returns. x86 returns the first operand's, but compilers treat
/// additions as commutative and swap operands as register allocation suits them, and the
/// AVX2 and the SSE2 compilation of one loop do keep different payloads (the tests caught it).
/// Here a NaN x meets itself instead of y, so x is the only NaN in the operation and the
/// result (quieted), whatever the operand order. Elsewhere there is one compilation, which
/// agrees with itself, and the select would only cost time: 40% of an in-cache float sum, as
/// measured with SSE2.
///
/// How the operand is picked matters to the vectorizer. GCC turns a `?:` feeding a float
/// operation into two paths, each with its own operation, and then cannot merge them back
/// (the operations may trap), so the loop stays scalar; a constant instead of x would even
/// fold (x + -0 is x). Integer masks keep the float operation on one path, and GCC vectorizes
/// them for 32-bit floats; for double the masks would need 64-bit compares that SSE2 lacks, and
/// there the `?:` happens to survive.
template <class T, class Op, class A>
COLLIE_DETAIL_PASS A apply_op(const Op& op, A x, A y) noexcept {
  using Plain = std::remove_cvref_t<Op>;
  constexpr bool nan_first = COLLIE_DETAIL_X86_KERNELS && is_builtin_op_v<Op>;
  if constexpr (std::is_floating_point_v<A> && std::is_same_v<Plain, Max>) {
    return float_extremum<true>(x, y);
  } else if constexpr (std::is_floating_point_v<A> && std::is_same_v<Plain, Min>) {
    return float_extremum<false>(x, y);
  } else if constexpr (nan_first && std::is_same_v<A, float>) {
    const std::uint32_t x_nan = 0u - static_cast<std::uint32_t>(x != x);
    const std::uint32_t operand =
        (std::bit_cast<std::uint32_t>(y) & ~x_nan) | (std::bit_cast<std::uint32_t>(x) & x_nan);
    return static_cast<A>(op(x, std::bit_cast<float>(operand)));
  } else if constexpr (nan_first && std::is_floating_point_v<A>) {
    return static_cast<A>(op(x, x != x ? x : y));
  } else {
    return static_cast<A>(op(x, y));
  }
}

// One pass over `length` elements: a std::integral_constant (whole tiles: a constant trip
// count, which the vectorizer likes best) or a std::size_t (the last, partial tile). Values are
// widened to A, combined, and rounded back to T only when stored to a T array.
template <Pass P, class T, class Op, class Length>
COLLIE_DETAIL_PASS void run_pass(T* __restrict dst, const T* __restrict a, const T* __restrict b,
                                 accumulator_t<T, Op>* __restrict accumulator, Length length,
                                 const Op& op) noexcept {
  using A = accumulator_t<T, Op>;
  const std::size_t n = length;
  for (std::size_t j = 0; j < n; ++j) {
    if constexpr (P == Pass::into) {
      dst[j] = static_cast<T>(apply_op<T>(op, static_cast<A>(dst[j]), static_cast<A>(a[j])));
    } else if constexpr (P == Pass::into_reversed) {
      dst[j] = static_cast<T>(apply_op<T>(op, static_cast<A>(a[j]), static_cast<A>(dst[j])));
    } else if constexpr (P == Pass::combine) {
      dst[j] = static_cast<T>(apply_op<T>(op, static_cast<A>(a[j]), static_cast<A>(b[j])));
    } else if constexpr (P == Pass::convert) {
      dst[j] = static_cast<T>(static_cast<A>(a[j]));
    } else if constexpr (P == Pass::round_trip) {
      dst[j] = static_cast<T>(static_cast<A>(dst[j]));
    } else if constexpr (P == Pass::first) {
      accumulator[j] = apply_op<T>(op, static_cast<A>(a[j]), static_cast<A>(b[j]));
    } else if constexpr (P == Pass::accumulate) {
      accumulator[j] = apply_op<T>(op, accumulator[j], static_cast<A>(a[j]));
    } else if constexpr (P == Pass::finish) {
      dst[j] = static_cast<T>(apply_op<T>(op, accumulator[j], static_cast<A>(a[j])));
    } else if constexpr (P == Pass::finish_in_place) {
      dst[j] = static_cast<T>(apply_op<T>(op, accumulator[j], static_cast<A>(dst[j])));
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

}  // namespace collie::detail
