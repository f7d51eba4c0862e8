// TcpTransport over loopback, ranks as threads of one process (the multi-process runs are in
// tests/tcp/): collectives through Ring and Mesh, send/recv between any two ranks, the handshake
// refusing foreign and mis-wired connections, connect deadlines, and a dead peer.
#include "collie/transport/tcp.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <asio.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <functional>
#include <iterator>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "collie/algorithm/mesh.hpp"
#include "collie/algorithm/ring.hpp"
#include "collie/core/collective.hpp"

using namespace collie;
using namespace std::chrono_literals;

static_assert(Transport<TcpTransport>);

namespace {

// Ports the kernel says are free right now (bound to port 0, then released).
std::vector<std::uint16_t> free_ports(std::size_t n) {
  asio::io_context io;
  std::vector<asio::ip::tcp::acceptor> held;
  std::vector<std::uint16_t> ports;
  for (std::size_t i = 0; i < n; ++i) {
    held.emplace_back(io, asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    ports.push_back(held.back().local_endpoint().port());
  }
  return ports;
}

std::vector<std::vector<Endpoint>> loopback_hosts(int ranks, int connections) {
  const auto ports = free_ports(static_cast<std::size_t>(ranks * connections));
  std::vector<std::vector<Endpoint>> hosts(static_cast<std::size_t>(ranks));
  for (int r = 0; r < ranks; ++r) {
    for (int i = 0; i < connections; ++i) {
      hosts[static_cast<std::size_t>(r)].push_back(
          {"127.0.0.1", ports[static_cast<std::size_t>(r * connections + i)]});
    }
  }
  return hosts;
}

// Runs `fn(rank)` on one thread per rank; collects failure texts.
struct Ranks {
  std::mutex mutex;
  std::vector<std::string> failures;
  void fail(const std::string& text) {
    std::lock_guard lock(mutex);
    failures.push_back(text);
  }
  void run(int n, const std::function<void(int)>& fn) {
    std::vector<std::thread> threads;
    for (int r = 0; r < n; ++r) {
      threads.emplace_back([&, r] {
        try {
          fn(r);
        } catch (const std::exception& e) {
          fail("rank " + std::to_string(r) + " threw: " + e.what());
        }
      });
    }
    for (auto& t : threads) t.join();
    for (const auto& f : failures) FAIL_CHECK(f);
  }
};

// Whether every element of `range` equals `value` (a received buffer holds what was sent).
template <class Range, class Value>
bool filled_with(const Range& range, const Value& value) {
  return std::all_of(std::begin(range), std::end(range), [&](const auto& x) { return x == value; });
}

TcpConfig config_for(int rank, const std::vector<std::vector<Endpoint>>& hosts) {
  TcpConfig config;
  config.rank = rank;
  config.hosts = hosts;
  config.connect_timeout = 10s;
  return config;
}

template <class Algorithm>
void check_collectives(int p, int connections,
                       std::optional<std::chrono::microseconds> spin = std::nullopt) {
  const auto hosts = loopback_hosts(p, connections);
  Ranks ranks;
  ranks.run(p, [&](int r) {
    TcpConfig config = config_for(r, hosts);
    config.spin = spin;
    Collective<TcpTransport, Algorithm> c(TcpTransport::connect(std::move(config)));
    for (std::size_t count : {std::size_t{0}, std::size_t{1}, static_cast<std::size_t>(p) + 1,
                              std::size_t{300007}}) {
      std::vector<double> x(count, r + 1.0);
      c.all_sum(x);
      for (double v : x) {
        if (v != p * (p + 1) / 2.0) {
          ranks.fail("all_sum p=" + std::to_string(p) + " count=" + std::to_string(count));
          break;
        }
      }
      std::vector<int> gathered(count * static_cast<std::size_t>(p));
      c.all_gather(std::vector<int>(count, r), gathered);
      for (std::size_t i = 0; i < gathered.size(); ++i) {
        if (gathered[i] != static_cast<int>(i / std::max<std::size_t>(count, 1))) {
          ranks.fail("all_gather p=" + std::to_string(p));
          break;
        }
      }
    }
    // Any pair of ranks, neighbours or not.
    for (int from = 0; from < p; ++from) {
      for (int to = 0; to < p; ++to) {
        if (from == to) continue;
        std::vector<int> message(5, from * 10 + to);
        if (r == from) c.send(message, to);
        if (r == to) {
          std::vector<int> got(5);
          c.recv(got, from);
          if (got != message) ranks.fail("send " + std::to_string(from) + "->" + std::to_string(to));
        }
      }
    }
    auto sub = c.split(r % 2);
    std::vector<int> one{1};
    sub.all_sum(one);
    if (one[0] != sub.size()) ranks.fail("split all_sum");
    c.barrier();
  });
}

// Every TCP connection of this process that has one of the ports of `hosts` at either end
// (listening sockets have no peer and are left out): its file descriptors, found by asking the
// kernel about each one.
std::vector<int> connections_of(const std::vector<std::vector<Endpoint>>& hosts) {
  std::vector<std::uint16_t> ports;
  for (const auto& list : hosts) {
    for (const auto& e : list) ports.push_back(e.port);
  }
  auto ours = [&](const sockaddr_storage& a) {
    return a.ss_family == AF_INET &&
           std::count(ports.begin(), ports.end(),
                      ntohs(reinterpret_cast<const sockaddr_in*>(&a)->sin_port)) > 0;
  };
  std::vector<int> fds;
  for (int fd = 0; fd < 4096; ++fd) {
    sockaddr_storage local{};
    sockaddr_storage remote{};
    socklen_t local_length = sizeof(local);
    socklen_t remote_length = sizeof(remote);
    if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_length) != 0) continue;
    if (::getpeername(fd, reinterpret_cast<sockaddr*>(&remote), &remote_length) != 0) continue;
    if (ours(local) || ours(remote)) fds.push_back(fd);
  }
  return fds;
}

