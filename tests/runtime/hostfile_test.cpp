// Endpoint and hostfile parsing: the accepted forms, and a message that names the file, rank,
// entry and problem for every kind of mistake.
#include "collie/runtime/hostfile.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

using namespace collie;

namespace {

// The message of a failing parse_hostfile (error_code form), checking the code on the way.
std::string hostfile_error(std::string_view text, std::string_view origin = "/tmp/h.json") {
  std::error_code ec;
  auto table = parse_hostfile(text, origin, ec);
  CHECK(!table);
  CHECK(ec == errc::bad_configuration);
  return detail::last_error_message;
}

std::string endpoint_error(std::string_view text) {
  std::error_code ec;
  auto endpoint = parse_endpoint(text, ec);
  CHECK(!endpoint);
  CHECK(ec == errc::bad_configuration);
  return detail::last_error_message;
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

// A file in the test's temporary directory, removed at the end of the case.
struct TempFile {
  explicit TempFile(std::string_view contents) {
    const char* dir = std::getenv("TEST_TMPDIR");
    path = std::filesystem::path(dir ? dir : "/tmp") /
           ("collie_hostfile_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) +
            ".json");
    std::ofstream(path) << contents;
  }
  ~TempFile() { std::filesystem::remove(path); }
  std::filesystem::path path;
  static inline int counter = 0;
};

}  // namespace

TEST_CASE("parse_endpoint reads IPv4, bracketed IPv6 and host names") {
  CHECK(parse_endpoint("1.2.3.4:5000") == Endpoint{"1.2.3.4", 5000});
  CHECK(parse_endpoint("[::1]:5000") == Endpoint{"::1", 5000});
  CHECK(parse_endpoint("[fe80::1%eth0]:1") == Endpoint{"fe80::1%eth0", 1});
  CHECK(parse_endpoint("node-7.cluster:65535") == Endpoint{"node-7.cluster", 65535});
  CHECK(parse_endpoint("[::1]:5000").to_string() == "[::1]:5000");
}

TEST_CASE("parse_endpoint says what is wrong with a malformed endpoint") {
  CHECK(contains(endpoint_error("10.0.0.1:99999"), "\"10.0.0.1:99999\": port must be 1..65535"));
  CHECK(contains(endpoint_error("10.0.0.1:0"), "port must be 1..65535"));
  CHECK(contains(endpoint_error("10.0.0.1:123456789012345678901234"), "port must be 1..65535"));
  CHECK(contains(endpoint_error("10.0.0.1"), "missing the port"));
  CHECK(contains(endpoint_error("10.0.0.1:"), "missing the port"));
  CHECK(contains(endpoint_error(":5000"), "missing the host"));
  CHECK(contains(endpoint_error("10.0.0.1:http"), "port \"http\" is not a number"));
  CHECK(contains(endpoint_error("10.0.0.256:5000"), "not a valid IPv4 address"));
  CHECK(contains(endpoint_error("::1:5000"), "needs brackets"));
  CHECK(contains(endpoint_error("[::1]5000"), "expected ':'"));
  CHECK(contains(endpoint_error("[::1:5000"), "missing ']'"));
  CHECK(contains(endpoint_error("[not-v6]:5000"), "is not an IPv6 address"));
  CHECK(contains(endpoint_error(" 10.0.0.1:5000"), "white space"));
  CHECK(contains(endpoint_error("host/name:5000"), "neither an IP address nor a host name"));
  CHECK(contains(endpoint_error(""), "empty"));
  CHECK_THROWS_AS(parse_endpoint("10.0.0.1:99999"), Error);
}

TEST_CASE("parse_hostfile reads the reference format, one array of addresses per rank") {
  const auto table = parse_hostfile(R"([
      ["123.123.1.1:5000", "123.123.1.2:5000"],
      ["123.123.2.1:5000", "123.123.2.2:5000"],
      ["123.123.3.1:5000", "123.123.3.2:5000"],
      ["[::1]:5000", "localhost:5001"]
    ])",
                                    "test");
  REQUIRE(table.size() == 4);
  CHECK(table[0] == std::vector<Endpoint>{{"123.123.1.1", 5000}, {"123.123.1.2", 5000}});
  CHECK(table[3] == std::vector<Endpoint>{{"::1", 5000}, {"localhost", 5001}});
}

