// collie::Request: the handle an asynchronous operation returns, so communication can overlap
// computation. Wait on it before touching the buffers the operation uses.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "collie/core/error.hpp"

namespace collie {

namespace detail {

// Completion state shared by whatever runs an operation and the Request that waits on it. Each
// asynchronous call allocates one (with its operation's arguments in a derived record, see
// AsyncJob and the point-to-point record of PairCore), and nothing else: no std::function, no
// second shared object.
//
// A collective runs as a job on the group's worker thread, which finishes the state. A
// point-to-point operation is posted straight to the transport and has no thread of its own:
// whoever waits on it, or asks whether it is ready, runs `drive_fn` instead, which waits for the
// transport (`block`) or only looks, and finishes the state once the operation is over. One
// thread at a time runs it (`drive_mutex`), and it is dropped once the state is done, so it never
// runs after its group is gone: the group completes every such operation before it goes
// (PostedRequests).
struct RequestState {
  using DriveFn = void (*)(RequestState& self, bool block) noexcept;

  std::mutex mutex;
  std::condition_variable cv;
  bool done = false;
  std::error_code result;
  std::string message;

  DriveFn drive_fn = nullptr;
  std::mutex drive_mutex;

  RequestState() = default;
  RequestState(const RequestState&) = delete;
  RequestState& operator=(const RequestState&) = delete;

  void finish(std::error_code ec, std::string text) noexcept {
    {
      std::lock_guard lock(mutex);
      done = true;
      result = ec;
      message = std::move(text);
    }
    cv.notify_all();
  }

  bool is_done() noexcept {
    std::lock_guard lock(mutex);
    return done;
  }

  // Runs `drive_fn`, if there is one and the operation is not over. Without `block` it returns
  // at once, also when another thread is running it.
  void drive(bool block) noexcept {
    std::unique_lock lock(drive_mutex, std::defer_lock);
    if (block) {
      lock.lock();
    } else if (!lock.try_lock()) {
      return;
    }
    if (drive_fn == nullptr) return;
    drive_fn(*this, block);
    if (is_done()) drive_fn = nullptr;
  }
};

// The point-to-point operations a group posted straight to its transport and that are not over.
// They use the transport, so the group's destructor waits for each one, as it runs its worker's
// queued jobs: destroying a Request does not cancel its operation.
class PostedRequests {
 public:
  PostedRequests() = default;
  PostedRequests(const PostedRequests&) = delete;
  PostedRequests& operator=(const PostedRequests&) = delete;
  ~PostedRequests() {
    for (auto& r : list_) r->drive(true);
  }

  // Called from the group's thread only. Whenever the list has doubled, forgets those that are
  // over and looks again at those whose Request is gone (no one else will), so sends never
  // waited on do not pile up; the doubling keeps that at a constant cost per operation, and the
  // list's memory stays as large as the most operations ever pending at once.
  void add(std::shared_ptr<RequestState> request) {
    if (list_.capacity() == 0) list_.reserve(2 * prune_at_);
    if (list_.size() >= prune_at_) {
      std::erase_if(list_, [](const std::shared_ptr<RequestState>& r) {
        if (r.use_count() == 1) r->drive(false);
        return r->is_done();
      });
      prune_at_ = std::max<std::size_t>(16, 2 * list_.size());
    }
    list_.push_back(std::move(request));
  }

 private:
  std::vector<std::shared_ptr<RequestState>> list_;
  std::size_t prune_at_ = 16;
};

}  // namespace detail

/// An operation started by one of the `*_async` calls of a `Collective` or `Group`.
///
/// Asynchronous collectives of one group run in the order they were started, on a worker thread
/// of that group, while the caller goes on computing. Asynchronous sends and receives are posted
/// to the transport at once, on the calling thread, so receives posted before the sends they
/// wait for (on another rank) complete, as with MPI_Irecv then MPI_Isend; the thread that waits
/// completes them. The buffers passed to the call must stay alive and untouched until `wait()`
/// returns. Destroying a Request does not cancel the operation: it still runs (the group's
/// destructor waits for it).
///
/// Cost: each asynchronous call allocates the Request's shared state, once (and, for
/// `all_reduce_async` with a user functor that has state, a copy of the functor); the operation
/// itself allocates no more than its synchronous form.
///
/// Thread safety: one Request may be waited on from one thread at a time; different Requests of
/// one group may be waited on from different threads.
///
///   auto pending = world.all_sum_async(gradients);
///   compute_something_else();
///   pending.wait();  // throws collie::Error if the operation failed
class Request {
 public:
  /// A Request with no operation: `ready()` is true and `wait()` returns at once.
  Request() = default;

  /// True once the operation has finished (successfully or not). Never blocks; for a send or
  /// receive it also moves the operation along.
  bool ready() const {
    if (!state_) return true;
    state_->drive(false);
    return state_->is_done();
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
    state_->drive(true);
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

  /// For the cores that start operations; not for users.
  explicit Request(std::shared_ptr<detail::RequestState> state) noexcept
      : state_(std::move(state)) {}

 private:
  std::shared_ptr<detail::RequestState> state_;
};

}  // namespace collie
