// The coordinator of collie::Store (runtime/store.hpp), run by rank 0 on a thread of its own, and
// the framing both sides share: requests and replies after collie's handshake, each behind a
// transport header whose tag says what it is.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <asio/ip/address.hpp>
#include <asio/ip/tcp.hpp>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "collie/core/deadline.hpp"
#include "collie/core/detail/text.hpp"
#include "collie/core/error.hpp"
#include "collie/runtime/hostfile.hpp"
#include "collie/transport/detail/tcp/wire.hpp"
#include "collie/transport/tcp_config.hpp"
#include "collie/runtime/store_options.hpp"

namespace collie {

namespace detail::store {

using wire_bytes = std::vector<std::byte>;

// Requests and replies after the handshake, framed by tcp::Header (its tag is the kind).
enum Kind : std::uint64_t { set_request = 1, get_request = 2, values_reply = 3, error_reply = 4 };
// The connection index a store's hello carries (the transport's are 0.. and on_demand).
inline constexpr std::uint16_t store_connection = 0xFFFE;
// A frame larger than this is not from a collie peer.
inline constexpr std::uint64_t max_frame = std::uint64_t{64} << 20;
// Ack statuses beyond the transport's: a rank another connection already holds, and a store
// that has failed (the reason follows).
inline constexpr std::uint32_t rank_taken = 100;
inline constexpr std::uint32_t store_failed = 101;

inline void put_u32(wire_bytes& out, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xFF));
}
inline void put_u64(wire_bytes& out, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<std::byte>((v >> (8 * i)) & 0xFF));
}
inline void put_text(wire_bytes& out, std::string_view text) {
  put_u32(out, static_cast<std::uint32_t>(text.size()));
  const auto* p = reinterpret_cast<const std::byte*>(text.data());
  out.insert(out.end(), p, p + text.size());
}

// Reads what put_* wrote; `ok` turns false (and stays) on a short payload.
struct Reader {
  std::span<const std::byte> rest;
  bool ok = true;
  std::uint64_t number(int width) {
    if (rest.size() < static_cast<std::size_t>(width)) {
      ok = false;
      return 0;
    }
    const std::uint64_t v = tcp::get(rest.data(), width);
    rest = rest.subspan(static_cast<std::size_t>(width));
    return v;
  }
  std::string text() {
    const auto n = static_cast<std::size_t>(number(4));
    if (!ok || rest.size() < n) {
      ok = false;
      return {};
    }
    std::string t(reinterpret_cast<const char*>(rest.data()), n);
    rest = rest.subspan(n);
    return t;
  }
};

// A frame: the header, then the payload.
inline wire_bytes frame(std::uint64_t kind, const wire_bytes& payload, std::uint32_t flags = 0) {
  tcp::Header h;
  h.flags = flags;
  h.tag = kind;
  h.bytes = payload.size();
  tcp::Bytes<tcp::Header::size> head{};
  h.encode_into(head);
  wire_bytes out(tcp::Header::size + payload.size());
  std::memcpy(out.data(), head.data(), head.size());
  if (!payload.empty()) std::memcpy(out.data() + head.size(), payload.data(), payload.size());
  return out;
}

inline wire_bytes error_frame(errc code, std::string_view message) {
  wire_bytes payload;
  put_u32(payload, static_cast<std::uint32_t>(code));
  put_text(payload, message);
  return frame(error_reply, payload);
}

inline std::string hex(std::uint64_t v) {
  char text[24];
  std::snprintf(text, sizeof text, "0x%llx", static_cast<unsigned long long>(v));
  return text;
}

// "2, 5-7, 9": ranks with runs collapsed, cut short after a few runs so that a message about a
// thousand-rank job stays one line.
inline std::string format_ranks(const std::vector<int>& ranks) {
  std::string text;
  std::size_t runs = 0;
  for (std::size_t i = 0; i < ranks.size();) {
    std::size_t j = i;
    while (j + 1 < ranks.size() && ranks[j + 1] == ranks[j] + 1) ++j;
    if (++runs > 16) {
      text += concat({", ... (", number(ranks.size()), " in all)"});
      break;
    }
    if (!text.empty()) text += ", ";
    text += number(ranks[i]);
    if (j > i) text += concat({"-", number(ranks[j])});
    i = j + 1;
  }
  return text;
}

inline std::string_view ranks_noun(std::size_t n) { return n == 1 ? "rank" : "ranks"; }

inline std::string milliseconds_text(std::chrono::milliseconds ms) {
  return concat({number(static_cast<std::int64_t>(ms.count())), " ms"});
}

