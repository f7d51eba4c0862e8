// Connection set-up of the TCP engine: the listening sockets, connecting with backoff, and the
// handshake every connection starts with (the connecting side says hello — magic, version, world
// size, both ranks, connection index, job token — and the accepting side acks or refuses, so that
// a stray or mis-wired connection is never taken for a peer). Handshakes are small state
// machines on non-blocking sockets, woken by the event loop's readiness waits.
#pragma once

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <asio/io_context.hpp>
#include <asio/ip/address.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/steady_timer.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "collie/core/deadline.hpp"
#include "collie/core/detail/text.hpp"
#include "collie/core/error.hpp"
#include "collie/transport/detail/tcp/wire.hpp"
#include "collie/transport/tcp_config.hpp"

namespace collie::detail::tcp {

using asio::ip::tcp;

// The congestion control of a socket (TCP_CONGESTION).
inline int set_congestion(int fd, const std::string& name) noexcept {
  return ::setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name.data(), static_cast<socklen_t>(name.size()));
}

inline std::string allowed_congestion() {
  std::string line;
  if (std::FILE* file = std::fopen("/proc/sys/net/ipv4/tcp_allowed_congestion_control", "r")) {
    char buffer[256];
    if (std::fgets(buffer, sizeof buffer, file) != nullptr) line = buffer;
    std::fclose(file);
  }
  while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
  return line.empty() ? "unknown" : line;
}

// Moves bytes of a handshake message on a non-blocking socket: 1 when all of `done..size` went,
// 0 when the socket would block, -1 on failure or end of stream.
inline int transfer_some(int fd, std::byte* data, std::size_t size, std::size_t& done, bool sending) {
  while (done < size) {
    const ssize_t n = sending ? ::send(fd, data + done, size - done, MSG_NOSIGNAL | MSG_DONTWAIT)
                              : ::recv(fd, data + done, size - done, MSG_DONTWAIT);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return 0;
    if (n == 0) errno = ECONNRESET;  // the end of the stream
    return -1;
  }
  return 1;
}

// The set-up of one engine. `Connection` is constructible from the io_context and has `socket`,
// `peer`, `index` and `address`; `Engine` provides
//   void connected(std::unique_ptr<Connection>, bool initiated)   a handshaken connection
//   void setup_failed(int peer, errc, const std::string&)         a failure to report
//   bool stopping() const                                          the engine is going
template <class Engine, class Connection>
class Setup {
 public:
  Setup(Engine& engine, asio::io_context& io, TcpConfig& config)
      : engine_(engine), io_(io), config_(config) {}

  // Checks the configuration; throws collie::Error naming what is wrong.
  void validate() const {
    const int size = config_.size();
    if (size < 1) fail(errc::bad_configuration, "the host list is empty");
    if (config_.rank < 0 || config_.rank >= size) {
      fail(errc::bad_configuration, concat({"rank ", number(config_.rank), " is outside [0, ",
                                            number(size), ") of the host list"}));
    }
    const std::size_t per_rank = config_.hosts.front().size();
    for (int r = 0; r < size; ++r) {
      const auto& list = config_.hosts[static_cast<std::size_t>(r)];
      if (size > 1 && list.empty()) fail(errc::bad_configuration, concat({"rank ", number(r), " lists no address"}));
      if (list.size() != per_rank) {
        fail(errc::bad_configuration,
             concat({"rank ", number(r), " lists ", number(list.size()), " addresses but rank 0 lists ",
                     number(per_rank), "; every rank needs one per connection"}));
      }
    }
    if (!config_.listening_sockets.empty() &&
        config_.listening_sockets.size() != config_.hosts[static_cast<std::size_t>(config_.rank)].size()) {
      fail(errc::bad_configuration, "listening_sockets must have one socket per address");
    }
    if (config_.congestion && !config_.congestion->empty()) {
      // Tried on a spare socket, so that a name the system refuses stops the set-up before any
      // connection, rather than leaving some connections with it and some without.
      const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      if (fd >= 0) {
        const int failed = set_congestion(fd, *config_.congestion);
        const int error = errno;
        ::close(fd);
        if (failed != 0) {
          fail(errc::bad_configuration,
               concat({"TCP congestion control \"", *config_.congestion,
                       "\" (COLLIE_TCP_CONGESTION or TcpConfig::congestion): ", std::strerror(error),
                       "; this process may use: ", allowed_congestion(),
                       " (net.ipv4.tcp_allowed_congestion_control). Name one of those, or leave "
                       "the variable unset"}));
        }
      }
    }
  }

