// The policy concepts accept the built-in policies and reject invalid pairings without a hard
// error, so the runtime Group can filter pairs at compile time.
#include "collie/core/concepts.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "collie/collie.hpp"
#include "collie/runtime/enabled.hpp"

namespace {

// An algorithm whose only reduction needs native collectives (as the Native algorithm does).
struct NeedsNative {
  using algorithm_concept = collie::algorithm_t;
  static constexpr std::string_view name = "needs-native";
  friend bool operator==(const NeedsNative&, const NeedsNative&) = default;
  template <collie::NativeCollectiveTransport T>
  std::error_code all_reduce(T&, collie::Call&, std::span<std::byte>,
                             const collie::Reduction&) const {
    return {};
  }
};

// Has the member names of an algorithm but does not opt in.
struct LooksLikeRing {
  static constexpr std::string_view name = "fake";
  template <class T>
  std::error_code all_reduce(T&, collie::Call&, std::span<std::byte>,
                             const collie::Reduction&) const {
    return {};
  }
};

template <class T, class A>
concept Composable = requires { typename collie::Collective<T, A>; };

}  // namespace

TEST_CASE("the built-in policies model their concepts") {
  CHECK(collie::Transport<collie::InProcessTransport>);
  CHECK(collie::AlgorithmFor<collie::Ring, collie::InProcessTransport>);
  CHECK(collie::AlgorithmFor<collie::Mesh, collie::InProcessTransport>);
  CHECK(Composable<collie::InProcessTransport, collie::Ring>);
}

TEST_CASE("invalid pairings and look-alikes are rejected") {
  CHECK_FALSE(collie::AlgorithmFor<NeedsNative, collie::InProcessTransport>);
  CHECK_FALSE(Composable<collie::InProcessTransport, NeedsNative>);
  CHECK_FALSE(collie::AlgorithmPolicy<LooksLikeRing>);
  CHECK_FALSE(collie::Transport<int>);
  CHECK_FALSE(Composable<int, collie::Ring>);
}

// How many (transport, algorithm) pairs of the enabled lists are valid, counted through the
// concept directly (not through the lists' own filter).
template <class T, class... A>
constexpr std::size_t valid_over(collie::detail::TypeList<A...>) {
  return (std::size_t{collie::AlgorithmFor<A, T>} + ... + 0);
}
template <class... T>
constexpr std::size_t valid_pairs(collie::detail::TypeList<T...>) {
  return (valid_over<T>(collie::EnabledAlgorithms{}) + ... + 0);
}

TEST_CASE("the enabled list holds exactly the valid pairs") {
  CHECK(std::variant_size_v<collie::detail::RuntimeVariant> ==
        valid_pairs(collie::EnabledTransports{}));
  // Ring and Mesh run over any transport, so there are at least two pairs per transport.
  CHECK(std::variant_size_v<collie::detail::RuntimeVariant> >=
        2 * collie::detail::type_list_size_v<collie::EnabledTransports>);
  CHECK(std::is_same_v<std::variant_alternative_t<0, collie::detail::RuntimeVariant>,
                       collie::Collective<collie::InProcessTransport, collie::Ring>>);
}