// The congestion control of each of those connections, read from the kernel.
std::vector<std::string> congestion_of_connections(const std::vector<std::vector<Endpoint>>& hosts) {
  std::vector<std::string> names;
  for (int fd : connections_of(hosts)) {
    char name[32] = {};
    socklen_t length = sizeof(name);
    if (::getsockopt(fd, IPPROTO_TCP, TCP_CONGESTION, name, &length) != 0) continue;
    names.emplace_back(name);
  }
  return names;
}

}  // namespace

// tcp_bytes.cpp: the bytes a connection has sent (and had acknowledged) and received.
bool tcp_bytes_of(int fd, std::uint64_t& sent, std::uint64_t& received);

namespace {

// Bytes each of those connections has sent and received, from the kernel.
struct Carried {
  std::uint64_t sent = 0;
  std::uint64_t received = 0;
};
std::vector<Carried> carried_by_connections(const std::vector<std::vector<Endpoint>>& hosts) {
  std::vector<Carried> carried;
  for (int fd : connections_of(hosts)) {
    Carried c;
    if (tcp_bytes_of(fd, c.sent, c.received)) carried.push_back(c);
  }
  return carried;
}

std::string first_line_of(const char* path) {
  std::ifstream file(path);
  std::string line;
  std::getline(file, line);
  return line;
}

}  // namespace

TEST_CASE("connections between ranks on one host use reno unless told otherwise") {
  // Reno because a pacing algorithm (BBR) reorders a stream between two cores of one host; a
  // name the user sets wins, and an empty one keeps the system's choice.
  const std::string system = first_line_of("/proc/sys/net/ipv4/tcp_congestion_control");
  REQUIRE_FALSE(system.empty());
  for (const std::optional<std::string>& asked :
       {std::optional<std::string>(), std::optional<std::string>(""),
        std::optional<std::string>(system)}) {
    CAPTURE(asked.value_or("(unset)"));
    const auto hosts = loopback_hosts(3, 2);
    std::vector<std::string> seen;
    std::atomic<int> connected{0};
    Ranks ranks;
    ranks.run(3, [&](int r) {
      TcpConfig config = config_for(r, hosts);
      config.congestion = asked;
      Collective<TcpTransport, Ring> c(TcpTransport::connect(std::move(config)));
      std::vector<float> x(1000, 1.0f);
      c.all_sum(x);
      // Every rank has connected once all three are here; the barrier keeps the sockets open
      // until the last one has looked at them.
      if (++connected == 3) seen = congestion_of_connections(hosts);
      c.barrier();
    });
    const std::string expected = !asked ? "reno" : asked->empty() ? system : *asked;
    CAPTURE(expected);
    CHECK(seen.size() >= 12);  // 2 connections between each pair of 3 ranks, both ends here
    for (const auto& name : seen) CHECK(name == expected);
  }
}

TEST_CASE("two ranks send on the connections they made, so each connection carries one direction") {
  // At two ranks each is the other's left and right neighbour, so each has connections of both
  // kinds to the other. Sharing one socket between both directions of a ring step costs time:
  // data that arrives while this end writes waits in the socket's backlog.
  for (int k : {1, 2}) {
    CAPTURE(k);
    const auto hosts = loopback_hosts(2, static_cast<std::size_t>(k));
    std::vector<Carried> carried;
    std::atomic<int> done{0};
    Ranks ranks;
    ranks.run(2, [&](int r) {
      Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
      // 4 MiB: each step of the two rings moves a megabyte each way.
      std::vector<float> x(1 << 20, 1.0f);
      for (int i = 0; i < 4; ++i) c.all_sum(x);
      CHECK(x.front() == 16.0f);
      if (++done == 2) carried = carried_by_connections(hosts);
      c.barrier();
    });
    CHECK(carried.size() == 4u * static_cast<std::size_t>(k));  // both ends of 2k connections
    std::uint64_t total = 0;
    for (const Carried& c : carried) {
      CAPTURE(c.sent);
      CAPTURE(c.received);
      // One direction of the handshake and of the barrier may cross the other way: a few bytes.
      CHECK(std::min(c.sent, c.received) < 4096);
      total += c.received;
    }
    CHECK(total >= 2u * 4u * (4u << 20));  // each rank received 4 MiB per all_sum, at least
  }
}