inline std::string address_text(const sockaddr_storage& a) {
  char host[64] = "?";
  std::uint16_t port = 0;
  if (a.ss_family == AF_INET) {
    const auto& v4 = reinterpret_cast<const sockaddr_in&>(a);
    ::inet_ntop(AF_INET, &v4.sin_addr, host, sizeof host);
    port = ntohs(v4.sin_port);
  } else if (a.ss_family == AF_INET6) {
    const auto& v6 = reinterpret_cast<const sockaddr_in6&>(a);
    ::inet_ntop(AF_INET6, &v6.sin6_addr, host, sizeof host);
    port = ntohs(v6.sin6_port);
  }
  return Endpoint{host, port}.to_string();
}

inline void set_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
}

// Waits until `fd` is ready for `events` or the deadline: true when ready.
inline bool wait_ready(int fd, short events, Deadline deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline.remaining());
    const int timeout = deadline.is_never() ? -1 : static_cast<int>(std::min<std::int64_t>(left.count(), 1 << 30));
    const int n = ::poll(&p, 1, timeout);
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) return true;  // let the read or write report it
  }
}

// Writes all of `data` to a non-blocking socket before the deadline: 0, ETIMEDOUT or an errno.
inline int write_all(int fd, std::span<const std::byte> data, Deadline deadline) {
  while (!data.empty()) {
    const ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n > 0) {
      data = data.subspan(static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_ready(fd, POLLOUT, deadline)) return ETIMEDOUT;
      continue;
    }
    return n < 0 ? errno : EPIPE;
  }
  return 0;
}

// Reads exactly `out.size()` bytes before the deadline: 0, ETIMEDOUT, ECONNRESET for an end of
// stream, or an errno.
inline int read_exact(int fd, std::span<std::byte> out, Deadline deadline) {
  while (!out.empty()) {
    const ssize_t n = ::recv(fd, out.data(), out.size(), 0);
    if (n > 0) {
      out = out.subspan(static_cast<std::size_t>(n));
      continue;
    }
    if (n == 0) return ECONNRESET;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait_ready(fd, POLLIN, deadline)) return ETIMEDOUT;
      continue;
    }
    return errno;
  }
  return 0;
}

