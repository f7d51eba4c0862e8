// What collie accepts as a buffer: any contiguous, sized range of a supported element type
// (std::vector, std::array, std::span, C arrays, ...), viewed as a std::span without copying.
#pragma once

#include <cstddef>
#include <ranges>
#include <span>
#include <type_traits>

#include "collie/core/element.hpp"

namespace collie {

/// A contiguous sized range of `Element`s that collie may read.
template <class R>
concept Buffer = std::ranges::contiguous_range<R> && std::ranges::sized_range<R> &&
                 Element<std::remove_cv_t<std::ranges::range_value_t<R>>>;

/// A `Buffer` collie may also write (its elements are not const).
template <class R>
concept MutableBuffer =
    Buffer<R> && !std::is_const_v<std::remove_reference_t<std::ranges::range_reference_t<R>>>;

/// The element type of a buffer.
template <Buffer R>
using element_t = std::remove_cv_t<std::ranges::range_value_t<R>>;

namespace detail {

template <Buffer R>
std::span<const element_t<R>> const_view(R&& range) noexcept {
  return {std::ranges::data(range), static_cast<std::size_t>(std::ranges::size(range))};
}

template <MutableBuffer R>
std::span<element_t<R>> mutable_view(R&& range) noexcept {
  return {std::ranges::data(range), static_cast<std::size_t>(std::ranges::size(range))};
}

template <class E>
std::span<const std::byte> bytes_of(std::span<const E> s) noexcept {
  return std::as_bytes(s);
}

template <class E>
std::span<std::byte> bytes_of(std::span<E> s) noexcept {
  return std::as_writable_bytes(s);
}

// True when two byte ranges share memory without being the same range: neither in-place nor
// out-of-place semantics can be honoured then.
inline bool overlaps_partially(std::span<const std::byte> a, std::span<const std::byte> b) noexcept {
  if (a.empty() || b.empty()) return false;
  if (a.data() == b.data() && a.size() == b.size()) return false;
  const auto* a_end = a.data() + a.size();
  const auto* b_end = b.data() + b.size();
  return std::less<>{}(a.data(), b_end) && std::less<>{}(b.data(), a_end);
}

}  // namespace detail
}  // namespace collie
