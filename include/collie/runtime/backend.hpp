// What a backend is, in one place: a small descriptor type with its name, the variables it reads,
// how it builds its group from the environment, and what a launcher must set for each rank.
// `collie::init()`, "any", the benchmark drivers and `collie launch` walk the list of descriptors
// (EnabledBackends, runtime/enabled.hpp) and match names; nothing else keeps a list of backends.
#pragma once

#include <concepts>
#include <cstddef>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

namespace collie {

/// One environment variable a backend reads. `collie_and_mlx` variables are read under both
/// spellings, `COLLIE_<name>` first, then `MLX_<name>` (so existing MLX set-ups work unchanged);
/// the others under exactly `name` (NCCL_HOST_IP, the schedulers' own variables).
struct BackendVariable {
  std::string_view name;
  std::string_view meaning;
  bool collie_and_mlx = true;
};

/// What `collie launch` knows about a job, for a backend to say what each rank's environment
/// must hold. Ranks are numbered host by host: rank r runs on host r / ranks_per_host.
struct LaunchJob {
  struct Host {
    std::string name;               ///< how the launcher reaches it (an ssh name), for messages
    std::vector<std::string> ips;   ///< the addresses its ranks listen on (IPv4 or IPv6)
    std::string devices;            ///< its row of the RDMA device matrix as JSON, "" if none
  };
  std::vector<Host> hosts;
  int ranks_per_host = 1;
  int starting_port = 32323;      ///< first port (ring: one per rank, address and connection)
  int connections_per_ip = 1;     ///< ring connections to a neighbour per address
  int nccl_port = 12345;          ///< the NCCL rendezvous port on the first host
  bool verbose = false;           ///< ask the backend to log its set-up
  std::string variant;            ///< the name the job asked for (e.g. "jaccl-ring")

  int size() const noexcept { return static_cast<int>(hosts.size()) * ranks_per_host; }
  const Host& host_of(int rank) const { return hosts[static_cast<std::size_t>(rank / ranks_per_host)]; }
};

/// The environment of one rank, as a backend fills it: variables, and variables whose value is
/// the path of a file holding `content` (the launcher writes the file on the rank's host).
struct LaunchEnvironment {
  std::vector<std::pair<std::string, std::string>> values;
  std::vector<std::pair<std::string, std::string>> files;

  /// `MLX_<name>` and `COLLIE_<name>` (both spellings, as MLX's launcher and collie read them).
  void set_both(std::string_view name, const std::string& value) {
    values.emplace_back("MLX_" + std::string(name), value);
    values.emplace_back("COLLIE_" + std::string(name), value);
  }
  /// Exactly `name`.
  void set(std::string_view name, const std::string& value) {
    values.emplace_back(std::string(name), value);
  }
  /// `MLX_<name>` and `COLLIE_<name>`, naming one file that holds `content`.
  void set_file_both(std::string_view name, const std::string& content) {
    files.emplace_back("MLX_" + std::string(name), content);
    files.emplace_back("COLLIE_" + std::string(name), content);
  }
};

/// How a launcher starts a backend's ranks: one process per rank with the environment the
/// backend gives it, or through `mpirun`, which sets up the ranks itself.
enum class LaunchStyle { per_rank, mpirun };

/// A backend descriptor. Beyond its own types, a descriptor `B` has
///
///   static constexpr std::string_view name;            // "ring"
///   static constexpr bool compiled_in;                 // its transport is in this build
///   static constexpr std::array<std::string_view, N> launch_names;  // names `collie launch` takes
///   static constexpr std::array<BackendVariable, M> variables;      // what it reads
///   static constexpr LaunchStyle launch_style;
///
///   // Builds the group from the environment: the group; or nothing with `errc::not_configured`
///   // when its environment is absent; or nothing with another code when it is configured but
///   // cannot be used (bad values, peers that never come). Defined when compiled in.
///   template <class Group> static std::optional<Group> connect(std::error_code& ec) noexcept;
///
///   // For a launcher: data computed once per job (the ring's address table, jaccl's device
///   // matrix), then each rank's environment. Both throw collie::Error(errc::bad_configuration)
///   // for a job the backend cannot run, saying what to change.
///   static std::string prepare_launch(const LaunchJob& job);
///   static void launch_environment(const LaunchJob& job, const std::string& prepared, int rank,
///                                  LaunchEnvironment& env);
template <class B>
concept BackendDescriptor = requires(const LaunchJob& job, const std::string& prepared,
                                     LaunchEnvironment& env) {
  { B::name } -> std::convertible_to<std::string_view>;
  { B::compiled_in } -> std::convertible_to<bool>;
  { B::launch_names.size() } -> std::convertible_to<std::size_t>;
  { B::variables.size() } -> std::convertible_to<std::size_t>;
  { B::launch_style } -> std::convertible_to<LaunchStyle>;
  { B::prepare_launch(job) } -> std::same_as<std::string>;
  { B::launch_environment(job, prepared, 0, env) } -> std::same_as<void>;
};

}  // namespace collie
