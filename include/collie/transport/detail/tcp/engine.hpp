// The TCP engine behind TcpTransport, composed of its parts: connection set-up and handshake
// (setup.hpp), framing (framing.hpp), matching and flow control (matching.hpp), the operation pool
// (op.hpp) and the progress policy (progress.hpp). What is here joins them: the connections to
// every peer (several to each ring neighbour, one on demand to any other rank), posting, waiting,
// and the failure rules (a lost connection fails everything pending on that peer at once). The
// event-loop side of reading and writing is declared here and defined in engine_io.hpp.
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
  Connection* connection_for(const Op& op) const;

  // Lock held: puts a send on its connection's queue, for the event loop.
  void enqueue_send(Op& op);

  // Lock held, from the posting thread: writes a small send on an idle connection at once,
  // without a round through the event loop (a wake-up, if another thread runs it). The system
  // call is made under the lock, which is what keeps the socket open meanwhile (sockets are
  // closed only after their peer is marked failed under the lock), so only sends up to
  // `direct_send_limit` go this way. Whatever the kernel does not take at once (a full socket
  // buffer, an error) the event loop finishes, as for any other send.
  void send_now(Connection& c, Op& op);

  // Event loop: starts the next message queued on `c` (the abort reason first), or goes idle.
  void write_next(Connection* c);

  // Event loop: writes what is left of `c->write_op`, then what is queued after it; waits for
  // the socket when it is full.
  void write_rest(Connection* c);

  // A write failed: the connection is left to its reader, which fails the peer when the stream
  // ends; whatever the peer sent before the connection broke (its reason for aborting, say) is
  // still read. Nothing more is written here.
  void write_failed(Connection* c, Op* op);

  // ----- reading -----------------------------------------------------------------------------

  // Reads what connection `c` has, as far as it goes without blocking, into the messages it
  // carries, then arms a read for the rest (see arm). Runs on whoever runs the event loop: a
  // read's completion, a queued task, or a thread that spins for a small receive and reads its
  // peer's connections itself (drive_until_done), which spares the round through epoll. A
  // socket has one reader at a time: nothing else reads while an Asio read is pending.
  // `drained`: the socket is empty or most likely so, and the next read is left to arm.
  void pump(Connection* c, bool drained = false);

  // Has the event loop go on reading `c` once it has something: an Asio read, which costs no
  // system call to arm after a short read (Asio tries the socket once, then waits for epoll);
  // but while a spinning wait reads `c` itself, a readiness wait, which leaves the socket to it.
  void arm(Connection* c);

  void read_done(const ReadDone& r, const std::error_code& ec, std::size_t got);

  void ready(const Ready& r, const std::error_code& ec);

  void handle(Connection* c, FrameReader::Event event);

  // A whole header is in the reader: decides where its payload goes.
  void on_header(Connection* c);

  // Decides where the payload of the message whose header `h` was just read goes (matching.hpp's
  // `route`): into its receive, skipped, into a spare buffer, or, held, nowhere yet.
  void route_payload(Connection* c, const Header& h, bool may_hold);

  // Event loop: a held connection (see route) goes on, as its receive or another one from its
  // peer was posted, a stashed message was taken, or (`force`) its peer or its sending side
  // failed and the reader has to reach the end of the stream.
  void resume(Connection* c, bool force);

  // Lock held: queues a resume of `c`, if held, with the event loop.
  void queue_resume(Connection* c, bool force);

  // Lock held: the same for every connection to `p`.
  void resume_held(Peer& p);

  // The payload (or reason, or skipped bytes) of the current message is all in.
  void end_of_part(Connection* c);

  // The payload being read ended (`ec` clear), or the stream did.
  void on_payload(Connection* c, std::error_code ec);

  // The stream of `c` ended or failed (`ec`), or this rank closed it (operation_aborted).
  void reader_ended(Connection* c, std::error_code ec);

  void connection_failed(Connection* c, std::error_code ec);

  // Event loop: the peer is gone. Closes its connections and fails everything pending on it.
  // With `drain`, connections are not closed but only shut for sending (so everything written,
  // the abort reason included, is delivered before the end of the stream) and read to their
  // end: closing a socket with unread data would reset it and drop what is still unsent.
  void fail_peer(int peer, errc code, const std::string& why, bool drain = false);

  // ----- abort ---------------------------------------------------------------------------------

  // Event loop: the reason goes to every peer on one of its connections, after the message
  // being written there (a segment, so soon); idle connections write it at once.
  void abort_begin();

  void abort_written();

  // Every connection shut (and read to its end), once.
  void abort_close();

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

#include "collie/transport/detail/tcp/engine_io.hpp"
