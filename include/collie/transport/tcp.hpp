// TcpTransport: ranks as processes (on one host or many) connected by TCP sockets, as in MLX's
// ring backend, with a handshake on every connection, deadlines, and send/recv to any peer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "collie/core/concepts.hpp"
#include "collie/core/deadline.hpp"
#include "collie/core/error.hpp"
#include "collie/transport/detail/tcp/engine.hpp"
#include "collie/transport/tcp_config.hpp"

namespace collie {

/// The TCP transport of one rank.
///
/// Connections. Rank r listens on the addresses `config.hosts[r]` (one per connection) and opens
/// one connection to each address of its right neighbour r+1; its left neighbour does the same
/// to it. So every ring neighbour is reached over k connections (k = addresses per rank), and
/// with two ranks both directions are doubled. Any other peer gets one connection on demand, the
/// first time either side posts a send or receive to the other (the lower rank connects, to the
/// peer's first address), so `send`/`recv` work between any two ranks.
///
/// Every connection starts with a handshake — magic, protocol version, world size, sender and
/// receiver rank, connection index and the job token — and a connection that does not match
/// (another job, a mis-wired hostfile, a port scanner) is refused with an error naming both ends.
/// Connects retry with backoff (20 ms doubling to 1 s) until `config.connect_timeout`.
///
/// Messages carry a 32-byte header (group context, tag, length) and go straight from the
/// sender's buffer to the socket, and from the socket into the matching receive's buffer when it
/// is posted first (otherwise into a temporary buffer). At most 4 MiB or 128 messages from one
/// peer wait in temporary buffers; while that many wait and no receive from the peer is posted,
/// its next message is left in the socket, so TCP's flow control holds the sender back instead
/// of memory growing without bound (any receive posted for the peer lets its messages in again,
/// so receiving in another order than sending still works). Messages with equal tags between
/// two ranks arrive in order; different tags spread over the neighbour's connections (with two
/// ranks, over those this rank made, so that each connection carries one direction).
/// `TCP_NODELAY` is set, and the congestion control is reno between ranks on one host
/// (`config.congestion`).
/// One Asio event loop per process moves all bytes. A thread waiting on a request runs it
/// itself, polling for `config.spin` before it sleeps in it, so a reply wakes the waiting thread
/// directly; when no thread waits, the transport's I/O thread runs it (after 10 ms without a
/// waiter), and it sleeps when idle. Single transfers may exceed 2 GiB.
///
/// Failures. A connection that breaks fails every pending operation on its peer with
/// `errc::connection_lost` at once; `abort()` closes every connection so peers learn at once.
///
///   collie::TcpConfig config{.rank = r, .hosts = {{{"127.0.0.1", 5000}}, {{"127.0.0.1", 5001}}}};
///   collie::Collective<collie::TcpTransport, collie::Ring> c{collie::TcpTransport::connect(config)};
class TcpTransport {
 public:
  using transport_concept = transport_t;
  static constexpr std::string_view name = "tcp";

  /// A posted send or receive. Move-only; destroying a request that is still posted cancels it.
  class Request {
   public:
    Request() = default;
    Request(Request&& other) noexcept
        : engine_(std::exchange(other.engine_, nullptr)), op_(std::exchange(other.op_, nullptr)) {}
    Request& operator=(Request&& other) noexcept {
      if (this != &other) {
        release();
        engine_ = std::exchange(other.engine_, nullptr);
        op_ = std::exchange(other.op_, nullptr);
      }
      return *this;
    }
    ~Request() { release(); }

   private:
    friend class TcpTransport;
    Request(detail::tcp::Engine* engine, detail::tcp::Op* op) : engine_(engine), op_(op) {}
    void release() noexcept {
      if (op_ != nullptr) engine_->release(op_);
      op_ = nullptr;
    }
    detail::tcp::Engine* engine_ = nullptr;
    detail::tcp::Op* op_ = nullptr;
  };

  /// Listens, connects to both ring neighbours and waits for their connections. Throws
  /// `collie::Error` (bad_configuration, timed_out, protocol_error) naming the step, the peer
  /// and the address.
  ///
  /// Cost: k TCP connections to each neighbour (k = addresses per rank in `config.hosts`; each
  /// rank connects to its right neighbour's addresses and accepts its left neighbour's), a
  /// 32-byte hello and an 8-byte answer on each; every rank
  /// must call it within `config.connect_timeout` of the others. Starts the process's I/O thread
  /// on first use. Thread-safe (separate transports share nothing but that thread).
  static TcpTransport connect(TcpConfig config) {
    auto engine = std::make_shared<detail::tcp::Engine>(std::move(config));
    auto members = std::make_shared<std::vector<int>>(static_cast<std::size_t>(engine->size()));
    for (int r = 0; r < engine->size(); ++r) (*members)[static_cast<std::size_t>(r)] = r;
    const int rank = engine->rank();
    return TcpTransport(std::move(engine), std::move(members), rank, 0);
  }

  /// As above; on failure returns nothing and sets `ec` (the message is in
  /// `collie::detail::last_error_message`).
  static std::optional<TcpTransport> connect(TcpConfig config, std::error_code& ec) noexcept {
    try {
      ec.clear();
      return connect(std::move(config));
    } catch (const Error& e) {
      ec = e.code();
      detail::last_error_message = e.what();
    } catch (const std::exception& e) {
      ec = std::make_error_code(std::errc::not_enough_memory);
      detail::last_error_message = std::string("collie[tcp]: ") + e.what();
    }
    return std::nullopt;
  }

