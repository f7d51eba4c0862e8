// The ring backend: MLX's "ring", TCP sockets between the ranks, as `TcpTransport` × an algorithm
// of the enabled list (Ring by default, or the one COLLIE_ALGORITHM names). Its ranks find each
// other through a hostfile (MLX_RANK + MLX_HOSTFILE) or a coordinator rendezvous (for Slurm,
// mpirun, torchrun and other schedulers).
#pragma once

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>

#include "collie/core/error.hpp"
#include "collie/core/options.hpp"
#include "collie/runtime/backend.hpp"
#include "collie/runtime/enabled.hpp"
#include "collie/runtime/environment.hpp"
#include "collie/runtime/hostfile.hpp"

#if COLLIE_WITH_TCP
#include "collie/algorithm/ring.hpp"
#include "collie/runtime/rendezvous.hpp"
#include "collie/transport/tcp.hpp"
#endif

namespace collie {

/// The ring backend's descriptor (the `BackendDescriptor` concept, runtime/backend.hpp): what
/// `init("ring")`, `init("any")` and `collie launch --backend ring` know about it.
///
/// - `connect<Group>(ec)` builds the group: the algorithm (`COLLIE_ALGORITHM`, default `ring`)
///   and every knob of every TCP algorithm are read and checked first, then the ranks' addresses
///   (a hostfile, or else a rendezvous at a coordinator), then the connections. On one host (all
///   addresses loopback) the Ring policy runs one ring instead of two unless
///   `COLLIE_RING_RINGS` says otherwise.
/// - `prepare_launch(job)` writes the job's hostfile with `format_hostfile`, consecutive ports
///   per host from `--starting-port`; `launch_environment` hands each rank `MLX_RANK` and
///   `MLX_HOSTFILE`.
///
/// Cost of `connect`: p·k TCP connections in all (k per neighbour, on-demand ones added later
/// for other peers), one 32-byte handshake each. Errors: those of `init()`. Thread safety: the
/// members are stateless; `init()` serialises calls.
///
///   std::error_code ec;
///   auto group = collie::RingBackend::connect<collie::Group>(ec);  // what init("ring") does
struct RingBackend {
  static constexpr std::string_view name = "ring";
  static constexpr bool compiled_in = COLLIE_WITH_TCP;
  static constexpr std::array<std::string_view, 1> launch_names = {"ring"};
  static constexpr LaunchStyle launch_style = LaunchStyle::per_rank;

  /// Every variable the ring backend reads (docs/ring.md has the defaults and the errors).
  static constexpr std::array<BackendVariable, 18> variables = {{
      {"RANK", "this process's rank, in [0, N)"},
      {"HOSTFILE", "JSON hostfile: per rank, the ip:port addresses it listens on"},
      {"WORLD_SIZE", "the number of ranks (with a coordinator; checked against a hostfile)"},
      {"COORDINATOR", "rank 0's ip:port, for a rendezvous instead of a hostfile"},
      {"MASTER_ADDR", "torchrun's coordinator address (with MASTER_PORT)", false},
      {"MASTER_PORT", "torchrun's coordinator port (with MASTER_ADDR)", false},
      {"CONNECTIONS", "listening sockets per rank in a rendezvous (1-64)"},
      {"LISTEN_ADDRESS", "the address to listen on in a rendezvous"},
      {"JOB_TOKEN", "a number shared by the ranks of one job; other jobs are refused"},
      {"TIMEOUT_MS", "how long one wait may take (default 60000)"},
      {"CONNECT_TIMEOUT_MS", "how long connecting may take (default 60000)"},
      {"RING_VERBOSE", "log the connection set-up"},
      {"SPIN_US", "how long a wait polls before it sleeps"},
      {"TCP_CONGESTION", "the TCP congestion control of the connections"},
      {"ALGORITHM", "the algorithm over TCP: ring (default) or another enabled one, by name"},
      {"RING_RINGS", "Ring: rings at once (and the RING_*_BYTES sizes: see the algorithm)"},
      {"MESH_SMALL_BYTES", "Mesh: the largest one-round all-reduce"},
      {"RANK, WORLD_SIZE, OMPI_COMM_WORLD_*, PMI_*, SLURM_*",
       "a scheduler's rank and size, for a rendezvous", false},
  }};

#if COLLIE_WITH_TCP
  /// The group the environment describes: errc::not_configured without a hostfile or a
  /// coordinator; errc::bad_configuration for a bad value (every one found before connecting);
  /// otherwise what connecting gives.
  template <class Group>
  static std::optional<Group> connect(std::error_code& ec) noexcept {
    try {
      return connect_with<Group>(ec);
    } catch (const std::bad_alloc&) {
      detail::report_config_error(ec, std::make_error_code(std::errc::not_enough_memory),
                                  "collie: out of memory setting up the ring backend");
      return std::nullopt;
    }
  }
#endif

