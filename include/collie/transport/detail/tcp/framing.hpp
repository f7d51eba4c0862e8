// Framing of the TCP engine's byte streams: a header in front of every message, read through a
// small inbox so that one system call brings a header with its payload (or several messages),
// the bulk of a large payload read straight into its destination; and writes of a header with
// its payload in one call. Every system call costs about a microsecond on these VMs, which is
// why an 8-byte message takes one `recv` here.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>

#include "collie/transport/detail/tcp/wire.hpp"

namespace collie::detail::tcp {

// The read side of one connection: what the stream carries next, and bytes already read that
// belong to it. Touched only by whoever runs the event loop.
class FrameReader {
 public:
  enum class Part : std::uint8_t { header, payload, reason, skip };
  enum class Event : std::uint8_t { none, header, end };  // a whole header, or the part ended

  // Each connection's read-ahead buffer; payloads of `direct_read_min` bytes or more still to
  // come are read straight into their destination instead (at most one inbox's worth of a
  // message is copied).
  static constexpr std::size_t inbox_size = std::size_t{8} << 10;
  static constexpr std::size_t direct_read_min = inbox_size / 2;

  FrameReader() : inbox_(std::make_unique_for_overwrite<std::byte[]>(inbox_size)) {}

  Part part() const noexcept { return part_; }
  const Bytes<Header::size>& header() const noexcept { return header_; }
  std::uint64_t left() const noexcept { return left_; }
  bool has_inbox_bytes() const noexcept { return inbox_begin_ < inbox_end_; }

  // After a header: its payload (or the abort reason) goes to `target` (null: skipped), `bytes`
  // of it. With no bytes, the part has already ended.
  void expect(Part part, std::byte* target, std::uint64_t bytes) noexcept {
    part_ = part;
    target_ = target;
    left_ = bytes;
  }
  void next_header() noexcept { part_ = Part::header; }

  // Where the next read goes: straight into the payload when much of it is still to come (the
  // inbox is empty whenever this is asked), else into the inbox.
  std::pair<std::byte*, std::size_t> next_read() const noexcept {
    if (part_ == Part::payload && left_ >= direct_read_min) return {target_, static_cast<std::size_t>(left_)};
    return {inbox_.get(), inbox_size};
  }

  // Accounts for `got` of the `want` bytes read to `into`, as next_read chose. `drained` says
  // whether the next read should be left to the event loop: after a short read the socket is
  // empty, and after a read that ended a large payload it most likely is (a read of our own
  // would find it empty). Returns Event::end when that read ended the payload.
  Event took(const std::byte* into, std::size_t got, std::size_t want, bool& drained) noexcept {
    if (into == inbox_.get()) {
      inbox_begin_ = 0;
      inbox_end_ = got;
      drained = got < want;
      return Event::none;
    }
    target_ += got;
    left_ -= got;
    drained = true;
    return left_ == 0 ? Event::end : Event::none;
  }

  // Moves bytes from the inbox into the part being read, up to the end of that part.
  Event take_from_inbox() noexcept {
    const std::byte* from = inbox_.get() + inbox_begin_;
    const std::size_t have = inbox_end_ - inbox_begin_;
    if (part_ == Part::header) {
      const std::size_t n = std::min(have, Header::size - header_have_);
      std::memcpy(header_.data() + header_have_, from, n);
      inbox_begin_ += n;
      header_have_ += n;
      if (header_have_ < Header::size) return Event::none;
      header_have_ = 0;
      return Event::header;
    }
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(have, left_));
    if (part_ != Part::skip) {
      std::memcpy(target_, from, n);
      target_ += n;
    }
    inbox_begin_ += n;
    left_ -= n;
    return left_ == 0 ? Event::end : Event::none;
  }

 private:
  Part part_ = Part::header;
  Bytes<Header::size> header_{};  // the header being read
  std::size_t header_have_ = 0;
  std::byte* target_ = nullptr;   // where the rest of the payload (or abort reason) goes
  std::uint64_t left_ = 0;        // bytes of the current part still to come
  std::unique_ptr<std::byte[]> inbox_;
  std::size_t inbox_begin_ = 0;
  std::size_t inbox_end_ = 0;
};

// Writes what is left of a message (its header, then its payload) from byte `offset` on, as far
// as the socket takes it without blocking, in one system call. Returns the bytes written (0 when
// the socket is full), or -1 with `error` set.
inline long write_message(int fd, const Bytes<Header::size>& header, const std::byte* payload,
                          std::size_t bytes, std::size_t offset, int& error) noexcept {
  const std::size_t in_header = std::min(offset, Header::size);
  const std::size_t in_payload = offset > Header::size ? offset - Header::size : 0;
  iovec parts[2] = {{const_cast<std::byte*>(header.data()) + in_header, Header::size - in_header},
                    {const_cast<std::byte*>(payload) + in_payload, bytes - in_payload}};
  msghdr message{};
  message.msg_iov = parts[0].iov_len == 0 ? parts + 1 : parts;
  message.msg_iovlen = (parts[0].iov_len == 0 ? 1 : 2) - (parts[1].iov_len == 0 ? 1 : 0);
  if (message.msg_iovlen == 0) return 0;
  for (;;) {
    const ssize_t sent = ::sendmsg(fd, &message, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (sent >= 0) return sent;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
    error = errno;
    return -1;
  }
}

}  // namespace collie::detail::tcp
