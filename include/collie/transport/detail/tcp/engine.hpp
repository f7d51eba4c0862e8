// The TCP engine behind TcpTransport, composed of its parts: connection set-up and handshake
// (setup.hpp), framing (framing.hpp), matching and flow control (matching.hpp), the operation pool
// (op.hpp) and the progress policy (progress.hpp). What is here joins them: the connections to
// every peer (several to each ring neighbour, one on demand to any other rank), posting, waiting,
// the event-loop side of reading and writing, and the failure rules (a lost connection fails
// everything pending on that peer at once).
#pragma once

#include <asio/io_context.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <sys/socket.h>
#include <unistd.h>

#include "collie/core/call.hpp"
#include "collie/core/deadline.hpp"
#include "collie/core/detail/chain.hpp"
#include "collie/core/detail/text.hpp"
#include "collie/core/error.hpp"
#include "collie/transport/detail/tcp/framing.hpp"
#include "collie/transport/detail/tcp/matching.hpp"
#include "collie/transport/detail/tcp/op.hpp"
#include "collie/transport/detail/tcp/progress.hpp"
#include "collie/transport/detail/tcp/setup.hpp"
#include "collie/transport/detail/tcp/wire.hpp"
#include "collie/transport/tcp_config.hpp"

namespace collie::detail::tcp {

// One established connection, handshake done.
struct Connection {
  explicit Connection(asio::io_context& io) : socket(io) {}
  tcp::socket socket;
  int peer = -1;
  int index = 0;
  std::string address;        // the remote "ip:port", for messages
  Chain<Op> send_queue;       // sends waiting for it, in posting order
  bool writing = false;       // a message (or the abort reason) is being written
  Op* write_op = nullptr;     // the one being written, and how far
  std::size_t written = 0;
  const Op* abort_frame = nullptr;  // abort(): written before anything else queued
  FrameReader reader;
  bool read_pending = false;  // an Asio read is pending: it, and nobody else, reads the socket
  bool wait_armed = false;    // a readiness wait is pending with the event loop
  bool watched = false;       // a spinning wait reads this connection itself
  Op* reading_into = nullptr;
  UnexpectedList::iterator reading_unexpected;
  bool reading_to_unexpected = false;
  // A message whose header is in the reader waits, unread, in the socket (see route): its peer
  // has as many messages waiting in memory for their receives as it may. Set and cleared under
  // the engine mutex; `resume_posted`: a resume is queued with the event loop.
  bool held = false;
  bool resume_posted = false;
  std::vector<std::byte> reason;  // an abort reason being read
  Op* broken_send = nullptr;      // a send whose write failed; the reader decides its fate
  bool draining = false;          // shut for sending by abort(), read until the end
  bool reader_done = false;       // the read loop has ended (guarded by the engine mutex)
};

struct Peer {
  enum class Status : std::uint8_t { unconnected, connecting, ready, failed };
  Status status = Status::unconnected;
  std::vector<Connection*> connections;  // established; those this rank made first
  std::size_t made = 0;                  // how many of `connections` this rank made
  Chain<Op> waiting_sends;               // posted before any connection existed
  PeerQueues queues;
  std::error_code failure;
  std::string failure_message;
};

class Engine {
 public:
  using Connection = ::collie::detail::tcp::Connection;

