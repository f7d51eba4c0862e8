// The policies compiled into this build. `collie::Group` is a variant over every valid
// (transport, algorithm) pair of these two lists, so enabling a policy is one line here.
#pragma once

#include <type_traits>
#include <variant>

#include "collie/algorithm/mesh.hpp"
#include "collie/algorithm/ring.hpp"
#include "collie/core/collective.hpp"
#include "collie/core/concepts.hpp"
#include "collie/core/element.hpp"
#include "collie/transport/inprocess.hpp"

// The TCP transport needs only Asio (header-only); it is on unless the build says otherwise.
#ifndef COLLIE_WITH_TCP
#if __has_include(<asio.hpp>)
#define COLLIE_WITH_TCP 1
#else
#define COLLIE_WITH_TCP 0
#endif
#endif

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
/// runtime `Group` and the conformance suite pick it up from this list.
using EnabledAlgorithms = detail::TypeList<Ring, Mesh>;

namespace detail {

template <class... Lists>
struct Concat;
template <>
struct Concat<> {
  using type = TypeList<>;
};
template <class... A>
struct Concat<TypeList<A...>> {
  using type = TypeList<A...>;
};
template <class... A, class... B, class... Rest>
struct Concat<TypeList<A...>, TypeList<B...>, Rest...> {
  using type = typename Concat<TypeList<A..., B...>, Rest...>::type;
};

// Collective<T, A> when A can run over T, nothing otherwise. A specialisation rather than
// std::conditional, because naming Collective<T, A> for an invalid pair is itself an error.
template <class T, class A, bool = AlgorithmFor<A, T>>
struct PairIf {
  using type = TypeList<>;
};
template <class T, class A>
struct PairIf<T, A, true> {
  using type = TypeList<Collective<T, A>>;
};

template <class T, class Algorithms>
struct PairsOf;
template <class T, class... A>
struct PairsOf<T, TypeList<A...>> {
  using type = typename Concat<typename PairIf<T, A>::type...>::type;
};

template <class Transports, class Algorithms>
struct ValidPairs;
template <class... T, class Algorithms>
struct ValidPairs<TypeList<T...>, Algorithms> {
  using type = typename Concat<typename PairsOf<T, Algorithms>::type...>::type;
};

template <class List>
struct VariantOf;
template <class... C>
struct VariantOf<TypeList<C...>> {
  using type = std::variant<C...>;
};

}  // namespace detail

/// Every `Collective<Transport, Algorithm>` this build can run: the valid pairs of the lists above.
using EnabledCollectives = typename detail::ValidPairs<EnabledTransports, EnabledAlgorithms>::type;

}  // namespace collie
