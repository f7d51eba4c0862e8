// Environment variables: the COLLIE_/MLX_ spellings, the ring's hostfile configuration, scheduler
// rank/size families and the coordinator, each with its error message.
#include "collie/runtime/environment.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <string_view>

using namespace collie;

namespace {

// Every variable these tests or the code under test read. A Environment clears them all for
// the duration of one test case and puts the previous values back afterwards, so cases do not
// leak into each other and the machine's own environment (a CI job under Slurm) does not leak in.
constexpr std::string_view all_variables[] = {"COLLIE_RANK",
                                              "MLX_RANK",
                                              "COLLIE_HOSTFILE",
                                              "MLX_HOSTFILE",
                                              "COLLIE_WORLD_SIZE",
                                              "MLX_WORLD_SIZE",
                                              "COLLIE_TIMEOUT_MS",
                                              "MLX_TIMEOUT_MS",
                                              "COLLIE_CONNECT_TIMEOUT_MS",
                                              "MLX_CONNECT_TIMEOUT_MS",
                                              "COLLIE_JOB_TOKEN",
                                              "MLX_JOB_TOKEN",
                                              "COLLIE_RING_VERBOSE",
                                              "COLLIE_SPIN_US",
                                              "MLX_SPIN_US",
                                              "COLLIE_TCP_CONGESTION",
                                              "MLX_TCP_CONGESTION",
                                              "MLX_RING_VERBOSE",
                                              "COLLIE_COORDINATOR",
                                              "MLX_COORDINATOR",
                                              "COLLIE_JACCL_COORDINATOR",
                                              "MLX_JACCL_COORDINATOR",
                                              "COLLIE_IBV_DEVICES",
                                              "MLX_IBV_DEVICES",
                                              "NCCL_HOST_IP",
                                              "RANK",
                                              "WORLD_SIZE",
                                              "OMPI_COMM_WORLD_RANK",
                                              "OMPI_COMM_WORLD_SIZE",
                                              "PMI_RANK",
                                              "PMI_SIZE",
                                              "SLURM_PROCID",
                                              "SLURM_STEP_NUM_TASKS",
                                              "SLURM_NTASKS",
                                              "SLURM_NPROCS",
                                              "MASTER_ADDR",
                                              "MASTER_PORT"};

class Environment {
 public:
  Environment() {
    for (auto name : all_variables) {
      const std::string key(name);
      if (const char* value = std::getenv(key.c_str())) saved_[key] = value;
      ::unsetenv(key.c_str());
    }
  }
  ~Environment() {
    for (auto name : all_variables) {
      const std::string key(name);
      if (auto it = saved_.find(key); it != saved_.end()) {
        ::setenv(key.c_str(), it->second.c_str(), 1);
      } else {
        ::unsetenv(key.c_str());
      }
    }
    for (const auto& path : files_) std::filesystem::remove(path);
  }
  Environment(const Environment&) = delete;
  Environment& operator=(const Environment&) = delete;

  Environment& set(const char* name, const std::string& value) {
    ::setenv(name, value.c_str(), 1);
    return *this;
  }
  Environment& unset(const char* name) {
    ::unsetenv(name);
    return *this;
  }

  // Writes a hostfile and returns its path (removed with the Environment).
  std::string hostfile(std::string_view contents) {
    const char* dir = std::getenv("TEST_TMPDIR");
    const auto path =
        std::filesystem::path(dir ? dir : "/tmp") / ("collie_env_" + std::to_string(::getpid()) +
                                                     "_" + std::to_string(files_.size()) + ".json");
    std::ofstream(path) << contents;
    files_.push_back(path);
    return path.string();
  }

 private:
  std::map<std::string, std::string> saved_;
  std::vector<std::filesystem::path> files_;
};

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

constexpr std::string_view two_ranks = R"([["127.0.0.1:5000"], ["127.0.0.1:5001"]])";

}  // namespace

TEST_CASE("env() prefers the COLLIE_ spelling and falls back to MLX_") {
  Environment environment;
  CHECK(!detail::env("RANK"));
  environment.set("MLX_RANK", "3");
  REQUIRE(detail::env("RANK"));
  CHECK(detail::env("RANK")->name == "MLX_RANK");
  CHECK(detail::env("RANK")->value == "3");
  environment.set("COLLIE_RANK", "1");
  CHECK(detail::env("RANK")->name == "COLLIE_RANK");
  CHECK(detail::env("RANK")->value == "1");
  // An empty value counts as unset, so `export COLLIE_RANK=` hands over to MLX_RANK.
  environment.set("COLLIE_RANK", "");
  CHECK(detail::env("RANK")->name == "MLX_RANK");
}

