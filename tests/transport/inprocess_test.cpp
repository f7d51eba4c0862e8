// What is particular to the in-process transport: a rank marked dead by its world (the contract
// every transport meets is in tests/contract/), and the reason an aborting rank leaves behind.
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