TEST_CASE("a congestion control the system does not offer fails the set-up, naming the knob") {
  const auto hosts = loopback_hosts(2, 1);
  auto config = config_for(0, hosts);
  config.congestion = "no-such-cc";
  std::error_code ec;
  auto t = TcpTransport::connect(config, ec);
  CHECK(!t);
  CHECK(ec == errc::bad_configuration);
  const std::string& m = detail::last_error_message;
  CAPTURE(m);
  CHECK(m.find("\"no-such-cc\"") != std::string::npos);
  CHECK(m.find("COLLIE_TCP_CONGESTION") != std::string::npos);
  CHECK(m.find("tcp_allowed_congestion_control") != std::string::npos);
}

TEST_CASE("whether waits spin long or never (COLLIE_SPIN_US), ring and mesh results stay right") {
  for (auto spin : {std::chrono::microseconds(0), std::chrono::microseconds(200ms)}) {
    for (int p : {2, 3}) {
      for (int k : {1, 2}) {
        CAPTURE(spin.count());
        CAPTURE(p);
        CAPTURE(k);
        check_collectives<Ring>(p, k, spin);
        check_collectives<Mesh>(p, k, spin);
      }
    }
  }
}

TEST_CASE("a send nobody waits on still goes out once its caller has left the event loop") {
  // Waiting threads run the I/O themselves and the I/O thread parks meanwhile; a large send that
  // is posted and then left alone needs the I/O thread back to get past the socket buffers.
  const auto hosts = loopback_hosts(2, 1);
  std::atomic<bool> received{false};
  Ranks ranks;
  ranks.run(2, [&](int r) {
    Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
    c.barrier();  // both ranks have just run their loops from the caller
    constexpr Tag tag = 777;
    std::vector<std::byte> data(std::size_t{16} << 20, r == 0 ? std::byte{5} : std::byte{0});
    if (r == 0) {
      auto request = c.transport().post_send(1, tag, data);
      const auto give_up = std::chrono::steady_clock::now() + 20s;
      while (!received && std::chrono::steady_clock::now() < give_up) std::this_thread::sleep_for(1ms);
      if (!received) ranks.fail("the unwaited send never arrived");
      if (c.transport().wait(request, Deadline::after(10s))) ranks.fail("the send failed");
    } else {
      auto request = c.transport().post_recv(0, tag, data);
      if (c.transport().wait(request, Deadline::after(20s))) ranks.fail("the receive failed");
      if (!filled_with(data, std::byte{5})) {
        ranks.fail("the received bytes are wrong");
      }
      received = true;
    }
    c.barrier();
  });
}

TEST_CASE("asynchronous receives posted before their sends complete, and ready() alone sees it") {
  // Every rank posts its receives, then its sends, small and larger than the socket buffers,
  // then only polls ready() until all are over (MPI_Irecv, MPI_Isend, MPI_Testall).
  const int p = 3;
  const auto hosts = loopback_hosts(p, 1);
  Ranks ranks;
  ranks.run(p, [&](int r) {
    Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
    for (std::size_t count : {std::size_t{2}, std::size_t{3} << 20}) {
      std::vector<std::vector<int>> in(p, std::vector<int>(count)), out(p, std::vector<int>(count));
      std::vector<Request> pending;
      for (int peer = 0; peer < p; ++peer) {
        if (peer != r) pending.push_back(c.recv_async(in[static_cast<std::size_t>(peer)], peer));
      }
      for (int peer = 0; peer < p; ++peer) {
        if (peer == r) continue;
        std::fill(out[static_cast<std::size_t>(peer)].begin(), out[static_cast<std::size_t>(peer)].end(), r * 10 + peer);
        pending.push_back(c.send_async(out[static_cast<std::size_t>(peer)], peer));
      }
      const auto give_up = std::chrono::steady_clock::now() + 20s;
      auto all_ready = [&] {
        return std::all_of(pending.begin(), pending.end(), [](const Request& q) { return q.ready(); });
      };
      while (!all_ready() && std::chrono::steady_clock::now() < give_up) std::this_thread::sleep_for(100us);
      if (!all_ready()) ranks.fail("rank " + std::to_string(r) + ": ready() never became true");
      for (auto& q : pending) q.wait();
      for (int peer = 0; peer < p; ++peer) {
        if (peer == r) continue;
        const auto& got = in[static_cast<std::size_t>(peer)];
        if (!filled_with(got, peer * 10 + r)) {
          ranks.fail("rank " + std::to_string(r) + " from " + std::to_string(peer) + " count " + std::to_string(count));
        }
      }
    }
  });
}

TEST_CASE("a send whose Request is dropped still arrives, and its group waits for it before it goes") {
  const auto hosts = loopback_hosts(2, 1);
  Ranks ranks;
  ranks.run(2, [&](int r) {
    std::vector<int> data(std::size_t{8} << 20, r == 0 ? 7 : 0);  // 32 MiB: past the socket buffers
    if (r == 0) {
      Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
      c.barrier();
      (void)c.send_async(data, 1);
      return;  // the group goes at once; its destructor must finish the send first
    }
    Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
    c.barrier();
    std::this_thread::sleep_for(200ms);
    std::error_code ec;
    c.recv(data, 0, ec);
    if (ec) ranks.fail("recv: " + ec.message());
    if (!filled_with(data, 7)) {
      ranks.fail("the received data is wrong");
    }
  });
}

