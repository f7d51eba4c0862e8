// The policies and backends compiled into this build, in one place. `collie::Group` is a variant
// over every valid (transport, algorithm) pair of the first two lists, `collie::init()` and
// `collie launch` walk the third, and the conformance suite runs every pair: enabling a policy
// or a backend is one line here.
#pragma once

#include <string>
#include <type_traits>
#include <variant>

#include "collie/config.hpp"
#include "collie/algorithm/mesh.hpp"
#include "collie/algorithm/ring.hpp"
#include "collie/core/collective.hpp"
#include "collie/core/concepts.hpp"
#include "collie/core/element.hpp"
#include "collie/runtime/detail/valid_pairs.hpp"
#include "collie/transport/inprocess.hpp"

#if COLLIE_WITH_TCP
#include "collie/transport/tcp.hpp"
#endif

namespace collie {

/// Transports compiled in. Transports that need a system library sit behind a `COLLIE_WITH_*`
/// switch (set by the build) and are added here when it is on.
using EnabledTransports = detail::TypeList<InProcessTransport
#if COLLIE_WITH_TCP
                                           ,
                                           TcpTransport
#endif
                                           >;

/// Algorithms compiled in. Adding an algorithm: include its header above and name it here; the
/// runtime `Group`, the backends whose transport it pairs with (COLLIE_ALGORITHM picks it by
/// name), the benchmark drivers and the conformance suite pick it up from this list.
using EnabledAlgorithms = detail::TypeList<Ring, Mesh>;

/// Every `Collective<Transport, Algorithm>` this build can run: the valid pairs of the lists above.
using EnabledCollectives = typename detail::ValidPairs<EnabledTransports, EnabledAlgorithms>::type;

namespace detail {

// Calls `fn.template operator()<A>()` for every enabled algorithm A that runs over transport T,
// in list order.
template <class T, class Fn, class... A>
void for_each_algorithm_in(TypeList<A...>, Fn&& fn) {
  (
      [&] {
        if constexpr (AlgorithmFor<A, T>) fn.template operator()<A>();
      }(),
      ...);
}
template <class T, class Fn>
void for_each_algorithm(Fn&& fn) {
  for_each_algorithm_in<T>(EnabledAlgorithms{}, fn);
}

// "ring, mesh": the names of the enabled algorithms over T, for messages.
template <class T>
std::string algorithm_names() {
  std::string names;
  for_each_algorithm<T>([&]<class A>() {
    if (!names.empty()) names += ", ";
    names += A::name;
  });
  return names;
}

// Calls `fn.template operator()<B>()` for every backend of a list, in order; stops when it
// returns true.
template <class Fn, class... B>
bool for_each_backend_in(TypeList<B...>, Fn&& fn) {
  return (fn.template operator()<B>() || ...);
}

}  // namespace detail

// The backend descriptors (runtime/backend.hpp), defined below the list.
struct NcclBackend;
struct RingBackend;
struct MpiBackend;
struct JacclBackend;

/// Backends, in the order `init("any")` tries them. Each is a descriptor (runtime/backends/):
/// its name, the variables it reads, how it builds its group and what a launcher sets. One whose
/// transport is not compiled in (`compiled_in` false) is still described, so that init() can
/// say so and `collie launch` can start its jobs for other builds. Adding a backend: its
/// descriptor header, included below, and its name here.
using EnabledBackends = detail::TypeList<NcclBackend, RingBackend, MpiBackend, JacclBackend>;

/// Calls `fn.template operator()<B>()` for every backend B, in order, until it returns true;
/// returns whether one did.
template <class Fn>
bool for_each_backend(Fn&& fn) {
  return detail::for_each_backend_in(EnabledBackends{}, fn);
}

}  // namespace collie

// The descriptors use the lists above.
#include "collie/runtime/backends/jaccl.hpp"
#include "collie/runtime/backends/mpi.hpp"
#include "collie/runtime/backends/nccl.hpp"
#include "collie/runtime/backends/ring.hpp"
// The variant a Group holds, over the pairs above.
#include "collie/runtime/detail/runtime_variant.hpp"
