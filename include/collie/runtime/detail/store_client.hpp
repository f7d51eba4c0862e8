// The joining side of collie::Store (runtime/store.hpp), which every rank runs: it reaches the
// coordinator (rank 0 starts it first, on a Server of store_server.hpp), says collie's hello, and
// sends and receives the store's frames, each within a deadline.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <asio/ip/address.hpp>
#include <asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "collie/core/deadline.hpp"
#include "collie/core/error.hpp"
#include "collie/runtime/detail/store_server.hpp"
#include "collie/runtime/hostfile.hpp"
#include "collie/runtime/store_options.hpp"
#include "collie/transport/detail/tcp/wire.hpp"
#include "collie/transport/tcp_config.hpp"

namespace collie::detail::store {

// One rank's connection to the store; rank 0's also owns the coordinator.
class Client {
 public:
  Client() = default;
  Client(Client&& other) noexcept
      : fd_(std::exchange(other.fd_, -1)), server_(std::move(other.server_)),
        options_(std::move(other.options_)), where_(std::move(other.where_)),
        local_address_(std::move(other.local_address_)) {}
  Client& operator=(Client&&) = delete;
  ~Client() {
    if (fd_ >= 0) ::close(fd_);  // first: the coordinator waits for every client to close
    server_.reset();
  }


  std::nullopt_t failure(std::error_code& ec, errc code, const std::string& message) const {
    report_config_error(ec, code, where_ + message);
    log("failed: " + message);
    return std::nullopt;
  }

  void log(const std::string& line) const {
    if (options_.verbose) std::fprintf(stderr, "[collie %s] %s\n", options_.label.c_str(), line.c_str());
  }

  // The coordinator's addresses: numeric ones never touch the resolver; a host name goes
  // through getaddrinfo, which has no deadline of its own.
  std::optional<std::vector<asio::ip::tcp::endpoint>> resolve(const Endpoint& coordinator,
                                                              std::error_code& ec) const {
    std::error_code parse_ec;
    const auto address = asio::ip::make_address(coordinator.host, parse_ec);
    if (!parse_ec) return std::vector{asio::ip::tcp::endpoint(address, coordinator.port)};
    asio::io_context io;
    asio::ip::tcp::resolver resolver(io);
    std::error_code resolve_ec;
    const auto results = resolver.resolve(coordinator.host, std::to_string(coordinator.port),
                                          asio::ip::tcp::resolver::numeric_service, resolve_ec);
    if (resolve_ec || results.empty()) {
      failure(ec, errc::bad_configuration,
              "cannot resolve the coordinator's host \"" + coordinator.host + "\": " +
                  (resolve_ec ? resolve_ec.message() : "no addresses") +
                  "; set the coordinator (COLLIE_COORDINATOR or MASTER_ADDR) to rank 0's IP address");
      return std::nullopt;
    }
    std::vector<asio::ip::tcp::endpoint> endpoints;
    for (const auto& entry : results) endpoints.push_back(entry.endpoint());
    return endpoints;
  }

  bool open(const Endpoint& coordinator, int rank, int size, std::error_code& ec) {
    const auto targets = resolve(coordinator, ec);
    if (!targets) return false;
    if (rank == 0 && !serve(*targets, size, ec)) return false;
    if (!reach(*targets, ec)) return false;
    return handshake(rank, size, ec);
  }

