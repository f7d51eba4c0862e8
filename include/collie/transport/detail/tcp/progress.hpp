// Who runs the TCP engine's event loop, and how a wait behaves: a thread waiting on a request
// runs the loop itself (it takes the right to, the I/O thread steps aside), polls the sockets
// for a short spin before it sleeps in the loop, and when no thread waits, the engine's I/O
// thread runs it, sleeping when idle.
//
// Why the waiting thread: a reply then wakes this thread directly, instead of waking the I/O
// thread, which would wake this one. Each such hand-off is a futex wake-up and a reschedule, tens
// of microseconds on a VM, and the two of them were most of a small message's time (8-byte
// all_sum at n = 2: 49 us with the hand-offs, 30 us without, 21 us with the spin). Large
// transfers lose nothing by it: while the caller reduces, the kernel keeps receiving into the
// socket buffers.
#pragma once

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

#include "collie/core/deadline.hpp"
#include "collie/transport/tcp_config.hpp"

namespace collie::detail::tcp {

class Progress {
 public:
  // `mutex` and `cv` are the engine's: waiters sleep on `cv` under `mutex` for their operation
  // to finish or for the loop to be handed to them.
  Progress(asio::io_context& io, const TcpConfig& config, std::mutex& mutex, std::condition_variable& cv)
      : io_(io), mutex_(mutex), cv_(cv), work_(asio::make_work_guard(io)),
        spin_(config.spin ? *config.spin : std::chrono::microseconds(50)), yield_(yield_for(config)) {}

  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  ~Progress() { stop(); }

  void start() {
    thread_ = std::thread([this] { io_loop(); });
  }

  // Stops the I/O thread (pending handlers are not run).
  void stop() noexcept {
    stopping_ = true;
    {
      std::lock_guard lock(park_mutex_);
      wake_requested_ = true;
    }
    park_cv_.notify_one();
    work_.reset();
    io_.stop();
    if (thread_.joinable()) thread_.join();
  }

  // Takes the right to run the event loop, waiting for whoever has it (the I/O thread or another
  // waiting thread) to hand it over, unless `done()` or the deadline comes first. The returned
  // lock owns the right or not.
  template <class Done>
  std::unique_lock<std::mutex> take_over(Deadline deadline, Done&& done) {
    std::unique_lock drive(drive_mutex_, std::try_to_lock);
    if (drive.owns_lock()) return drive;
    // Whoever lets go of the loop notifies `cv_` under `mutex_` while anyone wants it, so trying
    // under `mutex_` loses no wake-up; the slices only bound the wait should anything be missed.
    want_drive_.fetch_add(1);
    asio::post(io_, Nothing{});  // the loop's runner returns from its wait and sees the wish
    {
      std::unique_lock lock(mutex_);
      while (!done() && !deadline.expired() && !drive.try_lock()) {
        const auto slice = std::chrono::steady_clock::now() + std::chrono::milliseconds(1);
        cv_.wait_until(lock, deadline.is_never() ? slice : std::min(slice, deadline.when()));
      }
    }
    want_drive_.fetch_sub(1);
    return drive;
  }

  // Gives the loop back. The I/O thread stays parked until no caller has run the loop for
  // `park_grace`, so a caller issuing operations back to back finds the loop free and never pays
  // for a hand-over.
  void let_go(std::unique_lock<std::mutex>& drive) noexcept {
    resume_at_.store(now_ns() + park_grace.count(), std::memory_order_relaxed);
    drive.unlock();
    handed_back();
  }

  // Runs what is ready on the event loop, unless another thread runs it, and returns. Unlike a
  // wait, it leaves the I/O thread's parking alone: a caller asking every 100 us would otherwise
  // keep it parked for good, and an operation only ever asked about would move only during the
  // asking.
  void poll_once() noexcept {
    std::unique_lock drive(drive_mutex_, std::try_to_lock);
    if (!drive.owns_lock()) return;
    io_.poll();
    drive.unlock();
    handed_back();
  }

  // Ends the I/O thread's parking early: work that the caller waits for without running the
  // loop itself (a cancel, an abort) is queued.
  void wake_io_thread() noexcept {
    resume_at_.store(0, std::memory_order_relaxed);
    {
      std::lock_guard lock(park_mutex_);
      wake_requested_ = true;
    }
    park_cv_.notify_one();
  }

