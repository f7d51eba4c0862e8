// A build with COLLIE_WITH_TCP=0 (BUILD.bazel sets it for this test only): no TCP transport, no
// Asio, and init() says so instead of trying — the switches decide what a program carries.
#include "collie/runtime/init.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstdlib>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "collie/runtime/enabled.hpp"

#if COLLIE_WITH_TCP
#error "this test is built with COLLIE_WITH_TCP=0"
#endif
#ifdef ASIO_VERSION
#error "without TCP, no collie header may include Asio"
#endif

using namespace collie;

TEST_CASE("without TCP, the enabled pairs are the in-process ones only") {
  CHECK(detail::type_list_size_v<EnabledTransports> == 1);
  CHECK(std::variant_size_v<detail::RuntimeVariant> == 2);
  CHECK(!RingBackend::compiled_in);
}

TEST_CASE("without TCP, init(\"ring\") fails at once and names what is compiled in") {
  // A ring environment is present: it must not be tried, nor silently ignored by name.
  ::setenv("MLX_RANK", "0", 1);
  ::setenv("MLX_HOSTFILE", "/nonexistent/hosts.json", 1);
  std::error_code ec;
  auto group = init("ring", true, ec);
  CHECK(!group);
  CHECK(ec == errc::unknown_backend);
  CHECK(Group::last_error().find("\"ring\" is not compiled into this build") != std::string::npos);
  CHECK_THROWS_AS(init("ring"), Error);
  ::unsetenv("MLX_RANK");
  ::unsetenv("MLX_HOSTFILE");
}

TEST_CASE("without TCP, init() still gives a working group of one rank") {
  Group world = init();
  CHECK(world.size() == 1);
  std::vector<int> x(3, 5);
  world.all_sum(x);
  CHECK(x[2] == 5);
}
