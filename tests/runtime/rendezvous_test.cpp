// The coordinator rendezvous, with ranks as threads over loopback TCP: every rank gets the same
// table and live listening sockets; a foreign token, a missing rank, a mismatched world size, a
// duplicate rank and an absent coordinator each fail promptly with a message that says why.
#include "collie/runtime/rendezvous.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <asio/write.hpp>

#include <chrono>
#include <cstdlib>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace collie;
using namespace std::chrono_literals;

namespace {

// A port on `host` that nothing listens on right now: bind port 0, read it, close.
std::uint16_t free_port(const std::string& host) {
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor(io);
  const asio::ip::tcp::endpoint endpoint(asio::ip::make_address(host), 0);
  acceptor.open(endpoint.protocol());
  acceptor.bind(endpoint);
  return acceptor.local_endpoint().port();
}

bool ipv6_loopback_available() {
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor(io);
  std::error_code ec;
  acceptor.open(asio::ip::tcp::v6(), ec);
  if (!ec) acceptor.bind({asio::ip::make_address("::1"), 0}, ec);
  return !ec;
}

struct Outcome {
  std::optional<TcpConfig> config;
  std::error_code ec;
  std::string message;
  std::chrono::steady_clock::duration elapsed{};
};

// Runs rendezvous() for each listed rank on its own thread; `options_of(rank)` gives its
// options, `delay_of(rank)` how long it waits before starting.
std::vector<Outcome> run_ranks(
    const Endpoint& coordinator, int size, const std::vector<int>& ranks,
    const std::function<RendezvousOptions(int)>& options_of,
    const std::function<std::chrono::milliseconds(int)>& delay_of = [](int) { return 0ms; }) {
  std::vector<Outcome> outcomes(ranks.size());
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    threads.emplace_back([&, i] {
      const int rank = ranks[i];
      std::this_thread::sleep_for(delay_of(rank));
      const auto start = std::chrono::steady_clock::now();
      auto& outcome = outcomes[i];
      outcome.config = rendezvous(coordinator, rank, size, options_of(rank), outcome.ec);
      outcome.elapsed = std::chrono::steady_clock::now() - start;
      if (!outcome.config) outcome.message = detail::last_error_message;
    });
  }
  for (auto& thread : threads) thread.join();
  return outcomes;
}

std::vector<int> all_ranks(int size) {
  std::vector<int> ranks;
  for (int r = 0; r < size; ++r) ranks.push_back(r);
  return ranks;
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

// Checks that each descriptor is a listening socket on the published port, and that a client
// can connect to the published address.
void check_listening(const TcpConfig& config) {
  const auto& own = config.hosts[static_cast<std::size_t>(config.rank)];
  REQUIRE(config.listening_sockets.size() == own.size());
  asio::io_context io;
  for (std::size_t i = 0; i < own.size(); ++i) {
    const int fd = config.listening_sockets[i];
    int listening = 0;
    socklen_t length = sizeof listening;
    REQUIRE(::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) == 0);
    CHECK(listening == 1);
    asio::ip::tcp::socket client(io);
    std::error_code ec;
    client.connect({asio::ip::make_address(own[i].host), own[i].port}, ec);
    CHECK_MESSAGE(!ec, "connecting to " << own[i].to_string() << ": " << ec.message());
  }
}

void close_sockets(std::vector<Outcome>& outcomes) {
  for (auto& outcome : outcomes) {
    if (!outcome.config) continue;
    for (int fd : outcome.config->listening_sockets) ::close(fd);
    outcome.config->listening_sockets.clear();
  }
}

// Every rank succeeded and holds the same table of `size` rows of `connections` endpoints.
void check_same_table(std::vector<Outcome>& outcomes, int size, int connections) {
  for (std::size_t i = 0; i < outcomes.size(); ++i) {
    const auto& outcome = outcomes[i];
    REQUIRE_MESSAGE(outcome.config, "rank " << i << ": " << outcome.message);
    CHECK(outcome.config->rank == static_cast<int>(i));
    CHECK(outcome.config->size() == size);
    CHECK(outcome.config->hosts == outcomes[0].config->hosts);
    for (const auto& row : outcome.config->hosts) CHECK(row.size() == std::size_t(connections));
    check_listening(*outcome.config);
  }
}

