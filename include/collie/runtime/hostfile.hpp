// Hostfiles for the ring backend: parses "ip:port" endpoints and the JSON file MLX_HOSTFILE names
// (per rank, the addresses it listens on, one per connection), and checks them eagerly so a typo
// is reported with its file, rank and entry instead of surfacing later as a hang.
#pragma once

#include <arpa/inet.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <new>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "collie/core/error.hpp"
#include "collie/transport/tcp_config.hpp"
#include "collie/runtime/detail/config_text.hpp"

namespace collie {

/// The address table of a hostfile: `hosts[rank][connection]`, the layout of `TcpConfig::hosts`.
using HostTable = std::vector<std::vector<Endpoint>>;

/// Parses one endpoint: "10.0.0.1:5000", "[fe80::1]:5000" (IPv6 in brackets, an optional zone
/// after '%'), or "node7:5000" (a host name, resolved when connecting). The port must be 1..65535.
/// Nothing is resolved or contacted here.
///
/// Errors: `errc::bad_configuration`, with a message that quotes the text and says what is wrong,
/// e.g. `collie: endpoint "10.0.0.1:99999": port must be 1..65535`.
///
///   collie::Endpoint e = collie::parse_endpoint("[::1]:5000");  // e.host == "::1", e.port == 5000
///
/// Throws `collie::Error`; the overload with `std::error_code&` returns nothing instead and
/// leaves the message in `Group::last_error()`.
inline std::optional<Endpoint> parse_endpoint(std::string_view text, std::error_code& ec) noexcept {
  ec.clear();
  try {
    Endpoint endpoint;
    if (auto problem = detail::endpoint_problem(text, endpoint); !problem.empty()) {
      detail::report_config_error(ec, errc::bad_configuration,
                                  "collie: endpoint \"" + std::string(text) + "\": " + problem);
      return std::nullopt;
    }
    return endpoint;
  } catch (const std::bad_alloc&) {
    detail::report_config_error(ec, std::make_error_code(std::errc::not_enough_memory),
                                "collie: out of memory parsing an endpoint");
    return std::nullopt;
  }
}

/// As above, throwing `collie::Error` with the same message.
inline Endpoint parse_endpoint(std::string_view text) {
  std::error_code ec;
  return detail::value_or_throw(parse_endpoint(text, ec), ec);
}

/// Parses the text of a ring hostfile, the format of MLX's MLX_HOSTFILE: a JSON array indexed by
/// rank, each entry an array of "ip:port" strings, the addresses that rank listens on, one per
/// connection to its neighbour:
///
///   [["10.0.0.1:5000", "10.0.0.1:5001"],
///    ["10.0.0.2:5000", "10.0.0.2:5001"]]
///
/// `origin` names where the text came from (a path, "MLX_HOSTFILE=..."); it only appears in
/// messages. Checked here, before any connection is tried: valid JSON, a non-empty top-level
/// array, every entry a non-empty array of strings, every rank with the same number of
/// addresses, every endpoint well formed (see `parse_endpoint`), no endpoint listed twice.
///
/// Blank text (empty or white space only), and the JSON string `""`, read as one rank with no
/// addresses: that is what `mlx.launch` writes for a job on a single host, where a ring of one
/// has nobody to connect to. Any rank other than 0 is then refused by the caller, so a blank file
/// on a multi-host job cannot pass unnoticed.
///
/// Errors: `errc::bad_configuration`; the message names the origin, the rank and entry (both
/// 0-based) and the text, e.g.
/// `collie: hostfile /tmp/h.json: rank 2, entry 1: "10.0.0.3:99999": port must be 1..65535`,
/// and for invalid JSON the byte offset with nlohmann's line and column.
///
/// Throws `collie::Error`; the overload with `std::error_code&` returns nothing instead.
inline std::optional<HostTable> parse_hostfile(std::string_view json_text, std::string_view origin,
                                               std::error_code& ec) noexcept {
  ec.clear();
  try {
    const std::string where = "collie: hostfile " + std::string(origin) + ": ";
    if (detail::is_blank_text(json_text)) return HostTable(1);
    nlohmann::json document;
    try {
      document = nlohmann::json::parse(json_text.begin(), json_text.end());
    } catch (const nlohmann::json::parse_error& e) {
      // nlohmann's text reads "[json.exception.parse_error.101] parse error at line 3, column 5:
      // ..."; the bracketed id means nothing to a user, the rest does.
      std::string detail = e.what();
      if (const auto close = detail.find("] ");
          detail.starts_with("[json.") && close != std::string::npos) {
        detail = detail.substr(close + 2);
      }
      detail::report_config_error(
          ec, errc::bad_configuration,
          where + "not valid JSON (byte " + std::to_string(e.byte) + "): " + detail +
              "; expected [[\"ip:port\", ...], ...] with one array per rank");
      return std::nullopt;
    }
    if (document.is_string() && document.get_ref<const std::string&>().empty()) return HostTable(1);
    if (document.is_object()) {
      detail::report_config_error(
          ec, errc::bad_configuration,
          where +
              "the top level is a JSON object, but this file must be an array with "
              "one entry per rank, [[\"ip:port\", ...], ...] (an object with \"hosts\" "
              "is a launcher hostfile, not MLX_HOSTFILE)");
      return std::nullopt;
    }
    if (!document.is_array()) {
      detail::report_config_error(ec, errc::bad_configuration,
                                  where + "the top level is a JSON " + document.type_name() +
                                      ", but it must be an array with one entry per rank, "
                                      "[[\"ip:port\", ...], ...]");
      return std::nullopt;
    }
    if (document.empty()) {
      detail::report_config_error(ec, errc::bad_configuration,
                                  where +
                                      "the array of ranks is empty; list at least one rank, "
                                      "[[\"ip:port\", ...], ...]");
      return std::nullopt;
    }
    HostTable table;
    table.reserve(document.size());
    // Where each endpoint was first seen, to name both places of a duplicate.
    std::map<std::pair<std::string, std::uint16_t>, std::pair<std::size_t, std::size_t>> seen;
    for (std::size_t rank = 0; rank < document.size(); ++rank) {
      const auto& entry = document[rank];
      const std::string at_rank = where + "rank " + std::to_string(rank) + ": ";
      if (!entry.is_array()) {
        std::string hint;
        if (entry.is_string()) hint = " (write [" + entry.dump() + "])";
        detail::report_config_error(ec, errc::bad_configuration,
                                    at_rank +
                                        "expected an array of \"ip:port\" strings, got a JSON " +
                                        entry.type_name() + hint);
        return std::nullopt;
      }
      if (entry.empty()) {
        detail::report_config_error(
            ec, errc::bad_configuration,
            at_rank +
                "the array of addresses is empty; list at least one \"ip:port\" "
                "this rank listens on");
        return std::nullopt;
      }
      if (rank > 0 && entry.size() != table.front().size()) {
        detail::report_config_error(ec, errc::bad_configuration,
                                    at_rank + "lists " + std::to_string(entry.size()) + " address" +
                                        (entry.size() == 1 ? "" : "es") + " but rank 0 lists " +
                                        std::to_string(table.front().size()) +
                                        "; every rank needs the same number (one per connection)");
        return std::nullopt;
      }
      std::vector<Endpoint> endpoints;
      endpoints.reserve(entry.size());
      for (std::size_t index = 0; index < entry.size(); ++index) {
        const auto& item = entry[index];
        const std::string at_entry =
            where + "rank " + std::to_string(rank) + ", entry " + std::to_string(index) + ": ";
        if (!item.is_string()) {
          detail::report_config_error(
              ec, errc::bad_configuration,
              at_entry + "expected an \"ip:port\" string, got " + item.dump());
          return std::nullopt;
        }
        const auto& text = item.get_ref<const std::string&>();
        Endpoint endpoint;
        if (auto problem = detail::endpoint_problem(text, endpoint); !problem.empty()) {
          detail::report_config_error(ec, errc::bad_configuration,
                                      at_entry + "\"" + text + "\": " + problem);
          return std::nullopt;
        }
        const auto [it, inserted] = seen.try_emplace({endpoint.host, endpoint.port}, rank, index);
        if (!inserted) {
          detail::report_config_error(
              ec, errc::bad_configuration,
              at_entry + "\"" + text + "\" is already listed at rank " +
                  std::to_string(it->second.first) + ", entry " +
                  std::to_string(it->second.second) +
                  "; two listeners cannot share an address and port, give each its own");
          return std::nullopt;
        }
        endpoints.push_back(std::move(endpoint));
      }
      table.push_back(std::move(endpoints));
    }
    return table;
  } catch (const std::bad_alloc&) {
    detail::report_config_error(ec, std::make_error_code(std::errc::not_enough_memory),
                                "collie: out of memory parsing a hostfile");
    return std::nullopt;
  }
}

/// As above, throwing `collie::Error` with the same message.
inline HostTable parse_hostfile(std::string_view json_text, std::string_view origin) {
  std::error_code ec;
  return detail::value_or_throw(parse_hostfile(json_text, origin, ec), ec);
}

namespace detail {

// Reads a whole file; on failure says why, naming `origin` (the path, maybe with the variable
// that named it).
inline std::optional<std::string> read_config_file(const std::filesystem::path& path,
                                                   std::string_view origin, std::string_view what,
                                                   std::error_code& ec) {
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    const int error = errno;
    report_config_error(ec, errc::bad_configuration,
                        "collie: cannot open " + std::string(what) + " " + std::string(origin) +
                            ": " + std::strerror(error) + "; check the path");
    return std::nullopt;
  }
  std::string text;
  char chunk[4096];
  std::size_t n = 0;
  while ((n = std::fread(chunk, 1, sizeof chunk, file)) > 0) text.append(chunk, n);
  const bool failed = std::ferror(file) != 0;
  const int error = errno;
  std::fclose(file);
  if (failed) {
    report_config_error(ec, errc::bad_configuration,
                        "collie: cannot read " + std::string(what) + " " + std::string(origin) +
                            ": " + std::strerror(error) + "; it must be a readable JSON file");
    return std::nullopt;
  }
  return text;
}

// load_hostfile with a custom origin, so the environment reader can add the variable's name.
inline std::optional<HostTable> load_hostfile(const std::filesystem::path& path,
                                              std::string_view origin, std::error_code& ec) {
  ec.clear();
  try {
    auto text = read_config_file(path, origin, "hostfile", ec);
    if (!text) return std::nullopt;
    return parse_hostfile(*text, origin, ec);
  } catch (const std::bad_alloc&) {
    report_config_error(ec, std::make_error_code(std::errc::not_enough_memory),
                        "collie: out of memory reading a hostfile");
    return std::nullopt;
  }
}

}  // namespace detail

