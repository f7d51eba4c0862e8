// `collie config`: finds how the hosts are wired and writes the hostfile for them.
//
//   collie config --hosts n1,n2,n3,n4                  report the links, print the hostfile
//   collie config --hosts n1,n2,n3,n4 --auto-setup --output hosts.json
//   collie config --hosts n1,n2,n3,n4 --dot | dot -Tpng > links.png
//   collie config --hosts n1,n2 --over ethernet --output hosts.json
//
// Steps: run the discovery script on every host at once (tools/collie/topology.hpp says what it
// reads); join interfaces into links; check for a ring and a full mesh; give every link without
// a shared subnet a /30 of its own, plan the routes between hosts, and print the commands that
// are not in place yet, per host (or run them: `--auto-setup`); once nothing is left to do, ping
// every host's addresses from every other; write the hostfile. Standard output carries the
// product (the hostfile, or the drawing with --dot); the report goes to standard error.
#pragma once

#include <chrono>
#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tools/collie/hosts.hpp"
#include "tools/collie/launch.hpp"
#include "tools/collie/remote.hpp"
#include "tools/collie/topology.hpp"

namespace collie::tools {

struct ConfigOptions {
  std::string hosts;                 // --hosts
  std::string hostfile;              // --hostfile: take the hosts (their "ssh") from it
  std::string over = "links";        // --over links|thunderbolt|ethernet
  std::string backend;               // --backend ring|jaccl|jaccl-ring; empty: picked
  std::string output;                // --output: where the hostfile goes (else stdout)
  bool dot = false;                  // --dot
  bool auto_setup = false;           // --auto-setup
  std::string subnet = "192.168.64.0/18";  // --subnet: where the links' /30s come from
  std::vector<std::string> env;      // --env K=V: into the hostfile's "envs"
  std::string ssh = "ssh -o BatchMode=yes -o ConnectTimeout=5";
  int timeout_s = 60;                // --timeout: per step on every host
  bool verbose = false;
};

namespace detail {

inline void report(const std::string& line) { std::fprintf(stderr, "collie config: %s\n", line.c_str()); }

inline std::string why_failed(const Host& host, const Ran& r, const std::vector<std::string>& ssh, const std::string& step) {
  std::string line = r.last_error_line();
  if (r.timed_out) return "host " + host.ssh + ": " + step + " did not finish in time (is the host up? does `" + ssh.front() + " " + host.ssh + " true` return?)";
  if (!host.local() && r.code == 255) {
    return "cannot reach host " + host.ssh + " through `" + ssh.front() + "`" + (line.empty() ? "" : " (" + line + ")") +
           ": check that `" + ssh.front() + " " + host.ssh + " true` works without a password";
  }
  return "host " + host.ssh + ": " + step + " failed with exit code " + std::to_string(r.code) + (line.empty() ? "" : ": " + line);
}

// Runs `scripts[i]` on host i (skipping empty ones); reports each failure in one line and says
// whether all succeeded.
inline bool run_on_hosts(const std::vector<Host>& hosts, const std::vector<std::string>& scripts, const ConfigOptions& o,
                         const std::vector<std::string>& ssh, const std::string& step, std::vector<Ran>* results = nullptr) {
  std::vector<std::vector<std::string>> commands;
  std::vector<std::size_t> which;
  for (std::size_t i = 0; i < hosts.size(); ++i) {
    if (scripts[i].empty()) continue;
    commands.push_back(on_host(ssh, hosts[i], scripts[i]));
    which.push_back(i);
  }
  const auto ran = run_all(commands, std::chrono::seconds(o.timeout_s));
  if (results != nullptr) results->assign(hosts.size(), Ran{0, false, {}, {}});
  bool ok = true;
  for (std::size_t k = 0; k < ran.size(); ++k) {
    if (results != nullptr) (*results)[which[k]] = ran[k];
    if (ran[k].code != 0 || ran[k].timed_out) {
      report(why_failed(hosts[which[k]], ran[k], ssh, step));
      ok = false;
    }
  }
  return ok;
}

inline void describe(const Topology& t, bool verbose) {
  for (const auto& h : t.hosts) {
    std::string line = "host " + h.ssh + (h.hostname.empty() || h.hostname == h.ssh ? "" : " (" + h.hostname + ")");
    if (!h.pinged) line += ": no `ping` there (install iputils-ping), so only links that already have addresses are found";
    report(line);
    if (!verbose) continue;
    for (const auto& i : h.interfaces) {
      if (i.loopback) continue;
      std::string s = "  " + i.name + (i.up ? " up" : " down") + (i.mac.empty() ? "" : " " + i.mac);
      for (const auto& a : i.v4) s += " " + a.cidr();
      if (!i.rdma.empty()) s += " rdma " + i.rdma;
      if (!i.neighbor_macs.empty()) s += " (" + std::to_string(i.neighbor_macs.size()) + " neighbours)";
      if (i.name == h.default_if) s += " (default route)";
      report(s);
    }
  }
  for (const auto& l : t.links) {
    const bool planned = !l.configured;
    report("link " + t.hosts[l.a.host].ssh + ":" + l.a.interface + " -- " + t.hosts[l.b.host].ssh + ":" + l.b.interface +
           "  " + (l.a_address ? l.a_address->cidr() : "?") + " -- " + (l.b_address ? l.b_address->cidr() : "?") +
           (planned ? "  (new)" : ""));
  }
  for (const auto& s : t.shared) {
    std::string line = "shared network (not a link, left as it is):";
    for (const auto& e : s.ends) line += " " + t.hosts[e.host].ssh + ":" + e.interface;
    if (s.others) line += " and other machines";
    report(line);
  }
  const auto ring = t.ring();
  std::string ring_line = "ring: ";
  if (ring.empty()) {
    ring_line += "no";
  } else {
    for (auto h : ring) ring_line += t.hosts[h].ssh + " -> ";
    ring_line += t.hosts[ring.front()].ssh;
  }
  report(ring_line);
  report(std::string("full mesh: ") + (t.mesh() ? "yes" : "no"));
}

// An address a rank listens on: its host, the address, and where it is (for messages).
struct Target {
  std::size_t host;
  std::string address;
  std::string where;
};

// The addresses to check: every host's address on every link, or (ethernet) its main address.
inline std::vector<Target> targets(const Topology& t, const nlohmann::json& hostfile, bool ethernet) {
  std::vector<Target> out;
  if (ethernet) {
    for (std::size_t h = 0; h < t.hosts.size(); ++h) out.push_back({h, hostfile["hosts"][h]["ips"][0].get<std::string>(), "its main address"});
    return out;
  }
  for (const auto& l : t.links) {
    for (const auto& [end, address] : l.ends()) {
      if (address) out.push_back({end.host, address->text(), "on " + end.interface});
    }
  }
  return out;
}

// From every host, one ping to every other host's addresses: what the ranks need (a rank talks
// to every other rank, over the links and the routes across them).
inline bool check_reach(const Topology& t, const std::vector<Target>& to, const std::vector<Host>& hosts, const ConfigOptions& o,
                        const std::vector<std::string>& ssh) {
  std::vector<std::string> scripts(hosts.size());
  for (std::size_t h = 0; h < hosts.size(); ++h) {
    if (!t.hosts[h].pinged) continue;
    for (const auto& target : to) {
      if (target.host == h) continue;
      scripts[h] += "{ ping -n -q -c 1 -W 3 " + target.address + " >/dev/null 2>&1 || echo " +
                    shell_quote("no answer from " + t.hosts[target.host].ssh + " (" + target.address + ", " + target.where + ")") +
                    "; } &\n";
    }
    if (!scripts[h].empty()) scripts[h] += "wait\n";
  }
  std::vector<Ran> ran;
  bool ok = run_on_hosts(hosts, scripts, o, ssh, "the check of the links", &ran);
  for (std::size_t h = 0; h < hosts.size(); ++h) {
    std::istringstream lines(ran[h].out);
    std::string line;
    while (std::getline(lines, line)) {
      if (line.rfind("no answer", 0) != 0) continue;
      report("from " + hosts[h].ssh + ": " + line);
      ok = false;
    }
  }
  if (!ok) report("the hosts do not reach each other yet: check the cables and the commands above, then run collie config again");
  return ok;
}

}  // namespace detail

/// Runs `collie config`; returns the exit code. Throws UsageError for bad options.
inline int run_config(const ConfigOptions& o) {
  if (o.over != "links" && o.over != "thunderbolt" && o.over != "ethernet") {
    throw UsageError("--over \"" + o.over + "\": choose links (thunderbolt) or ethernet");
  }
  if (!o.backend.empty() && o.backend != "ring" && o.backend != "jaccl" && o.backend != "jaccl-ring") {
    throw UsageError("unknown backend \"" + o.backend + "\" for collie config: choose ring, jaccl or jaccl-ring");
  }
  if (o.over == "ethernet" && !o.backend.empty() && o.backend != "ring") {
    throw UsageError("--over ethernet writes a hostfile for the ring backend; jaccl needs --over links");
  }
  const auto subnet = parse_ipv4(o.subnet);
  if (!subnet || subnet->prefix > 30 || o.subnet.find('/') == std::string::npos) {
    throw UsageError("--subnet \"" + o.subnet + "\" is not an IPv4 network like 192.168.64.0/18");
  }
  if (o.timeout_s < 1) throw UsageError("--timeout must be at least 1 second");
  for (const auto& kv : o.env) {
    if (kv.find('=') == std::string::npos || kv.front() == '=') throw UsageError("--env \"" + kv + "\" is not NAME=VALUE");
  }
  if (o.hosts.empty() && o.hostfile.empty()) throw UsageError("name the hosts: --hosts n1,n2,... or --hostfile hosts.json");
  const std::vector<Host> hosts = (o.hostfile.empty() ? hosts_from_list(o.hosts) : read_hostfile(o.hostfile)).hosts;
  std::set<std::string> seen;
  for (const auto& h : hosts) {
    if (!seen.insert(h.ssh).second) throw UsageError("host " + h.ssh + " is named twice");
  }
  const std::vector<std::string> ssh = split_words(o.ssh, "--ssh");
  if (ssh.empty()) throw UsageError("--ssh is empty");

  try {
    std::vector<Ran> found;
    if (!detail::run_on_hosts(hosts, std::vector<std::string>(hosts.size(), discovery_script()), o, ssh, "discovery", &found)) return 1;
    std::vector<HostInfo> infos;
    for (std::size_t i = 0; i < hosts.size(); ++i) infos.push_back(parse_discovery(found[i].out, hosts[i].ssh));
    Topology t = find_links(std::move(infos));

    nlohmann::json hostfile;
    std::vector<std::vector<std::string>> commands(hosts.size());
    if (o.over == "ethernet") {
      hostfile = ethernet_hostfile(t, o.env);
      detail::describe(t, o.verbose);
    } else {
      if (t.hosts.size() < 2) throw UsageError("links join two or more hosts: name at least two (or use --over ethernet)");
      plan_addresses(t, *subnet);
      commands = setup_commands(t);
      detail::describe(t, o.verbose);
      if (t.links.empty()) {
        throw UsageError("no links found between the hosts: are the cables' interfaces up on both ends (`ip link set dev IF up`)?");
      }
      const std::string backend = o.backend.empty() ? pick_backend(t) : o.backend;
      hostfile = links_hostfile(t, backend, o.env);
      detail::report("backend: " + backend);
    }

    bool pending = false;
    for (const auto& c : commands) pending = pending || !c.empty();
    if (pending && o.auto_setup) {
      std::vector<std::string> scripts(hosts.size());
      for (std::size_t i = 0; i < hosts.size(); ++i) {
        if (commands[i].empty()) continue;
        scripts[i] = "set -e\n";
        for (const auto& c : commands[i]) scripts[i] += c + "\n";
      }
      if (!detail::run_on_hosts(hosts, scripts, o, ssh, "the set-up")) return 1;
      std::size_t fresh = 0, busy = 0;
      for (const auto& l : t.links) fresh += l.configured ? 0 : 1;
      for (const auto& c : commands) busy += c.empty() ? 0 : 1;
      detail::report("set up " + std::to_string(fresh) + " new link(s) and the routes between the hosts on " + std::to_string(busy) + " host(s)");
      pending = false;
    } else if (pending) {
      detail::report("run these on each host (or pass --auto-setup) before launching:");
      for (std::size_t i = 0; i < hosts.size(); ++i) {
        if (commands[i].empty()) continue;
        detail::report("  on " + hosts[i].ssh + ":");
        for (const auto& c : commands[i]) detail::report("    " + c);
      }
    }
    if (!pending && !detail::check_reach(t, detail::targets(t, hostfile, o.over == "ethernet"), hosts, o, ssh)) return 1;

    const std::string text = hostfile.dump(2) + "\n";
    if (!o.output.empty()) {
      std::ofstream out(o.output);
      if (!(out << text)) throw UsageError("cannot write the hostfile " + o.output);
      detail::report("wrote " + o.output);
    } else if (!o.dot) {
      std::fputs(text.c_str(), stdout);
    }
    if (o.dot) std::fputs(dot(t).c_str(), stdout);
    return 0;
  } catch (const UsageError& e) {
    // Past the options, a problem is the hosts' (unreachable, or not wired as asked): exit 1.
    detail::report(e.what());
    return 1;
  }
}

}  // namespace collie::tools
