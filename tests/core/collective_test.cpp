// Collective's error contract: local mistakes are reported before any byte moves and leave the
// group usable; I/O failures name the operation, the step and the peer, and abort the group.
#include "collie/core/collective.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "../conformance/harness.hpp"

using namespace collie;
using namespace collie::testing;
using namespace std::chrono_literals;

namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("a size mismatch is reported before any byte moves and the group stays usable") {
  const auto failures = run_ranks<Ring>(3, [](auto& c, Board& board) {
    std::vector<float> in(10, 1.0f), out(9);
    std::error_code ec;
    c.all_sum(in, out, ec);
    if (ec != errc::invalid_argument) board.fail("all_sum size: " + ec.message());
    if (!contains(c.last_error(), "collie[inproc/ring] all_reduce") ||
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
    c.all_to_all(in, out, ec);
    if (ec != errc::invalid_argument) board.fail("all_to_all size");
    try {
      c.all_sum(in, out);
      board.fail("the throwing form did not throw");
    } catch (const Error& e) {
      if (e.code() != errc::invalid_argument || !contains(e.what(), "nothing was sent")) {
        board.fail(std::string("exception: ") + e.what());
      }
    }
    // Still usable: nothing was sent by anyone.
    c.all_sum(in);
    if (in[0] != 3.0f) board.fail("group not usable after a size error");
  });
  for (const auto& f : failures) FAIL_CHECK(f);
  CHECK(failures.empty());
}

TEST_CASE("peers out of range, self sends and bad roots are refused locally") {
  const auto failures = run_ranks<Mesh>(2, [](auto& c, Board& board) {
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
    c.barrier();
  });
  for (const auto& f : failures) FAIL_CHECK(f);
  CHECK(failures.empty());
}

TEST_CASE("a singleton group makes collectives identities and send an error") {
  InProcessWorld world(1);
  Collective<InProcessTransport, Ring> c(world.transport(0));
  std::vector<float> x = {1, 2, 3};
  const float* before = x.data();
  c.all_sum(x);
  CHECK(x.data() == before);
  CHECK(x == std::vector<float>{1, 2, 3});
  std::vector<float> out(3);
  c.all_max(x, out);
  CHECK(out == x);
  c.all_gather(x, out);
  CHECK(out == x);
  c.sum_scatter(x, out);
  c.broadcast(x, 0);
  c.barrier();
  std::error_code ec;
  c.send(x, 0, ec);
  CHECK(ec == errc::singleton_group);
  CHECK_THROWS_AS(c.recv(x, 0), Error);
  auto sub = c.split(3);
  CHECK(sub.size() == 1);
}

TEST_CASE("a silent peer times out with the step and the peer named, then the group is aborted") {
  Options options;
  options.timeout = 200ms;
  const auto failures = run_ranks<Ring>(
      3,
      [](auto& c, Board& board) {
        std::vector<float> x(100000, 1.0f);
        if (c.rank() == 2) {
          board.sync.arrive_and_wait();  // rank 2 never joins the all_sum
          return;
        }
        std::error_code ec;
        const auto start = std::chrono::steady_clock::now();
        c.all_sum(x, ec);
        const auto took = std::chrono::steady_clock::now() - start;
        if (ec != errc::timed_out) board.fail("rank " + std::to_string(c.rank()) + ": " + ec.message());
        if (took > 5s) board.fail("took too long to time out");
        const std::string& message = c.last_error();
        if (!contains(message, "all_reduce: reduce-scatter step 1 of 2, waiting for rank") ||
            !contains(message, "timed out after 200 ms")) {
          board.fail("message: " + message);
        }
        // Aborted for good: the next call fails at once, saying why.
        c.barrier(ec);
        if (ec != errc::aborted || !contains(c.last_error(), "aborted by an earlier error")) {
          board.fail("after timeout: " + c.last_error());
        }
        board.sync.arrive_and_wait();
      },
      options);
  for (const auto& f : failures) FAIL_CHECK(f);
  CHECK(failures.empty());
}

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

TEST_CASE("the error_code forms never throw and the throwing forms carry the message") {
  InProcessWorld world(2);
  Collective<InProcessTransport, Mesh> c(world.transport(0));
  std::vector<int> a(3), b(2);
  std::error_code ec;
  static_assert(noexcept(c.all_sum(a, b, ec)));
  static_assert(noexcept(c.barrier(ec)));
  c.all_sum(a, b, ec);
  CHECK(ec == errc::invalid_argument);
  CHECK(ec.category().name() == std::string("collie"));
  try {
    c.all_gather(a, b);
    FAIL("no exception");
  } catch (const Error& e) {
    CHECK(e.code() == errc::invalid_argument);
    CHECK(contains(e.what(), "collie[inproc/mesh] all_gather"));
  }
}
