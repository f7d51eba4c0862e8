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

/// A group of one rank: what `init()` returns when no backend is configured (as MLX's
/// `mx.distributed.init()` does). Every collective is an identity (reductions and gathers copy
/// their input to their output, in place they do nothing), costs no message and cannot fail;
/// `send`/`recv` fail with `errc::singleton_group`. Its `backend()` is "singleton". Each call
/// makes a new group; they share nothing, so any thread may use its own.
///
///   collie::Group one = collie::singleton_group();
///   one.all_sum(x);  // x unchanged
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
/// What each backend reads is in its descriptor (runtime/backends/) and in docs/config.md; the
/// ring backend reads `MLX_RANK` + `MLX_HOSTFILE` (or `COLLIE_COORDINATOR` / `MASTER_ADDR` +
/// `MASTER_PORT` with a rank and world size), then `COLLIE_ALGORITHM` and every knob of every
/// algorithm, all checked before anything connects.
///
/// Cost: the backend's set-up, once per process: for the ring, k TCP connections to each
/// neighbour (k = addresses per rank in the hostfile, or `COLLIE_CONNECTIONS` with a
/// coordinator) and a handshake on each, so O(1) messages per rank;
/// with a coordinator, one more connection to rank 0 and a key exchange of O(p) bytes there.
/// Later calls return the cached group at the cost of a mutex.
///
/// Preconditions: every rank of the job calls it (it blocks until its neighbours have); the
/// environment is the one the launcher set.
///
/// Errors (as `errc`): `unknown_backend` (a name that is not a backend, or one not compiled into
/// this build, naming those that are), `not_configured` (with `strict`, nothing set up),
/// `bad_configuration` (a malformed variable or hostfile, naming it, the rank and the entry),
/// `timed_out` (a neighbour or the coordinator never came, naming it),
/// `connection_lost`, `protocol_error` (a process of another job or build). A backend that is
/// configured but fails is always an error, never a silent singleton.
///
/// After a successful init, `init()` and `init("any")` return the same group again (copies of a
/// Group share its connections); a failed attempt is never cached, so a later call can retry.
///
/// Thread safety: safe to call from several threads; the first to get in does the set-up, the
/// others wait for it and share its group.
///
///   std::error_code ec;
///   if (auto world = collie::init("ring", /*strict=*/true, ec)) {
///     world->all_sum(gradients);
///   } else {
///     std::fprintf(stderr, "%s\n", collie::Group::last_error().c_str());
///   }
///
/// Never throws; the overload without `std::error_code&` throws `collie::Error` instead.
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

/// As above, throwing `collie::Error` (its `code()` the `errc`, its `what()` the one-line
/// message) instead of returning nothing.
///
///   collie::Group world = collie::init();  // a group of one rank when nothing is set up
///   std::printf("rank %d of %d over %s\n", world.rank(), world.size(), world.name().c_str());
inline Group init(std::string_view backend = "any", bool strict = false) {
  std::error_code ec;
  return detail::value_or_throw(init(backend, strict, ec), ec);
}

}  // namespace collie
