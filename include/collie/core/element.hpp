// The element types collie can reduce and move: the `Element` concept for templates, and the
// `DataType` tag that carries the same information at run time (to MPI/NCCL, into benchmark
// columns, across a type-erased `Reduction`).
#pragma once

#include <complex>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "collie/core/bfloat16.hpp"
#include "collie/core/float16.hpp"

namespace collie {
namespace detail {

/// A list of types, for iterating over them at compile time (tests, dispatch tables).
template <class... T>
struct TypeList {};

/// Every element type, in `DataType` order: `data_type_v<T>` is T's index in this list.
/// To run something for each of them:
///
///   template <class... T>
///   void check_all(collie::detail::TypeList<T...>) { (check<T>(), ...); }
///   check_all(collie::detail::ElementTypes{});
using ElementTypes =
    TypeList<bool, std::int8_t, std::int16_t, std::int32_t, std::int64_t, std::uint8_t,
             std::uint16_t, std::uint32_t, std::uint64_t, float16, bfloat16, float, double,
             std::complex<float>>;

// Index of T in a TypeList, or the list's length when T is absent. Exact type match: no
// decay, no cv-stripping, so `const float` is not an element type (buffers are spans of T or
// const T, and it is the T that is checked).
template <class T, class List>
inline constexpr std::size_t type_index_v = 0;

template <class T, class... Types>
inline constexpr std::size_t type_index_v<T, TypeList<Types...>> = [] {
  std::size_t index = 0;
  // Counts the non-matching types before the first match; the fold stops at the match.
  (void)((std::is_same_v<T, Types> || (++index, false)) || ...);
  return index;
}();

template <class List>
inline constexpr std::size_t type_list_size_v = 0;

template <class... Types>
inline constexpr std::size_t type_list_size_v<TypeList<Types...>> = sizeof...(Types);

}  // namespace detail

/// True exactly for the types collie reduces and moves:
///
///   bool, int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t,
///   collie::float16, collie::bfloat16, float, double, std::complex<float>
///
/// Every operation that takes typed buffers is constrained on it, so a buffer of another type
/// is a compile error that names this concept, not a failure deep inside a kernel:
///
///   template <collie::Element T>
///   void all_sum(std::span<T> data);
///   static_assert(collie::Element<collie::bfloat16> && !collie::Element<long double>);
///
/// The match is exact: `char`, `long long` (where int64_t is `long`), `long double`,
/// `std::complex<double>` and cv-qualified types are not elements. A new element type would
/// need a reduction in every op (ops.hpp), a `DataType` value and a mapping in every native
/// transport, which is why the list is closed rather than a customization point.
template <class T>
concept Element =
    detail::type_index_v<T, detail::ElementTypes> < detail::type_list_size_v<detail::ElementTypes>;

/// The element type as a run-time tag, in the order of `detail::ElementTypes`. It travels where
/// a template parameter cannot: to MPI datatypes and NCCL enums, into benchmark output, and
/// into a connection handshake that checks both ends agree. One byte, so it fits any header.
///
/// The numeric values are part of the wire format (peers compare them), so they never change:
/// a new type is appended at the end, and peers built with different versions then disagree
/// loudly instead of misreading each other's data.
///
///   collie::DataType type = collie::data_type_v<float>;   // DataType::float32
///   std::size_t bytes = count * collie::size_of(type);    // 4 * count
///   std::string_view label = collie::name(type);          // "float32"
enum class DataType : std::uint8_t {
  bool_,      ///< bool, one byte holding 0 or 1
  int8,
  int16,
  int32,
  int64,
  uint8,
  uint16,
  uint32,
  uint64,
  float16,    ///< collie::float16 (IEEE binary16)
  bfloat16,   ///< collie::bfloat16
  float32,    ///< float (IEEE binary32)
  float64,    ///< double (IEEE binary64)
  complex64,  ///< std::complex<float>: two float32, real part first
};

/// The `DataType` of element type T, e.g. `data_type_v<float> == DataType::float32`.
template <Element T>
inline constexpr DataType data_type_v =
    static_cast<DataType>(detail::type_index_v<T, detail::ElementTypes>);

/// The conventional name of a data type, as nccl-tests and MLX print it: "bool", "int8", ...,
/// "uint64", "float16", "bfloat16", "float32", "float64", "complex64". Benchmarks print it in
/// their `type` column and command-line tools accept it; an out-of-range value gives
/// "unknown". Names are distinct, so a name identifies its type.
constexpr std::string_view name(DataType type) noexcept {
  switch (type) {
    case DataType::bool_: return "bool";
    case DataType::int8: return "int8";
    case DataType::int16: return "int16";
    case DataType::int32: return "int32";
    case DataType::int64: return "int64";
    case DataType::uint8: return "uint8";
    case DataType::uint16: return "uint16";
    case DataType::uint32: return "uint32";
    case DataType::uint64: return "uint64";
    case DataType::float16: return "float16";
    case DataType::bfloat16: return "bfloat16";
    case DataType::float32: return "float32";
    case DataType::float64: return "float64";
    case DataType::complex64: return "complex64";
  }
  return "unknown";
}

/// Bytes per element of a data type (`sizeof` of its C++ type); 0 for an out-of-range value.
/// This is how type-erased code (algorithms, transports) turns element counts into byte counts
/// and checks that a byte length holds a whole number of elements.
constexpr std::size_t size_of(DataType type) noexcept {
  switch (type) {
    case DataType::bool_:
    case DataType::int8:
    case DataType::uint8: return 1;
    case DataType::int16:
    case DataType::uint16:
    case DataType::float16:
    case DataType::bfloat16: return 2;
    case DataType::int32:
    case DataType::uint32:
    case DataType::float32: return 4;
    case DataType::int64:
    case DataType::uint64:
    case DataType::float64:
    case DataType::complex64: return 8;
  }
  return 0;
}

// The wire format assumes these sizes; a platform where they differ is not supported.
static_assert(sizeof(bool) == 1, "collie sends bool as one byte");
static_assert(sizeof(std::complex<float>) == 8);

}  // namespace collie
