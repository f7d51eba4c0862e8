// Building blocks of the algorithms and of what `Collective` composes around them: a set of in-flight requests that is always drained or
// cancelled (an algorithm never returns with a request still posted), and balanced partitions of
// an element range.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <span>
#include <string_view>
#include <system_error>
#include <utility>

#include "collie/core/call.hpp"
#include "collie/core/concepts.hpp"

namespace collie::detail {

/// The i-th of `parts` balanced pieces of `count` items: the first `count % parts` pieces get one
/// extra item. Every rank computes the same split from the same inputs, which is what lets
/// senders and receivers agree on sizes without telling each other.
struct Piece {
  std::size_t begin = 0;
  std::size_t count = 0;
};

inline Piece piece(std::size_t count, std::size_t parts, std::size_t i) noexcept {
  const std::size_t base = count / parts;
  const std::size_t extra = count % parts;
  return {i * base + (i < extra ? i : extra), base + (i < extra ? 1 : 0)};
}

/// Requests of one algorithm call, each remembered with the peer and step it belongs to so a
/// failure can be reported precisely. The destructor cancels whatever is still posted, so every
/// early return (an error) leaves the transport clean.
///
/// The entries live in the call's working memory (`Call::working_memory`), not on the heap: a
/// call posting thousands of segments allocates nothing once the memory has grown to it.
/// Several Requests may be alive in one call (an algorithm's helpers nest them).
template <Transport T>
class Requests {
 public:
  Requests(T& transport, Call& call) : transport_(transport), call_(call) {}
  Requests(const Requests&) = delete;
  Requests& operator=(const Requests&) = delete;
  ~Requests() {
    cancel_all();
    release();
  }

  /// Makes room for `n` requests, so that posting them moves nothing.
  void reserve(std::size_t n) {
    if (n > capacity_) grow(n);
  }

  std::size_t send(int peer, Tag tag, std::span<const std::byte> data, std::string_view phase,
                   int step = 0, int steps = 0) {
    return add(transport_.post_send(peer, tag, data), peer, phase, step, steps);
  }

  std::size_t recv(int peer, Tag tag, std::span<std::byte> data, std::string_view phase,
                   int step = 0, int steps = 0) {
    return add(transport_.post_recv(peer, tag, data), peer, phase, step, steps);
  }

  /// Waits for request `i` with a fresh operation deadline; on failure records the request's
  /// phase, step and peer in the call and returns the error.
  std::error_code wait(std::size_t i) {
    Entry& e = entries_[i];
    if (!e.posted) return {};
    call_.at(e.phase, e.step, e.steps, e.peer);
    const std::error_code ec = transport_.wait(e.request, call_.deadline());
    if (is_io_failure(ec)) call_.failed(ec);  // before anything is cancelled
    if (ec == errc::timed_out) transport_.cancel(e.request);
    e.posted = false;
    return ec;
  }

  /// Waits for every request not yet waited on, in posting order; stops at the first failure.
  /// On success the list is empty again (its memory is kept for the next requests).
  std::error_code wait_all() {
    for (std::size_t i = 0; i < size_; ++i) {
      if (auto ec = wait(i)) return ec;
    }
    release();
    return {};
  }

  void cancel_all() noexcept {
    for (std::size_t i = 0; i < size_; ++i) {
      if (entries_[i].posted) transport_.cancel(entries_[i].request);
      entries_[i].posted = false;
    }
  }

  std::size_t size() const noexcept { return size_; }

 private:
  struct Entry {
    typename T::Request request;
    int peer;
    std::string_view phase;
    int step;
    int steps;
    bool posted;
  };

  std::size_t add(typename T::Request request, int peer, std::string_view phase, int step,
                  int steps) {
    if (size_ == capacity_) {
      try {
        grow(capacity_ < 4 ? 4 : 2 * capacity_);
      } catch (...) {
        transport_.cancel(request);  // not in the list yet: nobody else would
        throw;
      }
    }
    new (entries_ + size_) Entry{std::move(request), peer, phase, step, steps, true};
    return size_++;
  }

  // Moves the entries to a larger region of the call's memory (the old one is forgotten with
  // the call).
  void grow(std::size_t capacity) {
    auto* bigger = static_cast<Entry*>(call_.working_memory(capacity * sizeof(Entry), alignof(Entry)));
    for (std::size_t i = 0; i < size_; ++i) {
      new (bigger + i) Entry(std::move(entries_[i]));
      entries_[i].~Entry();
    }
    entries_ = bigger;
    capacity_ = capacity;
  }

  // Destroys the entries (all already waited on or cancelled).
  void release() noexcept {
    for (std::size_t i = 0; i < size_; ++i) entries_[i].~Entry();
    size_ = 0;
  }

  T& transport_;
  Call& call_;
  Entry* entries_ = nullptr;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

}  // namespace collie::detail
