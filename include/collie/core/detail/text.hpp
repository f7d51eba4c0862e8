// Building error messages: one out-of-line concatenation instead of a chain of std::string
// operator+ calls, each of which the compiler would expand in place. Messages are built only
// when something failed, so their speed does not matter, but their code is in every program.
#pragma once

#include <charconv>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

namespace collie::detail {

/// The pieces, joined: `concat({"rank ", number(r), " of ", number(p)})`.
inline std::string concat(std::initializer_list<std::string_view> pieces) {
  std::size_t length = 0;
  for (auto piece : pieces) length += piece.size();
  std::string text;
  text.reserve(length);
  for (auto piece : pieces) text.append(piece);
  return text;
}

/// A number as text, held in place (no allocation), for `concat`.
class number {
 public:
  number(std::int64_t value) noexcept { set(value); }  // NOLINT: converting on purpose
  number(int value) noexcept { set(value); }           // NOLINT
  number(long long value) noexcept { set(static_cast<std::int64_t>(value)); }  // NOLINT
  number(std::uint64_t value) noexcept {  // NOLINT
    length_ = static_cast<std::size_t>(std::to_chars(text_, text_ + sizeof text_, value).ptr - text_);
  }
  number(unsigned long long value) noexcept : number(static_cast<std::uint64_t>(value)) {}  // NOLINT
  number(unsigned value) noexcept : number(static_cast<std::uint64_t>(value)) {}  // NOLINT
  operator std::string_view() const noexcept { return {text_, length_}; }  // NOLINT

 private:
  void set(std::int64_t value) noexcept {
    length_ = static_cast<std::size_t>(std::to_chars(text_, text_ + sizeof text_, value).ptr - text_);
  }
  char text_[24];
  std::size_t length_ = 0;
};

}  // namespace collie::detail
