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

/// A `Buffer` that outlives the call taking it: an lvalue, or a view such as `std::span`. The
/// `_async` forms take only these, so passing a temporary container, which would be gone
/// before the operation runs, is a compile error naming this concept instead of a use after free.
template <class R>
concept LastingBuffer = Buffer<R> && std::ranges::borrowed_range<R>;

/// A `MutableBuffer` that outlives the call taking it (see `LastingBuffer`).
template <class R>
concept LastingMutableBuffer = MutableBuffer<R> && std::ranges::borrowed_range<R>;

/// The element type of a buffer.
template <Buffer R>
using element_t = std::remove_cv_t<std::ranges::range_value_t<R>>;

namespace detail {

// The bytes of a buffer, for the byte-level cores under the typed API.
template <Buffer R>
std::span<const std::byte> const_bytes(const R& range) noexcept {
  return {reinterpret_cast<const std::byte*>(std::ranges::data(range)),
          static_cast<std::size_t>(std::ranges::size(range)) * sizeof(element_t<R>)};
}

template <MutableBuffer R>
std::span<std::byte> mutable_bytes(R&& range) noexcept {
  return {reinterpret_cast<std::byte*>(std::ranges::data(range)),
          static_cast<std::size_t>(std::ranges::size(range)) * sizeof(element_t<R>)};
}

}  // namespace detail
}  // namespace collie
