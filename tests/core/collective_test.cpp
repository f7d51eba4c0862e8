// The error contract of every enabled pair: local mistakes are reported before any byte moves and
// leave the group usable; a group of one rank makes every collective an identity; I/O failures
// name the operation, the step and the peer, and abort the group for good.
#include "collie/core/collective.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "../conformance/pairs.hpp"

using namespace collie;
using namespace collie::testing;
using namespace std::chrono_literals;

namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("a size mismatch is reported before any byte moves and the group stays usable", C, sizes) {
  report<C>(3, run_pair<C>(3, [](auto& c, Board& board) {
              const std::string prefix = "collie[" + c.name() + "] ";
              std::vector<float> in(10, 1.0f), out(9);
              std::error_code ec;
              c.all_sum(in, out, ec);
              if (ec != errc::invalid_argument) board.fail("all_sum size: " + ec.message());
              if (!contains(c.last_error(), prefix + "all_reduce") ||
                  !contains(c.last_error(), "10 elements but output has 9")) {
                board.fail("message: " + c.last_error());
              }
              std::vector<float> gathered(29);
              c.all_gather(in, gathered, ec);
              if (ec != errc::invalid_argument || !contains(c.last_error(), "10 × 3")) {
                board.fail("all_gather size: " + c.last_error());
              }
              std::vector<float> scattered(4);
              c.sum_scatter(in, scattered, ec);
              if (ec != errc::invalid_argument) board.fail("sum_scatter size");
              std::vector<float> nine(9);
              c.sum_scatter(nine, std::span(nine).first(3), ec);
              if (ec != errc::invalid_argument || !contains(c.last_error(), "overlap")) {
                board.fail("sum_scatter into its own input: " + c.last_error());
              }
              c.all_to_all(in, out, ec);
              if (ec != errc::invalid_argument) board.fail("all_to_all size");
              c.all_sum(std::span(in).first(6), std::span(in).subspan(4), ec);
              if (ec != errc::invalid_argument || !contains(c.last_error(), "overlap partially")) {
                board.fail("partially overlapping all_sum: " + c.last_error());
              }
              std::vector<float> other(11);
              c.broadcast(in, other, 0, ec);
              if (ec != errc::invalid_argument) board.fail("broadcast sizes");
              auto pending = c.all_sum_async(in);  // a valid call, on every rank
              pending.wait(ec);
              try {
                c.all_sum(in, out);
                board.fail("the throwing form did not throw");
              } catch (const Error& e) {
                if (e.code() != errc::invalid_argument || !contains(e.what(), "nothing was sent")) {
                  board.fail(std::string("exception: ") + e.what());
                }
              }
              // Still usable: nothing was sent by anyone (the asynchronous sum above was fine).
              if (ec) board.fail("asynchronous all_sum: " + ec.message());
              if (in != std::vector<float>(10, 3.0f)) board.fail("asynchronous all_sum result");
              c.all_sum(in);
              if (in != std::vector<float>(10, 9.0f)) board.fail("group not usable after a size error");
            }));
}
TEST_CASE_TEMPLATE_APPLY(sizes, Pairs);

TEST_CASE_TEMPLATE_DEFINE("peers out of range, self sends and bad roots are refused locally", C, peers) {
  report<C>(2, run_pair<C>(2, [](auto& c, Board& board) {
              std::vector<int> x(4);
              std::error_code ec;
              c.send(x, 2, ec);
              if (ec != errc::peer_out_of_range || !contains(c.last_error(), "peer 2 is outside [0, 2)")) {
                board.fail("send to 2: " + c.last_error());
              }
              c.recv(x, -1, ec);
              if (ec != errc::peer_out_of_range) board.fail("recv from -1");
              c.send(x, c.rank(), ec);
              if (ec != errc::invalid_argument) board.fail("send to self");
              c.broadcast(x, 5, ec);
              if (ec != errc::peer_out_of_range || !contains(c.last_error(), "root 5")) board.fail("broadcast root 5");
              auto r = c.recv_async(x, 7);
              r.wait(ec);
              if (ec != errc::peer_out_of_range) board.fail("recv_async from 7");
              c.barrier();
            }));
}
TEST_CASE_TEMPLATE_APPLY(peers, Pairs);

TEST_CASE_TEMPLATE_DEFINE("a group of one rank makes every collective an identity and send an error", C, singleton) {
  report<C>(1, run_pair<C>(1, [](auto& c, Board& board) {
              std::vector<float> x = {1, 2, 3};
              const float* before = x.data();
              c.all_sum(x);
              c.all_prod(x);
              c.all_reduce(x, [](float a, float b) { return a - b; });
              if (x.data() != before || x != std::vector<float>{1, 2, 3}) board.fail("in-place reductions");
              std::vector<float> out(3);
              c.all_max(x, out);
              if (out != x) board.fail("out-of-place all_max");
              std::fill(out.begin(), out.end(), 0.0f);
              c.all_gather(x, out);
              if (out != x) board.fail("all_gather");
              std::fill(out.begin(), out.end(), 0.0f);
              c.sum_scatter(x, out);
              if (out != x) board.fail("sum_scatter");
              std::fill(out.begin(), out.end(), 0.0f);
              c.all_to_all(x, out);
              if (out != x) board.fail("all_to_all");
              c.broadcast(x, 0);
              if (x != std::vector<float>{1, 2, 3}) board.fail("broadcast in place");
              std::fill(out.begin(), out.end(), 0.0f);
              c.broadcast(x, out, 0);
              if (out != x) board.fail("broadcast out of place");
              c.barrier();
              c.all_sum_async(x).wait();
              c.barrier_async().wait();
              if (x != std::vector<float>{1, 2, 3}) board.fail("asynchronous all_sum");
              std::error_code ec;
              c.send(x, 0, ec);
              if (ec != errc::singleton_group) board.fail("send on one rank: " + ec.message());
              try {
                c.recv(x, 0);
                board.fail("recv on one rank did not throw");
              } catch (const Error& e) {
                if (e.code() != errc::singleton_group) board.fail(std::string("recv: ") + e.what());
              }
              auto sub = c.split(3);
              if (sub.size() != 1 || sub.rank() != 0) board.fail("split of one rank");
            }));
}
TEST_CASE_TEMPLATE_APPLY(singleton, Pairs);

