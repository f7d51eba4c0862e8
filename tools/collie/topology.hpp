// `collie config`'s model of the hosts and the wires between them, and what it derives from it:
// which interfaces of two hosts share a link, whether the links form a ring and/or a full mesh,
// an address plan that gives each link a /30 of its own, the routes that let every host reach
// every other over the links, the per-host commands that apply both, the hostfile for the ring,
// jaccl and jaccl-ring backends, and a Graphviz drawing.
//
// Apart from the discovery script itself, everything here is pure (text in, decisions out);
// tools/collie/config.hpp runs the script on the hosts and the commands planned here.
//
// How links are found. Each host reports its interfaces (`ip -j addr`), its routing table and
// per-interface forwarding, its RDMA devices and their network interfaces
// (`/sys/class/infiniband`), and its IPv6 neighbours
// after pinging the all-nodes group (`ff02::1`) on every interface that is up: a neighbour's MAC
// address names the interface at the other end, so links are found before they have addresses.
// Two interfaces with IPv4 addresses in one subnet are joined as well. Interfaces joined this way
// form a segment; a segment of exactly two interfaces on two hosts, with no other machine on it
// and no default route through it, is a *link* (a cable). Anything bigger is a shared network: it
// is reported, used for `--over ethernet`, and never reconfigured.
#pragma once

#include <arpa/inet.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "tools/collie/hosts.hpp"
#include "tools/collie/launch.hpp"

namespace collie::tools {

struct Ipv4 {
  std::uint32_t ip = 0;  // host byte order
  int prefix = 32;

