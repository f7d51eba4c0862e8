// The part of the runtime core (runtime_core.hpp) that knows the enabled pairs: the variant a
// Group holds, and the templates that put a typed collective into a Group or take it out.
#pragma once

#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "collie/runtime/detail/runtime_core.hpp"
#include "collie/runtime/enabled.hpp"

namespace collie::detail {

// One alternative per enabled (transport, algorithm) pair.
using RuntimeVariant = typename VariantOf<EnabledCollectives>::type;

struct RuntimeCore::Impl {
  template <class C>
  Impl(C&& c, std::string b)
    requires std::is_constructible_v<RuntimeVariant, C&&>
      : collective(std::forward<C>(c)), backend(std::move(b)),
        rank(std::get<std::decay_t<C>>(collective).rank()),
        size(std::get<std::decay_t<C>>(collective).size()),
        name(std::get<std::decay_t<C>>(collective).name()) {}
  RuntimeVariant collective;
  std::string backend;
  int rank;
  int size;
  std::string name;
  FuseSpace fuse;
};

}  // namespace collie::detail
