// InProcessTransport: ranks as threads of one process, exchanging messages through shared memory.
// It is the reference model of the `Transport` concept and the engine of the conformance suite.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "collie/core/concepts.hpp"
#include "collie/core/deadline.hpp"
#include "collie/core/detail/chain.hpp"
#include "collie/core/error.hpp"
#include "collie/transport/detail/inproc/fabric.hpp"

namespace collie {

class InProcessTransport;

/// A set of `size` ranks living in one process. Hand `transport(r)` to the thread that plays
/// rank r; the world must outlive every transport taken from it (they share it by reference
/// count, so simply keeping any transport alive is enough).
///
///   collie::InProcessWorld world(4);
///   std::vector<std::jthread> ranks;
///   for (int r = 0; r < 4; ++r)
///     ranks.emplace_back([t = world.transport(r)]() mutable { ... });
class InProcessWorld {
 public:
  /// A world of `size` ranks (at least 1). Allocates the fabric: one mailbox and one doorbell
  /// per rank. Throws std::bad_alloc.
  explicit InProcessWorld(int size) : fabric_(std::make_shared<detail::inproc::Fabric>(size)) {}

  /// The number of ranks.
  int size() const noexcept { return fabric_->size; }

  /// The transport of rank `rank` (0 <= rank < size()); call it once per rank. Thread-safe.
  InProcessTransport transport(int rank) const;

  /// Fault injection: from now on rank `rank` counts as dead, and every wait on it fails with
  /// `errc::connection_lost` at once, as a TCP peer's death would.
  void kill(int rank) noexcept { fabric_->kill(rank); }

 private:
  std::shared_ptr<detail::inproc::Fabric> fabric_;
};

/// The in-process transport of one rank. Matching is exact on (sender, group, tag), first-in
/// first-out for equal keys; a transfer happens as one `memcpy` straight from the sender's
/// buffer into the receiver's as soon as both sides are posted (rendezvous), so a send completes
/// only once the matching receive is posted. Thread-safe: requests may be posted and waited on
/// from several threads of the same rank.
class InProcessTransport {
 public:
  using transport_concept = transport_t;
  static constexpr std::string_view name = "inproc";

  /// A posted send or receive. Move-only; destroying a request that is still posted cancels it.
  class Request {
   public:
    Request() = default;
    Request(Request&& other) noexcept : op_(std::exchange(other.op_, nullptr)) {}
    Request& operator=(Request&& other) noexcept {
      if (this != &other) {
        release();
        op_ = std::exchange(other.op_, nullptr);
      }
      return *this;
    }
    ~Request() { release(); }

   private:
    friend class InProcessTransport;
    explicit Request(detail::inproc::Op* op) noexcept : op_(op) {}
    void release() noexcept {
      if (op_ == nullptr) return;
      op_->fabric->withdraw(*op_);
      op_->fabric->recycle(op_);
      op_ = nullptr;
    }
    // Back to the free list, once over.
    void finished() noexcept {
      op_->fabric->recycle(op_);
      op_ = nullptr;
    }
    detail::inproc::Op* op_ = nullptr;
  };

  /// This rank's number in its group, in [0, size()).
  int rank() const noexcept { return rank_; }
  /// The number of ranks in the group (after `split`, the new group's).
  int size() const noexcept { return static_cast<int>(members_->size()); }

  /// Posts a send of `data` to `peer` (0 <= peer < size(), not this rank) under `tag`; `data`
  /// must stay alive and unchanged until `wait` returns. Completes once the matching receive is
  /// posted and the bytes are copied (one `memcpy`, by whichever side posted second). Never
  /// fails here: a post that cannot get an operation (out of memory) returns an empty request,
  /// whose `wait` reports `errc::aborted`.
  ///
  ///   auto r = t.post_send(1, tag, std::as_bytes(std::span(x)));
  ///   if (auto ec = t.wait(r, collie::Deadline::after(std::chrono::seconds(5)))) { ... }
  Request post_send(int peer, Tag tag, std::span<const std::byte> data) noexcept {
    return post(true, peer, tag, data.data(), nullptr, data.size());
  }

  /// Posts a receive of exactly `data.size()` bytes from `peer` under `tag`: messages from one
  /// peer with one tag match in posting order. A message of another size fails the receive
  /// with `errc::protocol_error` (and its send too). `data` must stay alive until `wait` returns.
  Request post_recv(int peer, Tag tag, std::span<std::byte> data) noexcept {
    return post(false, peer, tag, nullptr, data.data(), data.size());
  }