  std::uint32_t mask() const { return prefix == 0 ? 0 : ~std::uint32_t{0} << (32 - prefix); }
  std::uint32_t network() const { return ip & mask(); }
  std::string text() const {
    return std::to_string(ip >> 24) + "." + std::to_string((ip >> 16) & 255) + "." + std::to_string((ip >> 8) & 255) +
           "." + std::to_string(ip & 255);
  }
  std::string cidr() const { return text() + "/" + std::to_string(prefix); }
  /// Whether both are addresses in one subnet (same prefix, shorter than /32, same network).
  bool same_subnet(const Ipv4& other) const { return prefix == other.prefix && prefix < 32 && network() == other.network(); }
  /// Whether the two networks overlap (the shorter prefix decides).
  bool overlaps(const Ipv4& other) const {
    const int p = std::min(prefix, other.prefix);
    const std::uint32_t m = p == 0 ? 0 : ~std::uint32_t{0} << (32 - p);
    return (ip & m) == (other.ip & m);
  }
};

/// Parses "a.b.c.d" or "a.b.c.d/p"; nullopt if it is not one.
inline std::optional<Ipv4> parse_ipv4(const std::string& text) {
  Ipv4 out;
  std::string ip = text;
  if (const auto slash = text.find('/'); slash != std::string::npos) {
    ip = text.substr(0, slash);
    const std::string p = text.substr(slash + 1);
    if (p.empty() || p.size() > 2 || p.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
    out.prefix = std::stoi(p);
    if (out.prefix > 32) return std::nullopt;
  }
  in_addr a{};
  if (::inet_pton(AF_INET, ip.c_str(), &a) != 1) return std::nullopt;
  out.ip = ntohl(a.s_addr);
  return out;
}

struct Interface {
  std::string name;
  std::string mac;                         // lower case; empty when it has none
  bool up = false;
  bool loopback = false;
  std::vector<Ipv4> v4;                    // global and link addresses, not loopback
  std::vector<std::string> neighbor_macs;  // IPv6 neighbours seen on it
  std::string rdma;                        // the RDMA device on this interface, if any
  bool forwarding = false;                 // IPv4 packets that arrive on it may be forwarded
};

/// An interface name as a shell word: as it is when plain, else quoted (the names come from the
/// hosts, and Linux allows characters in them that a shell would act on).
inline std::string shell_word(const std::string& name) {
  const bool plain = !name.empty() && name.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._@/=-") == std::string::npos;
  return plain ? name : shell_quote(name);
}

/// An IPv4 route, as `ip route replace DST [via GATEWAY] dev DEV` would write it.
struct Route {
  std::string dst;  // "192.168.64.4/30"
  std::string via;  // empty: directly on the link
  std::string dev;
  bool operator==(const Route&) const = default;
  std::string command() const { return "ip route replace " + dst + (via.empty() ? "" : " via " + via) + " dev " + shell_word(dev); }
};

/// What discovery found on one host.
struct HostInfo {
  std::string ssh;       // how it was reached
  std::string hostname;  // what it calls itself
  bool root = false;     // whether the setup commands need sudo
  bool pinged = false;   // whether neighbour discovery ran (ping was there)
  std::string default_if;
  std::vector<Interface> interfaces;
  std::vector<Route> routes;  // its IPv4 routing table

  const Interface* find(const std::string& name) const {
    for (const auto& i : interfaces) {
      if (i.name == name) return &i;
    }
    return nullptr;
  }
  /// The host's main IPv4 address: the first one on its default-route interface, else the only
  /// interface with a global address. Empty when there is none or it is ambiguous.
  std::string main_address(const std::set<std::string>& link_interfaces = {}) const {
    if (const Interface* d = find(default_if); d != nullptr && !d->v4.empty()) return d->v4.front().text();
    std::vector<const Interface*> candidates;
    for (const auto& i : interfaces) {
      if (!i.loopback && i.up && !i.v4.empty() && !link_interfaces.count(i.name)) candidates.push_back(&i);
    }
    return candidates.size() == 1 ? candidates.front()->v4.front().text() : std::string();
  }
};

/// The shell script run on every host. Its output is read by parse_discovery.
inline std::string discovery_script() {
  return R"sh(command -v ip >/dev/null 2>&1 || { echo "this host has no 'ip' command (install iproute2)" >&2; exit 127; }
echo @hostname; uname -n
echo @uid; id -u
# Fresh IPv6 link-local addresses answer only after duplicate address detection (a second or two).
i=0
while [ $i -lt 20 ] && [ -n "$(ip -6 addr show tentative 2>/dev/null)" ]; do sleep 0.2; i=$((i+1)); done
if command -v ping >/dev/null 2>&1; then
  for f in /sys/class/net/*; do
    n=${f##*/}
    [ "$n" = lo ] && continue
    [ $(( $(cat "$f/flags" 2>/dev/null || echo 0) & 1 )) = 1 ] || continue
    ping -6 -n -q -c 2 -i 0.2 -w 1 -I "$n" ff02::1 >/dev/null 2>&1 &
  done
  wait
  echo @ping; echo yes
else
  echo @ping; echo no
fi
echo @addr; ip -j addr show
echo @route; ip -j -4 route show
echo @forwarding
for f in /proc/sys/net/ipv4/conf/*/forwarding; do d=${f%/forwarding}; echo "${d##*/} $(cat "$f")"; done
echo @neigh; ip -j -6 neigh show
echo @rdma
for d in /sys/class/infiniband/*; do
  [ -e "$d" ] || continue
  n=$(cat "$d/ports/1/gid_attrs/ndevs/0" 2>/dev/null)
  [ -n "$n" ] || n=$(ls "$d/device/net" 2>/dev/null | head -n 1)
  echo "${d##*/} $n"
done
echo @end
)sh";
}

namespace detail {

inline nlohmann::json parse_section_json(const std::string& text, const std::string& what, const std::string& host) {
  try {
    return text.find_first_not_of(" \n\t") == std::string::npos ? nlohmann::json::array() : nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception&) {
    throw UsageError("host " + host + ": could not read the output of `" + what + "` (is iproute2 older than 4.14, without -j?)");
  }
}

inline std::string lower(std::string s) {
  for (auto& c : s) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return s;
}

}  // namespace detail

