// The worker thread behind a group's asynchronous collectives: a FIFO of jobs run one at a time,
// so the asynchronous collectives of a group start in the order they were issued on every rank.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "collie/core/call.hpp"
#include "collie/core/error.hpp"
#include "collie/core/request.hpp"

namespace collie::detail {

// One asynchronous collective: its arguments, and the function that runs it on the worker. It is
// also the completion state its Request waits on, so starting one allocates this record only.
struct AsyncJob : RequestState {
  // Runs the job with the group's state (`group`) on the worker thread.
  using RunFn = std::error_code (*)(void* group, AsyncJob& job) noexcept;
  RunFn run = nullptr;
  std::span<const std::byte> in;
  std::span<std::byte> out;
  int root = 0;
  Tag tag = 0;
  Reduction reduction;
  // Keeps a user functor with state alive until the job has run (`reduction.op` points into it).
  std::shared_ptr<const void> keep_alive;
};

class Worker {
 public:
  explicit Worker(void* group) : group_(group), thread_([this] { loop(); }) {}
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Runs every job already queued, then stops the thread.
  ~Worker() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  void submit(std::shared_ptr<AsyncJob> job) {
    {
      std::lock_guard lock(mutex_);
      if (count_ == jobs_.size()) grow();
      jobs_[(head_ + count_) % jobs_.size()] = std::move(job);
      ++count_;
    }
    cv_.notify_all();
  }

 private:
  void loop() {
    for (;;) {
      std::shared_ptr<AsyncJob> job;
      {
        std::unique_lock lock(mutex_);
        // Sleeps when idle: no spinning.
        cv_.wait(lock, [&] { return stopping_ || count_ != 0; });
        if (count_ == 0) return;
        job = std::move(jobs_[head_]);
        head_ = (head_ + 1) % jobs_.size();
        --count_;
      }
      const std::error_code ec = job->run(group_, *job);
      job->keep_alive.reset();
      std::string message;
      if (ec) {
        try {
          message = last_error_message;
        } catch (...) {
          // Out of memory for the text: the code still tells what happened.
        }
      }
      job->finish(ec, std::move(message));
    }
  }

  // Lock held: doubles the queue's room (it only grows, to the most jobs ever queued at once).
  void grow() {
    std::vector<std::shared_ptr<AsyncJob>> bigger(jobs_.empty() ? 8 : 2 * jobs_.size());
    for (std::size_t i = 0; i < count_; ++i) bigger[i] = std::move(jobs_[(head_ + i) % jobs_.size()]);
    jobs_ = std::move(bigger);
    head_ = 0;
  }

  void* group_;
  std::mutex mutex_;
  std::condition_variable cv_;
  // A ring of queued jobs: `count_` of them from `head_` on. Unlike a deque, it allocates
  // nothing once it has room for the most jobs queued at once.
  std::vector<std::shared_ptr<AsyncJob>> jobs_;
  std::size_t head_ = 0;
  std::size_t count_ = 0;
  bool stopping_ = false;
  std::thread thread_;  // last: starts after the members it uses exist
};

}  // namespace collie::detail
