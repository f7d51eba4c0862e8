// Tests of collie::bfloat16: exact widening of every bit pattern, correctly rounded narrowing
// against a reference that compares distances in double, and the edge cases of rounding.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "collie/core/bfloat16.hpp"

#include <doctest/doctest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

namespace {

using collie::bfloat16;

std::uint32_t bits_of(float value) { return std::bit_cast<std::uint32_t>(value); }
float float_from(std::uint32_t bits) { return std::bit_cast<float>(bits); }

// The value of a bfloat16 pattern, decoded from the definition with ldexp.
double reference_value(std::uint16_t bits) {
  const int exponent = (bits >> 7) & 0xff;
  const int mantissa = bits & 0x7f;
  const double sign = (bits & 0x8000) ? -1.0 : 1.0;
  if (exponent == 0xff) {
    return mantissa == 0 ? sign * std::numeric_limits<double>::infinity()
                         : std::numeric_limits<double>::quiet_NaN();
  }
  if (exponent == 0) return sign * std::ldexp(mantissa, -133);
  return sign * std::ldexp(128 + mantissa, exponent - 134);
}

// The bfloat16 nearest to a non-NaN float: take the two neighbouring bfloat16 magnitudes,
// compare the distances in double (exact here), ties to the even encoding. 2^128 stands in for
// the neighbour above the largest finite value: past the midpoint, rounding goes to Inf.
std::uint16_t reference_narrow(float value) {
  const std::uint16_t sign = std::signbit(value) ? 0x8000 : 0;
  const double x = std::fabs(static_cast<double>(value));
  if (std::isinf(x)) return sign | 0x7f80;
  const auto below_bits = static_cast<std::uint16_t>((bits_of(value) >> 16) & 0x7fff);
  const auto above_bits = static_cast<std::uint16_t>(below_bits + 1);
  const double below = reference_value(below_bits);
  const double above = above_bits == 0x7f80 ? 0x1p128 : reference_value(above_bits);
  const double distance_below = x - below;
  const double distance_above = above - x;
  std::uint16_t nearest = below_bits;
  if (distance_above < distance_below ||
      (distance_above == distance_below && (below_bits & 1) != 0)) {
    nearest = above_bits;
  }
  return static_cast<std::uint16_t>(sign | nearest);
}

bool is_nan_bits(std::uint16_t bits) { return (bits & 0x7f80) == 0x7f80 && (bits & 0x7f) != 0; }

}  // namespace

TEST_CASE("bfloat16 is a trivially copyable two-byte type that starts at zero") {
  static_assert(sizeof(bfloat16) == 2);
  static_assert(std::is_trivially_copyable_v<bfloat16>);
  bfloat16 zero;
  CHECK(zero.bits() == 0);
  CHECK(bfloat16::from_bits(0xabcd).bits() == 0xabcd);
}