  // Listens on this rank's addresses (or takes over the sockets handed over); throws
  // collie::Error naming the hostfile entry. Accepting starts at once.
  void listen() {
    const int rank = config_.rank;
    if (config_.size() == 1) return;
    const auto& mine = config_.hosts[static_cast<std::size_t>(rank)];
    for (std::size_t i = 0; i < mine.size(); ++i) {
      auto acceptor = std::make_unique<tcp::acceptor>(io_);
      std::error_code ec;
      const tcp::endpoint endpoint = resolve(mine[i]);
      if (!config_.listening_sockets.empty()) {
        acceptor->assign(endpoint.protocol(), config_.listening_sockets[i], ec);
        if (!ec) config_.listening_sockets[i] = -1;  // the acceptor's now
      } else {
        acceptor->open(endpoint.protocol(), ec);
        if (!ec) acceptor->set_option(tcp::acceptor::reuse_address(true), ec);
        if (!ec) acceptor->bind(endpoint, ec);
        if (!ec) acceptor->listen(asio::socket_base::max_listen_connections, ec);
      }
      if (!ec) acceptor->non_blocking(true, ec);
      if (ec) {
        fail(errc::bad_configuration,
             concat({"cannot listen on ", mine[i].to_string(), " (hostfile entry ", number(i),
                     " of rank ", number(rank), "): ", ec.message(),
                     ". Is that address on this host, and the port free?"}));
      }
      log(concat({"listening on ", mine[i].to_string()}));
      acceptors_.push_back(std::move(acceptor));
    }
    config_.listening_sockets.clear();  // all owned by the acceptors now
    for (std::size_t i = 0; i < acceptors_.size(); ++i) accept_next(i);
  }

  // Event loop: opens connection `index` to `peer` (on_demand_index: to its first address),
  // retrying with backoff (20 ms doubling to 1 s) until the connect timeout.
  void connect(int peer, std::uint16_t index) {
    auto h = std::make_shared<Handshake>(io_);
    h->peer = peer;
    h->index = index;
    h->initiated = true;
    h->deadline = Deadline::after(config_.connect_timeout);
    try_connect(h);
  }

  void close() noexcept {
    std::error_code ignored;
    for (auto& a : acceptors_) a->close(ignored);
  }

  // The remote address of a connection, "ip:port".
  static std::string remote_of(tcp::socket& socket) {
    std::error_code ignored;
    const auto remote = socket.remote_endpoint(ignored);
    return Endpoint{remote.address().to_string(), remote.port()}.to_string();
  }

 private:
  // One connection being set up, either way.
  struct Handshake {
    explicit Handshake(asio::io_context& io) : connection(std::make_unique<Connection>(io)), timer(io) {}
    std::unique_ptr<Connection> connection;
    asio::steady_timer timer;
    int peer = -1;                // who it is (connecting: known; accepting: once it says hello)
    std::uint16_t index = 0;      // connection index (or on_demand_index)
    std::size_t acceptor = 0;     // accepting: which of this rank's addresses
    bool initiated = false;
    enum class Phase : std::uint8_t { connecting, hello, ack } phase = Phase::connecting;
    std::chrono::milliseconds backoff{20};
    Deadline deadline = Deadline::never();
    Bytes<Hello::size> hello{};
    Bytes<Ack::size> ack{};
    std::size_t done = 0;  // bytes of the current message moved
    std::string from;      // accepting: the remote address
  };

  // The completion handlers: readiness of a handshake's socket, and its timer (backoff or the
  // hello deadline). Few handler types keep the event loop's code small.
  struct Ready {
    Setup* setup;
    std::shared_ptr<Handshake> h;
    void operator()(const std::error_code& ec) const { setup->step(h, ec); }
  };
  struct Timer {
    Setup* setup;
    std::shared_ptr<Handshake> h;
    void operator()(const std::error_code& ec) const { setup->timer_fired(h, ec); }
  };
  struct Acceptable {
    Setup* setup;
    std::size_t index;
    void operator()(const std::error_code& ec) const { setup->accept_ready(index, ec); }
  };

