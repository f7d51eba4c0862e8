// TcpConfig: everything the TCP transport needs to connect a rank to its group — its rank, the
// addresses every rank listens on, the job token and the deadlines. Built from the environment
// (MLX_HOSTFILE, or a coordinator rendezvous) by the runtime, or by hand.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace collie {

/// A TCP endpoint: an IPv4 or IPv6 address (or a host name) and a port.
struct Endpoint {
  std::string host;
  std::uint16_t port = 0;

  /// "10.0.0.1:5000", or "[fe80::1]:5000" for IPv6.
  std::string to_string() const {
    const bool v6 = host.find(':') != std::string::npos;
    return (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port);
  }
  friend bool operator==(const Endpoint&, const Endpoint&) = default;
};

/// How one rank joins a TCP group.
struct TcpConfig {
  /// This rank, in [0, hosts.size()).
  int rank = 0;
  /// For every rank, the addresses it listens on, one per connection to its left neighbour (the
  /// reference hostfile format: `[["ip:port", ...], ...]`). Every rank lists the same number.
  std::vector<std::vector<Endpoint>> hosts;
  /// A token shared by the ranks of one job (set by the launcher); connections carrying another
  /// token are refused, so a stray process from another job can never join.
  std::uint64_t job_token = 0;
  /// How long to keep retrying connections (with backoff) while peers start up.
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(60)};
  /// How long any later wait may take (see Options::timeout).
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  /// How long a wait polls the sockets before it sleeps. The waiting thread runs the I/O itself,
  /// so a reply that arrives within the spin costs no wake-up at all. Unset (the default): 50 us.
  /// On a host with fewer cores than ranks (ranks are counted by their first address) the
  /// spinning thread yields its core between polls, so that the rank it waits for can run; on a
  /// host with a core per rank, a wait for a transfer over 256 KiB does not spin (polling slows
  /// a stream that long). Only a wait on an operation in flight spins, and only this long: idle
  /// ranks never burn a core.
  std::optional<std::chrono::microseconds> spin;
  /// The TCP congestion control of the data connections (`TCP_CONGESTION`). Unset (the
  /// default): "reno" on a connection whose two ends are on this host, the system's choice on
  /// the others. Between ranks on one host there is no congestion to control, and a pacing
  /// algorithm such as BBR (the system default on many current kernels) sends part of every
  /// large message from a timer, on whichever core it fires: the packets of one stream then
  /// arrive out of order and are retransmitted for nothing (docs/performance.md has the
  /// measurement). An empty string keeps the system's choice
  /// everywhere; a name sets it on every connection, and a name the system refuses (see
  /// `net.ipv4.tcp_allowed_congestion_control` for processes without CAP_NET_ADMIN) fails the
  /// set-up.
  std::optional<std::string> congestion;
  /// Log connection set-up to stderr, prefixed "[collie ring]".
  bool verbose = false;
  /// Optional: already bound and listening sockets (file descriptors), one per address of this
  /// rank, in the order of hosts[rank]. The transport takes ownership. Used by the coordinator
  /// rendezvous, which binds port 0 and publishes the port the kernel chose.
  std::vector<int> listening_sockets;

  int size() const noexcept { return static_cast<int>(hosts.size()); }
};

}  // namespace collie