RendezvousOptions quick(std::uint64_t token = 7, int connections = 1) {
  RendezvousOptions options;
  options.connections = connections;
  options.job_token = token;
  options.connect_timeout = 5s;
  options.timeout = 5s;
  return options;
}

}  // namespace

TEST_CASE("a rendezvous of one rank publishes its own listening sockets") {
  const Endpoint coordinator{"127.0.0.1", free_port("127.0.0.1")};
  auto outcomes = run_ranks(coordinator, 1, {0}, [](int) { return quick(7, 2); });
  check_same_table(outcomes, 1, 2);
  CHECK(outcomes[0].config->job_token == 7);
  CHECK(outcomes[0].config->hosts[0][0].host == "127.0.0.1");
  close_sockets(outcomes);
}

TEST_CASE("two ranks get the same table and live listening sockets") {
  const Endpoint coordinator{"127.0.0.1", free_port("127.0.0.1")};
  auto outcomes = run_ranks(coordinator, 2, all_ranks(2), [](int) { return quick(); });
  check_same_table(outcomes, 2, 1);
  const auto& config = *outcomes[1].config;
  CHECK(config.timeout == 5s);
  CHECK(config.connect_timeout == 5s);
  CHECK(config.job_token == 7);
  close_sockets(outcomes);
}

TEST_CASE("four ranks with two connections each agree, even when rank 0 starts last") {
  const Endpoint coordinator{"127.0.0.1", free_port("127.0.0.1")};
  // The others retry with backoff until rank 0 is listening.
  auto outcomes = run_ranks(
      coordinator, 4, all_ranks(4), [](int) { return quick(7, 2); },
      [](int rank) { return rank == 0 ? 300ms : 0ms; });
  check_same_table(outcomes, 4, 2);
  std::vector<Endpoint> all;
  for (const auto& row : outcomes[0].config->hosts) all.insert(all.end(), row.begin(), row.end());
  for (std::size_t i = 0; i < all.size(); ++i) {
    for (std::size_t j = i + 1; j < all.size(); ++j) CHECK(all[i] != all[j]);
  }
  close_sockets(outcomes);
}

TEST_CASE("a rank with another job token is refused and rank 0 says whom it refused") {
  const Endpoint coordinator{"127.0.0.1", free_port("127.0.0.1")};
  auto outcomes = run_ranks(coordinator, 2, all_ranks(2), [](int rank) {
    auto options = quick(rank == 0 ? 1 : 2);
    options.connect_timeout = 800ms;
    return options;
  });
  REQUIRE(!outcomes[1].config);
  CHECK(outcomes[1].ec == errc::bad_configuration);
  CHECK(contains(outcomes[1].message, "job token differs"));
  CHECK(contains(outcomes[1].message, "COLLIE_JOB_TOKEN"));
  CHECK(outcomes[1].elapsed < 2s);  // refused at once, not after a timeout
  REQUIRE(!outcomes[0].config);
  CHECK(outcomes[0].ec == errc::timed_out);
  CHECK(contains(outcomes[0].message, "waiting for rank 1"));
  CHECK(contains(outcomes[0].message, "job token 0x2, expected 0x1"));
}

TEST_CASE("a missing rank makes rank 0 time out naming it, and the others hear why") {
  const Endpoint coordinator{"127.0.0.1", free_port("127.0.0.1")};
  auto outcomes = run_ranks(coordinator, 4, {0, 1, 3}, [](int) {
    auto options = quick();
    options.connect_timeout = 500ms;
    return options;
  });
  for (const auto& outcome : outcomes) {
    CAPTURE(outcome.message);
    REQUIRE(!outcome.config);
    CHECK(outcome.ec == errc::timed_out);
    CHECK(contains(outcome.message, "waiting for rank 2 (2 of 3 other ranks said hello: 1, 3)"));
    CHECK(outcome.elapsed < 5s);
  }
  CHECK(contains(outcomes[0].message,
                 "collie: rendezvous at " + coordinator.to_string() + " (rank 0 of 4): timed out"));
  CHECK(contains(outcomes[1].message, "(rank 1 of 4): the coordinator answered: "));
}

