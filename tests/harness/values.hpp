// The inputs of the conformance suite: rank and element counts, deterministic pseudo-random values
// for every element type and op (chosen so that every reduction order gives the same result),
// a user functor, and the element types the matrix runs over.
#pragma once

#include <malloc.h>

#include <algorithm>
#include <array>
#include <complex>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <vector>

#include "collie/core/element.hpp"
#include "collie/core/ops.hpp"

namespace collie::testing {

// The suite allocates and frees buffers of megabytes for every case. With glibc's defaults each
// is a fresh mapping, whose first touch costs a page fault per 4 KiB: that was a third of the
// suite's time. Keeping freed memory in the heap makes the next case reuse it.
inline const bool heap_keeps_large_blocks = [] {
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  return true;
}();

/// The rank counts and element counts every collective is checked with.
inline const std::vector<int> rank_counts = {1, 2, 3, 4, 5, 8};

/// Large count: odd and not divisible by any rank count, so blocks and segments are uneven.
/// Overridable with COLLIE_TEST_LARGE_COUNT (the sanitizer runs use a smaller one).
inline std::size_t large_count() {
  if (const char* v = std::getenv("COLLIE_TEST_LARGE_COUNT")) return std::stoul(v);
  return 1000003;
}

inline std::vector<std::size_t> element_counts(int p) {
  const auto n = static_cast<std::size_t>(p);
  return {0, 1, n - 1 == 0 ? 2 : n - 1, n, n + 1, large_count()};
}

/// A buffer of n elements of any element type (std::vector<bool> is not contiguous, so tests
/// use this instead), viewed as a std::span.
template <class E>
class Array {
 public:
  explicit Array(std::size_t n = 0) : data_(new E[n]{}), size_(n) {}
  Array(const Array& other) : Array(other.size_) { std::copy(other.begin(), other.end(), begin()); }
  Array& operator=(const Array& other) {
    Array copy(other);
    std::swap(data_, copy.data_);
    std::swap(size_, copy.size_);
    return *this;
  }
  E* data() noexcept { return data_.get(); }
  const E* data() const noexcept { return data_.get(); }
  std::size_t size() const noexcept { return size_; }
  E* begin() noexcept { return data(); }
  E* end() noexcept { return data() + size_; }
  const E* begin() const noexcept { return data(); }
  const E* end() const noexcept { return data() + size_; }
  E& operator[](std::size_t i) noexcept { return data_[i]; }
  const E& operator[](std::size_t i) const noexcept { return data_[i]; }

