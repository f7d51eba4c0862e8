// Tests of collie::float16: exact widening of every bit pattern, correctly rounded narrowing
// against references built a different way, and the edge cases of round-to-nearest-even.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "collie/core/float16.hpp"

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

namespace {

using collie::float16;

std::uint32_t bits_of(float value) { return std::bit_cast<std::uint32_t>(value); }
float float_from(std::uint32_t bits) { return std::bit_cast<float>(bits); }

// The value of a binary16 pattern, decoded from the definition with ldexp.
double reference_value(std::uint16_t bits) {
  const int exponent = (bits >> 10) & 0x1f;
  const int mantissa = bits & 0x3ff;
  const double sign = (bits & 0x8000) ? -1.0 : 1.0;
  if (exponent == 0x1f) {
    return mantissa == 0 ? sign * std::numeric_limits<double>::infinity()
                         : std::numeric_limits<double>::quiet_NaN();
  }
  if (exponent == 0) return sign * std::ldexp(mantissa, -24);
  return sign * std::ldexp(1024 + mantissa, exponent - 25);
}

// Every non-negative finite float16 in increasing order (index == bits), followed by 2^16 at
// index 0x7c00: the point past which rounding goes to infinity, and an "even" neighbour.
const std::vector<double>& positive_values() {
  static const std::vector<double> values = [] {
    std::vector<double> v(0x7c01);
    for (std::uint32_t bits = 0; bits < 0x7c00; ++bits) {
      v[bits] = reference_value(static_cast<std::uint16_t>(bits));
    }
    v[0x7c00] = 65536.0;
    return v;
  }();
  return values;
}

// The float16 nearest to a non-NaN float, found by binary search over all values and a
// comparison of distances in double (exact here), ties to the even encoding.
std::uint16_t reference_narrow(float value) {
  const std::uint16_t sign = std::signbit(value) ? 0x8000 : 0;
  const double x = std::fabs(static_cast<double>(value));
  const auto& v = positive_values();
  if (x >= 65520.0) return sign | 0x7c00;  // includes infinity
  // The last index whose value is <= x.
  std::size_t low = 0;
  std::size_t high = 0x7c00;
  while (high - low > 1) {
    const std::size_t middle = (low + high) / 2;
    (v[middle] <= x ? low : high) = middle;
  }
  const double below = x - v[low];
  const double above = v[low + 1] - x;
  std::size_t nearest = low;
  if (above < below || (above == below && (low & 1) != 0)) nearest = low + 1;
  return static_cast<std::uint16_t>(sign | nearest);
}

bool is_nan_bits(std::uint16_t bits) { return (bits & 0x7c00) == 0x7c00 && (bits & 0x3ff) != 0; }

}  // namespace

TEST_CASE("float16 is a trivially copyable two-byte type that starts at zero") {
  static_assert(sizeof(float16) == 2);
  static_assert(std::is_trivially_copyable_v<float16>);
  static_assert(std::is_nothrow_default_constructible_v<float16>);
  float16 zero;
  CHECK(zero.bits() == 0);
  CHECK(float16{}.bits() == 0);
  CHECK(float16::from_bits(0x1234).bits() == 0x1234);
}

