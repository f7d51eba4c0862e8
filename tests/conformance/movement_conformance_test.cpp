// Conformance of the data-movement collectives (all_gather, sum_scatter / reduce_scatter,
// broadcast, all_to_all, send/recv, barrier), of split sub-groups, of the asynchronous and fused
// forms, for every enabled algorithm over rank counts {1, 2, 3, 4, 5, 8}.
#include "collie/core/collective.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <atomic>
#include <complex>
#include <cstring>
#include <string>
#include <vector>

#include "harness.hpp"

namespace {

using namespace collie;
using namespace collie::testing;

using Algorithms = AsTuple<collie::EnabledAlgorithms>::type;

// A value every rank can compute for (rank, index), distinct enough to catch misplaced blocks.
template <class E>
E tagged(int rank, std::size_t index) {
  return from_int<E>(static_cast<int>((static_cast<std::size_t>(rank) * 31 + index * 7) % 120));
}

// Per-rank block count for the gather and scatter checks: the listed counts, except that the
// large one is split among the ranks, so the whole buffer (not each block) has ~1M elements.
std::vector<std::size_t> block_counts(int p) {
  auto counts = element_counts(p);
  counts.back() = large_count() / static_cast<std::size_t>(p) + 1;
  return counts;
}

std::string where(int p, std::size_t count, int rank) {
  return "p=" + std::to_string(p) + " count=" + std::to_string(count) + " rank=" +
         std::to_string(rank);
}

// Element types that exercise 1-, 2-, 8-byte and complex layouts.
using MovementTypes = detail::TypeList<bool, std::uint8_t, float16, bfloat16, std::int32_t, double,
                                       std::complex<float>>;

template <class Fn>
void for_every_rank_count(Fn fn) {
  for (int p : rank_counts) {
    CAPTURE(p);
    const auto failures = fn(p);
    for (const auto& f : failures) FAIL_CHECK(f);
    CHECK(failures.empty());
  }
}

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("all_gather places block k of the output from rank k", Algorithm, case0) {
  for_every_rank_count([](int p) {
    return run_ranks<Algorithm>(p, [](auto& c, Board& board) {
      for_each_type(MovementTypes{}, [&]<class E>() {
        const int n = c.size();
        for (std::size_t count : block_counts(n)) {
          Array<E> in(count);
          for (std::size_t i = 0; i < count; ++i) in[i] = tagged<E>(c.rank(), i);
          Array<E> out(count * static_cast<std::size_t>(n));
          c.all_gather(in, out);
          // In place: the input already sits in this rank's block of the output.
          Array<E> same(count * static_cast<std::size_t>(n));
          std::span<E> own(same.data() + count * static_cast<std::size_t>(c.rank()), count);
          std::copy(in.begin(), in.end(), own.begin());
          c.all_gather(own, same);
          for (int k = 0; k < n; ++k) {
            for (std::size_t i = 0; i < count; ++i) {
              const std::size_t at = static_cast<std::size_t>(k) * count + i;
              if (!(out[at] == tagged<E>(k, i)) || !(same[at] == tagged<E>(k, i))) {
                board.fail("all_gather " + where(n, count, c.rank()) + " block " + std::to_string(k));
                return;
              }
            }
          }
        }
      });
    });
  });
}

TEST_CASE_TEMPLATE_DEFINE("sum_scatter gives rank k the sum of block k", Algorithm, case1) {
  for_every_rank_count([](int p) {
    return run_ranks<Algorithm>(p, [](auto& c, Board& board) {
      const int n = c.size();
      for_each_type(CheckedTypes{}, [&]<class E>() {
        for (std::size_t count : block_counts(n)) {
          const std::size_t total = count * static_cast<std::size_t>(n);
          Array<E> in(total);
          for (std::size_t i = 0; i < total; ++i) in[i] = input_value<E, Sum>(count, c.rank(), i);
          Array<E> out(count);
          c.sum_scatter(in, out);
          Array<E> maxed(count);
          c.reduce_scatter(in, maxed, Max{});
          for (std::size_t i = 0; i < count; ++i) {
            const std::size_t at = static_cast<std::size_t>(c.rank()) * count + i;
            E sum = input_value<E, Sum>(count, 0, at);
            E max = sum;
            for (int k = 1; k < n; ++k) {
              sum = Sum{}(sum, input_value<E, Sum>(count, k, at));
              max = Max{}(max, input_value<E, Sum>(count, k, at));
            }
            if (!(out[i] == sum) || !(maxed[i] == max)) {
              board.fail("reduce_scatter " + where(n, count, c.rank()) + " element " +
                         std::to_string(i) + " is " + describe_value(out[i]) + ", expected " +
                         describe_value(sum));
              return;
            }
          }
        }
      });
    });
  });
}

TEST_CASE_TEMPLATE_DEFINE("broadcast copies the root's buffer to every rank, for every root", Algorithm, case2) {
  for_every_rank_count([](int p) {
    return run_ranks<Algorithm>(p, [](auto& c, Board& board) {
      const int n = c.size();
      for (std::size_t count : {std::size_t{0}, std::size_t{1}, std::size_t{1000}, large_count()}) {
        for (int root = 0; root < n; ++root) {
          std::vector<double> data(count), in(count), out(count, -1.0);
          for (std::size_t i = 0; i < count; ++i) {
            data[i] = c.rank() == root ? static_cast<double>(i + static_cast<std::size_t>(root)) : -1.0;
            in[i] = data[i];
          }
          c.broadcast(data, root);
          c.broadcast(in, out, root);
          for (std::size_t i = 0; i < count; ++i) {
            const double want = static_cast<double>(i + static_cast<std::size_t>(root));
            if (data[i] != want || out[i] != want) {
              board.fail("broadcast " + where(n, count, c.rank()) + " root " + std::to_string(root));
              return;
            }
          }
        }
      }
    });
  });
}

TEST_CASE_TEMPLATE_DEFINE("all_to_all sends block k to rank k", Algorithm, case3) {
  for_every_rank_count([](int p) {
    return run_ranks<Algorithm>(p, [](auto& c, Board& board) {
      const auto n = static_cast<std::size_t>(c.size());
      for (std::size_t block : {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{10007}}) {
        std::vector<std::int64_t> in(block * n), out(block * n);
        // Element i of the block for rank k: identifies sender, receiver and position.
        for (std::size_t k = 0; k < n; ++k) {
          for (std::size_t i = 0; i < block; ++i) {
            in[k * block + i] = static_cast<std::int64_t>((static_cast<std::size_t>(c.rank()) * 1000 + k) * 100000 + i);
          }
        }
        c.all_to_all(in, out);
        for (std::size_t k = 0; k < n; ++k) {
          for (std::size_t i = 0; i < block; ++i) {
            const auto want = static_cast<std::int64_t>((k * 1000 + static_cast<std::size_t>(c.rank())) * 100000 + i);
            if (out[k * block + i] != want) {
              board.fail("all_to_all " + where(c.size(), block, c.rank()) + " from " + std::to_string(k));
              return;
            }
          }
        }
      }
    });
  });
}

TEST_CASE_TEMPLATE_DEFINE("send and recv work between every pair of ranks", Algorithm, case4) {
  for (int p : {2, 3, 5, 8}) {
    CAPTURE(p);
    const auto failures = run_ranks<Algorithm>(p, [](auto& c, Board& board) {
      const int n = c.size();
      const std::size_t count = 1001;
      // Post every send first (asynchronously), then receive from everyone in rank order.
      std::vector<std::vector<float>> outgoing(static_cast<std::size_t>(n));
      std::vector<Request> sends;
      for (int peer = 0; peer < n; ++peer) {
        if (peer == c.rank()) continue;
        auto& buffer = outgoing[static_cast<std::size_t>(peer)];
        buffer.assign(count, static_cast<float>(c.rank() * 100 + peer));
        sends.push_back(c.send_async(buffer, peer));
      }
      for (int peer = 0; peer < n; ++peer) {
        if (peer == c.rank()) continue;
        std::vector<float> incoming(count);
        c.recv(incoming, peer);
        if (incoming[count - 1] != static_cast<float>(peer * 100 + c.rank())) {
          board.fail("recv on rank " + std::to_string(c.rank()) + " from " + std::to_string(peer));
        }
      }
      for (auto& s : sends) s.wait();
      // Messages between two ranks arrive in the order they were sent.
      if (c.rank() == 0) {
        for (int i = 0; i < 5; ++i) c.send(std::vector<int>{i}, 1);
      } else if (c.rank() == 1) {
        for (int i = 0; i < 5; ++i) {
          std::vector<int> v(1);
          c.recv(v, 0);
          if (v[0] != i) board.fail("message order: got " + std::to_string(v[0]) + " for " + std::to_string(i));
        }
      }
    });
    for (const auto& f : failures) FAIL_CHECK(f);
    CHECK(failures.empty());
  }
}

TEST_CASE_TEMPLATE_DEFINE("barrier returns only after every rank has entered it", Algorithm, case5) {
  for_every_rank_count([](int p) {
    std::atomic<int> entered{0};
    return run_ranks<Algorithm>(p, [&](auto& c, Board& board) {
      for (int round = 1; round <= 20; ++round) {
        // Late ranks make the race visible if the barrier let anyone through early.
        if (c.rank() == round % c.size()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        entered.fetch_add(1);
        c.barrier();
        if (entered.load() < round * c.size()) {
          board.fail("rank " + std::to_string(c.rank()) + " left barrier " + std::to_string(round) + " early");
        }
        c.barrier();  // nobody starts the next round before everyone checked this one
      }
    });
  });
}

TEST_CASE_TEMPLATE_DEFINE("split forms sub-groups ordered by key whose collectives stay apart", Algorithm, case6) {
  for_every_rank_count([](int p) {
    return run_ranks<Algorithm>(p, [](auto& c, Board& board) {
      const int n = c.size();
      const int color = c.rank() % 2;
      // Reverse order inside each colour.
      auto sub = c.split(color, n - c.rank());
      int expected_size = 0, expected_rank = 0;
      for (int k = 0; k < n; ++k) {
        if (k % 2 != color) continue;
        ++expected_size;
        if (k > c.rank()) ++expected_rank;
      }
      if (sub.size() != expected_size || sub.rank() != expected_rank) {
        board.fail("rank " + std::to_string(c.rank()) + " got sub-rank " + std::to_string(sub.rank()) +
                   " of " + std::to_string(sub.size()));
        return;
      }
      // Both sub-groups and the parent reduce at the same time; nothing may leak across.
      std::vector<long> in_sub(1000, c.rank());
      std::vector<long> in_world(1000, 1);
      sub.all_sum(in_sub);
      c.all_sum(in_world);
      long want = 0;
      for (int k = color; k < n; k += 2) want += k;
      if (in_sub[999] != want || in_world[0] != n) board.fail("sub-group sum on rank " + std::to_string(c.rank()));
      // Keys default to the parent order; splitting a sub-group works too.
      auto again = sub.split(0);
      if (again.size() != sub.size() || again.rank() != sub.rank()) board.fail("split(0) of a sub-group");
      std::vector<int> gathered(static_cast<std::size_t>(again.size()));
      again.all_gather(std::vector<int>{c.rank()}, gathered);
      for (std::size_t k = 1; k < gathered.size(); ++k) {
        if (gathered[k] >= gathered[k - 1]) board.fail("sub-group all_gather order on rank " + std::to_string(c.rank()));
      }
    });
  });
}

TEST_CASE_TEMPLATE_DEFINE("asynchronous collectives complete in order and overlap the caller", Algorithm, case7) {
  for (int p : {1, 2, 4, 5}) {
    CAPTURE(p);
    const auto failures = run_ranks<Algorithm>(p, [](auto& c, Board& board) {
      const int n = c.size();
      std::vector<std::vector<float>> buffers(8, std::vector<float>(50000));
      std::vector<Request> pending;
      for (std::size_t b = 0; b < buffers.size(); ++b) {
        std::fill(buffers[b].begin(), buffers[b].end(), static_cast<float>(b + 1));
        pending.push_back(c.all_sum_async(buffers[b]));
      }
      std::vector<double> gathered(static_cast<std::size_t>(n));
      const std::vector<double> mine{static_cast<double>(c.rank())};
      auto gather = c.all_gather_async(mine, gathered);
      // A synchronous collective meanwhile, on this thread.
      std::vector<int> flag{1};
      c.all_sum(flag);
      for (auto& r : pending) r.wait();
      gather.wait();
      if (flag[0] != n) board.fail("synchronous all_sum during asynchronous ones");
      for (std::size_t b = 0; b < buffers.size(); ++b) {
        if (buffers[b][49999] != static_cast<float>((b + 1) * static_cast<std::size_t>(n))) {
          board.fail("async all_sum " + std::to_string(b) + " on rank " + std::to_string(c.rank()));
        }
      }
      for (int k = 0; k < n; ++k) {
        if (gathered[static_cast<std::size_t>(k)] != k) board.fail("async all_gather");
      }
      std::vector<int> bad(3);
      auto refused = c.all_gather_async(bad, bad);
      std::error_code ec;
      refused.wait(ec);
      if (n > 1 && ec != errc::invalid_argument) board.fail("async size error not reported");
    });
    for (const auto& f : failures) FAIL_CHECK(f);
    CHECK(failures.empty());
  }
}

TEST_CASE_TEMPLATE_DEFINE("fused all_sum batches many small buffers and sums each one", Algorithm, case8) {
  for (int p : {1, 2, 3, 8}) {
    CAPTURE(p);
    Options options;
    options.fuse_bytes = 1000;  // small, so buffers split into several batches
    const auto failures = run_ranks<Algorithm>(
        p,
        [](auto& c, Board& board) {
          std::vector<std::vector<float>> grads;
          for (std::size_t b = 0; b < 40; ++b) {
            grads.emplace_back(b * 13 % 300, static_cast<float>(c.rank() + b));  // 0 to 299 elements
          }
          c.all_sum_fused(grads);
          const int n = c.size();
          for (std::size_t b = 0; b < grads.size(); ++b) {
            const float want = static_cast<float>(n * (n - 1) / 2 + n * static_cast<int>(b));
            for (float v : grads[b]) {
              if (v != want) {
                board.fail("fused buffer " + std::to_string(b) + " has " + std::to_string(v) +
                           ", expected " + std::to_string(want));
                return;
              }
            }
          }
          std::vector<std::span<float>> views;
          for (auto& g : grads) views.emplace_back(g);
          c.all_sum_fused(views);  // a list of spans works too
        },
        options);
    for (const auto& f : failures) FAIL_CHECK(f);
    CHECK(failures.empty());
  }
}

TEST_CASE_TEMPLATE_DEFINE("receives posted asynchronously before their sends complete, as with MPI_Irecv then MPI_Isend", Algorithm, case9) {
  for (int p : {2, 3, 5}) {
    CAPTURE(p);
    Options options;
    options.timeout = std::chrono::seconds(10);  // a deadlock fails the case instead of hanging it
    const auto failures = run_ranks<Algorithm>(
        p,
        [](auto& c, Board& board) {
          const int n = c.size();
          const std::size_t count = 777;
          std::vector<std::vector<int>> incoming(static_cast<std::size_t>(n), std::vector<int>(count));
          std::vector<std::vector<int>> outgoing(static_cast<std::size_t>(n));
          std::vector<Request> pending;
          // Every rank posts all its receives, then all its sends, then waits: each receive
          // waits for a send posted after it, on the other rank.
          for (int round = 0; round < 3; ++round) {
            for (int peer = 0; peer < n; ++peer) {
              if (peer != c.rank()) pending.push_back(c.recv_async(incoming[static_cast<std::size_t>(peer)], peer));
            }
            for (int peer = 0; peer < n; ++peer) {
              if (peer == c.rank()) continue;
              auto& buffer = outgoing[static_cast<std::size_t>(peer)];
              buffer.assign(count, c.rank() * 1000 + peer * 10 + round);
              pending.push_back(c.send_async(buffer, peer));
            }
            // Waited in reverse: the last send first.
            for (auto it = pending.rbegin(); it != pending.rend(); ++it) it->wait();
            pending.clear();
            for (int peer = 0; peer < n; ++peer) {
              if (peer == c.rank()) continue;
              const int want = peer * 1000 + c.rank() * 10 + round;
              if (incoming[static_cast<std::size_t>(peer)][count - 1] != want) {
                board.fail("round " + std::to_string(round) + " rank " + std::to_string(c.rank()) +
                           " from " + std::to_string(peer));
              }
            }
          }
        },
        options);
    for (const auto& f : failures) FAIL_CHECK(f);
    CHECK(failures.empty());
  }
}

TEST_CASE_TEMPLATE_APPLY(case0, Algorithms);
TEST_CASE_TEMPLATE_APPLY(case1, Algorithms);
TEST_CASE_TEMPLATE_APPLY(case2, Algorithms);
TEST_CASE_TEMPLATE_APPLY(case3, Algorithms);
TEST_CASE_TEMPLATE_APPLY(case4, Algorithms);
TEST_CASE_TEMPLATE_APPLY(case5, Algorithms);
TEST_CASE_TEMPLATE_APPLY(case6, Algorithms);
TEST_CASE_TEMPLATE_APPLY(case7, Algorithms);
TEST_CASE_TEMPLATE_APPLY(case8, Algorithms);
TEST_CASE_TEMPLATE_APPLY(case9, Algorithms);