/// Reads what discovery_script printed on host `ssh`. Throws UsageError when it is incomplete.
inline HostInfo parse_discovery(const std::string& output, const std::string& ssh) {
  std::map<std::string, std::string> sections;
  std::string current;
  std::istringstream in(output);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line[0] == '@') {
      current = line.substr(1);
      sections[current];
    } else if (!current.empty()) {
      sections[current] += line + "\n";
    }
  }
  if (!sections.count("end")) throw UsageError("host " + ssh + ": the discovery script stopped before its end");
  HostInfo h;
  h.ssh = ssh;
  h.hostname = sections["hostname"].substr(0, sections["hostname"].find('\n'));
  h.root = sections["uid"].rfind("0\n", 0) == 0;
  h.pinged = sections["ping"].rfind("yes", 0) == 0;
  for (const auto& j : detail::parse_section_json(sections["addr"], "ip -j addr", ssh)) {
    Interface i;
    i.name = j.value("ifname", "");
    i.mac = detail::lower(j.value("address", ""));
    i.loopback = j.value("link_type", "") == "loopback";
    for (const auto& flag : j.value("flags", nlohmann::json::array())) i.up = i.up || flag == "UP";
    for (const auto& a : j.value("addr_info", nlohmann::json::array())) {
      if (a.value("family", "") != "inet" || a.value("scope", "") == "host") continue;
      if (auto ip = parse_ipv4(a.value("local", "") + "/" + std::to_string(a.value("prefixlen", 32)))) i.v4.push_back(*ip);
    }
    if (!i.name.empty()) h.interfaces.push_back(std::move(i));
  }
  for (const auto& r : detail::parse_section_json(sections["route"], "ip -j route", ssh)) {
    Route route{r.value("dst", ""), r.value("gateway", ""), r.value("dev", "")};
    if (route.dst == "default" && h.default_if.empty()) h.default_if = route.dev;
    if (route.dst.find('/') == std::string::npos && route.dst != "default") route.dst += "/32";
    h.routes.push_back(route);
  }
  std::istringstream forwarding(sections["forwarding"]);
  while (std::getline(forwarding, line)) {
    std::istringstream words(line);
    std::string name;
    int on = 0;
    words >> name >> on;
    for (auto& i : h.interfaces) {
      if (i.name == name) i.forwarding = on != 0;
    }
  }
  for (const auto& n : detail::parse_section_json(sections["neigh"], "ip -j neigh", ssh)) {
    const std::string mac = detail::lower(n.value("lladdr", ""));
    bool failed = false;
    for (const auto& s : n.value("state", nlohmann::json::array())) failed = failed || s == "FAILED" || s == "INCOMPLETE";
    if (mac.empty() || failed) continue;
    for (auto& i : h.interfaces) {
      if (i.name == n.value("dev", "") && std::find(i.neighbor_macs.begin(), i.neighbor_macs.end(), mac) == i.neighbor_macs.end()) {
        i.neighbor_macs.push_back(mac);
      }
    }
  }
  std::istringstream rdma(sections["rdma"]);
  while (std::getline(rdma, line)) {
    std::istringstream words(line);
    std::string device, netdev;
    words >> device >> netdev;
    for (auto& i : h.interfaces) {
      if (!netdev.empty() && i.name == netdev) i.rdma = device;
    }
  }
  return h;
}

/// One end of a link: host index and interface name.
struct End {
  std::size_t host = 0;
  std::string interface;
  auto operator<=>(const End&) const = default;
};

/// A cable between two hosts (a.host < b.host), and the addresses its ends have or will get.
struct Link {
  End a, b;
  std::optional<Ipv4> a_address, b_address;
  bool configured = false;  // both ends already share a subnet

  /// Both ends with their addresses, a's first.
  std::array<std::pair<End, std::optional<Ipv4>>, 2> ends() const { return {{{a, a_address}, {b, b_address}}}; }
};

/// A segment with more than two interfaces, or with other machines on it.
struct SharedNetwork {
  std::vector<End> ends;
  bool others = false;  // machines that are not among the hosts answered on it
};