TEST_CASE("a thousand sends whose Requests are dropped all arrive, in order") {
  const auto hosts = loopback_hosts(2, 1);
  Ranks ranks;
  ranks.run(2, [&](int r) {
    Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
    constexpr int n = 1000;
    std::vector<std::vector<int>> messages(n);
    for (int i = 0; i < n; ++i) messages[static_cast<std::size_t>(i)].assign(16, i);
    if (r == 0) {
      for (auto& m : messages) (void)c.send_async(m, 1);  // the group keeps what is not over
    } else {
      for (int i = 0; i < n; ++i) {
        std::vector<int> got(16);
        c.recv(got, 0);
        if (got[15] != i) {
          ranks.fail("message " + std::to_string(i) + " holds " + std::to_string(got[15]));
          break;
        }
      }
    }
    c.barrier();
  });
}

TEST_CASE("an asynchronous receive from a silent peer fails at the timeout, naming the operation and the peer") {
  const auto hosts = loopback_hosts(2, 1);
  Ranks ranks;
  std::atomic<bool> checked{false};
  ranks.run(2, [&](int r) {
    Options options;
    options.timeout = 300ms;
    Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)), {}, options);
    c.barrier();
    if (r == 1) {
      const auto give_up = std::chrono::steady_clock::now() + 20s;
      while (!checked && std::chrono::steady_clock::now() < give_up) std::this_thread::sleep_for(1ms);
      return;
    }
    std::vector<int> x(4);
    auto pending = c.recv_async(x, 1);
    std::error_code ec;
    pending.wait(ec);
    if (ec != errc::timed_out) ranks.fail("wait: " + ec.message());
    const std::string text = pending.message();
    if (text.find("recv") == std::string::npos || text.find("rank 1") == std::string::npos ||
        text.find("timed out after 300 ms") == std::string::npos) {
      ranks.fail("message: " + text);
    }
    // The group is aborted: the next call fails at once.
    c.send(x, 1, ec);
    if (ec != errc::aborted) ranks.fail("after the timeout: " + ec.message());
    checked = true;
  });
}

TEST_CASE("two threads of each rank run collectives of two groups at once, over one engine") {
  // Both threads wait on the same engine: one runs the event loop, the other waits its turn or
  // sees its operation finished by the first.
  const auto hosts = loopback_hosts(3, 1);
  Ranks ranks;
  ranks.run(3, [&](int r) {
    Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
    auto twin = c.split(0);
    auto work = [&](Collective<TcpTransport, Ring>& group, const char* name) {
      for (int i = 0; i < 200; ++i) {
        std::vector<float> x(i % 2 == 0 ? 3 : 100003, static_cast<float>(r + i));
        group.all_sum(x);
        const float want = static_cast<float>(3 * i + 3);
        if (!filled_with(x, want)) {
          ranks.fail(std::string(name) + " all_sum " + std::to_string(i) + " is wrong");
          return;
        }
      }
    };
    std::thread other([&] {
      try {
        work(twin, "twin");
      } catch (const std::exception& e) {  // a timeout, say: reported, not a terminate
        ranks.fail("rank " + std::to_string(r) + " twin threw: " + e.what());
      }
    });
    work(c, "world");
    other.join();
    c.barrier();
  });
}

TEST_CASE("a stream of mixed-size messages arrives whole and in order, early or late") {
  // Small ones written by the posting thread, large ones by the event loop; some arrive before
  // their receive is posted (kept as unexpected messages), some after.
  const auto hosts = loopback_hosts(2, 1);
  Ranks ranks;
  ranks.run(2, [&](int r) {
    Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
    const std::size_t sizes[] = {0, 1, 7, 4096, 65536, 65537, 300000, 3, 2 << 20, 12};
    for (int round = 0; round < 20; ++round) {
      for (std::size_t i = 0; i < std::size(sizes); ++i) {
        const auto fill = static_cast<std::uint8_t>(round * 31 + i);
        if (r == 0) {
          c.send(std::vector<std::uint8_t>(sizes[i], fill), 1);
        } else {
          if ((round + i) % 3 == 0) std::this_thread::sleep_for(1ms);  // let it arrive first
          std::vector<std::uint8_t> got(sizes[i], static_cast<std::uint8_t>(~fill));
          c.recv(got, 0);
          if (!filled_with(got, fill)) {
            ranks.fail("round " + std::to_string(round) + " message " + std::to_string(i) +
                       " (" + std::to_string(sizes[i]) + " bytes) is wrong");
          }
        }
      }
    }
    c.barrier();
  });
}

