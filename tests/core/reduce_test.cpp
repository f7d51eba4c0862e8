// Tests of the reduction kernels (reduce.hpp) and of what they are built from: the element
// types and data type tags (element.hpp) and the reduction ops (ops.hpp).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include "collie/core/reduce.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

namespace {

using collie::bfloat16;
using collie::float16;
using collie::detail::reduce_into;
using collie::detail::reduce_many;
using complex64 = std::complex<float>;

template <class... T>
std::tuple<T...> as_tuple(collie::detail::TypeList<T...>);
using AllElementTypes = decltype(as_tuple(collie::detail::ElementTypes{}));

template <class T>
constexpr bool is_16bit_float = std::is_same_v<T, float16> || std::is_same_v<T, bfloat16>;

// Random values that exercise each type: full-range integers (so sums and products wrap),
// floats of both signs in [-2, 2) (so products of up to 8 factors stay finite).
template <class T>
T random_value(std::mt19937_64& random) {
  std::uniform_real_distribution<float> real(-2.0f, 2.0f);
  if constexpr (std::is_same_v<T, bool>) {
    return (random() & 1) != 0;
  } else if constexpr (std::is_integral_v<T>) {
    return static_cast<T>(random());
  } else if constexpr (std::is_same_v<T, complex64>) {
    const float re = real(random);
    return {re, real(random)};
  } else if constexpr (std::is_same_v<T, double>) {
    return std::uniform_real_distribution<double>(-2.0, 2.0)(random);
  } else {
    return T(real(random));
  }
}

// A plain array of T (std::vector<bool> has no data()).
template <class T>
class Buffer {
 public:
  explicit Buffer(std::size_t count) : values_(new T[count]()), count_(count) {}
  T* data() { return values_.get(); }
  const T* data() const { return values_.get(); }
  std::size_t size() const { return count_; }
  T& operator[](std::size_t i) { return values_[i]; }
  const T& operator[](std::size_t i) const { return values_[i]; }

