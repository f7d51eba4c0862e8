// init() and Group: the singleton fallback, strict mode, unknown backends, and the runtime
// Group forwarding every operation to the Collective it holds.
#include "collie/runtime/init.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "collie/runtime/threads.hpp"
#include "collie/algorithm/mesh.hpp"

using namespace collie;

TEST_CASE("init without any configured backend returns a singleton group") {
  Group world = init();
  CHECK(world.rank() == 0);
  CHECK(world.size() == 1);
  CHECK(world.backend() == "singleton");
  std::vector<float> x(10, 1.0f);
  world.all_sum(x);
  CHECK(x[9] == 1.0f);
  std::error_code ec;
  world.send(x, 0, ec);
  CHECK(ec == errc::singleton_group);
}

TEST_CASE("strict init fails when nothing is configured, and says what to set") {
  std::error_code ec;
  auto group = init("any", true, ec);
  CHECK(!group);
  CHECK(ec == errc::not_configured);
  CHECK(Group::last_error().find("MLX_HOSTFILE") != std::string::npos);
  CHECK_THROWS_AS(init("any", true), Error);
}

TEST_CASE("init refuses unknown backend names and names the known ones") {
  std::error_code ec;
  CHECK(!init("tcp-please", false, ec));
  CHECK(ec == errc::unknown_backend);
  const std::string message = Group::last_error();
  CAPTURE(message);
  CHECK(message.find("unknown backend \"tcp-please\"; use one of any, ") != std::string::npos);
  for (const char* name : {"ring", "jaccl", "mpi", "nccl"}) CHECK(message.find(name) != std::string::npos);
}

TEST_CASE("init of ring without its variables is a singleton, or an error when strict") {
  std::error_code ec;
  auto group = init("ring", false, ec);
  REQUIRE(group);
  CHECK(group->size() == 1);
  CHECK(!init("ring", true, ec));
  CHECK(ec == errc::not_configured);
  CHECK(Group::last_error().find("MLX_HOSTFILE") != std::string::npos);
}

TEST_CASE("init of a backend that is not compiled in is an error, never a silent singleton") {
  for (const char* name : {"mpi", "nccl", "jaccl"}) {
    CAPTURE(name);
    std::error_code ec;
    CHECK(!init(name, false, ec));
    CHECK(ec == errc::unknown_backend);
    CHECK(Group::last_error().find("not compiled into this build") != std::string::npos);
  }
  // A failed attempt is not cached: "any" still gives a working singleton.
  CHECK(init().size() == 1);
}

TEST_CASE("the ring backend's algorithm knobs are read from the environment, and bad values are refused before connecting") {
  // A ring of one: mlx.launch writes an empty hostfile for a single-host job.
  const std::string hostfile = "/tmp/collie-init-test-" + std::to_string(::getpid()) + ".json";
  std::FILE* f = std::fopen(hostfile.c_str(), "w");
  REQUIRE(f != nullptr);
  std::fclose(f);
  ::setenv("MLX_RANK", "0", 1);
  ::setenv("MLX_HOSTFILE", hostfile.c_str(), 1);
  const char* knobs[] = {"COLLIE_RING_RINGS", "COLLIE_RING_SEGMENT_BYTES", "COLLIE_RING_SMALL_BYTES",
                         "COLLIE_RING_HALVING_BYTES", "COLLIE_RING_HALVING_FROM_BYTES",
                         "COLLIE_RING_ALL_TO_ALL_SMALL_BYTES", "COLLIE_MESH_SMALL_BYTES"};
  struct Refused {
    const char* name;
    const char* value;
    const char* message;
  };
  const Refused refused[] = {
      {"COLLIE_RING_RINGS", "0", "COLLIE_RING_RINGS=0 is out of range; set it to a number in [1, 64]"},
      {"COLLIE_RING_SEGMENT_BYTES", "abc", "COLLIE_RING_SEGMENT_BYTES=abc is out of range"},
      {"COLLIE_RING_SEGMENT_BYTES", "100", "[4096, 1073741824]"},
      {"COLLIE_RING_SMALL_BYTES", "2G", "default 262144"},
      {"COLLIE_RING_HALVING_BYTES", "4x", "COLLIE_RING_HALVING_BYTES=4x is out of range"},
      {"COLLIE_RING_HALVING_FROM_BYTES", "3G", "COLLIE_RING_HALVING_FROM_BYTES=3G is out of range"},
      {"COLLIE_RING_ALL_TO_ALL_SMALL_BYTES", "2G", "COLLIE_RING_ALL_TO_ALL_SMALL_BYTES=2G is out of range"},
      {"COLLIE_MESH_SMALL_BYTES", "-1", "COLLIE_MESH_SMALL_BYTES=-1 is out of range"},
  };
  for (const auto& c : refused) {
    CAPTURE(c.name);
    CAPTURE(c.value);
    ::setenv(c.name, c.value, 1);
    std::error_code ec;
    CHECK(!init("ring", true, ec));
    CHECK(ec == errc::bad_configuration);
    CHECK(Group::last_error().find(c.message) != std::string::npos);
    ::unsetenv(c.name);
  }
  // Good values, suffixes and stray white space included, give a working group (cached by init:
  // dropped again below so that no later test sees it).
  ::setenv("COLLIE_RING_RINGS", "4", 1);
  ::setenv("COLLIE_RING_SEGMENT_BYTES", "256k", 1);
  ::setenv("COLLIE_RING_SMALL_BYTES", " 0 ", 1);
  ::setenv("COLLIE_RING_HALVING_BYTES", "8M", 1);
  ::setenv("COLLIE_RING_HALVING_FROM_BYTES", "32k", 1);
  ::setenv("COLLIE_RING_ALL_TO_ALL_SMALL_BYTES", "4k", 1);
  ::setenv("COLLIE_MESH_SMALL_BYTES", "1M", 1);
  std::error_code ec;
  auto group = init("ring", true, ec);
  REQUIRE(group);
  CHECK(group->backend() == "ring");
  std::vector<float> x(3, 2.0f);
  group->all_sum(x);
  CHECK(x[2] == 2.0f);
  detail::forget_init_group();
  for (const char* name : knobs) ::unsetenv(name);
  ::unsetenv("MLX_RANK");
  ::unsetenv("MLX_HOSTFILE");
  std::remove(hostfile.c_str());
}

