// The wire probe: moves exactly the bytes a bandwidth-optimal ring all-reduce moves per rank, over
// raw TCP sockets between ring neighbours, with no reduction, framing or copy but the kernel's. Its
// busbw is the ceiling any TCP all_sum can reach on these hosts, printed row by row like one.
//
//   scripts/run_local.sh 4 bazel-bin/bench/wire_probe -b 64K -e 256M -f 4 [--connections 2]
//   scripts/run_local.sh 4 --connections 2 bazel-bin/bench/wire_probe ...  (2 addresses per rank)
//
// Per size S, each rank sends 2(n-1)/n·S bytes and receives as many: half to and from its right
// neighbour, half to and from its left, each half split over the K connections to that neighbour,
// every direction of every connection streaming at once. The `iters` timed iterations run back to
// back as one continuous stream per direction (no step of a real ring all-reduce can start that
// early), so what is left in the time is the kernel's cost of moving the bytes. busbw =
// 2(n-1)/n·S / (slowest rank's time per iteration), the same figure as an all_sum row of size S.
//
// I/O: by default one thread per rank multiplexes every socket with poll(), as collie's single
// I/O thread does; --io threads gives each direction of each connection its own thread. Socket
// buffers are left to the kernel's autotuning: forcing SO_SNDBUF/SO_RCVBUF (--socket-buffer)
// caps them at net.core.[rw]mem_max (4 MiB here) and measured slower at every size tried. The
// congestion control follows collie's rule (TcpConfig::congestion, COLLIE_TCP_CONGESTION): reno
// between two ends on one host unless told otherwise, so that the probe and the transport it
// bounds run on the same kind of stream.
//
// Environment and connections as in collie's ring backend (ring_config_from_environment):
// MLX_RANK, MLX_HOSTFILE (per rank, K "ip:port" addresses), COLLIE_JOB_TOKEN,
// COLLIE_CONNECT_TIMEOUT_MS and COLLIE_TIMEOUT_MS (default 60 s each). Rank r listens on its
// addresses, connects K times to rank r+1 (connection k to address k mod A) and accepts K
// connections from rank r-1; each connection opens with a 32-byte hello (magic, job token, ranks,
// sender, connection index) so a mis-wired or foreign connection is refused, not measured.
//
// Exit status: 0 done, 1 bytes arrived wrong (-c 1), 2 bad command line or environment,
// 3 a socket error or timeout (the line names the peer rank and the address).
#include "report.hpp"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "collie/runtime/environment.hpp"

namespace {

namespace bench = collie::bench;
using Clock = std::chrono::steady_clock;

constexpr int exit_wrong = 1;
constexpr int exit_usage = 2;
constexpr int exit_socket = 3;

// This process's rank once known, for the one-line error message (-1 before).
int this_rank = -1;

// Ends the run with `exit_code` and a one-line message.
class ProbeError : public std::runtime_error {
 public:
  ProbeError(int exit_code, const std::string& message)
      : std::runtime_error(message), exit_code_(exit_code) {}
  int exit_code() const noexcept { return exit_code_; }