TEST_CASE("number parsers accept decimal and 0x hex tokens and reject trailing text") {
  CHECK(detail::parse_decimal(" 42\n") == 42);
  CHECK(detail::parse_decimal("-1") == -1);
  CHECK(!detail::parse_decimal("4x"));
  CHECK(!detail::parse_decimal(""));
  CHECK(detail::parse_u64("0xDEADbeef") == 0xDEADBEEFull);
  CHECK(detail::parse_u64("18446744073709551615") == 18446744073709551615ull);
  CHECK(!detail::parse_u64("18446744073709551616"));
  CHECK(!detail::parse_u64("0x"));
  CHECK(!detail::parse_u64("-5"));
  CHECK(detail::is_verbose_value("1"));
  CHECK(detail::is_verbose_value("yes"));
  CHECK(!detail::is_verbose_value("0"));
  CHECK(!detail::is_verbose_value(""));
}

TEST_CASE("timeouts_from_environment keeps the defaults when nothing is set") {
  Environment environment;
  TcpConfig config;
  detail::timeouts_from_environment(config);
  CHECK(config.timeout == std::chrono::milliseconds(60000));
  CHECK(config.connect_timeout == std::chrono::milliseconds(60000));
  CHECK(config.job_token == 0);
  CHECK(!config.verbose);
}

TEST_CASE("timeouts_from_environment reads timeouts, the job token and verbosity") {
  Environment environment;
  environment.set("COLLIE_TIMEOUT_MS", "1500")
      .set("COLLIE_CONNECT_TIMEOUT_MS", "250")
      .set("COLLIE_JOB_TOKEN", "0x1f")
      .set("MLX_RING_VERBOSE", "1");
  TcpConfig config;
  detail::timeouts_from_environment(config);
  CHECK(config.timeout == std::chrono::milliseconds(1500));
  CHECK(config.connect_timeout == std::chrono::milliseconds(250));
  CHECK(config.job_token == 0x1f);
  CHECK(config.verbose);

  environment.set("COLLIE_RING_VERBOSE", "0");  // COLLIE wins, and "0" means off
  detail::timeouts_from_environment(config);
  CHECK(!config.verbose);
  environment.set("COLLIE_JOB_TOKEN", "12345");
  detail::timeouts_from_environment(config);
  CHECK(config.job_token == 12345);
  CHECK_FALSE(config.spin.has_value());
  environment.set("COLLIE_SPIN_US", "40");
  detail::timeouts_from_environment(config);
  CHECK(config.spin == std::chrono::microseconds(40));
  CHECK_FALSE(config.congestion.has_value());
  environment.set("COLLIE_TCP_CONGESTION", "cubic");
  detail::timeouts_from_environment(config);
  CHECK(config.congestion == "cubic");
  environment.set("COLLIE_TCP_CONGESTION", "system");  // the kernel's own choice, everywhere
  detail::timeouts_from_environment(config);
  CHECK(config.congestion == "");
}

TEST_CASE("a malformed timeout or token names the variable and what to set") {
  Environment environment;
  TcpConfig config;
  std::error_code ec;
  environment.set("COLLIE_TIMEOUT_MS", "10s");
  detail::timeouts_from_environment(config, ec);
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message,
                 "collie: COLLIE_TIMEOUT_MS=10s is not a timeout; set it to a whole number of "
                 "milliseconds"));
  environment.set("COLLIE_TIMEOUT_MS", "0");
  detail::timeouts_from_environment(config, ec);
  CHECK(ec == errc::bad_configuration);
  environment.unset("COLLIE_TIMEOUT_MS").set("COLLIE_JOB_TOKEN", "secret");
  detail::timeouts_from_environment(config, ec);
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message, "COLLIE_JOB_TOKEN=secret is not a job token"));
  environment.unset("COLLIE_JOB_TOKEN").set("COLLIE_SPIN_US", "-5");
  detail::timeouts_from_environment(config, ec);
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message, "COLLIE_SPIN_US=-5 is not a spin time"));
  CHECK_THROWS_AS(detail::timeouts_from_environment(config), Error);
}

TEST_CASE("the ring is not configured when neither rank nor hostfile is set") {
  Environment environment;
  std::error_code ec;
  CHECK(!ring_config_from_environment(ec));
  CHECK(ec == errc::not_configured);
  CHECK(contains(detail::last_error_message, "MLX_RANK"));
  CHECK(contains(detail::last_error_message, "MLX_HOSTFILE"));
  CHECK_THROWS_AS(ring_config_from_environment(), Error);
}