struct Topology {
  std::vector<HostInfo> hosts;
  std::vector<Link> links;
  std::vector<SharedNetwork> shared;

  /// Number of links between hosts i and j.
  int cables(std::size_t i, std::size_t j) const {
    int n = 0;
    for (const auto& l : links) n += (l.a.host == i && l.b.host == j) || (l.a.host == j && l.b.host == i) ? 1 : 0;
    return n;
  }
  /// The links between i and j, each with i's end first.
  std::vector<std::pair<End, End>> between(std::size_t i, std::size_t j) const {
    std::vector<std::pair<End, End>> out;
    for (const auto& l : links) {
      if (l.a.host == i && l.b.host == j) out.emplace_back(l.a, l.b);
      if (l.a.host == j && l.b.host == i) out.emplace_back(l.b, l.a);
    }
    return out;
  }
  /// Host h's main address, its link interfaces left out (addressed or not, the answer is the
  /// same before and after the links are set up).
  std::string main_address(std::size_t h) const {
    std::set<std::string> mine;
    for (const auto& l : links) {
      if (l.a.host == h) mine.insert(l.a.interface);
      if (l.b.host == h) mine.insert(l.b.interface);
    }
    return hosts[h].main_address(mine);
  }
  const Link* link_of(const End& e) const {
    for (const auto& l : links) {
      if (l.a == e || l.b == e) return &l;
    }
    return nullptr;
  }
  std::optional<Ipv4> address_of(const End& e) const {
    const Link* l = link_of(e);
    if (l == nullptr) return std::nullopt;
    return l->a == e ? l->a_address : l->b_address;
  }
  bool mesh() const {
    for (std::size_t i = 0; i < hosts.size(); ++i) {
      for (std::size_t j = i + 1; j < hosts.size(); ++j) {
        if (cables(i, j) == 0) return false;
      }
    }
    return hosts.size() >= 2;
  }
  /// A cycle through every host, as host indices starting at 0: the hosts' own order when it is
  /// one, else the first found. Two hosts with one cable are a ring. Empty when there is none.
  std::vector<std::size_t> ring() const {
    const std::size_t n = hosts.size();
    if (n < 2) return {};
    std::vector<std::size_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    auto closes = [&](const std::vector<std::size_t>& o) {
      for (std::size_t k = 0; k < o.size(); ++k) {
        if (cables(o[k], o[(k + 1) % o.size()]) == 0) return false;
      }
      return true;
    };
    if (closes(order)) return order;
    // Depth-first search for a Hamiltonian cycle; the host counts this is for are small, and the
    // search gives up after a bounded number of steps rather than take minutes.
    std::vector<std::size_t> path{0};
    std::vector<bool> used(n, false);
    used[0] = true;
    long budget = 2'000'000;
    auto search = [&](auto&& self) -> bool {
      if (--budget < 0) return false;
      if (path.size() == n) return cables(path.back(), 0) > 0;
      for (std::size_t next = 1; next < n; ++next) {
        if (used[next] || cables(path.back(), next) == 0) continue;
        used[next] = true;
        path.push_back(next);
        if (self(self)) return true;
        path.pop_back();
        used[next] = false;
      }
      return false;
    };
    return search(search) ? path : std::vector<std::size_t>{};
  }
  /// Hosts that have no link at all, and pairs that have none (for the messages).
  std::vector<std::pair<std::size_t, std::size_t>> missing_pairs() const {
    std::vector<std::pair<std::size_t, std::size_t>> out;
    for (std::size_t i = 0; i < hosts.size(); ++i) {
      for (std::size_t j = i + 1; j < hosts.size(); ++j) {
        if (cables(i, j) == 0) out.emplace_back(i, j);
      }
    }
    return out;
  }
};

