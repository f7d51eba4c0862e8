// collie::Group: the runtime face of collie, a handle on whichever Collective<Transport, Algorithm>
// `collie::init()` (or the caller) chose, among the pairs compiled into this build.
#pragma once

#include <cstddef>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>

#include "collie/config.hpp"
#include "collie/core/basic_collective.hpp"
#include "collie/core/request.hpp"
#include "collie/runtime/detail/runtime_core.hpp"

#if COLLIE_HEADER_ONLY
#include "collie/runtime/impl/runtime_core.ipp"
#endif

namespace collie {

/// A group of ranks and every collective operation on it, chosen at run time: the group
/// `collie::init()` returns.
///
/// A Group holds one of the `EnabledCollectives` — `Collective<T, A>` for every transport and
/// algorithm compiled into this build — and has the whole operation set of `BasicCollective`
/// (basic_collective.hpp): reductions, all-gather, reduce-scatter, broadcast, all-to-all,
/// barrier, send/recv, their asynchronous and fused forms, and `split`. Each operation checks
/// its arguments once, erases the element type and op, and makes a single `std::visit` into the
/// typed collective: no virtual call and no allocation per message.
///
/// Beyond the operations: `backend()` names the backend that made it ("ring", "inproc",
/// "singleton", ...), `name()` the policies ("tcp/ring"), and `get_if<Collective<T, A>>()` gives
/// the typed collective behind it.
///
/// With COLLIE_SEPARATE_COMPILATION (config.hpp) this header declares the operations without
/// any transport; making a Group from a typed collective, or `get_if`, then needs
/// <collie/runtime/enabled.hpp> as well.
///
/// Copies of a Group share the same connections (like MLX's Group, it is a shared handle); the
/// group closes when its last copy goes.
///
///   collie::Group world = collie::init();
///   std::vector<float> x(10, 1.0f);
///   world.all_sum(x);
///   collie::Group half = world.split(world.rank() % 2);
using Group = BasicCollective<detail::RuntimeCore>;

}  // namespace collie