  // Rank 0: listens on the coordinator address and starts the coordinator.
  bool serve(const std::vector<asio::ip::tcp::endpoint>& targets, int size, std::error_code& ec) {
    if (targets.front().address().is_unspecified()) {
      failure(ec, errc::bad_configuration,
              "the coordinator address is a wildcard, which other ranks cannot reach; set it to an "
              "IP address of rank 0's host that every rank can reach");
      return false;
    }
    asio::io_context io;
    asio::ip::tcp::acceptor acceptor(io);
    std::error_code step;
    for (const auto& target : targets) {
      acceptor.close(step);
      acceptor.open(target.protocol(), step);
      // SO_REUSEADDR: a coordinator restarted right after a failed job finds its port in
      // TIME_WAIT and must still be able to bind it.
      if (!step) acceptor.set_option(asio::socket_base::reuse_address(true), step);
      if (!step) acceptor.bind(target, step);
      if (!step) acceptor.listen(std::max(64, static_cast<int>(asio::socket_base::max_listen_connections)), step);
      if (!step) break;
    }
    if (step) {
      std::string advice = "check the coordinator address";
      if (step == asio::error::address_in_use) {
        advice = "another process holds that port; stop it or pick another port for the "
                 "coordinator (COLLIE_COORDINATOR or MASTER_PORT) on every rank";
      } else if (step == std::error_code(EADDRNOTAVAIL, asio::error::get_system_category())) {
        advice = "this host does not own that address; rank 0 must run on the coordinator's "
                 "host, or COLLIE_COORDINATOR/MASTER_ADDR must name this host";
      }
      failure(ec, errc::bad_configuration,
              "rank 0 cannot listen on the coordinator address: " + step.message() + "; " + advice);
      return false;
    }
    const int fd = acceptor.release(step);
    set_nonblocking(fd);
    server_ = std::make_unique<Server>(fd, size, options_, where_);
    log("coordinator listening");
    return true;
  }