  [[noreturn]] void fail(errc code, const std::string& what) const {
    throw Error(code, concat({"collie[tcp] rank ", number(config_.rank), ": ", what}));
  }

  void log(const std::string& line) const {
    if (config_.verbose) std::fprintf(stderr, "[collie ring] rank %d: %s\n", config_.rank, line.c_str());
  }

  tcp::endpoint resolve(const Endpoint& e) const {
    std::error_code ec;
    const auto address = asio::ip::make_address(e.host, ec);
    if (!ec) return {address, e.port};
    tcp::resolver resolver(io_);
    auto results = resolver.resolve(e.host, std::to_string(e.port), ec);
    if (ec || results.empty()) {
      fail(errc::bad_configuration,
           concat({"cannot resolve \"", e.host, "\": ", ec ? ec.message() : std::string("no address")}));
    }
    return results.begin()->endpoint();
  }

  const Endpoint& target_of(const Handshake& h) const {
    const auto& list = config_.hosts[static_cast<std::size_t>(h.peer)];
    return list[h.index == on_demand_index ? 0 : h.index];
  }

  // A new data connection's options: no Nagle, and its congestion control (TcpConfig::congestion):
  // by default reno when both ends are on this host, where a pacing algorithm only reorders the
  // stream.
  void configure(tcp::socket& socket) const {
    std::error_code ec;
    socket.set_option(tcp::no_delay(true), ec);
    std::string name;
    if (config_.congestion) {
      name = *config_.congestion;
    } else {
      std::error_code local_error;
      std::error_code remote_error;
      const auto local = socket.local_endpoint(local_error).address();
      const auto remote = socket.remote_endpoint(remote_error).address();
      if (local_error || remote_error) return;  // the connection is already gone
      if (remote.is_loopback() || remote == local) name = "reno";
    }
    if (name.empty()) return;
    if (set_congestion(socket.native_handle(), name) != 0) {
      log(concat({"could not set TCP congestion control ", name, ": ", std::strerror(errno)}));
    }
  }

  // ----- connecting --------------------------------------------------------------------------

  void try_connect(const std::shared_ptr<Handshake>& h) {
    if (engine_.stopping()) return;
    tcp::endpoint endpoint;
    try {
      endpoint = resolve(target_of(*h));
    } catch (const Error& e) {
      engine_.setup_failed(h->peer, errc::bad_configuration, e.what());
      return;
    }
    tcp::socket& socket = h->connection->socket;
    std::error_code ec;
    socket.close(ec);
    socket.open(endpoint.protocol(), ec);
    if (!ec) socket.non_blocking(true, ec);
    h->phase = Handshake::Phase::connecting;
    h->done = 0;
    if (!ec && ::connect(socket.native_handle(), endpoint.data(), static_cast<socklen_t>(endpoint.size())) != 0 &&
        errno != EINPROGRESS) {
      ec = std::error_code(errno, std::system_category());
    }
    if (ec) return retry(h, ec);
    socket.async_wait(tcp::socket::wait_write, Ready{this, h});
  }

  // The peer may not be listening yet: retry with backoff until the connect deadline.
  void retry(const std::shared_ptr<Handshake>& h, const std::error_code& ec) {
    if (h->deadline.expired()) {
      engine_.setup_failed(h->peer, errc::timed_out,
                           concat({"connect to rank ", number(h->peer), " at ", target_of(*h).to_string(),
                                   ": ", ec.message(), " (gave up after ",
                                   number(static_cast<std::int64_t>(config_.connect_timeout.count())),
                                   " ms). Is rank ", number(h->peer), " running?"}));
      return;
    }
    std::error_code ignored;
    h->connection->socket.close(ignored);
    h->timer.expires_after(h->backoff);
    h->backoff = std::min(h->backoff * 2, std::chrono::milliseconds(1000));
    h->timer.async_wait(Timer{this, h});
  }