  // Connects to the ring neighbours (and accepts from them) before returning; throws
  // collie::Error naming the step, the peer and the address when that fails.
  explicit Engine(TcpConfig config)
      : config_(std::move(config)), rank_(config_.rank), size_(config_.size()),
        peers_(static_cast<std::size_t>(std::max(size_, 0))), setup_(*this, io_, config_),
        progress_(io_, config_, mutex_, cv_) {
    try {
      setup_.validate();
      if (size_ > 1) {
        // Before anything is accepted: a refused handshake fails the set-up only while it runs.
        expected_right_ = connections_per_neighbour();
        expected_left_ = connections_per_neighbour();
      }
      setup_.listen();
    } catch (...) {
      // The listening sockets handed over (a rendezvous made them) are ours to close, also when
      // the set-up stops before they became acceptors.
      close_listening_sockets();
      throw;
    }
    progress_.start();
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
    Op* op = ops_.allocate();
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
    if (p.status == Peer::Status::failed && (is_send || !p.queues.has_complete(context, tag))) {
      op->finish(p.failure);
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
      } else if (Connection* c = connection_for(*op); !c->writing && bytes <= direct_send_limit) {
        send_now(*c, *op);
      } else {
        enqueue_send(*op);
      }
      return op;
    }
    // A receive: take a message that already arrived, or wait in the peer's queue.
    auto it = p.queues.find_unexpected(context, tag);
    resume_held(p);  // a receive from the peer, or room for its next message
    if (it == p.queues.unexpected.end()) {
      p.queues.receives.push_back(op);
      if (p.connections.empty()) need_connection(peer);
      return op;
    }
    if (!it->complete) {
      it->claimed_by = op;  // the reader hands it over when the payload is in
      return op;
    }
    UnexpectedList taken;  // off every list, so nobody else reaches it while unlocked
    p.queues.unexpected_bytes -= it->size;
    taken.splice(taken.begin(), p.queues.unexpected, it);
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
    buffers_.keep(taken, taken.begin());
    op->finish(result);
    return op;
  }

  // Blocks until `op` is done or the deadline passes (then it stays posted). The waiting thread
  // runs the I/O itself (see Progress): a reply then wakes this thread directly.
  std::error_code wait(Op* op, Deadline deadline) noexcept {
    if (op->is_done()) return op->result;
    if (deadline.expired()) return look(op);
    std::unique_lock drive = progress_.take_over(deadline, [&] { return op->is_done(); });
    if (drive.owns_lock()) {
      const std::error_code ec = drive_until_done(op, deadline);
      progress_.let_go(drive);
      if (ec) return ec;
    }
    if (!op->is_done()) return errc::timed_out;
    return op->result;
  }

