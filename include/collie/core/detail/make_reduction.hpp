// Turns a typed op (Sum, a user functor, ...) into the type-erased `Reduction` that algorithms
// use, so algorithms are compiled once per transport, not once per element type and op.
//
// Where the kernels come from depends on the build (config.hpp): header-only, every translation
// unit instantiates the kernels it uses (reduce.hpp); with COLLIE_SEPARATE_COMPILATION the
// kernels of the four built-in ops over every element type are compiled once, in collie's
// source file, so that a program's own translation units never parse the vectorised kernels —
// only a user's own functor is instantiated where it is used, from reduce.hpp.
#pragma once

#include <cstddef>

#include "collie/config.hpp"
#include "collie/core/call.hpp"
#include "collie/core/element.hpp"
#include "collie/core/ops.hpp"

#if COLLIE_HEADER_ONLY
#include "collie/core/reduce.hpp"
#endif

namespace collie::detail {

// The kernels of `Op` over `E`: `make(op)` is the Reduction (reduce.hpp defines it).
template <class E, class Op>
struct Kernels;

// The Reduction of a built-in op over E, whose op object lives forever (reduce.hpp defines it;
// with COLLIE_SEPARATE_COMPILATION, collie's source file compiles it for every element type).
template <class E, class Op>
Reduction builtin_reduction() noexcept;

// True once reduce.hpp has been seen (checked where make_reduction is instantiated, which
// compilers do at the end of the translation unit).
template <class E, class Op>
concept KernelsVisible = requires { sizeof(Kernels<E, Op>); };

// `op` must outlive the returned Reduction (it is referenced, not copied).
template <Element E, class Op>
Reduction make_reduction(const Op& op) noexcept {
#if COLLIE_HEADER_ONLY
  return Kernels<E, Op>::make(op);
#else
  if constexpr (is_builtin_op_v<Op>) {
    (void)op;  // the built-ins are stateless: the library's own instance serves
    return builtin_reduction<E, Op>();
  } else {
    static_assert(KernelsVisible<E, Op>,
                  "collie: with COLLIE_SEPARATE_COMPILATION, a reduction with your own op "
                  "needs `#include <collie/core/reduce.hpp>` (only the built-in ops' kernels "
                  "are compiled into collie's source file)");
    return Kernels<E, Op>::make(op);
  }
#endif
}

}  // namespace collie::detail
