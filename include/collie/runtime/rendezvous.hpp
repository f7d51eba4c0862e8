// Coordinator rendezvous: builds the ring's TcpConfig without a hostfile, for schedulers (Slurm,
// mpirun, torchrun, Kubernetes) that start processes on machines nobody knew in advance. Every
// rank publishes the addresses it listens on in the bootstrap store (store.hpp) that rank 0
// coordinates, and reads everyone's back.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <asio/ip/address.hpp>
#include <asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "collie/core/deadline.hpp"
#include "collie/core/detail/text.hpp"
#include "collie/core/error.hpp"
#include "collie/runtime/environment.hpp"
#include "collie/runtime/hostfile.hpp"
#include "collie/runtime/store.hpp"
#include "collie/transport/tcp_config.hpp"

namespace collie {

/// How a rank takes part in `rendezvous()`. Every rank of a job must use the same `connections`
/// and `job_token`.
struct RendezvousOptions {
  /// Listening sockets per rank, one per connection to its neighbour (the number of addresses
  /// per rank in a hostfile). 1..64.
  int connections = 1;
  /// The IP address to listen on. Empty (the default): the local address of the socket this rank
  /// used to reach the coordinator, i.e. the interface that routes to it; rank 0 uses the
  /// coordinator's address itself. A wildcard ("0.0.0.0", "::") listens on every interface and
  /// publishes that same routed address.
  std::string listen_host;
  /// Shared by the ranks of one job; a hello with another token is refused, so a process of some
  /// other job that finds the coordinator's port can never join.
  std::uint64_t job_token = 0;
  /// How long a rank keeps retrying to reach the coordinator (backoff from 50 ms, doubling to
  /// 1 s), and how long rank 0 waits for every rank to say hello.
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(60)};
  /// How long any single send or receive may take; also copied into the resulting TcpConfig.
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  /// Log each step to stderr, prefixed "[collie ring]"; copied into the resulting TcpConfig.
  bool verbose = false;
};

namespace detail {

inline constexpr int max_rendezvous_connections = 64;

// A listening socket's descriptor handed to the transport: blocking (the transport chooses its
// own mode) and close-on-exec (a child process must not keep the port bound).
inline void prepare_released_socket(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  const int fd_flags = ::fcntl(fd, F_GETFD);
  if (fd_flags >= 0) ::fcntl(fd, F_SETFD, fd_flags | FD_CLOEXEC);
}

// One call of rendezvous(): this rank's listening sockets, and the table from the store.
class Rendezvous {
 public:
  Rendezvous(const Endpoint& coordinator, int rank, int size, const RendezvousOptions& options)
      : coordinator_(coordinator), rank_(rank), size_(size), options_(options),
        where_(concat({"collie: rendezvous at ", coordinator.to_string(), " (rank ", number(rank),
                       " of ", number(size), "): "})) {}

  std::optional<TcpConfig> run(std::error_code& ec) {
    StoreOptions store_options;
    store_options.job_token = options_.job_token;
    store_options.connect_timeout = options_.connect_timeout;
    store_options.timeout = options_.timeout;
    store_options.verbose = options_.verbose;
    store_options.label = "ring";
    auto store = Store::connect(coordinator_, rank_, size_, store_options, where_, ec);
    if (!store) return std::nullopt;
    if (!listen(store->local_address(), ec)) return std::nullopt;
    std::string mine;
    for (const auto& endpoint : own_) mine += concat({mine.empty() ? "" : " ", endpoint.to_string()});
    if ((ec = store->set(key(rank_), mine))) return std::nullopt;
    std::vector<std::string> keys;
    for (int r = 0; r < size_; ++r) keys.push_back(key(r));
    // Rank 0 waits up to the connect timeout for the slowest rank; the others one operation
    // timeout longer, so that rank 0's verdict, which names the missing ranks, is what they
    // hear.
    const auto wait = rank_ == 0 ? options_.connect_timeout : options_.connect_timeout + options_.timeout;
    log("published " + mine + "; waiting for the table");
    const auto values = store->get(keys, wait, ec);
    if (!values) return std::nullopt;
    auto table = parse_table(*values, ec);
    if (!table) return std::nullopt;
    TcpConfig config;
    config.rank = rank_;
    config.hosts = std::move(*table);
    config.job_token = options_.job_token;
    config.connect_timeout = options_.connect_timeout;
    config.timeout = options_.timeout;
    config.verbose = options_.verbose;
    for (auto& listener : listeners_) {
      std::error_code release_ec;
      const int fd = listener.release(release_ec);
      if (release_ec) {
        for (int taken : config.listening_sockets) ::close(taken);
        return fail(ec, errc::connection_lost,
                    "cannot hand a listening socket to the transport: " + release_ec.message());
      }
      prepare_released_socket(fd);
      config.listening_sockets.push_back(fd);
    }
    log(concat({"done: ", number(size_), " ", size_ == 1 ? "rank" : "ranks", " in the table"}));
    return config;
  }

