// `collie::float16`: an IEEE 754 binary16 value stored as its 16 bits, with exact widening to
// `float` and correctly rounded narrowing, written as branchless bit manipulation so that the
// reduction kernels' conversion loops vectorize without F16C, `_Float16` or any intrinsic.
// Where the CPU has F16C the kernels convert in hardware instead (core/detail/reduce_x86.hpp),
// bit for bit as these functions do: they remain the reference and the path for other CPUs.
#pragma once

#include <bit>
#include <concepts>
#include <cstdint>
#include <limits>
#include <type_traits>

namespace collie {
namespace detail {

/// All ones when `condition` holds, else 0.
///
/// The conversions below blend their candidates with masks like this one rather than with
/// `?:`, and never let a select pick the result of a float operation. With `?:` GCC threads
/// the branches, finds that a float operation only matters on one path, and moves it into that
/// branch; under the default -ftrapping-math it will not speculate it back out, so control flow
/// stays in the loop and it is not vectorized. A float operation whose result every path uses
/// stays put.
constexpr std::uint32_t mask_if(bool condition) noexcept {
  return 0u - static_cast<std::uint32_t>(condition);
}

/// Bits of the binary16 value nearest to `value`, ties to even.
///
/// - NaN stays NaN: sign and the top 10 payload bits are kept and the quiet bit is set, so a
///   signalling NaN comes out quiet (0x7e00 when the kept payload bits are all zero).
/// - ±Inf stays ±Inf; finite values from 65520 (the midpoint between 65504 and 2^16) upwards
///   round to ±Inf, as round-to-nearest-even demands.
/// - Results below 2^-14 are subnormal (or ±0), correctly rounded; anything up to and including
///   2^-25 (half the smallest subnormal) rounds to ±0, anything above it to ±2^-24.
///
/// The subnormal path adds in `float` and so assumes the default rounding mode
/// (round-to-nearest), which is also what constant evaluation uses. Flush-to-zero and
/// denormals-are-zero modes (`-ffast-math`) do not change any result: float subnormals are far
/// below the smallest half subnormal and round to ±0 either way.
constexpr std::uint16_t float_to_half_bits(float value) noexcept {
  const std::uint32_t bits = std::bit_cast<std::uint32_t>(value);
  const std::uint32_t sign = (bits >> 16) & 0x8000u;
  const std::uint32_t magnitude = bits & 0x7fff'ffffu;
  // Below 2^31, so signed comparisons (one SSE2 instruction each) give the unsigned order.
  const auto ordered = static_cast<std::int32_t>(magnitude);
  const std::uint32_t small_mask = mask_if(ordered < 0x3880'0000);      // |value| < 2^-14
  const std::uint32_t overflow_mask = mask_if(ordered >= 0x4780'0000);  // 2^16 and up, Inf, NaN
  const std::uint32_t nan_mask = mask_if(ordered > 0x7f80'0000);

  // Subnormal result: in 0.5f + x the unit in the last place is 2^-24, the half subnormal step,
  // so the FPU's own round-to-nearest-even does the rounding and the low bits of the sum are
  // the half mantissa (1024 = 0x400 means "rounded up to 2^-14", which is exactly the encoding
  // of the smallest normal). Other inputs are masked to 0 first, so no Inf or NaN ever enters
  // the addition, and the sum then contributes exactly 0 to the result.
  const float small = std::bit_cast<float>(magnitude & small_mask);
  const std::uint32_t subnormal = std::bit_cast<std::uint32_t>(small + 0.5f) - 0x3f00'0000u;

  // Normal result: rebias the exponent from 127 to 15, then round at bit 13. Adding 0xfff plus
  // the lowest kept bit rounds to nearest with ties to even; a carry out of the mantissa
  // correctly bumps the exponent, up to 0x7c00 (Inf) from 65520 on. From 2^16 up the result is
  // Inf, and a NaN adds the quiet bit and its payload to it.
  std::uint32_t normal = (magnitude - 0x3800'0000u + 0x0fffu + ((magnitude >> 13) & 1u)) >> 13;
  normal = (normal & ~overflow_mask) | (0x7c00u & overflow_mask) |
           (nan_mask & (0x0200u | ((magnitude >> 13) & 0x03ffu)));

  return static_cast<std::uint16_t>(subnormal | (normal & ~small_mask) | sign);
}

/// The `float` equal to the binary16 value `bits` (exact: every binary16 value is a float).
/// A NaN keeps its sign and payload and comes out quiet.
constexpr float half_bits_to_float(std::uint16_t bits) noexcept {
  const std::uint32_t sign = (std::uint32_t{bits} & 0x8000u) << 16;
  const auto magnitude = static_cast<std::int32_t>(bits & 0x7fffu);
  const std::uint32_t subnormal_mask = mask_if(magnitude < 0x0400);  // exponent 0
  const std::uint32_t special_mask = mask_if(magnitude > 0x7bff);    // exponent 31: Inf, NaN
  const std::uint32_t nan_mask = mask_if(magnitude > 0x7c00);

  // Normal, Inf and NaN: move exponent and mantissa to their float positions and rebias the
  // exponent from 15 to 127 (exponent 31 goes to 255 with a second 112), setting the float
  // quiet bit for a NaN.
  std::uint32_t other = (static_cast<std::uint32_t>(magnitude) << 13) + 0x3800'0000u;
  other += special_mask & 0x3800'0000u;
  other = (other | (nan_mask & 0x0040'0000u)) & ~subnormal_mask;

  // Subnormal (and zero): mantissa * 2^-24, exact in float. The conversion (from a signed int:
  // SSE2 has no unsigned one) and the product are exact and produce normal floats only, so
  // flush-to-zero modes cannot disturb them; other inputs are masked to 0 first and contribute
  // +0.
  const float subnormal =
      static_cast<float>(magnitude & static_cast<std::int32_t>(subnormal_mask)) * 0x1p-24f;

  return std::bit_cast<float>(std::bit_cast<std::uint32_t>(subnormal) | other | sign);
}

/// `value` rounded to float with round-to-odd: an inexact result gets its last mantissa bit set.
/// A value rounded to odd with at least two bits more than the final format, then rounded to
/// nearest-even, is exactly `value` rounded to nearest-even: this is how `double` becomes a
/// float16 or bfloat16 with a single rounding (float has 24 bits, float16 11, bfloat16 8).
/// Not a hot path: this one may branch.
constexpr float round_to_odd_float(double value) noexcept {
  if (value != value) return static_cast<float>(value);
  const double magnitude = value < 0 ? -value : value;
  constexpr double float_max = static_cast<double>(std::numeric_limits<float>::max());
  if (magnitude > float_max) {
    // Infinity stays infinite. A finite value beyond FLT_MAX is inexact, so round-to-odd gives
    // FLT_MAX (odd mantissa); converting it out of range would be undefined behaviour.
    if (magnitude == std::numeric_limits<double>::infinity()) return static_cast<float>(value);
    return value < 0 ? -std::numeric_limits<float>::max() : std::numeric_limits<float>::max();
  }
  const float nearest = static_cast<float>(value);
  std::uint32_t bits = std::bit_cast<std::uint32_t>(nearest);
  if (static_cast<double>(nearest) != value && (bits & 1u) == 0) {
    // Inexact and even: the odd neighbour on the far side of `value` is one step away in
    // magnitude. Stepping the bits keeps the sign, also from ±0 to ±denorm_min.
    const double widened = static_cast<double>(nearest);
    const double nearest_magnitude = widened < 0 ? -widened : widened;
    bits = nearest_magnitude > magnitude ? bits - 1u : bits + 1u;
  }
  return std::bit_cast<float>(bits);
}

/// `value` as a double rounded to odd at 53 bits (see round_to_odd_float), so that integers
/// wider than a double's mantissa also reach the 16-bit types with a single rounding.
template <std::integral I>
constexpr double round_to_odd_double(I value) noexcept {
  if constexpr (sizeof(I) < sizeof(std::uint64_t)) {
    return static_cast<double>(value);  // exact
  } else {
    const bool negative = value < I{0};
    std::uint64_t magnitude = negative ? std::uint64_t{0} - static_cast<std::uint64_t>(value)
                                       : static_cast<std::uint64_t>(value);
    const int extra =
        static_cast<int>(std::bit_width(magnitude)) - std::numeric_limits<double>::digits;
    if (extra > 0) {
      const std::uint64_t dropped = magnitude & ((std::uint64_t{1} << extra) - 1u);
      magnitude = ((magnitude >> extra) | (dropped != 0 ? 1u : 0u)) << extra;
    }
    const double result = static_cast<double>(magnitude);  // exact now
    return negative ? -result : result;
  }
}

}  // namespace detail

/// IEEE 754 binary16 ("half"): 1 sign bit, 5 exponent bits, 10 mantissa bits; largest finite
/// value 65504, smallest normal 2^-14, smallest subnormal 2^-24, about 3 decimal digits.
///
/// A storage and transfer type: exactly 2 bytes, trivially copyable, with no padding, so
/// buffers of it go on the wire byte for byte. It has no arithmetic operators of its own:
/// `a + b` converts both operands to `float` (implicitly, exactly) and yields a `float`, which
/// converts back (correctly rounded) when assigned to a float16. Comparisons likewise happen in
/// float, so NaN != NaN and -0 == +0.
///
/// Conversions:
/// - from `float`: implicit, round to nearest even, subnormals kept, overflow to ±Inf, NaN
///   stays NaN (quiet). Branchless, constexpr, and vectorizable.
/// - from `double` and integers: explicit, also correctly rounded (one rounding, via
///   round-to-odd). Copy-initialisation from a double (`float16 h = 0.1;`) uses the implicit
///   float constructor instead and rounds twice (double -> float -> half), which can differ in
///   the last bit when the double lies within half a float ulp of the midpoint between two
///   float16 values; write `float16(d)` or `float16{d}` when that matters. For integers both
///   paths agree: integers are exact in float up to 2^24, and from 65520 on both give Inf.
/// - to `float`: implicit and exact; a NaN keeps its payload and comes out quiet.
///
///   collie::float16 h = 1.5f;            // bits 0x3e00
///   float x = h * 2.0f;                  // 3.0f, computed in float
///   h = x;                               // back to float16, rounded once
///   auto raw = h.bits();                 // 0x4200
///   auto same = collie::float16::from_bits(raw);
///
/// Thread safety: a plain value type.
class float16 {
 public:
  /// +0.
  constexpr float16() noexcept = default;

  /// The float16 nearest to `value` (ties to even). Implicit, like a built-in conversion.
  constexpr float16(float value) noexcept : bits_(detail::float_to_half_bits(value)) {}

  /// The float16 nearest to `value` (ties to even), rounded once.
  constexpr explicit float16(double value) noexcept
      : float16(detail::round_to_odd_float(value)) {}

  /// The float16 nearest to `value` (ties to even); beyond ±65519 that is ±Inf.
  template <std::integral I>
  constexpr explicit float16(I value) noexcept
      : float16(detail::round_to_odd_float(detail::round_to_odd_double(value))) {}

  /// The exact value as a float.
  constexpr operator float() const noexcept { return detail::half_bits_to_float(bits_); }

  /// The binary16 encoding.
  constexpr std::uint16_t bits() const noexcept { return bits_; }

  /// The float16 whose encoding is `bits` (any pattern, NaNs included, is kept as is).
  static constexpr float16 from_bits(std::uint16_t bits) noexcept {
    float16 result;
    result.bits_ = bits;
    return result;
  }

 private:
  std::uint16_t bits_{};
};

static_assert(sizeof(float16) == 2 && alignof(float16) == 2);
static_assert(std::is_trivially_copyable_v<float16> && std::is_standard_layout_v<float16>);

}  // namespace collie

namespace std {

/// Limits of binary16, as for the built-in floating types.
template <>
class numeric_limits<collie::float16> {
  using T = collie::float16;

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
  static constexpr bool is_iec559 = true;
  static constexpr bool is_bounded = true;
  static constexpr bool is_modulo = false;
  static constexpr int digits = 11;
  static constexpr int digits10 = 3;
  static constexpr int max_digits10 = 5;
  static constexpr int radix = 2;
  static constexpr int min_exponent = -13;
  static constexpr int min_exponent10 = -4;
  static constexpr int max_exponent = 16;
  static constexpr int max_exponent10 = 4;
  static constexpr bool traps = false;
  static constexpr bool tinyness_before = false;

  static constexpr T min() noexcept { return T::from_bits(0x0400); }  ///< 2^-14
  static constexpr T max() noexcept { return T::from_bits(0x7bff); }  ///< 65504
  static constexpr T lowest() noexcept { return T::from_bits(0xfbff); }
  static constexpr T epsilon() noexcept { return T::from_bits(0x1400); }  ///< 2^-10
  static constexpr T round_error() noexcept { return T::from_bits(0x3800); }  ///< 0.5
  static constexpr T infinity() noexcept { return T::from_bits(0x7c00); }
  static constexpr T quiet_NaN() noexcept { return T::from_bits(0x7e00); }
  static constexpr T signaling_NaN() noexcept { return T::from_bits(0x7d00); }
  static constexpr T denorm_min() noexcept { return T::from_bits(0x0001); }  ///< 2^-24
};

}  // namespace std
