// collie's error codes and the exception every throwing call raises.
//
// Every public operation comes in two forms, as in Asio: one throws `collie::Error`, the other
// fills a `std::error_code&` and never throws. Both carry the same codes, listed below.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>

namespace collie {

/// What went wrong. The first group is the caller's to fix and leaves the group usable; the
/// second is an I/O failure, after which the group is aborted for good (later calls fail fast
/// with `errc::aborted`).
enum class errc {
  // --- caller errors: checked locally before any byte moves; the group stays usable -----------
  invalid_argument = 1,   ///< a buffer size that does not fit the operation, a bad option value
  peer_out_of_range,      ///< a peer or root rank outside [0, size())
  singleton_group,        ///< send/recv on a group of one rank: there is nobody to talk to
  not_configured,         ///< init(strict = true) found no environment for the backend
  unknown_backend,        ///< init() got a backend name that is not compiled in
  bad_configuration,      ///< a malformed hostfile, device file or environment variable
  // --- I/O failures: the group is aborted afterwards -----------------------------------------
  timed_out,              ///< a peer did not answer before the deadline
  connection_lost,        ///< a peer closed its connection or died
  protocol_error,         ///< a peer sent something unexpected (wrong size, foreign handshake)
  aborted,                ///< an earlier I/O failure aborted this group
};

namespace detail {

class ErrorCategory final : public std::error_category {
 public:
  const char* name() const noexcept override { return "collie"; }

  std::string message(int code) const override {
    switch (static_cast<errc>(code)) {
      case errc::invalid_argument: return "invalid argument";
      case errc::peer_out_of_range: return "peer rank out of range";
      case errc::singleton_group: return "a group of one rank cannot send or receive";
      case errc::not_configured: return "backend not configured by the environment";
      case errc::unknown_backend: return "unknown backend";
      case errc::bad_configuration: return "bad configuration";
      case errc::timed_out: return "timed out";
      case errc::connection_lost: return "connection to a peer lost";
      case errc::protocol_error: return "protocol error";
      case errc::aborted: return "group aborted by an earlier error";
    }
    return "unknown collie error";
  }
};

// The message of the most recent failure of a call made on this thread; the throwing forms put
// it in the exception, `last_error()` returns it to users of the error_code forms.
inline thread_local std::string last_error_message;

}  // namespace detail

/// The category of every `collie::errc` code (`ec.category().name()` is "collie").
inline const std::error_category& error_category() noexcept {
  static const detail::ErrorCategory category;
  return category;
}

/// Makes `std::error_code ec = collie::errc::timed_out;` work (found by ADL).
inline std::error_code make_error_code(errc code) noexcept {
  return {static_cast<int>(code), error_category()};
}

/// True for the codes after which a group is aborted for good (I/O failures).
inline bool is_io_failure(const std::error_code& ec) noexcept {
  if (ec.category() != error_category()) return static_cast<bool>(ec);
  return ec.value() >= static_cast<int>(errc::timed_out);
}

/// The exception thrown by the throwing form of every call. `code()` is the `collie::errc`;
/// `what()` names the backend, the operation, the step and the peer, and says what to do, e.g.
/// `collie[inproc/ring] all_sum: reduce-scatter step 2 of 3, waiting for rank 3: timed out ...`.
class Error : public std::system_error {
 public:
  Error(std::error_code code, const std::string& what) : std::system_error(code, what) {}
};

namespace detail {

// The throwing form of a call that returns an optional and fills `ec`: its value, or
// collie::Error with `ec` and the message the call left.
template <class T>
T value_or_throw(std::optional<T>&& value, const std::error_code& ec) {
  if (!value) throw Error(ec, last_error_message);
  return std::move(*value);
}

}  // namespace detail

}  // namespace collie

template <>
struct std::is_error_code_enum<collie::errc> : std::true_type {};