 private:
  static std::string key(int rank) { return concat({"ring/", number(rank)}); }

  std::nullopt_t fail(std::error_code& ec, errc code, const std::string& message) {
    report_config_error(ec, code, where_ + message);
    log("failed: " + message);
    return std::nullopt;
  }

  void log(const std::string& line) const {
    if (!options_.verbose) return;
    // One fprintf per line, so lines of concurrent ranks do not interleave mid-line.
    std::fprintf(stderr, "[collie ring] rendezvous rank %d of %d: %s\n", rank_, size_, line.c_str());
  }

  // Binds this rank's listening sockets on `address`, port 0, and records the ports the kernel
  // chose. They stay open from here on, so no other process can take a published port.
  bool bind_listeners(const asio::ip::address& bind_address,
                      const asio::ip::address& published_address, std::error_code& ec) {
    for (int i = 0; i < options_.connections; ++i) {
      asio::ip::tcp::acceptor listener(io_);
      const asio::ip::tcp::endpoint endpoint(bind_address, 0);
      std::error_code step;
      listener.open(endpoint.protocol(), step);
      if (!step) listener.set_option(asio::socket_base::reuse_address(true), step);
      if (!step) listener.bind(endpoint, step);
      if (!step) listener.listen(std::max(64, static_cast<int>(asio::socket_base::max_listen_connections)), step);
      asio::ip::tcp::endpoint bound;
      if (!step) bound = listener.local_endpoint(step);
      if (step) {
        fail(ec, errc::bad_configuration,
             "cannot listen on " + bind_address.to_string() + ": " + step.message() +
                 "; set the listen address (RendezvousOptions::listen_host, "
                 "COLLIE_LISTEN_ADDRESS) to an IP address of this host");
        return false;
      }
      listeners_.push_back(std::move(listener));
      own_.push_back(Endpoint{published_address.to_string(), bound.port()});
    }
    return true;
  }

  // The address to bind and the one to publish, from the options and the route to the
  // coordinator (`routed`).
  bool listen(const std::string& routed_text, std::error_code& ec) {
    std::error_code parse_ec;
    const auto routed = asio::ip::make_address(routed_text, parse_ec);
    if (parse_ec) {
      fail(ec, errc::connection_lost, "cannot tell this host's address on the route to the coordinator");
      return false;
    }
    if (options_.listen_host.empty()) return bind_listeners(routed, routed, ec);
    const auto address = asio::ip::make_address(options_.listen_host, parse_ec);
    if (parse_ec) {
      fail(ec, errc::bad_configuration,
           "the listen address \"" + options_.listen_host +
               "\" is not an IP address; set it to one of this host's addresses, or leave it "
               "empty to use the interface that reaches the coordinator");
      return false;
    }
    return bind_listeners(address, address.is_unspecified() ? routed : address, ec);
  }