TEST_CASE("with a coordinator too, a bad algorithm or knob is refused before anything connects") {
  // Nobody listens at the coordinator: had init() tried to connect first, it would wait for it.
  ::setenv("COLLIE_COORDINATOR", "127.0.0.1:1", 1);
  ::setenv("COLLIE_RANK", "1", 1);
  ::setenv("COLLIE_WORLD_SIZE", "2", 1);
  ::setenv("COLLIE_CONNECT_TIMEOUT_MS", "30000", 1);
  struct Case {
    const char* name;
    const char* value;
    const char* message;
  };
  for (const Case& c : {Case{"COLLIE_ALGORITHM", "tree", "is not an algorithm of the ring backend; use one of: ring, mesh"},
                        Case{"COLLIE_RING_SMALL_BYTES", "lots", "COLLIE_RING_SMALL_BYTES=lots is out of range"},
                        Case{"COLLIE_MESH_SMALL_BYTES", "2G", "COLLIE_MESH_SMALL_BYTES=2G is out of range"}}) {
    CAPTURE(c.name);
    ::setenv(c.name, c.value, 1);
    std::error_code ec;
    const auto start = std::chrono::steady_clock::now();
    CHECK(!init("ring", true, ec));
    CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(5));
    CHECK(ec == errc::bad_configuration);
    CHECK(Group::last_error().find(c.message) != std::string::npos);
    ::unsetenv(c.name);
  }
  for (const char* name : {"COLLIE_COORDINATOR", "COLLIE_RANK", "COLLIE_WORLD_SIZE", "COLLIE_CONNECT_TIMEOUT_MS"}) {
    ::unsetenv(name);
  }
}

