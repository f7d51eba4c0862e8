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
#include "collie/runtime/enabled.hpp"
#include "collie/runtime/group.hpp"
#include "collie/transport/inprocess.hpp"

#if COLLIE_WITH_TCP
#include "collie/runtime/environment.hpp"
#include "collie/runtime/rendezvous.hpp"
#include "collie/transport/tcp.hpp"
#endif

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

inline std::string compiled_backends() {
  std::string names;
#if COLLIE_WITH_TCP
  names += "ring";
#endif
  return names.empty() ? "none" : names;
}

inline bool is_known_backend(std::string_view backend) {
  for (auto name : backend_names) {
    if (name == backend) return true;
  }
  return false;
}

#if COLLIE_WITH_TCP
// A knob of the algorithm from `COLLIE_<name>`: a count, or a size in bytes (a k, M or G suffix
// multiplies by 1024s), within [low, high]; `field` keeps its default when the variable is unset.
inline bool size_knob(std::string_view name, std::size_t& field, std::size_t low, std::size_t high, std::error_code& ec) {
  const auto variable = env_exact("COLLIE_" + std::string(name));
  if (!variable) return true;
  std::string_view text = trim_space(variable->value);
  std::size_t scale = 1;
  if (!text.empty()) {
    const char unit = text.back();
    scale = unit == 'k' || unit == 'K' ? std::size_t{1} << 10 : unit == 'M' ? std::size_t{1} << 20 : unit == 'G' ? std::size_t{1} << 30 : 1;
    if (scale != 1) text.remove_suffix(1);
  }
  const auto value = parse_decimal(text);
  if (!value || *value < 0 || static_cast<std::size_t>(*value) > high / scale || static_cast<std::size_t>(*value) * scale < low) {
    report_config_error(ec, errc::bad_configuration,
                        "collie: " + variable->name + "=" + variable->value + " is out of range; set it to a number in [" +
                            std::to_string(low) + ", " + std::to_string(high) + "] (" +
                            (high > 64 ? "k, M and G multiply by 1024s; " : "") + "default " + std::to_string(field) + ")");
    return false;
  }
  field = static_cast<std::size_t>(*value) * scale;
  return true;
}

// Whether every rank listens on a loopback address: the whole job is on this host, and its "wire"
// is the kernel copying bytes between sockets.
inline bool all_loopback(const TcpConfig& config) {
  for (const auto& rank : config.hosts) {
    for (const auto& e : rank) {
      const bool loopback = e.host.rfind("127.", 0) == 0 || e.host == "::1" || e.host == "localhost";
      if (!loopback) return false;
    }
  }
  return !config.hosts.empty();
}

// The ring backend: a hostfile (MLX_RANK + MLX_HOSTFILE), or a coordinator rendezvous for
// schedulers. COLLIE_ALGORITHM picks the algorithm over TCP: "ring" (default) or "mesh"; the
// algorithms' knobs come from COLLIE_RING_RINGS (default 2, or 1 when every rank is on loopback),
// COLLIE_RING_SEGMENT_BYTES, COLLIE_RING_SMALL_BYTES, COLLIE_RING_HALVING_BYTES,
// COLLIE_RING_HALVING_FROM_BYTES, COLLIE_RING_ALL_TO_ALL_SMALL_BYTES and COLLIE_MESH_SMALL_BYTES
// (docs/ring.md).
inline std::optional<Group> try_ring(std::error_code& ec) {
  auto config = ring_config_from_environment(ec);
  if (!config && ec == errc::not_configured) {
    const std::string hostfile_message = last_error_message;
    config = rendezvous_from_environment(ec);
    if (!config && ec == errc::not_configured) {
      last_error_message = hostfile_message + "; or, without a hostfile, set " +
                           "COLLIE_COORDINATOR (or MASTER_ADDR and MASTER_PORT) with a rank and "
                           "world size (COLLIE_RANK/COLLIE_WORLD_SIZE, or those of Slurm, "
                           "Open MPI, PMI or torchrun)";
    }
  }
  if (!config) return std::nullopt;
  Options options;
  options.timeout = config->timeout;
  std::string algorithm = "ring";
  if (auto variable = env("ALGORITHM")) algorithm = variable->value;
  if (algorithm != "ring" && algorithm != "mesh") {
    ec = errc::bad_configuration;
    last_error_message = "collie: " + env_names("ALGORITHM") + "=" + algorithm +
                         " is not an algorithm of the ring backend; use ring or mesh";
    return std::nullopt;
  }
  // Two rings in opposite directions use both directions of every link, which doubles what a
  // network carries (measured 1.9x at 3 ranks over rate-limited links). On one host there is no
  // link: both rings' bytes are copied by the same cores, and the second ring only doubles the
  // messages (one ring measured 1.1-1.7x faster on loopback from 64 KiB to 1 MiB, level above).
  Ring ring;
  if (all_loopback(*config)) ring.rings = 1;
  Mesh mesh;
  if (!size_knob("RING_RINGS", ring.rings, 1, 64, ec) ||
      !size_knob("RING_SEGMENT_BYTES", ring.segment_bytes, 4096, std::size_t{1} << 30, ec) ||
      !size_knob("RING_SMALL_BYTES", ring.small_bytes, 0, std::size_t{1} << 30, ec) ||
      !size_knob("RING_HALVING_BYTES", ring.halving_bytes, 0, std::size_t{1} << 30, ec) ||
      !size_knob("RING_HALVING_FROM_BYTES", ring.halving_from_bytes, 0, std::size_t{1} << 30,
                 ec) ||
      !size_knob("RING_ALL_TO_ALL_SMALL_BYTES", ring.all_to_all_small_bytes, 0,
                 std::size_t{1} << 30, ec) ||
      !size_knob("MESH_SMALL_BYTES", mesh.small_bytes, 0, std::size_t{1} << 30, ec)) {
    return std::nullopt;
  }
  auto transport = TcpTransport::connect(std::move(*config), ec);
  if (!transport) return std::nullopt;
  if (algorithm == "mesh") {
    return Group(Collective<TcpTransport, Mesh>(std::move(*transport), mesh, options), "ring");
  }
  return Group(Collective<TcpTransport, Ring>(std::move(*transport), ring, options), "ring");
}
#endif

// Tries one named backend. Returns the group, or nothing with `ec` = errc::not_configured when
// its environment is absent, or nothing with another code when it is configured but failed.
// Backends that are not compiled into this build report `errc::unknown_backend`.
inline std::optional<Group> try_backend(std::string_view backend, std::error_code& ec) {
#if COLLIE_WITH_TCP
  if (backend == "ring") return try_ring(ec);
#endif
  ec = errc::unknown_backend;
  last_error_message = "collie: backend \"" + std::string(backend) +
                       "\" is not compiled into this build (compiled in: " + compiled_backends() +
                       ")";
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
    for (auto name : backend_names) {
      std::error_code attempt;
      auto group = detail::try_backend(name, attempt);
      if (group) {
        cache.group = group;
        return group;
      }
      if (attempt != errc::not_configured && attempt != errc::unknown_backend) {
        ec = attempt;
        return std::nullopt;
      }
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
