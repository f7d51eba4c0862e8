// `collie::bfloat16`: the upper half of an IEEE binary32, stored as its 16 bits, with exact
// widening to `float` and correctly rounded narrowing, written as branchless bit manipulation
// so that the reduction kernels' conversion loops vectorize without any intrinsic. On AVX2 CPUs
// the kernels run the same integer rounding on 256-bit vectors of their own
// (core/detail/reduce_x86.hpp); these functions are the reference it is tested against.
#pragma once

#include <bit>
#include <concepts>
#include <cstdint>
#include <limits>
#include <type_traits>

// Shares the round-to-odd helpers that give the double and integer constructors one rounding.
#include "collie/core/float16.hpp"

namespace collie {
namespace detail {

/// Bits of the bfloat16 value nearest to `value`, ties to even.
///
/// bfloat16 has float's exponent range, so the same integer rounding serves normals, float
/// subnormals (which become bfloat16 subnormals, or round up into the smallest normal) and
/// overflow: values from 0x7f7f8000 (the midpoint between the largest finite bfloat16 and 2^128)
/// up round to ±Inf. A NaN keeps its sign and top 7 payload bits and comes out quiet.
/// Pure integer arithmetic: independent of the rounding mode and of flush-to-zero settings.
constexpr std::uint16_t float_to_bfloat_bits(float value) noexcept {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  // Adding 0x7fff plus the lowest kept bit, then dropping 16 bits, rounds to nearest with ties
  // to even; a carry correctly moves into the exponent (and from the largest finite into Inf).
  const std::uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  // Without this select a NaN whose payload lies in the low 16 bits would round to Inf.
  const std::uint32_t quiet_nan = (bits >> 16) | 0x0040u;
  const bool is_nan = (bits & 0x7fff'ffffu) > 0x7f80'0000u;
  return static_cast<std::uint16_t>(is_nan ? quiet_nan : rounded);
}

/// The `float` equal to the bfloat16 value `bits` (exact). A NaN keeps its sign and payload and
/// comes out quiet.
constexpr float bfloat_bits_to_float(std::uint16_t bits) noexcept {
  const std::uint32_t widened = std::uint32_t{bits} << 16;
  const bool is_nan = (widened & 0x7fff'ffffu) > 0x7f80'0000u;
  return std::bit_cast<float>(is_nan ? (widened | 0x0040'0000u) : widened);
}

}  // namespace detail

/// bfloat16 ("brain float"): 1 sign bit, 8 exponent bits, 7 mantissa bits — the top 16 bits of a
/// float. Same range as float (largest finite about 3.39e38, smallest normal 2^-126), about 2-3
/// decimal digits.
///
/// A storage and transfer type: exactly 2 bytes, trivially copyable, with no padding. It has no
/// arithmetic operators of its own: `a + b` converts both operands to `float` (implicitly,
/// exactly) and yields a `float`, which converts back (correctly rounded) when assigned to a
/// bfloat16. Comparisons likewise happen in float.
///
/// Conversions:
/// - from `float`: implicit, round to nearest even (not truncation), float subnormals rounded
///   the same way, overflow to ±Inf, NaN stays NaN (quiet). Branchless, constexpr, vectorizable.
/// - from `double` and integers: explicit, also correctly rounded (one rounding, via
///   round-to-odd). Copy-initialisation (`bfloat16 b = 0.1;`, `bfloat16 b = i;`) uses the
///   implicit float constructor instead and rounds twice, which can differ in the last bit —
///   for integers only beyond 2^24; write `bfloat16(x)` or `bfloat16{x}` when that matters.
/// - to `float`: implicit and exact; a NaN keeps its payload and comes out quiet.
///
///   collie::bfloat16 b = 3.14159f;       // 3.140625, bits 0x4049
///   float x = b + 1.0f;                  // computed in float
///   b = x;                               // back to bfloat16, rounded once
///
/// Thread safety: a plain value type.
class bfloat16 {
 public:
  /// +0.
  constexpr bfloat16() noexcept = default;

  /// The bfloat16 nearest to `value` (ties to even). Implicit, like a built-in conversion.
  constexpr bfloat16(float value) noexcept : bits_(detail::float_to_bfloat_bits(value)) {}

  /// The bfloat16 nearest to `value` (ties to even), rounded once.
  constexpr explicit bfloat16(double value) noexcept
      : bfloat16(detail::round_to_odd_float(value)) {}

  /// The bfloat16 nearest to `value` (ties to even), rounded once.
  template <std::integral I>
  constexpr explicit bfloat16(I value) noexcept
      : bfloat16(detail::round_to_odd_float(detail::round_to_odd_double(value))) {}

  /// The exact value as a float.
  constexpr operator float() const noexcept { return detail::bfloat_bits_to_float(bits_); }

  /// The bfloat16 encoding (the top 16 bits of the float it widens to, NaNs aside).
  constexpr std::uint16_t bits() const noexcept { return bits_; }

  /// The bfloat16 whose encoding is `bits` (any pattern, NaNs included, is kept as is).
  static constexpr bfloat16 from_bits(std::uint16_t bits) noexcept {
    bfloat16 result;
    result.bits_ = bits;
    return result;
  }

 private:
  std::uint16_t bits_{};
};

static_assert(sizeof(bfloat16) == 2 && alignof(bfloat16) == 2);
static_assert(std::is_trivially_copyable_v<bfloat16> && std::is_standard_layout_v<bfloat16>);

}  // namespace collie

namespace std {

/// Limits of bfloat16, as for the built-in floating types.
template <>
class numeric_limits<collie::bfloat16> {
  using T = collie::bfloat16;

 public:
  static constexpr bool is_specialized = true;
  static constexpr bool is_signed = true;
  static constexpr bool is_integer = false;
  static constexpr bool is_exact = false;
  static constexpr bool has_infinity = true;
  static constexpr bool has_quiet_NaN = true;
  static constexpr bool has_signaling_NaN = true;
  static constexpr std::float_denorm_style has_denorm = std::denorm_present;
  static constexpr bool has_denorm_loss = false;
  static constexpr std::float_round_style round_style = std::round_to_nearest;
  static constexpr bool is_iec559 = false;  // not one of the IEEE 754 interchange formats
  static constexpr bool is_bounded = true;
  static constexpr bool is_modulo = false;
  static constexpr int digits = 8;
  static constexpr int digits10 = 2;
  static constexpr int max_digits10 = 4;
  static constexpr int radix = 2;
  static constexpr int min_exponent = -125;
  static constexpr int min_exponent10 = -37;
  static constexpr int max_exponent = 128;
  static constexpr int max_exponent10 = 38;
  static constexpr bool traps = false;
  static constexpr bool tinyness_before = false;

  static constexpr T min() noexcept { return T::from_bits(0x0080); }  ///< 2^-126
  static constexpr T max() noexcept { return T::from_bits(0x7f7f); }  ///< (2 - 2^-7) * 2^127
  static constexpr T lowest() noexcept { return T::from_bits(0xff7f); }
  static constexpr T epsilon() noexcept { return T::from_bits(0x3c00); }  ///< 2^-7
  static constexpr T round_error() noexcept { return T::from_bits(0x3f00); }  ///< 0.5
  static constexpr T infinity() noexcept { return T::from_bits(0x7f80); }
  static constexpr T quiet_NaN() noexcept { return T::from_bits(0x7fc0); }
  static constexpr T signaling_NaN() noexcept { return T::from_bits(0x7fa0); }
  static constexpr T denorm_min() noexcept { return T::from_bits(0x0001); }  ///< 2^-133
};

}  // namespace std
