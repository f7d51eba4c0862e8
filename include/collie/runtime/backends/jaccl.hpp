// The jaccl backend: RDMA queue pairs between every pair of hosts (or around a ring), MLX's
// low-latency backend. Described here (its variables and what a launcher sets); its transport is
// not in this build yet, so init("jaccl") says so.
#pragma once

#include <array>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "collie/core/error.hpp"
#include "collie/runtime/backend.hpp"
#include "collie/runtime/enabled.hpp"

namespace collie {

/// The jaccl backend's descriptor (the `BackendDescriptor` concept, runtime/backend.hpp): RDMA
/// over InfiniBand/RoCE queue pairs, as MLX's jaccl. Not compiled in yet (`compiled_in` false):
/// `init("jaccl")` fails with `errc::unknown_backend` naming the backends this build has, and
/// `init("any")` passes over it. `collie launch --backend jaccl` already writes the device file
/// (per rank, the RDMA device to reach every other rank) and sets `MLX_RANK`,
/// `MLX_IBV_DEVICES` and `MLX_JACCL_COORDINATOR` (rank 0's address, where the queue pairs are
/// exchanged through a collie::Store).
struct JacclBackend {
  static constexpr std::string_view name = "jaccl";
  static constexpr bool compiled_in = false;
  /// "jaccl-ring" is the same backend over a ring of cables (MLX_JACCL_RING=1).
  static constexpr std::array<std::string_view, 2> launch_names = {"jaccl", "jaccl-ring"};
  static constexpr LaunchStyle launch_style = LaunchStyle::per_rank;

  static constexpr std::array<BackendVariable, 4> variables = {{
      {"RANK", "this process's rank, in [0, N)"},
      {"JACCL_COORDINATOR", "rank 0's ip:port, where the ranks exchange their queue pairs"},
      {"IBV_DEVICES", "JSON N×N matrix of RDMA device names, null on the diagonal"},
      {"JACCL_RING", "use the ring of cables rather than the full mesh"},
  }};

  /// The device matrix, from each host's row (one entry per host: null on its own position, a
  /// device name, or a list of names for several cables). One rank per host.
  static std::string prepare_launch(const LaunchJob& job) {
    const std::string which = job.variant.empty() ? std::string(name) : job.variant;
    if (job.ranks_per_host != 1) {
      throw Error(errc::bad_configuration, "the " + which + " backend runs one rank per host (-n 1)");
    }
    nlohmann::json matrix = nlohmann::json::array();
    const std::size_t n = job.hosts.size();
    for (std::size_t i = 0; i < n; ++i) {
      const auto& host = job.hosts[i];
      const auto row = nlohmann::json::parse(host.devices.empty() ? std::string("null") : host.devices,
                                             nullptr, false);
      if (row.is_discarded() || !row.is_array() || row.size() != n) {
        throw Error(errc::bad_configuration,
                    "host \"" + host.name + "\" needs an \"rdma\" list with one entry per host (" +
                        std::to_string(n) + ") for the " + which + " backend");
      }
      if (!row[i].is_null()) {
        throw Error(errc::bad_configuration, "host \"" + host.name + "\": its own \"rdma\" entry (position " +
                                                 std::to_string(i) + ") must be null");
      }
      matrix.push_back(row);
    }
    return matrix.dump();
  }

  /// MLX_RANK, MLX_JACCL_COORDINATOR (the first host's first address and the starting port),
  /// MLX_IBV_DEVICES (a file with the matrix), and MLX_JACCL_RING=1 for "jaccl-ring".
  static void launch_environment(const LaunchJob& job, const std::string& prepared, int rank,
                                 LaunchEnvironment& env) {
    const auto& first = job.hosts.front();
    const std::string ip = first.ips.empty() ? std::string("127.0.0.1") : first.ips.front();
    env.set_both("RANK", std::to_string(rank));
    env.set_both("JACCL_COORDINATOR", ip + ":" + std::to_string(job.starting_port));
    env.set_file_both("IBV_DEVICES", prepared);
    if (job.variant == "jaccl-ring") env.set_both("JACCL_RING", "1");
  }
};

}  // namespace collie