TEST_CASE("every bfloat16 bit pattern widens exactly and narrows back to itself") {
  for (std::uint32_t pattern = 0; pattern <= 0xffff; ++pattern) {
    const auto bits = static_cast<std::uint16_t>(pattern);
    const float widened = bfloat16::from_bits(bits);
    const std::uint16_t back = bfloat16(widened).bits();
    if (is_nan_bits(bits)) {
      REQUIRE(std::isnan(widened));
      REQUIRE(bits_of(widened) == ((std::uint32_t{bits} << 16) | 0x0040'0000u));  // quiet
      REQUIRE(back == (bits | 0x0040));
    } else {
      REQUIRE(static_cast<double>(widened) == reference_value(bits));
      REQUIRE(bits_of(widened) == std::uint32_t{bits} << 16);
      REQUIRE(back == bits);
    }
  }
}

TEST_CASE("bfloat16 rounds to nearest even at the halfway point") {
  auto narrow = [](float value) { return bfloat16(value).bits(); };
  // Near 1, where the bfloat16 step is 2^-7.
  CHECK(narrow(1.0f + 0x1p-8f) == 0x3f80);      // tie, 1.0 is even: down
  CHECK(narrow(1.0f + 3 * 0x1p-8f) == 0x3f82);  // tie, 0x3f81 is odd: up
  CHECK(narrow(std::nextafter(1.0f + 0x1p-8f, 2.0f)) == 0x3f81);
  CHECK(narrow(std::nextafter(1.0f + 0x1p-8f, 0.0f)) == 0x3f80);
  CHECK(narrow(-(1.0f + 3 * 0x1p-8f)) == 0xbf82);
  CHECK(narrow(3.14159f) == 0x4049);
  CHECK(narrow(float_from(0x4049'8000u)) == 0x404a);  // tie, 0x4049 odd: up
  CHECK(narrow(float_from(0x4048'ffffu)) == 0x4049);  // rounds up where truncation would not

  // The top of the range: the midpoint between the largest finite value (0x7f7f) and 2^128.
  CHECK(narrow(float_from(0x7f7f'0000u)) == 0x7f7f);
  CHECK(narrow(float_from(0x7f7f'7fffu)) == 0x7f7f);
  CHECK(narrow(float_from(0x7f7f'8000u)) == 0x7f80);  // tie, 0x7f7f odd: up, to Inf
  CHECK(narrow(std::numeric_limits<float>::max()) == 0x7f80);
  CHECK(narrow(-std::numeric_limits<float>::max()) == 0xff80);

  // Float subnormals become bfloat16 subnormals, rounded the same way.
  CHECK(narrow(std::numeric_limits<float>::denorm_min()) == 0x0000);
  CHECK(narrow(float_from(0x0000'8000u)) == 0x0000);  // half the smallest: tie, to 0
  CHECK(narrow(float_from(0x0000'8001u)) == 0x0001);  // slightly above: up
  CHECK(narrow(float_from(0x0001'8000u)) == 0x0002);  // tie, 0x0001 odd: up
  CHECK(narrow(float_from(0x8002'8000u)) == 0x8002);  // tie, 0x8002 even: down
  CHECK(narrow(float_from(0x007f'8000u)) == 0x0080);  // largest subnormal + half: to 2^-126
  CHECK(narrow(0.0f) == 0x0000);
  CHECK(narrow(-0.0f) == 0x8000);
}

TEST_CASE("bfloat16 keeps infinities and turns every NaN into a quiet NaN") {
  constexpr float inf = std::numeric_limits<float>::infinity();
  CHECK(bfloat16(inf).bits() == 0x7f80);
  CHECK(bfloat16(-inf).bits() == 0xff80);
  CHECK(bfloat16(std::numeric_limits<float>::quiet_NaN()).bits() == 0x7fc0);
  // Payload only in the low 16 bits: plain rounding would have made this Inf.
  CHECK(bfloat16(float_from(0x7f80'0001u)).bits() == 0x7fc0);
  CHECK(bfloat16(float_from(0x7f80'ffffu)).bits() == 0x7fc0);
  CHECK(bfloat16(float_from(0xff81'0000u)).bits() == 0xffc1);
  CHECK(bfloat16(float_from(0x7fff'ffffu)).bits() == 0x7fff);
  CHECK(bits_of(bfloat16::from_bits(0x7f81)) == 0x7fc1'0000u);
}

TEST_CASE("bfloat16 narrowing matches a slow reference on millions of floats") {
  std::vector<float> inputs;
  // Every rounding boundary of every bfloat16 value: the low 16 bits at and around the
  // midpoint 0x8000, and at the ends, for all 65536 upper halves (both signs included).
  for (std::uint32_t upper = 0; upper <= 0xffff; ++upper) {
    for (std::uint32_t lower : {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu}) {
      inputs.push_back(float_from((upper << 16) | lower));
    }
  }
  std::mt19937_64 random(0xbf16);
  for (int i = 0; i < 4'000'000; ++i) {
    inputs.push_back(float_from(static_cast<std::uint32_t>(random())));
  }

  std::size_t compared = 0;
  for (float x : inputs) {
    const std::uint16_t ours = bfloat16(x).bits();
    if (std::isnan(x)) {
      REQUIRE(is_nan_bits(ours));
      continue;
    }
    REQUIRE(ours == reference_narrow(x));
    ++compared;
  }
  CHECK(compared > 4'000'000);
}

TEST_CASE("bfloat16 converts doubles and integers with a single rounding") {
  // Just above a tie; through float the 2^-40 is lost, and the tie rounds down to 1.0.
  const double above_tie = 1.0 + 0x1p-8 + 0x1p-40;
  CHECK(bfloat16(static_cast<float>(above_tie)).bits() == 0x3f80);
  CHECK(bfloat16(above_tie).bits() == 0x3f81);
  CHECK(bfloat16(-above_tie).bits() == 0xbf81);
  CHECK(bfloat16(1.0 + 0x1p-8).bits() == 0x3f80);
  CHECK(bfloat16(1e300).bits() == 0x7f80);
  CHECK(bfloat16(-1e300).bits() == 0xff80);
  CHECK(bfloat16(1e-300).bits() == 0x0000);
  CHECK(bfloat16(0x1p-134 + 0x1p-180).bits() == 0x0001);  // just above half the smallest
  CHECK(bfloat16(0x1p-134).bits() == 0x0000);
  CHECK(std::isnan(float(bfloat16(std::numeric_limits<double>::quiet_NaN()))));

  // 2^24 + 2^16 + 1: int -> float rounds to the tie 2^24 + 2^16, which then goes to even, 2^24.
  const std::int32_t awkward = (1 << 24) + (1 << 16) + 1;
  CHECK(bfloat16(static_cast<float>(awkward)).bits() == 0x4b80);
  CHECK(bfloat16(awkward).bits() == 0x4b81);
  CHECK(bfloat16(-awkward).bits() == 0xcb81);
  // The same above 2^53, where even int64 -> double rounds.
  const std::int64_t wide = (std::int64_t{1} << 60) + (std::int64_t{1} << 52) + 1;
  CHECK(bfloat16(static_cast<float>(static_cast<double>(wide))).bits() == 0x5d80);
  CHECK(bfloat16(wide).bits() == 0x5d81);
  CHECK(bfloat16(std::numeric_limits<std::uint64_t>::max()).bits() == 0x5f80);  // 2^64
  CHECK(bfloat16(std::numeric_limits<std::int64_t>::min()).bits() == 0xdf00);   // -2^63
  CHECK(bfloat16(std::uint8_t{255}).bits() == 0x437f);   // 8 significant bits: exact
  CHECK(bfloat16(std::uint16_t{257}).bits() == 0x4380);  // tie, to even: 256
  CHECK(bfloat16(std::uint16_t{259}).bits() == 0x4382);  // tie, to even: 260

  // Random doubles near bfloat16 midpoints, against the reference on the exact value.
  std::mt19937_64 random(7);
  for (int i = 0; i < 1'000'000; ++i) {
    const auto lower = static_cast<std::uint16_t>(random() % 0x7f7f);
    const double midpoint =
        (reference_value(lower) + reference_value(static_cast<std::uint16_t>(lower + 1))) / 2;
    const double offset = std::ldexp(1.0, static_cast<int>(random() % 60) - 30) *
                          std::fabs(midpoint) * 0x1p-40 * ((random() & 1) ? 1.0 : -1.0);
    const double x = midpoint + (random() % 4 == 0 ? 0.0 : offset);
    std::uint16_t expected = lower;
    if (x > midpoint || (x == midpoint && (lower & 1) != 0)) {
      expected = static_cast<std::uint16_t>(lower + 1);
    }
    REQUIRE(bfloat16(x).bits() == expected);
  }
}

TEST_CASE("bfloat16 numeric_limits describe the format") {
  using limits = std::numeric_limits<bfloat16>;
  static_assert(limits::is_specialized && limits::has_infinity && limits::digits == 8);
  CHECK(float(limits::max()) == float_from(0x7f7f'0000u));
  CHECK(float(limits::lowest()) == -float_from(0x7f7f'0000u));
  CHECK(float(limits::min()) == std::numeric_limits<float>::min());
  CHECK(float(limits::denorm_min()) == float_from(0x0001'0000u));
  CHECK(float(limits::epsilon()) == 0x1p-7f);
  CHECK(float(limits::infinity()) == std::numeric_limits<float>::infinity());
  CHECK(std::isnan(float(limits::quiet_NaN())));
  CHECK(std::isnan(float(limits::signaling_NaN())));
}

TEST_CASE("bfloat16 conversions work in constant expressions") {
  static_assert(bfloat16(1.0f).bits() == 0x3f80);
  static_assert(bfloat16(1.0f + 3 * 0x1p-8f).bits() == 0x3f82);
  static_assert(bfloat16(std::numeric_limits<float>::quiet_NaN()).bits() == 0x7fc0);
  static_assert(float(bfloat16::from_bits(0x4049)) == 3.140625f);
  static_assert(bfloat16(1.0 + 0x1p-8 + 0x1p-40).bits() == 0x3f81);
  CHECK(true);
}

TEST_CASE("bfloat16 arithmetic and comparisons go through float") {
  const bfloat16 a = 1.5f;
  const bfloat16 b = 0.25f;
  static_assert(std::is_same_v<decltype(a + b), float>);
  const bfloat16 sum = a + b;
  CHECK(float(sum) == 1.75f);
  CHECK(b < a);
  // 256 + 1 rounds back to 256: bfloat16 has 8 significant bits.
  const bfloat16 big = 256.0f;
  const bfloat16 rounded = big + bfloat16(1.0f);
  CHECK(float(rounded) == 256.0f);
}