  /// This rank's number in its group, in [0, size()).
  int rank() const noexcept { return rank_; }
  /// The number of ranks in the group (after `split`, the new group's).
  int size() const noexcept { return static_cast<int>(members_->size()); }

  /// Posts a send of `data` to `peer` (0 <= peer < size(), not this rank) under `tag`; `data`
  /// must stay alive and unchanged until `wait` returns. Sends to a ring neighbour go over one
  /// of its connections (chosen by tag and context); to any other rank, over a connection made
  /// on first use. Never waits for the peer (a small send on an idle connection is written at
  /// once, without blocking; the rest is left to the event loop), and allocates nothing once the
  /// operation pool has grown to the peak number of requests in flight. Thread-safe. A post that cannot get an operation (out of memory) or
  /// that follows an abort completes at once with the failure, reported by `wait`.
  Request post_send(int peer, Tag tag, std::span<const std::byte> data) noexcept {
    return Request(engine_.get(), engine_->post(true, world(peer), context_, tag, data.data(),
                                                nullptr, data.size()));
  }

  /// Posts a receive of exactly `data.size()` bytes from `peer` under `tag`: messages from one
  /// peer with one tag match in posting order, and a message that arrived first is copied out
  /// of its temporary buffer. A message of another size fails the receive with
  /// `errc::protocol_error`. `data` must stay alive until `wait` returns. Thread-safe.
  Request post_recv(int peer, Tag tag, std::span<std::byte> data) noexcept {
    return Request(engine_.get(), engine_->post(false, world(peer), context_, tag, nullptr,
                                                data.data(), data.size()));
  }

  /// Blocks until `request` completes or `deadline` passes, driving the event loop itself (it
  /// polls for `config.spin`, then sleeps). Returns: success (the request is then spent);
  /// `errc::timed_out`, leaving it posted (wait again, or `cancel`); `errc::connection_lost`
  /// when its peer's connection broke (`failure_reason` says why); `errc::protocol_error`;
  /// `errc::aborted` after `abort()`, or for a spent or empty request. Several threads may wait
  /// on different requests at once.
  std::error_code wait(Request& request, Deadline deadline) noexcept {
    if (request.op_ == nullptr) return errc::aborted;
    const std::error_code ec = engine_->wait(request.op_, deadline);
    if (ec != errc::timed_out) request.release();
    return ec;
  }

  /// Withdraws a posted request and spends it; afterwards nothing touches its buffer. A request
  /// still queued leaves nothing on the wire. One whose bytes are already moving cannot be
  /// taken back mid-message: the connection to its peer is closed (every pending operation on
  /// that peer fails with `errc::connection_lost`, naming the cancelled transfer), and the call
  /// waits for the event loop to let go of the buffer. Safe on an empty or spent request.
  void cancel(Request& request) noexcept { request.release(); }

  /// The transport of a subgroup: `members` lists the ranks of this group that form it, in
  /// their new order, and this rank must be among them; `context` (the same on every member,
  /// and different for every concurrent split) keeps its messages apart from every other
  /// group's on the same connections. Local: no message is exchanged, no connection is made.
  TcpTransport split(std::span<const int> members, std::uint64_t context) const {
    auto worlds = std::make_shared<std::vector<int>>();
    worlds->reserve(members.size());
    int new_rank = -1;
    for (int m : members) {
      const int w = world(m);
      if (w == engine_->rank()) new_rank = static_cast<int>(worlds->size());
      worlds->push_back(w);
    }
    return TcpTransport(engine_, std::move(worlds), new_rank, context);
  }

  /// "rank 3 (10.0.0.4:5000)"; in a sub-group, "rank 1 (world rank 3, 10.0.0.4:5000)".
  std::string describe_peer(int peer) const {
    if (peer < 0 || peer >= size()) return "rank " + std::to_string(peer);
    const int w = world(peer);
    std::string text = "rank " + std::to_string(peer) + " (";
    if (w != peer) text += "world rank " + std::to_string(w) + ", ";
    return text + engine_->address_of(w) + ")";
  }

  /// Tells every connected peer why (over an idle connection) and closes all connections.
  void abort(std::string_view reason) noexcept { engine_->abort(reason); }

  /// Why `peer` failed, e.g. "aborted: rank 2 (10.0.0.3:5000) died" or "closed the connection".
  std::string failure_reason(int peer) const {
    return peer >= 0 && peer < size() ? engine_->failure_reason(world(peer)) : std::string();
  }

  /// The configuration it was connected with (after defaults were applied).
  const TcpConfig& config() const noexcept { return engine_->config(); }

 private:
  TcpTransport(std::shared_ptr<detail::tcp::Engine> engine,
               std::shared_ptr<const std::vector<int>> members, int rank, std::uint64_t context)
      : engine_(std::move(engine)), members_(std::move(members)), rank_(rank), context_(context) {}

  int world(int peer) const noexcept { return (*members_)[static_cast<std::size_t>(peer)]; }

  std::shared_ptr<detail::tcp::Engine> engine_;
  std::shared_ptr<const std::vector<int>> members_;  // group rank -> world rank
  int rank_ = 0;
  std::uint64_t context_ = 0;
};

}  // namespace collie
