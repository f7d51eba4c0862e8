// Conformance of the data-movement collectives (all_gather, sum_scatter / reduce_scatter,
// broadcast, all_to_all, send/recv, barrier), of split subgroups, and of the asynchronous and
// fused forms, for every enabled pair over rank counts {1, 2, 3, 4, 5, 8}. Every check compares
// whole buffers with what every rank can compute for itself.
#include "collie/core/collective.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <complex>
#include <cstring>
#include <string>
#include <vector>

#include "pairs.hpp"

namespace {

using namespace collie;
using namespace collie::testing;

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

// Index of the first element of `got` that differs from `want(i)`, or -1.
template <class Range, class Want>
long first_difference(const Range& got, std::size_t n, Want&& want) {
  for (std::size_t i = 0; i < n; ++i) {
    if (!(got[i] == want(i))) return static_cast<long>(i);
  }
  return -1;
}

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("all_gather places block k of the output from rank k", C, case0) {
  for_every_rank_count<C>([](auto& c, Board& board) {
    for_each_type(MovementTypes{}, [&]<class E>() {
      const int n = c.size();
      for (std::size_t count : block_counts(n)) {
        Array<E> in(count);
        for (std::size_t i = 0; i < count; ++i) in[i] = tagged<E>(c.rank(), i);
        const std::size_t total = count * static_cast<std::size_t>(n);
        Array<E> out(total);
        c.all_gather(in, out);
        // In place: the input already sits in this rank's block of the output.
        Array<E> same(total);
        std::span<E> own(same.data() + count * static_cast<std::size_t>(c.rank()), count);
        std::copy(in.begin(), in.end(), own.begin());
        c.all_gather(own, same);
        const auto want = [&](std::size_t at) { return tagged<E>(static_cast<int>(at / count), at % count); };
        const long bad = first_difference(out, total, want);
        const long bad_same = first_difference(same, total, want);
        if (bad >= 0 || bad_same >= 0) {
          board.fail("all_gather " + where(n, count, c.rank()) + (bad >= 0 ? " out of place" : " in place") +
                     " element " + std::to_string(bad >= 0 ? bad : bad_same));
          return;
        }
      }
    });
  });
}

TEST_CASE_TEMPLATE_DEFINE("sum_scatter gives rank k the sum of block k", C, case1) {
  for_every_rank_count<C>([](auto& c, Board& board) {
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
                       std::to_string(i) + " is " + describe_value(out[i]) + " (max " +
                       describe_value(maxed[i]) + "), expected " + describe_value(sum) + " (max " +
                       describe_value(max) + ")");
            return;
          }
        }
      }
    });
  });
}

TEST_CASE_TEMPLATE_DEFINE("broadcast copies the root's buffer to every rank, for every root", C, case2) {
  for_every_rank_count<C>([](auto& c, Board& board) {
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
        const auto want = [&](std::size_t i) { return static_cast<double>(i + static_cast<std::size_t>(root)); };
        if (first_difference(data, count, want) >= 0 || first_difference(out, count, want) >= 0) {
          board.fail("broadcast " + where(n, count, c.rank()) + " root " + std::to_string(root));
          return;
        }
      }
    }
  });
}

TEST_CASE_TEMPLATE_DEFINE("all_to_all sends block k to rank k", C, case3) {
  for_every_rank_count<C>([](auto& c, Board& board) {
    const auto n = static_cast<std::size_t>(c.size());
    for (std::size_t block : {std::size_t{0}, std::size_t{1}, std::size_t{3}, std::size_t{10007}}) {
      std::vector<std::int64_t> in(block * n), out(block * n);
      // Element i of the block for rank k: identifies sender, receiver and position.
      const auto value = [](std::size_t from, std::size_t to, std::size_t i) {
        return static_cast<std::int64_t>((from * 1000 + to) * 100000 + i);
      };
      for (std::size_t k = 0; k < n; ++k) {
        for (std::size_t i = 0; i < block; ++i) in[k * block + i] = value(static_cast<std::size_t>(c.rank()), k, i);
      }
      c.all_to_all(in, out);
      const long bad = first_difference(out, out.size(), [&](std::size_t at) {
        return value(at / block, static_cast<std::size_t>(c.rank()), at % block);
      });
      if (bad >= 0) {
        board.fail("all_to_all " + where(c.size(), block, c.rank()) + " element " + std::to_string(bad));
        return;
      }
    }
  });
}