  void timer_fired(const std::shared_ptr<Handshake>& h, const std::error_code& ec) {
    if (engine_.stopping()) return;
    if (h->initiated) {
      if (!ec) try_connect(h);  // a backoff ended
      return;
    }
    // A connection that never says hello is dropped after the connect timeout.
    if (!ec && h->phase == Handshake::Phase::hello) {
      std::error_code ignored;
      h->connection->socket.close(ignored);
    }
  }

  // The socket of a handshake is ready: moves it along.
  void step(const std::shared_ptr<Handshake>& h, const std::error_code& ec) {
    if (engine_.stopping()) return;
    int fd = h->connection->socket.native_handle();
    if (h->initiated) {
      if (h->phase == Handshake::Phase::connecting) {
        int error = ec ? ec.value() : 0;
        socklen_t length = sizeof error;
        if (!ec) ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
        if (error != 0) return retry(h, std::error_code(error, std::system_category()));
        configure(h->connection->socket);
        Hello hello;
        hello.connection = h->index;
        hello.world_size = static_cast<std::uint32_t>(config_.size());
        hello.sender = static_cast<std::uint32_t>(config_.rank);
        hello.receiver = static_cast<std::uint32_t>(h->peer);
        hello.job_token = config_.job_token;
        h->hello = hello.encode();
        h->phase = Handshake::Phase::hello;
        h->done = 0;
      }
      if (h->phase == Handshake::Phase::hello) {
        const int r = transfer_some(fd, h->hello.data(), h->hello.size(), h->done, true);
        if (r < 0) return handshake_lost(h, std::error_code(errno, std::system_category()));
        if (r == 0) return h->connection->socket.async_wait(tcp::socket::wait_write, Ready{this, h});
        h->phase = Handshake::Phase::ack;
        h->done = 0;
      }
      const int r = transfer_some(fd, h->ack.data(), h->ack.size(), h->done, false);
      if (r < 0) return handshake_lost(h, std::error_code(errno, std::system_category()));
      if (r == 0) return h->connection->socket.async_wait(tcp::socket::wait_read, Ready{this, h});
      return on_ack(h);
    }
    // Accepting: read the hello, then answer it.
    if (ec) return;
    if (h->phase == Handshake::Phase::hello) {
      const int r = transfer_some(fd, h->hello.data(), h->hello.size(), h->done, false);
      if (r < 0) return;  // closed before its hello, or by the hello timer
      if (r == 0) return h->connection->socket.async_wait(tcp::socket::wait_read, Ready{this, h});
      h->timer.cancel();
      on_hello(h);
      if (h->phase != Handshake::Phase::ack) return;
      fd = h->connection->socket.native_handle();
    }
    const int r = transfer_some(fd, h->ack.data(), h->ack.size(), h->done, true);
    if (r == 0) return h->connection->socket.async_wait(tcp::socket::wait_write, Ready{this, h});
    answered(h, r > 0);
  }

  void handshake_lost(const std::shared_ptr<Handshake>& h, const std::error_code& ec) {
    if (!h->deadline.expired()) {  // e.g. the peer restarted its listener: try again
      std::error_code ignored;
      h->connection->socket.close(ignored);
      h->timer.expires_after(h->backoff);
      h->timer.async_wait(Timer{this, h});
      return;
    }
    engine_.setup_failed(h->peer, errc::connection_lost,
                         concat({"handshake with rank ", number(h->peer), " at ",
                                 target_of(*h).to_string(), ": ", ec.message()}));
  }

  void on_ack(const std::shared_ptr<Handshake>& h) {
    const Ack ack = Ack::decode(h->ack);
    const std::string where = concat({"rank ", number(h->peer), " at ", target_of(*h).to_string()});
    if (ack.magic != hello_magic) {
      engine_.setup_failed(h->peer, errc::protocol_error,
                           concat({"handshake: ", where, " answered with something that is not collie"}));
      return;
    }
    if (ack.status != Ack::accepted) {
      engine_.setup_failed(h->peer, errc::protocol_error,
                           concat({"handshake: ", where, " (connection ", number(h->index),
                                   ") refused this rank: ", Ack::reason(ack.status)}));
      return;
    }
    Connection& c = *h->connection;
    c.peer = h->peer;
    c.index = h->index;
    c.address = target_of(*h).to_string();
    log(concat({"connected to ", where, " (connection ", number(h->index), ")"}));
    engine_.connected(std::move(h->connection), /*initiated=*/true);
  }