TEST_CASE("the ring reads MLX_RANK and MLX_HOSTFILE, and the deadlines") {
  Environment environment;
  environment.set("MLX_RANK", "1")
      .set("MLX_HOSTFILE", environment.hostfile(two_ranks))
      .set("COLLIE_TIMEOUT_MS", "700")
      .set("COLLIE_JOB_TOKEN", "99");
  const TcpConfig config = ring_config_from_environment();
  CHECK(config.rank == 1);
  CHECK(config.size() == 2);
  CHECK(config.hosts[1] == std::vector<Endpoint>{{"127.0.0.1", 5001}});
  CHECK(config.timeout == std::chrono::milliseconds(700));
  CHECK(config.job_token == 99);
  CHECK(config.listening_sockets.empty());

  environment.set("COLLIE_RANK", "0");  // COLLIE_ wins over MLX_
  CHECK(ring_config_from_environment().rank == 0);
}

TEST_CASE("a rank without a hostfile, or a hostfile without a rank, names the missing one") {
  Environment environment;
  std::error_code ec;
  environment.set("MLX_RANK", "0");
  CHECK(!ring_config_from_environment(ec));
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message, "MLX_RANK is set but MLX_HOSTFILE"));

  environment.unset("MLX_RANK").set("MLX_HOSTFILE", environment.hostfile(two_ranks));
  CHECK(!ring_config_from_environment(ec));
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message, "is set but MLX_RANK"));
}

TEST_CASE("a rank that is not a number, or beyond the hostfile, is refused with the range") {
  Environment environment;
  environment.set("MLX_HOSTFILE", environment.hostfile(two_ranks)).set("MLX_RANK", "abc");
  std::error_code ec;
  CHECK(!ring_config_from_environment(ec));
  CHECK(ec == errc::bad_configuration);
  CHECK(detail::last_error_message.starts_with(
      "collie: MLX_RANK=abc is not a rank; set it to an integer in [0, 2)"));

  environment.set("MLX_RANK", "2");
  CHECK(!ring_config_from_environment(ec));
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message, "MLX_RANK=2 is out of range"));
  CHECK(contains(detail::last_error_message, "lists 2 ranks"));
}

TEST_CASE("a malformed hostfile is reported with its path and the variable that named it") {
  Environment environment;
  const auto path = environment.hostfile(R"([["127.0.0.1:5000"], ["127.0.0.1:5000"]])");
  environment.set("MLX_HOSTFILE", path).set("MLX_RANK", "0");
  std::error_code ec;
  CHECK(!ring_config_from_environment(ec));
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message,
                 "collie: hostfile " + path + " (MLX_HOSTFILE): rank 1, entry 0"));

  environment.set("MLX_HOSTFILE", "/nonexistent/ring.json");
  CHECK(!ring_config_from_environment(ec));
  CHECK(contains(detail::last_error_message,
                 "cannot open hostfile /nonexistent/ring.json (MLX_HOSTFILE)"));
}

TEST_CASE("a blank hostfile is a ring of one, for rank 0 only") {
  Environment environment;
  environment.set("MLX_HOSTFILE", environment.hostfile("")).set("MLX_RANK", "0");
  const TcpConfig config = ring_config_from_environment();
  CHECK(config.size() == 1);
  CHECK(config.hosts[0].empty());
  environment.set("MLX_RANK", "1");
  std::error_code ec;
  CHECK(!ring_config_from_environment(ec));
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message, "lists 1 rank"));
}

TEST_CASE("a world size that disagrees with the hostfile is an error") {
  Environment environment;
  environment.set("MLX_HOSTFILE", environment.hostfile(two_ranks))
      .set("MLX_RANK", "0")
      .set("MLX_WORLD_SIZE", "3");
  std::error_code ec;
  CHECK(!ring_config_from_environment(ec));
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message, "MLX_WORLD_SIZE=3 but the hostfile"));
  environment.set("MLX_WORLD_SIZE", "2");
  CHECK(ring_config_from_environment(ec));
}

TEST_CASE("a rank without a hostfile is left to the rendezvous or another backend") {
  Environment environment;
  std::error_code ec;
  environment.set("MLX_RANK", "0").set("COLLIE_COORDINATOR", "127.0.0.1:29500");
  CHECK(!ring_config_from_environment(ec));
  CHECK(ec == errc::not_configured);
  CHECK(contains(detail::last_error_message, "rendezvous_from_environment"));

  environment.unset("COLLIE_COORDINATOR").set("MLX_JACCL_COORDINATOR", "10.0.0.1:5000");
  CHECK(!ring_config_from_environment(ec));
  CHECK(ec == errc::not_configured);
  CHECK(contains(detail::last_error_message, "MLX_JACCL_COORDINATOR is set"));
}

TEST_CASE("scheduler_rank_and_size is not configured when no family is present") {
  Environment environment;
  std::error_code ec;
  CHECK(!detail::scheduler_rank_and_size(ec));
  CHECK(ec == errc::not_configured);
  CHECK(contains(detail::last_error_message, "SLURM_PROCID"));
}