TEST_CASE_TEMPLATE_DEFINE("a silent peer times out with the step and the peer named, then the group is aborted", C, silent) {
  Options options;
  options.timeout = 200ms;
  report<C>(3, run_pair<C>(
                   3,
                   [](auto& c, Board& board) {
                     std::vector<float> x(100000, 1.0f);
                     if (c.rank() == 2) {
                       board.sync();  // rank 2 never joins the all_sum
                       return;
                     }
                     std::error_code ec;
                     const auto start = std::chrono::steady_clock::now();
                     c.all_sum(x, ec);
                     const auto took = std::chrono::steady_clock::now() - start;
                     if (ec != errc::timed_out) board.fail("rank " + std::to_string(c.rank()) + ": " + ec.message());
                     if (took > 5s) board.fail("took too long to time out");
                     const std::string& message = c.last_error();
                     if (!contains(message, "collie[" + c.name() + "] all_reduce: ") ||
                         !contains(message, ", waiting for rank ") ||
                         !contains(message, "timed out after 200 ms")) {
                       board.fail("message: " + message);
                     }
                     // Aborted for good: the next call fails at once, saying why.
                     c.barrier(ec);
                     if (ec != errc::aborted || !contains(c.last_error(), "aborted by an earlier error")) {
                       board.fail("after timeout: " + c.last_error());
                     }
                     board.sync();
                   },
                   {}, options));
}
TEST_CASE_TEMPLATE_APPLY(silent, Pairs);

TEST_CASE_TEMPLATE_DEFINE("the error_code forms never throw and the throwing forms carry the message", C, forms) {
  report<C>(2, run_pair<C>(2, [](auto& c, Board& board) {
              std::vector<int> a(3), b(2);
              std::error_code ec;
              static_assert(noexcept(c.all_sum(a, b, ec)));
              static_assert(noexcept(c.all_reduce(a, Max{}, ec)));
              static_assert(noexcept(c.all_gather(a, b, ec)));
              static_assert(noexcept(c.sum_scatter(a, b, ec)));
              static_assert(noexcept(c.broadcast(a, 0, ec)));
              static_assert(noexcept(c.all_to_all(a, b, ec)));
              static_assert(noexcept(c.barrier(ec)));
              static_assert(noexcept(c.send(a, 0, ec)));
              static_assert(noexcept(c.recv(a, 0, ec)));
              static_assert(noexcept(c.split(0, 0, ec)));
              c.all_sum(a, b, ec);
              if (ec != errc::invalid_argument || ec.category().name() != std::string("collie")) {
                board.fail("all_sum: " + ec.message());
              }
              try {
                c.all_gather(a, b);
                board.fail("no exception");
              } catch (const Error& e) {
                if (e.code() != errc::invalid_argument || !contains(e.what(), "collie[" + c.name() + "] all_gather")) {
                  board.fail(std::string("exception: ") + e.what());
                }
              }
            }));
}
TEST_CASE_TEMPLATE_APPLY(forms, Pairs);

TEST_CASE("a dead peer makes every survivor fail at once, naming it") {
  InProcessWorld world(4);
  std::vector<std::string> messages(4);
  std::vector<std::error_code> codes(4);
  std::vector<std::thread> threads;
  for (int r = 0; r < 4; ++r) {
    threads.emplace_back([&, r] {
      Collective<InProcessTransport, Ring> c(world.transport(r));  // default 60 s timeout
      std::vector<double> x(1 << 20, 1.0);
      if (r == 3) {
        world.kill(3);
        return;
      }
      c.all_sum(x, codes[static_cast<std::size_t>(r)]);
      messages[static_cast<std::size_t>(r)] = c.last_error();
    });
  }
  const auto start = std::chrono::steady_clock::now();
  for (auto& t : threads) t.join();
  CHECK(std::chrono::steady_clock::now() - start < 10s);
  // Ranks 0 and 2 talk to rank 3 directly; rank 1 waits on them, and learns at once when they
  // abort. Whichever way each survivor learns it, its message names rank 3: an abort carries the
  // aborting rank's own error.
  for (int r : {0, 1, 2}) {
    CAPTURE(messages[static_cast<std::size_t>(r)]);
    CHECK(codes[static_cast<std::size_t>(r)] == errc::connection_lost);
    CHECK(contains(messages[static_cast<std::size_t>(r)], "rank 3 closed its connection or died"));
  }
}
