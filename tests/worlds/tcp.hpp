// The world of the TCP transport: ranks are processes, forked from the test, connected over
// 127.0.0.1 as a hostfile would connect them. With 3 or 4 ranks every neighbour gets two
// connections (so striping across connections is checked too), otherwise one.
#pragma once

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "collie/transport/tcp.hpp"
#include "world.hpp"

namespace collie::testing {

/// Listening sockets on 127.0.0.1 for a group of `ranks` ranks with `connections` addresses each,
/// made before any rank starts: each rank takes its own (TcpConfig::listening_sockets), so no
/// other test can take a port between choosing it and listening on it.
struct LoopbackListeners {
  std::vector<std::vector<Endpoint>> hosts;  // the hostfile's table
  std::vector<std::vector<int>> sockets;     // per rank, one per address, in order

  LoopbackListeners(int ranks, int connections)
      : hosts(static_cast<std::size_t>(ranks)), sockets(static_cast<std::size_t>(ranks)) {
    for (int r = 0; r < ranks; ++r) {
      for (int i = 0; i < connections; ++i) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t length = sizeof address;
        if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
            ::listen(fd, 64) != 0 ||
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
          if (fd >= 0) ::close(fd);
          close_all();
          throw std::runtime_error("cannot listen on a loopback port for the test");
        }
        sockets[static_cast<std::size_t>(r)].push_back(fd);
        hosts[static_cast<std::size_t>(r)].push_back({"127.0.0.1", ntohs(address.sin_port)});
      }
    }
  }
  LoopbackListeners(const LoopbackListeners&) = delete;
  LoopbackListeners& operator=(const LoopbackListeners&) = delete;
  ~LoopbackListeners() { close_all(); }

  /// Rank r's configuration; its sockets go with it (the transport closes them), the others'
  /// stay here.
  TcpConfig take(int r) {
    TcpConfig config;
    config.rank = r;
    config.hosts = hosts;
    config.listening_sockets = std::move(sockets[static_cast<std::size_t>(r)]);
    sockets[static_cast<std::size_t>(r)].clear();
    config.connect_timeout = std::chrono::seconds(30);
    return config;
  }

  void close_all() noexcept {
    for (auto& list : sockets) {
      for (int fd : list) ::close(fd);
      list.clear();
    }
  }
};

template <>
struct TestWorld<TcpTransport> {
  /// Whether the ranks of one run live in one process (and so share its allocator).
  static constexpr bool ranks_share_a_process = false;
  static constexpr std::string_view name = "ranks as processes over TCP on 127.0.0.1";

  template <class Fn>
  static std::vector<std::string> run(int p, Fn&& fn) {
    const int connections = p == 3 || p == 4 ? 2 : 1;
    LoopbackListeners listeners(p, connections);
    Board* board = Board::create(p);
    std::fflush(nullptr);  // nothing buffered is written twice by the children
    std::vector<pid_t> children;
    for (int r = 0; r < p; ++r) {
      const pid_t pid = ::fork();
      if (pid < 0) {
        board->fail("fork failed for rank " + std::to_string(r));
        break;
      }
      if (pid == 0) {
        int code = 0;
        try {
          TcpConfig config = listeners.take(r);
          listeners.close_all();  // the other ranks' sockets, in this process
          fn(TcpTransport::connect(std::move(config)), *board);
        } catch (const std::exception& e) {
          board->fail("rank " + std::to_string(r) + " threw: " + e.what());
          board->drop();
          code = 1;
        }
        std::fflush(nullptr);
        ::_exit(code);  // no static destructors, no test framework, in the child
      }
      children.push_back(pid);
    }
    listeners.close_all();  // the children have theirs
    wait_for(children, *board);
    auto failures = board->failures();
    Board::destroy(board);
    return failures;
  }

 private:
  // Waits for every rank; one still running after the limit (COLLIE_TEST_RUN_TIMEOUT_S, default
  // 300 s) is reported and killed with the rest, so a hang fails the case instead of the suite.
  static void wait_for(std::vector<pid_t>& children, Board& board) {
    const char* limit_text = std::getenv("COLLIE_TEST_RUN_TIMEOUT_S");
    const auto limit = std::chrono::seconds(limit_text != nullptr ? std::atoi(limit_text) : 300);
    const auto deadline = std::chrono::steady_clock::now() + limit;
    std::size_t left = children.size();
    std::vector<bool> done(children.size(), false);
    while (left > 0) {
      for (std::size_t r = 0; r < children.size(); ++r) {
        if (done[r]) continue;
        int status = 0;
        if (::waitpid(children[r], &status, WNOHANG) != children[r]) continue;
        done[r] = true;
        --left;
        if (WIFSIGNALED(status)) {
          board.fail("rank " + std::to_string(r) + " died of signal " +
                     std::to_string(WTERMSIG(status)));
        }
      }
      if (left == 0) break;
      if (std::chrono::steady_clock::now() > deadline) {
        for (std::size_t r = 0; r < children.size(); ++r) {
          if (done[r]) continue;
          board.fail("rank " + std::to_string(r) + " still running after " +
                     std::to_string(limit.count()) + " s: killed");
          ::kill(children[r], SIGKILL);
          ::waitpid(children[r], nullptr, 0);
        }
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
};

}  // namespace collie::testing