TEST_CASE("format_hostfile writes what parse_hostfile reads, IPv6 in brackets") {
  const HostTable table = {{{"10.0.0.1", 5000}, {"10.0.0.1", 5001}}, {{"::1", 6000}, {"localhost", 7}}};
  const std::string text = format_hostfile(table);
  CHECK(text == R"([["10.0.0.1:5000","10.0.0.1:5001"],["[::1]:6000","localhost:7"]])");
  CHECK(parse_hostfile(text, "written") == table);
}

TEST_CASE("a blank hostfile, or the JSON string \"\", is one rank with no addresses") {
  // mlx.launch writes this for a job on a single host.
  for (std::string_view text : {"", "  \n", "\"\"", " \"\"\n"}) {
    const auto table = parse_hostfile(text, "test");
    REQUIRE(table.size() == 1);
    CHECK(table[0].empty());
  }
}

TEST_CASE("invalid JSON is reported with its byte offset, line and column") {
  const auto message = hostfile_error("[[\"1.2.3.4:5000\"],\n [\"1.2.3.5:5000\"]\n");
  CHECK(contains(message, "collie: hostfile /tmp/h.json: not valid JSON (byte "));
  CHECK(contains(message, "line 3"));
  CHECK(!contains(message, "[json.exception"));
}

TEST_CASE("the top level must be a non-empty array") {
  CHECK(contains(hostfile_error("[]"), "the array of ranks is empty"));
  CHECK(contains(hostfile_error("42"), "the top level is a JSON number"));
  CHECK(contains(hostfile_error(R"({"hosts": []})"), "launcher hostfile"));
}

TEST_CASE("every rank must be a non-empty array of strings") {
  CHECK(contains(hostfile_error(R"([["1.2.3.4:1"], "1.2.3.5:1"])"),
                 "rank 1: expected an array of \"ip:port\" strings, got a JSON string "
                 "(write [\"1.2.3.5:1\"])"));
  CHECK(contains(hostfile_error(R"([[]])"), "rank 0: the array of addresses is empty"));
  CHECK(contains(hostfile_error(R"([["1.2.3.4:1"], [5000]])"),
                 "rank 1, entry 0: expected an \"ip:port\" string, got 5000"));
}

TEST_CASE("every rank must list the same number of addresses") {
  const auto message =
      hostfile_error(R"([["1.2.3.4:1", "1.2.3.4:2"], ["1.2.3.5:1", "1.2.3.5:2"], ["1.2.3.6:1"]])");
  CHECK(contains(message, "rank 2: lists 1 address but rank 0 lists 2"));
}

TEST_CASE("a bad port names the file, the rank and the entry") {
  const auto message = hostfile_error(
      R"([["10.0.0.1:1", "10.0.0.1:2"], ["10.0.0.2:1", "10.0.0.2:2"], ["10.0.0.3:1", "10.0.0.3:99999"]])");
  CHECK(message ==
        "collie: hostfile /tmp/h.json: rank 2, entry 1: \"10.0.0.3:99999\": port must be 1..65535");
}

TEST_CASE("an endpoint listed twice names both places") {
  const auto message =
      hostfile_error(R"([["10.0.0.1:1", "10.0.0.1:2"], ["10.0.0.2:1", "10.0.0.1:2"]])");
  CHECK(contains(message, "rank 1, entry 1: \"10.0.0.1:2\" is already listed at rank 0, entry 1"));
}

TEST_CASE("load_hostfile reads a file and names its path in errors") {
  TempFile good(R"([["127.0.0.1:5000"], ["127.0.0.1:5001"]])");
  CHECK(load_hostfile(good.path).size() == 2);

  TempFile bad(R"([["127.0.0.1:5000"], ["127.0.0.1:70000"]])");
  std::error_code ec;
  CHECK(!load_hostfile(bad.path, ec));
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message, "collie: hostfile " + bad.path.string() + ": rank 1"));
  CHECK_THROWS_AS(load_hostfile(bad.path), Error);
}

TEST_CASE("a hostfile that does not exist is an error naming the path and the reason") {
  std::error_code ec;
  CHECK(!load_hostfile("/nonexistent/collie/hosts.json", ec));
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message,
                 "cannot open hostfile /nonexistent/collie/hosts.json: No such file or directory"));
  try {
    load_hostfile("/nonexistent/collie/hosts.json");
    FAIL("expected an exception");
  } catch (const Error& e) {
    CHECK(e.code() == errc::bad_configuration);
    CHECK(contains(e.what(), "/nonexistent/collie/hosts.json"));
  }
}
