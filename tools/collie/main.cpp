// collie: the command-line companion of the library.
//
//   collie launch -n 4 -- ./my_program args...          4 ranks on this machine (ring backend)
//   collie launch --hostfile hosts.json -- ./my_program  one or more ranks per host, over ssh
//   collie config --hosts n1,n2,n3 --output hosts.json   find the hosts' links, write the hostfile
//
// See docs/launch.md and docs/config.md.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "tools/collie/config.hpp"
#include "tools/collie/hosts.hpp"
#include "tools/collie/launch.hpp"
#include "tools/collie/supervisor.hpp"

namespace {

void add_launch(CLI::App& app, collie::tools::LaunchOptions& o) {
  auto* launch = app.add_subcommand("launch", "Start a program as the ranks of one job, here or on other hosts over ssh");
  launch->add_option("-n,--repeat-hosts", o.per_host, "Ranks on each host")->capture_default_str();
  launch->add_option("--hosts", o.hosts, "Comma-separated hosts to ssh to (IP addresses for the ring backend)")->capture_default_str();
  launch->add_option("--hostfile", o.hostfile, "JSON hostfile: [{\"ssh\", \"ips\", \"rdma\"}] or {\"backend\", \"envs\", \"hosts\"}");
  launch->add_option("--backend", o.backend, "ring, jaccl, jaccl-ring, mpi or nccl (default: the hostfile's, else ring)");
  launch->add_option("--env", o.env, "K=V to set in every rank (repeatable)");
  launch->add_option("--mpi-arg", o.mpi_args, "An argument for mpirun (mpi backend; repeatable)");
  launch->add_option("--connections-per-ip", o.connections_per_ip, "Connections to each ring neighbour per address")->capture_default_str();
  launch->add_option("-p,--starting-port", o.starting_port, "First port: one per rank, address and connection (ring); the coordinator's (jaccl)")->capture_default_str();
  launch->add_option("--cwd", o.cwd, "Working directory of every rank");
  launch->add_option("--nccl-port", o.nccl_port, "Port of the NCCL rendezvous on the first host")->capture_default_str();
  launch->add_option("--ssh", o.ssh, "Command that runs a shell command on a host: <ssh> HOST COMMAND")->capture_default_str();
  launch->add_flag("--verbose", o.verbose, "Ask the backend to log its set-up");
  launch->add_flag("--prefix,!--no-prefix", o.prefix, "Prefix each output line with its rank (default on)");
  // Everything from the first argument that is not an option on is the command.
  launch->prefix_command();
}

void add_config(CLI::App& app, collie::tools::ConfigOptions& o) {
  auto* config = app.add_subcommand("config", "Find which hosts share links, check for a ring or mesh, and write the hostfile");
  config->add_option("--hosts", o.hosts, "Comma-separated hosts to ssh to");
  config->add_option("--hostfile", o.hostfile, "Take the hosts from this hostfile");
  config->add_option("--over", o.over, "links (point-to-point cables; also: thunderbolt) or ethernet (the hosts' main addresses)")->capture_default_str();
  config->add_option("--backend", o.backend, "ring, jaccl or jaccl-ring (default: jaccl over an RDMA mesh, jaccl-ring over an RDMA ring, else ring)");
  config->add_option("--output,--output-hostfile", o.output, "Write the hostfile here (default: standard output)");
  config->add_flag("--dot", o.dot, "Print the hosts and links as a Graphviz graph");
  config->add_flag("--auto-setup", o.auto_setup, "Run the commands that address the links (needs root or password-less sudo)");
  config->add_option("--subnet", o.subnet, "Network the links' /30 subnets are taken from")->capture_default_str();
  config->add_option("--env", o.env, "K=V for the hostfile's \"envs\" (repeatable)");
  config->add_option("--ssh", o.ssh, "Command that runs a shell command on a host: <ssh> HOST COMMAND")->capture_default_str();
  config->add_option("--timeout", o.timeout_s, "Seconds each step may take on a host")->capture_default_str();
  config->add_flag("--verbose", o.verbose, "Also list every host's interfaces");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"collie: start and configure collie jobs"};
  app.require_subcommand(1);
  collie::tools::LaunchOptions launch_options;
  add_launch(app, launch_options);
  collie::tools::ConfigOptions config_options;
  add_config(app, config_options);

  // The command after `--` is taken as it is, options and all.
  std::vector<std::string> command;
  int cli_argc = argc;
  for (int i = 1; i < argc; ++i) {
    if (std::string(argv[i]) == "--") {
      command.assign(argv + i + 1, argv + argc);
      cli_argc = i;
      break;
    }
  }
  try {
    app.parse(cli_argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  const char* name = app.got_subcommand("config") ? "config" : "launch";
  try {
    if (app.got_subcommand("config")) return collie::tools::run_config(config_options);
    if (app.got_subcommand("launch")) {
      auto* launch = app.get_subcommand("launch");
      launch_options.command = launch->remaining();
      launch_options.command.insert(launch_options.command.end(), command.begin(), command.end());
      collie::tools::Job job = collie::tools::plan_launch(launch_options);
      const std::vector<std::string> temporary = job.temporary_files;
      collie::tools::Supervisor supervisor(std::move(job));
      const int code = supervisor.run();
      for (const auto& path : temporary) std::remove(path.c_str());
      return code;
    }
  } catch (const collie::tools::UsageError& e) {
    std::fprintf(stderr, "collie %s: %s\n", name, e.what());
    return 2;
  }
  return 0;
}
