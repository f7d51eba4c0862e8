// The kernel's per-connection byte counters, for tcp_test. A file of its own because the
// counters are in <linux/tcp.h>'s tcp_info only, and that header clashes with glibc's
// <netinet/tcp.h>, which Asio includes.
#include <linux/tcp.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>

bool tcp_bytes_of(int fd, std::uint64_t& sent, std::uint64_t& received) {
  tcp_info info{};
  socklen_t length = sizeof(info);
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &length) != 0) return false;
  sent = info.tcpi_bytes_acked;
  received = info.tcpi_bytes_received;
  return true;
}