TEST_CASE("a coordinator that nobody runs makes a rank fail after the connect timeout") {
  const Endpoint coordinator{"127.0.0.1", free_port("127.0.0.1")};
  auto outcomes = run_ranks(coordinator, 2, {1}, [](int) {
    auto options = quick();
    options.connect_timeout = 500ms;
    return options;
  });
  REQUIRE(!outcomes[0].config);
  CHECK(outcomes[0].ec == errc::timed_out);
  CHECK(contains(outcomes[0].message, "could not connect to the coordinator within 500 ms"));
  CHECK(contains(outcomes[0].message, "Connection refused"));
  CHECK(outcomes[0].elapsed >= 500ms);
  CHECK(outcomes[0].elapsed < 3s);
}

TEST_CASE("a rank started with another world size fails every rank at once") {
  const Endpoint coordinator{"127.0.0.1", free_port("127.0.0.1")};
  std::vector<Outcome> outcomes(2);
  std::thread zero([&] {
    outcomes[0].config = rendezvous(coordinator, 0, 2, quick(), outcomes[0].ec);
    outcomes[0].message = detail::last_error_message;
  });
  std::thread one([&] {
    outcomes[1].config = rendezvous(coordinator, 1, 3, quick(), outcomes[1].ec);
    outcomes[1].message = detail::last_error_message;
  });
  zero.join();
  one.join();
  for (const auto& outcome : outcomes) {
    CAPTURE(outcome.message);
    REQUIRE(!outcome.config);
    CHECK(outcome.ec == errc::bad_configuration);
    CHECK(contains(outcome.message, "was started with world size 3 but rank 0 with 2"));
  }
}

TEST_CASE("two processes claiming the same rank fail the rendezvous") {
  const Endpoint coordinator{"127.0.0.1", free_port("127.0.0.1")};
  auto outcomes = run_ranks(coordinator, 3, {0, 1, 1}, [](int) { return quick(); });
  for (const auto& outcome : outcomes) {
    CAPTURE(outcome.message);
    REQUIRE(!outcome.config);
    CHECK(outcome.ec == errc::bad_configuration);
    CHECK(contains(outcome.message, "both claim rank 1"));
  }
}

TEST_CASE("bad arguments are refused before any socket is opened") {
  const Endpoint coordinator{"127.0.0.1", 1};
  std::error_code ec;
  CHECK(!rendezvous(coordinator, 2, 2, {}, ec));
  CHECK(ec == errc::invalid_argument);
  CHECK(contains(detail::last_error_message, "rank 2 is outside [0, 2)"));
  RendezvousOptions options;
  options.connections = 0;
  CHECK(!rendezvous(coordinator, 0, 2, options, ec));
  CHECK(contains(detail::last_error_message, "connections = 0 must be 1..64"));
  CHECK_THROWS_AS(rendezvous(coordinator, 0, 0), Error);
}

TEST_CASE("rank 0 reports a coordinator address that is not on its host") {
  // 192.0.2.1 is TEST-NET-1: never an address of this machine.
  std::error_code ec;
  CHECK(!rendezvous({"192.0.2.1", 29500}, 0, 2, quick(), ec));
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message, "rank 0 cannot listen on the coordinator address"));
  CHECK(contains(detail::last_error_message, "rank 0 must run on the coordinator's host"));
}

TEST_CASE("the rendezvous works over IPv6 loopback") {
  if (!ipv6_loopback_available()) {
    MESSAGE("collie-test SKIPPED: ::1 is not available on this machine");
    return;
  }
  const Endpoint coordinator{"::1", free_port("::1")};
  auto outcomes = run_ranks(coordinator, 3, all_ranks(3), [](int) { return quick(7, 2); });
  check_same_table(outcomes, 3, 2);
  CHECK(outcomes[2].config->hosts[1][0].host == "::1");
  CHECK(outcomes[2].config->hosts[1][0].to_string().starts_with("[::1]:"));
  close_sockets(outcomes);
}