  // Every rank's published "ip:port ip:port ...", checked: the same number of addresses each
  // (this rank's own, as it published them).
  std::optional<HostTable> parse_table(const std::vector<std::string>& values, std::error_code& ec) {
    HostTable table;
    for (std::size_t r = 0; r < values.size(); ++r) {
      std::vector<Endpoint> row;
      std::string_view rest = values[r];
      while (!rest.empty()) {
        const auto space = rest.find(' ');
        const std::string_view text = rest.substr(0, space);
        rest = space == std::string_view::npos ? std::string_view() : rest.substr(space + 1);
        Endpoint endpoint;
        if (!endpoint_problem(text, endpoint).empty()) {
          return fail(ec, errc::protocol_error,
                      concat({"rank ", number(r), " published \"", text, "\", which is not an ip:port"}));
        }
        row.push_back(std::move(endpoint));
      }
      if (row.size() != static_cast<std::size_t>(options_.connections)) {
        return fail(ec, errc::bad_configuration,
                    concat({"rank ", number(r), " listens on ", number(row.size()),
                            " addresses but this rank on ", number(options_.connections),
                            "; start every rank with the same number of connections per neighbour "
                            "(COLLIE_CONNECTIONS)"}));
      }
      table.push_back(std::move(row));
    }
    if (table[static_cast<std::size_t>(rank_)] != own_) {
      return fail(ec, errc::protocol_error,
                  concat({"the table does not list this rank's own addresses; another process may "
                          "have claimed rank ", number(rank_)}));
    }
    return table;
  }

  Endpoint coordinator_;
  int rank_;
  int size_;
  RendezvousOptions options_;
  std::string where_;
  asio::io_context io_{1};
  std::vector<asio::ip::tcp::acceptor> listeners_;  // this rank's, released into the config
  std::vector<Endpoint> own_;                       // their published addresses
};

}  // namespace detail

