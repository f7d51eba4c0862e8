// Runs a job's processes and watches them until the end: forwards their output whole-line with a
// rank prefix, broadcasts this process's stdin to all of them, passes Ctrl-C / SIGTERM / SIGHUP
// on, and when one rank fails stops the others (local ones by process group, remote ones over
// ssh) and exits with that rank's code. Nothing is left running when it returns.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "tools/collie/launch.hpp"

namespace collie::tools {

namespace detail {

inline void write_all(int fd, const char* data, std::size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, data, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;  // our own output is gone: nothing better to do
    data += w;
    n -= static_cast<std::size_t>(w);
  }
}

// One output stream of a child, cut into whole lines.
struct Stream {
  int fd = -1;
  int to = 1;  // our stdout or stderr
  std::string pending;
};

struct Child {
  Spawn spawn;
  pid_t pid = -1;
  Stream out, err;
  int in = -1;                 // its stdin (our end, non-blocking); -1 once closed
  std::string to_write;        // stdin bytes it has not taken yet
  bool running = false;
  std::optional<long> remote_pid;  // reported by a remote rank's first line
  bool first_line = true;
};

}  // namespace detail

class Supervisor {
 public:
  explicit Supervisor(Job job) : job_(std::move(job)) {}

  /// Starts every process and returns the job's exit code: 0 when every rank exits 0; else the
  /// first failing rank's code (128 + signal for one killed by a signal); 130 / 143 / 129 when
  /// the launcher itself got SIGINT / SIGTERM / SIGHUP.
  int run() {
    sigset_t mask;
    sigemptyset(&mask);
    for (int s : {SIGCHLD, SIGINT, SIGTERM, SIGHUP}) sigaddset(&mask, s);
    ::sigprocmask(SIG_BLOCK, &mask, &old_mask_);
    signal_fd_ = ::signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
    ::signal(SIGPIPE, SIG_IGN);  // a child that closed its stdin must not kill the launcher
    if (::fcntl(0, F_GETFD) < 0) {
      ::open("/dev/null", O_RDONLY);  // takes fd 0, so no pipe of a rank can be mistaken for it
      stdin_closed_ = true;
    } else if (::isatty(0) && ::tcgetpgrp(0) != ::getpgrp()) {
      stdin_closed_ = true;  // started in the background: reading the terminal would stop us
    }

    for (const Spawn& s : job_.spawns) {
      if (!start(s)) {
        stopping_ = true;
        stop_all(SIGTERM);
        break;
      }
    }
    loop();
    ::close(signal_fd_);
    ::sigprocmask(SIG_SETMASK, &old_mask_, nullptr);
    return exit_code_.value_or(0);
  }

 private:
  using Clock = std::chrono::steady_clock;

  std::string name_of(const detail::Child& c) const {
    if (c.spawn.rank < 0) return c.spawn.host;
    return "rank " + std::to_string(c.spawn.rank) + (c.spawn.remote ? " on " + c.spawn.host : "");
  }

  void say(const std::string& line) {
    const std::string text = "collie launch: " + line + "\n";
    detail::write_all(2, text.data(), text.size());
  }

  bool start(const Spawn& s) {
    int out[2], err[2], in[2];
    if (::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0 || ::pipe2(in, O_CLOEXEC) != 0) {
      say(std::string("cannot create pipes: ") + std::strerror(errno));
      fail(1);
      return false;
    }
    const pid_t pid = ::fork();
    if (pid < 0) {
      say(std::string("cannot start a process: ") + std::strerror(errno));
      fail(1);
      return false;
    }
    if (pid == 0) {
      ::setpgid(0, 0);  // its own group: the whole rank (and what it starts) is stopped at once
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      ::dup2(err[1], 2);
      ::signal(SIGPIPE, SIG_DFL);
      ::sigprocmask(SIG_SETMASK, &old_mask_, nullptr);
      std::vector<char*> argv;
      for (const auto& a : s.argv) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execvp(argv[0], argv.data());
      const std::string text = "collie launch: cannot run " + s.argv[0] + ": " + std::strerror(errno) + "\n";
      detail::write_all(2, text.data(), text.size());
      ::_exit(127);
    }
    ::setpgid(pid, pid);  // also here, so that a signal sent right away reaches the group
    ::close(out[1]);
    ::close(err[1]);
    ::close(in[0]);
    ::fcntl(in[1], F_SETFL, ::fcntl(in[1], F_GETFL) | O_NONBLOCK);
    detail::Child c;
    c.spawn = s;
    c.pid = pid;
    c.out = {out[0], 1, {}};
    c.err = {err[0], 2, {}};
    c.in = in[1];
    c.running = true;
    if (stdin_closed_) close_stdin(c);
    children_.push_back(std::move(c));
    return true;
  }

