// The board the ranks of one test run share: a barrier, a list of failures, one 64-bit value per
// rank, and a large scratch region. It lives in a shared memory mapping made before the ranks
// start, so ranks that are threads and ranks that are forked processes use it the same way.
#pragma once

#include <pthread.h>
#include <sys/mman.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

namespace collie::testing {

class Board {
 public:
  static constexpr int max_ranks = 64;
  static constexpr int max_failures = 20;
  static constexpr std::size_t failure_length = 600;
  /// The scratch region: room for a reference result and a copy of an output of the largest
  /// case (8 MiB each), and more. Mapped lazily: untouched pages cost nothing.
  static constexpr std::size_t scratch_bytes = std::size_t{64} << 20;

  /// A board for `size` ranks, in a new shared anonymous mapping (inherited by forked children).
  static Board* create(int size) {
    void* memory = ::mmap(nullptr, sizeof(Board) + scratch_bytes, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (memory == MAP_FAILED) throw std::bad_alloc();
    return new (memory) Board(size);
  }
  static void destroy(Board* board) noexcept {
    board->~Board();
    ::munmap(board, sizeof(Board) + scratch_bytes);
  }

  int size() const noexcept { return size_; }

  /// Records a failure (the first `max_failures` are kept). Safe from any rank at any time.
  void fail(const std::string& what) noexcept {
    const int slot = failure_count_.fetch_add(1);
    if (slot >= max_failures) return;
    const std::size_t n = std::min(what.size(), failure_length - 1);
    std::memcpy(failures_[slot], what.data(), n);
    failures_[slot][n] = '\0';
    written_[slot].store(true);
  }

  std::vector<std::string> failures() const {
    std::vector<std::string> out;
    const int n = std::min(failure_count_.load(), max_failures);
    for (int i = 0; i < n; ++i) {
      if (written_[i].load()) out.emplace_back(failures_[i]);
    }
    if (failure_count_.load() > max_failures) {
      out.push_back("... and " + std::to_string(failure_count_.load() - max_failures) + " more");
    }
    return out;
  }

  /// Waits until every rank still taking part has arrived.
  void sync() noexcept {
    pthread_mutex_lock(&mutex_);
    const std::int64_t generation = generation_;
    if (++arrived_ >= expected_) {
      release();
    } else {
      while (generation_ == generation) pthread_cond_wait(&cond_, &mutex_);
    }
    pthread_mutex_unlock(&mutex_);
  }

  /// Leaves the barrier for good (a rank that failed and stops): the others no longer wait for it.
  void drop() noexcept {
    pthread_mutex_lock(&mutex_);
    --expected_;
    if (arrived_ > 0 && arrived_ >= expected_) release();
    pthread_mutex_unlock(&mutex_);
  }

  /// A value per rank, for comparing results across ranks (e.g. a hash of each rank's output).
  void publish(int rank, std::uint64_t value) noexcept { values_[rank].store(value); }
  std::uint64_t value(int rank) const noexcept { return values_[rank].load(); }

  /// A counter every rank can add to (starts at 0).
  std::atomic<std::int64_t>& counter() noexcept { return counter_; }

  /// The shared scratch region as `n` elements of `E` (the same memory on every rank).
  template <class E>
  std::span<E> scratch(std::size_t n, std::size_t offset_bytes = 0) {
    if (offset_bytes + n * sizeof(E) > scratch_bytes) throw std::length_error("board scratch too small");
    return {reinterpret_cast<E*>(reinterpret_cast<std::byte*>(this + 1) + offset_bytes), n};
  }

 private:
  explicit Board(int size) : size_(size), expected_(size) {
    if (size > max_ranks) throw std::invalid_argument("too many ranks for the board");
    // Process-shared, so that forked ranks can wait on them too.
    pthread_mutexattr_t mutex_attributes;
    pthread_mutexattr_init(&mutex_attributes);
    pthread_mutexattr_setpshared(&mutex_attributes, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(&mutex_, &mutex_attributes);
    pthread_mutexattr_destroy(&mutex_attributes);
    pthread_condattr_t cond_attributes;
    pthread_condattr_init(&cond_attributes);
    pthread_condattr_setpshared(&cond_attributes, PTHREAD_PROCESS_SHARED);
    pthread_cond_init(&cond_, &cond_attributes);
    pthread_condattr_destroy(&cond_attributes);
  }
  ~Board() {
    pthread_cond_destroy(&cond_);
    pthread_mutex_destroy(&mutex_);
  }

  // Mutex held.
  void release() noexcept {
    arrived_ = 0;
    ++generation_;
    pthread_cond_broadcast(&cond_);
  }

  int size_;
  pthread_mutex_t mutex_;
  pthread_cond_t cond_;
  int expected_;
  int arrived_ = 0;
  std::int64_t generation_ = 0;
  // Atomics on shared memory work across processes (they are lock-free on every target).
  std::atomic<int> failure_count_{0};
  std::atomic<bool> written_[max_failures] = {};
  char failures_[max_failures][failure_length] = {};
  std::atomic<std::uint64_t> values_[max_ranks] = {};
  std::atomic<std::int64_t> counter_{0};
};

static_assert(std::atomic<int>::is_always_lock_free && std::atomic<std::uint64_t>::is_always_lock_free);

/// A 64-bit hash of bytes (FNV-1a over 8-byte words), for comparing outputs across ranks.
inline std::uint64_t hash_bytes(std::span<const std::byte> bytes) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  std::size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    std::uint64_t word;
    std::memcpy(&word, bytes.data() + i, 8);
    h = (h ^ word) * 0x100000001b3ULL;
  }
  for (; i < bytes.size(); ++i) h = (h ^ static_cast<std::uint64_t>(bytes[i])) * 0x100000001b3ULL;
  return h ^ bytes.size();
}

}  // namespace collie::testing