TEST_CASE("rendezvous_from_environment reads the coordinator, rank, size and options") {
  const char* names[] = {"COLLIE_COORDINATOR", "COLLIE_RANK",      "COLLIE_WORLD_SIZE",
                         "COLLIE_CONNECTIONS", "COLLIE_JOB_TOKEN", "MASTER_ADDR",
                         "MASTER_PORT",        "MLX_RANK",         "MLX_WORLD_SIZE",
                         "COLLIE_SPIN_US",     "COLLIE_TCP_CONGESTION"};
  struct Restore {
    std::vector<std::pair<std::string, std::optional<std::string>>> saved;
    ~Restore() {
      for (auto& [name, value] : saved) {
        if (value) {
          ::setenv(name.c_str(), value->c_str(), 1);
        } else {
          ::unsetenv(name.c_str());
        }
      }
    }
  } restore;
  for (const char* name : names) {
    const char* value = std::getenv(name);
    restore.saved.emplace_back(name, value ? std::optional<std::string>(value) : std::nullopt);
    ::unsetenv(name);
  }

  std::error_code ec;
  CHECK(!rendezvous_from_environment(ec));
  CHECK(ec == errc::not_configured);

  const Endpoint coordinator{"127.0.0.1", free_port("127.0.0.1")};
  ::setenv("COLLIE_COORDINATOR", coordinator.to_string().c_str(), 1);
  CHECK(!rendezvous_from_environment(ec));
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message, "no rank and world size"));

  ::setenv("COLLIE_RANK", "0", 1);
  ::setenv("COLLIE_WORLD_SIZE", "1", 1);
  ::setenv("COLLIE_CONNECTIONS", "3", 1);
  ::setenv("COLLIE_JOB_TOKEN", "0xabc", 1);
  // The transport's own settings mean the same as with a hostfile.
  ::setenv("COLLIE_SPIN_US", "7", 1);
  ::setenv("COLLIE_TCP_CONGESTION", "reno", 1);
  auto config = rendezvous_from_environment();
  CHECK(config.size() == 1);
  CHECK(config.hosts[0].size() == 3);
  CHECK(config.job_token == 0xabc);
  CHECK(config.spin == std::chrono::microseconds(7));
  CHECK(config.congestion == std::optional<std::string>("reno"));
  check_listening(config);
  for (int fd : config.listening_sockets) ::close(fd);

  ::setenv("COLLIE_CONNECTIONS", "100", 1);
  CHECK(!rendezvous_from_environment(ec));
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message, "COLLIE_CONNECTIONS=100 is not a connection count"));
}

TEST_CASE("a client that is not collie, or a rank that leaves after its hello, does not break it") {
  const Endpoint coordinator{"127.0.0.1", free_port("127.0.0.1")};
  std::vector<Outcome> outcomes(3);
  std::thread zero([&] {
    outcomes[0].config = rendezvous(coordinator, 0, 3, quick(), outcomes[0].ec);
    outcomes[0].message = detail::last_error_message;
  });
  asio::io_context io;
  const asio::ip::tcp::endpoint target(asio::ip::make_address(coordinator.host), coordinator.port);
  // Connects once rank 0 listens (it may not yet).
  const auto connect = [&](asio::ip::tcp::socket& socket) {
    std::error_code ec;
    for (int attempt = 0; attempt < 100; ++attempt) {
      socket.close(ec);
      socket.connect(target, ec);
      if (!ec) return;
      std::this_thread::sleep_for(20ms);
    }
    FAIL("rank 0 never listened: " << ec.message());
  };
  {
    // A stray HTTP client: its first bytes are no collie hello, so it is dropped.
    asio::ip::tcp::socket stray(io);
    connect(stray);
    asio::write(stray, asio::buffer(std::string("GET / HTTP/1.1\r\n\r\n")));
  }
  {
    // A process that says hello as rank 1 and then dies: its slot opens again.
    asio::ip::tcp::socket early(io);
    connect(early);
    detail::tcp::Hello hello;
    hello.connection = detail::store::store_connection;
    hello.world_size = 3;
    hello.sender = 1;
    hello.job_token = 7;
    asio::write(early, asio::buffer(hello.encode()));
    std::this_thread::sleep_for(100ms);  // let rank 0 register it before it goes
  }
  std::this_thread::sleep_for(300ms);  // and notice that it went
  // A world of 3, so the early rank 1 alone could not complete the table.
  std::thread two([&] {
    outcomes[2].config = rendezvous(coordinator, 2, 3, quick(), outcomes[2].ec);
    outcomes[2].message = detail::last_error_message;
  });
  outcomes[1].config = rendezvous(coordinator, 1, 3, quick(), outcomes[1].ec);
  outcomes[1].message = detail::last_error_message;
  zero.join();
  two.join();
  check_same_table(outcomes, 3, 1);
  close_sockets(outcomes);
}
