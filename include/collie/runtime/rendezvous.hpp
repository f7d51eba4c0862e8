// Coordinator rendezvous: builds the ring's TcpConfig without a hostfile, for schedulers (Slurm,
// mpirun, torchrun, Kubernetes) that start processes on machines nobody knew in advance. Rank 0
// collects every rank's listening addresses over TCP and hands the whole table back.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <asio/io_context.hpp>
#include <asio/ip/address.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/read.hpp>
#include <asio/steady_timer.hpp>
#include <asio/write.hpp>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <new>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "collie/core/deadline.hpp"
#include "collie/core/error.hpp"
#include "collie/runtime/environment.hpp"
#include "collie/runtime/hostfile.hpp"
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

inline constexpr std::string_view rendezvous_magic = "CLRV";
inline constexpr int rendezvous_version = 1;
// A table of 4096 ranks with 4 connections each is about 0.5 MiB; anything far larger is not a
// collie peer (an HTTP request's first four bytes read as a length of ~1.2 GB).
inline constexpr std::uint32_t max_rendezvous_frame = 16u << 20;
inline constexpr int max_rendezvous_connections = 64;

// Frames on the wire: a 4-byte big-endian length, then that many bytes of JSON text. Hello
// (rank → 0): {"magic":"CLRV","version":1,"token":T,"size":N,"rank":r,"endpoints":["ip:port"..]}.
// Reply (0 → rank): {"magic":"CLRV","version":1,"ok":true,"hosts":[["ip:port",..],..]} or
// {"magic":"CLRV","version":1,"ok":false,"error":"timed_out","message":"..."}.
inline std::string encode_frame(const nlohmann::json& message) {
  // Replace, not throw, on invalid UTF-8: a message may quote text a peer sent.
  const std::string body = message.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  const auto length = static_cast<std::uint32_t>(body.size());
  std::string frame(4, '\0');
  for (int i = 0; i < 4; ++i) frame[i] = static_cast<char>((length >> (24 - 8 * i)) & 0xFF);
  return frame + body;
}

inline std::uint32_t decode_length(const std::array<unsigned char, 4>& header) {
  return (std::uint32_t{header[0]} << 24) | (std::uint32_t{header[1]} << 16) |
         (std::uint32_t{header[2]} << 8) | std::uint32_t{header[3]};
}

inline std::string_view errc_name(errc code) {
  switch (code) {
    case errc::bad_configuration:
      return "bad_configuration";
    case errc::timed_out:
      return "timed_out";
    case errc::connection_lost:
      return "connection_lost";
    default:
      return "protocol_error";
  }
}

inline errc errc_from_name(std::string_view name) {
  if (name == "bad_configuration") return errc::bad_configuration;
  if (name == "timed_out") return errc::timed_out;
  if (name == "connection_lost") return errc::connection_lost;
  return errc::protocol_error;
}