/// Joins the interfaces that see each other into links and shared networks.
inline Topology find_links(std::vector<HostInfo> hosts) {
  Topology t;
  t.hosts = std::move(hosts);
  std::vector<End> ends;
  std::map<std::string, std::vector<std::size_t>> by_mac;
  for (std::size_t h = 0; h < t.hosts.size(); ++h) {
    for (const auto& i : t.hosts[h].interfaces) {
      if (i.loopback || !i.up) continue;
      if (!i.mac.empty()) by_mac[i.mac].push_back(ends.size());
      ends.push_back({h, i.name});
    }
  }
  std::vector<std::size_t> parent(ends.size());
  std::iota(parent.begin(), parent.end(), 0);
  auto root = [&](std::size_t x) {
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
  };
  auto join = [&](std::size_t x, std::size_t y) { parent[root(x)] = root(y); };
  std::vector<bool> others(ends.size(), false);
  auto iface = [&](std::size_t e) { return t.hosts[ends[e].host].find(ends[e].interface); };
  for (std::size_t e = 0; e < ends.size(); ++e) {
    for (const auto& mac : iface(e)->neighbor_macs) {
      auto it = by_mac.find(mac);
      // A MAC address on several of the hosts (cloned machines) names no one end: ignored.
      if (it != by_mac.end() && it->second.size() == 1 && ends[it->second.front()].host != ends[e].host) {
        join(e, it->second.front());
      } else if (it == by_mac.end()) {
        others[e] = true;
      }
    }
  }
  for (std::size_t x = 0; x < ends.size(); ++x) {
    for (std::size_t y = x + 1; y < ends.size(); ++y) {
      if (ends[x].host == ends[y].host) continue;
      for (const auto& p : iface(x)->v4) {
        for (const auto& q : iface(y)->v4) {
          if (p.same_subnet(q)) join(x, y);
        }
      }
    }
  }
  std::map<std::size_t, std::vector<std::size_t>> groups;
  for (std::size_t e = 0; e < ends.size(); ++e) groups[root(e)].push_back(e);
  for (const auto& [r, members] : groups) {
    if (members.size() < 2) continue;
    bool foreign = false, routed = false;
    for (auto e : members) {
      foreign = foreign || others[e];
      routed = routed || t.hosts[ends[e].host].default_if == ends[e].interface;
    }
    if (members.size() == 2 && ends[members[0]].host != ends[members[1]].host && !foreign && !routed) {
      Link l;
      l.a = ends[members[0]];
      l.b = ends[members[1]];
      if (l.b.host < l.a.host) std::swap(l.a, l.b);
      for (const auto& p : iface(members[0])->v4) {
        for (const auto& q : iface(members[1])->v4) {
          if (!l.configured && p.same_subnet(q)) {
            l.configured = true;
            l.a_address = ends[members[0]] == l.a ? p : q;
            l.b_address = ends[members[0]] == l.a ? q : p;
          }
        }
      }
      t.links.push_back(std::move(l));
    } else {
      SharedNetwork s;
      s.others = foreign;
      for (auto e : members) s.ends.push_back(ends[e]);
      t.shared.push_back(std::move(s));
    }
  }
  std::sort(t.links.begin(), t.links.end(), [](const Link& x, const Link& y) {
    return std::tie(x.a, x.b) < std::tie(y.a, y.b);
  });
  return t;
}

/// Gives every link without a shared subnet a /30 of its own, counted up from `base`, skipping
/// any subnet that overlaps an address already on one of the hosts.
inline void plan_addresses(Topology& t, const Ipv4& base) {
  std::vector<Ipv4> taken;
  for (const auto& h : t.hosts) {
    for (const auto& i : h.interfaces) taken.insert(taken.end(), i.v4.begin(), i.v4.end());
  }
  std::uint64_t next = base.network();
  const std::uint64_t end = std::uint64_t{base.network()} + (std::uint64_t{1} << (32 - base.prefix));
  for (auto& l : t.links) {
    if (l.configured) continue;
    for (;;) {
      if (next + 4 > end) {
        throw UsageError("the subnet " + base.cidr() + " has no free /30 left for every link: pass a larger one with --subnet");
      }
      const Ipv4 candidate{static_cast<std::uint32_t>(next), 30};
      next += 4;
      if (std::none_of(taken.begin(), taken.end(), [&](const Ipv4& a) { return a.overlaps(candidate); })) {
        l.a_address = Ipv4{candidate.ip + 1, 30};
        l.b_address = Ipv4{candidate.ip + 2, 30};
        break;
      }
    }
  }
}

