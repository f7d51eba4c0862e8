// Building blocks shared by the algorithms: a set of in-flight requests that is always drained or
// cancelled (an algorithm never returns with a request still posted), and balanced partitions of
// an element range.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <system_error>
#include <vector>

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
template <Transport T>
class Requests {
 public:
  Requests(T& transport, Call& call) : transport_(transport), call_(call) {}
  Requests(const Requests&) = delete;
  Requests& operator=(const Requests&) = delete;
  ~Requests() { cancel_all(); }

  /// Reserves room for `n` requests so posting allocates nothing further.
  void reserve(std::size_t n) { entries_.reserve(n); }

  std::size_t send(int peer, Tag tag, std::span<const std::byte> data, std::string_view phase,
                   int step = 0, int steps = 0) {
    entries_.push_back({transport_.post_send(peer, tag, data), peer, phase, step, steps, true});
    return entries_.size() - 1;
  }

  std::size_t recv(int peer, Tag tag, std::span<std::byte> data, std::string_view phase,
                   int step = 0, int steps = 0) {
    entries_.push_back({transport_.post_recv(peer, tag, data), peer, phase, step, steps, true});
    return entries_.size() - 1;
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
  std::error_code wait_all() {
    for (std::size_t i = 0; i < entries_.size(); ++i) {
      if (auto ec = wait(i)) return ec;
    }
    entries_.clear();
    return {};
  }

  void cancel_all() noexcept {
    for (Entry& e : entries_) {
      if (e.posted) transport_.cancel(e.request);
      e.posted = false;
    }
    entries_.clear();
  }

  std::size_t size() const noexcept { return entries_.size(); }

 private:
  struct Entry {
    typename T::Request request;
    int peer;
    std::string_view phase;
    int step;
    int steps;
    bool posted;
  };

  T& transport_;
  Call& call_;
  std::vector<Entry> entries_;
};

}  // namespace collie::detail
