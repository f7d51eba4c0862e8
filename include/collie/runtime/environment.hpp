// Reads collie's configuration from environment variables: the MLX_* names that mlx.launch and
// the MLX docs use, their COLLIE_* spellings, and the rank/size/coordinator variables that
// schedulers (torchrun, Open MPI, MPICH/PMI, Slurm) set, with a clear error for each bad value.
#pragma once

#include <array>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "collie/core/error.hpp"
#include "collie/runtime/detail/environment.hpp"
#include "collie/runtime/hostfile.hpp"
#include "collie/transport/tcp_config.hpp"

namespace collie {

/// The ring backend's `TcpConfig` from a hostfile, as `mlx.launch` and the MLX docs set it up:
///
/// - `MLX_RANK` (or `COLLIE_RANK`): this process's rank, an integer in [0, N);
/// - `MLX_HOSTFILE` (or `COLLIE_HOSTFILE`): path of the JSON hostfile, per rank the "ip:port"
///   addresses it listens on, one per connection (format and checks: `parse_hostfile`);
/// - the deadlines, job token and verbosity of `detail::timeouts_from_environment`
///   (`COLLIE_TIMEOUT_MS`, `COLLIE_CONNECT_TIMEOUT_MS`, `COLLIE_JOB_TOKEN`, `MLX_RING_VERBOSE`);
/// - if `MLX_WORLD_SIZE` (or `COLLIE_WORLD_SIZE`) is also set, it must equal the hostfile's
///   number of ranks.
///
/// Nothing is contacted here; the file is read and checked.
///
/// Errors:
/// - `errc::not_configured` when neither variable is set, or when only the rank is set and the
///   environment describes another way to start (a rendezvous coordinator — then call
///   `collie::rendezvous_from_environment()` — or the JACCL/NCCL variables); the message lists
///   what to set;
/// - `errc::bad_configuration` when only one of the two is set (naming the missing one), for a
///   bad rank (`collie: MLX_RANK=abc is not a rank; set it to an integer in [0, 4)`), a rank
///   beyond the hostfile, or a hostfile that cannot be read or is malformed (naming the file,
///   the rank and the entry).
///
///   std::error_code ec;
///   if (auto config = collie::ring_config_from_environment(ec)) {
///     // connect a TcpTransport with *config
///   } else if (ec != collie::errc::not_configured) {
///     std::fprintf(stderr, "%s\n", collie::Group::last_error().c_str());
///   }
///
/// Throws `collie::Error`; the overload with `std::error_code&` returns nothing instead.
inline std::optional<TcpConfig> ring_config_from_environment(std::error_code& ec) noexcept {
  using detail::report_config_error;
  ec.clear();
  try {
    const auto rank_variable = detail::env("RANK");
    const auto hostfile_variable = detail::env("HOSTFILE");
    if (!hostfile_variable) {
      std::error_code coordinator_ec;
      const auto coordinator = detail::coordinator_from_environment(coordinator_ec);
      const std::string hostfile_names = "MLX_HOSTFILE and COLLIE_HOSTFILE";
      std::string coordinator_names = "MASTER_ADDR, MASTER_PORT";
      if (auto variable = detail::env("COORDINATOR")) coordinator_names = variable->name;
      const std::string missing_both =
          "set MLX_RANK (this process's rank) and MLX_HOSTFILE (path to a JSON file "
          "[[\"ip:port\", ...], ...] listing the addresses of every rank), or start the "
          "processes with `collie launch`";
      if (coordinator || coordinator_ec != errc::not_configured) {
        report_config_error(ec, errc::not_configured,
                            "collie: the ring has no hostfile (" + hostfile_names +
                                " are unset) but a rendezvous coordinator is configured (" +
                                coordinator_names +
                                "); use collie::rendezvous_from_environment(), or " + missing_both);
        return std::nullopt;
      }
      if (!rank_variable) {
        report_config_error(ec, errc::not_configured,
                            "collie: the ring backend is not configured; " + missing_both +
                                ", or set COLLIE_COORDINATOR=ip:port of rank 0 (or MASTER_ADDR and "
                                "MASTER_PORT) with a rank and world size for a rendezvous");
        return std::nullopt;
      }
      if (auto other = detail::other_backend_variable()) {
        report_config_error(ec, errc::not_configured,
                            "collie: the ring has no hostfile (" + hostfile_names +
                                " are unset); " + rank_variable->name +
                                " belongs to another backend here (" + other->name + " is set)");
        return std::nullopt;
      }
      report_config_error(ec, errc::bad_configuration,
                          "collie: " + rank_variable->name + " is set but " +
                              detail::env_names("HOSTFILE") +
                              " is not; set it to the path of the JSON hostfile "
                              "[[\"ip:port\", ...], ...] listing the addresses of every rank, or "
                              "set COLLIE_COORDINATOR=ip:port of rank 0 with "
                              "MLX_WORLD_SIZE for a rendezvous");
      return std::nullopt;
    }
    if (!rank_variable) {
      report_config_error(ec, errc::bad_configuration,
                          "collie: " + hostfile_variable->name + "=" + hostfile_variable->value +
                              " is set but " + detail::env_names("RANK") +
                              " is not; set it to this process's rank, an integer in [0, N) "
                              "where N is the number of entries in the hostfile");
      return std::nullopt;
    }
    const std::string origin = hostfile_variable->value + " (" + hostfile_variable->name + ")";
    auto hosts = detail::load_hostfile(hostfile_variable->value, origin, ec);
    if (!hosts) return std::nullopt;
    const int size = static_cast<int>(hosts->size());
    const auto rank = detail::parse_rank(*rank_variable, size, ec);
    if (!rank) {
      detail::last_error_message += " (the hostfile " + origin + " lists " + std::to_string(size) +
                                    (size == 1 ? " rank)" : " ranks)");
      return std::nullopt;
    }
    if (auto world_variable = detail::env("WORLD_SIZE")) {
      const auto world = detail::parse_world_size(*world_variable, ec);
      if (!world) return std::nullopt;
      if (*world != size) {
        report_config_error(ec, errc::bad_configuration,
                            "collie: " + world_variable->name + "=" + world_variable->value +
                                " but the hostfile " + origin + " lists " + std::to_string(size) +
                                (size == 1 ? " rank" : " ranks") + "; make them agree, or unset " +
                                world_variable->name);
        return std::nullopt;
      }
    }
    TcpConfig config;
    config.rank = *rank;
    config.hosts = std::move(*hosts);
    detail::timeouts_from_environment(config, ec);
    if (ec) return std::nullopt;
    return config;
  } catch (const std::bad_alloc&) {
    report_config_error(ec, std::make_error_code(std::errc::not_enough_memory),
                        "collie: out of memory reading the environment");
    return std::nullopt;
  }
}

/// As above, throwing `collie::Error` with the same message.
inline TcpConfig ring_config_from_environment() {
  std::error_code ec;
  return detail::value_or_throw(ring_config_from_environment(ec), ec);
}

}  // namespace collie