  // ----- accepting ---------------------------------------------------------------------------

  void accept_next(std::size_t index) {
    acceptors_[index]->async_wait(tcp::acceptor::wait_read, Acceptable{this, index});
  }

  void accept_ready(std::size_t index, const std::error_code& ec) {
    if (engine_.stopping() || ec == asio::error::operation_aborted) return;
    tcp::acceptor& acceptor = *acceptors_[index];
    for (;;) {
      const int fd = ::accept4(acceptor.native_handle(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        break;  // drained (or out of descriptors: the next readiness tries again)
      }
      auto h = std::make_shared<Handshake>(io_);
      std::error_code assign_ec;
      const auto protocol = acceptor.local_endpoint(assign_ec).protocol();
      if (!assign_ec) h->connection->socket.assign(protocol, fd, assign_ec);
      if (assign_ec) {
        ::close(fd);
        continue;
      }
      h->acceptor = index;
      h->phase = Handshake::Phase::hello;
      h->from = remote_of(h->connection->socket);
      configure(h->connection->socket);
      h->timer.expires_after(config_.connect_timeout);
      h->timer.async_wait(Timer{this, h});
      step(h, {});
    }
    accept_next(index);
  }

  void on_hello(const std::shared_ptr<Handshake>& h) {
    const Hello hello = Hello::decode(h->hello);
    const int rank = config_.rank;
    const int size = config_.size();
    const int left = (rank - 1 + size) % size;
    Ack ack;
    if (hello.magic != hello_magic) {
      ack.status = Ack::bad_magic;
    } else if (hello.version != protocol_version) {
      ack.status = Ack::bad_version;
    } else if (hello.world_size != static_cast<std::uint32_t>(size)) {
      ack.status = Ack::wrong_world_size;
    } else if (hello.receiver != static_cast<std::uint32_t>(rank)) {
      ack.status = Ack::wrong_receiver;
    } else if (hello.job_token != config_.job_token) {
      ack.status = Ack::wrong_job;
    } else if (hello.sender >= static_cast<std::uint32_t>(size) ||
               (hello.connection != on_demand_index &&
                (static_cast<int>(hello.sender) != left ||
                 hello.connection != static_cast<std::uint16_t>(h->acceptor))) ||
               (hello.connection == on_demand_index && static_cast<int>(hello.sender) >= rank)) {
      ack.status = Ack::unexpected_sender;
    }
    h->ack = ack.encode();
    h->peer = static_cast<int>(hello.sender);
    h->index = hello.connection;
    h->phase = Handshake::Phase::ack;
    h->done = 0;
    if (ack.status != Ack::accepted) {
      // Refused: the set-up fails here too, naming both ends.
      const auto& mine = config_.hosts[static_cast<std::size_t>(rank)];
      const std::string text = concat({"handshake: refused a connection on ", mine[h->acceptor].to_string(),
                                       " from ", h->from, " (claims rank ", number(hello.sender),
                                       "): ", Ack::reason(ack.status)});
      log(text);
      if (hello.magic == hello_magic) engine_.setup_failed(-1, errc::protocol_error, text);
    }
  }

  // The ack went out (`sent`), or could not.
  void answered(const std::shared_ptr<Handshake>& h, bool sent) {
    const Ack ack = Ack::decode(h->ack);
    if (ack.status != Ack::accepted || !sent) {
      std::error_code ignored;
      h->connection->socket.close(ignored);
      return;
    }
    Connection& c = *h->connection;
    c.peer = h->peer;
    c.index = h->index;
    c.address = h->from;
    log(concat({"accepted rank ", number(h->peer), " from ", h->from, " on ",
                config_.hosts[static_cast<std::size_t>(config_.rank)][h->acceptor].to_string()}));
    engine_.connected(std::move(h->connection), /*initiated=*/false);
  }

  Engine& engine_;
  asio::io_context& io_;
  TcpConfig& config_;
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors_;
};

}  // namespace collie::detail::tcp
