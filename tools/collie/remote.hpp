// Runs one shell script on several hosts at once (through the ssh command, or directly for this
// machine) and collects each one's exit code and output, with a time limit. Used by
// `collie config` for discovery, set-up and checks.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>
#include <vector>

#include "tools/collie/hosts.hpp"

namespace collie::tools {

struct Ran {
  int code = -1;  // exit code; 128 + signal when killed
  bool timed_out = false;
  std::string out, err;

  /// The last non-empty line of its standard error (for one-line messages).
  std::string last_error_line() const {
    const std::size_t end = err.find_last_not_of("\r\n \t");
    if (end == std::string::npos) return {};
    const std::size_t newline = err.rfind('\n', end);
    const std::size_t start = newline == std::string::npos ? 0 : newline + 1;
    return err.substr(start, end + 1 - start);
  }
};

/// The command line that runs `script` on `host`: `/bin/sh -c script` for this machine, else
/// `ssh... host script`.
inline std::vector<std::string> on_host(const std::vector<std::string>& ssh, const Host& host, const std::string& script) {
  if (host.local()) return {"/bin/sh", "-c", script};
  std::vector<std::string> argv = ssh;
  argv.push_back(host.ssh);
  argv.push_back(script);
  return argv;
}

/// Runs every command line at once, each with no input and in a process group of its own, and
/// waits for all of them; whatever still runs after `limit` is killed (and marked timed_out).
inline std::vector<Ran> run_all(const std::vector<std::vector<std::string>>& commands, std::chrono::milliseconds limit) {
  struct Running {
    pid_t pid = -1;
    int out = -1, err = -1;
    bool done = false;
  };
  std::vector<Ran> results(commands.size());
  std::vector<Running> procs(commands.size());
  for (std::size_t k = 0; k < commands.size(); ++k) {
    int out[2], err[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
      results[k].err = std::string("cannot create pipes: ") + std::strerror(errno);
      results[k].code = 127;
      procs[k].done = true;
      continue;
    }
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::setpgid(0, 0);
      const int null = ::open("/dev/null", O_RDONLY);
      ::dup2(null, 0);
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      std::vector<char*> argv;
      for (const auto& a : commands[k]) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execvp(argv[0], argv.data());
      const std::string text = "cannot run " + commands[k][0] + ": " + std::strerror(errno) + "\n";
      (void)!::write(2, text.data(), text.size());
      ::_exit(127);
    }
    ::close(out[1]);
    ::close(err[1]);
    if (pid < 0) {
      ::close(out[0]);
      ::close(err[0]);
      results[k].err = std::string("cannot start a process: ") + std::strerror(errno);
      results[k].code = 127;
      procs[k].done = true;
      continue;
    }
    ::setpgid(pid, pid);
    procs[k] = {pid, out[0], err[0], false};
  }
  const auto deadline = std::chrono::steady_clock::now() + limit;
  bool killed = false;
  for (;;) {
    std::vector<pollfd> fds;
    std::vector<std::pair<std::size_t, bool>> owner;  // process, stderr?
    for (std::size_t k = 0; k < procs.size(); ++k) {
      if (procs[k].out >= 0) {
        fds.push_back({procs[k].out, POLLIN, 0});
        owner.emplace_back(k, false);
      }
      if (procs[k].err >= 0) {
        fds.push_back({procs[k].err, POLLIN, 0});
        owner.emplace_back(k, true);
      }
    }
    if (fds.empty()) break;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 && !killed) {
      // Out of time: the process group goes (an ssh and what it started), and the pipes close.
      for (std::size_t k = 0; k < procs.size(); ++k) {
        if (procs[k].out >= 0 || procs[k].err >= 0) {
          ::kill(-procs[k].pid, SIGKILL);
          results[k].timed_out = true;
        }
      }
      killed = true;
    }
    const int ready = ::poll(fds.data(), fds.size(), killed ? 1000 : static_cast<int>(std::max<long>(1, left.count())));
    if (ready < 0 && errno != EINTR) break;
    if (ready == 0 && killed) break;  // a grandchild holds a pipe after the kill: stop reading
    for (std::size_t f = 0; f < fds.size(); ++f) {
      if (fds[f].revents == 0) continue;
      auto& [k, is_err] = owner[f];
      char buffer[8192];
      const ssize_t n = ::read(fds[f].fd, buffer, sizeof buffer);
      if (n > 0) {
        (is_err ? results[k].err : results[k].out).append(buffer, static_cast<std::size_t>(n));
      } else if (n == 0 || (errno != EINTR && errno != EAGAIN)) {
        ::close(fds[f].fd);
        (is_err ? procs[k].err : procs[k].out) = -1;
      }
    }
  }
  for (std::size_t k = 0; k < procs.size(); ++k) {
    if (procs[k].out >= 0) ::close(procs[k].out);
    if (procs[k].err >= 0) ::close(procs[k].err);
    if (procs[k].done) continue;
    int status = 0;
    if (results[k].timed_out) ::kill(-procs[k].pid, SIGKILL);
    while (::waitpid(procs[k].pid, &status, 0) < 0 && errno == EINTR) {
    }
    results[k].code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  return results;
}

}  // namespace collie::tools