TEST_CASE("a sender that runs ahead is held back once 4 MiB of its messages wait, and all arrive") {
  // Rank 0 posts 64 MiB of 512 KiB messages and rank 1 posts no receive for half a second. Rank
  // 1's engine reads 4 MiB of them into memory and then leaves the rest in the socket, so TCP
  // stops rank 0: at most the 4 MiB and the kernel's socket buffers (a few MiB each way) go out.
  // Reading everything, as it once did, let a root broadcasting in a loop take 1 GiB.
  const auto hosts = loopback_hosts(2, 1);
  constexpr int messages = 128;
  constexpr std::size_t bytes = std::size_t{512} << 10;
  std::atomic<bool> go{false};
  Ranks ranks;
  ranks.run(2, [&](int r) {
    Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
    c.barrier();
    if (r == 0) {
      std::vector<std::vector<std::byte>> data;
      std::vector<TcpTransport::Request> sent;
      for (int m = 0; m < messages; ++m) {
        data.emplace_back(bytes, static_cast<std::byte>(m));
        sent.push_back(c.transport().post_send(1, static_cast<Tag>(1000 + m), data.back()));
      }
      std::this_thread::sleep_for(500ms);
      std::vector<bool> done(messages);
      for (int m = 0; m < messages; ++m) {
        const std::error_code ec = c.transport().wait(sent[m], Deadline::after(0ms));
        if (ec && ec != errc::timed_out) {
          ranks.fail("send " + std::to_string(m) + ": " + ec.message());
        }
        done[m] = !ec;
      }
      if (std::count(done.begin(), done.end(), true) == messages) {
        ranks.fail("all 64 MiB went out with no receive posted");
      }
      go = true;
      for (int m = 0; m < messages; ++m) {
        if (done[m]) continue;
        if (c.transport().wait(sent[m], Deadline::after(20s))) ranks.fail("a send failed");
      }
    } else {
      while (!go) std::this_thread::sleep_for(1ms);
      std::vector<std::byte> got(bytes);
      for (int m = 0; m < messages; ++m) {
        auto request = c.transport().post_recv(0, static_cast<Tag>(1000 + m), got);
        if (c.transport().wait(request, Deadline::after(20s))) {
          ranks.fail("receive " + std::to_string(m) + " failed");
          break;
        }
        if (!filled_with(got, static_cast<std::byte>(m))) {
          ranks.fail("message " + std::to_string(m) + " is wrong");
        }
      }
    }
    c.barrier();
  });
}

TEST_CASE("a receive for a later message gets it past an earlier one held in the socket") {
  // The 6 MiB message is over the 4 MiB that may wait in memory, so rank 1's engine leaves it in
  // the socket; a receive for the message behind it must still be served (the held one is then
  // read into memory), or a program that receives out of order would hang.
  const auto hosts = loopback_hosts(2, 1);
  Ranks ranks;
  ranks.run(2, [&](int r) {
    Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
    c.barrier();
    std::vector<std::byte> first(std::size_t{6} << 20, std::byte{1});
    std::vector<std::byte> second(std::size_t{1} << 20, std::byte{2});
    if (r == 0) {
      auto a = c.transport().post_send(1, 1, first);
      auto b = c.transport().post_send(1, 2, second);
      if (c.transport().wait(a, Deadline::after(20s))) ranks.fail("the first send failed");
      if (c.transport().wait(b, Deadline::after(20s))) ranks.fail("the second send failed");
    } else {
      std::this_thread::sleep_for(300ms);  // the first header arrives with no receive posted
      std::fill(first.begin(), first.end(), std::byte{0});
      std::fill(second.begin(), second.end(), std::byte{0});
      auto b = c.transport().post_recv(0, 2, second);
      if (c.transport().wait(b, Deadline::after(10s))) ranks.fail("the later message never came");
      auto a = c.transport().post_recv(0, 1, first);
      if (c.transport().wait(a, Deadline::after(10s))) ranks.fail("the earlier message was lost");
      if (!filled_with(first, std::byte{1}) || !filled_with(second, std::byte{2})) {
        ranks.fail("wrong bytes");
      }
    }
    c.barrier();
  });
}

TEST_CASE("a peer that aborts behind a held message fails the next receive, with its reason") {
  const auto hosts = loopback_hosts(2, 1);
  Ranks ranks;
  ranks.run(2, [&](int r) {
    Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
    c.barrier();
    if (r == 0) {
      std::vector<std::byte> held(std::size_t{6} << 20, std::byte{1});
      auto a = c.transport().post_send(1, 1, held);
      std::this_thread::sleep_for(200ms);
      c.transport().abort("rank 0 gives up behind a large message");
      (void)c.transport().wait(a, Deadline::after(5s));
      return;
    }
    std::this_thread::sleep_for(500ms);
    std::vector<int> x(4);
    std::error_code ec;
    const auto start = std::chrono::steady_clock::now();
    c.recv(x, 0, ec);
    if (ec != errc::connection_lost) ranks.fail("recv: " + ec.message());
    if (std::chrono::steady_clock::now() - start > 5s) ranks.fail("the failure took too long");
    const std::string why = c.transport().failure_reason(0);
    if (why.find("gives up behind") == std::string::npos) ranks.fail("reason lost: " + why);
  });
}