TEST_CASE_TEMPLATE_DEFINE("send and recv work between every pair of ranks, in order", C, case4) {
  for (int p : {2, 3, 5, 8}) {
    report<C>(p, run_pair<C>(p, [](auto& c, Board& board) {
                const int n = c.size();
                const std::size_t count = 1001;
                const auto value = [](int from, int to, std::size_t i) {
                  return static_cast<float>(from * 100 + to) + static_cast<float>(i % 7) / 8.0f;
                };
                // Post every send first (asynchronously), then receive from everyone in rank order.
                std::vector<std::vector<float>> outgoing(static_cast<std::size_t>(n));
                std::vector<Request> sends;
                for (int peer = 0; peer < n; ++peer) {
                  if (peer == c.rank()) continue;
                  auto& buffer = outgoing[static_cast<std::size_t>(peer)];
                  buffer.resize(count);
                  for (std::size_t i = 0; i < count; ++i) buffer[i] = value(c.rank(), peer, i);
                  sends.push_back(c.send_async(buffer, peer));
                }
                for (int peer = 0; peer < n; ++peer) {
                  if (peer == c.rank()) continue;
                  std::vector<float> incoming(count);
                  c.recv(incoming, peer);
                  if (first_difference(incoming, count, [&](std::size_t i) { return value(peer, c.rank(), i); }) >= 0) {
                    board.fail("recv on rank " + std::to_string(c.rank()) + " from " + std::to_string(peer));
                  }
                }
                for (auto& s : sends) s.wait();
                // Messages between two ranks arrive in the order they were sent.
                if (c.rank() == 0) {
                  for (int i = 0; i < 5; ++i) c.send(std::vector<int>{i, -i}, 1);
                } else if (c.rank() == 1) {
                  for (int i = 0; i < 5; ++i) {
                    std::vector<int> v(2);
                    c.recv(v, 0);
                    if (v != std::vector<int>{i, -i}) board.fail("message order: got " + std::to_string(v[0]) + " for " + std::to_string(i));
                  }
                }
              }));
  }
}

