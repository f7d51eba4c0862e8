// The TCP engine behind TcpTransport: one Asio event loop, run by whichever thread waits on a
// request or else by the engine's I/O thread; the connections to every peer (several to each
// ring neighbour, one on demand to any other rank), message matching, and the failure rules (a
// lost connection fails everything pending on that peer at once).
#pragma once

// Only the parts of Asio the engine uses: <asio.hpp> would bring all of it into every program.
#include <asio/buffer.hpp>
#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/ip/address.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/post.hpp>
#include <asio/read.hpp>
#include <asio/steady_timer.hpp>
#include <asio/write.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cerrno>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "collie/core/call.hpp"
#include "collie/core/deadline.hpp"
#include "collie/core/detail/chain.hpp"
#include "collie/core/error.hpp"
#include "collie/transport/detail/tcp/wire.hpp"
#include "collie/transport/tcp_config.hpp"

namespace collie::detail::tcp {

using asio::ip::tcp;

struct Connection;

// A completion condition for payloads: each system call moves as much as the socket takes.
// Asio's own conditions stop at 64 KiB per call, which made a 1 MiB message 16 sends and 16
// receives, each with its round through epoll.
inline std::size_t all_at_once(const std::error_code& ec, std::size_t) noexcept {
  return ec ? 0 : std::size_t{1} << 30;
}

// One posted send or receive. Ops come from a free list owned by the engine, so steady-state
// traffic allocates nothing per message.
struct Op {
  enum class State : std::uint8_t { free, queued, active, done };
  bool is_send = false;
  int peer = 0;  // world rank
  std::uint64_t context = 0;
  Tag tag = 0;
  const std::byte* send_data = nullptr;
  std::byte* recv_data = nullptr;
  std::size_t bytes = 0;
  // Written under the engine mutex; read without it only by a spinning wait (see Engine::wait),
  // which then takes the mutex to read `result`.
  std::atomic<State> state{State::free};
  std::error_code result;
  Connection* connection = nullptr;  // the connection moving it while active
  Bytes<Header::size> header{};      // sends: the encoded header, kept alive for the write
  Op* next_free = nullptr;
  Op* chain_prev = nullptr;  // in a queue of its peer or connection (at most one at a time)
  Op* chain_next = nullptr;
};

// A message that arrived before its receive was posted: kept until a receive claims it. Its
// buffer comes from the engine's spare list and goes back there (see `stash`): fresh memory costs
// a page fault per 4 KiB on first touch, far more than the copy out of a reused buffer.
struct Unexpected {
  std::uint64_t context = 0;
  Tag tag = 0;
  std::unique_ptr<std::byte[]> buffer;  // not zeroed: the payload overwrites it
  std::size_t capacity = 0;
  std::size_t size = 0;
  std::byte* data() const noexcept { return buffer.get(); }
  bool complete = false;
  bool orphaned = false;     // its peer failed mid-message: dropped when the read ends
  Op* claimed_by = nullptr;  // a receive posted while the payload was still arriving
};

struct Connection {
  explicit Connection(asio::io_context& io) : socket(io) {}
  tcp::socket socket;
  int peer = -1;
  int index = 0;
  std::string address;          // the remote "ip:port", for messages
  Chain<Op> send_queue;         // front is being written while `writing`
  bool writing = false;
  // The read side, touched only by the thread running the event loop (see Engine::pump): what
  // the stream carries next, and bytes already read that belong to it.
  enum class Reading : std::uint8_t { header, payload, reason, skip };
  Reading reading = Reading::header;
  Bytes<Header::size> header{};  // the header being read
  std::size_t header_have = 0;
  std::byte* target = nullptr;   // where the rest of the payload (or abort reason) goes
  std::uint64_t left = 0;        // bytes of the current payload still to come
  std::unique_ptr<std::byte[]> inbox;  // read ahead: a header, small payloads, further messages
  std::size_t inbox_begin = 0, inbox_end = 0;
  bool read_pending = false;  // an Asio read is pending: it, and nobody else, reads the socket
  bool wait_armed = false;    // a readiness wait is pending with the event loop
  bool watched = false;       // a spinning wait reads this connection itself (drive_until_done)
  Op* reading_into = nullptr;
  std::list<Unexpected>::iterator reading_unexpected;
  bool reading_to_unexpected = false;
  // A message whose header is in `header` waits, unread, in the socket (see Engine::route): its
  // peer has as many messages waiting in memory for their receives as it may. Set and cleared
  // under the engine mutex; `resume_posted`: a resume is queued with the event loop.
  bool held = false;
  bool resume_posted = false;
  std::vector<std::byte> discard;     // an abort reason
  std::function<void()> abort_frame;  // set by abort(): written after the current message
  Op* broken_send = nullptr;          // a send whose write failed; the reader decides its fate
  bool draining = false;              // shut for sending by abort(), read until the end
  bool reader_done = false;           // the read loop has ended (guarded by the engine mutex)
};

struct Peer {
  enum class Status : std::uint8_t { unconnected, connecting, ready, failed };
  Status status = Status::unconnected;
  std::vector<Connection*> connections;  // established, handshake done; those this rank made first
  std::size_t made = 0;                  // how many of `connections` this rank made
  Chain<Op> waiting_sends;               // posted before any connection existed
  Chain<Op> receives;                    // posted, unmatched, in posting order
  std::list<Unexpected> unexpected;      // arrived, unclaimed, in arrival order
  std::size_t unexpected_bytes = 0;      // their sizes, summed
  std::error_code failure;
  std::string failure_message;
};

class Engine {
 public:
  // Connects to the ring neighbours (and accepts from them) before returning; throws
  // collie::Error naming the step, the peer and the address when that fails.
  explicit Engine(TcpConfig config)
      : config_(std::move(config)), rank_(config_.rank), size_(config_.size()),
        peers_(static_cast<std::size_t>(size_)), work_(asio::make_work_guard(io_)) {
    try {
      validate();
      if (size_ > 1) {
        // Before anything is accepted: a refused handshake fails the set-up only while it runs.
        expected_right_ = connections_per_neighbour();
        expected_left_ = connections_per_neighbour();
      }
      open_acceptors();
    } catch (...) {
      // The listening sockets handed over (a rendezvous made them) are ours to close, also when
      // the set-up stops before they became acceptors.
      close_listening_sockets();
      throw;
    }
    thread_ = std::thread([this] { io_loop(); });
    try {
      connect_neighbours();
    } catch (...) {
      shutdown();
      throw;
    }
  }

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;
  ~Engine() { shutdown(); }

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return size_; }
  const TcpConfig& config() const noexcept { return config_; }

  std::string address_of(int world) const {
    const auto& list = config_.hosts[static_cast<std::size_t>(world)];
    return list.empty() ? std::string("?") : list.front().to_string();
  }

  // ----- posting ------------------------------------------------------------------------------

  Op* post(bool is_send, int peer, std::uint64_t context, Tag tag, const std::byte* send_data,
           std::byte* recv_data, std::size_t bytes) noexcept {
    std::unique_lock lock(mutex_);
    Op* op = allocate();
    if (op == nullptr) return nullptr;
    op->is_send = is_send;
    op->peer = peer;
    op->context = context;
    op->tag = tag;
    op->send_data = send_data;
    op->recv_data = recv_data;
    op->bytes = bytes;
    op->state = Op::State::queued;
    op->result.clear();
    op->connection = nullptr;
    Peer& p = peers_[static_cast<std::size_t>(peer)];
    // A failed peer fails new sends, and receives that no message already delivered matches
    // (a peer that sent its last message and exited is "failed" only for what comes after).
    if (p.status == Peer::Status::failed &&
        (is_send || std::none_of(p.unexpected.begin(), p.unexpected.end(), [&](const Unexpected& u) {
           return u.context == context && u.tag == tag && u.complete && u.claimed_by == nullptr;
         }))) {
      finish(*op, p.failure);
      return op;
    }
    if (is_send) {
      Header h;
      h.context = context;
      h.tag = tag;
      h.bytes = bytes;
      h.encode_into(op->header);
      if (p.connections.empty()) {
        p.waiting_sends.push_back(op);
        need_connection(peer);
      } else if (Connection* c = connection_for(*op);
                 !c->writing && bytes <= direct_send_limit) {
        send_now(*c, *op);
      } else {
        enqueue_send(*op);
      }
      return op;
    }
    // A receive: take a message that already arrived, or wait in the peer's queue.
    auto it = std::find_if(p.unexpected.begin(), p.unexpected.end(), [&](const Unexpected& u) {
      return u.context == context && u.tag == tag && u.claimed_by == nullptr && !u.orphaned;
    });
    resume_held(p);  // a receive from the peer, or room for its next message
    if (it == p.unexpected.end()) {
      p.receives.push_back(op);
      if (p.connections.empty()) need_connection(peer);
      return op;
    }
    if (!it->complete) {
      it->claimed_by = op;  // the reader hands it over when the payload is in
      return op;
    }
    std::list<Unexpected> taken;  // off every list, so nobody else reaches it while unlocked
    p.unexpected_bytes -= it->size;
    taken.splice(taken.begin(), p.unexpected, it);
    op->state = Op::State::active;
    lock.unlock();
    // Copy outside the lock: the op is reachable by nobody else until finished.
    std::error_code result;
    if (taken.front().size != op->bytes) {
      result = errc::protocol_error;
    } else if (op->bytes != 0) {
      std::memcpy(op->recv_data, taken.front().data(), op->bytes);
    }
    lock.lock();
    unstash(taken, taken.begin());
    finish(*op, result);
    return op;
  }