  void fail(int code) {
    if (!exit_code_) exit_code_ = code;
  }

  // Sends `sig` to every running rank: a local one's process group; a remote one's process id
  // (reported by its first line) through ssh, and the group of its local ssh process.
  void signal_all(int sig) {
    for (auto& c : children_) {
      if (!c.running) continue;
      ::kill(-c.pid, sig);
      if (c.spawn.remote && c.remote_pid) run_detached(c.spawn.host, remote_kill(sig, *c.remote_pid));
    }
  }

  // The command that signals a remote rank: its process group when it leads one (ssh starts the
  // command in a session of its own, and the rank keeps the shell's process id), else itself.
  static std::string remote_kill(int sig, long pid) {
    const std::string s = std::to_string(sig), p = std::to_string(pid);
    return "kill -" + s + " -" + p + " 2>/dev/null || kill -" + s + " " + p + " 2>/dev/null";
  }

  // signal_all(sig) now, SIGKILL for whatever still runs a moment later.
  void stop_all(int sig) {
    signal_all(sig);
    if (!kill_at_) kill_at_ = Clock::now() + std::chrono::milliseconds(1500);
  }

  // Starts `ssh host command` with no input or output, reaped with the others.
  void run_detached(const std::string& host, const std::string& command) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      const int null = ::open("/dev/null", O_RDWR);
      ::dup2(null, 0);
      ::dup2(null, 1);
      ::dup2(null, 2);
      ::sigprocmask(SIG_SETMASK, &old_mask_, nullptr);
      std::vector<std::string> args = job_.ssh;
      args.push_back(host);
      args.push_back(command);
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execvp(argv[0], argv.data());
      ::_exit(127);
    }
    if (pid > 0) helpers_.push_back(pid);
  }

  void close_stdin(detail::Child& c) {
    if (c.in >= 0) ::close(c.in);
    c.in = -1;
    c.to_write.clear();
  }

  // Forwards the complete lines of `s`; at the end of the stream, the rest too.
  void forward(detail::Child& c, detail::Stream& s, bool at_end) {
    std::size_t start = 0;
    for (;;) {
      const auto nl = s.pending.find('\n', start);
      if (nl == std::string::npos) break;
      emit(c, s, s.pending.substr(start, nl - start));
      start = nl + 1;
    }
    s.pending.erase(0, start);
    if (at_end && !s.pending.empty()) {
      emit(c, s, s.pending);
      s.pending.clear();
    }
  }

  void emit(detail::Child& c, detail::Stream& s, const std::string& line) {
    if (&s == &c.out && c.spawn.remote && c.first_line) {
      c.first_line = false;
      if (line.rfind("@collie-pid ", 0) == 0) {
        c.remote_pid = std::strtol(line.c_str() + 12, nullptr, 10);
        if (stopping_ && c.running) {  // it reported after the stop went out
          run_detached(c.spawn.host, remote_kill(SIGTERM, *c.remote_pid));
        }
        return;
      }
    }
    std::string text = job_.prefix && c.spawn.rank >= 0 ? "[" + std::to_string(c.spawn.rank) + "] " : "";
    text += line;
    text += '\n';
    detail::write_all(s.to, text.data(), text.size());
  }

  void on_signal() {
    signalfd_siginfo info;
    while (::read(signal_fd_, &info, sizeof info) == sizeof info) {
      const int sig = static_cast<int>(info.ssi_signo);
      if (sig == SIGCHLD) continue;  // reaped below
      if (stopping_ && sig == SIGINT) {
        signal_all(SIGKILL);  // a second Ctrl-C: no more waiting
        continue;
      }
      fail(128 + sig);
      stopping_ = true;
      stop_all(sig);
    }
  }

  void reap() {
    for (;;) {
      int status = 0;
      const pid_t pid = ::waitpid(-1, &status, WNOHANG);
      if (pid <= 0) return;
      for (auto& c : children_) {
        if (c.pid != pid || !c.running) continue;
        c.running = false;
        const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        ::kill(-c.pid, SIGKILL);  // whatever it started goes with it
        if (code != 0 && !stopping_) {
          std::string why = WIFEXITED(status) ? " exited with code " + std::to_string(code)
                                              : " was killed by signal " + std::to_string(WTERMSIG(status));
          if (c.spawn.remote && code == 255) {
            why += " (ssh could not reach " + c.spawn.host + ": check that `ssh " + c.spawn.host +
                   " true` works without a password)";
          }
          say(name_of(c) + why + (running() > 0 ? "; stopping the other ranks" : ""));
          fail(code);
          stopping_ = true;
          stop_all(SIGTERM);
        } else if (code != 0 && c.spawn.rank < 0) {
          fail(code);
        }
      }
      std::erase(helpers_, pid);
    }
  }

  int running() const {
    int n = 0;
    for (const auto& c : children_) n += c.running ? 1 : 0;
    return n;
  }

  void loop() {
    std::optional<Clock::time_point> drain_until;
    std::string input;
    for (;;) {
      reap();
      if (running() == 0 && helpers_.empty() && !drain_until) {
        // Output still in the pipes is read for a moment longer; a pipe held open by a process
        // that outlived its rank does not hold the launcher.
        drain_until = Clock::now() + std::chrono::milliseconds(200);
      }
      std::vector<pollfd> fds;
      std::vector<std::pair<detail::Child*, detail::Stream*>> owners;
      fds.push_back({signal_fd_, POLLIN, 0});
      owners.emplace_back(nullptr, nullptr);
      const bool want_stdin = !stdin_closed_;
      if (want_stdin) {
        fds.push_back({0, POLLIN, 0});
        owners.emplace_back(nullptr, nullptr);
      }
      for (auto& c : children_) {
        for (detail::Stream* s : {&c.out, &c.err}) {
          if (s->fd < 0) continue;
          fds.push_back({s->fd, POLLIN, 0});
          owners.emplace_back(&c, s);
        }
        if (c.in >= 0 && !c.to_write.empty()) {
          fds.push_back({c.in, POLLOUT, 0});
          owners.emplace_back(&c, nullptr);
        }
      }
      bool open_streams = false;
      for (const auto& [c, s] : owners) open_streams = open_streams || s != nullptr;
      if (drain_until && (!open_streams || Clock::now() >= *drain_until)) break;
      int timeout = -1;
      const auto now = Clock::now();
      auto until = [&](Clock::time_point t) {
        const int ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(t - now).count());
        timeout = timeout < 0 ? std::max(ms, 0) : std::min(timeout, std::max(ms, 0));
      };
      if (kill_at_) until(*kill_at_);
      if (drain_until) until(*drain_until);
      const int n = ::poll(fds.data(), fds.size(), timeout);
      if (n < 0 && errno != EINTR) break;
      if (kill_at_ && Clock::now() >= *kill_at_) {
        signal_all(SIGKILL);
        kill_at_.reset();
      }
      if (n <= 0) continue;
      for (std::size_t i = 0; i < fds.size(); ++i) {
        if (fds[i].revents == 0) continue;
        if (fds[i].fd == signal_fd_) {
          on_signal();
        } else if (fds[i].fd == 0 && owners[i].first == nullptr) {
          char buffer[4096];
          const ssize_t r = ::read(0, buffer, sizeof buffer);
          if (r > 0) {
            for (auto& c : children_) {
              if (c.in >= 0) c.to_write.append(buffer, static_cast<std::size_t>(r));
            }
          } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
            stdin_closed_ = true;  // end of input: every rank sees it too, once its bytes are in
          }
        } else if (owners[i].second != nullptr) {
          auto& [c, s] = owners[i];
          char buffer[65536];
          const ssize_t r = ::read(s->fd, buffer, sizeof buffer);
          if (r > 0) {
            s->pending.append(buffer, static_cast<std::size_t>(r));
            forward(*c, *s, false);
          } else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
            forward(*c, *s, true);
            ::close(s->fd);
            s->fd = -1;
          }
        } else {
          detail::Child& c = *owners[i].first;
          const ssize_t w = ::write(c.in, c.to_write.data(), c.to_write.size());
          if (w > 0) {
            c.to_write.erase(0, static_cast<std::size_t>(w));
          } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
            close_stdin(c);  // it does not read its input any more
          }
        }
      }
      if (stdin_closed_) {
        for (auto& c : children_) {
          if (c.in >= 0 && c.to_write.empty()) close_stdin(c);
        }
      }
    }
    for (auto& c : children_) {
      for (detail::Stream* s : {&c.out, &c.err}) {
        if (s->fd < 0) continue;
        forward(c, *s, true);
        ::close(s->fd);
        s->fd = -1;
      }
      close_stdin(c);
    }
  }

  Job job_;
  std::vector<detail::Child> children_;
  std::vector<pid_t> helpers_;  // ssh kill commands
  sigset_t old_mask_{};
  int signal_fd_ = -1;
  bool stdin_closed_ = false;
  bool stopping_ = false;
  std::optional<int> exit_code_;
  std::optional<Clock::time_point> kill_at_;
};

}  // namespace collie::tools
