// The TCP wire format: the handshake every connection starts with, and the header in front of
// every message. Fixed-size, little-endian, so it is the same on every host.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace collie::detail::tcp {

inline constexpr std::uint32_t hello_magic = 0x4F4C4C43;    // "CLLO" read as bytes: C L L O
inline constexpr std::uint32_t message_magic = 0x474D4C43;  // "CLMG"
inline constexpr std::uint16_t protocol_version = 1;
/// Connection index of an on-demand connection between ranks that are not neighbours.
inline constexpr std::uint16_t on_demand_index = 0xFFFF;

template <std::size_t N>
using Bytes = std::array<std::byte, N>;

inline void put(std::byte* at, std::uint64_t value, int width) {
  for (int i = 0; i < width; ++i) at[i] = static_cast<std::byte>((value >> (8 * i)) & 0xFF);
}
inline std::uint64_t get(const std::byte* at, int width) {
  std::uint64_t value = 0;
  for (int i = 0; i < width; ++i) value |= static_cast<std::uint64_t>(at[i]) << (8 * i);
  return value;
}

/// Sent by the connecting side right after connect: who it is, whom it wants, for which job.
struct Hello {
  static constexpr std::size_t size = 32;
  std::uint32_t magic = hello_magic;
  std::uint16_t version = protocol_version;
  std::uint16_t connection = 0;  // index among the connections to this neighbour, or on_demand
  std::uint32_t world_size = 0;
  std::uint32_t sender = 0;
  std::uint32_t receiver = 0;
  std::uint64_t job_token = 0;

  Bytes<size> encode() const {
    Bytes<size> b{};
    put(&b[0], magic, 4);
    put(&b[4], version, 2);
    put(&b[6], connection, 2);
    put(&b[8], world_size, 4);
    put(&b[12], sender, 4);
    put(&b[16], receiver, 4);
    put(&b[24], job_token, 8);
    return b;
  }
  static Hello decode(const Bytes<size>& b) {
    Hello h;
    h.magic = static_cast<std::uint32_t>(get(&b[0], 4));
    h.version = static_cast<std::uint16_t>(get(&b[4], 2));
    h.connection = static_cast<std::uint16_t>(get(&b[6], 2));
    h.world_size = static_cast<std::uint32_t>(get(&b[8], 4));
    h.sender = static_cast<std::uint32_t>(get(&b[12], 4));
    h.receiver = static_cast<std::uint32_t>(get(&b[16], 4));
    h.job_token = get(&b[24], 8);
    return h;
  }
};

/// The accepting side's answer: accepted, or why not (both sides then report the reason).
struct Ack {
  static constexpr std::size_t size = 8;
  enum Status : std::uint32_t {
    accepted = 0,
    bad_magic,
    bad_version,
    wrong_world_size,
    wrong_receiver,
    wrong_job,
    unexpected_sender,
  };
  std::uint32_t magic = hello_magic;
  std::uint32_t status = accepted;

  Bytes<size> encode() const {
    Bytes<size> b{};
    put(&b[0], magic, 4);
    put(&b[4], status, 4);
    return b;
  }
  static Ack decode(const Bytes<size>& b) {
    return {static_cast<std::uint32_t>(get(&b[0], 4)), static_cast<std::uint32_t>(get(&b[4], 4))};
  }

  static std::string reason(std::uint32_t status) {
    switch (status) {
      case accepted: return "accepted";
      case bad_magic: return "it is not a collie connection";
      case bad_version: return "the protocol versions differ (mixed collie builds?)";
      case wrong_world_size: return "the world sizes differ (different hostfiles?)";
      case wrong_receiver: return "it reached the wrong rank (mis-wired hostfile?)";
      case wrong_job: return "the job tokens differ (a process from another job?)";
      case unexpected_sender: return "that rank is not expected on this address (mis-wired hostfile?)";
    }
    return "unknown refusal " + std::to_string(status);
  }
};

/// In front of every message: the group context and tag it matches on, and its length.
struct Header {
  static constexpr std::size_t size = 32;
  /// The sender aborts the group; the payload is its reason, as text.
  static constexpr std::uint32_t abort_flag = 1;
  std::uint32_t magic = message_magic;
  std::uint32_t flags = 0;
  std::uint64_t context = 0;
  std::uint64_t tag = 0;
  std::uint64_t bytes = 0;

  void encode_into(Bytes<size>& b) const {
    put(&b[0], magic, 4);
    put(&b[4], flags, 4);
    put(&b[8], context, 8);
    put(&b[16], tag, 8);
    put(&b[24], bytes, 8);
  }
  static Header decode(const Bytes<size>& b) {
    Header h;
    h.magic = static_cast<std::uint32_t>(get(&b[0], 4));
    h.flags = static_cast<std::uint32_t>(get(&b[4], 4));
    h.context = get(&b[8], 8);
    h.tag = get(&b[16], 8);
    h.bytes = get(&b[24], 8);
    return h;
  }
};

}  // namespace collie::detail::tcp
