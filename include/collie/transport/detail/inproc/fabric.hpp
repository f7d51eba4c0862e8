// The machinery of InProcessTransport (transport/inprocess.hpp): the fabric every rank of one
// process shares, with a mailbox of posted operations per rank, the matching rule, and the pool
// the operations come from (steady traffic allocates nothing).
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
#include "collie/core/detail/block_pool.hpp"
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
  // neighbours there.
  bool queued = false;
  Op* chain_prev = nullptr;
  Op* chain_next = nullptr;
  Op* next_free = nullptr;  // in the fabric's pool, while free
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
  BlockPool<Op> pool;

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

  // A cleared op from the pool (null when memory runs out).
  Op* acquire() noexcept {
    std::lock_guard lock(pool_mutex);
    Op* op = pool.allocate();
    if (op != nullptr) *op = Op{};
    return op;
  }

  void recycle(Op* op) noexcept {
    std::lock_guard lock(pool_mutex);
    pool.recycle(op);
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

}  // namespace collie