  /// The ranks' address table, as a hostfile: per rank, per address of its host, per
  /// connection, the next port from `job.starting_port` on (ranks on one host take consecutive
  /// ports).
  static std::string prepare_launch(const LaunchJob& job) {
    HostTable table;
    int port = job.starting_port;
    for (const auto& host : job.hosts) {
      if (host.ips.empty()) {
        throw Error(errc::bad_configuration,
                    "host \"" + host.name + "\" has no \"ips\": the ring backend needs the addresses its ranks listen on (use --hosts with IP addresses, or a hostfile)");
      }
      for (int i = 0; i < job.ranks_per_host; ++i) {
        std::vector<Endpoint> mine;
        for (const auto& ip : host.ips) {
          for (int k = 0; k < job.connections_per_ip; ++k) {
            if (port > 65535) {
              throw Error(errc::bad_configuration,
                          "--starting-port " + std::to_string(job.starting_port) +
                              " leaves too few ports for " + std::to_string(job.size()) + " ranks");
            }
            mine.push_back({ip, static_cast<std::uint16_t>(port++)});
          }
        }
        table.push_back(std::move(mine));
      }
    }
    return format_hostfile(table);
  }

  /// MLX_RANK, MLX_HOSTFILE (a file with the table) and, when asked, MLX_RING_VERBOSE.
  static void launch_environment(const LaunchJob& job, const std::string& prepared, int rank,
                                 LaunchEnvironment& env) {
    env.set_both("RANK", std::to_string(rank));
    env.set_file_both("HOSTFILE", prepared);
    if (job.verbose) env.set_both("RING_VERBOSE", "1");
  }

 private:
#if COLLIE_WITH_TCP
  // Whether every rank listens on a loopback address: the whole job is on this host, and its
  // "wire" is the kernel copying bytes between sockets.
  static bool all_loopback(const TcpConfig& config) {
    for (const auto& rank : config.hosts) {
      for (const auto& e : rank) {
        const bool loopback = e.host.rfind("127.", 0) == 0 || e.host == "::1" || e.host == "localhost";
        if (!loopback) return false;
      }
    }
    return !config.hosts.empty();
  }

  template <class Group>
  static std::optional<Group> connect_with(std::error_code& ec) {
    // Everything the variables can get wrong is found before any connection: the algorithm and
    // its knobs first.
    std::string algorithm(Ring::name);
    if (auto variable = detail::env("ALGORITHM")) algorithm = detail::trim_space(variable->value);
    bool known = false;
    detail::for_each_algorithm<TcpTransport>([&]<class A>() {
      known = known || A::name == algorithm;
      A policy;  // every algorithm's knobs, so that no bad value goes unnoticed
      if (!ec) detail::knobs_from_environment(policy, ec);
    });
    if (ec) return std::nullopt;
    if (!known) {
      detail::report_config_error(
          ec, errc::bad_configuration,
          "collie: " + detail::env_names("ALGORITHM") + "=" + algorithm +
              " is not an algorithm of the ring backend; use one of: " +
              detail::algorithm_names<TcpTransport>());
      return std::nullopt;
    }
    // Then where the ranks are: a hostfile, or else a rendezvous at a coordinator.
    auto config = ring_config_from_environment(ec);
    if (!config && ec == errc::not_configured) {
      const std::string hostfile_message = detail::last_error_message;
      config = rendezvous_from_environment(ec);
      if (!config && ec == errc::not_configured) {
        detail::last_error_message =
            hostfile_message + "; or, without a hostfile, set COLLIE_COORDINATOR (or MASTER_ADDR and "
                               "MASTER_PORT) with a rank and world size (COLLIE_RANK/COLLIE_WORLD_SIZE, or "
                               "those of Slurm, Open MPI, PMI or torchrun)";
      }
    }
    if (!config) return std::nullopt;
    Options options;
    options.timeout = config->timeout;
    const bool loopback = all_loopback(*config);
    auto transport = TcpTransport::connect(std::move(*config), ec);
    if (!transport) return std::nullopt;
    std::optional<Group> group;
    detail::for_each_algorithm<TcpTransport>([&]<class A>() {
      if (A::name != algorithm || group) return;
      A policy;
      if constexpr (std::is_same_v<A, Ring>) {
        // Two rings in opposite directions use both directions of every link, which doubles what
        // a network carries (measured 1.9x at 3 ranks over rate-limited links). On one host there
        // is no link: both rings' bytes are copied by the same cores, and the second ring only
        // doubles the messages (one ring measured 1.1-1.7x faster on loopback from 64 KiB to
        // 1 MiB, level above). COLLIE_RING_RINGS still wins.
        if (loopback) policy.rings = 1;
      }
      detail::knobs_from_environment(policy, ec);  // checked above: cannot fail now
      group.emplace(Collective<TcpTransport, A>(std::move(*transport), policy, options),
                    std::string(name));
    });
    return group;
  }
#endif
};

}  // namespace collie
