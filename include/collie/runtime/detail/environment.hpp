// Reading the environment, for every backend: a variable under its MLX_* or COLLIE_* name, the
// parsers of ranks, sizes, timeouts and byte counts with a clear error for each bad value, the
// rank and world size that schedulers (torchrun, Open MPI, MPICH/PMI, Slurm) set, and the
// coordinator's address.
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
#include "collie/runtime/hostfile.hpp"
#include "collie/transport/tcp_config.hpp"

namespace collie {

namespace detail {

/// A variable that is set: the exact name found (e.g. "COLLIE_RANK" or "MLX_RANK", so messages
/// name what the user actually wrote) and its value.
struct EnvVariable {
  std::string name;
  std::string value;
};

/// The variable `full_name`, spelled exactly so. An empty value counts as unset, so
/// `export MLX_RANK=` switches a variable off the way shells users expect.
inline std::optional<EnvVariable> env_exact(std::string_view full_name) {
  const std::string name(full_name);
  const char* value = std::getenv(name.c_str());
  if (value == nullptr || *value == '\0') return std::nullopt;
  return EnvVariable{name, value};
}

/// collie's variable `<NAME>`: `COLLIE_<NAME>` when set, else `MLX_<NAME>` (COLLIE wins when both
/// are set), else nothing. `env("RANK")` reads COLLIE_RANK or MLX_RANK.
inline std::optional<EnvVariable> env(std::string_view name) {
  if (auto collie = env_exact("COLLIE_" + std::string(name))) return collie;
  return env_exact("MLX_" + std::string(name));
}

/// "MLX_RANK (or COLLIE_RANK)": how messages name a variable nobody set.
inline std::string env_names(std::string_view name) {
  return "MLX_" + std::string(name) + " (or COLLIE_" + std::string(name) + ")";
}

/// The value without surrounding white space: "$(cat rank.txt)" and hand-edited files often
/// carry a stray newline or space, which is never meaningful in a number.
inline std::string_view trim_space(std::string_view text) {
  const auto is_space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
  return text;
}

/// A decimal integer, optionally signed; nothing for anything else (including trailing text).
inline std::optional<std::int64_t> parse_decimal(std::string_view text) {
  text = trim_space(text);
  if (!text.empty() && text.front() == '+') text.remove_prefix(1);
  if (text.empty()) return std::nullopt;
  std::int64_t value = 0;
  const auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (err != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

/// An unsigned 64-bit number, decimal or hexadecimal with a 0x prefix (job tokens are often
/// printed in hex).
inline std::optional<std::uint64_t> parse_u64(std::string_view text) {
  text = trim_space(text);
  int base = 10;
  if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
    text.remove_prefix(2);
    base = 16;
  }
  if (text.empty()) return std::nullopt;
  std::uint64_t value = 0;
  const auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), value, base);
  if (err != std::errc() || end != text.data() + text.size()) return std::nullopt;
  return value;
}

/// Whether a verbosity variable's value means "on": anything but "0" (and unset/empty).
inline bool is_verbose_value(std::string_view text) {
  text = trim_space(text);
  return !text.empty() && text != "0";
}

/// The value of a rank variable, checked against the world size when it is known (`size > 0`).
/// Message: `collie: MLX_RANK=abc is not a rank; set it to an integer in [0, 4)`.
inline std::optional<int> parse_rank(const EnvVariable& variable, int size, std::error_code& ec) {
  ec.clear();
  const std::string range = size > 0 ? "an integer in [0, " + std::to_string(size) + ")"
                                     : "a non-negative integer (0 for the first process)";
  const auto value = parse_decimal(variable.value);
  if (!value) {
    report_config_error(
        ec, errc::bad_configuration,
        "collie: " + variable.name + "=" + variable.value + " is not a rank; set it to " + range);
    return std::nullopt;
  }
  if (*value < 0 || (size > 0 && *value >= size) || *value > 1'000'000'000) {
    report_config_error(
        ec, errc::bad_configuration,
        "collie: " + variable.name + "=" + variable.value + " is out of range; set it to " + range);
    return std::nullopt;
  }
  return static_cast<int>(*value);
}

/// The value of a world-size variable: a positive integer.
inline std::optional<int> parse_world_size(const EnvVariable& variable, std::error_code& ec) {
  ec.clear();
  const auto value = parse_decimal(variable.value);
  if (!value || *value < 1 || *value > 1'000'000'000) {
    report_config_error(ec, errc::bad_configuration,
                        "collie: " + variable.name + "=" + variable.value +
                            " is not a world size; set it to the number of processes, a positive "
                            "integer");
    return std::nullopt;
  }
  return static_cast<int>(*value);
}

/// The largest timeout accepted, about 115 days: far beyond any real wait, small enough that
/// adding it to a clock reading can never overflow.
inline constexpr std::int64_t max_timeout_ms = 10'000'000'000;

/// A timeout in milliseconds, 1..max_timeout_ms.
inline std::optional<std::chrono::milliseconds> parse_timeout_ms(const EnvVariable& variable,
                                                                 std::chrono::milliseconds fallback,
                                                                 std::error_code& ec) {
  ec.clear();
  const auto value = parse_decimal(variable.value);
  if (!value || *value < 1 || *value > max_timeout_ms) {
    report_config_error(ec, errc::bad_configuration,
                        "collie: " + variable.name + "=" + variable.value +
                            " is not a timeout; set it to a whole number of milliseconds, 1.." +
                            std::to_string(max_timeout_ms) + " (default " +
                            std::to_string(fallback.count()) + ")");
    return std::nullopt;
  }
  return std::chrono::milliseconds(*value);
}

/// Fills the deadlines, the job token and verbosity of `config` from the environment; leaves a
/// field as it is when its variable is unset:
///
/// | variable (COLLIE_ or MLX_)                | field             | default |
/// |-------------------------------------------|-------------------|---------|
/// | `COLLIE_TIMEOUT_MS`                       | `timeout`         | 60000   |
/// | `COLLIE_CONNECT_TIMEOUT_MS`               | `connect_timeout` | 60000   |
/// | `COLLIE_JOB_TOKEN` (decimal or 0x hex)    | `job_token`       | 0       |
/// | `COLLIE_RING_VERBOSE` / `MLX_RING_VERBOSE`| `verbose`         | off     |
/// | `COLLIE_SPIN_US`                          | `spin`            | automatic (TcpConfig::spin) |
/// | `COLLIE_TCP_CONGESTION` (a name, or "system") | `congestion`  | automatic (TcpConfig::congestion) |
///
/// Verbosity is on for any non-empty value but "0". Errors: `errc::bad_configuration` naming the
/// variable and its value; `config` may then be partly filled.
inline void timeouts_from_environment(TcpConfig& config, std::error_code& ec) noexcept {
  ec.clear();
  try {
    if (auto variable = env("TIMEOUT_MS")) {
      auto value = parse_timeout_ms(*variable, std::chrono::seconds(60), ec);
      if (!value) return;
      config.timeout = *value;
    }
    if (auto variable = env("CONNECT_TIMEOUT_MS")) {
      auto value = parse_timeout_ms(*variable, std::chrono::seconds(60), ec);
      if (!value) return;
      config.connect_timeout = *value;
    }
    if (auto variable = env("JOB_TOKEN")) {
      auto value = parse_u64(variable->value);
      if (!value) {
        report_config_error(ec, errc::bad_configuration,
                            "collie: " + variable->name + "=" + variable->value +
                                " is not a job token; set it to an unsigned 64-bit number, "
                                "decimal or 0x hex, the same on every rank");
        return;
      }
      config.job_token = *value;
    }
    if (auto variable = env("RING_VERBOSE")) config.verbose = is_verbose_value(variable->value);
    if (auto variable = env("SPIN_US")) {
      auto value = parse_u64(variable->value);
      if (!value || *value > 1000000) {
        report_config_error(ec, errc::bad_configuration,
                            "collie: " + variable->name + "=" + variable->value +
                                " is not a spin time; set it to microseconds in [0, 1000000] "
                                "(0 never spins)");
        return;
      }
      config.spin = std::chrono::microseconds(*value);
    }
    if (auto variable = env("TCP_CONGESTION")) {
      // "system" keeps the kernel's choice; a name the kernel refuses fails at set-up, where the
      // names it offers are known.
      config.congestion = variable->value == "system" ? std::string() : variable->value;
    }
  } catch (const std::bad_alloc&) {
    report_config_error(ec, std::make_error_code(std::errc::not_enough_memory),
                        "collie: out of memory reading the environment");
  }
}

inline void timeouts_from_environment(TcpConfig& config) {
  std::error_code ec;
  timeouts_from_environment(config, ec);
  if (ec) throw Error(ec, last_error_message);
}

/// A count or byte size from `COLLIE_<name>` (a k, M or G suffix multiplies by 1024s when
/// `bytes`), within [low, high]: true with `field` set (or left at its default when the variable
/// is unset); false, with `errc::bad_configuration` naming the variable, the range and the
/// default, for anything else.
inline bool size_from_environment(std::string_view name, std::size_t& field, std::size_t low,
                                  std::size_t high, bool bytes, std::error_code& ec) {
  const auto variable = env_exact("COLLIE_" + std::string(name));
  if (!variable) return true;
  std::string_view text = trim_space(variable->value);
  std::size_t scale = 1;
  if (bytes && !text.empty()) {
    const char unit = text.back();
    scale = unit == 'k' || unit == 'K' ? std::size_t{1} << 10
            : unit == 'M'              ? std::size_t{1} << 20
            : unit == 'G'              ? std::size_t{1} << 30
                                       : 1;
    if (scale != 1) text.remove_suffix(1);
  }
  const auto value = parse_decimal(text);
  if (!value || *value < 0 || static_cast<std::size_t>(*value) > high / scale ||
      static_cast<std::size_t>(*value) * scale < low) {
    report_config_error(ec, errc::bad_configuration,
                        "collie: " + variable->name + "=" + variable->value +
                            " is out of range; set it to a number in [" + std::to_string(low) +
                            ", " + std::to_string(high) + "] (" +
                            (bytes ? "k, M and G multiply by 1024s; " : "") + "default " +
                            std::to_string(field) + ")");
    return false;
  }
  field = static_cast<std::size_t>(*value) * scale;
  return true;
}

/// Applies the environment's overrides of a policy's knobs (`Policy::knobs()`, see Knob); a
/// policy without knobs is left as it is. False, with `ec` set, for the first bad value.
template <class Policy>
bool knobs_from_environment(Policy& policy, std::error_code& ec) {
  if constexpr (requires { Policy::knobs(); }) {
    for (const auto& knob : Policy::knobs()) {
      if (!size_from_environment(knob.name, policy.*knob.field, knob.low, knob.high, knob.bytes, ec)) {
        return false;
      }
    }
  }
  return true;
}

/// A rank and world size, and the scheduler family they came from ("torchrun (RANK,
/// WORLD_SIZE)", ...), for messages.
struct RankAndSize {
  int rank = 0;
  int size = 1;
  std::string source;
};

/// One scheduler's pair of variables (and fallbacks for the size, tried in order).
struct SchedulerFamily {
  std::string_view label;
  std::string_view rank;
  std::array<std::string_view, 3> sizes;  // the first that is set wins; "" = none
};

/// The families `scheduler_rank_and_size` reads, in order. PMIX_RANK is deliberately absent:
/// PMIx has no standard size variable, and every launcher that sets it (Open MPI, Slurm) also
/// sets one of the complete families below.
inline constexpr std::array<SchedulerFamily, 4> scheduler_families = {{
    {"torchrun", "RANK", {"WORLD_SIZE", "", ""}},
    {"Open MPI", "OMPI_COMM_WORLD_RANK", {"OMPI_COMM_WORLD_SIZE", "", ""}},
    {"PMI (MPICH, Intel MPI)", "PMI_RANK", {"PMI_SIZE", "", ""}},
    // Inside an srun step SLURM_STEP_NUM_TASKS is the step's size, which may be smaller than the
    // job's SLURM_NTASKS; SLURM_NPROCS is the old name.
    {"Slurm", "SLURM_PROCID", {"SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"}},
}};

/// Rank and world size for a coordinator rendezvous, from the first family that sets either
/// variable, in this order:
///
/// 1. collie's own: `COLLIE_RANK`/`MLX_RANK` with `COLLIE_WORLD_SIZE`/`MLX_WORLD_SIZE`;
/// 2. torchrun: `RANK`, `WORLD_SIZE`;
/// 3. Open MPI (`mpirun`): `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`;
/// 4. PMI (MPICH/Hydra, Intel MPI, Slurm's PMI2): `PMI_RANK`, `PMI_SIZE`;
/// 5. Slurm (`srun`): `SLURM_PROCID`, `SLURM_STEP_NUM_TASKS` (else `SLURM_NTASKS`, `SLURM_NPROCS`).
///
/// Rank and size always come from one family, never mixed: a family with one variable but not
/// the other is an error (`errc::bad_configuration`, naming the missing variable), as is a rank
/// outside [0, size). When no family is present: nothing, with `errc::not_configured`.
inline std::optional<RankAndSize> scheduler_rank_and_size(std::error_code& ec) noexcept {
  ec.clear();
  try {
    // Reads one family; nothing with ec clear when it is absent altogether.
    const auto read = [&ec](std::string_view label, std::optional<EnvVariable> rank,
                            std::optional<EnvVariable> size, std::string rank_names,
                            std::string size_names) -> std::optional<RankAndSize> {
      if (!rank && !size) return std::nullopt;
      if (!size) {
        report_config_error(ec, errc::bad_configuration,
                            "collie: " + rank->name + " is set but " + size_names +
                                " is not; set " + size_names +
                                " to the number of processes (rank and world size must come "
                                "from one source, here " +
                                std::string(label) + ")");
        return std::nullopt;
      }
      if (!rank) {
        report_config_error(ec, errc::bad_configuration,
                            "collie: " + size->name + " is set but " + rank_names +
                                " is not; set " + rank_names +
                                " to this process's rank (rank and world size must come from "
                                "one source, here " +
                                std::string(label) + ")");
        return std::nullopt;
      }
      const auto world = parse_world_size(*size, ec);
      if (!world) return std::nullopt;
      const auto value = parse_rank(*rank, *world, ec);
      if (!value) {
        last_error_message += " (" + size->name + "=" + size->value + ")";
        return std::nullopt;
      }
      return RankAndSize{*value, *world,
                         std::string(label) + " (" + rank->name + ", " + size->name + ")"};
    };

    if (auto found = read("collie's own variables", env("RANK"), env("WORLD_SIZE"),
                          env_names("RANK"), env_names("WORLD_SIZE"));
        found || ec) {
      return found;
    }
    for (const auto& family : scheduler_families) {
      std::optional<EnvVariable> size;
      std::string size_names;
      for (auto name : family.sizes) {
        if (name.empty()) continue;
        size_names += (size_names.empty() ? "" : " or ") + std::string(name);
        if (!size) size = env_exact(name);
      }
      if (auto found = read(family.label, env_exact(family.rank), std::move(size),
                            std::string(family.rank), size_names);
          found || ec) {
        return found;
      }
    }
    report_config_error(ec, errc::not_configured,
                        "collie: no rank and world size in the environment; set MLX_RANK and "
                        "MLX_WORLD_SIZE (or COLLIE_RANK and COLLIE_WORLD_SIZE), or start the "
                        "processes with torchrun (RANK, WORLD_SIZE), mpirun "
                        "(OMPI_COMM_WORLD_RANK/SIZE, PMI_RANK/SIZE) or srun (SLURM_PROCID, "
                        "SLURM_NTASKS)");
    return std::nullopt;
  } catch (const std::bad_alloc&) {
    report_config_error(ec, std::make_error_code(std::errc::not_enough_memory),
                        "collie: out of memory reading the environment");
    return std::nullopt;
  }
}

inline RankAndSize scheduler_rank_and_size() {
  std::error_code ec;
  return value_or_throw(scheduler_rank_and_size(ec), ec);
}

/// The rendezvous coordinator (rank 0's "ip:port"): `COLLIE_COORDINATOR` (or
/// `MLX_COORDINATOR`), else torchrun's `MASTER_ADDR` with `MASTER_PORT` (an IPv6 MASTER_ADDR may
/// be written with or without brackets).
///
/// Errors: `errc::not_configured` when neither is set; `errc::bad_configuration` for a malformed
/// value, or MASTER_ADDR without MASTER_PORT (or the reverse), naming the variable.
inline std::optional<Endpoint> coordinator_from_environment(std::error_code& ec) noexcept {
  ec.clear();
  try {
    if (auto variable = env("COORDINATOR")) {
      Endpoint endpoint;
      const auto text = trim_space(variable->value);
      if (auto problem = endpoint_problem(text, endpoint); !problem.empty()) {
        report_config_error(ec, errc::bad_configuration,
                            "collie: " + variable->name + "=" + variable->value + ": " + problem +
                                "; set it to rank 0's ip:port, e.g. 10.0.0.1:29500");
        return std::nullopt;
      }
      return endpoint;
    }
    auto address = env_exact("MASTER_ADDR");
    auto port = env_exact("MASTER_PORT");
    if (!address && !port) {
      report_config_error(ec, errc::not_configured,
                          "collie: no rendezvous coordinator in the environment; set "
                          "COLLIE_COORDINATOR to rank 0's ip:port (e.g. 10.0.0.1:29500), or "
                          "MASTER_ADDR and MASTER_PORT as torchrun does");
      return std::nullopt;
    }
    if (!port || !address) {
      const auto& present = port ? *port : *address;
      report_config_error(ec, errc::bad_configuration,
                          "collie: " + present.name + " is set but " +
                              (port ? "MASTER_ADDR" : "MASTER_PORT") +
                              " is not; set both (rank 0's address and a free port), or "
                              "COLLIE_COORDINATOR=ip:port instead");
      return std::nullopt;
    }
    std::string host(trim_space(address->value));
    if (host.size() > 2 && host.front() == '[' && host.back() == ']') {
      host = host.substr(1, host.size() - 2);
    }
    // Reassemble "host:port" so one parser checks both halves with the usual messages.
    const bool v6 = host.find(':') != std::string::npos;
    const std::string text =
        (v6 ? "[" + host + "]" : host) + ":" + std::string(trim_space(port->value));
    Endpoint endpoint;
    if (auto problem = endpoint_problem(text, endpoint); !problem.empty()) {
      report_config_error(ec, errc::bad_configuration,
                          "collie: MASTER_ADDR=" + address->value + ", MASTER_PORT=" + port->value +
                              ": " + problem +
                              "; set MASTER_ADDR to rank 0's address and MASTER_PORT to 1..65535");
      return std::nullopt;
    }
    return endpoint;
  } catch (const std::bad_alloc&) {
    report_config_error(ec, std::make_error_code(std::errc::not_enough_memory),
                        "collie: out of memory reading the environment");
    return std::nullopt;
  }
}

inline Endpoint coordinator_from_environment() {
  std::error_code ec;
  return value_or_throw(coordinator_from_environment(ec), ec);
}

/// The variables of the other backends that give MLX_RANK a meaning without a hostfile (JACCL's
/// coordinator and device file, NCCL's host): with one of them set, a rank without a hostfile is
/// somebody else's configuration, not a broken ring one.
inline std::optional<EnvVariable> other_backend_variable() {
  for (auto name : {"JACCL_COORDINATOR", "IBV_DEVICES"}) {
    if (auto variable = env(name)) return variable;
  }
  return env_exact("NCCL_HOST_IP");
}

}  // namespace detail

}  // namespace collie