 private:
  std::unique_ptr<T[]> values_;
  std::size_t count_;
};

template <class T>
Buffer<T> random_buffer(std::size_t count, std::mt19937_64& random) {
  Buffer<T> values(count);
  for (std::size_t i = 0; i < count; ++i) values[i] = random_value<T>(random);
  return values;
}

template <class T>
bool same_bits(const T& a, const T& b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// Reference semantics, written out independently of ops.hpp for the random-data tests (which
// contain no NaN and no signed zeros). 16-bit floats are handled by the callers, in float.
struct ReferenceSum {
  template <class T>
  static T apply(T a, T b) {
    if constexpr (std::is_same_v<T, bool>)
      return a | b;
    else if constexpr (std::is_integral_v<T>)
      return T(std::uint64_t(a) + std::uint64_t(b));
    else
      return a + b;
  }
};
struct ReferenceProd {
  template <class T>
  static T apply(T a, T b) {
    if constexpr (std::is_same_v<T, bool>)
      return a & b;
    else if constexpr (std::is_integral_v<T>)
      return T(std::uint64_t(a) * std::uint64_t(b));
    else
      return a * b;
  }
};
struct ReferenceMax {
  template <class T>
  static T apply(T a, T b) {
    if constexpr (std::is_same_v<T, bool>)
      return a | b;
    else if constexpr (std::is_same_v<T, complex64>)
      return (a.real() < b.real() || (a.real() == b.real() && a.imag() < b.imag())) ? b : a;
    else
      return std::max(a, b);
  }
};
struct ReferenceMin {
  template <class T>
  static T apply(T a, T b) {
    if constexpr (std::is_same_v<T, bool>)
      return a & b;
    else if constexpr (std::is_same_v<T, complex64>)
      return (b.real() < a.real() || (b.real() == a.real() && b.imag() < a.imag())) ? b : a;
    else
      return std::min(a, b);
  }
};

// One reference step for element type T: in float, rounded back, for the 16-bit floats.
template <class Reference, class T>
T reference_step(T a, T b) {
  if constexpr (is_16bit_float<T>)
    return T(Reference::apply(float(a), float(b)));
  else
    return Reference::apply(a, b);
}

// The left fold of reduce_many; 16-bit floats accumulate in float and round once.
template <class Reference, class T>
T reference_fold(const std::vector<const T*>& sources, std::size_t i) {
  if constexpr (is_16bit_float<T>) {
    float accumulator = sources[0][i];
    for (std::size_t s = 1; s < sources.size(); ++s) {
      accumulator = Reference::apply(accumulator, float(sources[s][i]));
    }
    return T(accumulator);
  } else {
    T accumulator = sources[0][i];
    for (std::size_t s = 1; s < sources.size(); ++s) {
      accumulator = Reference::apply(accumulator, sources[s][i]);
    }
    return accumulator;
  }
}

template <class T, class Op>
constexpr std::size_t tile_for =
    collie::detail::tile_elements_v<collie::detail::accumulator_t<T, Op>>;

// Lengths around every boundary the kernels have: empty, scalar tails, tile edges.
template <class T, class Op>
std::vector<std::size_t> lengths(bool with_large) {
  constexpr std::size_t tile = tile_for<T, Op>;
  std::vector<std::size_t> result = {0,   1,        7,    255,      256,
                                     257, tile - 1, tile, tile + 1, 3 * tile + 5};
  if (with_large) result.push_back(1'000'003);
  return result;
}

template <class T, class Op, class Reference>
void check_reduce_into(std::mt19937_64& random) {
  for (std::size_t count : lengths<T, Op>(true)) {
    CAPTURE(count);
    const Buffer<T> src = random_buffer<T>(count, random);
    Buffer<T> dst = random_buffer<T>(count, random);
    Buffer<T> expected(count);
    for (std::size_t i = 0; i < count; ++i) expected[i] = reference_step<Reference>(dst[i], src[i]);
    reduce_into(dst.data(), src.data(), count, Op{});
    for (std::size_t i = 0; i < count; ++i) {
      if (!same_bits(dst[i], expected[i])) {
        FAIL(Op::name << " differs at element " << i);
      }
    }
  }
}

template <class T, class Op, class Reference>
void check_reduce_many(std::mt19937_64& random) {
  for (std::size_t count : lengths<T, Op>(false)) {
    std::vector<Buffer<T>> originals;
    for (int s = 0; s < 8; ++s) originals.push_back(random_buffer<T>(count, random));
    for (std::size_t nsrc = 1; nsrc <= 8; ++nsrc) {
      std::vector<const T*> sources;
      for (std::size_t s = 0; s < nsrc; ++s) sources.push_back(originals[s].data());
      Buffer<T> expected(count);
      for (std::size_t i = 0; i < count; ++i) expected[i] = reference_fold<Reference>(sources, i);
      // alias == nsrc: a separate destination; otherwise dst is (a copy of) srcs[alias].
      for (std::size_t alias = 0; alias <= nsrc; ++alias) {
        CAPTURE(count);
        CAPTURE(nsrc);
        CAPTURE(alias);
        Buffer<T> target(count);
        std::vector<const T*> call_sources = sources;
        if (alias < nsrc) {
          std::copy(originals[alias].data(), originals[alias].data() + count, target.data());
          call_sources[alias] = target.data();
        }
        reduce_many(target.data(), call_sources.data(), nsrc, count, Op{});
        for (std::size_t i = 0; i < count; ++i) {
          if (!same_bits(target[i], expected[i])) {
            FAIL(Op::name << " differs at element " << i);
          }
        }
      }
    }
  }
  // One long run, in place at the middle source.
  const std::size_t count = 1'000'003;
  std::vector<Buffer<T>> buffers;
  for (int s = 0; s < 3; ++s) buffers.push_back(random_buffer<T>(count, random));
  std::vector<const T*> sources = {buffers[0].data(), buffers[1].data(), buffers[2].data()};
  Buffer<T> expected(count);
  for (std::size_t i = 0; i < count; ++i) expected[i] = reference_fold<Reference>(sources, i);
  reduce_many(buffers[1].data(), sources.data(), 3, count, Op{});
  for (std::size_t i = 0; i < count; ++i) {
    if (!same_bits(buffers[1][i], expected[i])) FAIL(Op::name << " differs at element " << i);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Element types and data type tags

TEST_CASE("Element holds exactly for the fourteen element types") {
  static_assert(collie::Element<bool> && collie::Element<std::int8_t> &&
                collie::Element<std::uint64_t> && collie::Element<float16> &&
                collie::Element<bfloat16> && collie::Element<float> && collie::Element<double> &&
                collie::Element<complex64>);
  static_assert(!collie::Element<char> && !collie::Element<long double> &&
                !collie::Element<std::complex<double>> && !collie::Element<const float> &&
                !collie::Element<float&> && !collie::Element<void> &&
                !collie::Element<std::string>);
  static_assert(collie::detail::type_list_size_v<collie::detail::ElementTypes> == 14);
  CHECK(true);
}

TEST_CASE_TEMPLATE_DEFINE("data_type_v, name and size_of agree for every element type", T,
                          data_type_id) {
  constexpr collie::DataType type = collie::data_type_v<T>;
  static_assert(collie::size_of(type) == sizeof(T));
  static_assert(static_cast<std::size_t>(type) ==
                collie::detail::type_index_v<T, collie::detail::ElementTypes>);
  CHECK(collie::name(type) != "unknown");
}
TEST_CASE_TEMPLATE_APPLY(data_type_id, AllElementTypes);

TEST_CASE("data types carry the names nccl-tests and MLX print") {
  using collie::DataType;
  static_assert(collie::data_type_v<float> == DataType::float32);
  static_assert(collie::data_type_v<std::int8_t> == DataType::int8);
  static_assert(collie::data_type_v<bfloat16> == DataType::bfloat16);
  static_assert(collie::name(DataType::float32) == "float32");
  CHECK(collie::name(DataType::bool_) == "bool");
  CHECK(collie::name(DataType::int8) == "int8");
  CHECK(collie::name(DataType::uint64) == "uint64");
  CHECK(collie::name(DataType::float16) == "float16");
  CHECK(collie::name(DataType::bfloat16) == "bfloat16");
  CHECK(collie::name(DataType::float64) == "float64");
  CHECK(collie::name(DataType::complex64) == "complex64");
  CHECK(collie::name(static_cast<DataType>(200)) == "unknown");
  CHECK(collie::size_of(static_cast<DataType>(200)) == 0);
  std::set<std::string_view> names;
  for (int t = 0; t <= static_cast<int>(DataType::complex64); ++t) {
    names.insert(collie::name(static_cast<DataType>(t)));
  }
  CHECK(names.size() == 14);
}

// ---------------------------------------------------------------------------------------------
// Ops

TEST_CASE("built-in ops carry their names and kinds, and user functors are custom") {
  auto bit_xor = [](int a, int b) { return a ^ b; };
  static_assert(collie::Sum::name == "sum" && collie::Prod::name == "prod" &&
                collie::Max::name == "max" && collie::Min::name == "min");
  static_assert(collie::is_builtin_op_v<collie::Sum> &&
                collie::is_builtin_op_v<const collie::Min&>);
  static_assert(!collie::is_builtin_op_v<decltype(bit_xor)>);
  static_assert(collie::reduce_kind_v<collie::Sum> == collie::ReduceKind::sum);
  static_assert(collie::reduce_kind_v<collie::Prod> == collie::ReduceKind::prod);
  static_assert(collie::reduce_kind_v<collie::Max> == collie::ReduceKind::max);
  static_assert(collie::reduce_kind_v<collie::Min> == collie::ReduceKind::min);
  static_assert(collie::reduce_kind_v<decltype(bit_xor)> == collie::ReduceKind::custom);
  CHECK(collie::name(collie::ReduceKind::prod) == "prod");
  CHECK(collie::name(collie::ReduceKind::custom) == "custom");
}

TEST_CASE("ReduceOp admits the built-ins on every element type and fitting user functors") {
  auto bit_xor = [](int a, int b) { return a ^ b; };
  auto takes_strings = [](std::string a, std::string) { return a; };
  struct NotCopyable {
    NotCopyable() = default;
    NotCopyable(const NotCopyable&) = delete;
    int operator()(int a, int b) const { return a + b; }
  };
  static_assert(collie::ReduceOp<collie::Sum, complex64> && collie::ReduceOp<collie::Max, bool> &&
                collie::ReduceOp<collie::Min, float16> && collie::ReduceOp<collie::Prod, double>);
  static_assert(collie::ReduceOp<decltype(bit_xor), std::int32_t>);
  static_assert(collie::ReduceOp<decltype(bit_xor), std::uint8_t>);  // through int, narrowed
  static_assert(!collie::ReduceOp<decltype(takes_strings), int>);
  static_assert(!collie::ReduceOp<NotCopyable, int>);
  static_assert(!collie::ReduceOp<collie::Sum, char>);  // not an element type
  CHECK(true);
}

TEST_CASE("integer sums and products wrap around modulo 2^N without undefined behaviour") {
  // Run under -fsanitize=undefined: none of these may report.
  constexpr collie::Sum sum;
  constexpr collie::Prod prod;
  static_assert(sum(std::int8_t{127}, std::int8_t{1}) == -128);
  static_assert(prod(std::uint16_t{65535}, std::uint16_t{65535}) == 1);
  CHECK(sum(std::numeric_limits<std::int32_t>::max(), 1) ==
        std::numeric_limits<std::int32_t>::min());
  CHECK(sum(std::numeric_limits<std::int64_t>::min(), std::int64_t{-1}) ==
        std::numeric_limits<std::int64_t>::max());
  CHECK(sum(std::uint32_t{0xffffffff}, std::uint32_t{2}) == 1u);
  CHECK(prod(std::numeric_limits<std::int64_t>::min(), std::int64_t{-1}) ==
        std::numeric_limits<std::int64_t>::min());
  CHECK(prod(std::int32_t{65536}, std::int32_t{65536}) == 0);
  CHECK(prod(std::int32_t{-46341}, std::int32_t{46341}) == -2147488281LL + 4294967296LL);
  CHECK(prod(std::int16_t{-32768}, std::int16_t{-1}) == -32768);
  CHECK(prod(std::int8_t{16}, std::int8_t{16}) == 0);

  // The same through the vectorized kernels.
  std::vector<std::int32_t> a(1000, std::numeric_limits<std::int32_t>::max());
  std::vector<std::int32_t> b(1000, 2);
  reduce_into(a.data(), b.data(), a.size(), sum);
  CHECK(std::all_of(a.begin(), a.end(), [](std::int32_t x) {
    return x == std::numeric_limits<std::int32_t>::min() + 1;
  }));
  std::vector<std::int64_t> c(1000, std::numeric_limits<std::int64_t>::max());
  const std::int64_t* sources[] = {c.data(), c.data(), c.data()};
  reduce_many(c.data(), sources, 3, c.size(), prod);
  CHECK(std::all_of(c.begin(), c.end(),
                    [](std::int64_t x) { return x == std::numeric_limits<std::int64_t>::max(); }));
  std::vector<std::int16_t> d(1000, 300);
  reduce_into(d.data(), std::vector<std::int16_t>(1000, 300).data(), d.size(), prod);
  CHECK(d[999] == static_cast<std::int16_t>(90000 - 65536));
}

TEST_CASE("bool sum and max are logical or, prod and min are logical and") {
  for (bool a : {false, true}) {
    for (bool b : {false, true}) {
      CHECK(collie::Sum{}(a, b) == (a || b));
      CHECK(collie::Max{}(a, b) == (a || b));
      CHECK(collie::Prod{}(a, b) == (a && b));
      CHECK(collie::Min{}(a, b) == (a && b));
    }
  }
  const bool x[] = {false, false, true, true, false};
  const bool y[] = {false, true, false, true, false};
  const bool z[] = {false, true, true, true, true};
  const bool* sources[] = {x, y, z};
  bool any[5];
  bool all[5];
  reduce_many(any, sources, 3, 5, collie::Sum{});
  reduce_many(all, sources, 3, 5, collie::Min{});
  CHECK(std::vector<bool>(any, any + 5) == std::vector<bool>{false, true, true, true, true});
  CHECK(std::vector<bool>(all, all + 5) == std::vector<bool>{false, false, false, true, false});
}

TEST_CASE("complex max and min order by real part first, then by imaginary part") {
  constexpr collie::Max max;
  constexpr collie::Min min;
  CHECK(max(complex64{1, 5}, complex64{1, 7}) == complex64{1, 7});
  CHECK(max(complex64{2, -9}, complex64{1, 7}) == complex64{2, -9});
  CHECK(min(complex64{1, 5}, complex64{1, 7}) == complex64{1, 5});
  CHECK(min(complex64{0, 100}, complex64{1, -100}) == complex64{0, 100});
  std::vector<complex64> a = {{1, 5}, {0, 100}, {3, 3}, {-1, 0}};
  const std::vector<complex64> b = {{1, 7}, {0, 99}, {2, 50}, {-1, -1}};
  reduce_into(a.data(), b.data(), a.size(), max);
  CHECK(a == std::vector<complex64>{{1, 7}, {0, 100}, {3, 3}, {-1, 0}});
  // NaN in either part propagates; -0 orders below +0 in each part.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(std::isnan(max(complex64{nan, 0}, complex64{1, 1}).real()));
  CHECK(std::isnan(min(complex64{1, 1}, complex64{0, nan}).imag()));
  CHECK(!std::signbit(max(complex64{-0.0f, 1}, complex64{0.0f, 1}).real()));
  CHECK(std::signbit(min(complex64{0.0f, 1}, complex64{-0.0f, 1}).real()));
  // Complex sums and products are the usual ones.
  CHECK(collie::Sum{}(complex64{1, 2}, complex64{3, 4}) == complex64{4, 6});
  CHECK(collie::Prod{}(complex64{1, 2}, complex64{3, 4}) == complex64{-5, 10});
}

TEST_CASE_TEMPLATE("floating max and min propagate NaN and order -0 below +0", T, float, double,
                   float16, bfloat16) {
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const T one = T(1.0f);
  const T plus_zero = T(0.0f);
  const T minus_zero = T(-0.0f);
  auto is_nan = [](T x) { return x != x; };
  auto negative = [](T x) { return std::signbit(static_cast<double>(x)); };
  for (auto [a, b] : {std::pair{nan, one}, std::pair{one, nan}, std::pair{nan, nan}}) {
    CHECK(is_nan(collie::Max{}(a, b)));
    CHECK(is_nan(collie::Min{}(a, b)));
  }
  CHECK(!negative(collie::Max{}(minus_zero, plus_zero)));
  CHECK(!negative(collie::Max{}(plus_zero, minus_zero)));
  CHECK(negative(collie::Min{}(minus_zero, plus_zero)));
  CHECK(negative(collie::Min{}(plus_zero, minus_zero)));
  CHECK(collie::Max{}(T(-3.0f), T(2.0f)) == T(2.0f));
  CHECK(collie::Min{}(T(-3.0f), T(2.0f)) == T(-3.0f));

  // The same inside the vectorized kernels: NaNs scattered over both operands.
  const std::size_t count = 1000;
  std::vector<T> a(count);
  std::vector<T> b(count);
  for (std::size_t i = 0; i < count; ++i) {
    a[i] = i % 7 == 3 ? nan : T(static_cast<float>(i % 13) - 6.0f);
    b[i] = i % 11 == 5 ? nan : (i % 2 ? minus_zero : plus_zero);
  }
  std::vector<T> max_result = a;
  std::vector<T> min_result = a;
  reduce_into(max_result.data(), b.data(), count, collie::Max{});
  const T* sources[] = {a.data(), b.data()};
  reduce_many(min_result.data(), sources, 2, count, collie::Min{});
  for (std::size_t i = 0; i < count; ++i) {
    CAPTURE(i);
    const bool either_nan = is_nan(a[i]) || is_nan(b[i]);
    CHECK(is_nan(max_result[i]) == either_nan);
    CHECK(is_nan(min_result[i]) == either_nan);
    if (!either_nan) {
      const double x = static_cast<double>(a[i]);
      CHECK(static_cast<double>(max_result[i]) == std::max(x, 0.0));
      CHECK(static_cast<double>(min_result[i]) == std::min(x, 0.0));
      if (x == 0.0) {
        CHECK(!negative(max_result[i]));
        CHECK(negative(min_result[i]) == (negative(a[i]) || negative(b[i])));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Kernels

TEST_CASE_TEMPLATE_DEFINE("reduce_into matches a scalar loop for every element type and op", T,
                          reduce_into_id) {
  std::mt19937_64 random(1234);
  check_reduce_into<T, collie::Sum, ReferenceSum>(random);
  check_reduce_into<T, collie::Prod, ReferenceProd>(random);
  check_reduce_into<T, collie::Max, ReferenceMax>(random);
  check_reduce_into<T, collie::Min, ReferenceMin>(random);
}
TEST_CASE_TEMPLATE_APPLY(reduce_into_id, AllElementTypes);

TEST_CASE_TEMPLATE_DEFINE(
    "reduce_many matches a left fold in source order, also when dst is one of the sources", T,
    reduce_many_id) {
  std::mt19937_64 random(5678);
  check_reduce_many<T, collie::Sum, ReferenceSum>(random);
  check_reduce_many<T, collie::Prod, ReferenceProd>(random);
  check_reduce_many<T, collie::Max, ReferenceMax>(random);
  check_reduce_many<T, collie::Min, ReferenceMin>(random);
}
TEST_CASE_TEMPLATE_APPLY(reduce_many_id, AllElementTypes);

TEST_CASE("reduce_many follows the source order exactly, where float addition is not associative") {
  const float a[] = {1e8f};
  const float b[] = {1.0f};
  const float c[] = {-1e8f};
  const float d[] = {1.0f};
  float out[1];
  const float* in_order[] = {a, b, c, d};  // ((1e8 + 1) - 1e8) + 1: the first 1 is absorbed
  reduce_many(out, in_order, 4, 1, collie::Sum{});
  CHECK(out[0] == 1.0f);
  const float* reordered[] = {a, c, b, d};  // ((1e8 - 1e8) + 1) + 1
  reduce_many(out, reordered, 4, 1, collie::Sum{});
  CHECK(out[0] == 2.0f);
}

TEST_CASE("reduce_many applies a non-commutative functor in exactly the source order") {
  // f(a, b) = 3a + b (mod 2^32): the left fold is a polynomial in the sources, so any swapped
  // operand or reordered source changes the result.
  auto horner = [](std::uint32_t a, std::uint32_t b) { return a * 3u + b; };
  std::mt19937_64 random(31337);
  for (std::size_t count : {0, 1, 7, 300, 1024, 1025, 5000}) {
    std::vector<std::vector<std::uint32_t>> originals(8, std::vector<std::uint32_t>(count));
    for (auto& buffer : originals) {
      for (auto& word : buffer) word = static_cast<std::uint32_t>(random());
    }
    for (std::size_t nsrc = 1; nsrc <= 8; ++nsrc) {
      std::vector<std::uint32_t> expected(count);
      for (std::size_t i = 0; i < count; ++i) {
        std::uint32_t accumulator = originals[0][i];
        for (std::size_t s = 1; s < nsrc; ++s) accumulator = horner(accumulator, originals[s][i]);
        expected[i] = accumulator;
      }
      for (std::size_t alias = 0; alias <= nsrc; ++alias) {
        CAPTURE(count);
        CAPTURE(nsrc);
        CAPTURE(alias);
        std::vector<std::vector<std::uint32_t>> buffers(originals.begin(),
                                                        originals.begin() + nsrc);
        std::vector<const std::uint32_t*> sources;
        for (const auto& buffer : buffers) sources.push_back(buffer.data());
        std::vector<std::uint32_t> separate(count);
        std::uint32_t* dst = alias == nsrc ? separate.data() : buffers[alias].data();
        reduce_many(dst, sources.data(), nsrc, count, horner);
        CHECK(std::equal(expected.begin(), expected.end(), dst));
      }
    }
  }
}

TEST_CASE_TEMPLATE("reduce_many accepts repeated sources, also as the destination", T, float,
                   float16, std::int32_t) {
  std::mt19937_64 random(2024);
  const std::size_t count = 2500;
  std::vector<T> x(count);
  std::vector<T> y(count);
  for (std::size_t i = 0; i < count; ++i) {
    x[i] = random_value<T>(random);
    y[i] = random_value<T>(random);
  }
  auto fold = [&](std::initializer_list<const std::vector<T>*> order, std::size_t i) {
    std::vector<const T*> pointers;
    for (const auto* buffer : order) pointers.push_back(buffer->data());
    return reference_fold<ReferenceSum>(pointers, i);
  };
  // {x, x} into a separate buffer and into x itself.
  std::vector<T> twice(count);
  std::vector<T> expected_twice(count);
  for (std::size_t i = 0; i < count; ++i) expected_twice[i] = fold({&x, &x}, i);
  const T* pair[] = {x.data(), x.data()};
  reduce_many(twice.data(), pair, 2, count, collie::Sum{});
  std::vector<T> x_in_place = x;
  const T* pair_in_place[] = {x_in_place.data(), x_in_place.data()};
  reduce_many(x_in_place.data(), pair_in_place, 2, count, collie::Sum{});
  // {x, y, x, y} into y.
  std::vector<T> expected_four(count);
  for (std::size_t i = 0; i < count; ++i) expected_four[i] = fold({&x, &y, &x, &y}, i);
  std::vector<T> y_in_place = y;
  const T* four[] = {x.data(), y_in_place.data(), x.data(), y_in_place.data()};
  reduce_many(y_in_place.data(), four, 4, count, collie::Sum{});
  for (std::size_t i = 0; i < count; ++i) {
    REQUIRE(same_bits(twice[i], expected_twice[i]));
    REQUIRE(same_bits(x_in_place[i], expected_twice[i]));
    REQUIRE(same_bits(y_in_place[i], expected_four[i]));
  }
}

TEST_CASE_TEMPLATE("reduce_many of 16-bit floats accumulates in float and rounds once", T, float16,
                   bfloat16) {
  // 1 + 7 small steps of half an ulp of 1. Rounding after every step, each 1 + half-ulp is a
  // tie that goes back to 1.0; accumulating in float gives 1 + 3.5 ulp, which rounds (a tie,
  // to even) to 1 + 4 ulp.
  const float ulp = float(std::numeric_limits<T>::epsilon());
  const std::size_t count = 300;  // more than a vector, less than a tile, with a tail
  std::vector<std::vector<T>> buffers(8, std::vector<T>(count, T(ulp / 2)));
  buffers[0].assign(count, T(1.0f));
  std::vector<const T*> sources;
  for (const auto& buffer : buffers) sources.push_back(buffer.data());

  float exact = 1.0f;
  T stepwise = T(1.0f);
  for (int s = 1; s < 8; ++s) {
    exact += ulp / 2;
    stepwise = T(float(stepwise) + ulp / 2);
  }
  REQUIRE(float(stepwise) == 1.0f);
  REQUIRE(float(T(exact)) == 1.0f + 4 * ulp);

  std::vector<T> out(count);
  reduce_many(out.data(), sources.data(), 8, count, collie::Sum{});
  for (const T& value : out) REQUIRE(value.bits() == T(exact).bits());

  // In place at the last source, as an algorithm would call it.
  reduce_many(buffers[7].data(), sources.data(), 8, count, collie::Sum{});
  for (const T& value : buffers[7]) REQUIRE(value.bits() == T(exact).bits());

  // A user functor works on the 16-bit values and rounds at every step, like the chain.
  auto add_rounding = [](T a, T b) { return T(float(a) + float(b)); };
  buffers[7].assign(count, T(ulp / 2));
  reduce_many(out.data(), sources.data(), 8, count, add_rounding);
  for (const T& value : out) REQUIRE(value.bits() == stepwise.bits());

  // reduce_into rounds once per call: seven calls, seven roundings.
  std::vector<T> chained(count, T(1.0f));
  for (int s = 1; s < 8; ++s) reduce_into(chained.data(), buffers[s].data(), count, collie::Sum{});
  for (const T& value : chained) REQUIRE(value.bits() == stepwise.bits());
}

TEST_CASE("user functors reduce with their own semantics") {
  std::mt19937_64 random(99);
  const std::size_t count = 1001;
  auto bit_xor = [](std::uint32_t a, std::uint32_t b) { return a ^ b; };
  std::vector<std::vector<std::uint32_t>> words(5, std::vector<std::uint32_t>(count));
  for (auto& buffer : words) {
    for (auto& word : buffer) word = static_cast<std::uint32_t>(random());
  }
  std::vector<std::uint32_t> expected(count);
  for (std::size_t i = 0; i < count; ++i) {
    for (const auto& buffer : words) expected[i] ^= buffer[i];
  }
  std::vector<const std::uint32_t*> sources;
  for (const auto& buffer : words) sources.push_back(buffer.data());
  std::vector<std::uint32_t> out(count);
  reduce_many(out.data(), sources.data(), sources.size(), count, bit_xor);
  CHECK(out == expected);
  std::vector<std::uint32_t> chained = words[0];
  for (std::size_t s = 1; s < words.size(); ++s)
    reduce_into(chained.data(), words[s].data(), count, bit_xor);
  CHECK(chained == expected);

  // xor on signed 64-bit values, through a function object with state.
  struct MaskedXor {
    std::int64_t mask;
    std::int64_t operator()(std::int64_t a, std::int64_t b) const { return (a ^ b) & mask; }
  };
  std::vector<std::int64_t> x = {-1, 0, 0x0f0f, -2};
  const std::vector<std::int64_t> y = {0, -1, 0x00ff, 1};
  reduce_into(x.data(), y.data(), x.size(), MaskedXor{0xffff});
  CHECK(x == std::vector<std::int64_t>{0xffff, 0xffff, 0x0ff0, 0xffff});

  // A functor sees NaNs as they are: the kernels' own rule for NaN sums is not applied to it.
  auto second = [](float, float b) { return b; };
  std::vector<float> nans(37, std::numeric_limits<float>::quiet_NaN());
  const std::vector<float> numbers(37, 2.5f);
  reduce_into(nans.data(), numbers.data(), nans.size(), second);
  CHECK(nans == numbers);

  // A lambda on float: the element of larger magnitude, keeping its sign.
  auto absolute_max = [](float a, float b) { return std::fabs(b) > std::fabs(a) ? b : a; };
  std::vector<float> f = {1.0f, -5.0f, 2.0f, -0.5f};
  const std::vector<float> g = {-3.0f, 4.0f, 2.5f, 0.25f};
  reduce_into(f.data(), g.data(), f.size(), absolute_max);
  CHECK(f == std::vector<float>{-3.0f, -5.0f, 2.5f, -0.5f});
}

TEST_CASE("kernels accept zero elements and a single source") {
  reduce_into<float>(nullptr, nullptr, 0, collie::Sum{});
  const float* none[] = {nullptr};
  reduce_many<float>(nullptr, none, 1, 0, collie::Sum{});
  std::vector<float16> one = {float16(1.5f), float16(-2.0f)};
  std::vector<float16> copy(2);
  const float16* single[] = {one.data()};
  reduce_many(copy.data(), single, 1, 2, collie::Max{});
  CHECK(copy[0].bits() == one[0].bits());
  CHECK(copy[1].bits() == one[1].bits());
}

// ---------------------------------------------------------------------------------------------
// Instruction sets: the AVX2 compilation (and F16C conversions) against the portable one

namespace {

using collie::detail::Isa;
using collie::detail::reduce_into_on;
using collie::detail::reduce_many_on;

template <class T>
using bits_t = std::conditional_t<sizeof(T) == 2, std::uint16_t,
                                  std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>>;

template <class T>
T from_bits(bits_t<T> bits) {
  if constexpr (is_16bit_float<T>)
    return T::from_bits(bits);
  else
    return std::bit_cast<T>(bits);
}

// Values that reach every special case of a floating type: any encoding (NaNs with every
// payload and sign, signalling ones included, infinities, subnormals, both zeros), the
// extremes, and ordinary values whose sums cancel and round at ties. Other types take the
// random values of the tests above.
template <class T>
T edge_value(std::mt19937_64& random) {
  if constexpr (std::is_same_v<T, complex64>) {
    const float re = edge_value<float>(random);
    return {re, edge_value<float>(random)};
  } else if constexpr (std::is_floating_point_v<T> || is_16bit_float<T>) {
    using Limits = std::numeric_limits<T>;
    using Bits = bits_t<T>;
    const Bits sign = Bits{1} << (8 * sizeof(T) - 1);
    const Bits quiet_nan = std::bit_cast<Bits>(Limits::quiet_NaN());
    const Bits infinity = std::bit_cast<Bits>(Limits::infinity());
    const T specials[] = {T(0.0f),
                          T(-0.0f),
                          Limits::infinity(),
                          from_bits<T>(infinity | sign),
                          Limits::quiet_NaN(),
                          from_bits<T>(quiet_nan | sign),
                          Limits::signaling_NaN(),
                          from_bits<T>(infinity | 1),         // signalling, lowest payload
                          from_bits<T>(quiet_nan | 1 | sign),  // quiet, lowest payload
                          Limits::denorm_min(),
                          from_bits<T>(std::bit_cast<Bits>(Limits::denorm_min()) | sign),
                          Limits::min(),
                          Limits::max(),
                          Limits::lowest(),
                          Limits::epsilon(),
                          T(1.0f),
                          T(-1.0f)};
    const std::uint64_t pick = random() % 8;
    if (pick < 3) return from_bits<T>(static_cast<Bits>(random()));
    if (pick < 5) return specials[random() % std::size(specials)];
    return random_value<T>(random);
  } else {
    return random_value<T>(random);
  }
}

template <class T>
Buffer<T> edge_buffer(std::size_t count, std::mt19937_64& random) {
  Buffer<T> values(count);
  for (std::size_t i = 0; i < count; ++i) values[i] = edge_value<T>(random);
  return values;
}

template <class T>
Buffer<T> copy_of(const Buffer<T>& values) {
  Buffer<T> copy(values.size());
  std::copy(values.data(), values.data() + values.size(), copy.data());
  return copy;
}

// Requires the two results to be the same bits, naming the first element that differs.
template <class T>
void require_same_bits(const Buffer<T>& portable, const Buffer<T>& avx2) {
  for (std::size_t i = 0; i < portable.size(); ++i) {
    if (!same_bits(portable[i], avx2[i])) {
      auto hex = [](const T& value) {
        std::uint64_t bits = 0;
        std::memcpy(&bits, &value, std::min(sizeof(T), sizeof bits));
        char text[24];
        std::snprintf(text, sizeof text, "%#llx", static_cast<unsigned long long>(bits));
        return std::string(text);
      };
      FAIL("element " << i << ": portable bits " << hex(portable[i]) << ", AVX2 bits "
                      << hex(avx2[i]));
    }
  }
}

// Both kernels, every aliasing the algorithms use, on lengths around the 16-element blocks of
// the x86 passes and the tiles of the portable ones.
template <class T, class Op>
void check_isas_agree(std::mt19937_64& random) {
  CAPTURE(Op::name);
  constexpr std::size_t tile = tile_for<T, Op>;
  for (std::size_t count : {std::size_t{0}, std::size_t{1}, std::size_t{7}, std::size_t{8},
                            std::size_t{15}, std::size_t{16}, std::size_t{17}, std::size_t{31},
                            std::size_t{33}, tile - 1, tile, tile + 1, 2 * tile + 13,
                            std::size_t{100'003}}) {
    CAPTURE(count);
    std::vector<Buffer<T>> sources;
    for (int s = 0; s < 5; ++s) sources.push_back(edge_buffer<T>(count, random));

    Buffer<T> into_portable = copy_of(sources[0]);
    Buffer<T> into_avx2 = copy_of(sources[0]);
    reduce_into_on<Isa::portable>(into_portable.data(), sources[1].data(), count, Op{});
    reduce_into_on<Isa::x86_avx2>(into_avx2.data(), sources[1].data(), count, Op{});
    require_same_bits(into_portable, into_avx2);

    for (std::size_t nsrc = 1; nsrc <= sources.size(); ++nsrc) {
      CAPTURE(nsrc);
      // alias == nsrc: a separate destination; otherwise dst is (a copy of) srcs[alias].
      for (std::size_t alias : {nsrc, std::size_t{0}, nsrc / 2, nsrc - 1}) {
        CAPTURE(alias);
        Buffer<T> results[2] = {Buffer<T>(count), Buffer<T>(count)};
        for (int isa = 0; isa < 2; ++isa) {
          std::vector<const T*> pointers;
          for (std::size_t s = 0; s < nsrc; ++s) pointers.push_back(sources[s].data());
          if (alias < nsrc) {
            std::copy(sources[alias].data(), sources[alias].data() + count, results[isa].data());
            pointers[alias] = results[isa].data();
          }
          if (isa == 0) {
            reduce_many_on<Isa::portable>(results[0].data(), pointers.data(), nsrc, count, Op{});
          } else {
            reduce_many_on<Isa::x86_avx2>(results[1].data(), pointers.data(), nsrc, count, Op{});
          }
        }
        require_same_bits(results[0], results[1]);
      }
    }
  }
}

}  // namespace

TEST_CASE("the kernels run the best instruction set this CPU has") {
  CHECK(collie::detail::isa_supported(Isa::portable));
  const Isa selected = collie::detail::selected_isa();
  CHECK(collie::detail::isa_supported(selected));
  CHECK(collie::detail::name(Isa::portable) == "portable");
  CHECK(collie::detail::name(Isa::x86_avx2) == "x86-avx2");
  MESSAGE("reduction kernels use " << collie::detail::name(selected));
  if (collie::detail::isa_supported(Isa::x86_avx2)) CHECK(selected == Isa::x86_avx2);
}

TEST_CASE_TEMPLATE_DEFINE(
    "the AVX2 kernels give the portable kernels' bits on special values and ragged lengths", T,
    isa_id) {
  if (!collie::detail::isa_supported(Isa::x86_avx2)) {
    MESSAGE("collie-test SKIPPED: this CPU has no AVX2 and F16C");
    return;
  }
  std::mt19937_64 random(4242);
  check_isas_agree<T, collie::Sum>(random);
  check_isas_agree<T, collie::Prod>(random);
  check_isas_agree<T, collie::Max>(random);
  check_isas_agree<T, collie::Min>(random);
}
TEST_CASE_TEMPLATE_APPLY(isa_id, AllElementTypes);

TEST_CASE_TEMPLATE("on AVX2, every 16-bit encoding converts, adds and multiplies to the same bits",
                   T, float16, bfloat16) {
  if (!collie::detail::isa_supported(Isa::x86_avx2)) {
    MESSAGE("collie-test SKIPPED: this CPU has no AVX2 and F16C");
    return;
  }
  // Every encoding against 64 factors. A product of two 16-bit values is exact in float, with
  // up to twice the bits the type keeps, so rounding it back meets every case: ties either
  // way, carries into the exponent, overflow to Inf, subnormal results, NaNs of every payload.
  constexpr std::size_t encodings = 65536;
  constexpr std::size_t factors = 64;
  std::mt19937_64 random(77);
  Buffer<T> a(encodings * factors);
  Buffer<T> b(encodings * factors);
  for (std::size_t k = 0; k < factors; ++k) {
    const T factor = edge_value<T>(random);
    for (std::size_t i = 0; i < encodings; ++i) {
      a[k * encodings + i] = T::from_bits(static_cast<std::uint16_t>(i));
      b[k * encodings + i] = factor;
    }
  }
  const T* pair[] = {a.data(), b.data()};
  const T* single[] = {a.data()};
  for (int op = 0; op < 3; ++op) {
    CAPTURE(op);
    Buffer<T> results[2] = {Buffer<T>(a.size()), Buffer<T>(a.size())};
    for (int isa = 0; isa < 2; ++isa) {
      auto run = [&](const auto& reduction) {
        // op 0 converts (one source: widen and round back), op 1 adds, op 2 multiplies.
        const std::size_t nsrc = op == 0 ? 1 : 2;
        const T* const* sources = op == 0 ? single : pair;
        if (isa == 0) {
          reduce_many_on<Isa::portable>(results[0].data(), sources, nsrc, a.size(), reduction);
        } else {
          reduce_many_on<Isa::x86_avx2>(results[1].data(), sources, nsrc, a.size(), reduction);
        }
      };
      if (op == 2) {
        run(collie::Prod{});
      } else {
        run(collie::Sum{});
      }
    }
    require_same_bits(results[0], results[1]);
  }
  // Conversion alone is also exact against the scalar conversions.
  Buffer<T> converted(encodings);
  reduce_many_on<Isa::x86_avx2>(converted.data(), single, 1, encodings, collie::Sum{});
  for (std::size_t i = 0; i < encodings; ++i) {
    REQUIRE(converted[i].bits() == T(static_cast<float>(a[i])).bits());
  }
}

TEST_CASE_TEMPLATE("on x86-64, a NaN meeting a NaN keeps the first one's payload on both "
                   "instruction sets",
                   T, float, double, float16, bfloat16) {
  if (!COLLIE_DETAIL_X86_KERNELS) {
    MESSAGE("collie-test SKIPPED: only x86-64 builds fix which NaN a sum or product returns");
    return;
  }
  using Bits = bits_t<T>;
  const Bits quiet_nan = std::bit_cast<Bits>(std::numeric_limits<T>::quiet_NaN());
  const Bits sign = Bits{1} << (8 * sizeof(T) - 1);
  // Two quiet NaNs that differ in sign and payload, 40 times (several vectors and a tail).
  const std::size_t count = 40;
  const Buffer<T> first = [&] {
    Buffer<T> values(count);
    for (std::size_t i = 0; i < count; ++i) values[i] = from_bits<T>(quiet_nan | 1);
    return values;
  }();
  const Buffer<T> second = [&] {
    Buffer<T> values(count);
    for (std::size_t i = 0; i < count; ++i) values[i] = from_bits<T>(quiet_nan | 2 | sign);
    return values;
  }();
  for (Isa isa : {Isa::portable, Isa::x86_avx2}) {
    if (!collie::detail::isa_supported(isa)) continue;
    CAPTURE(collie::detail::name(isa));
    auto check = [&](auto op) {
      CAPTURE(decltype(op)::name);
      Buffer<T> into = copy_of(first);
      Buffer<T> many(count);
      const T* sources[] = {first.data(), second.data()};
      if (isa == Isa::portable) {
        reduce_into_on<Isa::portable>(into.data(), second.data(), count, op);
        reduce_many_on<Isa::portable>(many.data(), sources, 2, count, op);
      } else {
        reduce_into_on<Isa::x86_avx2>(into.data(), second.data(), count, op);
        reduce_many_on<Isa::x86_avx2>(many.data(), sources, 2, count, op);
      }
      for (std::size_t i = 0; i < count; ++i) {
        REQUIRE(same_bits(into[i], first[i]));
        REQUIRE(same_bits(many[i], first[i]));
      }
    };
    check(collie::Sum{});
    check(collie::Prod{});
    check(collie::Max{});
    check(collie::Min{});
  }
}
