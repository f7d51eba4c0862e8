// The mpi backend: an MPI library's own collectives, ranks started by mpirun. Described here (a
// launcher hands the job to mpirun); its transport is not in this build yet, so init("mpi") says
// so.
#pragma once

#include <array>
#include <string>
#include <string_view>

#include "collie/runtime/backend.hpp"
#include "collie/runtime/enabled.hpp"

namespace collie {

/// The mpi backend's descriptor (the `BackendDescriptor` concept, runtime/backend.hpp). Not
/// compiled in yet (`compiled_in` false): `init("mpi")` fails with `errc::unknown_backend`
/// naming the backends this build has, and `init("any")` passes over it. `collie launch
/// --backend mpi` already hands the whole job to `mpirun` (`launch_style` mpirun), which sets
/// the ranks' variables itself.
struct MpiBackend {
  static constexpr std::string_view name = "mpi";
  static constexpr bool compiled_in = false;
  static constexpr std::array<std::string_view, 1> launch_names = {"mpi"};
  static constexpr LaunchStyle launch_style = LaunchStyle::mpirun;

  static constexpr std::array<BackendVariable, 2> variables = {{
      {"OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_SIZE", "set by Open MPI's mpirun", false},
      {"PMI_RANK, PMI_SIZE", "set by MPICH's and Intel MPI's launchers", false},
  }};

  static std::string prepare_launch(const LaunchJob&) { return {}; }

  /// Nothing: mpirun gives every rank its place.
  static void launch_environment(const LaunchJob&, const std::string&, int, LaunchEnvironment&) {}
};

}  // namespace collie