 private:
  int exit_code_;
};

[[noreturn]] void fail_socket(const std::string& what, int error) {
  throw ProbeError(exit_socket, what + ": " + std::strerror(error));
}

// ---------------------------------------------------------------------------------------------
// Sockets and connections

class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) noexcept : fd_(fd) {}
  Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Socket& operator=(Socket&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  ~Socket() { reset(); }
  int fd() const noexcept { return fd_; }
  void reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// One TCP connection to a ring neighbour. Both directions carry data: on a connection to the
// right neighbour this rank sends right-bound bytes and receives the neighbour's left-bound ones,
// and the other way round on a connection accepted from the left.
struct Connection {
  Socket socket;
  int peer = -1;
  int index = 0;          // connection index among the K to that neighbour
  bool outgoing = false;  // connected to the right neighbour (else accepted from the left)
  std::string address;    // the listening address it was made to, for messages

  std::string describe() const {
    return std::string(outgoing ? "to" : "from") + " rank " + std::to_string(peer) + " at " +
           address + " (connection " + std::to_string(index) + ")";
  }
};

struct ProbeOptions {
  int connections = 0;           // per neighbour; 0 = one per hostfile address
  std::size_t socket_buffer = 0; // SO_SNDBUF/SO_RCVBUF; 0 = the kernel's autotuning
  bool threads = false;          // a thread per direction of every connection, else one poll loop
  bool huge_pages = true;
};

// Bytes of the 32-byte hello, as four native-order 64-bit words (the ring runs on one kind of
// host): magic, job token, ranks << 32 | sender, connections << 32 | index.
constexpr std::uint64_t hello_magic = 0x65726977'65696c6cULL;  // "lleiwire"

void set_int_option(int fd, int level, int name, int value, const char* what) {
  if (::setsockopt(fd, level, name, &value, sizeof(value)) != 0) {
    fail_socket(std::string("setsockopt ") + what, errno);
  }
}

// Socket options every data socket gets. SO_SNDBUF/SO_RCVBUF must be set before listen() or
// connect() to take part in the window-scale negotiation, and fixing them turns autotuning off,
// so they are only forced when asked for.
void prepare_socket(int fd, const ProbeOptions& options) {
  set_int_option(fd, IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
  if (options.socket_buffer != 0) {
    const int bytes = static_cast<int>(std::min<std::size_t>(options.socket_buffer, 1u << 30));
    set_int_option(fd, SOL_SOCKET, SO_SNDBUF, bytes, "SO_SNDBUF");
    set_int_option(fd, SOL_SOCKET, SO_RCVBUF, bytes, "SO_RCVBUF");
  }
}

// The congestion control of a connected data socket, by collie's rule (TcpConfig::congestion):
// the name asked for, else reno when both ends are on this host; "" keeps the system's.
void choose_congestion(int fd, const std::optional<std::string>& asked) {
  std::string name;
  if (asked) {
    name = *asked;
  } else {
    sockaddr_storage local{};
    sockaddr_storage remote{};
    socklen_t local_length = sizeof(local);
    socklen_t remote_length = sizeof(remote);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_length) != 0 ||
        ::getpeername(fd, reinterpret_cast<sockaddr*>(&remote), &remote_length) != 0) {
      return;
    }
    bool same_host = false;
    if (remote.ss_family == AF_INET && local.ss_family == AF_INET) {
      const auto l = reinterpret_cast<const sockaddr_in*>(&local)->sin_addr.s_addr;
      const auto r = reinterpret_cast<const sockaddr_in*>(&remote)->sin_addr.s_addr;
      same_host = l == r || (ntohl(r) >> 24) == 127;
    } else if (remote.ss_family == AF_INET6 && local.ss_family == AF_INET6) {
      const auto& l = reinterpret_cast<const sockaddr_in6*>(&local)->sin6_addr;
      const auto& r = reinterpret_cast<const sockaddr_in6*>(&remote)->sin6_addr;
      same_host = std::memcmp(&l, &r, sizeof(l)) == 0 || IN6_IS_ADDR_LOOPBACK(&r);
    }
    if (same_host) name = "reno";
  }
  if (name.empty()) return;
  if (::setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name.data(),
                   static_cast<socklen_t>(name.size())) != 0) {
    fail_socket("setsockopt TCP_CONGESTION " + name, errno);
  }
}

struct Resolved {
  sockaddr_storage address{};
  socklen_t length = 0;
  int family = AF_INET;
};

Resolved resolve(const collie::Endpoint& endpoint) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const std::string port = std::to_string(endpoint.port);
  const std::string host = endpoint.host;
  if (int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &found); rc != 0) {
    throw ProbeError(exit_socket,
                     "cannot resolve " + endpoint.to_string() + ": " + ::gai_strerror(rc));
  }
  Resolved out;
  std::memcpy(&out.address, found->ai_addr, found->ai_addrlen);
  out.length = static_cast<socklen_t>(found->ai_addrlen);
  out.family = found->ai_family;
  ::freeaddrinfo(found);
  return out;
}

// Waits for `events` on one socket; false when `deadline` passes first.
bool wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return false;
    pollfd entry{fd, events, 0};
    const int ready = ::poll(&entry, 1, static_cast<int>(std::min<long long>(left.count(), 1 << 30)));
    if (ready > 0) return true;  // errors and hang-ups surface in the send or recv that follows
    if (ready < 0 && errno != EINTR) fail_socket("poll", errno);
  }
}

