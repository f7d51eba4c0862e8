// Reduction operations: the built-in `Sum`, `Prod`, `Max` and `Min`, the `ReduceOp` concept that
// also admits any user functor, and the `ReduceKind` tag that lets a native backend (MPI, NCCL)
// run a built-in op with its own collective.
#pragma once

#include <bit>
#include <complex>
#include <concepts>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "collie/core/element.hpp"

namespace collie {
namespace detail {

template <class T>
inline constexpr bool is_16bit_float_v = std::is_same_v<T, float16> || std::is_same_v<T, bfloat16>;

// The unsigned type integer arithmetic is done in, so that it wraps instead of overflowing:
// `unsigned int` for the types narrower than int (they promote to int, and e.g.
// 65535 * 65535 would overflow int), the unsigned twin for the others. Converting back to a
// signed type is modular since C++20.
template <class T>
using wrapping_t = std::make_unsigned_t<decltype(+T{})>;

template <class T>
constexpr T wrapping_add(T a, T b) noexcept {
  using W = wrapping_t<T>;
  return static_cast<T>(static_cast<W>(static_cast<W>(a) + static_cast<W>(b)));
}

template <class T>
constexpr T wrapping_multiply(T a, T b) noexcept {
  using W = wrapping_t<T>;
  return static_cast<T>(static_cast<W>(static_cast<W>(a) * static_cast<W>(b)));
}

template <class F>
using float_bits_t = std::conditional_t<sizeof(F) == 4, std::uint32_t, std::uint64_t>;

// Max and min of float or double: NaN propagates, and -0 orders below +0.
//
// Written as selects with no branch so that the kernels vectorize them (compare, blend, and).
// Equal operands differ at most in the sign of zero: ANDing the bits gives +0 when either is
// +0 (max), ORing gives -0 when either is -0 (min). That makes both ops commutative to the
// bit, so every reduction order, and every algorithm, gives the same result.
template <class F>
constexpr F float_max(F a, F b) noexcept {
  using U = float_bits_t<F>;
  const F tie = std::bit_cast<F>(static_cast<U>(std::bit_cast<U>(a) & std::bit_cast<U>(b)));
  F result = a < b ? b : a;
  result = a == b ? tie : result;
  result = b != b ? b : result;
  return a != a ? a : result;
}

template <class F>
constexpr F float_min(F a, F b) noexcept {
  using U = float_bits_t<F>;
  const F tie = std::bit_cast<F>(static_cast<U>(std::bit_cast<U>(a) | std::bit_cast<U>(b)));
  F result = b < a ? b : a;
  result = a == b ? tie : result;
  result = b != b ? b : result;
  return a != a ? a : result;
}

// The order used by complex max/min on each part: the usual one, with -0 below +0.
constexpr bool ordered_less(float a, float b) noexcept {
  // std::signbit is not constexpr before C++23.
  const bool a_negative = (std::bit_cast<std::uint32_t>(a) >> 31) != 0;
  const bool b_negative = (std::bit_cast<std::uint32_t>(b) >> 31) != 0;
  return a < b || (a == b && a_negative && !b_negative);
}

constexpr bool is_nan(std::complex<float> z) noexcept {
  return z.real() != z.real() || z.imag() != z.imag();
}

// True when a orders before b: by real part, then by imaginary part.
constexpr bool complex_less(std::complex<float> a, std::complex<float> b) noexcept {
  if (ordered_less(a.real(), b.real())) return true;
  if (ordered_less(b.real(), a.real())) return false;
  return ordered_less(a.imag(), b.imag());
}

constexpr std::complex<float> complex_max(std::complex<float> a, std::complex<float> b) noexcept {
  if (is_nan(a)) return a;
  if (is_nan(b)) return b;
  return complex_less(a, b) ? b : a;
}

constexpr std::complex<float> complex_min(std::complex<float> a, std::complex<float> b) noexcept {
  if (is_nan(a)) return a;
  if (is_nan(b)) return b;
  return complex_less(b, a) ? b : a;
}

}  // namespace detail

// The built-in ops are empty, constexpr function objects, usable anywhere a functor is:
//
//   collie::Max{}(2.0f, 3.0f) == 3.0f
//   std::accumulate(v.begin(), v.end(), 0, collie::Sum{})   // wrapping int sum
//   group.all_reduce(data, collie::Prod{});                 // same as all_prod(data)
//
// Each is defined for every `Element` and nothing else, so a call on another type fails at the
// call, not inside a kernel.

/// Addition.
/// - integers: wraps modulo 2^N, signed types included (no undefined behaviour);
/// - bool: logical OR;
/// - float, double, std::complex<float>: IEEE addition;
/// - float16, bfloat16: added in float and rounded to the type (the reduction kernels go
///   further and round only once per output element, see reduce.hpp).
///
///   collie::Sum{}(std::int8_t{127}, std::int8_t{1}) == -128
struct Sum {
  static constexpr std::string_view name = "sum";