  // Blocks until `op` is done or the deadline passes (then it stays posted).
  //
  // The waiting thread runs the I/O itself: it takes the right to run the event loop (the I/O
  // thread steps aside, and stays parked until no caller has run the loop for `park_grace`),
  // polls the sockets for up to `spin_`, then sleeps in the event loop. A reply then wakes this
  // thread directly, instead of waking the I/O thread, which would wake this one: each such
  // hand-off is a futex wake-up and a reschedule, tens of microseconds on a VM, and the two of
  // them were most of a small message's time (8-byte all_sum at n = 2: 49 us with the hand-offs,
  // 30 us without, 21 us with the spin). Large transfers lose nothing by it: while the caller
  // reduces, the kernel keeps receiving into the socket buffers.
  std::error_code wait(Op* op, Deadline deadline) noexcept {
    if (is_done(op)) return op->result;
    if (deadline.expired()) return look(op);
    std::unique_lock drive(drive_mutex_, std::try_to_lock);
    if (!drive.owns_lock()) {
      // The I/O thread (or another waiting thread) runs the loop: wake it so that it hands over,
      // and sleep until it does or until it has finished `op`. Whoever lets go of the loop
      // notifies `cv_` under `mutex_` while anyone wants it, so trying under `mutex_` loses no
      // wake-up; the slices only bound the wait should anything be missed.
      want_drive_.fetch_add(1);
      asio::post(io_, [] {});
      std::unique_lock lock(mutex_);
      while (!is_done(op) && !deadline.expired() && !drive.try_lock()) {
        const auto slice = std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
        cv_.wait_until(lock, deadline.is_never() ? slice : std::min(slice, deadline.when()));
      }
      lock.unlock();
      want_drive_.fetch_sub(1);
    }
    if (drive.owns_lock()) {
      const std::error_code ec = drive_until_done(op, deadline);
      resume_at_.store(now_ns() + park_grace.count(), std::memory_order_relaxed);
      drive.unlock();
      handed_back();
      if (ec) return ec;
    }
    if (!is_done(op)) return errc::timed_out;
    return op->result;
  }

  // A wait whose deadline has already passed (Request::ready asks this way): runs what is ready
  // on the event loop, unless another thread runs it, and returns. Unlike a wait, it leaves the
  // I/O thread's parking alone: a caller asking every 100 us would otherwise keep it parked for
  // good, and an operation only ever asked about would move only during the asking.
  std::error_code look(Op* op) noexcept {
    std::unique_lock drive(drive_mutex_, std::try_to_lock);
    if (drive.owns_lock()) {
      io_.poll();
      drive.unlock();
      handed_back();
    }
    return is_done(op) ? op->result : std::error_code(errc::timed_out);
  }

  // Withdraws `op` and recycles it. If bytes of it are already moving, the connection is closed
  // (the stream cannot be resynchronised mid-message) and the handler's completion awaited.
  void release(Op* op) noexcept {
    std::unique_lock lock(mutex_);
    if (op->state == Op::State::queued) {
      Peer& p = peers_[static_cast<std::size_t>(op->peer)];
      auto drop = [&](Chain<Op>& q) {
        if (!q.contains(op)) return false;
        q.erase(op);
        return true;
      };
      bool found = drop(p.waiting_sends) || drop(p.receives);
      for (Connection* c : p.connections) {
        if (found) break;
        // Not the front of a queue that is being written: that one is active.
        found = drop(c->send_queue);
      }
      for (auto& u : p.unexpected) {
        if (u.claimed_by == op) {
          u.claimed_by = nullptr;
          found = true;
        }
      }
      op->state = Op::State::done;
      op->result = errc::aborted;
    }
    if (op->state == Op::State::active && op->connection != nullptr &&
        op->connection->broken_send == op) {
      // Its write failed already: nothing touches its memory any more.
      op->connection->broken_send = nullptr;
      finish(*op, errc::aborted);
    }
    if (op->state == Op::State::active) {
      const int peer = op->peer;
      Connection* c = op->connection;
      lock.unlock();
      asio::post(io_, [this, peer, c] {
        fail_peer(peer, errc::connection_lost,
                  "had a transfer cancelled mid-message, so its connection was closed");
        // Also when the peer had failed already (a draining connection): the transfer's
        // handler then completes, with operation_aborted.
        std::error_code ignored;
        c->socket.close(ignored);
      });
      wake_io_thread();
      lock.lock();
      cv_.wait(lock, [&] { return op->state == Op::State::done; });
    }
    recycle(op);
  }

  // Sends the reason to every peer over a connection that is not in the middle of a message,
  // then closes every connection: peers fail at once, and can say why. Waits (briefly) until the
  // I/O thread has done it, so that a process exiting right after still tells its peers.
  void abort(std::string_view reason) noexcept {
    try {
      auto text = std::make_shared<std::string>(reason.substr(0, 4000));
      auto pending = std::make_shared<std::atomic<int>>(0);
      auto finished = std::make_shared<std::atomic<bool>>(false);
      asio::post(io_, [this, text, pending, finished] {
        auto frame = std::make_shared<Bytes<Header::size>>();
        Header h;
        h.flags = Header::abort_flag;
        h.bytes = text->size();
        h.encode_into(*frame);
        auto closed = std::make_shared<bool>(false);
        auto close_all = [this, finished, closed] {
          if (*closed) return;
          *closed = true;
          for (int peer = 0; peer < size_; ++peer) {
            fail_peer(peer, errc::connection_lost, "this rank aborted the group", /*drain=*/true);
          }
          finished->store(true);
          cv_.notify_all();
        };
        auto write_reason = [frame, text, pending, close_all](Connection* c) {
          const std::array<asio::const_buffer, 2> buffers = {asio::buffer(*frame),
                                                             asio::buffer(*text)};
          asio::async_write(c->socket, buffers, [pending, close_all](std::error_code, std::size_t) {
            if (--*pending == 0) close_all();
          });
        };
        std::vector<Connection*> idle;
        {
          std::lock_guard lock(mutex_);
          for (auto& p : peers_) {
            if (p.status == Peer::Status::failed || p.connections.empty()) continue;
            Connection* c = p.connections.front();
            ++*pending;
            if (c->writing) {
              // Mid-message: the reason follows the message being written (a segment, so soon).
              c->abort_frame = [c, write_reason] { write_reason(c); };
            } else {
              c->writing = true;
              idle.push_back(c);
            }
          }
        }
        if (*pending == 0) return close_all();
        for (Connection* c : idle) write_reason(c);
        // A peer that stopped reading must not hold the abort up.
        auto timer = std::make_shared<asio::steady_timer>(io_, std::chrono::milliseconds(1000));
        timer->async_wait([timer, close_all](std::error_code) { close_all(); });
      });
      wake_io_thread();
      // Until the reason is written and the peers have closed their ends (they do as soon as they
      // read it), within a bound: a peer that stopped reading must not hold this up.
      std::unique_lock lock(mutex_);
      cv_.wait_for(lock, std::chrono::seconds(2), [&] { return finished->load() && draining_ == 0; });
    } catch (...) {
      asio::post(io_, [this] {
        for (int peer = 0; peer < size_; ++peer) {
          fail_peer(peer, errc::connection_lost, "this rank aborted the group");
        }
      });
      wake_io_thread();
    }
  }

  std::string failure_reason(int peer) {
    std::lock_guard lock(mutex_);
    return peers_[static_cast<std::size_t>(peer)].failure_message;
  }

 private:
  // ----- set-up -------------------------------------------------------------------------------

  [[noreturn]] void fail_setup(errc code, const std::string& what) const {
    throw Error(code, "collie[tcp] rank " + std::to_string(rank_) + ": " + what);
  }