TEST_CASE("scheduler_rank_and_size reads each family") {
  Environment environment;
  environment.set("SLURM_PROCID", "3").set("SLURM_NTASKS", "8");
  auto found = detail::scheduler_rank_and_size();
  CHECK(found.rank == 3);
  CHECK(found.size == 8);
  CHECK(contains(found.source, "Slurm"));
  environment.set("SLURM_STEP_NUM_TASKS", "4");  // the step's size wins over the job's
  CHECK(detail::scheduler_rank_and_size().size == 4);

  environment.set("PMI_RANK", "1").set("PMI_SIZE", "2");
  CHECK(detail::scheduler_rank_and_size().source.starts_with("PMI"));
  environment.set("OMPI_COMM_WORLD_RANK", "2").set("OMPI_COMM_WORLD_SIZE", "5");
  found = detail::scheduler_rank_and_size();
  CHECK(found.rank == 2);
  CHECK(found.size == 5);
  environment.set("RANK", "0").set("WORLD_SIZE", "6");
  CHECK(detail::scheduler_rank_and_size().size == 6);
  environment.set("MLX_RANK", "5").set("COLLIE_WORLD_SIZE", "7");
  found = detail::scheduler_rank_and_size();
  CHECK(found.rank == 5);
  CHECK(found.size == 7);
  CHECK(found.source == "collie's own variables (MLX_RANK, COLLIE_WORLD_SIZE)");
}

TEST_CASE("scheduler_rank_and_size never mixes families and names what is missing") {
  Environment environment;
  std::error_code ec;
  // torchrun's RANK without WORLD_SIZE is an error even though Slurm's pair is complete.
  environment.set("RANK", "1").set("SLURM_PROCID", "1").set("SLURM_NTASKS", "2");
  CHECK(!detail::scheduler_rank_and_size(ec));
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message, "RANK is set but WORLD_SIZE is not"));

  environment.unset("RANK").set("OMPI_COMM_WORLD_SIZE", "4");
  CHECK(!detail::scheduler_rank_and_size(ec));
  CHECK(contains(detail::last_error_message,
                 "OMPI_COMM_WORLD_SIZE is set but OMPI_COMM_WORLD_RANK is not"));

  environment.unset("OMPI_COMM_WORLD_SIZE").set("MLX_RANK", "4").set("MLX_WORLD_SIZE", "4");
  CHECK(!detail::scheduler_rank_and_size(ec));
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message,
                 "MLX_RANK=4 is out of range; set it to an integer in [0, 4)"));

  environment.set("MLX_WORLD_SIZE", "many");
  CHECK(!detail::scheduler_rank_and_size(ec));
  CHECK(contains(detail::last_error_message, "MLX_WORLD_SIZE=many is not a world size"));
  CHECK_THROWS_AS(detail::scheduler_rank_and_size(), Error);
}

TEST_CASE("the coordinator comes from COLLIE_COORDINATOR or MASTER_ADDR and MASTER_PORT") {
  Environment environment;
  std::error_code ec;
  CHECK(!detail::coordinator_from_environment(ec));
  CHECK(ec == errc::not_configured);

  environment.set("MASTER_ADDR", "10.1.2.3").set("MASTER_PORT", "29500");
  CHECK(detail::coordinator_from_environment() == Endpoint{"10.1.2.3", 29500});
  environment.set("MASTER_ADDR", "::1");
  CHECK(detail::coordinator_from_environment() == Endpoint{"::1", 29500});
  environment.set("MASTER_ADDR", "[::1]");
  CHECK(detail::coordinator_from_environment() == Endpoint{"::1", 29500});
  environment.set("COLLIE_COORDINATOR", "[::1]:7000");  // wins over MASTER_*
  CHECK(detail::coordinator_from_environment() == Endpoint{"::1", 7000});
}

TEST_CASE("a malformed or half-set coordinator is an error naming the variable") {
  Environment environment;
  std::error_code ec;
  environment.set("MASTER_ADDR", "10.1.2.3");
  CHECK(!detail::coordinator_from_environment(ec));
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message, "MASTER_ADDR is set but MASTER_PORT is not"));

  environment.set("MASTER_PORT", "0");
  CHECK(!detail::coordinator_from_environment(ec));
  CHECK(contains(detail::last_error_message, "port must be 1..65535"));

  environment.set("COLLIE_COORDINATOR", "10.1.2.3");
  CHECK(!detail::coordinator_from_environment(ec));
  CHECK(ec == errc::bad_configuration);
  CHECK(contains(detail::last_error_message, "COLLIE_COORDINATOR=10.1.2.3: missing the port"));
  CHECK_THROWS_AS(detail::coordinator_from_environment(), Error);
}