  template <Element T>
  constexpr T operator()(T a, T b) const noexcept {
    if constexpr (std::is_same_v<T, bool>) {
      return a || b;
    } else if constexpr (std::is_integral_v<T>) {
      return detail::wrapping_add(a, b);
    } else if constexpr (detail::is_16bit_float_v<T>) {
      return T(static_cast<float>(a) + static_cast<float>(b));
    } else {
      return a + b;
    }
  }
};

/// Multiplication.
/// - integers: wraps modulo 2^N, signed types included (no undefined behaviour);
/// - bool: logical AND;
/// - float, double: IEEE multiplication; std::complex<float>: the standard library's complex
///   product (with its Inf/NaN recovery, so it is not vectorized);
/// - float16, bfloat16: multiplied in float and rounded to the type.
struct Prod {
  static constexpr std::string_view name = "prod";

  template <Element T>
  constexpr T operator()(T a, T b) const noexcept {
    if constexpr (std::is_same_v<T, bool>) {
      return a && b;
    } else if constexpr (std::is_integral_v<T>) {
      return detail::wrapping_multiply(a, b);
    } else if constexpr (detail::is_16bit_float_v<T>) {
      return T(static_cast<float>(a) * static_cast<float>(b));
    } else {
      return a * b;
    }
  }
};

/// The larger operand.
/// - integers: as usual; bool: logical OR;
/// - float, double, float16, bfloat16: NaN propagates — if either operand is NaN the result is
///   NaN (the first NaN operand; for 16-bit types, quieted). A reduction that met a NaN
///   anywhere says so, which is what one wants when watching for a blow-up; this differs from
///   `std::fmax`, which would hide it. -0 orders below +0 (IEEE 754-2019 `maximum`), so the
///   op is commutative to the bit and every reduction order gives the same result;
/// - std::complex<float>: lexicographic — by real part, then by imaginary part, with the same
///   NaN and signed-zero rules (a complex with a NaN part propagates).
///
/// Compiling with -ffinite-math-only (part of -ffast-math) lets the compiler drop the NaN
/// checks; NaN propagation is then not guaranteed.
struct Max {
  static constexpr std::string_view name = "max";

  template <Element T>
  constexpr T operator()(T a, T b) const noexcept {
    if constexpr (std::is_same_v<T, bool>) {
      return a || b;
    } else if constexpr (std::is_integral_v<T>) {
      return a < b ? b : a;
    } else if constexpr (detail::is_16bit_float_v<T>) {
      return T(detail::float_max(static_cast<float>(a), static_cast<float>(b)));
    } else if constexpr (std::is_floating_point_v<T>) {
      return detail::float_max(a, b);
    } else {
      return detail::complex_max(a, b);
    }
  }
};

/// The smaller operand: the mirror image of `Max` (bool: logical AND; NaN propagates; -0 orders
/// below +0; complex numbers lexicographically by real, then imaginary part).
struct Min {
  static constexpr std::string_view name = "min";