TEST_CASE_TEMPLATE_DEFINE("barrier returns only after every rank has entered it", C, case5) {
  for_every_rank_count<C>([](auto& c, Board& board) {
    auto& entered = board.counter();
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
}

TEST_CASE_TEMPLATE_DEFINE("split forms subgroups ordered by key whose collectives stay apart", C, case6) {
  for_every_rank_count<C>([](auto& c, Board& board) {
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
    // Both subgroups and the parent reduce at the same time; nothing may leak across.
    std::vector<long> in_sub(1000, c.rank());
    std::vector<long> in_world(1000, 1);
    sub.all_sum(in_sub);
    c.all_sum(in_world);
    long want = 0;
    for (int k = color; k < n; k += 2) want += k;
    if (in_sub != std::vector<long>(1000, want) || in_world != std::vector<long>(1000, n)) {
      board.fail("subgroup sum on rank " + std::to_string(c.rank()));
    }
    // Keys default to the parent order; splitting a subgroup works too.
    auto again = sub.split(0);
    if (again.size() != sub.size() || again.rank() != sub.rank()) board.fail("split(0) of a subgroup");
    std::vector<int> gathered(static_cast<std::size_t>(again.size()));
    again.all_gather(std::vector<int>{c.rank()}, gathered);
    for (std::size_t k = 0; k < gathered.size(); ++k) {
      // Reversed order: member k of the subgroup is world rank color + 2 (size - 1 - k).
      if (gathered[k] != color + 2 * (again.size() - 1 - static_cast<int>(k))) {
        board.fail("subgroup all_gather order on rank " + std::to_string(c.rank()));
        break;
      }
    }
  });
}

TEST_CASE_TEMPLATE_DEFINE("asynchronous collectives complete in order and overlap the caller", C, case7) {
  for (int p : {1, 2, 4, 5}) {
    report<C>(p, run_pair<C>(p, [](auto& c, Board& board) {
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
                std::vector<int> scattered(2);
                std::vector<int> whole(2 * static_cast<std::size_t>(n), c.rank() + 1);
                auto scatter = c.sum_scatter_async(whole, scattered);
                std::vector<int> root_data(3, c.rank() == n - 1 ? 7 : 0);
                auto broadcast = c.broadcast_async(root_data, n - 1);
                std::vector<int> a2a_in(static_cast<std::size_t>(n), c.rank()), a2a_out(static_cast<std::size_t>(n));
                auto a2a = c.all_to_all_async(a2a_in, a2a_out);
                auto barrier = c.barrier_async();
                // A synchronous collective meanwhile, on this thread.
                std::vector<int> flag{1};
                c.all_sum(flag);
                for (auto& r : pending) r.wait();
                gather.wait();
                scatter.wait();
                broadcast.wait();
                a2a.wait();
                barrier.wait();
                if (flag[0] != n) board.fail("synchronous all_sum during asynchronous ones");
                for (std::size_t b = 0; b < buffers.size(); ++b) {
                  if (buffers[b] != std::vector<float>(50000, static_cast<float>((b + 1) * static_cast<std::size_t>(n)))) {
                    board.fail("async all_sum " + std::to_string(b) + " on rank " + std::to_string(c.rank()));
                  }
                }
                for (int k = 0; k < n; ++k) {
                  if (gathered[static_cast<std::size_t>(k)] != k) board.fail("async all_gather");
                  if (a2a_out[static_cast<std::size_t>(k)] != k) board.fail("async all_to_all");
                }
                if (scattered != std::vector<int>(2, n * (n + 1) / 2)) board.fail("async sum_scatter");
                if (root_data != std::vector<int>(3, 7)) board.fail("async broadcast");
                std::vector<int> bad(3);
                auto refused = c.all_gather_async(bad, bad);
                std::error_code ec;
                refused.wait(ec);
                if (n > 1 && ec != errc::invalid_argument) board.fail("async size error not reported");
              }));
  }
}

TEST_CASE_TEMPLATE_DEFINE("fused all_sum batches many small buffers and sums each one", C, case8) {
  for (int p : {1, 2, 3, 8}) {
    Options options;
    options.fuse_bytes = 1000;  // small, so buffers split into several batches
    report<C>(p, run_pair<C>(
                     p,
                     [](auto& c, Board& board) {
                       const int n = c.size();
                       std::vector<std::vector<float>> grads;
                       for (std::size_t b = 0; b < 40; ++b) {
                         grads.emplace_back(b * 13 % 300, static_cast<float>(c.rank() + static_cast<int>(b)));  // 0 to 299 elements
                       }
                       const auto check = [&](const char* what, int times) {
                         for (std::size_t b = 0; b < grads.size(); ++b) {
                           // Summed `times` times: the first sum gives n(n-1)/2 + n·b, each later one multiplies by n.
                           float want = static_cast<float>(n * (n - 1) / 2 + n * static_cast<int>(b));
                           for (int t = 1; t < times; ++t) want *= static_cast<float>(n);
                           if (grads[b] != std::vector<float>(grads[b].size(), want)) {
                             board.fail(std::string(what) + ": buffer " + std::to_string(b) + " is not all " + std::to_string(want));
                             return;
                           }
                         }
                       };
                       c.all_sum_fused(grads);
                       check("fused vectors", 1);
                       std::vector<std::span<float>> views;
                       for (auto& g : grads) views.emplace_back(g);
                       c.all_sum_fused(views);  // a list of spans works too
                       check("fused spans", 2);
                     },
                     {}, options));
  }
}

TEST_CASE_TEMPLATE_DEFINE("receives posted asynchronously before their sends complete, as with MPI_Irecv then MPI_Isend", C, case9) {
  for (int p : {2, 3, 5}) {
    Options options;
    options.timeout = std::chrono::seconds(10);  // a deadlock fails the case instead of hanging it
    report<C>(p, run_pair<C>(
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
                           buffer.resize(count);
                           for (std::size_t i = 0; i < count; ++i) buffer[i] = c.rank() * 1000 + peer * 10 + round + static_cast<int>(i) * 100000;
                           pending.push_back(c.send_async(buffer, peer));
                         }
                         // Waited in reverse: the last send first.
                         for (auto it = pending.rbegin(); it != pending.rend(); ++it) it->wait();
                         pending.clear();
                         for (int peer = 0; peer < n; ++peer) {
                           if (peer == c.rank()) continue;
                           const auto want = [&](std::size_t i) { return peer * 1000 + c.rank() * 10 + round + static_cast<int>(i) * 100000; };
                           if (first_difference(incoming[static_cast<std::size_t>(peer)], count, want) >= 0) {
                             board.fail("round " + std::to_string(round) + " rank " + std::to_string(c.rank()) +
                                        " from " + std::to_string(peer));
                           }
                         }
                       }
                     },
                     {}, options));
  }
}

TEST_CASE_TEMPLATE_APPLY(case0, Pairs);
TEST_CASE_TEMPLATE_APPLY(case1, Pairs);
TEST_CASE_TEMPLATE_APPLY(case2, Pairs);
TEST_CASE_TEMPLATE_APPLY(case3, Pairs);
TEST_CASE_TEMPLATE_APPLY(case4, Pairs);
TEST_CASE_TEMPLATE_APPLY(case5, Pairs);
TEST_CASE_TEMPLATE_APPLY(case6, Pairs);
TEST_CASE_TEMPLATE_APPLY(case7, Pairs);
TEST_CASE_TEMPLATE_APPLY(case8, Pairs);
TEST_CASE_TEMPLATE_APPLY(case9, Pairs);
