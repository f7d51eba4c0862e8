// collie::init(): finds the backend the environment set up and returns its group, or a group of
// one rank when nothing is set up (as MLX's mx.distributed.init does).
#pragma once

#include <array>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include "collie/algorithm/mesh.hpp"
#include "collie/core/collective.hpp"
#include "collie/core/error.hpp"
#include "collie/runtime/group.hpp"
#include "collie/transport/inprocess.hpp"

namespace collie {

/// Backend names `init()` knows, in the order "any" tries them.
inline constexpr std::array<std::string_view, 4> backend_names = {"nccl", "ring", "mpi", "jaccl"};

/// A group of one rank: every collective is an identity, send/recv fail with
/// `errc::singleton_group`. Its `backend()` is "singleton".
inline Group singleton_group() {
  return Group(Collective<InProcessTransport, Mesh>(InProcessWorld(1).transport(0)), "singleton");
}

namespace detail {

// The group of the last successful init() with a real backend. Failed attempts and singletons
// are never cached, so a later call can still find a backend (MLX caches failures; #4210).
struct InitCache {
  std::mutex mutex;
  std::optional<Group> group;
};

inline InitCache& init_cache() {
  static InitCache cache;
  return cache;
}

inline bool is_known_backend(std::string_view backend) {
  for (auto name : backend_names) {
    if (name == backend) return true;
  }
  return false;
}

// Tries one named backend. Returns the group, or nothing with `ec` clear when its environment is
// absent, or nothing with `ec` set when it is configured but failed. Backends that are not
// compiled into this build report `errc::unknown_backend`.
inline std::optional<Group> try_backend(std::string_view backend, std::error_code& ec) {
  ec = errc::unknown_backend;
  last_error_message = "collie: backend \"" + std::string(backend) +
                       "\" is not compiled into this build (enabled transports: inproc)";
  return std::nullopt;
}

}  // namespace detail

/// Initialises collie from the environment and returns the group of all ranks.
///
/// - `backend`: "any" (default), "ring", "jaccl", "mpi" or "nccl". "any" tries every backend
///   compiled in whose environment is present, in the order nccl, ring, mpi, jaccl, and returns
///   the first that connects; with none configured it returns a group of one rank.
/// - `strict`: turns "not configured" into an error (`errc::not_configured`) instead of a
///   singleton group.
///
/// A backend that is configured but fails to connect is always an error, never a silent
/// singleton. After a successful init, `init()` and `init("any")` return the same group again;
/// a failed attempt is never cached. Unknown names fail with `errc::unknown_backend`.
///
/// Throws `collie::Error`; the overload with `std::error_code&` returns nothing instead.
inline std::optional<Group> init(std::string_view backend, bool strict,
                                 std::error_code& ec) noexcept {
  ec.clear();
  try {
    auto& cache = detail::init_cache();
    std::lock_guard lock(cache.mutex);
    if (cache.group && (backend == "any" || backend == cache.group->backend())) {
      return cache.group;
    }
    if (backend != "any" && !detail::is_known_backend(backend)) {
      ec = errc::unknown_backend;
      detail::last_error_message = "collie: unknown backend \"" + std::string(backend) +
                                   "\"; use one of any, ring, jaccl, mpi, nccl";
      return std::nullopt;
    }
    if (backend != "any") {
      auto group = detail::try_backend(backend, ec);
      if (group) cache.group = group;
      return group;
    }
    if (strict) {
      ec = errc::not_configured;
      detail::last_error_message =
          "collie: init(\"any\", strict) found no configured backend; set MLX_RANK and "
          "MLX_HOSTFILE (ring), or start the program with `collie launch` or mpirun";
      return std::nullopt;
    }
    return singleton_group();
  } catch (const std::bad_alloc&) {
    ec = std::make_error_code(std::errc::not_enough_memory);
    detail::last_error_message = "collie: out of memory in init()";
    return std::nullopt;
  }
}

inline Group init(std::string_view backend = "any", bool strict = false) {
  std::error_code ec;
  auto group = init(backend, strict, ec);
  if (!group) throw Error(ec, detail::last_error_message);
  return std::move(*group);
}

}  // namespace collie