/// Builds the ring's `TcpConfig` by meeting at a coordinator instead of reading a hostfile.
/// Every rank of the job calls it with the same `coordinator` (rank 0's "ip:port"), its own
/// `rank` and the same `size`:
///
/// 1. each rank binds `options.connections` listening sockets on port 0 (see
///    `RendezvousOptions::listen_host` for the address) and keeps them open, so a published port
///    can never be taken by another process;
/// 2. rank 0 runs the bootstrap store's coordinator (`collie::Store`) on `coordinator`; every
///    rank connects to it (retrying with backoff, 50 ms doubling to 1 s, until
///    `connect_timeout`) with collie's hello: magic, protocol version, job token, world size and
///    rank;
/// 3. each rank sets the key "ring/<rank>" to its listening addresses and gets every rank's;
///    the coordinator answers once all `size` are set (rank 0 waits up to `connect_timeout`
///    for them, then fails every rank naming the ranks that never came).
///
/// Cost: one TCP connection per rank to rank 0, one key out and one reply of
/// O(size × connections) addresses back; rank 0's coordinator serves every rank at once.
///
/// The result has `rank`, `hosts` (the table, identical on every rank), `job_token`, both
/// timeouts, `verbose`, and `listening_sockets`: this rank's bound and listening descriptors
/// (blocking, close-on-exec), one per `hosts[rank]` entry, which the TCP transport takes over.
///
/// A hello carrying another job token is refused (that process gets `errc::bad_configuration`)
/// and rank 0 keeps waiting: a stray process cannot break a job. A hello with the right token
/// but a different world size or protocol version, or a rank already taken, is this job's
/// misconfiguration: every rank fails at once with rank 0's explanation (a different connection
/// count is found when the table arrives, by every rank).
///
/// Errors (all messages name the coordinator, this rank and the step):
/// - `errc::invalid_argument`: `size < 1`, `rank` outside [0, size), `connections` outside
///   1..64, or a timeout that is not positive;
/// - `errc::timed_out`: no connection to the coordinator within `connect_timeout` (with the last
///   socket error); on rank 0 (and relayed to every rank that said hello) ranks that never said
///   hello, listed by number;
/// - `errc::bad_configuration`: the coordinator address is in use or not this host's (rank 0),
///   a refused token, a mismatch of world size or connections, a duplicate rank;
/// - `errc::connection_lost`: rank 0 or a rank vanished in the middle;
/// - `errc::protocol_error`: the other end does not speak this protocol.
///
/// Blocks for the whole rendezvous; safe to call from several threads at once (each call has
/// its own sockets), which is how the tests run ranks as threads.
///
///   // on every rank, e.g. under Slurm with COLLIE_COORDINATOR=10.0.0.1:29500
///   collie::TcpConfig config = collie::rendezvous(collie::parse_endpoint("10.0.0.1:29500"),
///                                                 rank, size, {.connections = 2});
///
/// Throws `collie::Error`; the overload with `std::error_code&` returns nothing instead.
inline std::optional<TcpConfig> rendezvous(const Endpoint& coordinator, int rank, int size,
                                           const RendezvousOptions& options,
                                           std::error_code& ec) noexcept {
  ec.clear();
  try {
    const std::string where = "collie: rendezvous at " + coordinator.to_string() + ": ";
    std::string problem;
    if (size < 1) {
      problem = "world size " + std::to_string(size) + " must be at least 1";
    } else if (rank < 0 || rank >= size) {
      problem = "rank " + std::to_string(rank) + " is outside [0, " + std::to_string(size) + ")";
    } else if (options.connections < 1 ||
               options.connections > detail::max_rendezvous_connections) {
      problem = "connections = " + std::to_string(options.connections) + " must be 1.." +
                std::to_string(detail::max_rendezvous_connections);
    } else if (options.connect_timeout.count() <= 0 || options.timeout.count() <= 0) {
      problem = "connect_timeout and timeout must be positive";
    } else if (coordinator.port == 0 || coordinator.host.empty()) {
      problem = "the coordinator needs a host and a port 1..65535";
    }
    if (!problem.empty()) {
      detail::report_config_error(ec, errc::invalid_argument, where + problem);
      return std::nullopt;
    }
    detail::Rendezvous session(coordinator, rank, size, options);
    return session.run(ec);
  } catch (const std::bad_alloc&) {
    detail::report_config_error(ec, std::make_error_code(std::errc::not_enough_memory),
                                "collie: out of memory during the rendezvous");
    return std::nullopt;
  } catch (const std::exception& e) {
    // Asio is called through its error_code overloads and peers' JSON is read without
    // exceptions, so this is a safety net, not a path the protocol takes.
    detail::report_config_error(
        ec, errc::protocol_error,
        "collie: rendezvous at " + coordinator.to_string() + ": unexpected failure: " + e.what());
    return std::nullopt;
  }
}

inline TcpConfig rendezvous(const Endpoint& coordinator, int rank, int size,
                            const RendezvousOptions& options = {}) {
  std::error_code ec;
  return detail::value_or_throw(rendezvous(coordinator, rank, size, options, ec), ec);
}

namespace detail {

/// Fills `options` from the environment: the deadlines, job token and verbosity that
/// `timeouts_from_environment` reads, plus
/// - `COLLIE_CONNECTIONS`: listening sockets per rank, 1..64 (default 1);
/// - `COLLIE_LISTEN_ADDRESS`: the IP address to listen on (default: the interface that routes to
///   the coordinator).
inline void rendezvous_options_from_environment(RendezvousOptions& options,
                                                std::error_code& ec) noexcept {
  ec.clear();
  try {
    TcpConfig config;
    config.timeout = options.timeout;
    config.connect_timeout = options.connect_timeout;
    config.job_token = options.job_token;
    config.verbose = options.verbose;
    timeouts_from_environment(config, ec);
    if (ec) return;
    options.timeout = config.timeout;
    options.connect_timeout = config.connect_timeout;
    options.job_token = config.job_token;
    options.verbose = config.verbose;
    if (auto variable = env("CONNECTIONS")) {
      const auto value = parse_decimal(variable->value);
      if (!value || *value < 1 || *value > max_rendezvous_connections) {
        report_config_error(ec, errc::bad_configuration,
                            "collie: " + variable->name + "=" + variable->value +
                                " is not a connection count; set it to an integer in 1.." +
                                std::to_string(max_rendezvous_connections) +
                                ", the same on every rank");
        return;
      }
      options.connections = static_cast<int>(*value);
    }
    if (auto variable = env("LISTEN_ADDRESS")) {
      std::error_code parse_ec;
      const std::string text(trim_space(variable->value));
      asio::ip::make_address(text, parse_ec);
      if (parse_ec) {
        report_config_error(ec, errc::bad_configuration,
                            "collie: " + variable->name + "=" + variable->value +
                                " is not an IP address; set it to an address of this host, or "
                                "unset it to use the interface that reaches the coordinator");
        return;
      }
      options.listen_host = text;
    }
  } catch (const std::bad_alloc&) {
    report_config_error(ec, std::make_error_code(std::errc::not_enough_memory),
                        "collie: out of memory reading the environment");
  }
}

}  // namespace detail

