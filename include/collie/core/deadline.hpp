// Deadlines: every blocking step in collie (connect, accept, send, receive, completion polling)
// waits until a point in time and then gives up with `errc::timed_out`, so nothing hangs.
#pragma once

#include <chrono>

namespace collie {

/// A point in time after which a blocking wait gives up. Built on `std::chrono::steady_clock`, so
/// changes of the wall clock do not move it.
///
///   auto d = collie::Deadline::after(std::chrono::seconds(30));
///   if (d.expired()) ...
class Deadline {
 public:
  using clock = std::chrono::steady_clock;

  /// A deadline that never expires (waits as long as it takes). Use it only where a peer's
  /// death is detected by other means, since a wait on a silent peer then never ends.
  static constexpr Deadline never() noexcept { return Deadline(clock::time_point::max()); }

  /// The deadline `timeout` from now. A zero or negative timeout has already expired.
  template <class Rep, class Period>
  static Deadline after(std::chrono::duration<Rep, Period> timeout) noexcept {
    const auto now = clock::now();
    // Saturate instead of overflowing for huge timeouts (e.g. hours::max()).
    if (timeout >= std::chrono::duration_cast<std::chrono::duration<Rep, Period>>(
                       clock::time_point::max() - now)) {
      return never();
    }
    return Deadline(now + std::chrono::duration_cast<clock::duration>(timeout));
  }

  constexpr explicit Deadline(clock::time_point when) noexcept : when_(when) {}

  constexpr clock::time_point when() const noexcept { return when_; }
  constexpr bool is_never() const noexcept { return when_ == clock::time_point::max(); }
  bool expired() const noexcept { return !is_never() && clock::now() >= when_; }

  /// Time left, zero once expired; `clock::duration::max()` for `never()`.
  clock::duration remaining() const noexcept {
    if (is_never()) return clock::duration::max();
    const auto left = when_ - clock::now();
    return left > clock::duration::zero() ? left : clock::duration::zero();
  }

  /// The earlier of two deadlines.
  friend constexpr Deadline earliest(Deadline a, Deadline b) noexcept {
    return a.when_ <= b.when_ ? a : b;
  }

 private:
  clock::time_point when_;
};

}  // namespace collie