// Sends or receives all of [data, data + bytes) on a non-blocking socket, waiting (never
// spinning) when the socket is full or empty; throws naming `connection` on error, on a peer
// that closed, or when `timeout` passes without progress.
void transfer_all(const Connection& connection, bool sending, std::byte* data, std::size_t bytes,
                  std::chrono::milliseconds timeout) {
  const int fd = connection.socket.fd();
  while (bytes > 0) {
    const ssize_t moved = sending ? ::send(fd, data, bytes, MSG_NOSIGNAL)
                                  : ::recv(fd, data, bytes, 0);
    if (moved > 0) {
      data += moved;
      bytes -= static_cast<std::size_t>(moved);
      continue;
    }
    if (moved == 0) {
      throw ProbeError(exit_socket, "connection " + connection.describe() + " closed by the peer");
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) {
      fail_socket(std::string(sending ? "sending " : "receiving ") + connection.describe(), errno);
    }
    if (!wait_for(fd, sending ? POLLOUT : POLLIN, Clock::now() + timeout)) {
      throw ProbeError(exit_socket, std::string(sending ? "sending " : "receiving ") +
                                        connection.describe() + ": no progress for " +
                                        std::to_string(timeout.count()) + " ms");
    }
  }
}

void set_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL, 0);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) fail_socket("fcntl", errno);
}

// The K connections to each ring neighbour, made and checked.
struct Ring {
  int rank = 0, size = 1;
  std::vector<Connection> right;  // to rank + 1, by connection index
  std::vector<Connection> left;   // from rank - 1, by connection index
  std::chrono::milliseconds timeout{60000};
};