TEST_CASE("a burst of small messages, many to a read, arrives whole, in or out of order") {
  // Thousands of messages sit in the socket before any receive is posted, so each read brings
  // several, and headers and payloads straddle the reads' ends; a few larger ones are read
  // partly from the read-ahead and the rest straight into their destination.
  const auto hosts = loopback_hosts(2, 1);
  constexpr int count = 3000;
  auto size_of = [](int i) { return i % 500 == 7 ? std::size_t{20000} : static_cast<std::size_t>(i * 37 % 200); };
  auto fill_of = [](int i) { return static_cast<std::uint8_t>(i * 13 + 1); };
  Ranks ranks;
  ranks.run(2, [&](int r) {
    Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
    c.barrier();
    std::vector<std::vector<std::uint8_t>> data(count);
    std::vector<TcpTransport::Request> requests;
    if (r == 0) {
      for (int i = 0; i < count; ++i) {
        data[static_cast<std::size_t>(i)].assign(size_of(i), fill_of(i));
        requests.push_back(c.transport().post_send(1, static_cast<Tag>(1000 + i),
                                                   std::as_bytes(std::span(data[static_cast<std::size_t>(i)]))));
      }
    } else {
      std::this_thread::sleep_for(100ms);  // let them all arrive first
      // Even indices in order, then odd ones from the last: matched by tag, not arrival.
      std::vector<int> order;
      for (int i = 0; i < count; i += 2) order.push_back(i);
      for (int i = count - 1; i > 0; i -= 2) order.push_back(i);
      for (int i : order) {
        data[static_cast<std::size_t>(i)].assign(size_of(i), static_cast<std::uint8_t>(~fill_of(i)));
        requests.push_back(c.transport().post_recv(0, static_cast<Tag>(1000 + i),
                                                   std::as_writable_bytes(std::span(data[static_cast<std::size_t>(i)]))));
      }
    }
    for (auto& request : requests) {
      if (c.transport().wait(request, Deadline::after(20s))) ranks.fail("a transfer failed");
    }
    if (r == 1) {
      for (int i = 0; i < count; ++i) {
        const auto& got = data[static_cast<std::size_t>(i)];
        if (!filled_with(got, fill_of(i))) {
          ranks.fail("message " + std::to_string(i) + " (" + std::to_string(size_of(i)) + " bytes) is wrong");
        }
      }
    }
    c.barrier();
  });
}

TEST_CASE("a receive posted with the wrong size fails, and the messages behind it still arrive") {
  // The receives are posted before the messages come, so the reader finds the mismatch in the
  // header and must skip exactly that payload (small, and larger than a read-ahead) to stay in
  // step with the stream.
  const auto hosts = loopback_hosts(2, 1);
  std::atomic<bool> posted{false};
  Ranks ranks;
  ranks.run(2, [&](int r) {
    Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
    c.barrier();
    const std::size_t sizes[] = {100, 30000, 16};
    if (r == 0) {
      while (!posted) std::this_thread::sleep_for(1ms);
      for (int i = 0; i < 3; ++i) {
        std::vector<std::uint8_t> message(sizes[i], static_cast<std::uint8_t>(i + 1));
        auto request = c.transport().post_send(1, static_cast<Tag>(50 + i), std::as_bytes(std::span(message)));
        if (c.transport().wait(request, Deadline::after(10s))) ranks.fail("send " + std::to_string(i) + " failed");
      }
    } else {
      std::vector<std::uint8_t> small(7), large(29999), last(16);
      auto wrong_small = c.transport().post_recv(0, 50, std::as_writable_bytes(std::span(small)));
      auto wrong_large = c.transport().post_recv(0, 51, std::as_writable_bytes(std::span(large)));
      auto right = c.transport().post_recv(0, 52, std::as_writable_bytes(std::span(last)));
      posted = true;
      if (c.transport().wait(wrong_small, Deadline::after(10s)) != std::error_code(errc::protocol_error)) {
        ranks.fail("a 7-byte receive of a 100-byte message did not fail with protocol_error");
      }
      if (c.transport().wait(wrong_large, Deadline::after(10s)) != std::error_code(errc::protocol_error)) {
        ranks.fail("a 29999-byte receive of a 30000-byte message did not fail with protocol_error");
      }
      if (c.transport().wait(right, Deadline::after(10s))) ranks.fail("the message behind them failed");
      if (std::count(last.begin(), last.end(), 3) != 16) ranks.fail("the message behind them is wrong");
    }
    c.barrier();
  });
}

TEST_CASE("a connection from another job is refused, and both ends say why") {
  const auto hosts = loopback_hosts(2, 1);
  Ranks ranks;
  std::vector<std::string> messages(2);
  ranks.run(2, [&](int r) {
    auto config = config_for(r, hosts);
    config.job_token = r == 0 ? 111 : 222;
    config.connect_timeout = 3s;
    std::error_code ec;
    auto t = TcpTransport::connect(config, ec);
    if (t) ranks.fail("rank " + std::to_string(r) + " connected despite different job tokens");
    messages[static_cast<std::size_t>(r)] = detail::last_error_message;
  });
  for (const auto& m : messages) {
    CAPTURE(m);
    CHECK(m.find("job tokens differ") != std::string::npos);
  }
}

