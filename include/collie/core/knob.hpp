// Knobs: the settings of a policy that the environment may override. A policy lists its own
// (`static constexpr auto knobs()`), so whoever builds it from the environment — init(), a
// benchmark driver — reads the same variables with the same checks, before anything connects.
#pragma once

#include <cstddef>
#include <string_view>

namespace collie {

/// `COLLIE_<name>` sets the field `field` of a `Policy`: a count, or a size in bytes (`bytes`:
/// a k, M or G suffix multiplies by 1024s), within [low, high]. A value out of range, or not a
/// number, is refused with a message that names the variable, the range and the default.
///
///   static constexpr auto knobs() {
///     return std::array{collie::Knob<Ring>{"RING_RINGS", &Ring::rings, 1, 64, false}};
///   }
template <class Policy>
struct Knob {
  std::string_view name;
  std::size_t Policy::*field;
  std::size_t low;
  std::size_t high;
  bool bytes;
};

}  // namespace collie
