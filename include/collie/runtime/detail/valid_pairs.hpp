// The type lists behind runtime/enabled.hpp: concatenation, the pairs (transport, algorithm) whose
// algorithm can run over the transport, and the variant over them that collie::Group holds.
#pragma once

#include <type_traits>
#include <variant>

#include "collie/core/collective.hpp"
#include "collie/core/concepts.hpp"

namespace collie {

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

}  // namespace collie
