// Matching, for one peer of the TCP engine: receives posted and not yet matched, messages that
// arrived before their receive, and the rule that decides where an arriving message goes —
// including when it must wait in the socket, which is what bounds the memory a sender that runs
// ahead can take. No sockets here: it is driven (and tested) with headers and operations alone.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <list>
#include <memory>

#include "collie/core/detail/chain.hpp"
#include "collie/transport/detail/tcp/op.hpp"
#include "collie/transport/detail/tcp/wire.hpp"

namespace collie::detail::tcp {

// A message that arrived before its receive was posted: kept until a receive claims it. Its
// buffer comes from the spare records (UnexpectedBuffers) and goes back there: fresh memory costs
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

using UnexpectedList = std::list<Unexpected>;

// What one peer has waiting.
struct PeerQueues {
  Chain<Op> receives;         // posted, unmatched, in posting order
  UnexpectedList unexpected;  // arrived, unclaimed, in arrival order
  std::size_t unexpected_bytes = 0;

  // The message a receive for (context, tag) takes: the first to arrive that nobody claimed.
  UnexpectedList::iterator find_unexpected(std::uint64_t context, Tag tag) {
    return std::find_if(unexpected.begin(), unexpected.end(), [&](const Unexpected& u) {
      return u.context == context && u.tag == tag && u.claimed_by == nullptr && !u.orphaned;
    });
  }

  // Whether a whole message for (context, tag) waits unclaimed (a receive from a peer that has
  // gone may still take what it sent before).
  bool has_complete(std::uint64_t context, Tag tag) const {
    return std::any_of(unexpected.begin(), unexpected.end(), [&](const Unexpected& u) {
      return u.context == context && u.tag == tag && u.complete && u.claimed_by == nullptr;
    });
  }
};

// Bounds on what one peer may have waiting in memory: past `budget_bytes` or `budget_messages`,
// with no receive from it posted, its next message stays in the socket and TCP's flow control
// holds the sender back.
//
// A root broadcasting 256 KiB in a loop to 1 rank (the receiver always behind), with this byte
// bound alone: 27 us per call with 0, 35 with 4 MiB, 134 with 64 MiB (each buffer is fresh memory
// at first, and copied once more). 4 MiB still lets ranks that all send before they receive
// exchange messages of that size plus what the kernel's socket buffers hold. The message bound:
// a root broadcasting 8 bytes in a loop ran thousands of messages ahead, and every later message
// then looked through their records.
inline constexpr std::size_t budget_bytes = std::size_t{4} << 20;
inline constexpr std::size_t budget_messages = 128;

// Where the payload of an arriving message goes (see route).
enum class Route : std::uint8_t {
  deliver,   // into `op`, the receive posted for it
  mismatch,  // `op` was posted for it with another size: it fails, the payload is skipped
  skip,      // the peer has failed: read and dropped, so the stream stays in step
  hold,      // left in the socket until a receive from the peer is posted
  stash,     // into a spare buffer, until its receive comes
};

struct Routing {
  Route route;
  Op* op = nullptr;
};

// The rule for a message whose header `h` just arrived from a peer. With `may_hold`, a message
// over the peer's budget waits in the socket while no receive from the peer is posted; any
// receive posted for the peer lets it in again (with a receive pending, the message is stashed
// whatever the budget), so a program that receives in another order than it sent still gets
// everything.
inline Routing route(const PeerQueues& q, const Header& h, bool peer_failed, bool may_hold) {
  if (peer_failed) return {Route::skip};
  Op* const match = q.receives.find(
      [&](const Op& op) { return op.context == h.context && op.tag == h.tag; });
  if (match != nullptr) return {match->bytes == h.bytes ? Route::deliver : Route::mismatch, match};
  if (may_hold && q.receives.empty() &&
      (q.unexpected_bytes + h.bytes > budget_bytes || q.unexpected.size() >= budget_messages)) {
    return {Route::hold};
  }
  return {Route::stash};
}

// The spare records of unexpected messages, with their buffers, shared by every peer of one
// engine: reused so that steady traffic neither allocates nor faults in fresh pages. At most
// `records` records and `limit_bytes` bytes are kept; beyond that, they go back to the system.
class UnexpectedBuffers {
 public:
  static constexpr std::size_t records = budget_messages;
  static constexpr std::size_t limit_bytes = std::size_t{64} << 20;

  // Appends a record for a message of `h.bytes` to `q.unexpected`, reusing a spare record and
  // its buffer when one is large enough (the smallest such). Throws std::bad_alloc.
  UnexpectedList::iterator stash(PeerQueues& q, const Header& h) {
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
    q.unexpected.splice(q.unexpected.end(), spare_, best);
    q.unexpected_bytes += h.bytes;
    return std::prev(q.unexpected.end());
  }

  // Takes a record out of `q.unexpected` for good (its receive copied it, or it was dropped).
  void release(PeerQueues& q, UnexpectedList::iterator it) {
    q.unexpected_bytes -= it->size;
    keep(q.unexpected, it);
  }

  // Moves record `it` of `from` (a list of one, taken out of a peer's list) back to the spares.
  void keep(UnexpectedList& from, UnexpectedList::iterator it) {
    if (spare_.size() >= records) {
      // Keep the larger buffers: a smaller one is the cheaper to allocate again.
      auto smallest = std::min_element(spare_.begin(), spare_.end(), by_capacity);
      if (smallest->capacity >= it->capacity) {
        from.erase(it);
        return;
      }
      spare_bytes_ -= smallest->capacity;
      spare_.erase(smallest);
    }
    if (spare_bytes_ + it->capacity > limit_bytes) {
      from.erase(it);
      return;
    }
    spare_bytes_ += it->capacity;
    spare_.splice(spare_.begin(), from, it);
  }

  std::size_t spare_records() const noexcept { return spare_.size(); }

 private:
  static bool by_capacity(const Unexpected& a, const Unexpected& b) noexcept {
    return a.capacity < b.capacity;
  }

  UnexpectedList spare_;
  std::size_t spare_bytes_ = 0;
};

}  // namespace collie::detail::tcp
