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

namespace collie {

namespace detail::inproc {

struct Fabric;

// One posted send or receive. Ops come from a free list of the fabric and go back to it, so
// steady traffic allocates nothing per message; an op stays put while queued, whatever the
// caller does with the `Request` handle that owns it.
struct Op {
  Fabric* fabric = nullptr;
  bool is_send = false;
  int src = 0;    // world rank of the sender
  int dst = 0;    // world rank of the receiver
  int owner = 0;  // world rank that waits on this op (src for sends, dst for receives)
  std::uint64_t context = 0;
  Tag tag = 0;
  const std::byte* send_data = nullptr;
  std::byte* recv_data = nullptr;
  std::size_t bytes = 0;
  // Guarded by the mailbox mutex of `dst`: true while the op sits in a queue, unmatched; its
  // neighbours there (in the free list, `chain_next` only).
  bool queued = false;
  Op* chain_prev = nullptr;
  Op* chain_next = nullptr;
  // Guarded by the doorbell mutex of `owner`.
  bool done = false;
  std::error_code result;
};

// Everything that matches at rank `dst`: sends addressed to it and receives it posted, each
// queue in posting order so that equal keys match first-in, first-out.
struct Mailbox {
  std::mutex mutex;
  Chain<Op> sends;
  Chain<Op> receives;
};

// Where a rank sleeps while it waits; completing one of its ops rings it.
struct Doorbell {
  std::mutex mutex;
  std::condition_variable cv;
};

struct Fabric {
  explicit Fabric(int n)
      : size(n), mailboxes(static_cast<std::size_t>(n)), doorbells(static_cast<std::size_t>(n)),
        dead(new std::atomic<bool>[static_cast<std::size_t>(n)]) {
    for (int r = 0; r < n; ++r) dead[r].store(false);
  }

  int size;
  std::vector<Mailbox> mailboxes;
  std::vector<Doorbell> doorbells;
  std::unique_ptr<std::atomic<bool>[]> dead;
  // Why a rank left, when it said so (an abort carries the error that caused it), so that a
  // survivor two hops away still names the rank that died first. Guarded by `reasons_mutex`.
  std::mutex reasons_mutex;
  std::vector<std::string> reasons = std::vector<std::string>(static_cast<std::size_t>(size));
  std::mutex pool_mutex;
  std::vector<std::unique_ptr<Op[]>> pool;
  Op* free_ops = nullptr;

  static bool matches(const Op& a, const Op& b) noexcept {
    return a.src == b.src && a.context == b.context && a.tag == b.tag;
  }

  void complete(Op& op, std::error_code result) noexcept {
    Doorbell& bell = doorbells[static_cast<std::size_t>(op.owner)];
    {
      std::lock_guard lock(bell.mutex);
      op.done = true;
      op.result = result;
    }
    bell.cv.notify_all();
  }

  // Copies a matched pair outside every lock: neither op is in a queue any more, so nobody else
  // can reach them until they are completed.
  void transfer(Op& send, Op& receive) noexcept {
    std::error_code result;
    if (send.bytes != receive.bytes) {
      result = errc::protocol_error;
    } else if (send.bytes != 0) {
      std::memcpy(receive.recv_data, send.send_data, send.bytes);
    }
    complete(send, result);
    complete(receive, result);
  }

  // Queues `op` at the receiver, or completes it against the matching op already there.
  void post(Op& op) noexcept {
    Mailbox& box = mailboxes[static_cast<std::size_t>(op.dst)];
    Op* partner = nullptr;
    {
      std::lock_guard lock(box.mutex);
      Chain<Op>& others = op.is_send ? box.receives : box.sends;
      partner = others.find([&](const Op& other) { return matches(op, other); });
      if (partner != nullptr) {
        partner->queued = false;
        others.erase(partner);
      } else {
        (op.is_send ? box.sends : box.receives).push_back(&op);
        op.queued = true;
      }
    }
    if (partner != nullptr) {
      op.is_send ? transfer(op, *partner) : transfer(*partner, op);
    }
  }

  // Withdraws `op`. If it was already matched, its copy is under way on another thread and
  // finishes in bounded time, so wait for it: afterwards nobody touches the op's memory.
  void withdraw(Op& op) noexcept {
    Mailbox& box = mailboxes[static_cast<std::size_t>(op.dst)];
    {
      std::lock_guard lock(box.mutex);
      if (op.queued) {
        (op.is_send ? box.sends : box.receives).erase(&op);
        op.queued = false;
        std::lock_guard bell_lock(doorbells[static_cast<std::size_t>(op.owner)].mutex);
        op.done = true;
        op.result = errc::aborted;
        return;
      }
    }
    Doorbell& bell = doorbells[static_cast<std::size_t>(op.owner)];
    std::unique_lock lock(bell.mutex);
    bell.cv.wait(lock, [&] { return op.done; });
  }

  // A cleared op from the free list (null when memory runs out).
  Op* acquire() noexcept {
    std::lock_guard lock(pool_mutex);
    if (free_ops == nullptr) {
      try {
        pool.push_back(std::make_unique<Op[]>(64));
      } catch (...) {
        return nullptr;
      }
      for (int i = 0; i < 64; ++i) {
        pool.back()[i].chain_next = free_ops;
        free_ops = &pool.back()[i];
      }
    }
    Op* op = free_ops;
    free_ops = op->chain_next;
    *op = Op{};
    return op;
  }

  void recycle(Op* op) noexcept {
    std::lock_guard lock(pool_mutex);
    op->chain_next = free_ops;
    free_ops = op;
  }

  void kill(int rank, std::string_view reason = {}) noexcept {
    if (!reason.empty()) {
      try {
        std::lock_guard lock(reasons_mutex);
        reasons[static_cast<std::size_t>(rank)] = "aborted the group: " + std::string(reason);
      } catch (...) {
        // Out of memory: the peers still learn that the rank is gone, only not why.
      }
    }
    dead[rank].store(true);
    for (auto& bell : doorbells) {
      { std::lock_guard lock(bell.mutex); }
      bell.cv.notify_all();
    }
  }
};

}  // namespace detail::inproc

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
  explicit InProcessWorld(int size) : fabric_(std::make_shared<detail::inproc::Fabric>(size)) {}

  int size() const noexcept { return fabric_->size; }

  /// The transport of rank `rank` (0 <= rank < size()).
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

  int rank() const noexcept { return rank_; }
  int size() const noexcept { return static_cast<int>(members_->size()); }

  Request post_send(int peer, Tag tag, std::span<const std::byte> data) noexcept {
    return post(true, peer, tag, data.data(), nullptr, data.size());
  }

  Request post_recv(int peer, Tag tag, std::span<std::byte> data) noexcept {
    return post(false, peer, tag, nullptr, data.data(), data.size());
  }

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

  void cancel(Request& request) noexcept { request.release(); }

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