Ring connect_ring(const collie::TcpConfig& config, const ProbeOptions& options) {
  Ring ring;
  ring.rank = config.rank;
  ring.size = config.size();
  ring.timeout = config.timeout;
  if (ring.size == 1) return ring;
  const int k = options.connections;
  const int right_rank = (ring.rank + 1) % ring.size;
  const int left_rank = (ring.rank - 1 + ring.size) % ring.size;
  const auto& own = config.hosts[static_cast<std::size_t>(ring.rank)];
  const auto& theirs = config.hosts[static_cast<std::size_t>(right_rank)];

  // Listen first on every address: a connect then completes through the backlog while the
  // neighbour is still connecting itself, so no ordering between ranks can deadlock.
  std::vector<Socket> listeners;
  for (const auto& endpoint : own) {
    const Resolved where = resolve(endpoint);
    Socket listener(::socket(where.family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (listener.fd() < 0) fail_socket("socket", errno);
    set_int_option(listener.fd(), SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR");
    prepare_socket(listener.fd(), options);
    if (::bind(listener.fd(), reinterpret_cast<const sockaddr*>(&where.address), where.length) != 0) {
      fail_socket("cannot listen on " + endpoint.to_string() + " (bind)", errno);
    }
    if (::listen(listener.fd(), std::max(16, k)) != 0) {
      fail_socket("listen on " + endpoint.to_string(), errno);
    }
    listeners.push_back(std::move(listener));
  }

  std::uint64_t hello[4] = {};
  const auto connect_deadline = Clock::now() + config.connect_timeout;
  for (int index = 0; index < k; ++index) {
    const auto& endpoint = theirs[static_cast<std::size_t>(index) % theirs.size()];
    const Resolved where = resolve(endpoint);
    Connection connection;
    connection.peer = right_rank;
    connection.index = index;
    connection.outgoing = true;
    connection.address = endpoint.to_string();
    // The neighbour may not be listening yet: retry refused connects with backoff.
    auto backoff = std::chrono::milliseconds(20);
    for (;;) {
      Socket socket(::socket(where.family, SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (socket.fd() < 0) fail_socket("socket", errno);
      prepare_socket(socket.fd(), options);
      if (::connect(socket.fd(), reinterpret_cast<const sockaddr*>(&where.address),
                    where.length) == 0) {
        choose_congestion(socket.fd(), config.congestion);
        connection.socket = std::move(socket);
        break;
      }
      const int error = errno;
      if (Clock::now() + backoff > connect_deadline) {
        fail_socket("connecting " + connection.describe() + " for " +
                        std::to_string(config.connect_timeout.count()) + " ms",
                    error);
      }
      std::this_thread::sleep_for(backoff);
      backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
    }
    hello[0] = hello_magic;
    hello[1] = config.job_token;
    hello[2] = (std::uint64_t(ring.size) << 32) | std::uint32_t(ring.rank);
    hello[3] = (std::uint64_t(k) << 32) | std::uint32_t(index);
    set_nonblocking(connection.socket.fd());
    transfer_all(connection, true, reinterpret_cast<std::byte*>(hello), sizeof(hello),
                 config.timeout);
    ring.right.push_back(std::move(connection));
  }

  ring.left.resize(static_cast<std::size_t>(k));
  std::vector<pollfd> waiting;
  for (const auto& listener : listeners) waiting.push_back({listener.fd(), POLLIN, 0});
  for (int accepted = 0; accepted < k;) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(connect_deadline - Clock::now());
    if (left.count() <= 0) {
      throw ProbeError(exit_socket, "rank " + std::to_string(left_rank) + " opened " +
                                        std::to_string(accepted) + " of " + std::to_string(k) +
                                        " connections to " + own.front().to_string() +
                                        " within " +
                                        std::to_string(config.connect_timeout.count()) + " ms");
    }
    const int ready = ::poll(waiting.data(), waiting.size(), static_cast<int>(left.count()));
    if (ready < 0 && errno != EINTR) fail_socket("poll", errno);
    for (std::size_t l = 0; ready > 0 && l < waiting.size(); ++l) {
      if ((waiting[l].revents & POLLIN) == 0) continue;
      Socket socket(::accept4(listeners[l].fd(), nullptr, nullptr, SOCK_CLOEXEC));
      if (socket.fd() < 0) {
        if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED) continue;
        fail_socket("accept on " + own[l].to_string(), errno);
      }
      set_int_option(socket.fd(), IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY");
      choose_congestion(socket.fd(), config.congestion);
      set_nonblocking(socket.fd());
      Connection connection;
      connection.socket = std::move(socket);
      connection.peer = left_rank;
      connection.address = own[l].to_string();
      transfer_all(connection, false, reinterpret_cast<std::byte*>(hello), sizeof(hello),
                   config.timeout);
      const auto sender = static_cast<std::uint32_t>(hello[2]);
      const auto index = static_cast<std::uint32_t>(hello[3]);
      std::string problem;
      if (hello[0] != hello_magic) {
        problem = "is not from a wire probe (bad magic)";
      } else if (hello[1] != config.job_token) {
        problem = "carries another job's token";
      } else if ((hello[2] >> 32) != std::uint64_t(ring.size) || sender != std::uint32_t(left_rank)) {
        problem = "comes from rank " + std::to_string(sender) + " of " +
                  std::to_string(hello[2] >> 32) + ", not from rank " +
                  std::to_string(left_rank) + " of " + std::to_string(ring.size) +
                  " (do all ranks read the same hostfile?)";
      } else if ((hello[3] >> 32) != std::uint64_t(k) || index >= std::uint32_t(k) ||
                 ring.left[index].socket.fd() >= 0) {
        problem = "has connection index " + std::to_string(index) + " of " +
                  std::to_string(hello[3] >> 32) + ", expected a new one of " + std::to_string(k) +
                  " (give every rank the same --connections)";
      }
      if (!problem.empty()) {
        throw ProbeError(exit_socket, "a connection to " + connection.address + " " + problem);
      }
      connection.index = static_cast<int>(index);
      ring.left[index] = std::move(connection);
      ++accepted;
    }
  }
  return ring;
}

// ---------------------------------------------------------------------------------------------
// Small exchanges over connection 0: barrier and the cross-rank statistics

// What each rank contributes to a row's statistics.
struct Contribution {
  double time_us = 0;
  std::uint64_t wrong = 0;
  std::uint64_t peak_rss = 0;
  std::uint64_t spare = 0;
};

// Every rank's contribution, on every rank: n-1 ring steps, each forwarding to the right the
// record received from the left in the previous step. It doubles as a barrier, since a rank
// cannot finish before every other rank has started. On the same sockets as the data: streams
// are FIFO and every data byte of a timed run is consumed before this starts, so the records
// never mix with data.
std::vector<Contribution> exchange(const Ring& ring, const Contribution& mine) {
  std::vector<Contribution> all(static_cast<std::size_t>(ring.size));
  all[static_cast<std::size_t>(ring.rank)] = mine;
  for (int step = 0; step + 1 < ring.size; ++step) {
    const int outgoing = (ring.rank - step + ring.size) % ring.size;
    const int incoming = (ring.rank - step - 1 + 2 * ring.size) % ring.size;
    transfer_all(ring.right[0], true, reinterpret_cast<std::byte*>(&all[std::size_t(outgoing)]),
                 sizeof(Contribution), ring.timeout);
    transfer_all(ring.left[0], false, reinterpret_cast<std::byte*>(&all[std::size_t(incoming)]),
                 sizeof(Contribution), ring.timeout);
  }
  return all;
}

// ---------------------------------------------------------------------------------------------
// Buffers and the byte pattern

// Page-aligned anonymous memory, touched once: first touch costs ~10 us per 4 KiB page here and
// must never fall inside a timed region. Transparent huge pages (madvise mode on these hosts)
// make that touch ~40x cheaper; the timed copies measured the same with and without them (64 MiB,
// 2 ranks), so --huge-pages 0, the allocation the other drivers get, changes only the start-up.
class Buffer {
 public:
  Buffer(std::size_t bytes, bool huge_pages) : bytes_(std::max<std::size_t>(bytes, 1)) {
    void* p = ::mmap(nullptr, bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      throw ProbeError(exit_usage, "cannot map " + std::to_string(bytes_) +
                                       " bytes for the buffers (" + std::strerror(errno) +
                                       "); lower -e");
    }
    if (huge_pages) ::madvise(p, bytes_, MADV_HUGEPAGE);  // advice only: ignore refusal
    data_ = static_cast<std::byte*>(p);
    std::memset(data_, 0, bytes_);
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { ::munmap(data_, bytes_); }
  std::byte* data() const noexcept { return data_; }

 private:
  std::size_t bytes_;
  std::byte* data_ = nullptr;
};

// The byte that `rank` sends at buffer offset `offset`: depends on both, so a byte from the
// wrong neighbour, the wrong connection or the wrong place does not match.
inline std::uint8_t pattern_byte(int rank, std::size_t offset) {
  const std::uint64_t word = (offset >> 3) * 0x9E3779B97F4A7C15ULL + std::uint64_t(rank + 1) * 0xD1B54A32D192ED69ULL;
  return static_cast<std::uint8_t>(word >> (8 * (offset & 7)));
}

void fill_pattern(std::byte* data, std::size_t bytes, int rank) {
  for (std::size_t i = 0; i < bytes; ++i) data[i] = std::byte{pattern_byte(rank, i)};
}

std::size_t count_wrong(const std::byte* data, std::size_t begin, std::size_t end, int rank) {
  std::size_t wrong = 0;
  for (std::size_t i = begin; i < end; ++i) wrong += data[i] != std::byte{pattern_byte(rank, i)};
  return wrong;
}

// ---------------------------------------------------------------------------------------------
// The data phase

// One direction of one connection in a run: `piece` bytes per iteration from or into `base`,
// `total` = piece × iterations in all.
struct Stream {
  const Connection* connection = nullptr;
  bool sending = false;
  std::byte* base = nullptr;
  std::size_t piece = 0, total = 0, done = 0;

  // Moves what the socket takes now; false when it would block. The offset wraps at `piece`,
  // so every iteration sends (or fills) the same bytes, as a repeated all-reduce would.
  bool step() {
    const std::size_t at = done % piece;
    const std::size_t length = std::min(piece - at, total - done);
    const int fd = connection->socket.fd();
    const ssize_t moved = sending ? ::send(fd, base + at, length, MSG_NOSIGNAL)
                                  : ::recv(fd, base + at, length, 0);
    if (moved > 0) {
      done += static_cast<std::size_t>(moved);
      return true;
    }
    if (moved == 0) {
      throw ProbeError(exit_socket, "connection " + connection->describe() + " closed by the peer");
    }
    if (errno == EINTR) return true;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
    fail_socket(std::string(sending ? "sending " : "receiving ") + connection->describe(), errno);
  }
  bool finished() const noexcept { return done >= total; }
};

// Where each stream's bytes live for a size: the right-bound half at the start of the buffers,
// the left-bound half at `left_offset`, each split into K contiguous pieces, one per connection.
// A receiver's pieces line up with its sender's, so the pattern check can compare in place.
struct Layout {
  std::size_t right_bytes = 0, left_bytes = 0, left_offset = 0;
  int connections = 1;

  static std::pair<std::size_t, std::size_t> split(std::size_t bytes, int parts, int index) {
    const std::size_t base = bytes / std::size_t(parts), extra = bytes % std::size_t(parts);
    const std::size_t i = std::size_t(index);
    return {i * base + std::min(i, extra), base + (i < extra ? 1 : 0)};
  }
};

// Bytes one rank sends (and receives) in a bandwidth-optimal ring all-reduce of `bytes`.
std::size_t ring_bytes(std::size_t bytes, int ranks) {
  return ranks <= 1 ? 0 : 2 * std::size_t(ranks - 1) * bytes / std::size_t(ranks);
}

std::vector<Stream> make_streams(const Ring& ring, const Layout& layout, std::byte* send_buffer,
                                 std::byte* recv_buffer, int iterations) {
  std::vector<Stream> streams;
  const auto add = [&](const Connection& c, bool sending, std::byte* buffer, std::size_t offset,
                       std::size_t piece) {
    if (piece == 0) return;
    streams.push_back({&c, sending, buffer + offset, piece, piece * std::size_t(iterations), 0});
  };
  for (int k = 0; k < layout.connections; ++k) {
    const auto [right_at, right_piece] = Layout::split(layout.right_bytes, layout.connections, k);
    const auto [left_at, left_piece] = Layout::split(layout.left_bytes, layout.connections, k);
    const Connection& to_right = ring.right[std::size_t(k)];
    const Connection& from_left = ring.left[std::size_t(k)];
    add(to_right, true, send_buffer, right_at, right_piece);
    add(from_left, false, recv_buffer, right_at, right_piece);
    add(from_left, true, send_buffer, layout.left_offset + left_at, left_piece);
    add(to_right, false, recv_buffer, layout.left_offset + left_at, left_piece);
  }
  return streams;
}

// Drives every stream from one thread: poll() for the sockets that can move, one send or
// receive per ready direction (as large as the socket takes), and poll again. Sleeps in poll
// whenever nothing can move.
void run_polled(std::vector<Stream>& streams, std::chrono::milliseconds timeout) {
  std::vector<pollfd> entries;
  std::vector<Stream*> owners;  // per entry: the stream of each direction, or null
  for (;;) {
    entries.clear();
    owners.clear();
    for (auto& stream : streams) {
      if (stream.finished()) continue;
      const int fd = stream.connection->socket.fd();
      const short event = stream.sending ? POLLOUT : POLLIN;
      // Both directions of a connection share one entry.
      auto it = std::find_if(entries.begin(), entries.end(),
                             [&](const pollfd& e) { return e.fd == fd; });
      if (it == entries.end()) {
        entries.push_back({fd, event, 0});
        owners.push_back(nullptr);
        owners.push_back(nullptr);
        it = entries.end() - 1;
      } else {
        it->events |= event;
      }
      owners[2 * std::size_t(it - entries.begin()) + (stream.sending ? 0 : 1)] = &stream;
    }
    if (entries.empty()) return;
    const int ready = ::poll(entries.data(), entries.size(), static_cast<int>(timeout.count()));
    if (ready < 0) {
      if (errno == EINTR) continue;
      fail_socket("poll", errno);
    }
    if (ready == 0) {
      const Stream* stuck = owners[0] != nullptr ? owners[0] : owners[1];
      throw ProbeError(exit_socket, std::string(stuck->sending ? "sending " : "receiving ") +
                                        stuck->connection->describe() + ": no progress for " +
                                        std::to_string(timeout.count()) + " ms");
    }
    for (std::size_t e = 0; e < entries.size(); ++e) {
      const short got = entries[e].revents;
      if (got == 0) continue;
      // An error or hang-up makes the send or recv below fail with the reason.
      const bool broken = (got & (POLLERR | POLLHUP)) != 0;
      if (Stream* s = owners[2 * e]; s != nullptr && ((got & POLLOUT) || broken)) s->step();
      if (Stream* s = owners[2 * e + 1]; s != nullptr && ((got & POLLIN) || broken)) s->step();
    }
  }
}

// A thread per stream, kept across runs: blocking-style loops on non-blocking sockets (waiting in
// poll on EAGAIN), so the kernel's copies of different connections run on different cores.
class StreamThreads {
 public:
  ~StreamThreads() { stop(); }

  // Runs every stream to completion, each on its own thread; rethrows the first failure.
  void run(std::vector<Stream>& streams, std::chrono::milliseconds timeout) {
    while (threads_.size() < streams.size()) {
      const std::size_t slot = threads_.size();
      threads_.emplace_back([this, slot] { work(slot); });
    }
    {
      std::unique_lock lock(mutex_);
      jobs_ = &streams;
      timeout_ = timeout;
      pending_ = streams.size();
      failure_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    std::unique_lock lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    jobs_ = nullptr;
    if (failure_) std::rethrow_exception(failure_);
  }

  void stop() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& thread : threads_) thread.join();
    threads_.clear();
  }

 private:
  void work(std::size_t slot) {
    std::uint64_t seen = 0;
    for (;;) {
      Stream* stream = nullptr;
      std::chrono::milliseconds timeout{};
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
        if (stopping_) return;
        seen = generation_;
        if (slot >= jobs_->size()) continue;  // fewer streams this run than threads
        stream = &(*jobs_)[slot];
        timeout = timeout_;
      }
      std::exception_ptr failure;
      try {
        while (!stream->finished()) {
          if (stream->step()) continue;
          const int fd = stream->connection->socket.fd();
          if (!wait_for(fd, stream->sending ? POLLOUT : POLLIN, Clock::now() + timeout)) {
            throw ProbeError(exit_socket, std::string(stream->sending ? "sending " : "receiving ") +
                                              stream->connection->describe() +
                                              ": no progress for " +
                                              std::to_string(timeout.count()) + " ms");
          }
        }
      } catch (...) {
        failure = std::current_exception();
        // The partner streams wait on sockets that will never move again: shut them all so
        // every thread returns at once instead of at its timeout.
        for (auto& other : *jobs_) ::shutdown(other.connection->socket.fd(), SHUT_RDWR);
      }
      std::lock_guard lock(mutex_);
      if (failure && !failure_) failure_ = failure;
      if (--pending_ == 0) done_.notify_one();
    }
  }

  std::vector<std::thread> threads_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::vector<Stream>* jobs_ = nullptr;
  std::chrono::milliseconds timeout_{};
  std::size_t pending_ = 0;
  std::uint64_t generation_ = 0;
  bool stopping_ = false;
  std::exception_ptr failure_;
};

// ---------------------------------------------------------------------------------------------

int probe(int argc, char** argv) {
  bench::Sweep sweep;
  ProbeOptions options;
  std::string io = "poll";
  std::string socket_buffer = "0";
  CLI::App app{
      "The wire probe: the bytes of a bandwidth-optimal ring all-reduce over raw TCP sockets, "
      "no reduction. Start it like a collie program: scripts/run_local.sh N wire_probe ..."};
  bench::add_sweep_options(app, sweep);
  app.add_option("--connections", options.connections,
                 "connections per ring neighbour (default: one per hostfile address; more than "
                 "the addresses reuse them round-robin)")
      ->check(CLI::Range(1, 64));
  app.add_option("--io", io, "poll: one thread per rank multiplexes every socket; threads: a "
                             "thread per direction of every connection")
      ->check(CLI::IsMember({"poll", "threads"}))
      ->capture_default_str();
  app.add_option("--socket-buffer", socket_buffer,
                 "force SO_SNDBUF and SO_RCVBUF to this size (64K, 4M; 0 keeps the kernel's "
                 "autotuning)")
      ->capture_default_str();
  app.add_option("--huge-pages", options.huge_pages,
                 "advise transparent huge pages for the buffers (1|0)")
      ->capture_default_str();
  try {
    app.parse(argc, argv);
    options.socket_buffer = bench::parse_size(socket_buffer);
  } catch (const CLI::Success& help) {
    return app.exit(help);
  } catch (const CLI::ParseError& error) {
    throw ProbeError(exit_usage, std::string(error.what()) + " (see --help)");
  } catch (const std::invalid_argument& error) {
    throw ProbeError(exit_usage, std::string("--socket-buffer: ") + error.what());
  }
  options.threads = io == "threads";

  // Nothing configured means one rank, as collie::init() makes a singleton group then.
  std::error_code ec;
  auto config = collie::ring_config_from_environment(ec);
  if (!config && ec == collie::errc::not_configured) {
    config.emplace();
    config->hosts.resize(1);
  } else if (!config) {
    throw ProbeError(exit_usage, collie::detail::last_error_message);
  }
  const int ranks = config->size();
  const int rank = config->rank;
  this_rank = rank;
  const int addresses = static_cast<int>(config->hosts.front().size());
  if (options.connections == 0) options.connections = std::max(1, addresses);
  if (ranks > 1 && addresses == 0) {
    std::fprintf(stderr, "wire_probe: the hostfile lists no addresses for %d ranks\n", ranks);
    return exit_usage;
  }

  const auto all_sizes = bench::sizes(sweep, sizeof(float), 1);
  const std::size_t max_bytes = all_sizes.empty() ? 0 : all_sizes.back();
  Layout layout;
  layout.connections = options.connections;
  const std::size_t max_ring = ring_bytes(max_bytes, ranks);
  layout.left_offset = (max_ring / 2 + 4095) / 4096 * 4096;
  const std::size_t buffer_bytes = layout.left_offset + (max_ring - max_ring / 2);

  Ring ring = connect_ring(*config, options);

  std::string transport = "tcp, " + std::to_string(options.connections) + " connection" +
                          (options.connections == 1 ? "" : "s") + " per neighbour";
  if (options.socket_buffer != 0) {
    transport += ", SO_SNDBUF/SO_RCVBUF " + std::to_string(options.socket_buffer);
  }
  bench::Header header{.tool = "wire-probe",
                       .contender = sweep.label.empty() ? "wire" : sweep.label,
                       .op = "wire",
                       .type = "float32",
                       .redop = "none",
                       .transport = transport,
                       .algorithm = std::string("ring bytes, both directions, ") +
                                    (options.threads ? "a thread per stream" : "one poll loop"),
                       .ranks = ranks,
                       .host = bench::host_name()};
  bench::Report report(header, rank == 0);
  if (rank == 0) report.set_json_path(sweep.json_path);

  // Sent bytes carry this rank's pattern so the receiver can tell them apart; received bytes
  // land in a buffer of the same layout.
  Buffer send_buffer(buffer_bytes, options.huge_pages);
  Buffer recv_buffer(buffer_bytes, options.huge_pages);
  if (sweep.check) fill_pattern(send_buffer.data(), buffer_bytes, rank);

  StreamThreads threads;
  const auto run = [&](std::vector<Stream>& streams) {
    if (options.threads) {
      threads.run(streams, ring.timeout);
    } else {
      run_polled(streams, ring.timeout);
    }
  };

  std::size_t total_wrong = 0;
  for (const std::size_t bytes : all_sizes) {
    const std::size_t count = bytes / sizeof(float);
    if (ranks == 1) {
      report.add(bench::make_row("wire", ranks, bytes, count, false, bench::Times{}, 0));
      continue;
    }
    const std::size_t moved = ring_bytes(bytes, ranks);
    layout.right_bytes = moved / 2;
    layout.left_bytes = moved - moved / 2;

    // One checked iteration first: every byte must arrive from the right neighbour at the right
    // place. Counted in bytes.
    std::size_t wrong = 0;
    if (sweep.check) {
      std::memset(recv_buffer.data(), 0, layout.right_bytes);
      std::memset(recv_buffer.data() + layout.left_offset, 0, layout.left_bytes);
      auto streams = make_streams(ring, layout, send_buffer.data(), recv_buffer.data(), 1);
      run(streams);
      const int left_rank = (rank - 1 + ranks) % ranks, right_rank = (rank + 1) % ranks;
      wrong = count_wrong(recv_buffer.data(), 0, layout.right_bytes, left_rank) +
              count_wrong(recv_buffer.data(), layout.left_offset,
                          layout.left_offset + layout.left_bytes, right_rank);
    }
    if (sweep.warmup > 0) {
      auto streams = make_streams(ring, layout, send_buffer.data(), recv_buffer.data(),
                                  sweep.warmup);
      run(streams);
    }
    const int iters = bench::timed_iterations(sweep, bytes);
    auto streams = make_streams(ring, layout, send_buffer.data(), recv_buffer.data(), iters);
    exchange(ring, {});  // barrier: every rank starts the timed run together
    const auto start = Clock::now();
    run(streams);
    const auto elapsed = std::chrono::duration<double, std::micro>(Clock::now() - start);

    const auto all = exchange(ring, {.time_us = elapsed.count() / iters, .wrong = wrong});
    bench::Times times{
        .min_us = all[0].time_us, .avg_us = 0, .max_us = all[0].time_us, .iters = iters};
    std::size_t wrong_total = 0;
    for (const auto& c : all) {
      times.min_us = std::min(times.min_us, c.time_us);
      times.max_us = std::max(times.max_us, c.time_us);
      times.avg_us += c.time_us / ranks;
      wrong_total += c.wrong;
    }
    total_wrong += wrong_total;
    bench::Row row = bench::make_row("wire", ranks, bytes, count, false, times, wrong_total);
    // algbw = S / time as for every row; the bus carries what an all-reduce of S carries.
    row.busbw_gbs = row.algbw_gbs * bench::bus_factor("all_sum", ranks);
    report.add(row);
  }

  std::size_t peak_rss = bench::peak_rss_bytes();
  if (ranks > 1) {
    for (const auto& c : exchange(ring, {.peak_rss = peak_rss})) {
      peak_rss = std::max<std::size_t>(peak_rss, c.peak_rss);
    }
  }
  report.finish(peak_rss);
  return total_wrong == 0 ? 0 : exit_wrong;
}

// One line on stderr, naming the rank once it is known, however CLI11 or the library broke it.
void print_error(std::string text) {
  std::replace(text.begin(), text.end(), '\n', ' ');
  if (this_rank >= 0) {
    std::fprintf(stderr, "wire_probe: rank %d: %s\n", this_rank, text.c_str());
  } else {
    std::fprintf(stderr, "wire_probe: %s\n", text.c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return probe(argc, argv);
  } catch (const ProbeError& error) {
    print_error(error.what());
    return error.exit_code();
  } catch (const std::exception& error) {
    print_error(error.what());
    return exit_socket;
  }
}