TEST_CASE("a mis-wired hostfile is refused instead of hanging") {
  // Each rank believes it is the other one's neighbour at the wrong index: rank 1's list names
  // rank 0's port for itself, so rank 0 connects to itself and refuses.
  auto hosts = loopback_hosts(3, 1);
  auto wrong = hosts;
  std::swap(wrong[1], wrong[2]);
  Ranks ranks;
  std::vector<std::string> messages(3);
  ranks.run(3, [&](int r) {
    auto config = config_for(r, r == 0 ? wrong : hosts);
    config.connect_timeout = 3s;
    std::error_code ec;
    auto t = TcpTransport::connect(config, ec);
    if (!t) {
      messages[static_cast<std::size_t>(r)] = detail::last_error_message;
      return;
    }
    // Connected on its side: stay around (and fail) so the others see the refusal, not an exit.
    Options options;
    options.timeout = 1s;
    Collective<TcpTransport, Ring> c(std::move(*t), {}, options);
    c.barrier(ec);
    if (!ec) ranks.fail("rank " + std::to_string(r) + " passed a barrier in a mis-wired group");
  });
  bool named = false;
  for (const auto& m : messages) {
    if (m.find("wrong rank") != std::string::npos || m.find("not expected") != std::string::npos) named = true;
  }
  CAPTURE(messages[0]);
  CAPTURE(messages[1]);
  CAPTURE(messages[2]);
  CHECK(named);
  // Rank 0 reached rank 2's address while looking for rank 1.
  CHECK(messages[0].find("rank 1 at " + hosts[2][0].to_string()) != std::string::npos);
}

TEST_CASE("a rank whose neighbour never starts gives up at the connect deadline, naming it") {
  const auto hosts = loopback_hosts(2, 1);
  auto config = config_for(0, hosts);
  config.connect_timeout = 500ms;
  const auto start = std::chrono::steady_clock::now();
  std::error_code ec;
  auto t = TcpTransport::connect(config, ec);
  CHECK(!t);
  CHECK(ec == errc::timed_out);
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  const std::string& m = detail::last_error_message;
  CAPTURE(m);
  CHECK(m.find("rank 1") != std::string::npos);
  CHECK(m.find(hosts[1][0].to_string()) != std::string::npos);
}

TEST_CASE("an address that is not on this host is reported with its hostfile entry") {
  std::vector<std::vector<Endpoint>> hosts = {{{"192.0.2.1", 5000}}, {{"127.0.0.1", 5001}}};
  std::error_code ec;
  auto t = TcpTransport::connect(config_for(0, hosts), ec);
  CHECK(!t);
  CHECK(ec == errc::bad_configuration);
  CHECK(detail::last_error_message.find("cannot listen on 192.0.2.1:5000") != std::string::npos);
}

TEST_CASE("when a peer aborts, every pending operation on it fails at once") {
  const auto hosts = loopback_hosts(3, 1);
  Ranks ranks;
  ranks.run(3, [&](int r) {
    Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
    c.barrier();
    if (r == 2) {
      std::this_thread::sleep_for(100ms);
      c.transport().abort("the test aborts rank 2");
      return;
    }
    std::vector<float> x(1 << 20, 1.0f);
    std::error_code ec;
    const auto start = std::chrono::steady_clock::now();
    c.all_sum(x, ec);
    if (ec != errc::connection_lost) ranks.fail("rank " + std::to_string(r) + ": " + ec.message());
    if (std::chrono::steady_clock::now() - start > 5s) ranks.fail("failure took too long");
  });
}

TEST_CASE("a caller spinning on a small receive learns of its peer's abort at once, with the reason") {
  const auto hosts = loopback_hosts(2, 1);
  Ranks ranks;
  ranks.run(2, [&](int r) {
    TcpConfig config = config_for(r, hosts);
    config.spin = 10s;
    Collective<TcpTransport, Ring> c(TcpTransport::connect(std::move(config)));
    c.barrier();
    if (r == 0) {
      std::this_thread::sleep_for(100ms);
      c.transport().abort("rank 0 gives up");
      return;
    }
    std::vector<int> x(4);
    std::error_code ec;
    const auto start = std::chrono::steady_clock::now();
    c.recv(x, 0, ec);
    if (ec != errc::connection_lost) ranks.fail("recv: " + ec.message());
    if (std::chrono::steady_clock::now() - start > 5s) ranks.fail("the failure took too long");
    const std::string why = c.transport().failure_reason(0);
    if (why.find("rank 0 gives up") == std::string::npos) ranks.fail("reason lost: " + why);
  });
}

TEST_CASE("ranks connect over IPv6 loopback") {
  {
    asio::io_context io;
    std::error_code ec;
    asio::ip::tcp::acceptor probe(io);
    probe.open(asio::ip::tcp::v6(), ec);
    if (!ec) probe.bind({asio::ip::make_address("::1"), 0}, ec);
    if (ec) {
      MESSAGE("collie-test SKIPPED: this machine has no IPv6 loopback (" << ec.message() << ")");
      return;
    }
  }
  auto hosts = loopback_hosts(3, 1);
  for (auto& list : hosts) list[0].host = "::1";
  Ranks ranks;
  ranks.run(3, [&](int r) {
    Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
    std::vector<int> x(1000, 1);
    c.all_sum(x);
    if (x[999] != 3) ranks.fail("all_sum over IPv6");
    if (c.transport().describe_peer(1).find("[::1]:") == std::string::npos) {
      ranks.fail("IPv6 address not shown in brackets: " + c.transport().describe_peer(1));
    }
  });
}