  void log(const std::string& line) const {
    if (config_.verbose) std::fprintf(stderr, "[collie ring] rank %d: %s\n", rank_, line.c_str());
  }

  void validate() const {
    if (size_ < 1) fail_setup(errc::bad_configuration, "the host list is empty");
    if (rank_ < 0 || rank_ >= size_) {
      fail_setup(errc::bad_configuration, "rank " + std::to_string(rank_) + " is outside [0, " +
                                              std::to_string(size_) + ") of the host list");
    }
    const std::size_t per_rank = config_.hosts.front().size();
    for (int r = 0; r < size_; ++r) {
      const auto& list = config_.hosts[static_cast<std::size_t>(r)];
      if (size_ > 1 && list.empty()) {
        fail_setup(errc::bad_configuration, "rank " + std::to_string(r) + " lists no address");
      }
      if (list.size() != per_rank) {
        fail_setup(errc::bad_configuration,
                   "rank " + std::to_string(r) + " lists " + std::to_string(list.size()) +
                       " addresses but rank 0 lists " + std::to_string(per_rank) +
                       "; every rank needs one per connection");
      }
    }
    if (!config_.listening_sockets.empty() &&
        config_.listening_sockets.size() != config_.hosts[static_cast<std::size_t>(rank_)].size()) {
      fail_setup(errc::bad_configuration, "listening_sockets must have one socket per address");
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
          fail_setup(errc::bad_configuration,
                     "TCP congestion control \"" + *config_.congestion +
                         "\" (COLLIE_TCP_CONGESTION or TcpConfig::congestion): " +
                         std::strerror(error) + "; this process may use: " +
                         allowed_congestion() +
                         " (net.ipv4.tcp_allowed_congestion_control). Name one of those, or "
                         "leave the variable unset");
        }
      }
    }
  }

  static int set_congestion(int fd, const std::string& name) noexcept {
    return ::setsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name.data(),
                        static_cast<socklen_t>(name.size()));
  }

  static std::string allowed_congestion() {
    std::string line;
    if (std::FILE* file = std::fopen("/proc/sys/net/ipv4/tcp_allowed_congestion_control", "r")) {
      char buffer[256];
      if (std::fgets(buffer, sizeof buffer, file) != nullptr) line = buffer;
      std::fclose(file);
    }
    while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
    return line.empty() ? "unknown" : line;
  }

  // Gives a new data connection its congestion control (TcpConfig::congestion): by default reno
  // when both ends are on this host, where a pacing algorithm only reorders the stream.
  void choose_congestion(tcp::socket& socket) const {
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
      log("could not set TCP congestion control " + name + ": " + std::strerror(errno));
    }
  }

  std::size_t connections_per_neighbour() const {
    return config_.hosts[static_cast<std::size_t>(rank_)].size();
  }

  tcp::endpoint resolve(const Endpoint& e) const {
    std::error_code ec;
    const auto address = asio::ip::make_address(e.host, ec);
    if (!ec) return {address, e.port};
    tcp::resolver resolver(const_cast<asio::io_context&>(io_));
    auto results = resolver.resolve(e.host, std::to_string(e.port), ec);
    if (ec || results.empty()) {
      fail_setup(errc::bad_configuration,
                 "cannot resolve \"" + e.host + "\": " + (ec ? ec.message() : "no address"));
    }
    return results.begin()->endpoint();
  }

  void open_acceptors() {
    if (size_ == 1) return;
    const auto& mine = config_.hosts[static_cast<std::size_t>(rank_)];
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
      if (ec) {
        fail_setup(errc::bad_configuration,
                   "cannot listen on " + mine[i].to_string() + " (hostfile entry " +
                       std::to_string(i) + " of rank " + std::to_string(rank_) + "): " +
                       ec.message() + ". Is that address on this host, and the port free?");
      }
      log("listening on " + mine[i].to_string());
      acceptors_.push_back(std::move(acceptor));
    }
    config_.listening_sockets.clear();  // all owned by the acceptors now
    for (auto& a : acceptors_) accept_next(*a);
  }

  // Neighbour connections: k to the right neighbour (we connect), k from the left (it connects).
  // Both directions start at once, so bring-up is not a chain through the ring.
  void connect_neighbours() {
    if (size_ == 1) return;
    const int right = (rank_ + 1) % size_;
    const int left = (rank_ - 1 + size_) % size_;
    const std::size_t k = connections_per_neighbour();
    {
      std::lock_guard lock(mutex_);
      peers_[static_cast<std::size_t>(right)].status = Peer::Status::connecting;
      peers_[static_cast<std::size_t>(left)].status = Peer::Status::connecting;
    }
    for (std::size_t i = 0; i < k; ++i) {
      asio::post(io_, [this, right, i] { start_connect(right, static_cast<std::uint16_t>(i)); });
    }
    const auto deadline = Deadline::after(config_.connect_timeout);
    std::unique_lock lock(mutex_);
    const bool ok = cv_.wait_until(lock, deadline.when(), [&] {
      return setup_error_ || (made_right_ >= expected_right_ && made_left_ >= expected_left_);
    });
    if (setup_error_ && setup_error_->first == errc::connection_lost) {
      // A peer that refused one of our connections closes the others as it gives up, and the
      // close may be seen first: give the refusal (already on its way) a moment to arrive.
      cv_.wait_for(lock, std::chrono::milliseconds(200),
                   [&] { return setup_error_->first != errc::connection_lost; });
    }
    if (setup_error_) {
      const auto [code, text] = *setup_error_;
      lock.unlock();
      fail_setup(code, text);
    }
    if (!ok) {
      std::string missing;
      if (made_right_ < expected_right_) {
        missing = "connected " + std::to_string(made_right_) + " of " +
                  std::to_string(expected_right_) + " connections to rank " +
                  std::to_string(right) + " (" + address_of(right) + ")";
      }
      if (made_left_ < expected_left_) {
        missing += std::string(missing.empty() ? "" : "; ") + "accepted " +
                   std::to_string(made_left_) + " of " + std::to_string(expected_left_) +
                   " connections from rank " + std::to_string(left);
      }
      lock.unlock();
      fail_setup(errc::timed_out, "connect: timed out after " +
                                      std::to_string(config_.connect_timeout.count()) +
                                      " ms: " + missing +
                                      ". Are all ranks started, with the same hostfile?");
    }
    peers_[static_cast<std::size_t>(right)].status = Peer::Status::ready;
    peers_[static_cast<std::size_t>(left)].status = Peer::Status::ready;
    log("connected to both neighbours");
  }

  // Called with the lock held: a send or receive needs a connection to a non-neighbour. The
  // lower rank connects (once, on first need on either side), the higher rank waits for it.
  void need_connection(int peer) {
    Peer& p = peers_[static_cast<std::size_t>(peer)];
    if (p.status != Peer::Status::unconnected) return;
    p.status = Peer::Status::connecting;
    if (rank_ < peer) {
      asio::post(io_, [this, peer] { start_connect(peer, on_demand_index); });
    }
  }

  // ----- connecting (event loop) -------------------------------------------------------------

  struct Attempt {
    Attempt(asio::io_context& io, int peer_rank, std::uint16_t index)
        : connection(std::make_unique<Connection>(io)), timer(io), peer(peer_rank),
          connection_index(index) {}
    std::unique_ptr<Connection> connection;
    asio::steady_timer timer;
    int peer;
    std::uint16_t connection_index;
    std::chrono::milliseconds backoff{20};
    Deadline deadline = Deadline::never();
    Bytes<Hello::size> hello{};
    Bytes<Ack::size> ack{};
  };

  void start_connect(int peer, std::uint16_t index) {
    auto attempt = std::make_shared<Attempt>(io_, peer, index);
    attempt->deadline = Deadline::after(config_.connect_timeout);
    try_connect(attempt);
  }

  const Endpoint& target_of(const Attempt& a) const {
    const auto& list = config_.hosts[static_cast<std::size_t>(a.peer)];
    return list[a.connection_index == on_demand_index ? 0 : a.connection_index];
  }

  void try_connect(const std::shared_ptr<Attempt>& a) {
    if (stopping_) return;
    const Endpoint& target = target_of(*a);
    tcp::endpoint endpoint;
    try {
      endpoint = resolve(target);
    } catch (const Error& e) {
      setup_failed(a->peer, errc::bad_configuration, e.what());
      return;
    }
    a->connection->socket = tcp::socket(io_);
    a->connection->socket.async_connect(endpoint, [this, a](std::error_code ec) {
      if (stopping_) return;
      if (ec) {
        // The peer may not be listening yet: retry with backoff until the connect deadline.
        if (a->deadline.expired()) {
          setup_failed(a->peer, errc::timed_out,
                       "connect to rank " + std::to_string(a->peer) + " at " +
                           target_of(*a).to_string() + ": " + ec.message() + " (gave up after " +
                           std::to_string(config_.connect_timeout.count()) +
                           " ms). Is rank " + std::to_string(a->peer) + " running?");
          return;
        }
        a->timer.expires_after(a->backoff);
        a->backoff = std::min(a->backoff * 2, std::chrono::milliseconds(1000));
        a->timer.async_wait([this, a](std::error_code) { try_connect(a); });
        return;
      }
      a->connection->socket.set_option(tcp::no_delay(true), ec);
      choose_congestion(a->connection->socket);
      Hello hello;
      hello.connection = a->connection_index;
      hello.world_size = static_cast<std::uint32_t>(size_);
      hello.sender = static_cast<std::uint32_t>(rank_);
      hello.receiver = static_cast<std::uint32_t>(a->peer);
      hello.job_token = config_.job_token;
      a->hello = hello.encode();
      asio::async_write(a->connection->socket, asio::buffer(a->hello),
                        [this, a](std::error_code ec, std::size_t) {
                          if (ec) return handshake_lost(a, ec);
                          asio::async_read(a->connection->socket, asio::buffer(a->ack),
                                           [this, a](std::error_code ec, std::size_t) {
                                             if (ec) return handshake_lost(a, ec);
                                             on_ack(a);
                                           });
                        });
    });
  }

  void handshake_lost(const std::shared_ptr<Attempt>& a, std::error_code ec) {
    if (stopping_) return;
    if (!a->deadline.expired()) {  // e.g. the peer restarted its listener: try again
      a->timer.expires_after(a->backoff);
      a->timer.async_wait([this, a](std::error_code) { try_connect(a); });
      return;
    }
    setup_failed(a->peer, errc::connection_lost,
                 "handshake with rank " + std::to_string(a->peer) + " at " +
                     target_of(*a).to_string() + ": " + ec.message());
  }

  void on_ack(const std::shared_ptr<Attempt>& a) {
    const Ack ack = Ack::decode(a->ack);
    const std::string where = "rank " + std::to_string(a->peer) + " at " + target_of(*a).to_string();
    if (ack.magic != hello_magic) {
      setup_failed(a->peer, errc::protocol_error,
                   "handshake: " + where + " answered with something that is not collie");
      return;
    }
    if (ack.status != Ack::accepted) {
      setup_failed(a->peer, errc::protocol_error,
                   "handshake: " + where + " (connection " + std::to_string(a->connection_index) +
                       ") refused this rank: " + Ack::reason(ack.status));
      return;
    }
    a->connection->peer = a->peer;
    a->connection->index = a->connection_index;
    a->connection->address = target_of(*a).to_string();
    log("connected to " + where + " (connection " + std::to_string(a->connection_index) + ")");
    register_connection(std::move(a->connection), /*initiated=*/true);
  }

  // ----- accepting (event loop) --------------------------------------------------------------

  struct Incoming {
    explicit Incoming(asio::io_context& io) : connection(std::make_unique<Connection>(io)), timer(io) {}
    std::unique_ptr<Connection> connection;
    asio::steady_timer timer;
    Bytes<Hello::size> hello{};
    Bytes<Ack::size> ack{};
    std::size_t acceptor = 0;
  };

  void accept_next(tcp::acceptor& acceptor) {
    auto in = std::make_shared<Incoming>(io_);
    for (std::size_t i = 0; i < acceptors_.size(); ++i) {
      if (acceptors_[i].get() == &acceptor) in->acceptor = i;
    }
    acceptor.async_accept(in->connection->socket, [this, in, &acceptor](std::error_code ec) {
      if (stopping_ || ec == asio::error::operation_aborted) return;
      accept_next(acceptor);
      if (ec) return;
      in->connection->socket.set_option(tcp::no_delay(true), ec);
      choose_congestion(in->connection->socket);
      // A connection that never says hello is dropped after the connect timeout.
      in->timer.expires_after(config_.connect_timeout);
      in->timer.async_wait([in](std::error_code ec) {
        if (!ec) in->connection->socket.close(ec);
      });
      asio::async_read(in->connection->socket, asio::buffer(in->hello),
                       [this, in](std::error_code ec, std::size_t) {
                         in->timer.cancel();
                         if (ec || stopping_) return;
                         on_hello(in);
                       });
    });
  }

  void on_hello(const std::shared_ptr<Incoming>& in) {
    const Hello hello = Hello::decode(in->hello);
    std::error_code ignored;
    const auto remote = in->connection->socket.remote_endpoint(ignored);
    const std::string from = remote.address().to_string() + ":" + std::to_string(remote.port());
    const int left = (rank_ - 1 + size_) % size_;
    Ack ack;
    if (hello.magic != hello_magic) {
      ack.status = Ack::bad_magic;
    } else if (hello.version != protocol_version) {
      ack.status = Ack::bad_version;
    } else if (hello.world_size != static_cast<std::uint32_t>(size_)) {
      ack.status = Ack::wrong_world_size;
    } else if (hello.receiver != static_cast<std::uint32_t>(rank_)) {
      ack.status = Ack::wrong_receiver;
    } else if (hello.job_token != config_.job_token) {
      ack.status = Ack::wrong_job;
    } else if (hello.sender >= static_cast<std::uint32_t>(size_) ||
               (hello.connection != on_demand_index &&
                (static_cast<int>(hello.sender) != left ||
                 hello.connection != static_cast<std::uint16_t>(in->acceptor))) ||
               (hello.connection == on_demand_index && static_cast<int>(hello.sender) >= rank_)) {
      ack.status = Ack::unexpected_sender;
    }
    in->ack = ack.encode();
    asio::async_write(in->connection->socket, asio::buffer(in->ack),
                      [this, in, hello, ack, from](std::error_code ec, std::size_t) {
                        if (stopping_) return;
                        const auto& mine = config_.hosts[static_cast<std::size_t>(rank_)];
                        const std::string here = mine[in->acceptor].to_string();
                        if (ack.status != Ack::accepted) {
                          // Refused: the set-up fails here too, naming both ends.
                          std::error_code ignored;
                          in->connection->socket.close(ignored);
                          const std::string text =
                              "handshake: refused a connection on " + here + " from " + from +
                              " (claims rank " + std::to_string(hello.sender) + "): " +
                              Ack::reason(ack.status);
                          log(text);
                          if (hello.magic == hello_magic) {
                            setup_failed(-1, errc::protocol_error, text);
                          }
                          return;
                        }
                        if (ec) return;
                        in->connection->peer = static_cast<int>(hello.sender);
                        in->connection->index = hello.connection;
                        in->connection->address = from;
                        log("accepted rank " + std::to_string(hello.sender) + " from " + from +
                            " on " + here);
                        register_connection(std::move(in->connection), /*initiated=*/false);
                      });
  }

  // ----- established connections (event loop) ------------------------------------------------

  void register_connection(std::unique_ptr<Connection> owned, bool initiated) {
    Connection* c = owned.get();
    c->inbox = std::make_unique_for_overwrite<std::byte[]>(inbox_size);
    {
      std::lock_guard lock(mutex_);
      connections_.push_back(std::move(owned));
      Peer& p = peers_[static_cast<std::size_t>(c->peer)];
      if (p.status == Peer::Status::failed) {
        std::error_code ignored;
        c->socket.close(ignored);
        return;
      }
      if (initiated) {
        p.connections.insert(p.connections.begin() + static_cast<std::ptrdiff_t>(p.made++), c);
      } else {
        p.connections.push_back(c);
      }
      if (c->index != on_demand_index) {
        (initiated ? made_right_ : made_left_) += 1;
      }
      if (c->index == on_demand_index || p.status == Peer::Status::ready) {
        p.status = Peer::Status::ready;
      }
      // Sends posted before the connection existed go out now, in posting order.
      while (Op* op = p.waiting_sends.pop_front()) enqueue_send(*op);
    }
    cv_.notify_all();
    pump(c);
  }

  // With the lock held: the connection a send goes on. Equal (context, tag) always take the same
  // connection, so they arrive in posting order; different tags spread over the connections.
  //
  // A peer with connections of both kinds (at two ranks, each is the other's left and right
  // neighbour) gets sends only on those this rank made, so each connection carries one
  // direction. Both ranks of a ring step send with the same tag; picking among all connections
  // put both directions of a step on one socket, where data arriving while this rank writes
  // waits in the socket's backlog (all_sum at n = 2, medians of 7 runs: 512 KiB 130 -> 119 us,
  // 2 MiB 532 -> 504 us, 8 MiB 2543 -> 2382 us).
  Connection* connection_for(const Op& op) const {
    const Peer& p = peers_[static_cast<std::size_t>(op.peer)];
    const std::uint64_t key = op.tag * 0x9E3779B97F4A7C15ULL ^ op.context;
    const bool both_kinds = p.made != 0 && p.made != p.connections.size();
    return p.connections[(key >> 32) % (both_kinds ? p.made : p.connections.size())];
  }

  // With the lock held: put a send on its connection's queue, for the event loop.
  void enqueue_send(Op& op) {
    Connection* c = connection_for(op);
    op.connection = c;
    c->send_queue.push_back(&op);
    if (!c->writing) {
      c->writing = true;
      asio::post(io_, [this, c] { write_front(c); });
    }
  }

  void write_front(Connection* c) {
    Op* op = nullptr;
    std::function<void()> abort_frame;
    {
      std::lock_guard lock(mutex_);
      if (c->abort_frame) {
        // This rank is aborting: its reason goes out before anything else queued.
        abort_frame = std::move(c->abort_frame);
        c->abort_frame = nullptr;
      } else if (c->send_queue.empty()) {
        c->writing = false;
        return;
      } else {
        op = c->send_queue.pop_front();
        op->state = Op::State::active;
      }
    }
    if (abort_frame) return abort_frame();
    write_from(c, op, 0);
  }

  // With the lock held, from the posting thread: writes a small send on an idle connection at
  // once, without a round through the event loop (a wake-up, if another thread runs it). The
  // syscall is made under the lock, which is what keeps the socket open meanwhile (sockets are
  // closed only after their peer is marked failed under the lock), so only sends up to
  // `direct_send_limit` go this way. Whatever the kernel does not take at once (a full socket
  // buffer, an error) the event loop finishes, as for any other send.
  void send_now(Connection& c, Op& op) {
    op.connection = &c;
    op.state = Op::State::active;
    iovec parts[2] = {{op.header.data(), op.header.size()},
                      {const_cast<std::byte*>(op.send_data), op.bytes}};
    msghdr message{};
    message.msg_iov = parts;
    message.msg_iovlen = op.bytes == 0 ? 1 : 2;
    ssize_t sent;
    do {
      sent = ::sendmsg(c.socket.native_handle(), &message, MSG_DONTWAIT | MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    if (sent == static_cast<ssize_t>(op.header.size() + op.bytes)) {
      finish(op, {});
      return;
    }
    c.writing = true;
    const std::size_t written = sent > 0 ? static_cast<std::size_t>(sent) : 0;
    asio::post(io_, [this, c = &c, op = &op, written] { write_from(c, op, written); });
  }

  // Writes `op` (header and payload) from byte `offset` on, then the rest of the queue.
  void write_from(Connection* c, Op* op, std::size_t offset) {
    const std::size_t header = op->header.size();
    const std::array<asio::const_buffer, 2> buffers = {
        asio::buffer(op->header.data() + std::min(offset, header), header - std::min(offset, header)),
        asio::buffer(op->send_data + (offset > header ? offset - header : 0),
                     op->bytes - (offset > header ? offset - header : 0))};
    asio::async_write(c->socket, buffers, all_at_once, [this, c, op](std::error_code ec, std::size_t) {
      {
        std::lock_guard lock(mutex_);
        if (!ec) {
          finish(*op, {});
        } else if (peers_[static_cast<std::size_t>(c->peer)].status == Peer::Status::failed) {
          finish(*op, peers_[static_cast<std::size_t>(c->peer)].failure);
        } else if (c->reader_done) {
          finish(*op, errc::connection_lost);
        } else {
          c->broken_send = op;  // failed with the peer, once the reader knows why
          queue_resume(c, /*force=*/true);  // a held reader must go on to the end to know it
        }
      }
      cv_.notify_all();
      // On a failed write, leave the connection to its reader: whatever the peer sent before
      // the connection broke (its reason for aborting, say) is still read, and the reader fails
      // the peer when the stream ends. Nothing more is written here.
      if (!ec) write_front(c);
    });
  }

  // Reads what connection `c` has, as far as it goes without blocking, into the messages it
  // carries, then arms a read (see arm) for the rest. Headers and small payloads come through
  // the connection's inbox, so that one system call brings a header with its payload, or several
  // messages; the bulk of a large payload goes straight to its destination. Every system call
  // costs about a microsecond on these VMs, which is why an 8-byte message takes one `recv`
  // here where Asio's composed reads took three (header, payload, and the read that finds the
  // socket empty).
  //
  // Runs on whoever runs the event loop: a read's handler, a posted continuation, or a thread
  // that spins for a small receive and reads its peer's connections itself (drive_until_done),
  // which spares the round through epoll. A socket has one reader at a time: nothing else reads
  // while an Asio read is pending. While the reader is not done, a read or a wait is armed, or a
  // continuation posted. `drained`: the socket is empty or most likely so (see took), and the
  // next read is left to arm, which tries it once.
  void pump(Connection* c, bool drained = false) {
    if (c->read_pending) return;
    for (int calls = 0;;) {
      if (c->reader_done) return;
      if (!c->socket.is_open()) return reader_ended(c, asio::error::operation_aborted);
      if (c->held) return;  // resumed by a receive from the peer (see route)
      if (c->inbox_begin < c->inbox_end) {
        take_from_inbox(c);
        continue;
      }
      if (drained) return arm(c);
      if (calls++ == pump_calls) {
        // A fast sender can keep this socket full: let the loop's other handlers run.
        asio::post(io_, [this, c] { pump(c); });
        return;
      }
      const auto [into, want] = next_read(c);
      ssize_t got;
      do {
        got = ::recv(c->socket.native_handle(), into, want, MSG_DONTWAIT);
      } while (got < 0 && errno == EINTR);
      if (got == 0) return reader_ended(c, asio::error::eof);
      if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return arm(c);
        return reader_ended(c, std::error_code(errno, asio::error::get_system_category()));
      }
      drained = took(c, into, static_cast<std::size_t>(got), want);
    }
  }

  // Where the next read goes: straight into the payload when much of it is still to come (the
  // inbox is empty whenever this is asked), else into the inbox.
  std::pair<std::byte*, std::size_t> next_read(const Connection* c) const {
    if (c->reading == Connection::Reading::payload && c->left >= direct_read_min) {
      return {c->target, static_cast<std::size_t>(c->left)};
    }
    return {c->inbox.get(), inbox_size};
  }

  // Accounts for `got` of the `want` bytes read to `into`, as next_read chose it. Returns whether
  // the next read should be left to arm: after a short read the socket is empty, and after a
  // read that ended a large payload it most likely is, and arm's Asio read tries the socket
  // once anyway (a read of our own first would find it empty, and Asio's would try again: two
  // system calls per large message for nothing).
  bool took(Connection* c, const std::byte* into, std::size_t got, std::size_t want) {
    if (into == c->inbox.get()) {
      c->inbox_begin = 0;
      c->inbox_end = got;
      return got < want;
    }
    c->target += got;
    c->left -= got;
    if (c->left == 0) end_of_payload(c);
    return true;
  }

  // Has the event loop go on reading `c` once it has something. Normally an Asio read, which
  // costs no system call to arm after a short read (Asio then waits for epoll before trying);
  // but while a spinning wait reads `c` itself, a readiness wait, which leaves the socket to it
  // (and costs an epoll_ctl to arm).
  void arm(Connection* c) {
    if (c->read_pending || c->wait_armed) return;
    if (c->watched) {
      c->wait_armed = true;
      c->socket.async_wait(tcp::socket::wait_read, [this, c](std::error_code ec) {
        c->wait_armed = false;
        if (c->reader_done) return;
        if (ec) return reader_ended(c, ec);
        pump(c);
      });
      return;
    }
    // A pair, not structured bindings: clang 14 cannot capture those in a lambda.
    const std::pair<std::byte*, std::size_t> read = next_read(c);
    c->read_pending = true;
    c->socket.async_read_some(asio::buffer(read.first, read.second),
                              [this, c, read](std::error_code ec, std::size_t got) {
                                c->read_pending = false;
                                if (c->reader_done) return;
                                if (ec) return reader_ended(c, ec);
                                pump(c, took(c, read.first, got, read.second));
                              });
  }

  // Moves bytes from the inbox into the message being read, up to the end of one part of it.
  void take_from_inbox(Connection* c) {
    const std::byte* from = c->inbox.get() + c->inbox_begin;
    const std::size_t have = c->inbox_end - c->inbox_begin;
    if (c->reading == Connection::Reading::header) {
      const std::size_t n = std::min(have, Header::size - c->header_have);
      std::memcpy(c->header.data() + c->header_have, from, n);
      c->inbox_begin += n;
      c->header_have += n;
      if (c->header_have == Header::size) {
        c->header_have = 0;
        on_header(c);
      }
      return;
    }
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(have, c->left));
    if (c->reading != Connection::Reading::skip) {
      std::memcpy(c->target, from, n);
      c->target += n;
    }
    c->inbox_begin += n;
    c->left -= n;
    if (c->left == 0) end_of_payload(c);
  }

  // A whole header is in `c->header`: decides where its payload goes.
  void on_header(Connection* c) {
    const Header h = Header::decode(c->header);
    if (h.magic != message_magic) {
      fail_peer(c->peer, errc::protocol_error, "it sent a corrupt message header");
      return;  // the connection is closed: pump stops
    }
    c->left = h.bytes;
    if ((h.flags & Header::abort_flag) != 0) {
      // The peer gave up on the group and says why; read the reason, then treat it as gone.
      c->discard.resize(std::min<std::uint64_t>(h.bytes, 4000));
      c->left = c->discard.size();
      c->target = c->discard.data();
      c->reading = Connection::Reading::reason;
      if (c->left == 0) end_of_payload(c);
      return;
    }
    c->reading = Connection::Reading::payload;
    route(c, h, /*may_hold=*/true);
  }

  // Decides where the payload of the message whose header `h` was just read goes: into the
  // receive posted for it, skipped (a failed peer, a size mismatch), into a spare buffer until its
  // receive comes (an unexpected message), or, with `may_hold`, nowhere yet: when its peer already
  // has `unexpected_budget` bytes or `unexpected_messages` messages waiting and no receive from it
  // is posted, the message stays in the socket. Then the kernel's buffers fill and TCP stops the
  // sender, which is what bounds the memory a sender that runs ahead can take (a root
  // broadcasting 256 KiB in a loop took 1 GiB, faulting in fresh pages for every message). Any
  // receive posted for the peer resumes it (see post), so a program that receives its messages in
  // another order than they were sent still gets them: with a receive pending, the message is
  // stashed whatever the budget.
  void route(Connection* c, const Header& h, bool may_hold) {
    {
      std::lock_guard lock(mutex_);
      Peer& p = peers_[static_cast<std::size_t>(c->peer)];
      Op* const match = p.receives.find(
          [&](const Op& op) { return op.context == h.context && op.tag == h.tag; });
      if (p.status == Peer::Status::failed) {
        c->reading = Connection::Reading::skip;
      } else if (match != nullptr && match->bytes == h.bytes) {
        Op* op = match;
        p.receives.erase(op);
        op->state = Op::State::active;
        op->connection = c;
        c->reading_into = op;
        c->target = op->recv_data;
      } else if (match != nullptr) {
        // A size mismatch: the receive fails, the payload is skipped so the stream stays in step.
        p.receives.erase(match);
        finish(*match, errc::protocol_error);
        c->reading = Connection::Reading::skip;
      } else if (may_hold && p.receives.empty() &&
                 (p.unexpected_bytes + h.bytes > unexpected_budget ||
                  p.unexpected.size() >= unexpected_messages)) {
        c->held = true;
        return;
      } else {
        c->reading_unexpected = stash(p, h);
        c->reading_to_unexpected = true;
        c->target = c->reading_unexpected->data();
      }
    }
    cv_.notify_all();
    if (c->left == 0) end_of_payload(c);
  }

  // Event loop: a held connection (see route) goes on, as its receive or another one from its
  // peer was posted, a stashed message was taken, or (`force`) its peer or its sending side
  // failed and the reader has to reach the end of the stream.
  void resume(Connection* c, bool force) {
    {
      std::lock_guard lock(mutex_);
      c->resume_posted = false;
      if (!c->held) return;
      c->held = false;
    }
    route(c, Header::decode(c->header), /*may_hold=*/!force);
    if (!c->held) pump(c);
  }

  // Lock held: queues a resume of `c`, if held (see route), with the event loop.
  void queue_resume(Connection* c, bool force) {
    if (!c->held || (c->resume_posted && !force)) return;
    c->resume_posted = true;
    asio::post(io_, [this, c, force] { resume(c, force); });
  }

  // Lock held: the same for every connection to `p`.
  void resume_held(Peer& p) {
    for (Connection* c : p.connections) queue_resume(c, /*force=*/false);
  }

  // The payload (or reason, or skipped bytes) of the current message is all in.
  void end_of_payload(Connection* c) {
    switch (c->reading) {
      case Connection::Reading::payload:
        return on_payload(c, {});
      case Connection::Reading::reason: {
        c->reading = Connection::Reading::header;
        const std::string reason(reinterpret_cast<const char*>(c->discard.data()), c->discard.size());
        // On to the end of the stream (or the close this makes).
        return fail_peer(c->peer, errc::connection_lost, "aborted the group: " + reason);
      }
      default:
        c->reading = Connection::Reading::header;
    }
  }

  // The reading of `c` stopped: a message ended (`ec` clear), or the stream did.
  void on_payload(Connection* c, std::error_code ec) {
    c->reading = Connection::Reading::header;
    {
      std::lock_guard lock(mutex_);
      if (c->reading_into != nullptr) {
        finish(*c->reading_into, ec ? std::error_code(errc::connection_lost) : std::error_code());
        c->reading_into = nullptr;
      } else if (c->reading_to_unexpected) {
        c->reading_to_unexpected = false;
        auto it = c->reading_unexpected;
        if (it->orphaned) {
          drop_unexpected(peers_[static_cast<std::size_t>(c->peer)], it);
        } else if (!ec) {
          it->complete = true;
          if (Op* op = it->claimed_by) {
            // Claimed while arriving: hand it over now (rare, so copying under the lock is fine).
            std::error_code result;
            if (it->size != op->bytes) {
              result = errc::protocol_error;
            } else if (op->bytes != 0) {
              std::memcpy(op->recv_data, it->data(), op->bytes);
            }
            finish(*op, result);
            drop_unexpected(peers_[static_cast<std::size_t>(c->peer)], it);
          }
        }
      }
    }
    cv_.notify_all();
    if (ec) connection_failed(c, ec);
  }

  // The stream of `c` ended or failed (`ec`), or this rank closed it (operation_aborted).
  void reader_ended(Connection* c, std::error_code ec) {
    if (c->reading == Connection::Reading::payload) return on_payload(c, ec);
    connection_failed(c, ec);
  }

  void connection_failed(Connection* c, std::error_code ec) {
    {
      std::lock_guard lock(mutex_);
      c->reader_done = true;
      if (c->broken_send != nullptr) finish(*std::exchange(c->broken_send, nullptr), errc::connection_lost);
    }
    cv_.notify_all();
    if (c->draining) {
      // An aborted group's connection reached its end: now it can close without a reset.
      std::error_code ignored;
      c->socket.close(ignored);
      {
        std::lock_guard lock(mutex_);
        c->draining = false;
        --draining_;
        if (c->broken_send != nullptr) finish(*std::exchange(c->broken_send, nullptr), errc::connection_lost);
        if (c->reading_into != nullptr) finish(*std::exchange(c->reading_into, nullptr), errc::connection_lost);
      }
      cv_.notify_all();
      return;
    }
    if (stopping_ || ec == asio::error::operation_aborted) {
      // Our own close: fail_peer already accounted for it.
      std::lock_guard lock(mutex_);
      if (c->reading_into != nullptr) {
        finish(*c->reading_into, errc::connection_lost);
        c->reading_into = nullptr;
      }
      if (c->broken_send != nullptr) finish(*std::exchange(c->broken_send, nullptr), errc::connection_lost);
      cv_.notify_all();
      return;
    }
    if (ec == asio::error::eof) {
      // A clean end of stream delivers everything sent before it, but the peer's other
      // connections may still carry messages sent earlier: the peer counts as gone only once
      // every connection to it has ended.
      bool last = false;
      {
        std::lock_guard lock(mutex_);
        Peer& p = peers_[static_cast<std::size_t>(c->peer)];
        auto it = std::find(p.connections.begin(), p.connections.end(), c);
        if (it != p.connections.end()) {
          c->send_queue.drain([&](Op& op) { finish(op, errc::connection_lost); });
          if (it - p.connections.begin() < static_cast<std::ptrdiff_t>(p.made)) --p.made;
          p.connections.erase(it);
          std::error_code ignored;
          c->socket.close(ignored);
          last = p.connections.empty();
        }
      }
      cv_.notify_all();
      if (last) fail_peer(c->peer, errc::connection_lost, "closed its connection (exited or died)");
      return;
    }
    fail_peer(c->peer, errc::connection_lost, "lost its connection: " + ec.message() + " (it died, or the network failed)");
  }

  // Event loop: the peer is gone. Close its connections and fail everything pending on it.
  // With `drain`, connections are not closed but only shut for sending (so everything written,
  // the abort reason included, is delivered before the end of the stream) and read to their
  // end: closing a socket with unread data would reset it and drop what is still unsent.
  void fail_peer(int peer, errc code, const std::string& why, bool drain = false) {
    std::vector<Connection*> to_close;
    {
      std::lock_guard lock(mutex_);
      Peer& p = peers_[static_cast<std::size_t>(peer)];
      if (p.status == Peer::Status::failed) return;
      p.status = Peer::Status::failed;
      p.failure = code;
      p.failure_message = why;
      log("lost rank " + std::to_string(peer) + ": " + why);
      auto fail_all = [&](Chain<Op>& q) { q.drain([&](Op& op) { finish(op, code); }); };
      fail_all(p.waiting_sends);
      fail_all(p.receives);
      // Messages that arrived whole stay claimable; half-arrived ones are lost. One that a
      // connection is still reading into stays until that read ends (a draining connection
      // keeps reading), and is dropped then.
      for (auto it = p.unexpected.begin(); it != p.unexpected.end();) {
        if (it->complete) {
          ++it;
          continue;
        }
        if (it->claimed_by != nullptr) finish(*std::exchange(it->claimed_by, nullptr), code);
        const bool being_read = std::any_of(p.connections.begin(), p.connections.end(), [&](Connection* c) {
          return c->reading_to_unexpected && c->reading_unexpected == it;
        });
        if (being_read) {
          it->orphaned = true;
          ++it;
        } else {
          drop_unexpected(p, it++);
        }
      }
      for (Connection* c : p.connections) {
        fail_all(c->send_queue);
        if (c->broken_send != nullptr) finish(*std::exchange(c->broken_send, nullptr), code);
        if (c->held) {
          // Its message is dropped with the peer; the reader goes on to the end of the stream
          // (draining) or to the close below, and ends there.
          c->held = false;
          c->reading = Connection::Reading::skip;
          asio::post(io_, [this, c] { pump(c); });
        }
        to_close.push_back(c);
        if (drain) {
          c->draining = true;
          ++draining_;
        }
      }
      p.connections.clear();
      p.made = 0;
      if (setup_pending()) note_setup_error(code, "lost rank " + std::to_string(peer) + " during set-up: " + why);
    }
    cv_.notify_all();
    for (Connection* c : to_close) {
      std::error_code ignored;
      if (drain) {
        c->socket.shutdown(tcp::socket::shutdown_send, ignored);
        continue;
      }
      c->socket.shutdown(tcp::socket::shutdown_both, ignored);
      c->socket.close(ignored);  // pending handlers complete with operation_aborted
    }
  }

  // ----- helpers (lock held) ------------------------------------------------------------------

  bool setup_pending() const { return made_right_ < expected_right_ || made_left_ < expected_left_; }

  // Keeps the most telling set-up error: a refusal, which names both ends of a mis-wiring, over
  // the loss of a connection, which is often only its consequence (the refusing rank gave up).
  void note_setup_error(errc code, const std::string& text) {
    if (!setup_error_ || (setup_error_->first == errc::connection_lost && code != errc::connection_lost)) {
      setup_error_ = {code, text};
    }
  }

  void setup_failed(int peer, errc code, const std::string& text) {
    {
      std::lock_guard lock(mutex_);
      if (setup_pending()) note_setup_error(code, text);
    }
    cv_.notify_all();
    // After set-up this is an on-demand connection: its peer's operations fail with the reason.
    if (peer >= 0) fail_peer(peer, code, text);
  }

  void finish(Op& op, std::error_code result) {
    op.result = result;
    op.state.store(Op::State::done, std::memory_order_release);
  }

  // Appends a record for an unexpected message of `h.bytes` to `p.unexpected`, reusing a spare
  // record and its buffer when one is large enough (the smallest such), so that steady traffic
  // neither allocates nor faults in fresh pages.
  std::list<Unexpected>::iterator stash(Peer& p, const Header& h) {
    auto best = spare_.end();
    for (auto it = spare_.begin(); it != spare_.end(); ++it) {
      if (it->capacity >= h.bytes && (best == spare_.end() || it->capacity < best->capacity)) best = it;
    }
    if (best == spare_.end() && !spare_.empty()) {
      // None is large enough: the largest is grown, so that the records stay as many as the
      // messages that ever waited at once.
      best = std::max_element(spare_.begin(), spare_.end(), by_capacity);
    }
    if (best == spare_.end()) {
      spare_.emplace_front();
      best = spare_.begin();
    }
    spare_bytes_ -= best->capacity;
    if (best->capacity < h.bytes) {
      best->buffer.reset();  // the old buffer goes before the new one comes
      best->capacity = 0;
      best->buffer.reset(new std::byte[h.bytes]);
      best->capacity = h.bytes;
    }
    best->context = h.context;
    best->tag = h.tag;
    best->size = h.bytes;
    best->complete = false;
    best->orphaned = false;
    best->claimed_by = nullptr;
    p.unexpected.splice(p.unexpected.end(), spare_, best);
    p.unexpected_bytes += h.bytes;
    return std::prev(p.unexpected.end());
  }

  // Returns a record taken from `from` to the spare list; past `spare_limit` bytes of spare
  // buffers or `spare_records` records, it goes back to the system instead (stash looks through
  // every spare record for the best fit, so the list stays short).
  void unstash(std::list<Unexpected>& from, std::list<Unexpected>::iterator it) {
    if (spare_.size() >= spare_records) {
      // Keep the larger buffers: a smaller one is the cheaper to allocate again.
      auto smallest = std::min_element(spare_.begin(), spare_.end(), by_capacity);
      if (smallest->capacity >= it->capacity) {
        from.erase(it);
        return;
      }
      spare_bytes_ -= smallest->capacity;
      spare_.erase(smallest);
    }
    if (spare_bytes_ + it->capacity > spare_limit) {
      from.erase(it);
      return;
    }
    spare_bytes_ += it->capacity;
    spare_.splice(spare_.begin(), from, it);
  }

  static bool by_capacity(const Unexpected& a, const Unexpected& b) noexcept {
    return a.capacity < b.capacity;
  }

  // The same for a record of `p.unexpected`.
  void drop_unexpected(Peer& p, std::list<Unexpected>::iterator it) {
    p.unexpected_bytes -= it->size;
    unstash(p.unexpected, it);
  }

  Op* allocate() {
    if (free_ == nullptr) {
      try {
        pool_.push_back(std::make_unique<Op[]>(64));
      } catch (...) {
        return nullptr;
      }
      for (int i = 0; i < 64; ++i) {
        pool_.back()[i].next_free = free_;
        free_ = &pool_.back()[i];
      }
    }
    Op* op = free_;
    free_ = op->next_free;
    return op;
  }

  void recycle(Op* op) {
    op->state = Op::State::free;
    op->next_free = free_;
    free_ = op;
  }

  // ----- who runs the event loop --------------------------------------------------------------

  // How long a wait polls before it sleeps: as configured, or else 50 us. Measured at n = 2 on
  // 2 cores, 50 us took an 8-byte all_sum from 30 to 21 us.
  static std::chrono::microseconds spin_for(const TcpConfig& config) {
    return config.spin ? *config.spin : std::chrono::microseconds(50);
  }

  // Whether a polling wait yields its core between polls: when this host has fewer cores than
  // ranks on it, so that the rank it waits for can run. At n = 4 on 2 cores a plain 50 us spin
  // took an 8-byte all_sum from 91 to 142 us (the spinning rank holding the core that the rank
  // it waits for needs), and the same spin with a yield between polls to 51 us (3 alternating
  // runs; OpenMPI, which yields the same way when oversubscribed, 94 us).
  static bool yield_for(const TcpConfig& config) {
    if (config.rank < 0 || config.rank >= config.size()) return false;  // validate() reports it
    const auto& mine = config.hosts[static_cast<std::size_t>(config.rank)];
    const auto here = mine.empty() ? std::string() : mine.front().host;
    const auto local = std::count_if(config.hosts.begin(), config.hosts.end(), [&](const auto& list) {
      return !list.empty() && list.front().host == here;
    });
    const auto cores = std::thread::hardware_concurrency();
    return cores != 0 && static_cast<unsigned>(local) > cores;
  }

  static std::int64_t now_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  static bool is_done(const Op* op) noexcept {
    return op->state.load(std::memory_order_acquire) == Op::State::done;
  }

  // The I/O thread: runs the event loop whenever no caller does. It never blocks on the drive
  // mutex (a caller's unlock would then wake it each time); it sleeps instead, until callers have
  // left the loop alone for `park_grace`, so a caller issuing operations back to back finds the
  // loop free and never pays for a hand-over.
  void io_loop() {
    while (!stopping_) {
      const std::int64_t resume = resume_at_.load(std::memory_order_relaxed);
      if (want_drive_.load() == 0 && now_ns() >= resume && drive_mutex_.try_lock()) {
        io_.run_one_for(std::chrono::milliseconds(100));
        drive_mutex_.unlock();
        handed_back();
        continue;
      }
      std::unique_lock lock(park_mutex_);
      const auto until = std::chrono::steady_clock::time_point(std::chrono::nanoseconds(
          std::max(resume, now_ns() + park_grace.count())));
      park_cv_.wait_until(lock, until, [&] { return stopping_.load() || wake_requested_; });
      wake_requested_ = false;
    }
  }

  // After letting go of the event loop: wakes the threads waiting to run it.
  void handed_back() noexcept {
    if (want_drive_.load() == 0) return;
    { std::lock_guard lock(mutex_); }
    cv_.notify_all();
  }

  // Ends the I/O thread's parking early: work that the caller waits for without running the loop
  // itself (a cancel, an abort) is queued.
  void wake_io_thread() noexcept {
    resume_at_.store(0, std::memory_order_relaxed);
    {
      std::lock_guard lock(park_mutex_);
      wake_requested_ = true;
    }
    park_cv_.notify_one();
  }

  // With the drive mutex held: runs the event loop on this thread until `op` is done.
  //
  // While it spins for a small receive, it also reads the connections to the receive's peer
  // itself (see pump): a message then costs the one `recv` that brings it in, not an
  // `epoll_wait` first. The event loop is still polled, for everything else.
  std::error_code drive_until_done(Op* op, Deadline deadline) noexcept {
    using clock = std::chrono::steady_clock;
    // Oversubscribed, a wait polls whatever the size; otherwise only for transfers up to
    // `spin_bytes_limit` (see there).
    const bool spins = yield_ || op->bytes <= spin_bytes_limit;
    const auto spin_end = clock::now() + (spins ? spin_ : std::chrono::microseconds(0));
    std::array<Connection*, 4> watched{};
    std::size_t n_watched = 0;
    if (spin_.count() > 0 && !op->is_send && op->bytes <= direct_send_limit && !is_done(op)) {
      // Connections live as long as the engine, and one closed meanwhile is seen by pump.
      std::lock_guard lock(mutex_);
      for (Connection* c : peers_[static_cast<std::size_t>(op->peer)].connections) {
        if (n_watched == watched.size()) break;
        watched[n_watched++] = c;
        c->watched = true;
      }
    }
    std::error_code result;
    while (!is_done(op)) {
      const auto now = clock::now();
      if (!deadline.is_never() && now >= deadline.when()) {
        result = errc::timed_out;
        break;
      }
      if (now < spin_end) {
        // A connection with an Asio read pending is left to it (pump returns at once); once that
        // read completes, the connection is re-armed with a readiness wait and read from here.
        for (std::size_t i = 0; i < n_watched && !is_done(op); ++i) pump(watched[i]);
        if (!is_done(op)) io_.poll();
        if (yield_ && !is_done(op)) std::this_thread::yield();
        continue;
      }
      const auto slice = now + std::chrono::milliseconds(100);
      io_.run_one_until(deadline.is_never() ? slice : std::min(slice, deadline.when()));
    }
    for (std::size_t i = 0; i < n_watched; ++i) watched[i]->watched = false;
    return result;
  }

  void shutdown() noexcept {
    stopping_ = true;
    {
      std::lock_guard lock(park_mutex_);
      wake_requested_ = true;
    }
    park_cv_.notify_one();
    work_.reset();
    io_.stop();
    if (thread_.joinable()) thread_.join();
    // The I/O thread is gone: close everything from here. Peers see end-of-stream.
    std::error_code ignored;
    for (auto& a : acceptors_) a->close(ignored);
    for (auto& c : connections_) {
      c->socket.shutdown(tcp::socket::shutdown_both, ignored);
      c->socket.close(ignored);
    }
    close_listening_sockets();
  }

  void close_listening_sockets() noexcept {
    for (int fd : config_.listening_sockets) {
      if (fd >= 0) ::close(fd);
    }
    config_.listening_sockets.clear();
  }

  // Declared first so that it is destroyed last, after every socket and timer that uses it.
  asio::io_context io_;
  TcpConfig config_;
  int rank_;
  int size_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<Peer> peers_;
  std::vector<std::unique_ptr<Connection>> connections_;
  std::vector<std::unique_ptr<Op[]>> pool_;
  Op* free_ = nullptr;
  // Sends up to this size are written by the posting thread when their connection is idle.
  static constexpr std::size_t direct_send_limit = std::size_t{64} << 10;
  // Each connection's read-ahead buffer; payloads of `direct_read_min` bytes or more still to
  // come are read straight into their destination instead (at most one inbox's worth of a
  // message is copied). At most `pump_calls` reads per connection before other handlers run.
  static constexpr std::size_t inbox_size = std::size_t{8} << 10;
  static constexpr std::size_t direct_read_min = inbox_size / 2;
  static constexpr int pump_calls = 16;
  // Unexpected-message records not in use, with their buffers (at most `spare_limit` bytes).
  static constexpr std::size_t spare_limit = std::size_t{64} << 20;
  // Messages from one peer waiting in memory for their receives: past this many bytes, its next
  // message stays in the socket until a receive from it is posted (see route). A root
  // broadcasting 256 KiB in a loop to 1 rank (the receiver always behind), with this byte bound
  // alone: 27 us per call with 0, 35 with 4 MiB, 134 with 64 MiB (each buffer is fresh memory
  // at first, and copied once more). 4 MiB still lets ranks that all send before they receive
  // exchange messages of that size plus what the kernel's socket buffers hold.
  static constexpr std::size_t unexpected_budget = std::size_t{4} << 20;
  // The same for the number of messages: a root broadcasting 8 bytes in a loop ran thousands of
  // messages ahead, and every later message then looked through their records.
  static constexpr std::size_t unexpected_messages = 128;
  static constexpr std::size_t spare_records = unexpected_messages;
  std::list<Unexpected> spare_;
  std::size_t spare_bytes_ = 0;
  int draining_ = 0;  // connections shut by abort() and not yet at their end
  std::size_t expected_right_ = 0, expected_left_ = 0, made_right_ = 0, made_left_ = 0;
  std::optional<std::pair<errc, std::string>> setup_error_;
  std::atomic<bool> stopping_{false};
  // Who runs the event loop: whoever holds `drive_mutex_` (see wait and io_loop).
  // While callers keep using the loop, the parked I/O thread wakes once per grace only to find
  // it still in use. At 1 ms those wake-ups cost 4 ranks on 2 cores 7% of an 8-byte all_sum's
  // time (109 vs 101 us); at 10 ms they are gone, and a send posted and never waited on stalls
  // at most that long before the I/O thread writes the rest.
  static constexpr std::chrono::nanoseconds park_grace{std::chrono::milliseconds(10)};
  std::chrono::microseconds spin_ = spin_for(config_);
  // With a core for every rank of the host, a wait for a larger transfer sleeps at once. The
  // spin exists to catch a reply that comes within it, which a transfer this large does not;
  // polling while its bytes stream in slowed them (2 ranks, alternating runs, polling vs
  // sleeping: broadcast 512 KiB 81 vs 68 us, 2 MiB 352 vs 299 us (5 runs); all_sum 1 MiB 306
  // vs 284 us, 16 MiB 5.01 vs 4.42 ms (9 runs)). Oversubscribed, the polling yields between
  // polls and pays even for large transfers (4 ranks on 2 cores, broadcast 4 MiB: 2.30 ms
  // polling, 2.85 sleeping).
  static constexpr std::size_t spin_bytes_limit = std::size_t{256} << 10;
  bool yield_ = yield_for(config_);
  std::mutex drive_mutex_;
  std::atomic<int> want_drive_{0};
  std::atomic<std::int64_t> resume_at_{0};  // steady-clock ns before which the I/O thread parks
  std::mutex park_mutex_;
  std::condition_variable park_cv_;
  bool wake_requested_ = false;
  std::vector<std::unique_ptr<tcp::acceptor>> acceptors_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  std::thread thread_;
};

}  // namespace collie::detail::tcp
