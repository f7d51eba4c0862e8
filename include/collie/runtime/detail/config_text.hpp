// Checking configuration text, for every reader of hostfiles, device files and variables: an
// endpoint's problems in words, blank text, and the one place a configuration error is reported
// (the code, and the one-line message Group::last_error() returns).
#pragma once

#include <arpa/inet.h>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "collie/core/error.hpp"
#include "collie/transport/tcp_config.hpp"

namespace collie {

namespace detail {

// Parses `text` into `out`; returns what is wrong with it (empty when it is fine). The callers
// put the problem into their own context: a bare endpoint, a hostfile entry, a variable.
inline std::string endpoint_problem(std::string_view text, Endpoint& out) {
  if (text.empty()) return "empty; write ip:port, e.g. 10.0.0.1:5000";
  for (char c : text) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
      return "contains white space; write ip:port with nothing around it, e.g. 10.0.0.1:5000";
    }
  }
  std::string_view host;
  std::string_view port;
  bool bracketed = false;
  if (text.front() == '[') {
    const auto close = text.find(']');
    if (close == std::string_view::npos) return "missing ']' after the IPv6 address";
    host = text.substr(1, close - 1);
    const auto rest = text.substr(close + 1);
    if (rest.empty()) return "missing the port; write [ipv6]:port, e.g. [::1]:5000";
    if (rest.front() != ':') return "expected ':' and a port after ']'";
    port = rest.substr(1);
    bracketed = true;
  } else {
    const auto colon = text.rfind(':');
    if (colon == std::string_view::npos)
      return "missing the port; write host:port, e.g. 10.0.0.1:5000";
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return "an IPv6 address needs brackets, e.g. [::1]:5000";
    }
  }
  if (host.empty()) return "missing the host before ':'";
  if (bracketed) {
    // A zone ("fe80::1%eth0") is kept as written; only the address part must be IPv6.
    const std::string address(host.substr(0, host.find('%')));
    in6_addr v6{};
    if (inet_pton(AF_INET6, address.c_str(), &v6) != 1) {
      return "\"" + std::string(host) + "\" is not an IPv6 address";
    }
  } else {
    bool numeric = true;
    for (char c : host) numeric = numeric && ((c >= '0' && c <= '9') || c == '.');
    if (numeric) {
      // All digits and dots can only mean IPv4; a typo such as 10.0.0.256 must not be taken for
      // a host name and fail much later in the resolver.
      in_addr v4{};
      if (inet_pton(AF_INET, std::string(host).c_str(), &v4) != 1) {
        return "\"" + std::string(host) + "\" is not a valid IPv4 address";
      }
    } else {
      if (host.size() > 253) return "the host name is longer than 253 characters";
      for (char c : host) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
        if (!ok) {
          return "\"" + std::string(host) +
                 "\" is neither an IP address nor a host name (character '" + std::string(1, c) +
                 "')";
        }
      }
      if (host.front() == '-' || host.front() == '.') {
        return "\"" + std::string(host) + "\" is not a valid host name";
      }
    }
  }
  if (port.empty()) return "missing the port after ':'";
  unsigned long long value = 0;
  const auto [end, err] = std::from_chars(port.data(), port.data() + port.size(), value);
  if (end != port.data() + port.size() ||
      (err != std::errc() && err != std::errc::result_out_of_range)) {
    return "port \"" + std::string(port) + "\" is not a number";
  }
  if (err == std::errc::result_out_of_range || value < 1 || value > 65535) {
    return "port must be 1..65535";
  }
  out.host = std::string(host);
  out.port = static_cast<std::uint16_t>(value);
  return {};
}

// Fails an error_code-form call: sets `ec` and this thread's last error message, which the
// throwing form puts into its exception.
inline void report_config_error(std::error_code& ec, std::error_code code, std::string message) {
  ec = code;
  last_error_message = std::move(message);
}

// Whether the text holds nothing but white space.
inline bool is_blank_text(std::string_view text) {
  for (char c : text) {
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return false;
  }
  return true;
}

}  // namespace detail

}  // namespace collie