TEST_CASE("a single message larger than 2 GiB arrives whole") {
  // 2 GiB + 3 bytes: more than one write or read system call can move, and than a 32-bit count.
  if (std::getenv("COLLIE_TEST_LARGE_COUNT") != nullptr) {
    MESSAGE("collie-test SKIPPED: under the sanitizer builds (4 GiB of buffers); runs in the default build");
    return;
  }
  const std::size_t bytes = (std::size_t{2} << 30) + 3;
  const auto hosts = loopback_hosts(2, 1);
  Ranks ranks;
  ranks.run(2, [&](int r) {
    Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
    std::vector<std::uint8_t> buffer(bytes);
    if (r == 0) {
      for (std::size_t i = 0; i < bytes; i += 4096) buffer[i] = static_cast<std::uint8_t>(i / 4096 * 7);
      buffer[bytes - 1] = 0xAB;
      c.send(buffer, 1);
    } else {
      c.recv(buffer, 0);
      for (std::size_t i = 0; i < bytes; i += 4096) {
        if (buffer[i] != static_cast<std::uint8_t>(i / 4096 * 7)) {
          ranks.fail("byte " + std::to_string(i) + " is wrong");
          break;
        }
      }
      if (buffer[bytes - 1] != 0xAB) ranks.fail("last byte is wrong");
    }
  });
}

TEST_CASE("repeated collectives of megabytes soon stop faulting in fresh memory") {
  // Every staging buffer is allocated on first use and reused, so a call that allocated memory
  // in proportion to its message would touch fresh pages on every call: 256 per MiB. A fixed
  // mmap threshold makes glibc give every large block back to the system when it is freed, so
  // such an allocation cannot hide in a recycled heap block, and the minor page faults of the
  // process (all ranks are its threads) show it. Messages that arrive before their receive is
  // posted are kept in buffers that grow to the most that ever waited at once; how many that is
  // depends on timing, so the first rounds may still grow them, and the test asks only that a
  // round comes (within thirty) that faults in less than 256 KiB, where a per-call allocation
  // would fault in megabytes every round.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  // Their allocators hold freed memory back and map fresh pages for small blocks too.
  MESSAGE("collie-test SKIPPED: under the sanitizer builds; runs in the default build");
  return;
#endif
  ::mallopt(M_MMAP_THRESHOLD, 128 * 1024);  // for the rest of the process: only slower
  constexpr int p = 4;
  constexpr int max_rounds = 30;
  constexpr long quiet_round = 64;  // faults
  const auto hosts = loopback_hosts(p, 1);
  auto minor_faults = [] {
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);
    return usage.ru_minflt;
  };
  std::vector<long> faults;  // per round, written by rank 0
  Ranks ranks;
  ranks.run(p, [&](int r) {
    Collective<TcpTransport, Ring> c(TcpTransport::connect(config_for(r, hosts)));
    const auto value = static_cast<float>(r + 1);
    constexpr std::size_t kib = 1024 / sizeof(float);  // floats per KiB
    // Sizes that take each path of the ring: recursive doubling (64 KiB), halving (1 MiB), the
    // pipelined ring (8 MiB); the Bruck (4 KiB per rank) and the direct (1 MiB) all-to-all.
    std::vector<float> small(64 * kib), middle(1024 * kib), large(8192 * kib);
    std::vector<float> gathered(p * middle.size()), scattered(middle.size());
    std::vector<float> few_in(p * kib), few_out(p * kib), many_in(middle), many_out(middle);
    std::vector<float> received(large.size());
    auto round = [&] {
      for (auto* x : {&small, &middle, &large}) {
        std::fill(x->begin(), x->end(), value);
        c.all_sum(*x);
        if (!filled_with(*x, 10.0f)) ranks.fail("all_sum of " + std::to_string(x->size()));
      }
      c.all_gather(middle, gathered);
      c.sum_scatter(gathered, scattered);
      c.broadcast(large, 0);
      c.all_to_all(few_in, few_out);
      c.all_to_all(many_in, many_out);
      // 8 MiB around the ring, more than the socket buffers hold.
      auto receive = c.recv_async(received, (r + p - 1) % p);
      c.send(large, (r + 1) % p);
      receive.wait();
    };
    round();  // the first calls allocate and touch the staging
    for (int i = 0; i < max_rounds; ++i) {
      c.barrier();
      const long before = r == 0 ? minor_faults() : 0;
      round();
      c.barrier();  // every rank has finished the round
      // Every rank decides alike whether to go on, from a count rank 0 broadcasts.
      std::vector<long> count{r == 0 ? minor_faults() - before : 0};
      c.broadcast(count, 0);
      if (r == 0) faults.push_back(count[0]);
      if (count[0] < quiet_round) break;
    }
  });
  std::string counts;
  for (long f : faults) counts += std::to_string(f) + " ";
  MESSAGE("minor page faults per round: " << counts);
  REQUIRE(!faults.empty());
  CHECK(faults.back() < quiet_round);
}
