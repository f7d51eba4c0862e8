// init() and Group: the singleton fallback, strict mode, unknown backends, and the runtime
// Group forwarding every operation to the Collective it holds.
#include "collie/runtime/init.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

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
