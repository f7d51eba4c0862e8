// The launcher's host list: which machines a job runs on, how to reach each one (ssh), the
// addresses its ranks listen on (ring) and its RDMA devices (jaccl). Built from `--hosts` or from
// a hostfile in either of the reference launcher's two schemas:
//
//   [{"ssh": "node1", "ips": ["10.0.0.1"]}, {"ssh": "node2", "ips": ["10.0.0.2"]}]
//   {"backend": "ring", "envs": ["K=V"], "hosts": [ ...as above... ]}
//
// A host's "rdma" is a list with one entry per host of the job: null on its own position, a
// device name, or a list of names (several cables).
#pragma once

#include <nlohmann/json.hpp>

#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace collie::tools {

/// Bad input to a `collie` subcommand: the message is one line, for the user, with what to do.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Host {
  std::string ssh;               // what to ssh to; a loopback name or address means this machine
  std::vector<std::string> ips;  // addresses its ranks listen on (ring backend)
  nlohmann::json rdma;           // null, or one entry per host of the job (jaccl backends)

  bool local() const { return ssh.empty() || ssh == "127.0.0.1" || ssh == "localhost" || ssh == "::1"; }
};

struct HostList {
  std::optional<std::string> backend;  // from the hostfile's object form
  std::vector<std::string> envs;       // "K=V", from the hostfile's object form
  std::vector<Host> hosts;
};

namespace detail {

inline bool looks_like_ip(const std::string& s) {
  if (s.empty()) return false;
  if (s.find(':') != std::string::npos) return true;  // IPv6
  int dots = 0;
  for (char ch : s) {
    if (ch == '.') {
      ++dots;
    } else if (ch < '0' || ch > '9') {
      return false;
    }
  }
  return dots == 3;
}

inline Host host_from_json(const nlohmann::json& j, std::size_t index, const std::string& where) {
  const std::string at = where + ": host " + std::to_string(index);
  if (!j.is_object()) throw UsageError(at + " is not an object like {\"ssh\": \"name\", \"ips\": [\"10.0.0.1\"]}");
  Host h;
  for (const auto& [key, value] : j.items()) {
    if (key == "ssh") {
      if (!value.is_string()) throw UsageError(at + ": \"ssh\" must be a string");
      h.ssh = value.get<std::string>();
    } else if (key == "ips") {
      if (!value.is_array()) throw UsageError(at + ": \"ips\" must be a list of addresses");
      for (const auto& ip : value) {
        if (!ip.is_string()) throw UsageError(at + ": \"ips\" must be a list of address strings");
        h.ips.push_back(ip.get<std::string>());
      }
    } else if (key == "rdma") {
      if (!value.is_array() && !value.is_null()) {
        throw UsageError(at + ": \"rdma\" must be a list with one entry (null, a device or a list of devices) per host");
      }
      h.rdma = value;
    } else {
      throw UsageError(at + ": unknown key \"" + key + "\" (a host has \"ssh\", \"ips\" and \"rdma\")");
    }
  }
  if (h.ssh.empty() && !h.ips.empty()) h.ssh = h.ips.front();
  if (h.ssh.empty()) throw UsageError(at + " has neither \"ssh\" nor \"ips\"");
  return h;
}

}  // namespace detail

/// Parses hostfile text; `where` names it in errors. Throws UsageError.
inline HostList parse_hostfile(const std::string& text, const std::string& where) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    std::string what = e.what();
    if (auto at = what.find("parse error"); at != std::string::npos) what = what.substr(at);
    throw UsageError(where + " is not valid JSON (" + what + ")");
  }
  HostList list;
  const nlohmann::json* hosts = &j;
  if (j.is_object()) {
    for (const auto& [key, value] : j.items()) {
      if (key == "backend") {
        if (!value.is_string()) throw UsageError(where + ": \"backend\" must be a string");
        list.backend = value.get<std::string>();
      } else if (key == "envs") {
        if (!value.is_array()) throw UsageError(where + ": \"envs\" must be a list of \"K=V\" strings");
        for (const auto& e : value) {
          if (!e.is_string()) throw UsageError(where + ": \"envs\" must be a list of \"K=V\" strings");
          list.envs.push_back(e.get<std::string>());
        }
      } else if (key != "hosts") {
        throw UsageError(where + ": unknown key \"" + key + "\" (expected \"backend\", \"envs\" and \"hosts\")");
      }
    }
    if (!j.contains("hosts")) throw UsageError(where + " has no \"hosts\" list");
    hosts = &j["hosts"];
  }
  if (!hosts->is_array() || hosts->empty()) {
    throw UsageError(where + " lists no hosts: expected [{\"ssh\": \"name\", \"ips\": [\"10.0.0.1\"]}, ...]");
  }
  for (std::size_t i = 0; i < hosts->size(); ++i) list.hosts.push_back(detail::host_from_json((*hosts)[i], i, where));
  return list;
}

inline HostList read_hostfile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw UsageError("cannot read the hostfile " + path);
  std::stringstream text;
  text << in.rdbuf();
  return parse_hostfile(text.str(), "hostfile " + path);
}

/// `--hosts a,b,c`: names to ssh to; entries that are IP addresses are also the ring's addresses.
inline HostList hosts_from_list(const std::string& comma_list) {
  HostList list;
  std::stringstream in(comma_list);
  std::string name;
  while (std::getline(in, name, ',')) {
    if (name.empty()) throw UsageError("--hosts \"" + comma_list + "\" has an empty entry");
    Host h;
    h.ssh = name;
    if (detail::looks_like_ip(name)) h.ips.push_back(name);
    list.hosts.push_back(std::move(h));
  }
  if (list.hosts.empty()) throw UsageError("--hosts is empty");
  return list;
}

}  // namespace collie::tools
