// What an algorithm receives with every collective call: the tags it may use, how long a wait
// may take, reusable staging memory, a type-erased reduction, and a place to record progress so
// that an error can name the step and the peer that failed.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>

#include "collie/core/deadline.hpp"
#include "collie/core/detail/arena.hpp"
#include "collie/core/error.hpp"

namespace collie {

/// Message tag. A receive matches a send from the same peer, in the same group, with the same tag.
/// Each collective call owns the tags `[Call::tag(0), Call::tag(Call::tag_span))`, so messages of
/// different calls never match each other, whatever order they arrive in.
using Tag = std::uint64_t;

/// A type-erased element-wise reduction: the only element-typed code an algorithm ever runs.
/// Algorithms work on bytes and element counts; `element_size` converts between the two.
///
///   r.into(dst, src, n);            // dst[i] = op(dst[i], src[i]), i < n elements
///   r.many(dst, srcs, k, n);        // dst[i] = op(...op(srcs[0][i], srcs[1][i])..., srcs[k-1][i])
///
/// `many` reduces in exactly the given source order and, for 16-bit floats, rounds once, so a
/// rank-ordered call gives bit-identical results on every rank.
struct Reduction {
  using IntoFn = void (*)(const void* op, std::byte* dst, const std::byte* src,
                          std::size_t count) noexcept;
  using ManyFn = void (*)(const void* op, std::byte* dst, const std::byte* const* srcs,
                          std::size_t nsrc, std::size_t count) noexcept;

  std::size_t element_size = 1;
  const void* op = nullptr;
  IntoFn into_fn = nullptr;
  ManyFn many_fn = nullptr;

  void into(std::byte* dst, const std::byte* src, std::size_t count) const noexcept {
    into_fn(op, dst, src, count);
  }
  void many(std::byte* dst, const std::byte* const* srcs, std::size_t nsrc,
            std::size_t count) const noexcept {
    many_fn(op, dst, srcs, nsrc, count);
  }
};

/// Staging memory owned by a `Collective` and lent to each call. It grows to the largest request
/// seen and is then reused, so steady-state calls allocate and first-touch nothing.
class Scratch {
 public:
  /// `bytes` bytes of staging memory, valid until the next call to `get`. Contents are
  /// unspecified.
  std::span<std::byte> get(std::size_t bytes) {
    if (bytes > size_) {
      // Value-initialisation would touch every page; leave the new memory untouched.
      data_ = std::unique_ptr<std::byte[]>(new std::byte[bytes]);
      size_ = bytes;
    }
    return {data_.get(), bytes};
  }
  std::size_t capacity() const noexcept { return size_; }

 private:
  std::unique_ptr<std::byte[]> data_;
  std::size_t size_ = 0;
};

/// Where a call stands, recorded by the algorithm before each blocking wait. When the wait fails,
/// the error message says e.g. "reduce-scatter step 2 of 3, waiting for rank 3".
struct Progress {
  std::string_view phase = "start";  ///< a static string: "reduce-scatter", "all-gather", ...
  int step = 0;                      ///< 0-based step within the phase
  int steps = 0;                     ///< number of steps in the phase (0: not stepwise)
  int peer = -1;                     ///< rank (in the group) being waited on, -1 for none
};

/// The context of one collective call, passed by reference to the algorithm.
class Call {
 public:
  /// Tags per call. A call may run several phases (e.g. a reduce-scatter then an all-gather
  /// composed by `Collective`); each phase gets `phase_span` tags, and an algorithm keeps its tag
  /// offsets below `phase_span`.
  static constexpr Tag tag_span = Tag{1} << 40;
  static constexpr Tag phase_span = tag_span / 4;

  /// `arena` may be null for a call that runs no algorithm (the completion of a point-to-point
  /// request); `array` and `working_memory` are then unavailable.
  Call(Tag base, std::chrono::milliseconds timeout, Scratch& scratch,
       detail::Arena* arena) noexcept
      : base_(base), timeout_(timeout), scratch_(&scratch), arena_(arena) {}

  /// The tag at `offset` within this call's range (offset < tag_span).
  Tag tag(std::uint64_t offset) const noexcept { return base_ + offset; }

  /// Moves to the next phase's tags, so the next algorithm call cannot match messages of the
  /// previous one (at most 4 phases per call).
  void next_phase() noexcept { base_ += phase_span; }

  /// The deadline for the next blocking wait: the operation timeout from now. Each wait gets
  /// the full timeout, so a large transfer that keeps moving never times out; a silent peer does.
  Deadline deadline() const noexcept { return Deadline::after(timeout_); }
  std::chrono::milliseconds timeout() const noexcept { return timeout_; }

  /// Reusable staging memory (see `Scratch`): one region per call, for payloads.
  std::span<std::byte> scratch(std::size_t bytes) { return scratch_->get(bytes); }

  /// `n` uninitialised objects of a trivial type `U` (request ids, pointer tables), valid until
  /// the call returns. Unlike `scratch`, every request gets memory of its own. The memory grows
  /// to the largest call and is then reused, so a steady stream of calls allocates nothing.
  /// Throws std::bad_alloc (the call then fails with `std::errc::not_enough_memory`).
  template <class U>
    requires std::is_trivially_copyable_v<U> && std::is_trivially_destructible_v<U>
  std::span<U> array(std::size_t n) {
    return {static_cast<U*>(working_memory(n * sizeof(U), alignof(U))), n};
  }

  /// Raw per-call memory of `bytes` bytes aligned to `align`, valid until the call returns
  /// (`detail::Requests` places its entries there).
  void* working_memory(std::size_t bytes, std::size_t align) {
    return arena_->allocate(bytes, align);
  }

  /// Records where the call is, for error messages.
  void at(std::string_view phase, int step, int steps, int peer) noexcept {
    progress_ = {phase, step, steps, peer};
  }
  const Progress& progress() const noexcept { return progress_; }

  /// Reports an I/O failure at the moment it is seen, before the algorithm cancels its other
  /// requests: the owner (Collective) aborts the group right away, so the peers learn the
  /// original reason (e.g. which rank died) instead of only seeing this rank disappear.
  /// `detail::Requests` calls it; an algorithm posting by hand should too.
  void failed(std::error_code ec) {
    if (failure_hook_ != nullptr) failure_hook_(failure_context_, *this, ec);
  }
  using FailureHook = void (*)(void* context, const Call& call, std::error_code ec);
  void on_failure(FailureHook hook, void* context) noexcept {
    failure_hook_ = hook;
    failure_context_ = context;
  }

 private:
  Tag base_;
  std::chrono::milliseconds timeout_;
  Scratch* scratch_;
  detail::Arena* arena_;
  Progress progress_;
  FailureHook failure_hook_ = nullptr;
  void* failure_context_ = nullptr;
};

}  // namespace collie
