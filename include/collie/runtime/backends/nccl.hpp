// The nccl backend: NCCL over CUDA devices, MLX's choice for GPUs. Described here (its variables
// and what a launcher sets); its transport is not in this build yet, so init("nccl") says so.
#pragma once

#include <array>
#include <string>
#include <string_view>

#include "collie/runtime/backend.hpp"
#include "collie/runtime/enabled.hpp"

namespace collie {

/// The nccl backend's descriptor (the `BackendDescriptor` concept, runtime/backend.hpp). Not
/// compiled in yet (`compiled_in` false): `init("nccl")` fails with `errc::unknown_backend`
/// naming the backends this build has, and `init("any")` passes over it. The descriptor is here
/// so that `collie launch --backend nccl` starts jobs for builds that have it: one process per
/// GPU, `MLX_RANK`, `MLX_WORLD_SIZE`, `NCCL_HOST_IP`/`NCCL_PORT` (where rank 0 hands out NCCL's
/// unique id, through a collie::Store) and one device per rank in `CUDA_VISIBLE_DEVICES`.
struct NcclBackend {
  static constexpr std::string_view name = "nccl";
  static constexpr bool compiled_in = false;
  static constexpr std::array<std::string_view, 1> launch_names = {"nccl"};
  static constexpr LaunchStyle launch_style = LaunchStyle::per_rank;

  static constexpr std::array<BackendVariable, 6> variables = {{
      {"RANK", "this process's rank, in [0, N)"},
      {"WORLD_SIZE", "the number of ranks"},
      {"NCCL_HOST_IP", "the address of rank 0, which hands out NCCL's unique id", false},
      {"NCCL_PORT", "the port of that hand-out", false},
      {"CUDA_VISIBLE_DEVICES", "the GPU of this rank", false},
      {"NCCL_TIMEOUT", "how long one operation may take, in ms"},
  }};

  static std::string prepare_launch(const LaunchJob&) { return {}; }

  /// MLX_RANK, MLX_WORLD_SIZE, NCCL_HOST_IP (the first host's first address), NCCL_PORT, and
  /// one GPU per rank of a host in CUDA_VISIBLE_DEVICES; NCCL_DEBUG=INFO when verbose.
  static void launch_environment(const LaunchJob& job, const std::string&, int rank,
                                 LaunchEnvironment& env) {
    const auto& first = job.hosts.front();
    env.set_both("RANK", std::to_string(rank));
    env.set_both("WORLD_SIZE", std::to_string(job.size()));
    env.set("NCCL_HOST_IP", first.ips.empty() ? std::string("127.0.0.1") : first.ips.front());
    env.set("NCCL_PORT", std::to_string(job.nccl_port));
    env.set("CUDA_VISIBLE_DEVICES", std::to_string(rank % job.ranks_per_host));
    if (job.verbose) env.set("NCCL_DEBUG", "INFO");
  }
};

}  // namespace collie