  /// Blocks until `request` completes or `deadline` passes. Returns: success (the request is
  /// then spent); `errc::timed_out`, leaving it posted (wait again, or `cancel`);
  /// `errc::connection_lost` when the peer died or aborted (`failure_reason` says why); or the
  /// request's own failure (`errc::protocol_error` for a size mismatch). A spent or empty
  /// request gives `errc::aborted`. Sleeps on the rank's condition variable: no spinning.
  std::error_code wait(Request& request, Deadline deadline) noexcept {
    auto* op = request.op_;
    if (op == nullptr) return errc::aborted;  // never posted, or already waited on
    const int peer = op->is_send ? op->dst : op->src;
    auto& bell = fabric_->doorbells[static_cast<std::size_t>(op->owner)];
    bool finished = false;
    {
      std::unique_lock lock(bell.mutex);
      auto ready = [&] { return op->done || fabric_->dead[peer].load(); };
      if (deadline.is_never()) {
        bell.cv.wait(lock, ready);
        finished = op->done;
      } else {
        finished = bell.cv.wait_until(lock, deadline.when(), ready) && op->done;
      }
    }
    if (finished) {
      const auto result = op->result;
      request.finished();
      return result;
    }
    if (fabric_->dead[peer].load()) {
      // The peer died: withdraw, unless its copy already went through.
      fabric_->withdraw(*op);
      const bool delivered = !op->result;
      request.finished();
      return delivered ? std::error_code{} : std::error_code(errc::connection_lost);
    }
    return errc::timed_out;  // still posted: the caller waits again or cancels
  }

  /// Withdraws a posted request (a receive takes nothing; a send is never delivered, unless
  /// its copy already happened) and spends it. Safe on an empty or spent request.
  void cancel(Request& request) noexcept { request.release(); }

  /// The transport of a subgroup: `members` lists the ranks of this group that form it, in
  /// their new order, and this rank must be among them; `context` (the same on every member,
  /// and different for every concurrent split) keeps its messages apart from every other
  /// group's. Local: no message is exchanged.
  InProcessTransport split(std::span<const int> members, std::uint64_t context) const {
    auto world_ranks = std::make_shared<std::vector<int>>();
    world_ranks->reserve(members.size());
    int new_rank = -1;
    for (int member : members) {
      const int world = (*members_)[static_cast<std::size_t>(member)];
      if (world == world_rank()) new_rank = static_cast<int>(world_ranks->size());
      world_ranks->push_back(world);
    }
    return InProcessTransport(fabric_, std::move(world_ranks), new_rank, context);
  }

  /// Marks this rank dead in the world (as closing its sockets would), so peers stop waiting,
  /// and leaves `reason` for them to read through `failure_reason`.
  void abort(std::string_view reason) noexcept { fabric_->kill(world_rank(), reason); }

  /// Why `peer` left the group, if it said so when it aborted; empty otherwise (killed).
  std::string failure_reason(int peer) const {
    if (peer < 0 || peer >= size()) return {};
    std::lock_guard lock(fabric_->reasons_mutex);
    return fabric_->reasons[static_cast<std::size_t>((*members_)[static_cast<std::size_t>(peer)])];
  }

  /// "rank 2", or "rank 2 (thread rank 5)" inside a subgroup: how errors name a peer.
  std::string describe_peer(int peer) const {
    std::string text = "rank " + std::to_string(peer);
    if (peer >= 0 && peer < size()) {
      const int world = (*members_)[static_cast<std::size_t>(peer)];
      if (world != peer) text += " (thread rank " + std::to_string(world) + ")";
    }
    return text;
  }

 private:
  friend class InProcessWorld;

  InProcessTransport(std::shared_ptr<detail::inproc::Fabric> fabric,
                     std::shared_ptr<const std::vector<int>> members, int rank,
                     std::uint64_t context)
      : fabric_(std::move(fabric)), members_(std::move(members)), rank_(rank),
        context_(context) {}

  int world_rank() const noexcept { return (*members_)[static_cast<std::size_t>(rank_)]; }

  Request post(bool is_send, int peer, Tag tag, const std::byte* send_data, std::byte* recv_data,
               std::size_t bytes) noexcept {
    detail::inproc::Op* op = fabric_->acquire();
    if (op == nullptr) return Request();  // wait() reports errc::aborted
    const int me = world_rank();
    const int other = (*members_)[static_cast<std::size_t>(peer)];
    op->fabric = fabric_.get();
    op->is_send = is_send;
    op->src = is_send ? me : other;
    op->dst = is_send ? other : me;
    op->owner = me;
    op->context = context_;
    op->tag = tag;
    op->send_data = send_data;
    op->recv_data = recv_data;
    op->bytes = bytes;
    fabric_->post(*op);
    return Request(op);
  }

  std::shared_ptr<detail::inproc::Fabric> fabric_;
  std::shared_ptr<const std::vector<int>> members_;  // group rank -> world rank
  int rank_ = 0;
  std::uint64_t context_ = 0;
};

inline InProcessTransport InProcessWorld::transport(int rank) const {
  auto members = std::make_shared<std::vector<int>>(static_cast<std::size_t>(size()));
  for (int r = 0; r < size(); ++r) (*members)[static_cast<std::size_t>(r)] = r;
  return InProcessTransport(fabric_, std::move(members), rank, 0);
}

}  // namespace collie