/// Per host, the routes that make every other host's link addresses reachable over the links:
/// to each address on a link it is not on, through the first hop of a shortest path to the
/// address's owner. In a full mesh that hop is the owner itself (over their own cable);
/// otherwise hosts in between forward (see needs_forwarding). So every rank reaches every other
/// rank's addresses, not only its ring neighbours' (small all-reduces, all-to-all and send/recv
/// talk to every peer).
inline std::vector<std::vector<Route>> plan_routes(const Topology& t) {
  const std::size_t n = t.hosts.size();
  std::vector<std::vector<Route>> out(n);
  for (std::size_t h = 0; h < n; ++h) {
    // Breadth-first from h over hosts joined by links; first[x] = the neighbour of h towards x.
    std::vector<int> dist(n, -1);
    std::vector<std::size_t> first(n, h);
    std::vector<std::size_t> queue{h};
    dist[h] = 0;
    for (std::size_t q = 0; q < queue.size(); ++q) {
      const std::size_t x = queue[q];
      for (std::size_t y = 0; y < n; ++y) {
        if (dist[y] >= 0 || t.cables(x, y) == 0) continue;
        dist[y] = dist[x] + 1;
        first[y] = x == h ? y : first[x];
        queue.push_back(y);
      }
    }
    for (const auto& l : t.links) {
      if (l.a.host == h || l.b.host == h) continue;  // its own links' subnets are on the interface
      for (const auto& [end, address] : l.ends()) {
        if (!address || dist[end.host] < 0) continue;
        const auto hop = t.between(h, first[end.host]).front();  // (h's end, the neighbour's end)
        out[h].push_back({address->text() + "/32", t.address_of(hop.second)->text(), hop.first.interface});
      }
    }
  }
  return out;
}

/// Whether some host is two or more links away from another, so hosts in between must forward
/// (enabled on their link interfaces only: nothing from other networks is forwarded).
inline bool needs_forwarding(const Topology& t) { return t.hosts.size() > 2 && !t.mesh(); }

/// Per host, the commands that bring its link interfaces up with their planned addresses, add
/// the routes across the links and, where needed, let the link interfaces forward; what is
/// already in place is left out (empty: nothing to do there). `sudo -n` when discovery found the
/// host's user is not root.
inline std::vector<std::vector<std::string>> setup_commands(const Topology& t) {
  std::vector<std::vector<std::string>> out(t.hosts.size());
  auto sudo = [&](std::size_t host) { return t.hosts[host].root ? std::string() : std::string("sudo -n "); };
  for (const auto& l : t.links) {
    if (l.configured) continue;
    for (const auto& [end, address] : l.ends()) {
      out[end.host].push_back(sudo(end.host) + "ip link set dev " + shell_word(end.interface) + " up");
      out[end.host].push_back(sudo(end.host) + "ip addr replace " + address->cidr() + " dev " + shell_word(end.interface));
    }
  }
  const auto routes = plan_routes(t);
  for (std::size_t h = 0; h < t.hosts.size(); ++h) {
    for (const auto& r : routes[h]) {
      const auto& have = t.hosts[h].routes;
      if (std::find(have.begin(), have.end(), r) == have.end()) out[h].push_back(sudo(h) + r.command());
    }
  }
  if (needs_forwarding(t)) {
    for (const auto& l : t.links) {
      for (const auto& end : {l.a, l.b}) {
        if (!t.hosts[end.host].find(end.interface)->forwarding) {
          std::string key = end.interface;  // sysctl writes a dot in a name (eth0.100) as '/'
          std::replace(key.begin(), key.end(), '.', '/');
          out[end.host].push_back(sudo(end.host) + "sysctl -q -w " + shell_word("net.ipv4.conf." + key + ".forwarding=1"));
        }
      }
    }
  }
  return out;
}