  // Connects to any of the coordinator's addresses, retrying with backoff until the connect
  // timeout: ranks start in any order, so rank 0 may not be listening yet.
  bool reach(const std::vector<asio::ip::tcp::endpoint>& targets, std::error_code& ec) {
    const auto deadline = Deadline::after(options_.connect_timeout);
    auto backoff = std::chrono::milliseconds(50);
    std::string last_error;
    int attempts = 0;
    for (;;) {
      for (const auto& target : targets) {
        ++attempts;
        const int fd = ::socket(target.protocol().family(), SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
          last_error = std::strerror(errno);
          continue;
        }
        int result = ::connect(fd, target.data(), static_cast<socklen_t>(target.size()));
        if (result != 0 && errno == EINPROGRESS) {
          // One attempt may not eat the whole budget when the host drops SYNs: the next
          // address, or a later retry, may answer.
          const auto attempt = earliest(deadline, Deadline::after(std::chrono::seconds(5)));
          if (wait_ready(fd, POLLOUT, attempt)) {
            socklen_t length = sizeof result;
            ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &result, &length);
            errno = result;
          } else {
            result = -1;
            errno = ETIMEDOUT;
          }
        }
        if (result == 0) {
          fd_ = fd;
          sockaddr_storage local{};
          socklen_t length = sizeof local;
          ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length);
          const std::string text = address_text(local);
          local_address_ = text.front() == '[' ? text.substr(1, text.rfind(']') - 1) : text.substr(0, text.rfind(':'));
          log("connected to the coordinator from " + local_address_);
          return true;
        }
        // An attempt cut short by the overall deadline says nothing about the coordinator;
        // keep the last real answer (typically "Connection refused") for the message.
        if (errno != ETIMEDOUT || !deadline.expired() || last_error.empty()) last_error = std::strerror(errno);
        ::close(fd);
        if (deadline.expired()) break;
      }
      if (deadline.expired()) break;
      std::this_thread::sleep_for(std::min<std::chrono::nanoseconds>(backoff, deadline.remaining()));
      backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
    }
    failure(ec, errc::timed_out,
            "could not connect to the coordinator within " +
                milliseconds_text(options_.connect_timeout) + " (" +
                std::to_string(attempts) + " attempts, last: " + last_error +
                "); check that rank 0 is running on that host and that COLLIE_COORDINATOR (or "
                "MASTER_ADDR and MASTER_PORT) is the same on every rank, or raise "
                "COLLIE_CONNECT_TIMEOUT_MS");
    return false;
  }

  bool handshake(int rank, int size, std::error_code& ec) {
    detail::tcp::Hello hello;
    hello.connection = store_connection;
    hello.world_size = static_cast<std::uint32_t>(size);
    hello.sender = static_cast<std::uint32_t>(rank);
    hello.job_token = options_.job_token;
    if ((ec = send(hello.encode(), "saying hello"))) return false;
    detail::tcp::Bytes<detail::tcp::Ack::size> raw{};
    const int error = read_exact(fd_, raw, Deadline::after(options_.timeout));
    if (error != 0) {
      failure(ec, error == ETIMEDOUT ? errc::timed_out : errc::connection_lost,
              error == ETIMEDOUT ? "the coordinator accepted the connection but never answered the hello; check "
                                   "that the address is rank 0 of this job"
                                 : "the coordinator closed the connection during the hello; rank 0 has "
                                   "probably failed, see its error");
      return false;
    }
    const auto ack = detail::tcp::Ack::decode(raw);
    if (ack.magic != detail::tcp::hello_magic) {
      failure(ec, errc::protocol_error,
              "the coordinator's answer is not collie's; check that the coordinator address points "
              "at rank 0 of this job and not at another service");
      return false;
    }
    if (ack.status != detail::tcp::Ack::accepted) {
      wire_bytes reason;
      std::uint64_t kind = 0;
      std::string text = detail::tcp::Ack::reason(ack.status);
      errc code = errc::bad_configuration;
      if (!receive(options_.timeout, kind, reason) && kind == error_reply) {
        Reader reader{reason};
        code = static_cast<errc>(reader.number(4));
        text = reader.text();
      }
      const bool own_verdict = server_ != nullptr || ack.status == detail::tcp::Ack::wrong_job;
      failure(ec, code, own_verdict ? text : "the coordinator answered: " + text);
      return false;
    }
    return true;
  }

  std::error_code send(std::span<const std::byte> bytes, std::string_view doing) const {
    const int error = write_all(fd_, bytes, Deadline::after(options_.timeout));
    if (error == 0) return {};
    std::error_code ec;
    failure(ec, error == ETIMEDOUT ? errc::timed_out : errc::connection_lost,
            detail::concat({doing, error == ETIMEDOUT ? " took longer than the timeout" : " failed: ",
                    error == ETIMEDOUT ? std::string_view() : std::string_view(std::strerror(error)),
                    "; rank 0 has probably failed, see its error"}));
    return ec;
  }
  template <std::size_t N>
  std::error_code send(const std::array<std::byte, N>& bytes, std::string_view doing) const {
    return send(std::span<const std::byte>(bytes), doing);
  }
  std::error_code send(const wire_bytes& bytes, std::string_view doing) const {
    return send(std::span<const std::byte>(bytes), doing);
  }

  // Reads one frame within `wait`.
  std::error_code receive(std::chrono::milliseconds wait, std::uint64_t& kind,
                          wire_bytes& payload) const {
    const Deadline deadline = Deadline::after(wait);
    detail::tcp::Bytes<detail::tcp::Header::size> raw{};
    int error = read_exact(fd_, raw, deadline);
    const auto h = detail::tcp::Header::decode(raw);
    if (error == 0 && (h.magic != detail::tcp::message_magic || h.bytes > max_frame)) {
      std::error_code ec;
      failure(ec, errc::protocol_error, "the coordinator sent something that is not a store reply");
      return ec;
    }
    if (error == 0) {
      payload.resize(static_cast<std::size_t>(h.bytes));
      error = read_exact(fd_, payload, deadline);
    }
    if (error == 0) {
      kind = h.tag;
      return {};
    }
    std::error_code ec;
    if (error == ETIMEDOUT) {
      failure(ec, errc::timed_out,
              "no answer from the coordinator within " + milliseconds_text(wait) +
                  "; rank 0 accepted the connection but never answered — check its output, and "
                  "that the address is rank 0 of this job");
    } else {
      failure(ec, errc::connection_lost,
              std::string(error == ECONNRESET ? "the coordinator closed the connection"
                                              : "reading the coordinator's answer failed: " +
                                                    std::string(std::strerror(error))) +
                  "; rank 0 has probably failed or refused this process, see its error");
    }
    return ec;
  }

  int fd_ = -1;
  std::unique_ptr<Server> server_;
  StoreOptions options_;
  std::string where_;
  std::string local_address_;
};

}  // namespace collie::detail::store