 private:
  std::unique_ptr<E[]> data_;
  std::size_t size_;
};

/// A deterministic pseudo-random integer for (case, rank, index).
inline std::uint64_t mix(std::uint64_t a, std::uint64_t b, std::uint64_t c) {
  std::uint64_t x = a * 0x9E3779B97F4A7C15ULL + b * 0xC2B2AE3D27D4EB4FULL + c + 0x165667B19E3779F9ULL;
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 29;
  return x;
}

template <class E>
E convert_int(int v) {
  if constexpr (std::is_same_v<E, bool>) {
    return v != 0;
  } else if constexpr (std::is_same_v<E, std::complex<float>>) {
    return {static_cast<float>(v), 0.0f};
  } else if constexpr (std::is_same_v<E, float16> || std::is_same_v<E, bfloat16>) {
    return E(static_cast<float>(v));
  } else {
    return static_cast<E>(v);
  }
}

/// The small integer `v` (in [-8, 120)) as an E. From a table: the suite converts hundreds of
/// millions of values, and a 16-bit float conversion costs more than the rest of the case.
template <class E>
E from_int(int v) {
  static const auto table = [] {
    std::array<E, 128> values{};
    for (int i = 0; i < 128; ++i) values[static_cast<std::size_t>(i)] = convert_int<E>(i - 8);
    return values;
  }();
  return table[static_cast<std::size_t>(v + 8)];
}

/// A user functor that is associative and commutative for every element type: xor for integers
/// and bool, a max written by hand for reals, addition for complex numbers.
struct Custom {
  static constexpr std::string_view name = "custom";
  template <class E>
  E operator()(E a, E b) const {
    if constexpr (std::is_same_v<E, bool>) {
      return a != b;
    } else if constexpr (std::is_integral_v<E>) {
      return static_cast<E>(a ^ b);
    } else if constexpr (std::is_same_v<E, std::complex<float>>) {
      return a + b;
    } else {
      return static_cast<float>(a) < static_cast<float>(b) ? b : a;
    }
  }
};

/// The input of `rank` at `index` for reductions with `Op`: small values for which every
/// reduction order gives the same value (sums stay below 2^5, products are products of ±1, ±i
/// and 2, integer arithmetic wraps), so results can be compared exactly.
template <class E, class Op>
E input_value(std::uint64_t case_id, int rank, std::size_t index) {
  const std::uint64_t h = mix(case_id, static_cast<std::uint64_t>(rank), index);
  constexpr bool is_complex = std::is_same_v<E, std::complex<float>>;
  constexpr bool is_unsigned = std::is_unsigned_v<E> && !std::is_same_v<E, bool>;
  if constexpr (std::is_same_v<Op, Prod>) {
    if constexpr (is_complex) {
      constexpr std::complex<float> values[] = {{1, 0}, {0, 1}, {-1, 0}, {1, 1}};
      return values[h % 4];
    } else if constexpr (std::is_same_v<E, bool>) {
      return (h % 5) != 0;  // mostly true, so some products stay true
    } else if constexpr (is_unsigned) {
      return from_int<E>(static_cast<int>(h % 3) + 1);
    } else {
      constexpr int values[] = {1, 2, -1, 1, -1};
      return from_int<E>(values[h % 5]);
    }
  } else if constexpr (is_complex) {
    return {static_cast<float>(static_cast<int>(h % 7) - 3),
            static_cast<float>(static_cast<int>((h >> 8) % 7) - 3)};
  } else if constexpr (std::is_same_v<E, bool>) {
    return (h & 1) != 0;
  } else if constexpr (std::is_same_v<Op, Sum>) {
    return from_int<E>(static_cast<int>(h % 4));
  } else if constexpr (is_unsigned || std::is_same_v<Op, Custom>) {
    return from_int<E>(static_cast<int>(h % 100));
  } else {
    return from_int<E>(static_cast<int>(h % 7) - 3);
  }
}

template <class E>
std::string describe_value(const E& v) {
  if constexpr (std::is_same_v<E, std::complex<float>>) {
    return "(" + std::to_string(v.real()) + "," + std::to_string(v.imag()) + ")";
  } else if constexpr (std::is_same_v<E, float16> || std::is_same_v<E, bfloat16>) {
    return std::to_string(static_cast<float>(v));
  } else {
    return std::to_string(v);
  }
}

/// The element types the reduction matrix (and the TCP worker) runs over. The sanitizer builds
/// define COLLIE_TEST_FEWER_TYPES: instrumented compiles of the whole matrix would take most of
/// CI's time budget, so there it takes one type of each kind (bool, a narrow signed and a wide
/// unsigned integer, both 16-bit floats, float, complex). Every type and op is still checked
/// under the sanitizers by reduce_test's kernels, and the default build runs the full matrix.
#ifdef COLLIE_TEST_FEWER_TYPES
using CheckedTypes = detail::TypeList<bool, std::int8_t, std::uint64_t, float16, bfloat16, float,
                                      std::complex<float>>;
#else
using CheckedTypes = detail::ElementTypes;
#endif

/// Applies `fn.template operator()<E>()` to every type of a TypeList.
template <class... E, class Fn>
void for_each_type(detail::TypeList<E...>, Fn&& fn) {
  (fn.template operator()<E>(), ...);
}

template <class List>
struct AsTuple;
template <class... T>
struct AsTuple<detail::TypeList<T...>> {
  using type = std::tuple<T...>;
};

}  // namespace collie::testing
