// The Transport contract (core/concepts.hpp), checked the same way on every enabled transport, in
// its test world: matching by peer and tag in any posting order, first in first out for equal
// tags, size mismatches, deadlines, waiting again and cancelling, split contexts that never
// match each other, and an abort that reaches every peer at once, with its reason.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "../harness/values.hpp"
#include "../worlds/worlds.hpp"
#include "collie/core/concepts.hpp"
#include "collie/runtime/enabled.hpp"

using namespace collie;
using namespace collie::testing;
using namespace std::chrono_literals;

namespace {

using Transports = AsTuple<EnabledTransports>::type;

template <class T>
std::span<const std::byte> bytes(const T& v) {
  return std::as_bytes(std::span(v));
}
template <class T>
std::span<std::byte> writable(T& v) {
  return std::as_writable_bytes(std::span(v));
}

template <class T>
void report(int p, const std::vector<std::string>& failures) {
  for (const auto& f : failures) {
    const std::string text = std::string(T::name) + " (" + std::string(TestWorld<T>::name) +
                             "), " + std::to_string(p) + " ranks: " + f;
    FAIL_CHECK(text);
  }
}

// Waits with the usual deadline and reports a failure.
template <class T>
bool waited(T& t, typename T::Request& request, Board& board, const std::string& what) {
  const std::error_code ec = t.wait(request, Deadline::after(10s));
  if (ec) board.fail(what + ": " + ec.message());
  return !ec;
}

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("every transport models the concept, and refinements only when it says so", T, concept_id) {
  static_assert(Transport<T>);
  CHECK(!T::name.empty());
}
TEST_CASE_TEMPLATE_APPLY(concept_id, Transports);

TEST_CASE_TEMPLATE_DEFINE("receives match sends by peer and tag, whatever the posting order", T, matching) {
  report<T>(3, TestWorld<T>::run(3, [](T t, Board& board) {
              if (t.rank() == 1) {
                // Receives posted out of order, from two peers, with a tag both of them use.
                std::array<int, 2> from0_tag2{}, from0_tag1{}, from2_tag1{};
                auto a = t.post_recv(0, 2, writable(from0_tag2));
                auto b = t.post_recv(2, 1, writable(from2_tag1));
                board.sync();
                auto c = t.post_recv(0, 1, writable(from0_tag1));
                waited(t, c, board, "recv 0/1");
                waited(t, b, board, "recv 2/1");
                waited(t, a, board, "recv 0/2");
                if (from0_tag1 != std::array<int, 2>{1, 2} || from0_tag2 != std::array<int, 2>{3, 4} ||
                    from2_tag1 != std::array<int, 2>{5, 6}) {
                  board.fail("messages matched the wrong receives");
                }
              } else {
                board.sync();
                const std::array<int, 2> first{1, 2}, second{3, 4}, third{5, 6};
                if (t.rank() == 0) {
                  auto s1 = t.post_send(1, 1, bytes(first));
                  auto s2 = t.post_send(1, 2, bytes(second));
                  waited(t, s1, board, "send tag 1");
                  waited(t, s2, board, "send tag 2");
                } else {
                  auto s = t.post_send(1, 1, bytes(third));
                  waited(t, s, board, "send from 2");
                }
              }
              board.sync();
            }));
}
TEST_CASE_TEMPLATE_APPLY(matching, Transports);

TEST_CASE_TEMPLATE_DEFINE("equal tags match first in, first out", T, fifo) {
  report<T>(2, TestWorld<T>::run(2, [](T t, Board& board) {
              constexpr int n = 50;
              std::vector<std::array<std::uint32_t, 3>> messages(n);
              std::vector<typename T::Request> requests;
              for (int i = 0; i < n; ++i) {
                if (t.rank() == 0) {
                  messages[static_cast<std::size_t>(i)] = {static_cast<std::uint32_t>(i), 7u, static_cast<std::uint32_t>(i * i)};
                  requests.push_back(t.post_send(1, 9, bytes(messages[static_cast<std::size_t>(i)])));
                } else {
                  requests.push_back(t.post_recv(0, 9, writable(messages[static_cast<std::size_t>(i)])));
                }
              }
              for (auto& r : requests) waited(t, r, board, "message");
              if (t.rank() == 1) {
                for (int i = 0; i < n; ++i) {
                  const std::array<std::uint32_t, 3> want{static_cast<std::uint32_t>(i), 7u, static_cast<std::uint32_t>(i * i)};
                  if (messages[static_cast<std::size_t>(i)] != want) {
                    board.fail("message " + std::to_string(i) + " arrived out of order");
                    break;
                  }
                }
              }
            }));
}
TEST_CASE_TEMPLATE_APPLY(fifo, Transports);

TEST_CASE_TEMPLATE_DEFINE("a receive of the wrong size fails with a protocol error, and later messages still arrive", T, sizes) {
  report<T>(2, TestWorld<T>::run(2, [](T t, Board& board) {
              std::array<std::uint64_t, 2> big{11, 22};
              std::array<std::uint64_t, 1> small{};
              std::array<std::uint64_t, 2> next{33, 44};
              if (t.rank() == 0) {
                auto s = t.post_send(1, 1, bytes(big));
                const auto ec = t.wait(s, Deadline::after(10s));
                // The sender may or may not learn of it (a stream transport has written it).
                if (ec && ec != errc::protocol_error) board.fail("send: " + ec.message());
                board.sync();
                auto s2 = t.post_send(1, 2, bytes(next));
                waited(t, s2, board, "the next send");
              } else {
                auto r = t.post_recv(0, 1, writable(small));
                const auto ec = t.wait(r, Deadline::after(10s));
                if (ec != errc::protocol_error) board.fail("a short receive gave " + ec.message());
                board.sync();
                std::array<std::uint64_t, 2> got{};
                auto r2 = t.post_recv(0, 2, writable(got));
                waited(t, r2, board, "the next receive");
                if (got != next) board.fail("the next message is wrong");
              }
            }));
}
TEST_CASE_TEMPLATE_APPLY(sizes, Transports);

TEST_CASE_TEMPLATE_DEFINE("a wait gives up at its deadline, and the request can be waited on again or cancelled", T, deadlines) {
  report<T>(2, TestWorld<T>::run(2, [](T t, Board& board) {
              std::array<int, 4> data{1, 2, 3, 4};
              if (t.rank() == 1) {
                std::array<int, 4> got{};
                std::array<int, 4> never{9, 9, 9, 9};
                auto r = t.post_recv(0, 5, writable(got));
                auto abandoned = t.post_recv(0, 6, writable(never));
                const auto start = std::chrono::steady_clock::now();
                auto ec = t.wait(r, Deadline::after(50ms));
                const auto took = std::chrono::steady_clock::now() - start;
                if (ec != errc::timed_out) board.fail("a wait before the send gave " + ec.message());
                if (took < 40ms || took > 5s) board.fail("the deadline was not kept");
                ec = t.wait(r, Deadline::after(std::chrono::seconds(0)));  // only looks
                if (ec != errc::timed_out) board.fail("a look before the send gave " + ec.message());
                board.sync();  // now rank 0 sends
                waited(t, r, board, "waiting again");
                if (got != data) board.fail("the message is wrong");
                t.cancel(abandoned);
                ec = t.wait(abandoned, Deadline::after(50ms));
                if (ec != errc::aborted) board.fail("a wait on a cancelled request gave " + ec.message());
                if (never != std::array<int, 4>{9, 9, 9, 9}) board.fail("a cancelled receive wrote");
              } else {
                board.sync();
                auto s = t.post_send(1, 5, bytes(data));
                waited(t, s, board, "send");
              }
              board.sync();
            }));
}
TEST_CASE_TEMPLATE_APPLY(deadlines, Transports);

TEST_CASE_TEMPLATE_DEFINE("split renumbers ranks, and messages of different contexts never match", T, contexts) {
  report<T>(3, TestWorld<T>::run(3, [](T t, Board& board) {
              // Ranks 2 and 0 form a subgroup, in that order: 2 is its rank 0, 0 its rank 1.
              if (t.rank() == 1) {
                board.sync();
                return;
              }
              const std::array<int, 2> members{2, 0};
              T first = t.split(members, 101);
              T second = t.split(members, 202);
              const int expected = t.rank() == 2 ? 0 : 1;
              if (first.rank() != expected || first.size() != 2) board.fail("split ranks");
              if (first.describe_peer(1 - expected).find("rank") == std::string::npos) {
                board.fail("describe_peer names no rank");
              }
              // The same tag in the world and both subgroups: each receive gets its own context's.
              const std::array<int, 1> world_value{t.rank() * 10 + 1};
              const std::array<int, 1> first_value{t.rank() * 10 + 2};
              const std::array<int, 1> second_value{t.rank() * 10 + 3};
              std::array<int, 1> got_world{}, got_first{}, got_second{};
              const int other_world = t.rank() == 0 ? 2 : 0;
              const int other_sub = 1 - expected;
              auto r1 = second.post_recv(other_sub, 4, writable(got_second));
              auto r2 = t.post_recv(other_world, 4, writable(got_world));
              auto r3 = first.post_recv(other_sub, 4, writable(got_first));
              auto s1 = first.post_send(other_sub, 4, bytes(first_value));
              auto s2 = second.post_send(other_sub, 4, bytes(second_value));
              auto s3 = t.post_send(other_world, 4, bytes(world_value));
              waited(second, r1, board, "second subgroup");
              waited(t, r2, board, "world");
              waited(first, r3, board, "first subgroup");
              waited(first, s1, board, "send, first subgroup");
              waited(second, s2, board, "send, second subgroup");
              waited(t, s3, board, "send, world");
              if (got_world[0] != other_world * 10 + 1 || got_first[0] != other_world * 10 + 2 ||
                  got_second[0] != other_world * 10 + 3) {
                board.fail("a message crossed contexts");
              }
              board.sync();
            }));
}
TEST_CASE_TEMPLATE_APPLY(contexts, Transports);

TEST_CASE_TEMPLATE_DEFINE("an abort reaches every peer at once, with its reason", T, aborts) {
  report<T>(3, TestWorld<T>::run(3, [](T t, Board& board) {
              std::array<int, 8> buffer{};
              if (t.rank() == 2) {
                board.sync();  // the others have posted their receives
                t.abort("rank 2 gave up for a test");
                board.sync();
                return;
              }
              auto r = t.post_recv(2, 1, writable(buffer));
              board.sync();
              const auto start = std::chrono::steady_clock::now();
              const auto ec = t.wait(r, Deadline::after(30s));
              if (ec != errc::connection_lost) board.fail("a receive from the aborted rank gave " + ec.message());
              if (std::chrono::steady_clock::now() - start > 5s) board.fail("the abort took more than 5 s to arrive");
              if constexpr (requires { t.failure_reason(2); }) {
                if (t.failure_reason(2).find("rank 2 gave up for a test") == std::string::npos) {
                  board.fail("the reason did not arrive: \"" + t.failure_reason(2) + "\"");
                }
              }
              // Later operations on it fail at once too.
              auto s = t.post_send(2, 2, bytes(buffer));
              if (t.wait(s, Deadline::after(5s)) != errc::connection_lost) board.fail("a later send did not fail");
              board.sync();
            }));
}
TEST_CASE_TEMPLATE_APPLY(aborts, Transports);
