// The separately compiled part of collie. With COLLIE_SEPARATE_COMPILATION defined for the whole
// program (config.hpp), exactly one source file of it includes this header, and the program's
// other translation units only declare what is defined here:
//
//   // collie.cpp (the repository's src/collie.cpp)
//   #include <collie/src.hpp>
//
//   g++ -std=c++20 -DCOLLIE_SEPARATE_COMPILATION -Iinclude -c collie.cpp
//   g++ -std=c++20 -DCOLLIE_SEPARATE_COMPILATION -Iinclude -c app.cpp
//   g++ app.o collie.o -pthread -o app
//
// What it compiles: `init()` and every enabled backend's set-up (the TCP engine, the bootstrap
// store, the rendezvous, hostfile and environment parsing), the runtime core under `Group` with
// every enabled (transport, algorithm) pair behind it, and the reduction kernels of the built-in
// ops over every element type.
#pragma once

#include "collie/config.hpp"

#if !defined(COLLIE_SEPARATE_COMPILATION)
#error "collie/src.hpp is for COLLIE_SEPARATE_COMPILATION builds: define it for every translation unit of the program, or leave this file out (header-only)"
#endif

#include "collie/core/element.hpp"
#include "collie/core/ops.hpp"
#include "collie/core/reduce.hpp"
#include "collie/runtime/impl/init.ipp"
#include "collie/runtime/impl/runtime_core.ipp"
#include "collie/runtime/threads.hpp"

namespace collie::detail {

// The built-in ops' kernels over every element type, which programs reach through
// make_reduction without instantiating them: the explicit instantiation below makes this table,
// and the table's addresses make the compiler emit builtin_reduction<E, Op> for every element
// type and op, here and only here.
template <class List>
struct BuiltinReductions;
template <class... E>
struct BuiltinReductions<TypeList<E...>> {
  static constexpr Reduction (*table[])() noexcept = {
      &builtin_reduction<E, Sum>..., &builtin_reduction<E, Prod>...,
      &builtin_reduction<E, Max>..., &builtin_reduction<E, Min>...};
};
template struct BuiltinReductions<ElementTypes>;

}  // namespace collie::detail