  // How long a wait for a transfer of `bytes` polls before it sleeps. With a core for every rank
  // of the host, a wait for a transfer over 256 KiB sleeps at once: the spin exists to catch a
  // reply that comes within it, which a transfer this large does not, and polling while its
  // bytes stream in slowed them (2 ranks, alternating runs, polling vs sleeping: broadcast
  // 512 KiB 81 vs 68 us, 2 MiB 352 vs 299 us (5 runs); all_sum 1 MiB 306 vs 284 us, 16 MiB 5.01
  // vs 4.42 ms (9 runs)). Oversubscribed, the polling yields between polls and pays even for
  // large transfers (4 ranks on 2 cores, broadcast 4 MiB: 2.30 ms polling, 2.85 sleeping).
  std::chrono::microseconds spin_for(std::size_t bytes) const noexcept {
    return yield_ || bytes <= spin_bytes_limit ? spin_ : std::chrono::microseconds(0);
  }

  // Between two polls of a spin: oversubscribed, the core goes to the rank this one waits for.
  void between_polls(bool done) const noexcept {
    if (yield_ && !done) std::this_thread::yield();
  }

 private:
  struct Nothing {
    void operator()() const noexcept {}
  };

  // Whether a polling wait yields its core between polls: when this host has fewer cores than
  // ranks on it, so that the rank it waits for can run. At n = 4 on 2 cores a plain 50 us spin
  // took an 8-byte all_sum from 91 to 142 us (the spinning rank holding the core that the rank
  // it waits for needs), and the same spin with a yield between polls to 51 us (3 alternating
  // runs; OpenMPI, which yields the same way when oversubscribed, 94 us).
  static bool yield_for(const TcpConfig& config) {
    if (config.rank < 0 || config.rank >= config.size()) return false;  // validate() reports it
    const auto& mine = config.hosts[static_cast<std::size_t>(config.rank)];
    const std::string here = mine.empty() ? std::string() : mine.front().host;
    const auto local = std::count_if(config.hosts.begin(), config.hosts.end(), [&](const auto& list) {
      return !list.empty() && list.front().host == here;
    });
    const auto cores = std::thread::hardware_concurrency();
    return cores != 0 && static_cast<unsigned>(local) > cores;
  }

  static std::int64_t now_ns() noexcept {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }

  // The I/O thread: runs the event loop whenever no caller does. It never blocks on the drive
  // mutex (a caller's unlock would then wake it each time); it sleeps instead, until callers
  // have left the loop alone for `park_grace`.
  void io_loop() {
    while (!stopping_) {
      const std::int64_t resume = resume_at_.load(std::memory_order_relaxed);
      if (want_drive_.load() == 0 && now_ns() >= resume && drive_mutex_.try_lock()) {
        io_.run_one_for(std::chrono::milliseconds(100));
        drive_mutex_.unlock();
        handed_back();
        continue;
      }
      std::unique_lock lock(park_mutex_);
      const auto until = std::chrono::steady_clock::time_point(
          std::chrono::nanoseconds(std::max(resume, now_ns() + park_grace.count())));
      park_cv_.wait_until(lock, until, [&] { return stopping_.load() || wake_requested_; });
      wake_requested_ = false;
    }
  }

  // After letting go of the event loop: wakes the threads waiting to run it.
  void handed_back() noexcept {
    if (want_drive_.load() == 0) return;
    { std::lock_guard lock(mutex_); }
    cv_.notify_all();
  }

  asio::io_context& io_;
  std::mutex& mutex_;
  std::condition_variable& cv_;
  asio::executor_work_guard<asio::io_context::executor_type> work_;
  // While callers keep using the loop, the parked I/O thread wakes once per grace only to find
  // it still in use. At 1 ms those wake-ups cost 4 ranks on 2 cores 7% of an 8-byte all_sum's
  // time (109 vs 101 us); at 10 ms they are gone, and a send posted and never waited on stalls
  // at most that long before the I/O thread writes the rest.
  static constexpr std::chrono::nanoseconds park_grace{std::chrono::milliseconds(10)};
  static constexpr std::size_t spin_bytes_limit = std::size_t{256} << 10;
  const std::chrono::microseconds spin_;
  const bool yield_;
  std::mutex drive_mutex_;
  std::atomic<int> want_drive_{0};
  std::atomic<std::int64_t> resume_at_{0};  // steady-clock ns before which the I/O thread parks
  std::mutex park_mutex_;
  std::condition_variable park_cv_;
  bool wake_requested_ = false;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace collie::detail::tcp
