// The bootstrap store, with ranks as threads over loopback TCP: keys set by one rank reach every
// rank, a get waits for keys set later, values are bytes, rank 0 may finish first, and a get that
// times out fails every rank naming the ranks that never came.
#include "collie/runtime/store.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

using namespace collie;
using namespace std::chrono_literals;

namespace {

std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  ::close(fd);
  return ntohs(address.sin_port);
}

StoreOptions quick() {
  StoreOptions options;
  options.job_token = 9;
  options.connect_timeout = 5s;
  options.timeout = 5s;
  options.label = "test store";
  return options;
}

// Runs `body(store)` for every listed rank on its own thread; returns the messages of failures.
std::vector<std::string> run(int size, const std::vector<int>& ranks,
                             const std::function<void(Store&, int)>& body,
                             StoreOptions options = quick()) {
  const Endpoint coordinator{"127.0.0.1", free_port()};
  std::vector<std::string> failures(ranks.size());
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    threads.emplace_back([&, i] {
      std::error_code ec;
      auto store = Store::connect(coordinator, ranks[i], size, options, "rank " + std::to_string(ranks[i]) + ": ", ec);
      if (!store) {
        failures[i] = detail::last_error_message;
        return;
      }
      body(*store, ranks[i]);
    });
  }
  for (auto& t : threads) t.join();
  return failures;
}

}  // namespace

TEST_CASE("every rank gets every rank's key, and rank 0 may finish first") {
  std::vector<std::vector<std::string>> got(4);
  const auto failures = run(4, {0, 1, 2, 3}, [&](Store& store, int rank) {
    CHECK(!store.set("k/" + std::to_string(rank), "value of " + std::to_string(rank)));
    if (rank != 0) std::this_thread::sleep_for(50ms * rank);  // rank 0 is done long before
    std::error_code ec;
    auto values = store.get(std::vector<std::string>{"k/0", "k/1", "k/2", "k/3"}, 5s, ec);
    REQUIRE_MESSAGE(values, detail::last_error_message);
    got[static_cast<std::size_t>(rank)] = *values;
  });
  for (const auto& f : failures) CHECK_MESSAGE(f.empty(), f);
  for (const auto& values : got) {
    CHECK(values == std::vector<std::string>{"value of 0", "value of 1", "value of 2", "value of 3"});
  }
}

TEST_CASE("a get waits for a key another rank sets later, and values are any bytes") {
  const std::string binary("\0\x01\xff\0 end", 7);
  const auto failures = run(2, {0, 1}, [&](Store& store, int rank) {
    std::error_code ec;
    if (rank == 1) {
      std::this_thread::sleep_for(200ms);
      CHECK(!store.set("late", binary));
      CHECK(!store.set("empty", ""));
      return;
    }
    const auto start = std::chrono::steady_clock::now();
    auto values = store.get(std::vector<std::string>{"late", "empty"}, 5s, ec);
    REQUIRE_MESSAGE(values, detail::last_error_message);
    CHECK(std::chrono::steady_clock::now() - start >= 150ms);
    CHECK((*values)[0] == binary);
    CHECK((*values)[1].empty());
  });
  for (const auto& f : failures) CHECK_MESSAGE(f.empty(), f);
}

TEST_CASE("a get that times out fails every rank, naming the ranks that never came") {
  std::vector<std::string> messages(3);
  std::vector<std::error_code> codes(3);
  const auto failures = run(4, {0, 1, 3}, [&](Store& store, int rank) {
    store.set("k/" + std::to_string(rank), "x");
    // Rank 0's wait is the shortest: its verdict reaches the others.
    auto values = store.get(std::vector<std::string>{"k/0", "k/1", "k/2", "k/3"},
                            rank == 0 ? 400ms : 5s, codes[static_cast<std::size_t>(rank == 3 ? 2 : rank)]);
    CHECK(!values);
    messages[static_cast<std::size_t>(rank == 3 ? 2 : rank)] = detail::last_error_message;
  });
  for (const auto& f : failures) CHECK_MESSAGE(f.empty(), f);
  for (std::size_t i = 0; i < 3; ++i) {
    CAPTURE(messages[i]);
    CHECK(codes[i] == errc::timed_out);
    CHECK(messages[i].find("timed out after 400 ms waiting for rank 2 (2 of 3 other ranks said hello: ") !=
          std::string::npos);
  }
  CHECK(messages[1].find("rank 1: the coordinator answered: ") == 0);
  CHECK(messages[0].find("rank 0: timed out") == 0);
}

TEST_CASE("a process of another job is refused at once, and the job goes on without it") {
  const Endpoint coordinator{"127.0.0.1", free_port()};
  std::string stranger;
  std::vector<std::string> values;
  std::thread zero([&] {
    std::error_code ec;
    auto store = Store::connect(coordinator, 0, 2, quick(), "", ec);
    REQUIRE(store);
    store->set("a", "0");
    auto got = store->get(std::vector<std::string>{"a", "b"}, 5s, ec);
    REQUIRE_MESSAGE(got, detail::last_error_message);
    values = *got;
  });
  std::thread other([&] {
    std::this_thread::sleep_for(100ms);
    auto options = quick();
    options.job_token = 1234;
    std::error_code ec;
    const auto start = std::chrono::steady_clock::now();
    CHECK(!Store::connect(coordinator, 1, 2, options, "", ec));
    CHECK(ec == errc::bad_configuration);
    CHECK(std::chrono::steady_clock::now() - start < 2s);
    stranger = detail::last_error_message;
    std::error_code right_ec;
    auto store = Store::connect(coordinator, 1, 2, quick(), "", right_ec);
    REQUIRE(store);
    store->set("b", "1");
    CHECK(store->get(std::vector<std::string>{"a"}, 5s, right_ec));
  });
  zero.join();
  other.join();
  CHECK(stranger.find("job token differs") != std::string::npos);
  CHECK(values == std::vector<std::string>{"0", "1"});
}