// The coordinator: a thread on rank 0 that accepts every rank's connection, checks its hello,
// keeps the keys and answers requests. One poll loop over all connections: nothing blocks on a
// single peer, so a silent or broken client costs only its own slot.
class Server {
 public:
  Server(int listener, int size, const StoreOptions& options, std::string where)
      : listener_(listener), size_(size), options_(options), where_(std::move(where)),
        by_rank_(static_cast<std::size_t>(size), nullptr) {
    if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) wake_[0] = wake_[1] = -1;
    thread_ = std::thread([this] { loop(); });
  }
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Serves on until every rank that connected has gone, or one operation timeout passes.
  ~Server() {
    stop_.store(true);
    if (wake_[1] >= 0) (void)!::write(wake_[1], "x", 1);
    thread_.join();
    for (auto& c : clients_) ::close(c->fd);
    ::close(listener_);
    if (wake_[0] >= 0) ::close(wake_[0]);
    if (wake_[1] >= 0) ::close(wake_[1]);
  }

 private:
  struct Client {
    int fd = -1;
    std::string address;
    int rank = -1;  // once its hello is accepted
    Deadline hello_by = Deadline::never();
    wire_bytes in;   // bytes read, not yet a whole frame
    wire_bytes out;  // bytes to write
    bool closing = false;   // close once `out` is written
  };

  struct PendingGet {
    Client* client;
    std::vector<std::string> keys;
    std::chrono::milliseconds wait;
    Deadline deadline;
  };

  void log(const std::string& line) const {
    if (options_.verbose) std::fprintf(stderr, "[collie %s] coordinator: %s\n", options_.label.c_str(), line.c_str());
  }

  void note(const std::string& text) {
    log(text);
    if (notes_.size() < 8) notes_.push_back(text);
  }

  void loop() {
    std::vector<pollfd> fds;
    Deadline linger = Deadline::never();
    for (;;) {
      if (stop_.load() && linger.is_never()) linger = Deadline::after(options_.timeout);
      const bool everyone_left =
          ever_joined_ > 0 && std::none_of(clients_.begin(), clients_.end(),
                                            [](const auto& c) { return c->rank >= 0; });
      if (stop_.load() && (everyone_left || clients_.empty() || linger.expired())) return;
      fds.clear();
      fds.push_back({wake_[0], POLLIN, 0});
      fds.push_back({listener_, POLLIN, 0});
      for (const auto& c : clients_) {
        fds.push_back({c->fd, static_cast<short>(POLLIN | (c->out.empty() ? 0 : POLLOUT)), 0});
      }
      Deadline next = earliest(linger, Deadline::after(std::chrono::seconds(1)));
      for (const auto& c : clients_) next = earliest(next, c->hello_by);
      for (const auto& g : gets_) next = earliest(next, g.deadline);
      const auto wait = std::chrono::ceil<std::chrono::milliseconds>(next.remaining());
      ::poll(fds.data(), fds.size(), static_cast<int>(std::max<std::int64_t>(wait.count(), 0)));
      if ((fds[0].revents & POLLIN) != 0) {
        char drain[16];
        while (::read(wake_[0], drain, sizeof drain) > 0) {
        }
      }
      if ((fds[1].revents & POLLIN) != 0) accept_all();
      // fds[2..] follow clients_ as it was before accepting.
      for (std::size_t i = 2; i < fds.size(); ++i) {
        Client& c = *clients_[i - 2];
        if ((fds[i].revents & (POLLIN | POLLHUP | POLLERR)) != 0) read_from(c);
        if ((fds[i].revents & POLLOUT) != 0) flush(c);
      }
      expire();
      answer();
      std::erase_if(clients_, [&](const std::unique_ptr<Client>& c) {
        if (c->fd >= 0 && !(c->closing && c->out.empty())) return false;
        if (c->fd >= 0) ::close(c->fd);
        return true;
      });
    }
  }

  void accept_all() {
    for (;;) {
      sockaddr_storage from{};
      socklen_t length = sizeof from;
      const int fd = ::accept4(listener_, reinterpret_cast<sockaddr*>(&from), &length,
                               SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return;  // EAGAIN, or out of descriptors: the next poll tries again
      }
      auto c = std::make_unique<Client>();
      c->fd = fd;
      c->address = address_text(from);
      // A client that connects and says nothing (a port scanner, a hung process) is dropped
      // after one operation timeout; it never holds up anyone beyond its own slot.
      c->hello_by = Deadline::after(options_.timeout);
      clients_.push_back(std::move(c));
    }
  }

  void read_from(Client& c) {
    std::byte chunk[16 * 1024];
    const char* ended = nullptr;
    for (;;) {
      const ssize_t n = ::recv(c.fd, chunk, sizeof chunk, 0);
      if (n > 0) {
        c.in.insert(c.in.end(), chunk, chunk + n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
      ended = n == 0 ? "it closed the connection" : std::strerror(errno);
      break;
    }
    // What it sent before it went still counts (a rank may set a key and leave at once).
    while (c.fd >= 0 && !c.closing && process(c)) {
    }
    if (ended != nullptr && c.fd >= 0) gone(c, ended);
  }

  // Handles the first whole frame (or hello) in `c.in`; false when there is none yet.
  bool process(Client& c) {
    if (c.rank < 0) {
      if (c.in.size() < tcp::Hello::size) return false;
      tcp::Bytes<tcp::Hello::size> raw{};
      std::copy_n(c.in.begin(), raw.size(), raw.begin());
      c.in.erase(c.in.begin(), c.in.begin() + static_cast<std::ptrdiff_t>(raw.size()));
      on_hello(c, tcp::Hello::decode(raw));
      return c.rank >= 0;
    }
    if (c.in.size() < tcp::Header::size) return false;
    tcp::Bytes<tcp::Header::size> raw{};
    std::copy_n(c.in.begin(), raw.size(), raw.begin());
    const tcp::Header h = tcp::Header::decode(raw);
    if (h.magic != tcp::message_magic || h.bytes > max_frame) {
      fail(errc::protocol_error, concat({"rank ", number(c.rank), " (", c.address,
                                         ") sent something that is not a store request"}));
      return false;
    }
    if (c.in.size() < tcp::Header::size + h.bytes) return false;
    Reader reader{std::span<const std::byte>(c.in).subspan(tcp::Header::size, static_cast<std::size_t>(h.bytes))};
    if (h.tag == set_request) {
      std::string key = reader.text();
      const auto value = reader.rest;
      if (reader.ok) {
        keys_[key] = {std::string(reinterpret_cast<const char*>(value.data()), value.size()), c.rank};
        log(concat({"rank ", number(c.rank), " set ", key}));
      }
    } else if (h.tag == get_request) {
      const std::chrono::milliseconds wait(reader.number(8));
      PendingGet get{&c, {}, wait, Deadline::after(wait)};
      const auto count = static_cast<std::size_t>(reader.number(4));
      for (std::size_t i = 0; reader.ok && i < count; ++i) get.keys.push_back(reader.text());
      if (reader.ok) gets_.push_back(std::move(get));
    } else {
      reader.ok = false;
    }
    c.in.erase(c.in.begin(), c.in.begin() + static_cast<std::ptrdiff_t>(tcp::Header::size + h.bytes));
    if (!reader.ok) {
      fail(errc::protocol_error, concat({"rank ", number(c.rank), " (", c.address,
                                         ") sent a malformed store request"}));
      return false;
    }
    return true;
  }

  // Checks a hello. A foreign token means another job: refuse that connection and keep waiting.
  // Anything else wrong in a hello with our token is this job's misconfiguration, which no
  // amount of waiting fixes: fail every rank at once.
  void on_hello(Client& c, const tcp::Hello& hello) {
    c.hello_by = Deadline::never();
    const std::string who = concat({"rank ", number(hello.sender), " (", c.address, ")"});
    if (hello.magic != tcp::hello_magic || hello.connection != store_connection) {
      note(concat({c.address, " is not a collie ", options_.label, " client (no collie hello)"}));
      drop(c);
      return;
    }
    if (failed_) {
      // Too late: everyone is told why the store failed, this rank too.
      refuse(c, store_failed, *failed_, failure_);
      return;
    }
    if (hello.job_token != options_.job_token) {
      note(concat({"refused ", who, ": job token ", hex(hello.job_token), ", expected ",
                   hex(options_.job_token)}));
      refuse(c, tcp::Ack::wrong_job, errc::bad_configuration,
             "rank 0 refused this process: its job token differs from the coordinator's; start "
             "every rank of one job with the same COLLIE_JOB_TOKEN (or this process belongs to "
             "another job that uses the same coordinator address)");
      return;
    }
    if (hello.version != tcp::protocol_version) {
      fatal(c, tcp::Ack::bad_version, errc::protocol_error,
            concat({who, " speaks collie protocol version ", number(hello.version), ", rank 0 speaks ",
                    number(tcp::protocol_version), "; run the same collie version on every rank"}));
      return;
    }
    if (hello.world_size != static_cast<std::uint32_t>(size_)) {
      fatal(c, tcp::Ack::wrong_world_size, errc::bad_configuration,
            concat({who, " was started with world size ", number(hello.world_size),
                    " but rank 0 with ", number(size_), "; give every rank the same world size"}));
      return;
    }
    if (hello.sender >= static_cast<std::uint32_t>(size_)) {
      fatal(c, tcp::Ack::unexpected_sender, errc::bad_configuration,
            concat({c.address, " claims rank ", number(hello.sender), ", but a world of ",
                    number(size_), " has ranks 0..", number(size_ - 1),
                    "; give every process its own rank"}));
      return;
    }
    Client*& slot = by_rank_[hello.sender];
    if (slot != nullptr) {
      fatal(c, rank_taken, errc::bad_configuration,
            concat({c.address, " and ", slot->address, " both claim rank ", number(hello.sender),
                    "; give every process its own rank"}));
      return;
    }
    c.rank = static_cast<int>(hello.sender);
    slot = &c;
    ++ever_joined_;
    send(c, tcp::Ack{}.encode());
    log(concat({"hello from ", who}));
  }

  template <class Bytes>
  void send(Client& c, const Bytes& bytes) {
    const auto* p = reinterpret_cast<const std::byte*>(bytes.data());
    c.out.insert(c.out.end(), p, p + bytes.size());
    flush(c);
  }

  void flush(Client& c) {
    while (!c.out.empty() && c.fd >= 0) {
      const ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL);
      if (n > 0) {
        c.out.erase(c.out.begin(), c.out.begin() + n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
      c.out.clear();
      gone(c, std::strerror(errno));
    }
  }

  // Refuses a connection: an Ack with the status, then the reason, then the end.
  void refuse(Client& c, std::uint32_t status, errc code, std::string_view reason) {
    tcp::Ack ack;
    ack.status = status;
    send(c, ack.encode());
    send(c, error_frame(code, reason));
    c.closing = true;
  }

  void fatal(Client& c, std::uint32_t status, errc code, const std::string& message) {
    refuse(c, status, code, message);
    fail(code, message);
  }

  // The store fails for everyone: every pending and later request is answered with this.
  void fail(errc code, const std::string& message) {
    if (failed_) return;
    failed_ = code;
    failure_ = message;
    log("failed: " + message);
  }

  void drop(Client& c) {
    if (c.fd >= 0) ::close(c.fd);
    c.fd = -1;
  }

  // A client went. One that was waiting for keys died in the middle of the start-up: its keys
  // go, so that nothing stale is handed out. Either way its slot opens again (for a restarted
  // process). A client that only set keys and left keeps them: it may have been a producer.
  void gone(Client& c, std::string_view why) {
    const bool waiting = std::any_of(gets_.begin(), gets_.end(), [&](const PendingGet& g) { return g.client == &c; });
    if (c.rank >= 0 && waiting && !failed_) {
      note(concat({"rank ", number(c.rank), " (", c.address, ") left while it waited (", why, ")"}));
      std::erase_if(keys_, [&](const auto& entry) { return entry.second.owner == c.rank; });
    }
    if (c.rank >= 0 && by_rank_[static_cast<std::size_t>(c.rank)] == &c) {
      by_rank_[static_cast<std::size_t>(c.rank)] = nullptr;
    }
    std::erase_if(gets_, [&](const PendingGet& g) { return g.client == &c; });
    c.rank = -1;
    drop(c);
  }

  void expire() {
    for (auto& c : clients_) {
      if (c->fd >= 0 && c->rank < 0 && c->hello_by.expired()) {
        note(concat({c->address, " connected but sent no hello within ", milliseconds_text(options_.timeout)}));
        drop(*c);
      }
    }
    for (const auto& g : gets_) {
      if (g.deadline.expired()) fail(errc::timed_out, timeout_message(g));
    }
  }

  // "timed out after 500 ms waiting for rank 2 (2 of 3 other ranks said hello: 1, 3); meanwhile
  // refused ...; check that rank 2 was started ..."
  std::string timeout_message(const PendingGet& g) const {
    std::vector<int> missing;
    std::vector<int> present;
    // Counted as rank 0 sees them, whoever's wait ran out.
    for (int r = 1; r < size_; ++r) {
      (by_rank_[static_cast<std::size_t>(r)] != nullptr ? present : missing).push_back(r);
    }
    std::string message;
    if (!missing.empty()) {
      message = concat({"timed out after ", milliseconds_text(g.wait), " waiting for ",
                        ranks_noun(missing.size()), " ", format_ranks(missing),
                        " (", number(present.size()), " of ", number(size_ - 1),
                        " other ranks said hello", present.empty() ? "" : ": ", format_ranks(present), ")"});
    } else {
      std::string absent;
      for (const auto& key : g.keys) {
        if (!keys_.contains(key)) absent += concat({absent.empty() ? "" : ", ", key});
      }
      message = concat({"timed out after ", milliseconds_text(g.wait), " waiting for ", absent,
                        " (every rank said hello)"});
    }
    if (!notes_.empty()) {
      message += "; meanwhile";
      for (std::size_t i = 0; i < notes_.size(); ++i) message += concat({i ? "; " : " ", notes_[i]});
    }
    if (!missing.empty()) {
      message += concat({"; check that ", ranks_noun(missing.size()), " ", format_ranks(missing),
                         missing.size() == 1 ? " was" : " were",
                         " started with the same coordinator address and world size and can reach "
                         "it, or raise COLLIE_CONNECT_TIMEOUT_MS"});
    }
    return message;
  }

  // Answers every get whose keys are all set (or, once failed, every get with the failure).
  void answer() {
    std::erase_if(gets_, [&](PendingGet& g) {
      Client& c = *g.client;
      if (failed_) {
        send(c, error_frame(*failed_, failure_));
        return true;
      }
      wire_bytes payload;
      put_u32(payload, static_cast<std::uint32_t>(g.keys.size()));
      for (const auto& key : g.keys) {
        const auto it = keys_.find(key);
        if (it == keys_.end()) return false;
        put_text(payload, it->second.value);
      }
      send(c, frame(values_reply, payload));
      return true;
    });
  }

  struct Entry {
    std::string value;
    int owner;
  };

  int listener_;
  int size_;
  StoreOptions options_;
  std::string where_;
  int wake_[2] = {-1, -1};
  std::atomic<bool> stop_{false};
  std::vector<std::unique_ptr<Client>> clients_;
  std::vector<Client*> by_rank_;
  int ever_joined_ = 0;
  std::map<std::string, Entry, std::less<>> keys_;
  std::vector<PendingGet> gets_;
  std::optional<errc> failed_;
  std::string failure_;
  std::vector<std::string> notes_;
  std::thread thread_;  // last: starts once the rest exists
};

}  // namespace detail::store

}  // namespace collie