/// The ring's `TcpConfig` by a rendezvous configured entirely by the environment, for jobs
/// started by a scheduler without a hostfile:
/// - the coordinator from `detail::coordinator_from_environment` (`COLLIE_COORDINATOR`, or
///   torchrun's `MASTER_ADDR` + `MASTER_PORT`);
/// - rank and world size from `detail::scheduler_rank_and_size` (collie/MLX, torchrun, Open
///   MPI, PMI or Slurm variables);
/// - options from `detail::rendezvous_options_from_environment` (`COLLIE_TIMEOUT_MS`,
///   `COLLIE_CONNECT_TIMEOUT_MS`, `COLLIE_JOB_TOKEN`, `MLX_RING_VERBOSE`, `COLLIE_CONNECTIONS`,
///   `COLLIE_LISTEN_ADDRESS`).
///
/// Errors: `errc::not_configured` when no coordinator is set; `errc::bad_configuration` when a
/// coordinator is set but no rank and world size are, or a variable is malformed; then those of
/// `rendezvous()`.
///
///   // srun -n 8 env COLLIE_COORDINATOR=10.0.0.1:29500 ./train
///   collie::TcpConfig config = collie::rendezvous_from_environment();
///
/// Throws `collie::Error`; the overload with `std::error_code&` returns nothing instead.
inline std::optional<TcpConfig> rendezvous_from_environment(std::error_code& ec) noexcept {
  ec.clear();
  try {
    const auto coordinator = detail::coordinator_from_environment(ec);
    if (!coordinator) return std::nullopt;
    const auto placement = detail::scheduler_rank_and_size(ec);
    if (!placement) {
      if (ec == errc::not_configured) {
        detail::report_config_error(
            ec, errc::bad_configuration,
            "collie: a rendezvous coordinator is set (" + coordinator->to_string() +
                ") but no rank and world size; set MLX_RANK and MLX_WORLD_SIZE (or COLLIE_RANK "
                "and COLLIE_WORLD_SIZE), or start the processes with torchrun, mpirun or srun");
      }
      return std::nullopt;
    }
    RendezvousOptions options;
    detail::rendezvous_options_from_environment(options, ec);
    if (ec) return std::nullopt;
    if (options.verbose) {
      std::fprintf(stderr, "[collie ring] rendezvous: rank %d of %d from %s, coordinator %s\n",
                   placement->rank, placement->size, placement->source.c_str(),
                   coordinator->to_string().c_str());
    }
    auto config = rendezvous(*coordinator, placement->rank, placement->size, options, ec);
    // The transport's other settings (COLLIE_SPIN_US, COLLIE_TCP_CONGESTION) apply as they do
    // with a hostfile: every variable means the same whichever way the ranks find each other.
    // They were checked with the options above, so this cannot fail.
    if (config) detail::timeouts_from_environment(*config, ec);
    return config;
  } catch (const std::bad_alloc&) {
    detail::report_config_error(ec, std::make_error_code(std::errc::not_enough_memory),
                                "collie: out of memory reading the environment");
    return std::nullopt;
  }
}

inline TcpConfig rendezvous_from_environment() {
  std::error_code ec;
  return detail::value_or_throw(rendezvous_from_environment(ec), ec);
}

}  // namespace collie
