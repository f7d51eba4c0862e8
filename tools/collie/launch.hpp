// `collie launch`: turns the options, the host list and the command into one process per rank,
// with exactly the environment the chosen backend reads — as its descriptor says
// (runtime/backends/): the reference's MLX_* variables and their COLLIE_* spellings, plus a fresh
// job token — started locally or through ssh, or handed to mpirun.
#pragma once

#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "collie/runtime/backend.hpp"
#include "collie/runtime/enabled.hpp"
#include "tools/collie/hosts.hpp"

namespace collie::tools {

struct LaunchOptions {
  int per_host = 1;                       // -n: ranks on each host
  std::string hosts = "127.0.0.1";        // --hosts
  std::string hostfile;                   // --hostfile
  std::string backend;                    // --backend; empty: the hostfile's, else ring
  std::vector<std::string> env;           // --env K=V
  std::vector<std::string> mpi_args;      // --mpi-arg
  int connections_per_ip = 1;             // --connections-per-ip
  int starting_port = 32323;              // --starting-port
  std::string cwd;                        // --cwd
  int nccl_port = 12345;                  // --nccl-port
  bool verbose = false;                   // --verbose
  bool prefix = true;                     // --prefix / --no-prefix
  std::string ssh = "ssh";                // --ssh: the command that reaches a host
  std::vector<std::string> command;       // after --
};

/// One process to start: locally (`argv` runs a shell script) or through the ssh command.
struct Spawn {
  int rank = 0;           // -1: not a rank (mpirun)
  std::string host;       // for messages; the ssh name
  bool remote = false;
  std::vector<std::string> argv;
};

/// A job: its processes, and the ssh command (for stopping remote ones).
struct Job {
  std::vector<Spawn> spawns;
  std::vector<std::string> ssh;
  bool prefix = true;
  std::vector<std::string> temporary_files;  // on this host, removed when the job ends
};

/// 'text' quoted for a POSIX shell.
inline std::string shell_quote(const std::string& text) {
  std::string out = "'";
  for (char ch : text) {
    if (ch == '\'') {
      out += "'\\''";
    } else {
      out += ch;
    }
  }
  return out + "'";
}

/// Splits a command line the way a shell would split plain words and quotes (no expansions).
inline std::vector<std::string> split_words(const std::string& line, const std::string& what) {
  std::vector<std::string> words;
  std::string word;
  bool in_word = false;
  char quote = 0;
  for (std::size_t i = 0; i < line.size(); ++i) {
    const char ch = line[i];
    if (quote != 0) {
      if (ch == quote) {
        quote = 0;
      } else if (ch == '\\' && quote == '"' && i + 1 < line.size()) {
        word += line[++i];
      } else {
        word += ch;
      }
    } else if (ch == '\'' || ch == '"') {
      quote = ch;
      in_word = true;
    } else if (ch == '\\' && i + 1 < line.size()) {
      word += line[++i];
      in_word = true;
    } else if (ch == ' ' || ch == '\t' || ch == '\n') {
      if (in_word) words.push_back(std::exchange(word, {}));
      in_word = false;
    } else {
      word += ch;
      in_word = true;
    }
  }
  if (quote != 0) throw UsageError(what + " has an unterminated quote: " + line);
  if (in_word) words.push_back(word);
  return words;
}

namespace detail {

inline std::pair<std::string, std::string> split_env(const std::string& kv, const std::string& from) {
  const auto eq = kv.find('=');
  const std::string key = kv.substr(0, eq);
  bool valid = eq != std::string::npos && !key.empty() && !(key[0] >= '0' && key[0] <= '9');
  for (char ch : key) {
    valid = valid && ((ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '_');
  }
  if (!valid) throw UsageError(from + " \"" + kv + "\" is not NAME=VALUE (NAME of letters, digits and _)");
  return {key, kv.substr(eq + 1)};
}

inline std::uint64_t fresh_token() {
  std::random_device device;
  std::uint64_t token = 0;
  while (token == 0) token = (std::uint64_t{device()} << 32) ^ device();
  return token;
}

inline std::string rank_script(const LaunchOptions& o, const LaunchEnvironment& env, bool remote) {
  std::string s;
  // A remote rank reports its process id first, so that the launcher can stop it over ssh.
  if (remote) s += "echo \"@collie-pid $$\"\n";
  if (!o.cwd.empty()) {
    s += "cd " + shell_quote(o.cwd) + " || { echo " +
         shell_quote("collie launch: cannot change to the directory " + o.cwd + " on this host") +
         " >&2; exit 126; }\n";
  }
  for (const auto& [name, value] : env.values) s += "export " + name + "=" + shell_quote(value) + "\n";
  for (std::size_t i = 0; i < env.files.size(); i += 2) {
    // MLX_X and COLLIE_X share one file.
    s += "f=$(mktemp \"${TMPDIR:-/tmp}/collie-XXXXXX\") && printf '%s' " + shell_quote(env.files[i].second) +
         " > \"$f\" || exit 126\n";
    s += "export " + env.files[i].first + "=\"$f\" " + env.files[i + 1].first + "=\"$f\"\n";
  }
  s += "exec";
  for (const auto& word : o.command) s += " " + shell_quote(word);
  s += "\n";
  return s;
}

}  // namespace detail

// The backend whose launch names include `name` ("jaccl-ring" is jaccl's), walking the list
// every backend is described in (EnabledBackends): calls `fn.template operator()<B>()`.
template <class Fn>
void with_backend(const std::string& name, Fn&& fn) {
  std::string names;
  const bool found = for_each_backend([&]<class B>() {
    for (auto launch_name : B::launch_names) {
      names += std::string(names.empty() ? "" : ", ") + std::string(launch_name);
      if (launch_name == name) {
        fn.template operator()<B>();
        return true;
      }
    }
    return false;
  });
  if (!found) throw UsageError("unknown backend \"" + name + "\": choose " + names);
}

/// Builds the job. Throws UsageError for bad options or hostfiles.
inline Job plan_launch(const LaunchOptions& o) {
  if (o.command.empty()) throw UsageError("no command given: collie launch [options] -- program [args...]");
  if (o.per_host < 1) throw UsageError("-n must be at least 1");
  if (o.connections_per_ip < 1) throw UsageError("--connections-per-ip must be at least 1");
  if (o.starting_port < 1 || o.starting_port > 65535) throw UsageError("--starting-port must be in 1..65535");
  HostList list = o.hostfile.empty() ? hosts_from_list(o.hosts) : read_hostfile(o.hostfile);
  const std::string backend = !o.backend.empty() ? o.backend : list.backend.value_or("ring");
  std::vector<std::pair<std::string, std::string>> user_env;
  for (const auto& kv : list.envs) user_env.push_back(detail::split_env(kv, "hostfile env"));
  for (const auto& kv : o.env) user_env.push_back(detail::split_env(kv, "--env"));

  Job job;
  job.ssh = split_words(o.ssh, "--ssh");
  if (job.ssh.empty()) throw UsageError("--ssh is empty");
  job.prefix = o.prefix;
  const std::vector<Host>& hosts = list.hosts;
  const std::string token = std::to_string(detail::fresh_token());

  // What the backend's descriptor needs to know about the job.
  LaunchJob spec;
  for (const auto& h : hosts) {
    spec.hosts.push_back({h.ssh, h.ips, h.rdma.is_null() ? std::string() : h.rdma.dump()});
  }
  spec.ranks_per_host = o.per_host;
  spec.starting_port = o.starting_port;
  spec.connections_per_ip = o.connections_per_ip;
  spec.nccl_port = o.nccl_port;
  spec.verbose = o.verbose;
  spec.variant = backend;
  const int size = spec.size();

  with_backend(backend, [&]<class B>() {
    if constexpr (B::launch_style == LaunchStyle::mpirun) {
      // A thin wrapper: mpirun starts and supervises the ranks itself.
      std::string slots;
      for (const auto& h : hosts) slots += (h.local() ? std::string("localhost") : h.ssh) + " slots=" + std::to_string(o.per_host) + "\n";
      char path[] = "/tmp/collie-mpi-hosts-XXXXXX";
      const int fd = ::mkstemp(path);
      if (fd < 0) throw UsageError("cannot create a temporary file for mpirun's hostfile");
      ::close(fd);
      std::ofstream(path) << slots;
      job.temporary_files.push_back(path);
      Spawn s;
      s.rank = -1;
      s.host = "mpirun";
      s.argv = {"mpirun", "--hostfile", path, "-np", std::to_string(size)};
      if (!o.cwd.empty()) s.argv.insert(s.argv.end(), {"-wdir", o.cwd});
      for (const auto& arg : o.mpi_args) {
        for (auto& word : split_words(arg, "--mpi-arg")) s.argv.push_back(word);
      }
      auto add = [&](const std::string& k, const std::string& v) { s.argv.insert(s.argv.end(), {"-x", k + "=" + v}); };
      add("COLLIE_JOB_TOKEN", token);
      for (const auto& [k, v] : user_env) add(k, v);
      s.argv.insert(s.argv.end(), o.command.begin(), o.command.end());
      job.spawns.push_back(std::move(s));
      job.prefix = false;  // mpirun's output already comes from every rank
    } else {
      std::string prepared;
      try {
        prepared = B::prepare_launch(spec);
      } catch (const Error& e) {
        throw UsageError(e.what());
      }
      for (int rank = 0; rank < size; ++rank) {
        const Host& h = hosts[static_cast<std::size_t>(rank / o.per_host)];
        LaunchEnvironment env;
        try {
          B::launch_environment(spec, prepared, rank, env);
        } catch (const Error& e) {
          throw UsageError(e.what());
        }
        env.set("COLLIE_JOB_TOKEN", token);
        for (const auto& [k, v] : user_env) env.set(k, v);
        Spawn s;
        s.rank = rank;
        s.host = h.ssh;
        s.remote = !h.local();
        const std::string script = detail::rank_script(o, env, s.remote);
        if (s.remote) {
          s.argv = job.ssh;
          s.argv.push_back(h.ssh);
          s.argv.push_back(script);
        } else {
          s.argv = {"/bin/sh", "-c", script};
        }
        job.spawns.push_back(std::move(s));
      }
    }
  });
  return job;
}

}  // namespace collie::tools