/// The Graphviz drawing of the hosts and their links (edge labels: interface names).
inline std::string dot(const Topology& t) {
  auto quoted = [](const std::string& s) {
    std::string out = "\"";
    for (char c : s) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    return out + "\"";
  };
  std::string s = "graph collie {\n  node [shape=box];\n";
  for (const auto& h : t.hosts) s += "  " + quoted(h.ssh) + ";\n";
  for (const auto& l : t.links) {
    s += "  " + quoted(t.hosts[l.a.host].ssh) + " -- " + quoted(t.hosts[l.b.host].ssh) + " [label=" +
         quoted(l.a.interface + "/" + l.b.interface) + "];\n";
  }
  return s + "}\n";
}

namespace detail {

inline nlohmann::json hostfile_json(const std::string& backend, nlohmann::json hosts, const std::vector<std::string>& envs) {
  nlohmann::json out{{"backend", backend}, {"hosts", std::move(hosts)}};
  if (!envs.empty()) out["envs"] = envs;
  return out;
}

}  // namespace detail

/// What `collie config` writes: the hostfile for `backend` over the links (ring, jaccl,
/// jaccl-ring), with the hosts in rank order. Throws UsageError when the links do not allow it.
inline nlohmann::json links_hostfile(const Topology& t, const std::string& backend, const std::vector<std::string>& envs) {
  const std::size_t n = t.hosts.size();
  auto names = [&](const std::vector<std::pair<std::size_t, std::size_t>>& pairs) {
    std::string s;
    for (std::size_t k = 0; k < pairs.size() && k < 4; ++k) {
      s += (k ? ", " : "") + t.hosts[pairs[k].first].ssh + "-" + t.hosts[pairs[k].second].ssh;
    }
    return s + (pairs.size() > 4 ? ", ..." : "");
  };
  nlohmann::json hosts = nlohmann::json::array();
  if (backend == "jaccl") {
    if (!t.mesh()) {
      throw UsageError("the jaccl backend needs a link between every pair of hosts; none between " + names(t.missing_pairs()));
    }
    for (std::size_t i = 0; i < n; ++i) {
      nlohmann::json rdma = nlohmann::json::array();
      for (std::size_t j = 0; j < n; ++j) {
        if (i == j) {
          rdma.push_back(nullptr);
          continue;
        }
        std::string device;
        for (const auto& [mine, theirs] : t.between(i, j)) {
          if (device.empty()) device = t.hosts[i].find(mine.interface)->rdma;
        }
        if (device.empty()) {
          throw UsageError("the jaccl backend needs RDMA devices: host " + t.hosts[i].ssh + " has none on its link to " + t.hosts[j].ssh + " (see /sys/class/infiniband)");
        }
        rdma.push_back(device);
      }
      const std::string main = t.main_address(i);
      if (i == 0 && main.empty()) {
        throw UsageError("the jaccl backend's coordinator runs on host " + t.hosts[0].ssh + ", which has no main address every host reaches (no default route): set up its network, or write the hostfile by hand");
      }
      hosts.push_back({{"ssh", t.hosts[i].ssh}, {"ips", main.empty() ? nlohmann::json::array() : nlohmann::json::array({main})}, {"rdma", rdma}});
    }
  } else if (backend == "ring" || backend == "jaccl-ring") {
    const auto order = t.ring();
    if (order.empty()) {
      std::string why = t.missing_pairs().empty() ? "" : " (no link between " + names(t.missing_pairs()) + ")";
      throw UsageError("the links do not form a ring through all " + std::to_string(n) + " hosts" + why + ": the " + backend + " backend needs one");
    }
    // Every neighbour pair is reached over the same number of cables: the fewest on the ring.
    int per_pair = 1 << 30;
    for (std::size_t k = 0; k < n; ++k) per_pair = std::min(per_pair, t.cables(order[k], order[(k + 1) % n]));
    for (std::size_t k = 0; k < n; ++k) {
      const std::size_t me = order[k], prev = order[(k + n - 1) % n], next = order[(k + 1) % n];
      nlohmann::json entry{{"ssh", t.hosts[me].ssh}};
      if (backend == "ring") {
        // Rank r connects to the addresses of rank r+1: so a rank listens on its ends of the
        // cables from its previous neighbour.
        nlohmann::json ips = nlohmann::json::array();
        const auto from_prev = t.between(me, prev);
        for (int c = 0; c < per_pair; ++c) ips.push_back(t.address_of(from_prev[static_cast<std::size_t>(c)].first)->text());
        entry["ips"] = ips;
      } else {
        const std::string main = t.main_address(me);
        if (k == 0 && main.empty()) {
          throw UsageError("the jaccl-ring backend's coordinator runs on host " + t.hosts[me].ssh + ", which has no main address every host reaches (no default route)");
        }
        entry["ips"] = main.empty() ? nlohmann::json::array() : nlohmann::json::array({main});
        nlohmann::json rdma = nlohmann::json::array();
        for (std::size_t j = 0; j < n; ++j) {
          const std::size_t other = order[j];
          if (other == me || (other != prev && other != next)) {
            rdma.push_back(nullptr);
            continue;
          }
          nlohmann::json devices = nlohmann::json::array();
          const auto cables = t.between(me, other);
          for (int c = 0; c < per_pair; ++c) {
            const std::string d = t.hosts[me].find(cables[static_cast<std::size_t>(c)].first.interface)->rdma;
            if (d.empty()) {
              throw UsageError("the jaccl-ring backend needs RDMA devices: host " + t.hosts[me].ssh + " has none on " + cables[static_cast<std::size_t>(c)].first.interface + ", its link to " + t.hosts[other].ssh);
            }
            devices.push_back(d);
          }
          rdma.push_back(devices.size() == 1 ? devices[0] : devices);
        }
        entry["rdma"] = rdma;
      }
      hosts.push_back(entry);
    }
  } else {
    throw UsageError("unknown backend \"" + backend + "\" for collie config: choose ring, jaccl or jaccl-ring");
  }
  return detail::hostfile_json(backend, std::move(hosts), envs);
}

