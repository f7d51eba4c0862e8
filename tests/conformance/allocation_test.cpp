// What allocates, counted: once a group has warmed up, synchronous collectives and sends/receives
// allocate nothing (staging, per-call working memory, transport operations and buffers for
// messages that arrive before their receives are all kept and reused), and each asynchronous
// call allocates exactly one record, its Request's shared state. Counted by replacing the global
// operator new of this test program, over every enabled pair.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "pairs.hpp"

namespace {

std::atomic<long> allocations{0};

void* counted(std::size_t bytes, std::size_t align = 0) {
  allocations.fetch_add(1, std::memory_order_relaxed);
  void* p = align == 0 ? std::malloc(bytes == 0 ? 1 : bytes)
                       : std::aligned_alloc(align, (bytes + align - 1) / align * align);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

void* operator new(std::size_t bytes) { return counted(bytes); }
void* operator new[](std::size_t bytes) { return counted(bytes); }
void* operator new(std::size_t bytes, std::align_val_t align) {
  return counted(bytes, static_cast<std::size_t>(align));
}
void* operator new[](std::size_t bytes, std::align_val_t align) {
  return counted(bytes, static_cast<std::size_t>(align));
}
void* operator new(std::size_t bytes, const std::nothrow_t&) noexcept {
  try {
    return counted(bytes);
  } catch (...) {
    return nullptr;
  }
}
void* operator new[](std::size_t bytes, const std::nothrow_t&) noexcept {
  try {
    return counted(bytes);
  } catch (...) {
    return nullptr;
  }
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

using namespace collie;
using namespace collie::testing;

namespace {

// Runs `round` until `quiet` rounds in a row make exactly `expected` allocations in this process,
// which must happen within `limit` rounds; fails otherwise. Buffers that are kept for reuse grow
// to the most a round ever needed at once (for the TCP transport, how many messages arrived
// before their receives at the same time depends on timing), so a round may still allocate
// after a few: what must hold is that this stops. The ranks decide together, on the board.
template <class Round>
void settle(Board& board, int rank, long expected, Round&& round, const std::string& what) {
  constexpr int quiet = 5;
  constexpr int limit = 60;
  int quiet_rounds = 0;
  long last = 0;
  for (int i = 0; i < limit && quiet_rounds < quiet; ++i) {
    board.sync();
    const long before = allocations.load();
    board.sync();  // every rank has read it before anyone allocates again
    round();
    board.sync();
    last = allocations.load() - before;
    board.publish(rank, static_cast<std::uint64_t>(last != expected));
    board.sync();
    bool all_quiet = true;
    for (int k = 0; k < board.size(); ++k) all_quiet = all_quiet && board.value(k) == 0;
    quiet_rounds = all_quiet ? quiet_rounds + 1 : 0;
  }
  if (quiet_rounds < quiet) {
    board.fail("rank " + std::to_string(rank) + ": " + what + " still allocate after " +
               std::to_string(limit) + " rounds (" + std::to_string(last) + " in the last, " +
               std::to_string(expected) + " expected)");
  }
}

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("repeated synchronous operations soon allocate nothing at all", C, steady) {
  for (int p : {2, 3, 4}) {
    report<C>(p, run_pair<C>(p, [](auto& c, Board& board) {
                const int n = c.size();
                const int r = c.rank();
                const auto un = static_cast<std::size_t>(n);
                std::vector<float> small(8, 1.0f), large(1 << 20, 1.0f), out(1 << 20);
                std::vector<double> doubles(1000, 1.0);
                std::vector<int> gathered(1000 * un), part(1000), whole(1000 * un, 1);
                std::vector<std::int64_t> a2a_in(64 * un), a2a_out(64 * un);
                std::vector<std::vector<float>> grads(20, std::vector<float>(100, 1.0f));
                std::vector<std::uint8_t> message(100000), incoming(100000);
                const auto round = [&] {
                  c.all_sum(small);
                  c.all_max(large);
                  c.all_sum(large, out);
                  c.all_reduce(doubles, [](double x, double y) { return x + y; });
                  c.all_gather(std::span(part), gathered);
                  c.sum_scatter(whole, part);
                  c.broadcast(large, n - 1);
                  c.all_to_all(a2a_in, a2a_out);
                  c.barrier();
                  c.all_sum_fused(grads);
                  if (n > 1) {
                    // A ring of sends: every rank sends to the next and receives from the previous.
                    auto pending = c.send_async(message, (r + 1) % n);
                    c.recv(incoming, (r + n - 1) % n);
                    pending.wait();
                  }
                };
                for (int i = 0; i < 3; ++i) round();
                // Sends are posted asynchronously above, so each round allocates that one record:
                // counted apart below. Here, synchronous sends and receives.
                const auto sync_round = [&] {
                  round();
                  if (n > 1) {
                    if (r % 2 == 0) {
                      c.send(message, (r + 1) % n);
                      c.recv(incoming, (r + n - 1) % n);
                    } else {
                      c.recv(incoming, (r + n - 1) % n);
                      c.send(message, (r + 1) % n);
                    }
                  }
                };
                // One asynchronous send record per round from every rank sharing this process.
                const long ranks_here = TestWorld<transport_of<C>>::ranks_share_a_process ? n : 1;
                settle(board, r, n > 1 ? ranks_here : 0, sync_round,
                       "synchronous collectives and sends (beyond one asynchronous send record per rank)");
              }));
  }
}
TEST_CASE_TEMPLATE_APPLY(steady, Pairs);

TEST_CASE_TEMPLATE_DEFINE("each asynchronous call soon allocates its Request's state and nothing else", C, async) {
  for (int p : {2, 4}) {
    report<C>(p, run_pair<C>(p, [](auto& c, Board& board) {
                std::vector<float> x(100000, 1.0f);
                std::vector<Request> pending;
                pending.reserve(16);
                const auto round = [&] {
                  for (int i = 0; i < 8; ++i) pending.push_back(c.all_sum_async(x));
                  pending.push_back(c.barrier_async());
                  for (auto& q : pending) q.wait();
                  pending.clear();
                };
                const long ranks_here = TestWorld<transport_of<C>>::ranks_share_a_process ? c.size() : 1;
                settle(board, c.rank(), 9 * ranks_here, round, "nine asynchronous calls (beyond one record each)");
              }));
  }
}
TEST_CASE_TEMPLATE_APPLY(async, Pairs);
