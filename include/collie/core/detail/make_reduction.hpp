// Turns a typed op (Sum, a user functor, ...) into the type-erased `Reduction` that algorithms
// use, so algorithms are compiled once per transport, not once per element type and op.
#pragma once

#include <cstddef>

#include "collie/core/call.hpp"
#include "collie/core/element.hpp"
#include "collie/core/reduce.hpp"

namespace collie::detail {

// `op` must outlive the returned Reduction (it is referenced, not copied).
template <Element E, class Op>
Reduction make_reduction(const Op& op) noexcept {
  Reduction r;
  r.element_size = sizeof(E);
  r.op = &op;
  r.into_fn = [](const void* o, std::byte* dst, const std::byte* src,
                 std::size_t count) noexcept {
    reduce_into(reinterpret_cast<E*>(dst), reinterpret_cast<const E*>(src), count,
                *static_cast<const Op*>(o));
  };
  r.many_fn = [](const void* o, std::byte* dst, const std::byte* const* srcs, std::size_t nsrc,
                 std::size_t count) noexcept {
    reduce_many(reinterpret_cast<E*>(dst), reinterpret_cast<const E* const*>(srcs), nsrc, count,
                *static_cast<const Op*>(o));
  };
  return r;
}

}  // namespace collie::detail
