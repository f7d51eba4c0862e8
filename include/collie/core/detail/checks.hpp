// The checks every operation makes before any byte moves: buffer sizes that fit the operation,
// buffers that do not overlap in a way neither form can honour, ranks in range. A failed check
// leaves the group usable. They see bytes and an element size only, so they are compiled once.
#pragma once

#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>

#include "collie/core/detail/core_state.hpp"
#include "collie/core/detail/text.hpp"
#include "collie/core/error.hpp"

namespace collie::detail {

// Which group a check is for: its policies' name (for the message), this rank, the group size.
struct CheckedGroup {
  const std::string& name;
  int rank;
  int size;
};

// True when two byte ranges share memory without being the same range: neither in-place nor
// out-of-place semantics can be honoured then.
inline bool overlaps_partially(std::span<const std::byte> a, std::span<const std::byte> b) noexcept {
  if (a.empty() || b.empty()) return false;
  if (a.data() == b.data() && a.size() == b.size()) return false;
  const auto* a_end = a.data() + a.size();
  const auto* b_end = b.data() + b.size();
  return std::less<>{}(a.data(), b_end) && std::less<>{}(b.data(), a_end);
}

inline bool overlaps(std::span<const std::byte> a, std::span<const std::byte> b) noexcept {
  return overlaps_partially(a, b) || (!a.empty() && a.data() == b.data());
}

inline std::error_code check_reduce(const CheckedGroup& g, std::string_view what,
                                    std::span<const std::byte> in, std::span<const std::byte> out,
                                    std::size_t element_size) noexcept {
  if (in.size() != out.size()) {
    return invalid_call(g.name, what,
                        concat({"input has ", number(in.size() / element_size),
                                " elements but output has ", number(out.size() / element_size),
                                "; out-of-place reductions need equal sizes"}));
  }
  if (overlaps_partially(in, out)) {
    return invalid_call(g.name, what,
                        "input and output overlap partially; pass the same buffer twice (or "
                        "once) for in place");
  }
  return {};
}

inline std::error_code check_gather(const CheckedGroup& g, std::span<const std::byte> in,
                                    std::span<const std::byte> out,
                                    std::size_t element_size) noexcept {
  if (out.size() != in.size() * static_cast<std::size_t>(g.size)) {
    return invalid_call(g.name, "all_gather",
                        concat({"output has ", number(out.size() / element_size),
                                " elements; it needs input size × group size = ",
                                number(in.size() / element_size), " × ", number(g.size)}));
  }
  const auto own = out.subspan(static_cast<std::size_t>(g.rank) * in.size(), in.size());
  if (overlaps_partially(in, own) || (overlaps_partially(in, out) && in.data() != own.data())) {
    return invalid_call(g.name, "all_gather",
                        "input overlaps the output anywhere but in this rank's block");
  }
  return {};
}

inline std::error_code check_scatter(const CheckedGroup& g, std::string_view what,
                                     std::span<const std::byte> in,
                                     std::span<const std::byte> out,
                                     std::size_t element_size) noexcept {
  if (in.size() != out.size() * static_cast<std::size_t>(g.size)) {
    return invalid_call(g.name, what,
                        concat({"input has ", number(in.size() / element_size),
                                " elements; it needs output size × group size = ",
                                number(out.size() / element_size), " × ", number(g.size)}));
  }
  if (g.size > 1 && overlaps(in, out)) {
    return invalid_call(g.name, what, "input and output overlap; use separate buffers");
  }
  return {};
}

inline std::error_code check_all_to_all(const CheckedGroup& g, std::span<const std::byte> in,
                                        std::span<const std::byte> out,
                                        std::size_t element_size) noexcept {
  const auto p = static_cast<std::size_t>(g.size);
  const std::size_t count = in.size() / element_size;
  if (in.size() != out.size() || count % p != 0) {
    return invalid_call(g.name, "all_to_all",
                        concat({"input has ", number(count), " elements and output ",
                                number(out.size() / element_size),
                                "; both need the same size, a multiple of the group size ",
                                number(p)}));
  }
  if (p > 1 && overlaps(in, out)) {
    return invalid_call(g.name, "all_to_all", "input and output overlap; use separate buffers");
  }
  return {};
}

inline std::error_code check_broadcast(const CheckedGroup& g, std::span<const std::byte> in,
                                       std::span<const std::byte> out) noexcept {
  if (in.size() != out.size()) {
    return invalid_call(g.name, "broadcast",
                        concat({"input has ", number(in.size()), " bytes but output has ",
                                number(out.size()), "; out-of-place broadcast needs equal sizes"}));
  }
  if (overlaps_partially(in, out)) {
    return invalid_call(g.name, "broadcast",
                        "input and output overlap partially; pass the same buffer for in place");
  }
  return {};
}

inline std::error_code check_root(const CheckedGroup& g, int root, std::string_view what) noexcept {
  if (root < 0 || root >= g.size) {
    return invalid_call(g.name, what,
                        concat({"root ", number(root), " is outside [0, ", number(g.size), ")"}),
                        errc::peer_out_of_range);
  }
  return {};
}

inline std::error_code check_peer(const CheckedGroup& g, int peer, std::string_view what) noexcept {
  if (g.size == 1) {
    return invalid_call(g.name, what,
                        "this group has a single rank, so there is no peer to talk to",
                        errc::singleton_group);
  }
  if (peer < 0 || peer >= g.size) {
    return invalid_call(g.name, what,
                        concat({"peer ", number(peer), " is outside [0, ", number(g.size), ")"}),
                        errc::peer_out_of_range);
  }
  if (peer == g.rank) {
    return invalid_call(g.name, what,
                        concat({"rank ", number(peer), " cannot ", what,
                                " to or from itself; copy the buffer instead"}));
  }
  return {};
}

}  // namespace collie::detail