  template <Element T>
  constexpr T operator()(T a, T b) const noexcept {
    if constexpr (std::is_same_v<T, bool>) {
      return a && b;
    } else if constexpr (std::is_integral_v<T>) {
      return b < a ? b : a;
    } else if constexpr (detail::is_16bit_float_v<T>) {
      return T(detail::float_min(static_cast<float>(a), static_cast<float>(b)));
    } else if constexpr (std::is_floating_point_v<T>) {
      return detail::float_min(a, b);
    } else {
      return detail::complex_min(a, b);
    }
  }
};

/// An operation that can reduce elements of type T: one of the built-ins above, or any
/// copyable functor (a lambda, a function object) callable as `op(a, b)` on two T and
/// returning something convertible to T.
///
///   auto bit_xor = [](std::uint32_t a, std::uint32_t b) { return a ^ b; };
///   static_assert(collie::ReduceOp<decltype(bit_xor), std::uint32_t>);
///   group.all_reduce(data, bit_xor);
///
/// Requirements a concept cannot check:
/// - associative and commutative, like an `MPI_Op` created with commute = true: algorithms
///   combine contributions in different orders and groupings (a ring starts at a different
///   rank for every chunk), so an op that is neither gives results that depend on the
///   algorithm, the rank count and the chunking;
/// - no side effects, and no exceptions (the kernels are noexcept: a throw terminates);
/// - for float16 and bfloat16 a user functor is called on the 16-bit values themselves and
///   its result is rounded at every step; only the built-ins accumulate in float.
/// Copies of the functor may be made and called from another thread.
template <class Op, class T>
concept ReduceOp = Element<T> && std::copy_constructible<Op> && requires(const Op& op, T a, T b) {
  { op(a, b) } -> std::convertible_to<T>;
};

/// True for `Sum`, `Prod`, `Max` and `Min` (cv-qualifiers and references ignored).
template <class Op>
inline constexpr bool is_builtin_op_v =
    std::is_same_v<std::remove_cvref_t<Op>, Sum> || std::is_same_v<std::remove_cvref_t<Op>, Prod> ||
    std::is_same_v<std::remove_cvref_t<Op>, Max> || std::is_same_v<std::remove_cvref_t<Op>, Min>;

/// The reduction as a run-time tag, for backends with native collectives: a built-in maps onto
/// `MPI_SUM`/`ncclSum` and friends; `custom` must be run by collie's own kernels.
///
/// Notes for a native mapping:
/// - bool: sum/max are `MPI_LOR`, prod/min `MPI_LAND`. NCCL has no logical ops, but bools are
///   bytes holding 0 or 1, so `ncclUint8` with `ncclMax` (or) and `ncclMin` (and) is exact.
/// - float16/bfloat16: MPI has no such datatypes; they need a user-defined MPI_Op (calling the
///   kernels in reduce.hpp) or collie's own algorithms.
/// - Native libraries may not share collie's NaN and signed-zero rules for max/min, nor its
///   single rounding of 16-bit sums; a backend that forwards to them says so in its docs.
enum class ReduceKind : std::uint8_t { sum, prod, max, min, custom };

/// The `ReduceKind` of Op: `custom` for anything but the four built-ins.
template <class Op>
inline constexpr ReduceKind reduce_kind_v = [] {
  using Plain = std::remove_cvref_t<Op>;
  if constexpr (std::is_same_v<Plain, Sum>) return ReduceKind::sum;
  else if constexpr (std::is_same_v<Plain, Prod>) return ReduceKind::prod;
  else if constexpr (std::is_same_v<Plain, Max>) return ReduceKind::max;
  else if constexpr (std::is_same_v<Plain, Min>) return ReduceKind::min;
  else return ReduceKind::custom;
}();

/// "sum", "prod", "max", "min" (the built-ins' `name`, and nccl-tests' `redop` column), or
/// "custom"; "unknown" for an out-of-range value.
constexpr std::string_view name(ReduceKind kind) noexcept {
  switch (kind) {
    case ReduceKind::sum: return Sum::name;
    case ReduceKind::prod: return Prod::name;
    case ReduceKind::max: return Max::name;
    case ReduceKind::min: return Min::name;
    case ReduceKind::custom: return "custom";
  }
  return "unknown";
}

}  // namespace collie