/// `--over ethernet`: every host listens on its main address (a ring over the shared network).
inline nlohmann::json ethernet_hostfile(const Topology& t, const std::vector<std::string>& envs) {
  nlohmann::json hosts = nlohmann::json::array();
  for (std::size_t i = 0; i < t.hosts.size(); ++i) {
    const std::string main = t.main_address(i);
    if (main.empty()) {
      throw UsageError("host " + t.hosts[i].ssh + " has no main address (no default route and not exactly one addressed interface besides its links): write the hostfile's \"ips\" by hand");
    }
    hosts.push_back({{"ssh", t.hosts[i].ssh}, {"ips", {main}}});
  }
  return detail::hostfile_json("ring", std::move(hosts), envs);
}

/// The backend `collie config` picks when none is asked for: jaccl over a mesh of RDMA links,
/// jaccl-ring over a ring of them, else ring.
inline std::string pick_backend(const Topology& t) {
  bool all_rdma = !t.links.empty();
  for (const auto& l : t.links) {
    all_rdma = all_rdma && !t.hosts[l.a.host].find(l.a.interface)->rdma.empty() &&
               !t.hosts[l.b.host].find(l.b.interface)->rdma.empty();
  }
  if (all_rdma && t.mesh() && !t.main_address(0).empty()) return "jaccl";
  if (all_rdma && !t.ring().empty() && !t.main_address(0).empty()) return "jaccl-ring";
  return "ring";
}

}  // namespace collie::tools