TEST_CASE("a Group forwards every operation to its collective") {
  run_as_threads(4, [](Group& world) {
    const int r = world.rank();
    CHECK(world.backend() == "inproc");
    CHECK(world.name() == "inproc/ring");
    CHECK(world.size() == 4);
    CHECK(world.get_if<Collective<InProcessTransport, Ring>>() != nullptr);
    CHECK(world.get_if<Collective<InProcessTransport, Mesh>>() == nullptr);
    // Reductions, in place and out of place, named and with any op.
    std::vector<int> x{r, -r};
    std::vector<int> out(2);
    world.all_sum(x, out);
    CHECK(out == std::vector<int>{6, -6});
    world.all_prod(std::vector<int>{r + 1, 2}, out);
    CHECK(out == std::vector<int>{24, 16});
    world.all_min(x, out);
    CHECK(out == std::vector<int>{0, -3});
    world.all_max(x);
    CHECK(x == std::vector<int>{3, 0});
    world.all_reduce(x, [](int a, int b) { return a + b; });
    CHECK(x == std::vector<int>{12, 0});
    world.reduce_scatter(std::vector<int>{1, 2, 3, 4}, std::span(out).first(1), Max{});
    CHECK(out[0] == r + 1);
    std::vector<int> scattered(1);
    world.sum_scatter(std::vector<int>{1, 2, 3, 4}, scattered);
    CHECK(scattered[0] == 4 * (r + 1));
    // Data movement.
    std::vector<int> gathered(4);
    world.all_gather(std::vector<int>{r}, gathered);
    CHECK(gathered == std::vector<int>{0, 1, 2, 3});
    std::vector<int> root_data{r == 2 ? 7 : 0};
    world.broadcast(root_data, 2);
    CHECK(root_data[0] == 7);
    std::vector<int> copied(1);
    world.broadcast(std::vector<int>{r == 1 ? 9 : 0}, copied, 1);
    CHECK(copied[0] == 9);
    std::vector<int> to_all{r * 10, r * 10 + 1, r * 10 + 2, r * 10 + 3}, from_all(4);
    world.all_to_all(to_all, from_all);
    CHECK(from_all == std::vector<int>{r, 10 + r, 20 + r, 30 + r});
    world.barrier();
    // Point to point, synchronous and not.
    std::vector<int> message{r, r};
    std::vector<int> received(2);
    if (r % 2 == 0) {
      world.send(message, r + 1);
      world.recv(received, r + 1);
    } else {
      world.recv(received, r - 1);
      world.send(message, r - 1);
    }
    CHECK(received == std::vector<int>{r ^ 1, r ^ 1});
    auto got = world.recv_async(received, (r + 3) % 4);
    auto sent = world.send_async(message, (r + 1) % 4);
    sent.wait();
    got.wait();
    CHECK(received[0] == (r + 3) % 4);
    // Asynchronous collectives.
    std::vector<float> a(3, 1.0f), b(3, 2.0f), c(3, 3.0f), d(3, 4.0f);
    auto r1 = world.all_sum_async(a);
    auto r2 = world.all_prod_async(b);
    auto r3 = world.all_max_async(c);
    auto r4 = world.all_min_async(d);
    auto r5 = world.all_reduce_async(a, Sum{});
    std::vector<float> g(4), s2(1), s3(1);
    const std::vector<float> mine{static_cast<float>(r)};  // a temporary would not compile
    auto r6 = world.all_gather_async(mine, g);
    const std::vector<float> ones(4, 1.0f);
    auto r7 = world.sum_scatter_async(ones, s2);
    auto r8 = world.reduce_scatter_async(ones, s3, Max{});
    std::vector<float> bc{r == 0 ? 5.0f : 0.0f};
    auto r9 = world.broadcast_async(bc, 0);
    std::vector<float> t_in(4, static_cast<float>(r)), t_out(4);
    auto r10 = world.all_to_all_async(t_in, t_out);
    auto r11 = world.barrier_async();
    for (Request* q : {&r1, &r2, &r3, &r4, &r5, &r6, &r7, &r8, &r9, &r10, &r11}) q->wait();
    CHECK(a == std::vector<float>(3, 16.0f));
    CHECK(b == std::vector<float>(3, 16.0f));
    CHECK(c == std::vector<float>(3, 3.0f));
    CHECK(d == std::vector<float>(3, 4.0f));
    CHECK(g == std::vector<float>{0, 1, 2, 3});
    CHECK(s2[0] == 4.0f);
    CHECK(s3[0] == 1.0f);
    CHECK(bc[0] == 5.0f);
    CHECK(t_out == std::vector<float>{0, 1, 2, 3});
    // Fused.
    std::vector<std::vector<double>> grads(5, std::vector<double>(3, 1.0));
    world.all_sum_fused(grads);
    CHECK(grads[4] == std::vector<double>(3, 4.0));
    // Errors come through the Group's own forms, before any byte moves.
    std::error_code ec;
    std::vector<int> three(3);
    world.all_sum(x, three, ec);
    CHECK(ec == errc::invalid_argument);
    CHECK(Group::last_error().find("collie[inproc/ring] all_reduce") != std::string::npos);
    static_assert(noexcept(world.all_gather(x, out, ec)));
    static_assert(noexcept(world.split(0, 0, ec)));
    // Subgroups are Groups, sharing the backend.
    Group half = world.split(r / 2);
    CHECK(half.size() == 2);
    CHECK(half.rank() == r % 2);
    CHECK(half.backend() == "inproc");
    Group copy = world;  // copies share the group
    copy.barrier();
  });
}

TEST_CASE("run_as_threads rethrows the first failure and does not hang the other ranks") {
  CHECK_THROWS_WITH_AS(run_as_threads(3,
                                      [](Group& world) {
                                        if (world.rank() == 1) throw std::runtime_error("boom");
                                        std::vector<float> x(1000);
                                        std::error_code ec;
                                        world.all_sum(x, ec);  // rank 1 is dead: fails at once
                                        CHECK(ec == errc::connection_lost);
                                      }),
                       "boom", std::runtime_error);
}