TEST_CASE("every float16 bit pattern widens exactly and narrows back to itself") {
  for (std::uint32_t pattern = 0; pattern <= 0xffff; ++pattern) {
    const auto bits = static_cast<std::uint16_t>(pattern);
    const float widened = float16::from_bits(bits);
    const std::uint16_t back = float16(widened).bits();
    if (is_nan_bits(bits)) {
      // NaN: stays NaN, keeps sign and payload, comes out quiet both ways.
      REQUIRE(std::isnan(widened));
      REQUIRE((bits_of(widened) & 0x0040'0000u) != 0);
      REQUIRE(std::signbit(widened) == ((bits & 0x8000) != 0));
      REQUIRE(((bits_of(widened) >> 13) & 0x1ff) == (bits & 0x1ff));
      REQUIRE(back == (bits | 0x0200));
    } else {
      REQUIRE(static_cast<double>(widened) == reference_value(bits));
      REQUIRE(std::signbit(widened) == ((bits & 0x8000) != 0));  // -0 stays -0
      REQUIRE(back == bits);
    }
  }
}

TEST_CASE("float16 rounds to nearest even at the halfway point") {
  auto narrow = [](float value) { return float16(value).bits(); };
  // Near 1, where the float16 step is 2^-10.
  CHECK(narrow(1.0f + 0x1p-11f) == 0x3c00);                        // tie, 1.0 is even: down
  CHECK(narrow(1.0f + 3 * 0x1p-11f) == 0x3c02);                    // tie, 0x3c01 is odd: up
  CHECK(narrow(std::nextafter(1.0f + 0x1p-11f, 2.0f)) == 0x3c01);  // just above the tie: up
  CHECK(narrow(std::nextafter(1.0f + 3 * 0x1p-11f, 0.0f)) == 0x3c01);
  CHECK(narrow(-(1.0f + 0x1p-11f)) == 0xbc00);
  CHECK(narrow(-(1.0f + 3 * 0x1p-11f)) == 0xbc02);

  // The top of the range: 65504 is the largest finite, 65520 the midpoint to "2^16".
  CHECK(narrow(65504.0f) == 0x7bff);
  CHECK(narrow(65519.0f) == 0x7bff);
  CHECK(narrow(std::nextafter(65520.0f, 0.0f)) == 0x7bff);
  CHECK(narrow(65520.0f) == 0x7c00);  // tie: 0x7bff is odd, so up, to infinity
  CHECK(narrow(-65520.0f) == 0xfc00);
  CHECK(narrow(65536.0f) == 0x7c00);
  CHECK(narrow(1e30f) == 0x7c00);
  CHECK(narrow(std::numeric_limits<float>::max()) == 0x7c00);
  CHECK(narrow(-std::numeric_limits<float>::max()) == 0xfc00);

  // Subnormals, where the step is 2^-24.
  CHECK(narrow(0x1p-24f) == 0x0001);
  CHECK(narrow(0x1p-25f) == 0x0000);  // half the smallest subnormal: tie, 0 is even
  CHECK(narrow(-0x1p-25f) == 0x8000);
  CHECK(narrow(std::nextafter(0x1p-25f, 1.0f)) == 0x0001);  // slightly above: up
  CHECK(narrow(std::nextafter(0x1p-25f, 0.0f)) == 0x0000);
  CHECK(narrow(3 * 0x1p-25f) == 0x0002);  // 1.5 steps: tie, to 2
  CHECK(narrow(5 * 0x1p-25f) == 0x0002);  // 2.5 steps: tie, to 2
  CHECK(narrow(7 * 0x1p-25f) == 0x0004);  // 3.5 steps: tie, to 4
  CHECK(narrow(-5 * 0x1p-25f) == 0x8002);
  CHECK(narrow(1023.5f * 0x1p-24f) == 0x0400);  // largest subnormal + half: up to 2^-14
  CHECK(narrow(1022.5f * 0x1p-24f) == 0x03fe);
  CHECK(narrow(0x1p-14f) == 0x0400);
  CHECK(narrow(0x1p-14f + 0x1p-25f) == 0x0400);  // first normal binade: tie, down to even
  CHECK(narrow(0x1p-14f + 3 * 0x1p-25f) == 0x0402);

  // Zeros, float subnormals, and values far below the float16 range.
  CHECK(narrow(0.0f) == 0x0000);
  CHECK(narrow(-0.0f) == 0x8000);
  CHECK(narrow(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(narrow(-std::numeric_limits<float>::denorm_min()) == 0x8000);
  CHECK(narrow(1e-30f) == 0x0000);
}

TEST_CASE("float16 keeps infinities and turns every NaN into a quiet NaN") {
  constexpr float inf = std::numeric_limits<float>::infinity();
  CHECK(float16(inf).bits() == 0x7c00);
  CHECK(float16(-inf).bits() == 0xfc00);
  CHECK(float(float16::from_bits(0x7c00)) == inf);
  CHECK(float(float16::from_bits(0xfc00)) == -inf);

  CHECK(float16(std::numeric_limits<float>::quiet_NaN()).bits() == 0x7e00);
  CHECK(float16(float_from(0x7f80'0001u)).bits() == 0x7e00);  // signalling, payload below bit 13
  CHECK(float16(float_from(0x7fa0'0000u)).bits() == 0x7f00);  // signalling, payload kept
  CHECK(float16(float_from(0xffc0'2000u)).bits() == 0xfe01);  // negative, payload kept
  CHECK(float16(float_from(0x7fff'ffffu)).bits() == 0x7fff);

  const float widened = float16::from_bits(0x7c01);  // signalling float16 NaN
  CHECK(bits_of(widened) == 0x7fc0'2000u);
}

TEST_CASE("float16 narrowing matches a slow reference on millions of floats") {
  std::vector<float> inputs;
  // Every rounding boundary: each value, each midpoint between neighbours, and the floats
  // right next to them, both signs.
  const auto& v = positive_values();
  for (std::size_t i = 0; i < 0x7c00; ++i) {
    const auto value = static_cast<float>(v[i]);
    const auto midpoint = static_cast<float>((v[i] + v[i + 1]) / 2);  // exact: 12 bits
    for (float x : {value, midpoint, std::nextafter(midpoint, 0.0f), std::nextafter(midpoint, 1e9f),
                    std::nextafter(value, 1e9f)}) {
      inputs.push_back(x);
      inputs.push_back(-x);
    }
  }
  std::mt19937_64 random(0x5eed'f16);
  // Random floats in and around the float16 range (exponents 2^-30 .. 2^20), both signs.
  for (int i = 0; i < 3'000'000; ++i) {
    const auto exponent = static_cast<std::uint32_t>(97 + random() % 51);
    const auto bits = static_cast<std::uint32_t>(random() & 0x807f'ffffu) | (exponent << 23);
    inputs.push_back(float_from(bits));
  }
  // Random bit patterns: anything at all, including float subnormals, Inf and NaN.
  for (int i = 0; i < 1'000'000; ++i) {
    inputs.push_back(float_from(static_cast<std::uint32_t>(random())));
  }

  std::size_t compared = 0;
  for (float x : inputs) {
    const std::uint16_t ours = float16(x).bits();
    if (std::isnan(x)) {
      REQUIRE(is_nan_bits(ours));
      continue;
    }
    REQUIRE(ours == reference_narrow(x));
#ifdef __FLT16_MANT_DIG__
    // The compiler's own conversion, where it has one (GCC on x86-64 and AArch64).
    REQUIRE(ours == std::bit_cast<std::uint16_t>(static_cast<_Float16>(x)));
#endif
    ++compared;
  }
  CHECK(compared > 4'000'000);
}

TEST_CASE("float16 narrowing is exact for every float between 2^-26 and 2^17") {
  // A sweep over every float in the range where rounding can go more than one way, in
  // increasing order, against an expected encoding that steps past each midpoint (ties to the
  // even encoding). Below 2^-26 the result is always 0, above 2^17 always Inf.
  const auto& v = positive_values();
  std::uint32_t expected = 0;
  for (std::uint32_t bits = bits_of(0x1p-26f); bits < bits_of(0x1p17f); ++bits) {
    const double x = float_from(bits);
    while (expected < 0x7c00) {
      const double midpoint = (v[expected] + v[expected + 1]) / 2;
      if (x > midpoint || (x == midpoint && (expected & 1) != 0)) {
        ++expected;
      } else {
        break;
      }
    }
    const std::uint16_t ours = float16(float_from(bits)).bits();
    if (ours != expected) {
      FAIL("float bits " << bits << ": got " << ours << ", expected " << expected);
    }
  }
  CHECK(expected == 0x7c00);
}

TEST_CASE("float16 converts doubles and integers with a single rounding") {
  // 1 + 2^-11 + 2^-40 is just above a tie; through float it would land on the tie and round
  // down to 1.0.
  const double above_tie = 1.0 + 0x1p-11 + 0x1p-40;
  CHECK(float16(static_cast<float>(above_tie)).bits() == 0x3c00);
  CHECK(float16(above_tie).bits() == 0x3c01);
  CHECK(float16(-above_tie).bits() == 0xbc01);
  CHECK(float16(1.0 + 0x1p-11).bits() == 0x3c00);
  CHECK(float16(0x1p-25 + 0x1p-60).bits() == 0x0001);
  CHECK(float16(0x1p-25).bits() == 0x0000);
  CHECK(float16(1e-300).bits() == 0x0000);
  CHECK(float16(-1e-300).bits() == 0x8000);
  CHECK(float16(1e300).bits() == 0x7c00);
  CHECK(float16(-std::numeric_limits<double>::infinity()).bits() == 0xfc00);
  CHECK(std::isnan(float(float16(std::numeric_limits<double>::quiet_NaN()))));

  CHECK(float16(2049).bits() == float16(2048.0f).bits());  // tie, to even
  CHECK(float16(2051).bits() == float16(2052.0f).bits());  // tie, to even
  CHECK(float16(std::int64_t{65519}).bits() == 0x7bff);
  CHECK(float16(std::int64_t{65520}).bits() == 0x7c00);
  CHECK(float16(std::numeric_limits<std::int64_t>::min()).bits() == 0xfc00);
  CHECK(float16(std::numeric_limits<std::uint64_t>::max()).bits() == 0x7c00);
  CHECK(float16(std::int8_t{-3}).bits() == float16(-3.0f).bits());
  CHECK(float16(true).bits() == 0x3c00);

#ifdef __FLT16_MANT_DIG__
  std::mt19937_64 random(42);
  for (int i = 0; i < 1'000'000; ++i) {
    // Doubles close to float16 midpoints, where double rounding would show.
    const auto half_bits = static_cast<std::uint16_t>(random() % 0x7c00);
    const auto next_bits = static_cast<std::uint16_t>(half_bits + 1);
    const double midpoint = (reference_value(half_bits) + reference_value(next_bits)) / 2;
    const auto steps = static_cast<std::int64_t>(random() % 2001) - 1000;
    const double offset =
        std::ldexp(static_cast<double>(steps), static_cast<int>(random() % 40) - 80);
    const double x = (midpoint + offset) * ((random() & 1) ? 1.0 : -1.0);
    REQUIRE(float16(x).bits() == std::bit_cast<std::uint16_t>(static_cast<_Float16>(x)));
  }
#endif
}

TEST_CASE("float16 numeric_limits describe IEEE binary16") {
  using limits = std::numeric_limits<float16>;
  static_assert(limits::is_specialized && limits::is_iec559 && limits::has_infinity);
  static_assert(limits::digits == 11 && limits::max_exponent == 16 && limits::min_exponent == -13);
  CHECK(float(limits::max()) == 65504.0f);
  CHECK(float(limits::lowest()) == -65504.0f);
  CHECK(float(limits::min()) == 0x1p-14f);
  CHECK(float(limits::denorm_min()) == 0x1p-24f);
  CHECK(float(limits::epsilon()) == 0x1p-10f);
  CHECK(float(limits::round_error()) == 0.5f);
  CHECK(float(limits::infinity()) == std::numeric_limits<float>::infinity());
  CHECK(std::isnan(float(limits::quiet_NaN())));
  CHECK(std::isnan(float(limits::signaling_NaN())));
  CHECK(float(float16(1.0f + float(limits::epsilon()))) > 1.0f);
}

TEST_CASE("float16 conversions work in constant expressions") {
  static_assert(float16(1.0f).bits() == 0x3c00);
  static_assert(float16(-2.5f).bits() == 0xc100);
  static_assert(float16(65520.0f).bits() == 0x7c00);
  static_assert(float16(0x1p-25f).bits() == 0x0000);
  static_assert(float16(3 * 0x1p-25f).bits() == 0x0002);
  static_assert(float16(std::numeric_limits<float>::quiet_NaN()).bits() == 0x7e00);
  static_assert(float(float16::from_bits(0x0001)) == 0x1p-24f);
  static_assert(float(float16::from_bits(0x3555)) == 0x1.554p-2f);
  static_assert(float16(1.0 + 0x1p-11 + 0x1p-40).bits() == 0x3c01);
  static_assert(float16(std::int64_t{-2051}).bits() == 0xe802);
  CHECK(true);
}

TEST_CASE("float16 arithmetic and comparisons go through float") {
  const float16 a = 1.5f;
  const float16 b = 2.25f;
  static_assert(std::is_same_v<decltype(a + b), float>);
  static_assert(std::is_same_v<decltype(a * 2.0f), float>);
  const float16 sum = a + b;
  CHECK(float(sum) == 3.75f);
  CHECK(a < b);
  CHECK(float16(-0.0f) == float16(0.0f));
  const float16 nan = std::numeric_limits<float16>::quiet_NaN();
  CHECK_FALSE(nan == nan);
  // 2048 + 1 is 2049 in float, which rounds back to 2048 in float16.
  const float16 big = 2048.0f;
  const float16 rounded = big + float16(1.0f);
  CHECK(float(rounded) == 2048.0f);
}