// Typed field access that never throws: a peer's JSON is untrusted.
inline std::optional<std::string> string_field(const nlohmann::json& object, const char* key) {
  const auto it = object.find(key);
  if (it == object.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

inline std::optional<std::int64_t> integer_field(const nlohmann::json& object, const char* key) {
  const auto it = object.find(key);
  if (it == object.end() || !it->is_number_integer()) return std::nullopt;
  if (it->is_number_unsigned()) {
    const auto value = it->get<std::uint64_t>();
    if (value > static_cast<std::uint64_t>(INT64_MAX)) return std::nullopt;
    return static_cast<std::int64_t>(value);
  }
  return it->get<std::int64_t>();
}

inline std::optional<std::uint64_t> token_field(const nlohmann::json& object) {
  const auto it = object.find("token");
  if (it == object.end() || !it->is_number_unsigned()) return std::nullopt;
  return it->get<std::uint64_t>();
}

inline std::string hex_token(std::uint64_t token) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%llx", static_cast<unsigned long long>(token));
  return text;
}

// "2, 5-7, 9": a list of ranks with runs collapsed, cut short after a few runs so a message
// about a thousand-rank job stays one line.
inline std::string format_ranks(const std::vector<int>& ranks) {
  std::string text;
  std::size_t runs = 0;
  for (std::size_t i = 0; i < ranks.size();) {
    std::size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    if (++runs > 16) {
      text += ", ... (" + std::to_string(ranks.size()) + " in all)";
      break;
    }
    if (!text.empty()) text += ", ";
    text += std::to_string(ranks[i]);
    if (j > i) text += "-" + std::to_string(ranks[j]);
    i = j + 1;
  }
  return text;
}

// Room for every rank to connect at once before accept() catches up (at least 64, or the
// system's limit). Copied to a local so the static constant is not odr-used.
inline int listen_backlog() {
  const int system_limit = asio::socket_base::max_listen_connections;
  return std::max(64, system_limit);
}

inline std::string ranks_noun(std::size_t n) { return n == 1 ? "rank" : "ranks"; }

inline std::string milliseconds_text(std::chrono::milliseconds ms) {
  return std::to_string(ms.count()) + " ms";
}

// Runs `io` until `done()` or the deadline; returns `done()`. Every caller keeps an operation
// pending while it waits, so an idle io_context here means the work ended without `done()`.
template <class Done>
bool run_io_until(asio::io_context& io, Deadline deadline, Done done) {
  while (!done()) {
    if (deadline.expired()) return false;
    io.restart();
    if (io.run_one_until(deadline.when()) == 0 && io.stopped() && !deadline.expired()) {
      return done();
    }
  }
  return true;
}

// One asynchronous socket operation run to completion or to the deadline. On expiry the socket
// is closed, which ends the operation with operation_aborted, and that handler runs before the
// return: no handler can outlive the locals it points at. Nothing = timed out.
template <class Start>
std::optional<std::error_code> run_socket_op(asio::io_context& io, asio::ip::tcp::socket& socket,
                                             Deadline deadline, Start start) {
  std::optional<std::error_code> result;
  start([&result](const std::error_code& ec, auto&&...) { result = ec; });
  if (run_io_until(io, deadline, [&] { return result.has_value(); })) return result;
  std::error_code ignored;
  socket.close(ignored);
  io.restart();
  while (!result && io.run_one() > 0) {
  }
  return std::nullopt;
}

// A listening socket's descriptor handed to the transport: blocking (the transport chooses its
// own mode) and close-on-exec (a child process must not keep the port bound).
inline void prepare_released_socket(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  const int fd_flags = ::fcntl(fd, F_GETFD);
  if (fd_flags >= 0) ::fcntl(fd, F_SETFD, fd_flags | FD_CLOEXEC);
}

// One call of rendezvous(): the sockets, the io_context and, on rank 0, the state of the
// collection. Handlers capture raw pointers into this object; every path out of run() closes
// all sockets and drains the io_context first, so none can run later.
class Rendezvous {
 public:
  Rendezvous(const Endpoint& coordinator, int rank, int size, const RendezvousOptions& options)
      : coordinator_(coordinator),
        rank_(rank),
        size_(size),
        options_(options),
        where_("collie: rendezvous at " + coordinator.to_string() + " (rank " +
               std::to_string(rank) + " of " + std::to_string(size) + "): ") {}

  Rendezvous(const Rendezvous&) = delete;
  Rendezvous& operator=(const Rendezvous&) = delete;

  std::optional<TcpConfig> run(std::error_code& ec) {
    std::optional<HostTable> table = rank_ == 0 ? coordinate(ec) : join(ec);
    shut_down();
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
    log("done: " + std::to_string(size_) + " " + ranks_noun(size_) + " in the table");
    return config;
  }

 private:
  // A connection accepted by rank 0.
  struct Peer {
    Peer(asio::ip::tcp::socket s, asio::io_context& io) : socket(std::move(s)), timer(io) {}
    asio::ip::tcp::socket socket;
    asio::steady_timer timer;
    std::array<unsigned char, 4> header{};
    std::string body;
    std::string out;
    std::string address;              // the peer's ip:port, for messages
    int rank = -1;                    // set once its hello is accepted
    std::vector<Endpoint> endpoints;  // from its hello
    char probe = 0;                   // target of the read that notices a rank leaving
    bool writing = false;
    std::error_code write_error;
  };

  enum class Phase { collecting, replying, stopping };

  std::nullopt_t fail(std::error_code& ec, errc code, const std::string& message) {
    report_config_error(ec, code, where_ + message);
    log("failed: " + message);
    return std::nullopt;
  }

  void log(const std::string& line) const {
    if (!options_.verbose) return;
    // One fprintf per line, so lines of concurrent ranks do not interleave mid-line.
    std::fprintf(stderr, "[collie ring] rendezvous rank %d of %d: %s\n", rank_, size_,
                 line.c_str());
  }

  // The addresses the coordinator's host resolves to. Numeric addresses never touch the
  // resolver; a host name goes through getaddrinfo, which has no deadline of its own.
  std::optional<std::vector<asio::ip::tcp::endpoint>> resolve_coordinator(std::error_code& ec) {
    std::error_code parse_ec;
    const auto address = asio::ip::make_address(coordinator_.host, parse_ec);
    if (!parse_ec) return std::vector{asio::ip::tcp::endpoint(address, coordinator_.port)};
    asio::ip::tcp::resolver resolver(io_);
    std::error_code resolve_ec;
    const auto results = resolver.resolve(coordinator_.host, std::to_string(coordinator_.port),
                                          asio::ip::tcp::resolver::numeric_service, resolve_ec);
    if (resolve_ec || results.empty()) {
      fail(ec, errc::bad_configuration,
           "cannot resolve the coordinator's host \"" + coordinator_.host +
               "\": " + (resolve_ec ? resolve_ec.message() : "no addresses") +
               "; set the coordinator (COLLIE_COORDINATOR or MASTER_ADDR) to rank 0's IP address");
      return std::nullopt;
    }
    std::vector<asio::ip::tcp::endpoint> endpoints;
    for (const auto& entry : results) endpoints.push_back(entry.endpoint());
    return endpoints;
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
      if (!step) listener.listen(listen_backlog(), step);
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
    std::string text;
    for (const auto& endpoint : own_) text += (text.empty() ? "" : ", ") + endpoint.to_string();
    log("listening on " + text);
    return true;
  }

  // The address to bind and the one to publish, from the options and the route to the
  // coordinator (`routed`).
  bool listen(const asio::ip::address& routed, std::error_code& ec) {
    if (options_.listen_host.empty()) return bind_listeners(routed, routed, ec);
    std::error_code parse_ec;
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

  // ---- every rank but 0 ----------------------------------------------------------------------

  std::optional<HostTable> join(std::error_code& ec) {
    const auto targets = resolve_coordinator(ec);
    if (!targets) return std::nullopt;
    asio::ip::tcp::socket socket(io_);
    if (!connect(socket, *targets, ec)) return std::nullopt;
    const auto connected_at = Deadline::clock::now();
    std::error_code local_ec;
    const auto local = socket.local_endpoint(local_ec);
    if (local_ec) {
      return fail(ec, errc::connection_lost,
                  "lost the connection to the coordinator right after connecting: " +
                      local_ec.message() + "; check that rank 0 is still running");
    }
    log("connected to the coordinator from " + local.address().to_string());
    if (!listen(local.address(), ec)) return std::nullopt;

    nlohmann::json endpoints = nlohmann::json::array();
    for (const auto& endpoint : own_) endpoints.push_back(endpoint.to_string());
    const std::string hello = encode_frame({{"magic", rendezvous_magic},
                                            {"version", rendezvous_version},
                                            {"token", options_.job_token},
                                            {"size", size_},
                                            {"rank", rank_},
                                            {"endpoints", std::move(endpoints)}});
    const auto sent = run_socket_op(io_, socket, Deadline::after(options_.timeout), [&](auto done) {
      asio::async_write(socket, asio::buffer(hello), done);
    });
    if (!sent) {
      return fail(ec, errc::timed_out,
                  "sending the hello to the coordinator took longer than " +
                      milliseconds_text(options_.timeout) +
                      "; check that rank 0 is not stuck, or raise COLLIE_TIMEOUT_MS");
    }
    if (*sent) {
      return fail(ec, errc::connection_lost,
                  "sending the hello to the coordinator failed: " + sent->message() +
                      "; rank 0 has probably failed, see its error");
    }
    log("hello sent; waiting for the address table");

    // Rank 0 waits up to its connect timeout for the slowest rank, counted from a moment before
    // this rank could connect, then answers (with the table or its error). Waiting that long
    // plus one operation timeout means rank 0's own verdict, which names the missing ranks,
    // arrives here instead of a bare timeout.
    const auto reply_deadline =
        Deadline(connected_at + options_.connect_timeout + options_.timeout);
    std::array<unsigned char, 4> header{};
    auto received = run_socket_op(io_, socket, reply_deadline, [&](auto done) {
      asio::async_read(socket, asio::buffer(header), done);
    });
    std::string body;
    if (received && !*received) {
      const auto length = decode_length(header);
      if (length > max_rendezvous_frame) {
        return fail(ec, errc::protocol_error,
                    "the coordinator's reply announces " + std::to_string(length) +
                        " bytes, more than a rendezvous ever sends; check that the coordinator "
                        "address points at rank 0 of this job and not at another service");
      }
      body.resize(length);
      received = run_socket_op(io_, socket, Deadline::after(options_.timeout), [&](auto done) {
        asio::async_read(socket, asio::buffer(body), done);
      });
    }
    if (!received) {
      return fail(ec, errc::timed_out,
                  "no address table from the coordinator within " +
                      milliseconds_text(options_.connect_timeout + options_.timeout) +
                      " of connecting; rank 0 accepted the connection but never answered — check "
                      "its output, and that the address is rank 0 of this job");
    }
    if (*received) {
      const bool eof = *received == asio::error::eof;
      return fail(
          ec, errc::connection_lost,
          std::string(eof ? "the coordinator closed the connection"
                          : "reading the coordinator's reply failed: " + received->message()) +
              " before sending the address table; rank 0 has probably failed or refused "
              "this process, see its error");
    }
    return parse_reply(body, ec);
  }

  // Connects to any of the coordinator's addresses, retrying with backoff until the connect
  // timeout: ranks start in any order, so rank 0 may not be listening yet.
  bool connect(asio::ip::tcp::socket& socket, const std::vector<asio::ip::tcp::endpoint>& targets,
               std::error_code& ec) {
    const auto deadline = Deadline::after(options_.connect_timeout);
    auto backoff = std::chrono::milliseconds(50);
    std::string last_error;
    int attempts = 0;
    while (true) {
      for (const auto& target : targets) {
        ++attempts;
        std::error_code step;
        socket.close(step);
        socket.open(target.protocol(), step);
        if (step) {
          last_error = step.message();
          continue;
        }
        // One attempt may not eat the whole budget when the host drops SYNs: the next address,
        // or a later retry, may answer.
        const auto attempt_start = Deadline::clock::now();
        const auto attempt = earliest(deadline, Deadline::after(std::chrono::seconds(5)));
        const auto result = run_socket_op(io_, socket, attempt,
                                          [&](auto done) { socket.async_connect(target, done); });
        if (result && !*result) return true;
        // An attempt cut short by the overall deadline says nothing about the coordinator;
        // keep the last real answer (typically "Connection refused") for the message.
        if (result) {
          last_error = result->message();
        } else if (!deadline.expired() || last_error.empty()) {
          last_error = "no answer within " +
                       milliseconds_text(std::chrono::duration_cast<std::chrono::milliseconds>(
                           attempt.when() - attempt_start));
        }
        if (deadline.expired()) break;
      }
      if (deadline.expired()) break;
      std::this_thread::sleep_for(
          std::min<std::chrono::nanoseconds>(backoff, deadline.remaining()));
      backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
    }
    fail(ec, errc::timed_out,
         "could not connect to the coordinator within " +
             milliseconds_text(options_.connect_timeout) + " (" + std::to_string(attempts) +
             " attempts, last: " +
             (last_error.empty() ? std::string("no attempt finished") : last_error) +
             "); check that rank 0 is running on that host and that COLLIE_COORDINATOR (or "
             "MASTER_ADDR and MASTER_PORT) is the same on every rank, or raise "
             "COLLIE_CONNECT_TIMEOUT_MS");
    return false;
  }

  std::optional<HostTable> parse_reply(const std::string& body, std::error_code& ec) {
    const auto reply = nlohmann::json::parse(body, nullptr, false);
    if (reply.is_discarded() || !reply.is_object() ||
        string_field(reply, "magic") != std::string(rendezvous_magic)) {
      return fail(ec, errc::protocol_error,
                  "the coordinator's reply is not a collie rendezvous message; check that the "
                  "coordinator address points at rank 0 of this job and not at another service");
    }
    const auto ok = reply.find("ok");
    if (ok == reply.end() || !ok->is_boolean()) {
      return fail(ec, errc::protocol_error, "the coordinator's reply has no \"ok\" field");
    }
    if (!ok->get<bool>()) {
      const auto code = errc_from_name(string_field(reply, "error").value_or(""));
      return fail(
          ec, code,
          "the coordinator answered: " + string_field(reply, "message").value_or("(no message)"));
    }
    const auto hosts = reply.find("hosts");
    if (hosts == reply.end() || !hosts->is_array() ||
        hosts->size() != static_cast<std::size_t>(size_)) {
      return fail(ec, errc::protocol_error,
                  "the coordinator's table does not have " + std::to_string(size_) + " ranks");
    }
    HostTable table;
    for (std::size_t r = 0; r < hosts->size(); ++r) {
      const auto& row = (*hosts)[r];
      if (!row.is_array() || row.size() != static_cast<std::size_t>(options_.connections)) {
        return fail(ec, errc::protocol_error,
                    "the coordinator's table lists a wrong number of addresses for rank " +
                        std::to_string(r));
      }
      std::vector<Endpoint> endpoints;
      for (const auto& item : row) {
        Endpoint endpoint;
        const std::string text = item.is_string() ? item.get<std::string>() : item.dump();
        if (!item.is_string() || !endpoint_problem(text, endpoint).empty()) {
          return fail(ec, errc::protocol_error,
                      "the coordinator's table holds \"" + text + "\" for rank " +
                          std::to_string(r) + ", which is not an ip:port");
        }
        endpoints.push_back(std::move(endpoint));
      }
      table.push_back(std::move(endpoints));
    }
    if (table[static_cast<std::size_t>(rank_)] != own_) {
      return fail(ec, errc::protocol_error,
                  "the coordinator's table does not list this rank's own addresses; another "
                  "process may have claimed rank " +
                      std::to_string(rank_));
    }
    return table;
  }

  // ---- rank 0 --------------------------------------------------------------------------------

  std::optional<HostTable> coordinate(std::error_code& ec) {
    const auto targets = resolve_coordinator(ec);
    if (!targets) return std::nullopt;
    if (targets->front().address().is_unspecified()) {
      return fail(ec, errc::bad_configuration,
                  "the coordinator address is a wildcard, which other ranks cannot reach; set it "
                  "to an IP address of rank 0's host that every rank can reach");
    }
    if (size_ == 1) {
      // Nobody to wait for: publish this rank's own sockets, on the coordinator's address.
      if (!listen(targets->front().address(), ec)) return std::nullopt;
      return HostTable{own_};
    }
    std::error_code step;
    for (const auto& target : *targets) {
      acceptor_.close(step);
      acceptor_.open(target.protocol(), step);
      // SO_REUSEADDR: a coordinator restarted right after a failed job finds its port in
      // TIME_WAIT and must still be able to bind it.
      if (!step) acceptor_.set_option(asio::socket_base::reuse_address(true), step);
      if (!step) acceptor_.bind(target, step);
      if (!step) acceptor_.listen(listen_backlog(), step);
      if (!step) break;
    }
    if (step) {
      std::string advice = "check the coordinator address";
      if (step == asio::error::address_in_use) {
        advice =
            "another process holds that port; stop it or pick another port for the "
            "coordinator (COLLIE_COORDINATOR or MASTER_PORT) on every rank";
      } else if (step == std::error_code(EADDRNOTAVAIL, asio::error::get_system_category())) {
        advice =
            "this host does not own that address; rank 0 must run on the coordinator's "
            "host, or COLLIE_COORDINATOR/MASTER_ADDR must name this host";
      }
      return fail(
          ec, errc::bad_configuration,
          "rank 0 cannot listen on the coordinator address: " + step.message() + "; " + advice);
    }
    const auto bound = acceptor_.local_endpoint(step);
    if (!listen(bound.address(), ec)) return std::nullopt;
    log("coordinator listening; waiting for " + std::to_string(size_ - 1) + " more " +
        ranks_noun(size_ - 1));

    by_rank_.assign(static_cast<std::size_t>(size_), nullptr);
    start_accept();
    const auto deadline = Deadline::after(options_.connect_timeout);
    const bool complete =
        run_io_until(io_, deadline, [&] { return joined_ == size_ - 1 || fatal_code_; });
    if (fatal_code_) {
      tell_everyone(*fatal_code_, fatal_message_);
      return fail(ec, *fatal_code_, fatal_message_);
    }
    if (!complete) {
      const std::string message = timeout_message();
      tell_everyone(errc::timed_out, message);
      return fail(ec, errc::timed_out, message);
    }
    std::error_code ignored;
    acceptor_.close(ignored);  // the table is complete; later arrivals are refused by the kernel

    HostTable table(static_cast<std::size_t>(size_));
    nlohmann::json hosts = nlohmann::json::array();
    for (std::size_t r = 0; r < table.size(); ++r) {
      table[r] = r == 0 ? own_ : by_rank_[r]->endpoints;
      nlohmann::json row = nlohmann::json::array();
      for (const auto& endpoint : table[r]) row.push_back(endpoint.to_string());
      hosts.push_back(std::move(row));
    }
    phase_ = Phase::replying;
    const std::string reply = encode_frame({{"magic", rendezvous_magic},
                                            {"version", rendezvous_version},
                                            {"ok", true},
                                            {"hosts", std::move(hosts)}});
    for (int r = 1; r < size_; ++r) send(*by_rank_[static_cast<std::size_t>(r)], reply);
    const bool written =
        run_io_until(io_, Deadline::after(options_.timeout), [&] { return writes_pending_ == 0; });
    std::vector<int> unreached;
    for (int r = 1; r < size_; ++r) {
      const Peer& peer = *by_rank_[static_cast<std::size_t>(r)];
      if (peer.writing || peer.write_error || peer.rank < 0) unreached.push_back(r);
    }
    if (!written || !unreached.empty()) {
      return fail(ec, written ? errc::connection_lost : errc::timed_out,
                  "could not send the address table to " + ranks_noun(unreached.size()) + " " +
                      format_ranks(unreached) +
                      (written ? " (the connection broke)"
                               : " within " + milliseconds_text(options_.timeout)) +
                      "; those ranks have probably failed, see their errors");
    }
    log("address table sent to every rank");
    return table;
  }

  void start_accept() {
    acceptor_.async_accept([this](std::error_code ec, asio::ip::tcp::socket socket) {
      if (phase_ != Phase::collecting || ec == asio::error::operation_aborted) return;
      if (ec) {
        // Transient failures (a client that reset before accept) cost only that client; running
        // out of descriptors is fatal, as no further rank could be accepted either.
        if (ec == asio::error::connection_aborted || ec == asio::error::connection_reset) {
          start_accept();
          return;
        }
        set_fatal(errc::connection_lost,
                  "accepting a connection on the coordinator port failed: " + ec.message());
        return;
      }
      peers_.push_back(std::make_unique<Peer>(std::move(socket), io_));
      Peer* peer = peers_.back().get();
      std::error_code remote_ec;
      const auto remote = peer->socket.remote_endpoint(remote_ec);
      peer->address = remote_ec ? "an unknown address"
                                : Endpoint{remote.address().to_string(), remote.port()}.to_string();
      // A client that connects and says nothing (a port scanner, a hung process) is dropped
      // after one operation timeout; it never holds up the rendezvous beyond its own slot.
      peer->timer.expires_after(options_.timeout);
      peer->timer.async_wait([this, peer](std::error_code timer_ec) {
        if (timer_ec || phase_ != Phase::collecting || peer->rank >= 0) return;
        note(peer->address + " connected but sent no hello within " +
             milliseconds_text(options_.timeout));
        drop(*peer);
      });
      read_hello(*peer);
      start_accept();
    });
  }

  void read_hello(Peer& peer) {
    asio::async_read(
        peer.socket, asio::buffer(peer.header), [this, p = &peer](std::error_code ec, std::size_t) {
          if (phase_ != Phase::collecting || ec == asio::error::operation_aborted) return;
          if (ec) {
            note(p->address + " closed the connection before its hello (" + ec.message() + ")");
            drop(*p);
            return;
          }
          const auto length = decode_length(p->header);
          if (length > max_rendezvous_frame) {
            note(p->address + " is not a collie rendezvous client (it announced " +
                 std::to_string(length) + " bytes)");
            drop(*p);
            return;
          }
          p->body.resize(length);
          asio::async_read(
              p->socket, asio::buffer(p->body), [this, p](std::error_code body_ec, std::size_t) {
                if (phase_ != Phase::collecting || body_ec == asio::error::operation_aborted) {
                  return;
                }
                if (body_ec) {
                  note(p->address + " closed the connection during its hello (" +
                       body_ec.message() + ")");
                  drop(*p);
                  return;
                }
                on_hello(*p);
              });
        });
  }

  // Checks a hello. A foreign token means another job: refuse that connection and keep waiting.
  // Anything else wrong in a hello with our token is this job's misconfiguration, which no
  // amount of waiting fixes: fail every rank at once.
  void on_hello(Peer& peer) {
    const auto hello = nlohmann::json::parse(peer.body, nullptr, false);
    if (hello.is_discarded() || !hello.is_object() ||
        string_field(hello, "magic") != std::string(rendezvous_magic)) {
      note(peer.address + " is not a collie rendezvous client (no CLRV hello)");
      drop(peer);
      return;
    }
    const auto rank = integer_field(hello, "rank");
    const std::string who =
        (rank ? "rank " + std::to_string(*rank) + " (" + peer.address + ")" : peer.address);
    const auto token = token_field(hello);
    if (token != options_.job_token) {
      note("refused " + who + ": job token " + (token ? hex_token(*token) : "missing") +
           ", expected " + hex_token(options_.job_token));
      refuse(peer, errc::bad_configuration,
             "rank 0 refused this process: its job token differs from the coordinator's; start "
             "every rank of one job with the same COLLIE_JOB_TOKEN (or this process belongs to "
             "another job that uses the same coordinator address)");
      return;
    }
    const auto version = integer_field(hello, "version");
    if (version != rendezvous_version) {
      fatal_hello(peer, errc::protocol_error,
                  who + " speaks rendezvous protocol version " +
                      (version ? std::to_string(*version) : "?") + ", rank 0 speaks " +
                      std::to_string(rendezvous_version) +
                      "; run the same collie version on every rank");
      return;
    }
    const auto size = integer_field(hello, "size");
    if (size != size_) {
      fatal_hello(peer, errc::bad_configuration,
                  who + " was started with world size " + (size ? std::to_string(*size) : "?") +
                      " but rank 0 with " + std::to_string(size_) +
                      "; give every rank the same world size");
      return;
    }
    if (!rank || *rank < 1 || *rank >= size_) {
      fatal_hello(peer, errc::bad_configuration,
                  peer.address + " claims rank " + (rank ? std::to_string(*rank) : "?") +
                      ", but the other ranks of a world of " + std::to_string(size_) + " are 1.." +
                      std::to_string(size_ - 1) +
                      " (0 is the coordinator); give every process its own rank");
      return;
    }
    const auto endpoints = hello.find("endpoints");
    if (endpoints == hello.end() || !endpoints->is_array() ||
        endpoints->size() != static_cast<std::size_t>(options_.connections)) {
      const std::string count = endpoints != hello.end() && endpoints->is_array()
                                    ? std::to_string(endpoints->size())
                                    : "no";
      fatal_hello(peer, errc::bad_configuration,
                  who + " listens on " + count + " addresses but rank 0 on " +
                      std::to_string(options_.connections) +
                      "; start every rank with the same number of connections per neighbour "
                      "(COLLIE_CONNECTIONS)");
      return;
    }
    std::vector<Endpoint> parsed;
    for (const auto& item : *endpoints) {
      Endpoint endpoint;
      const std::string text = item.is_string() ? item.get<std::string>() : item.dump();
      if (!item.is_string() || !endpoint_problem(text, endpoint).empty()) {
        fatal_hello(peer, errc::protocol_error,
                    who + " published \"" + text + "\", which is not an ip:port");
        return;
      }
      parsed.push_back(std::move(endpoint));
    }
    const auto index = static_cast<std::size_t>(*rank);
    if (by_rank_[index] != nullptr) {
      fatal_hello(peer, errc::bad_configuration,
                  peer.address + " and " + by_rank_[index]->address + " both claim rank " +
                      std::to_string(*rank) + "; give every process its own rank");
      return;
    }
    peer.rank = static_cast<int>(*rank);
    peer.endpoints = std::move(parsed);
    by_rank_[index] = &peer;
    ++joined_;
    peer.timer.cancel();
    log("hello from " + who + "; " + std::to_string(size_ - 1 - joined_) + " more to come");
    watch(peer);
  }

  // A joined rank never sends anything more, so any completion of this one-byte read means it
  // left (or broke the protocol); its slot opens again, e.g. for a restarted process.
  void watch(Peer& peer) {
    asio::async_read(
        peer.socket, asio::buffer(&peer.probe, 1),
        [this, p = &peer](std::error_code ec, std::size_t) {
          if (phase_ == Phase::stopping || ec == asio::error::operation_aborted || p->rank < 0) {
            return;
          }
          // While the table goes out, ranks that have it close their end; that
          // is their success, not a departure.
          if (phase_ == Phase::replying) return;
          const std::string reason = ec ? ec.message() : "it sent unexpected data";
          note("rank " + std::to_string(p->rank) + " (" + p->address + ") left after its hello (" +
               reason + ")");
          by_rank_[static_cast<std::size_t>(p->rank)] = nullptr;
          --joined_;
          p->rank = -1;
          drop(*p);
        });
  }

  void send(Peer& peer, std::string frame, bool close_after = false) {
    peer.out = std::move(frame);
    peer.writing = true;
    ++writes_pending_;
    asio::async_write(peer.socket, asio::buffer(peer.out),
                      [this, p = &peer, close_after](std::error_code ec, std::size_t) {
                        p->writing = false;
                        --writes_pending_;
                        if (ec && !p->write_error) p->write_error = ec;
                        if (close_after) drop(*p);
                      });
  }

  static std::string error_frame(errc code, const std::string& message) {
    return encode_frame({{"magic", rendezvous_magic},
                         {"version", rendezvous_version},
                         {"ok", false},
                         {"error", errc_name(code)},
                         {"message", message}});
  }

  void refuse(Peer& peer, errc code, const std::string& message) {
    peer.timer.cancel();
    send(peer, error_frame(code, message), /*close_after=*/true);
  }

  void fatal_hello(Peer& peer, errc code, const std::string& message) {
    refuse(peer, code, message);
    set_fatal(code, message);
  }

  void set_fatal(errc code, const std::string& message) {
    if (fatal_code_) return;
    fatal_code_ = code;
    fatal_message_ = message;
  }

  void drop(Peer& peer) {
    std::error_code ignored;
    peer.timer.cancel();
    peer.socket.close(ignored);
  }

  void note(const std::string& text) {
    log(text);
    if (notes_.size() < 8) notes_.push_back(text);
  }

  std::string timeout_message() const {
    std::vector<int> missing;
    std::vector<int> present;
    for (int r = 1; r < size_; ++r) {
      (by_rank_[static_cast<std::size_t>(r)] ? present : missing).push_back(r);
    }
    std::string message = "timed out after " + milliseconds_text(options_.connect_timeout) +
                          " waiting for " + ranks_noun(missing.size()) + " " +
                          format_ranks(missing) + " (" + std::to_string(present.size()) + " of " +
                          std::to_string(size_ - 1) + " other ranks said hello";
    if (!present.empty()) message += ": " + format_ranks(present);
    message += ")";
    if (!notes_.empty()) {
      message += "; meanwhile";
      for (std::size_t i = 0; i < notes_.size(); ++i) message += (i ? "; " : " ") + notes_[i];
    }
    message += "; check that " + ranks_noun(missing.size()) + " " + format_ranks(missing) +
               (missing.size() == 1 ? " was" : " were") +
               " started with the same coordinator address and world size and can reach it, or "
               "raise COLLIE_CONNECT_TIMEOUT_MS";
    return message;
  }

  // Tells every rank that already said hello why the rendezvous failed, so each reports rank
  // 0's reason (which names the missing ranks) rather than an anonymous broken connection.
  void tell_everyone(errc code, const std::string& message) {
    phase_ = Phase::replying;
    const std::string frame = error_frame(code, message);
    for (auto* peer : by_rank_) {
      if (peer != nullptr && !peer->writing) send(*peer, frame);
    }
    run_io_until(io_, Deadline::after(std::min(options_.timeout, std::chrono::milliseconds(2000))),
                 [&] { return writes_pending_ == 0; });
  }

  // Closes everything and runs the handlers that the closing aborts, so that none is left
  // pointing into this object.
  void shut_down() {
    phase_ = Phase::stopping;
    std::error_code ignored;
    acceptor_.close(ignored);
    for (auto& peer : peers_) {
      peer->timer.cancel();
      peer->socket.close(ignored);
    }
    io_.restart();
    io_.run();
  }

  Endpoint coordinator_;
  int rank_;
  int size_;
  RendezvousOptions options_;
  std::string where_;
  asio::io_context io_{1};
  std::vector<asio::ip::tcp::acceptor> listeners_;  // this rank's, released into the config
  std::vector<Endpoint> own_;                       // their published addresses
  // Rank 0 only.
  asio::ip::tcp::acceptor acceptor_{io_};
  std::vector<std::unique_ptr<Peer>> peers_;
  std::vector<Peer*> by_rank_;
  int joined_ = 0;
  int writes_pending_ = 0;
  Phase phase_ = Phase::collecting;
  std::optional<errc> fatal_code_;
  std::string fatal_message_;
  std::vector<std::string> notes_;
};

}  // namespace detail

/// Builds the ring's `TcpConfig` by meeting at a coordinator instead of reading a hostfile.
/// Every rank of the job calls it with the same `coordinator` (rank 0's "ip:port"), its own
/// `rank` and the same `size`:
///
/// 1. each rank binds `options.connections` listening sockets on port 0 (see
///    `RendezvousOptions::listen_host` for the address) and keeps them open, so a published port
///    can never be taken by another process;
/// 2. rank 0 listens on `coordinator`; every other rank connects to it (retrying with backoff,
///    50 ms doubling to 1 s, until `connect_timeout`) and sends a hello: magic, protocol version,
///    job token, world size, rank and its listening addresses;
/// 3. rank 0 checks every hello, waits until all `size - 1` other ranks have said hello (up to
///    `connect_timeout`), then sends everyone the whole table.
///
/// Cost: one TCP connection per rank to rank 0, one hello out and one reply of
/// O(size × connections) addresses back; rank 0 handles all hellos concurrently.
///
/// The result has `rank`, `hosts` (the table, identical on every rank), `job_token`, both
/// timeouts, `verbose`, and `listening_sockets`: this rank's bound and listening descriptors
/// (blocking, close-on-exec), one per `hosts[rank]` entry, which the TCP transport takes over.
///
/// A hello carrying another job token is refused (that process gets `errc::bad_configuration`)
/// and rank 0 keeps waiting: a stray process cannot break a job. A hello with the right token
/// but a different world size, protocol version, connection count, or a rank already taken is
/// this job's misconfiguration: every rank fails at once with rank 0's explanation.
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
  auto config = rendezvous(coordinator, rank, size, options, ec);
  if (!config) throw Error(ec, detail::last_error_message);
  return std::move(*config);
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
  auto config = rendezvous_from_environment(ec);
  if (!config) throw Error(ec, detail::last_error_message);
  return std::move(*config);
}

}  // namespace collie
