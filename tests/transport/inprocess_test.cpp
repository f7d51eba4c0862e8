// The in-process transport as the reference model of the Transport concept: matching by peer and
// tag, first-in first-out for equal tags, size checks, deadlines, cancellation, split contexts.
#include "collie/transport/inprocess.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <thread>
#include <vector>

using namespace collie;
using namespace std::chrono_literals;

static_assert(Transport<InProcessTransport>);
static_assert(!NativeCollectiveTransport<InProcessTransport>);
static_assert(!RegisteredMemoryTransport<InProcessTransport>);

namespace {

template <class T>
std::span<const std::byte> bytes(const T& v) {
  return std::as_bytes(std::span(v));
}
template <class T>
std::span<std::byte> writable(T& v) {
  return std::as_writable_bytes(std::span(v));
}

}  // namespace

TEST_CASE("receives match sends by peer and tag, whatever the posting order") {
  InProcessWorld world(2);
  auto a = world.transport(0);
  auto b = world.transport(1);
  std::array<int, 2> first{1, 2}, second{3, 4}, got_first{}, got_second{};
  auto r2 = b.post_recv(0, 2, writable(got_second));
  auto s1 = a.post_send(1, 1, bytes(first));
  auto s2 = a.post_send(1, 2, bytes(second));
  auto r1 = b.post_recv(0, 1, writable(got_first));
  const auto d = Deadline::after(1s);
  CHECK(!a.wait(s1, d));
  CHECK(!a.wait(s2, d));
  CHECK(!b.wait(r1, d));
  CHECK(!b.wait(r2, d));
  CHECK(got_first == first);
  CHECK(got_second == second);
}

TEST_CASE("equal tags match first in, first out") {
  InProcessWorld world(2);
  auto a = world.transport(0);
  auto b = world.transport(1);
  std::array<int, 1> x{1}, y{2}, gx{}, gy{};
  auto s1 = a.post_send(1, 7, bytes(x));
  auto s2 = a.post_send(1, 7, bytes(y));
  auto r1 = b.post_recv(0, 7, writable(gx));
  auto r2 = b.post_recv(0, 7, writable(gy));
  const auto d = Deadline::after(1s);
  CHECK(!b.wait(r1, d));
  CHECK(!b.wait(r2, d));
  CHECK(!a.wait(s1, d));
  CHECK(!a.wait(s2, d));
  CHECK(gx[0] == 1);
  CHECK(gy[0] == 2);
}

TEST_CASE("a size mismatch fails both sides with a protocol error") {
  InProcessWorld world(2);
  auto a = world.transport(0);
  auto b = world.transport(1);
  std::array<int, 3> x{};
  std::array<int, 2> g{};
  auto s = a.post_send(1, 0, bytes(x));
  auto r = b.post_recv(0, 0, writable(g));
  CHECK(a.wait(s, Deadline::after(1s)) == errc::protocol_error);
  CHECK(b.wait(r, Deadline::after(1s)) == errc::protocol_error);
}

TEST_CASE("a wait gives up at its deadline and the request can be waited on again or cancelled") {
  InProcessWorld world(2);
  auto a = world.transport(0);
  auto b = world.transport(1);
  std::array<int, 1> g{};
  auto r = b.post_recv(0, 0, writable(g));
  const auto start = std::chrono::steady_clock::now();
  CHECK(b.wait(r, Deadline::after(50ms)) == errc::timed_out);
  CHECK(std::chrono::steady_clock::now() - start >= 50ms);
  std::array<int, 1> x{9};
  auto s = a.post_send(1, 0, bytes(x));
  CHECK(!b.wait(r, Deadline::after(1s)));
  CHECK(!a.wait(s, Deadline::after(1s)));
  CHECK(g[0] == 9);
  // A cancelled receive never sees the data; the send then matches a later receive.
  auto lost = b.post_recv(0, 5, writable(g));
  b.cancel(lost);
  auto s2 = a.post_send(1, 5, bytes(x));
  std::array<int, 1> g2{};
  auto r2 = b.post_recv(0, 5, writable(g2));
  CHECK(!b.wait(r2, Deadline::after(1s)));
  CHECK(!a.wait(s2, Deadline::after(1s)));
  CHECK(g2[0] == 9);
}

TEST_CASE("a killed peer fails waits on it with connection_lost") {
  InProcessWorld world(3);
  auto a = world.transport(0);
  std::array<int, 1> g{};
  auto r = a.post_recv(2, 0, writable(g));
  std::thread killer([&] {
    std::this_thread::sleep_for(20ms);
    world.kill(2);
  });
  CHECK(a.wait(r, Deadline::never()) == errc::connection_lost);
  killer.join();
}

TEST_CASE("an aborting rank leaves its reason for its peers, a killed one leaves none") {
  InProcessWorld world(3);
  auto a = world.transport(0);
  auto b = world.transport(1);
  std::array<int, 1> g{};
  auto r = a.post_recv(1, 0, writable(g));
  b.abort("rank 2 died first");
  CHECK(a.wait(r, Deadline::never()) == errc::connection_lost);
  CHECK(a.failure_reason(1) == "aborted the group: rank 2 died first");
  world.kill(2);
  CHECK(a.failure_reason(2).empty());
  CHECK(a.failure_reason(7).empty());  // out of range: nothing known, no crash
}

TEST_CASE("split transports renumber ranks and keep their messages apart") {
  InProcessWorld world(4);
  auto t1 = world.transport(1);
  auto t3 = world.transport(3);
  const std::array<int, 2> members{3, 1};  // new rank 0 is world rank 3
  auto s1 = t1.split(members, 42);
  auto s3 = t3.split(members, 42);
  CHECK(s3.rank() == 0);
  CHECK(s1.rank() == 1);
  CHECK(s1.size() == 2);
  CHECK(s1.describe_peer(0) == "rank 0 (thread rank 3)");
  std::array<int, 1> x{5}, parent_got{}, sub_got{};
  // Same peers, same tag, different groups: the parent's receive must not see the sub-group's send.
  auto parent_recv = t1.post_recv(3, 0, writable(parent_got));
  auto sub_send = s3.post_send(1, 0, bytes(x));
  auto sub_recv = s1.post_recv(0, 0, writable(sub_got));
  CHECK(!s1.wait(sub_recv, Deadline::after(1s)));
  CHECK(!s3.wait(sub_send, Deadline::after(1s)));
  CHECK(sub_got[0] == 5);
  CHECK(t1.wait(parent_recv, Deadline::after(20ms)) == errc::timed_out);
  t1.cancel(parent_recv);
}
