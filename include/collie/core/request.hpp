// collie::Request: the handle an asynchronous collective returns, so communication can overlap
// computation. Wait on it before touching the buffers the operation uses.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <utility>

#include "collie/core/error.hpp"

namespace collie {

namespace detail {

// Completion state shared by the worker that runs an operation and the Request that waits on it.
struct RequestState {
  std::mutex mutex;
  std::condition_variable cv;
  bool done = false;
  std::error_code result;
  std::string message;

  void finish(std::error_code ec, std::string text) {
    {
      std::lock_guard lock(mutex);
      done = true;
      result = ec;
      message = std::move(text);
    }
    cv.notify_all();
  }
};

}  // namespace detail

/// An operation started by one of the `*_async` calls of a `Collective` or `Group`.
///
/// Asynchronous operations of one group run in the order they were started, on a worker thread
/// of that group, while the caller goes on computing. The buffers passed to the call must stay
/// alive and untouched until `wait()` returns. Destroying a Request does not cancel the
/// operation: it still runs (the group's destructor waits for it).
///
///   auto pending = world.all_sum_async(gradients);
///   compute_something_else();
///   pending.wait();  // throws collie::Error if the operation failed
class Request {
 public:
  Request() = default;

  /// True once the operation has finished (successfully or not). Never blocks.
  bool ready() const {
    if (!state_) return true;
    std::lock_guard lock(state_->mutex);
    return state_->done;
  }

  /// Blocks until the operation finishes; throws `collie::Error` if it failed.
  void wait() {
    std::error_code ec;
    wait(ec);
    if (ec) throw Error(ec, message());
  }

  /// Blocks until the operation finishes; sets `ec` to its result (empty on success).
  void wait(std::error_code& ec) noexcept {
    ec.clear();
    if (!state_) return;
    std::unique_lock lock(state_->mutex);
    state_->cv.wait(lock, [&] { return state_->done; });
    ec = state_->result;
  }

  /// The full error message of a failed operation (empty on success or while running).
  std::string message() const {
    if (!state_) return {};
    std::lock_guard lock(state_->mutex);
    return state_->message;
  }

  explicit Request(std::shared_ptr<detail::RequestState> state) : state_(std::move(state)) {}

 private:
  std::shared_ptr<detail::RequestState> state_;
};

}  // namespace collie