/// Reads and parses a ring hostfile (see `parse_hostfile` for the format, the checks and the
/// treatment of a blank file). Messages name the path.
///
/// Errors: `errc::bad_configuration` for a file that cannot be opened or read (with the system's
/// reason) or whose contents are wrong.
///
///   auto hosts = collie::load_hostfile("/etc/collie/ring.json");
///   collie::TcpConfig config{.rank = 1, .hosts = hosts};
///
/// Throws `collie::Error`; the overload with `std::error_code&` returns nothing instead.
inline std::optional<HostTable> load_hostfile(const std::filesystem::path& path,
                                              std::error_code& ec) noexcept {
  try {
    return detail::load_hostfile(path, path.string(), ec);
  } catch (const std::bad_alloc&) {
    detail::report_config_error(ec, std::make_error_code(std::errc::not_enough_memory),
                                "collie: out of memory reading a hostfile");
    return std::nullopt;
  }
}

/// As above, throwing `collie::Error` with the same message.
inline HostTable load_hostfile(const std::filesystem::path& path) {
  std::error_code ec;
  return detail::value_or_throw(load_hostfile(path, ec), ec);
}

/// The hostfile text of a table, in the format `parse_hostfile` reads (MLX's):
/// `[["10.0.0.1:5000"],["10.0.0.2:5000"]]`, IPv6 addresses in brackets. What `collie launch`
/// writes for the ring backend's ranks.
inline std::string format_hostfile(const HostTable& hosts) {
  nlohmann::json table = nlohmann::json::array();
  for (const auto& rank : hosts) {
    nlohmann::json addresses = nlohmann::json::array();
    for (const auto& endpoint : rank) addresses.push_back(endpoint.to_string());
    table.push_back(std::move(addresses));
  }
  return table.dump();
}

}  // namespace collie
