// collie::init() and the singleton group (runtime/init.hpp): walks the enabled backends and
// caches the group of the first that connects. Included by init.hpp when header-only, compiled
// once by src.hpp with COLLIE_SEPARATE_COMPILATION.
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
#include "collie/runtime/init.hpp"
#include "collie/transport/inprocess.hpp"

namespace collie {

COLLIE_DECL Group singleton_group() {
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

COLLIE_DECL void forget_init_group() noexcept {
  auto& cache = init_cache();
  std::lock_guard lock(cache.mutex);
  cache.group.reset();
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

COLLIE_DECL std::optional<Group> init(std::string_view backend, bool strict,
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

COLLIE_DECL Group init(std::string_view backend, bool strict) {
  std::error_code ec;
  return detail::value_or_throw(init(backend, strict, ec), ec);
}

}  // namespace collie
