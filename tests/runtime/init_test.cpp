// init() and Group: the singleton fallback, strict mode, unknown backends, and the runtime
// Group forwarding every operation to the Collective it holds.
#include "collie/runtime/init.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "collie/runtime/threads.hpp"

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
  CHECK(Group::last_error().find("any, ring, jaccl, mpi, nccl") != std::string::npos);
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
  detail::init_cache().group.reset();
  for (const char* name : knobs) ::unsetenv(name);
  ::unsetenv("MLX_RANK");
  ::unsetenv("MLX_HOSTFILE");
  std::remove(hostfile.c_str());
}

TEST_CASE("a Group forwards every operation to its collective") {
  run_as_threads(4, [](Group& world) {
    CHECK(world.backend() == "inproc");
    CHECK(world.name() == "inproc/ring");
    std::vector<int> x{world.rank()};
    world.all_max(x);
    CHECK(x[0] == 3);
    std::vector<int> gathered(4);
    world.all_gather(std::vector<int>{world.rank()}, gathered);
    CHECK(gathered == std::vector<int>{0, 1, 2, 3});
    std::vector<int> scattered(1);
    world.sum_scatter(std::vector<int>{1, 2, 3, 4}, scattered);
    CHECK(scattered[0] == 4 * (world.rank() + 1));
    auto pending = world.all_sum_async(x);
    pending.wait();
    CHECK(x[0] == 12);
    Group half = world.split(world.rank() / 2);
    CHECK(half.size() == 2);
    CHECK(half.rank() == world.rank() % 2);
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
