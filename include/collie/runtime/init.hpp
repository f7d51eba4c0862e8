// collie::init(): finds the backend the environment set up and returns its group, or a group of
// one rank when nothing is set up (as MLX's mx.distributed.init does).
#pragma once

#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>

#include "collie/algorithm/mesh.hpp"
#include "collie/core/collective.hpp"
#include "collie/core/error.hpp"
#include "collie/runtime/enabled.hpp"
#include "collie/runtime/group.hpp"
#include "collie/runtime/hostfile.hpp"
#include "collie/transport/inprocess.hpp"

namespace collie {

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

// "nccl, ring, mpi, jaccl" (every backend), or only those compiled in.
inline std::string backend_names(bool compiled_only) {
  std::string names;
  for_each_backend([&]<class B>() {
    if (compiled_only && !B::compiled_in) return false;
    names += std::string(names.empty() ? "" : ", ") + std::string(B::name);
    return false;
  });
  return names.empty() ? "none" : names;
}

// Tries one backend: its group; or nothing with `ec` = errc::not_configured when its environment
// is absent, errc::unknown_backend when it is not compiled into this build, or another code when
// it is configured but failed.
template <class B>
std::optional<Group> try_backend(std::error_code& ec) noexcept {
  if constexpr (B::compiled_in) {
    return B::template connect<Group>(ec);
  } else {
    report_config_error(ec, errc::unknown_backend,
                        "collie: backend \"" + std::string(B::name) +
                            "\" is not compiled into this build (compiled in: " +
                            backend_names(true) + ")");
    return std::nullopt;
  }
}

}  // namespace detail

/// Initialises collie from the environment and returns the group of all ranks.
///
/// - `backend`: "any" (default), or a backend's name: "ring", "jaccl", "mpi" or "nccl" (the
///   descriptors of EnabledBackends, runtime/enabled.hpp). "any" tries every backend compiled in
///   whose environment is present, in the list's order (nccl, ring, mpi, jaccl), and returns the
///   first that connects; with none configured it returns a group of one rank.
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
    if (backend != "any") {
      std::optional<Group> group;
      const bool known = for_each_backend([&]<class B>() {
        if (B::name != backend) return false;
        group = detail::try_backend<B>(ec);
        return true;
      });
      if (!known) {
        ec = errc::unknown_backend;
        detail::last_error_message = "collie: unknown backend \"" + std::string(backend) +
                                     "\"; use one of any, " + detail::backend_names(false);
        return std::nullopt;
      }
      if (group) {
        cache.group = group;
      } else if (ec == errc::not_configured && !strict) {
        ec.clear();  // not configured, and not strict: a group of one rank
        return singleton_group();
      }
      return group;
    }
    // "any": the first compiled-in backend whose environment is present. One that is configured
    // but fails is an error, never a fall-through to the next.
    std::optional<Group> found;
    std::error_code failure;
    for_each_backend([&]<class B>() {
      if constexpr (!B::compiled_in) {
        return false;
      } else {
        std::error_code attempt;
        auto group = detail::try_backend<B>(attempt);
        if (group) {
          found = std::move(group);
          return true;
        }
        if (attempt != errc::not_configured) {
          failure = attempt;
          return true;
        }
        return false;
      }
    });
    if (found) {
      cache.group = found;
      return found;
    }
    if (failure) {
      ec = failure;
      return std::nullopt;
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