  // A wait whose deadline has already passed (Request::ready asks this way): runs what is ready
  // on the event loop, unless another thread runs it, and returns.
  std::error_code look(Op* op) noexcept {
    progress_.poll_once();
    return op->is_done() ? op->result : std::error_code(errc::timed_out);
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
      bool found = drop(p.waiting_sends) || drop(p.queues.receives);
      for (Connection* c : p.connections) {
        if (found) break;
        found = drop(c->send_queue);
      }
      for (auto& u : p.queues.unexpected) {
        if (u.claimed_by == op) u.claimed_by = nullptr;
      }
      op->state = Op::State::done;
      op->result = errc::aborted;
    }
    if (op->state == Op::State::active && op->connection != nullptr &&
        op->connection->broken_send == op) {
      // Its write failed already: nothing touches its memory any more.
      op->connection->broken_send = nullptr;
      op->finish(errc::aborted);
    }
    if (op->state == Op::State::active) {
      Connection* c = op->connection;
      lock.unlock();
      asio::post(io_, Task{this, Task::cut, c, nullptr});
      progress_.wake_io_thread();
      lock.lock();
      cv_.wait(lock, [&] { return op->state == Op::State::done; });
    }
    ops_.recycle(op);
  }

  // Sends the reason to every peer over a connection that is not in the middle of a message,
  // then closes every connection: peers fail at once, and can say why. Waits (briefly) until the
  // event loop has done it, so that a process exiting right after still tells its peers.
  void abort(std::string_view reason) noexcept {
    {
      std::lock_guard lock(mutex_);
      if (!abort_) {
        try {
          abort_ = std::make_unique<AbortState>(io_);
          abort_->text.assign(reason.substr(0, 4000));
          Header h;
          h.flags = Header::abort_flag;
          h.bytes = abort_->text.size();
          h.encode_into(abort_->frame.header);
          abort_->frame.send_data = reinterpret_cast<const std::byte*>(abort_->text.data());
          abort_->frame.bytes = abort_->text.size();
          abort_->frame.abort_frame = true;
        } catch (...) {
          abort_.reset();
        }
        asio::post(io_, Task{this, abort_ ? Task::abort_begin : Task::abort_without_reason, nullptr, nullptr});
      }
    }
    progress_.wake_io_thread();
    // Until the reason is written and the peers have closed their ends (they do as soon as they
    // read it), within a bound: a peer that stopped reading must not hold this up.
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, std::chrono::seconds(2),
                 [&] { return abort_ == nullptr || (abort_->finished && draining_ == 0); });
  }

  std::string failure_reason(int peer) {
    std::lock_guard lock(mutex_);
    return peers_[static_cast<std::size_t>(peer)].failure_message;
  }

  // ----- for the set-up -------------------------------------------------------------------

  bool stopping() const noexcept { return stopping_.load(); }

  // Event loop: a handshaken connection joins its peer.
  void connected(std::unique_ptr<Connection> owned, bool initiated) {
    Connection* c = owned.get();
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
      if (c->index != on_demand_index) (initiated ? made_right_ : made_left_) += 1;
      if (c->index == on_demand_index || p.status == Peer::Status::ready) p.status = Peer::Status::ready;
      // Sends posted before the connection existed go out now, in posting order.
      while (Op* op = p.waiting_sends.pop_front()) enqueue_send(*op);
    }
    cv_.notify_all();
    pump(c);
  }

  // The set-up of connections to `peer` (-1: an incoming one of unknown standing) failed.
  void setup_failed(int peer, errc code, const std::string& text) {
    {
      std::lock_guard lock(mutex_);
      if (setup_pending()) note_setup_error(code, text);
    }
    cv_.notify_all();
    // After set-up this is an on-demand connection: its peer's operations fail with the reason.
    if (peer >= 0) fail_peer(peer, code, text);
  }

 private:
  // Work queued for the event loop, and the completions of its reads, waits and writes: a few
  // small handler types keep the code every program compiles small.
  struct Task {
    enum Kind : std::uint8_t { write_next, write_rest, pump, resume, resume_forced, cut, abort_begin, abort_without_reason, noop };
    Engine* engine;
    Kind kind;
    Connection* c;
    Op* op;
    void operator()() const { engine->run(*this); }
  };
  struct ReadDone {
    Engine* engine;
    Connection* c;
    std::byte* into;
    std::size_t want;
    void operator()(const std::error_code& ec, std::size_t got) const { engine->read_done(*this, ec, got); }
  };
  struct Ready {
    Engine* engine;
    Connection* c;
    bool writing;
    void operator()(const std::error_code& ec) const { engine->ready(*this, ec); }
  };
  struct AbortTimeout {
    Engine* engine;
    void operator()(const std::error_code&) const { engine->abort_close(); }
  };

  struct AbortState {
    explicit AbortState(asio::io_context& io) : timer(io) {}
    Op frame;              // the reason, as a message with the abort flag
    std::string text;
    int pending = 0;       // connections still writing it
    bool closed = false;
    bool finished = false;  // guarded by the engine mutex
    asio::steady_timer timer;
  };

  void run(const Task& t) {
    switch (t.kind) {
      case Task::write_next: return write_next(t.c);
      case Task::write_rest: return write_rest(t.c);
      case Task::pump: return pump(t.c);
      case Task::resume: return resume(t.c, false);
      case Task::resume_forced: return resume(t.c, true);
      case Task::cut: {
        fail_peer(t.c->peer, errc::connection_lost,
                  "had a transfer cancelled mid-message, so its connection was closed");
        // Also when the peer had failed already (a draining connection): the transfer's
        // completion then comes, with operation_aborted.
        std::error_code ignored;
        t.c->socket.close(ignored);
        return;
      }
      case Task::abort_begin: return abort_begin();
      case Task::abort_without_reason:
        for (int peer = 0; peer < size_; ++peer) fail_peer(peer, errc::connection_lost, "this rank aborted the group");
        return;
      case Task::noop: return;
    }
  }

  // ----- set-up --------------------------------------------------------------------------------

  std::size_t connections_per_neighbour() const {
    return config_.hosts[static_cast<std::size_t>(rank_)].size();
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
      asio::post(io_, Connect{this, right, static_cast<std::uint16_t>(i)});
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
        missing = concat({"connected ", number(made_right_), " of ", number(expected_right_),
                          " connections to rank ", number(right), " (", address_of(right), ")"});
      }
      if (made_left_ < expected_left_) {
        missing += concat({missing.empty() ? "" : "; ", "accepted ", number(made_left_), " of ",
                           number(expected_left_), " connections from rank ", number(left)});
      }
      lock.unlock();
      fail_setup(errc::timed_out,
                 concat({"connect: timed out after ",
                         number(static_cast<std::int64_t>(config_.connect_timeout.count())), " ms: ",
                         missing, ". Are all ranks started, with the same hostfile?"}));
    }
    peers_[static_cast<std::size_t>(right)].status = Peer::Status::ready;
    peers_[static_cast<std::size_t>(left)].status = Peer::Status::ready;
    if (config_.verbose) std::fprintf(stderr, "[collie ring] rank %d: connected to both neighbours\n", rank_);
  }

  struct Connect {
    Engine* engine;
    int peer;
    std::uint16_t index;
    void operator()() const { engine->setup_.connect(peer, index); }
  };

  [[noreturn]] void fail_setup(errc code, const std::string& what) const {
    throw Error(code, concat({"collie[tcp] rank ", number(rank_), ": ", what}));
  }

  // Lock held: a send or receive needs a connection to a non-neighbour. The lower rank connects
  // (once, on first need on either side), the higher rank waits for it.
  void need_connection(int peer) {
    Peer& p = peers_[static_cast<std::size_t>(peer)];
    if (p.status != Peer::Status::unconnected) return;
    p.status = Peer::Status::connecting;
    if (rank_ < peer) asio::post(io_, Connect{this, peer, on_demand_index});
  }

  bool setup_pending() const { return made_right_ < expected_right_ || made_left_ < expected_left_; }

  // Keeps the most telling set-up error: a refusal, which names both ends of a mis-wiring, over
  // the loss of a connection, which is often only its consequence (the refusing rank gave up).
  void note_setup_error(errc code, const std::string& text) {
    if (!setup_error_ || (setup_error_->first == errc::connection_lost && code != errc::connection_lost)) {
      setup_error_ = {code, text};
    }
  }

  // ----- writing -------------------------------------------------------------------------------

  // Lock held: the connection a send goes on. Equal (context, tag) always take the same
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

  // Lock held: puts a send on its connection's queue, for the event loop.
  void enqueue_send(Op& op) {
    Connection* c = connection_for(op);
    op.connection = c;
    c->send_queue.push_back(&op);
    if (!c->writing) {
      c->writing = true;
      asio::post(io_, Task{this, Task::write_next, c, nullptr});
    }
  }

  // Lock held, from the posting thread: writes a small send on an idle connection at once,
  // without a round through the event loop (a wake-up, if another thread runs it). The system
  // call is made under the lock, which is what keeps the socket open meanwhile (sockets are
  // closed only after their peer is marked failed under the lock), so only sends up to
  // `direct_send_limit` go this way. Whatever the kernel does not take at once (a full socket
  // buffer, an error) the event loop finishes, as for any other send.
  void send_now(Connection& c, Op& op) {
    op.connection = &c;
    op.state = Op::State::active;
    int error = 0;
    const long sent = write_message(c.socket.native_handle(), op.header, op.send_data, op.bytes, 0, error);
    if (sent == static_cast<long>(Header::size + op.bytes)) {
      op.finish({});
      return;
    }
    c.writing = true;
    c.write_op = &op;
    c.written = sent > 0 ? static_cast<std::size_t>(sent) : 0;
    asio::post(io_, Task{this, Task::write_rest, &c, nullptr});
  }

  // Event loop: starts the next message queued on `c` (the abort reason first), or goes idle.
  void write_next(Connection* c) {
    {
      std::lock_guard lock(mutex_);
      if (c->abort_frame != nullptr) {
        c->write_op = const_cast<Op*>(std::exchange(c->abort_frame, nullptr));
      } else if (Op* op = c->send_queue.pop_front()) {
        op->state = Op::State::active;
        c->write_op = op;
      } else {
        c->writing = false;
        return;
      }
      c->written = 0;
    }
    write_rest(c);
  }

  // Event loop: writes what is left of `c->write_op`, then what is queued after it; waits for
  // the socket when it is full.
  void write_rest(Connection* c) {
    for (;;) {
      Op* op = c->write_op;
      const std::size_t total = Header::size + op->bytes;
      int error = 0;
      while (c->written < total) {
        const long sent = write_message(c->socket.native_handle(), op->header, op->send_data,
                                        op->bytes, c->written, error);
        if (sent < 0) return write_failed(c, op);
        if (sent == 0) {
          c->socket.async_wait(tcp::socket::wait_write, Ready{this, c, true});
          return;
        }
        c->written += static_cast<std::size_t>(sent);
      }
      if (op->abort_frame) {
        abort_written();
        return;  // nothing more goes out on an aborting connection
      }
      {
        std::lock_guard lock(mutex_);
        op->finish({});
        Op* next = nullptr;
        if (c->abort_frame != nullptr) {
          next = const_cast<Op*>(std::exchange(c->abort_frame, nullptr));
        } else if ((next = c->send_queue.pop_front()) != nullptr) {
          next->state = Op::State::active;
        } else {
          c->writing = false;
        }
        c->write_op = next;
        c->written = 0;
      }
      cv_.notify_all();
      if (c->write_op == nullptr) return;
    }
  }

  // A write failed: the connection is left to its reader, which fails the peer when the stream
  // ends; whatever the peer sent before the connection broke (its reason for aborting, say) is
  // still read. Nothing more is written here.
  void write_failed(Connection* c, Op* op) {
    if (op->abort_frame) {
      abort_written();
      return;
    }
    {
      std::lock_guard lock(mutex_);
      Peer& p = peers_[static_cast<std::size_t>(c->peer)];
      if (p.status == Peer::Status::failed) {
        op->finish(p.failure);
      } else if (c->reader_done) {
        op->finish(errc::connection_lost);
      } else {
        c->broken_send = op;              // failed with the peer, once the reader knows why
        queue_resume(c, /*force=*/true);  // a held reader must go on to the end to know it
      }
    }
    cv_.notify_all();
  }

  // ----- reading -----------------------------------------------------------------------------

  // Reads what connection `c` has, as far as it goes without blocking, into the messages it
  // carries, then arms a read for the rest (see arm). Runs on whoever runs the event loop: a
  // read's completion, a queued task, or a thread that spins for a small receive and reads its
  // peer's connections itself (drive_until_done), which spares the round through epoll. A
  // socket has one reader at a time: nothing else reads while an Asio read is pending.
  // `drained`: the socket is empty or most likely so, and the next read is left to arm.
  void pump(Connection* c, bool drained = false) {
    if (c->read_pending) return;
    for (int calls = 0;;) {
      if (c->reader_done) return;
      if (!c->socket.is_open()) return reader_ended(c, asio::error::operation_aborted);
      if (c->held) return;  // resumed by a receive from the peer (see route)
      if (c->reader.has_inbox_bytes()) {
        handle(c, c->reader.take_from_inbox());
        continue;
      }
      if (drained) return arm(c);
      if (calls++ == pump_calls) {
        // A fast sender can keep this socket full: let the loop's other handlers run.
        asio::post(io_, Task{this, Task::pump, c, nullptr});
        return;
      }
      const auto [into, want] = c->reader.next_read();
      ssize_t got;
      do {
        got = ::recv(c->socket.native_handle(), into, want, MSG_DONTWAIT);
      } while (got < 0 && errno == EINTR);
      if (got == 0) return reader_ended(c, asio::error::eof);
      if (got < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return arm(c);
        return reader_ended(c, std::error_code(errno, asio::error::get_system_category()));
      }
      handle(c, c->reader.took(into, static_cast<std::size_t>(got), want, drained));
    }
  }

  // Has the event loop go on reading `c` once it has something: an Asio read, which costs no
  // system call to arm after a short read (Asio tries the socket once, then waits for epoll);
  // but while a spinning wait reads `c` itself, a readiness wait, which leaves the socket to it.
  void arm(Connection* c) {
    if (c->read_pending || c->wait_armed) return;
    if (c->watched) {
      c->wait_armed = true;
      c->socket.async_wait(tcp::socket::wait_read, Ready{this, c, false});
      return;
    }
    const auto [into, want] = c->reader.next_read();
    c->read_pending = true;
    c->socket.async_read_some(asio::buffer(into, want), ReadDone{this, c, into, want});
  }

  void read_done(const ReadDone& r, const std::error_code& ec, std::size_t got) {
    Connection* c = r.c;
    c->read_pending = false;
    if (c->reader_done) return;
    if (ec) return reader_ended(c, ec);
    bool drained = false;
    handle(c, c->reader.took(r.into, got, r.want, drained));
    pump(c, drained);
  }

  void ready(const Ready& r, const std::error_code& ec) {
    Connection* c = r.c;
    if (r.writing) {
      if (ec) return write_failed(c, c->write_op);
      return write_rest(c);
    }
    c->wait_armed = false;
    if (c->reader_done) return;
    if (ec) return reader_ended(c, ec);
    pump(c);
  }

  void handle(Connection* c, FrameReader::Event event) {
    if (event == FrameReader::Event::header) return on_header(c);
    if (event == FrameReader::Event::end) end_of_part(c);
  }

  // A whole header is in the reader: decides where its payload goes.
  void on_header(Connection* c) {
    const Header h = Header::decode(c->reader.header());
    if (h.magic != message_magic) {
      fail_peer(c->peer, errc::protocol_error, "it sent a corrupt message header");
      return;  // the connection is closed: pump stops
    }
    if ((h.flags & Header::abort_flag) != 0) {
      // The peer gave up on the group and says why; read the reason, then treat it as gone.
      c->reason.resize(static_cast<std::size_t>(std::min<std::uint64_t>(h.bytes, 4000)));
      c->reader.expect(FrameReader::Part::reason, c->reason.data(), c->reason.size());
      if (c->reason.empty()) end_of_part(c);
      return;
    }
    route_payload(c, h, /*may_hold=*/true);
  }

  // Decides where the payload of the message whose header `h` was just read goes (matching.hpp's
  // `route`): into its receive, skipped, into a spare buffer, or, held, nowhere yet.
  void route_payload(Connection* c, const Header& h, bool may_hold) {
    std::byte* target = nullptr;
    FrameReader::Part part = FrameReader::Part::payload;
    {
      std::lock_guard lock(mutex_);
      Peer& p = peers_[static_cast<std::size_t>(c->peer)];
      const Routing routing = route(p.queues, h, p.status == Peer::Status::failed, may_hold);
      switch (routing.route) {
        case Route::skip:
          part = FrameReader::Part::skip;
          break;
        case Route::deliver:
          p.queues.receives.erase(routing.op);
          routing.op->state = Op::State::active;
          routing.op->connection = c;
          c->reading_into = routing.op;
          target = routing.op->recv_data;
          break;
        case Route::mismatch:
          // The receive fails; the payload is skipped so the stream stays in step.
          p.queues.receives.erase(routing.op);
          routing.op->finish(errc::protocol_error);
          part = FrameReader::Part::skip;
          break;
        case Route::hold:
          c->held = true;
          return;
        case Route::stash:
          try {
            c->reading_unexpected = buffers_.stash(p.queues, h);
          } catch (const std::bad_alloc&) {
            part = FrameReader::Part::skip;  // lost: its receive fails with the peer below
            break;
          }
          c->reading_to_unexpected = true;
          target = c->reading_unexpected->data();
          break;
      }
    }
    cv_.notify_all();
    c->reader.expect(part, target, h.bytes);
    if (h.bytes == 0) end_of_part(c);
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
    route_payload(c, Header::decode(c->reader.header()), /*may_hold=*/!force);
    if (!c->held) pump(c);
  }

  // Lock held: queues a resume of `c`, if held, with the event loop.
  void queue_resume(Connection* c, bool force) {
    if (!c->held || (c->resume_posted && !force)) return;
    c->resume_posted = true;
    asio::post(io_, Task{this, force ? Task::resume_forced : Task::resume, c, nullptr});
  }

  // Lock held: the same for every connection to `p`.
  void resume_held(Peer& p) {
    for (Connection* c : p.connections) queue_resume(c, /*force=*/false);
  }

  // The payload (or reason, or skipped bytes) of the current message is all in.
  void end_of_part(Connection* c) {
    switch (c->reader.part()) {
      case FrameReader::Part::payload:
        return on_payload(c, {});
      case FrameReader::Part::reason: {
        c->reader.next_header();
        const std::string reason(reinterpret_cast<const char*>(c->reason.data()), c->reason.size());
        // On to the end of the stream (or the close this makes).
        return fail_peer(c->peer, errc::connection_lost, "aborted the group: " + reason);
      }
      default:
        c->reader.next_header();
    }
  }

  // The payload being read ended (`ec` clear), or the stream did.
  void on_payload(Connection* c, std::error_code ec) {
    c->reader.next_header();
    {
      std::lock_guard lock(mutex_);
      if (c->reading_into != nullptr) {
        std::exchange(c->reading_into, nullptr)->finish(ec ? std::error_code(errc::connection_lost) : std::error_code());
      } else if (c->reading_to_unexpected) {
        c->reading_to_unexpected = false;
        auto it = c->reading_unexpected;
        Peer& p = peers_[static_cast<std::size_t>(c->peer)];
        if (it->orphaned) {
          buffers_.release(p.queues, it);
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
            op->finish(result);
            buffers_.release(p.queues, it);
          }
        }
      }
    }
    cv_.notify_all();
    if (ec) connection_failed(c, ec);
  }

  // The stream of `c` ended or failed (`ec`), or this rank closed it (operation_aborted).
  void reader_ended(Connection* c, std::error_code ec) {
    if (c->reader.part() == FrameReader::Part::payload) return on_payload(c, ec);
    connection_failed(c, ec);
  }

  void connection_failed(Connection* c, std::error_code ec) {
    {
      std::lock_guard lock(mutex_);
      c->reader_done = true;
      if (c->broken_send != nullptr) std::exchange(c->broken_send, nullptr)->finish(errc::connection_lost);
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
        if (c->broken_send != nullptr) std::exchange(c->broken_send, nullptr)->finish(errc::connection_lost);
        if (c->reading_into != nullptr) std::exchange(c->reading_into, nullptr)->finish(errc::connection_lost);
      }
      cv_.notify_all();
      return;
    }
    if (stopping_ || ec == asio::error::operation_aborted) {
      // Our own close: fail_peer already accounted for it.
      std::lock_guard lock(mutex_);
      if (c->reading_into != nullptr) std::exchange(c->reading_into, nullptr)->finish(errc::connection_lost);
      if (c->broken_send != nullptr) std::exchange(c->broken_send, nullptr)->finish(errc::connection_lost);
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
          c->send_queue.drain([&](Op& op) { op.finish(errc::connection_lost); });
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
    fail_peer(c->peer, errc::connection_lost,
              concat({"lost its connection: ", ec.message(), " (it died, or the network failed)"}));
  }

  // Event loop: the peer is gone. Closes its connections and fails everything pending on it.
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
      if (config_.verbose) std::fprintf(stderr, "[collie ring] rank %d: lost rank %d: %s\n", rank_, peer, why.c_str());
      auto fail_all = [&](Chain<Op>& q) { q.drain([&](Op& op) { op.finish(code); }); };
      fail_all(p.waiting_sends);
      fail_all(p.queues.receives);
      // Messages that arrived whole stay claimable; half-arrived ones are lost. One that a
      // connection is still reading into stays until that read ends (a draining connection
      // keeps reading), and is dropped then.
      for (auto it = p.queues.unexpected.begin(); it != p.queues.unexpected.end();) {
        if (it->complete) {
          ++it;
          continue;
        }
        if (it->claimed_by != nullptr) std::exchange(it->claimed_by, nullptr)->finish(code);
        const bool being_read = std::any_of(p.connections.begin(), p.connections.end(), [&](Connection* c) {
          return c->reading_to_unexpected && c->reading_unexpected == it;
        });
        if (being_read) {
          it->orphaned = true;
          ++it;
        } else {
          buffers_.release(p.queues, it++);
        }
      }
      for (Connection* c : p.connections) {
        fail_all(c->send_queue);
        if (c->broken_send != nullptr) std::exchange(c->broken_send, nullptr)->finish(code);
        if (c->held) {
          // Its message is dropped with the peer; the reader goes on to the end of the stream
          // (draining) or to the close below, and ends there.
          c->held = false;
          c->reader.expect(FrameReader::Part::skip, nullptr, Header::decode(c->reader.header()).bytes);
          asio::post(io_, Task{this, Task::pump, c, nullptr});
        }
        to_close.push_back(c);
        if (drain) {
          c->draining = true;
          ++draining_;
        }
      }
      p.connections.clear();
      p.made = 0;
      if (setup_pending()) {
        note_setup_error(code, concat({"lost rank ", number(peer), " during set-up: ", why}));
      }
    }
    cv_.notify_all();
    for (Connection* c : to_close) {
      std::error_code ignored;
      if (drain) {
        c->socket.shutdown(tcp::socket::shutdown_send, ignored);
        continue;
      }
      c->socket.shutdown(tcp::socket::shutdown_both, ignored);
      c->socket.close(ignored);  // pending reads and waits complete with operation_aborted
    }
  }

  // ----- abort ---------------------------------------------------------------------------------

  // Event loop: the reason goes to every peer on one of its connections, after the message
  // being written there (a segment, so soon); idle connections write it at once.
  void abort_begin() {
    std::vector<Connection*> idle;
    {
      std::lock_guard lock(mutex_);
      for (auto& p : peers_) {
        if (p.status == Peer::Status::failed || p.connections.empty()) continue;
        Connection* c = p.connections.front();
        ++abort_->pending;
        if (c->writing) {
          c->abort_frame = &abort_->frame;
        } else {
          c->writing = true;
          c->write_op = &abort_->frame;
          c->written = 0;
          idle.push_back(c);
        }
      }
    }
    if (abort_->pending == 0) return abort_close();
    for (Connection* c : idle) write_rest(c);
    // A peer that stopped reading must not hold the abort up.
    abort_->timer.expires_after(std::chrono::milliseconds(1000));
    abort_->timer.async_wait(AbortTimeout{this});
  }

  void abort_written() {
    if (--abort_->pending == 0) abort_close();
  }

  // Every connection shut (and read to its end), once.
  void abort_close() {
    if (abort_->closed) return;
    abort_->closed = true;
    for (int peer = 0; peer < size_; ++peer) {
      fail_peer(peer, errc::connection_lost, "this rank aborted the group", /*drain=*/true);
    }
    {
      std::lock_guard lock(mutex_);
      abort_->finished = true;
    }
    cv_.notify_all();
  }

  // ----- progress ------------------------------------------------------------------------------

  // With the right to run the event loop: runs it on this thread until `op` is done.
  //
  // While it spins for a small receive, it also reads the connections to the receive's peer
  // itself (see pump): a message then costs the one `recv` that brings it in, not an
  // `epoll_wait` first. The event loop is still polled, for everything else.
  std::error_code drive_until_done(Op* op, Deadline deadline) noexcept {
    using clock = std::chrono::steady_clock;
    const auto spin = progress_.spin_for(op->bytes);
    const auto spin_end = clock::now() + spin;
    std::array<Connection*, 4> watched{};
    std::size_t n_watched = 0;
    if (spin.count() > 0 && !op->is_send && op->bytes <= direct_send_limit && !op->is_done()) {
      // Connections live as long as the engine, and one closed meanwhile is seen by pump.
      std::lock_guard lock(mutex_);
      for (Connection* c : peers_[static_cast<std::size_t>(op->peer)].connections) {
        if (n_watched == watched.size()) break;
        watched[n_watched++] = c;
        c->watched = true;
      }
    }
    std::error_code result;
    while (!op->is_done()) {
      const auto now = clock::now();
      if (!deadline.is_never() && now >= deadline.when()) {
        result = errc::timed_out;
        break;
      }
      if (now < spin_end) {
        // A connection with an Asio read pending is left to it (pump returns at once); once that
        // read completes, the connection is re-armed with a readiness wait and read from here.
        for (std::size_t i = 0; i < n_watched && !op->is_done(); ++i) pump(watched[i]);
        if (!op->is_done()) io_.poll();
        progress_.between_polls(op->is_done());
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
    progress_.stop();
    // The I/O thread is gone: close everything from here. Peers see end-of-stream.
    setup_.close();
    std::error_code ignored;
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
  OpPool ops_;
  UnexpectedBuffers buffers_;
  // Sends up to this size are written by the posting thread when their connection is idle.
  static constexpr std::size_t direct_send_limit = std::size_t{64} << 10;
  // At most this many reads per connection before other handlers run.
  static constexpr int pump_calls = 16;
  int draining_ = 0;  // connections shut by abort() and not yet at their end
  std::size_t expected_right_ = 0, expected_left_ = 0, made_right_ = 0, made_left_ = 0;
  std::optional<std::pair<errc, std::string>> setup_error_;
  std::atomic<bool> stopping_{false};
  std::unique_ptr<AbortState> abort_;
  Setup<Engine, Connection> setup_;
  Progress progress_;  // last: its I/O thread runs once everything else exists
};

}  // namespace collie::detail::tcp
