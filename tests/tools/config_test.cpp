// collie config's model of hosts and cables (tools/collie/topology.hpp), fed the text the
// discovery script prints on each host: what parse_discovery reads from it, how find_links joins
// interfaces into links and shared networks, ring() and mesh(), the /30 address plan, the /32
// routes and forwarding between hosts that are not adjacent, the set-up commands (and that none
// are left once everything is in place), the ring, jaccl, jaccl-ring and ethernet hostfiles, the
// backend picked, the Graphviz drawing and parse_ipv4. No processes, no network.
#include "tools/collie/topology.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstdio>
#include <initializer_list>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

using namespace collie::tools;
using nlohmann::json;

namespace doctest {
template <>
struct StringMaker<std::vector<std::string>> {
  static String convert(const std::vector<std::string>& v) {
    std::string s = "{";
    for (std::size_t k = 0; k < v.size(); ++k) s += (k ? ", \"" : "\"") + v[k] + "\"";
    return (s + "}").c_str();
  }
};
template <>
struct StringMaker<std::vector<std::size_t>> {
  static String convert(const std::vector<std::size_t>& v) {
    std::string s = "{";
    for (std::size_t k = 0; k < v.size(); ++k) s += (k ? ", " : "") + std::to_string(v[k]);
    return (s + "}").c_str();
  }
};
}  // namespace doctest

namespace {

// One network interface of a simulated host.
struct Nic {
  std::string name;
  std::string mac;
  std::vector<std::string> v4;          // "192.168.64.1/30"
  std::vector<std::string> neighbours;  // MACs that answered the ping to ff02::1 on it
  std::string rdma;                     // the RDMA device whose netdev it is
  bool forwarding = false;
  bool up = true;
};

// One simulated host: what its discovery output is made of.
struct Machine {
  std::string ssh;
  int uid = 1000;
  bool pinged = true;
  bool complete = true;  // false: the output stops before `@end`
  std::vector<Nic> nics;
  json routes = json::array();  // besides the kernel's routes to the interfaces' own subnets
  std::string extra_rdma;       // more `@rdma` lines, "DEVICE NETDEV\n"
};

// The IPv6 link-local address (EUI-64) an interface with this MAC has, as `ip` prints it.
std::string link_local(const std::string& mac) {
  unsigned b[6] = {};
  std::sscanf(mac.c_str(), "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]);
  char s[64];
  std::snprintf(s, sizeof s, "fe80::%x:%x:%x:%x", ((b[0] ^ 2u) << 8) | b[1], (b[2] << 8) | 0xffu,
                0xfe00u | b[3], (b[4] << 8) | b[5]);
  return s;
}

// "192.168.64.1/30" -> {"192.168.64.0/30", "192.168.64.1", 30}, computed here rather than with
// the parse_ipv4 under test.
struct Cidr {
  std::string network, address;
  unsigned prefix;
};
Cidr split_cidr(const std::string& cidr) {
  unsigned a, b, c, d, p;
  REQUIRE(std::sscanf(cidr.c_str(), "%u.%u.%u.%u/%u", &a, &b, &c, &d, &p) == 5);
  const std::uint32_t ip = a << 24 | b << 16 | c << 8 | d;
  const std::uint32_t net = p == 0 ? 0 : ip & (~std::uint32_t{0} << (32 - p));
  const std::string text = std::to_string(net >> 24) + "." + std::to_string((net >> 16) & 255) + "." +
                           std::to_string((net >> 8) & 255) + "." + std::to_string(net & 255);
  return {text + "/" + std::to_string(p), cidr.substr(0, cidr.find('/')), p};
}

// An `ip -j -4 route show` entry; a /32 destination is written without its suffix, as ip does.
json route(const std::string& dst, const std::string& gateway, const std::string& dev) {
  return {{"dst", dst}, {"gateway", gateway}, {"dev", dev}};
}

// What discovery_script() prints on the machine.
std::string discovery_output(const Machine& m) {
  json addr = json::array();
  json lo;
  lo["ifindex"] = 1;
  lo["ifname"] = "lo";
  lo["flags"] = {"LOOPBACK", "UP", "LOWER_UP"};
  lo["mtu"] = 65536;
  lo["operstate"] = "UNKNOWN";
  lo["link_type"] = "loopback";
  lo["address"] = "00:00:00:00:00:00";
  lo["broadcast"] = "00:00:00:00:00:00";
  lo["addr_info"] = json::array();
  lo["addr_info"].push_back({{"family", "inet"}, {"local", "127.0.0.1"}, {"prefixlen", 8}, {"scope", "host"}});
  lo["addr_info"].push_back({{"family", "inet6"}, {"local", "::1"}, {"prefixlen", 128}, {"scope", "host"}});
  addr.push_back(lo);
  json kernel_routes = json::array();
  json neigh = json::array();
  std::string forwarding = "all 0\ndefault 0\nlo 0\n";
  std::string rdma;
  int index = 2;
  for (const auto& n : m.nics) {
    json i;
    i["ifindex"] = index++;
    i["ifname"] = n.name;
    i["flags"] = n.up ? json{"BROADCAST", "MULTICAST", "UP", "LOWER_UP"} : json{"BROADCAST", "MULTICAST"};
    i["mtu"] = 1500;
    i["operstate"] = n.up ? "UP" : "DOWN";
    i["link_type"] = "ether";
    i["address"] = n.mac;
    i["broadcast"] = "ff:ff:ff:ff:ff:ff";
    i["addr_info"] = json::array();
    for (const auto& a : n.v4) {
      const Cidr c = split_cidr(a);
      i["addr_info"].push_back(
          {{"family", "inet"}, {"local", c.address}, {"prefixlen", c.prefix}, {"scope", "global"}, {"label", n.name}});
      if (c.prefix < 32) {
        kernel_routes.push_back(
            {{"dst", c.network}, {"dev", n.name}, {"protocol", "kernel"}, {"scope", "link"}, {"prefsrc", c.address}});
      }
    }
    if (n.up) {
      i["addr_info"].push_back(
          {{"family", "inet6"}, {"local", link_local(n.mac)}, {"prefixlen", 64}, {"scope", "link"}});
    }
    addr.push_back(i);
    for (const auto& mac : n.neighbours) {
      neigh.push_back({{"dst", link_local(mac)}, {"dev", n.name}, {"lladdr", mac}, {"state", {"REACHABLE"}}});
    }
    forwarding += n.name + (n.forwarding ? " 1\n" : " 0\n");
    if (!n.rdma.empty()) rdma += n.rdma + " " + n.name + "\n";
  }
  json routes = m.routes;
  for (const auto& r : kernel_routes) routes.push_back(r);
  std::string out = "@hostname\n" + m.ssh + "\n@uid\n" + std::to_string(m.uid) + "\n";
  out += std::string("@ping\n") + (m.pinged ? "yes" : "no") + "\n";
  out += "@addr\n" + addr.dump() + "\n@route\n" + routes.dump() + "\n@forwarding\n" + forwarding;
  out += "@neigh\n" + neigh.dump() + "\n@rdma\n" + rdma + m.extra_rdma;
  if (m.complete) out += "@end\n";
  return out;
}

enum class Seen { both, first_only, second_only };

// Hosts, their interfaces and the cables between them, turned into discovery output.
struct Lab {
  std::vector<Machine> machines;

  explicit Lab(std::initializer_list<std::string> names) {
    for (const auto& n : names) machines.push_back({n});
  }
  Machine& host(const std::string& ssh) {
    for (auto& m : machines) {
      if (m.ssh == ssh) return m;
    }
    throw std::logic_error("the test names no host " + ssh);
  }
  // The interface, created with a MAC of its own (02:00:00:00:HOST:NIC) when it is new.
  Nic& nic(const std::string& ssh, const std::string& name) {
    Machine& m = host(ssh);
    for (auto& n : m.nics) {
      if (n.name == name) return n;
    }
    char mac[32];
    std::snprintf(mac, sizeof mac, "02:00:00:00:%02x:%02x", static_cast<unsigned>(&m - machines.data() + 1),
                  static_cast<unsigned>(m.nics.size() + 1));
    m.nics.push_back({name, mac});
    return m.nics.back();
  }
  // A cable: each end's neighbour table lists the other end's MAC (or only one of them does).
  void cable(const std::string& x, const std::string& ix, const std::string& y, const std::string& iy,
             Seen seen = Seen::both) {
    const std::string mx = nic(x, ix).mac, my = nic(y, iy).mac;
    if (seen != Seen::second_only) nic(x, ix).neighbours.push_back(my);
    if (seen != Seen::first_only) nic(y, iy).neighbours.push_back(mx);
  }
  std::vector<HostInfo> discover() const {
    std::vector<HostInfo> out;
    for (const auto& m : machines) out.push_back(parse_discovery(discovery_output(m), m.ssh));
    return out;
  }
  Topology topology() const { return find_links(discover()); }
};

// A link as "a.lb 192.168.64.1/30 -- b.la 192.168.64.2/30" ("-" for no address).
std::vector<std::string> describe_links(const Topology& t) {
  std::vector<std::string> out;
  auto end = [&](const End& e, const std::optional<Ipv4>& a) {
    return t.hosts[e.host].ssh + "." + e.interface + " " + (a ? a->cidr() : "-");
  };
  for (const auto& l : t.links) out.push_back(end(l.a, l.a_address) + " -- " + end(l.b, l.b_address));
  return out;
}

// A shared network as "a.lan b.lan" (+ " others").
std::vector<std::string> describe_shared(const Topology& t) {
  std::vector<std::string> out;
  for (const auto& s : t.shared) {
    std::string d;
    for (const auto& e : s.ends) d += (d.empty() ? "" : " ") + t.hosts[e.host].ssh + "." + e.interface;
    out.push_back(d + (s.others ? " others" : ""));
  }
  return out;
}

std::vector<std::string> route_commands(const std::vector<Route>& routes) {
  std::vector<std::string> out;
  for (const auto& r : routes) out.push_back(r.command());
  return out;
}

bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

const Ipv4 kBase = *parse_ipv4("192.168.64.0/18");

// Four hosts with a cable between every pair, host X's end to host Y named "lY"; the cables have
// no addresses yet. Cable a-d is in d's neighbour table only, b-c in b's only (a ping's answer can
// be missed on one side).
Lab full_mesh_of_four() {
  Lab lab{"a", "b", "c", "d"};
  lab.cable("a", "lb", "b", "la");
  lab.cable("a", "lc", "c", "la");
  lab.cable("a", "ld", "d", "la", Seen::second_only);
  lab.cable("b", "lc", "c", "lb", Seen::first_only);
  lab.cable("b", "ld", "d", "lb");
  lab.cable("c", "ld", "d", "lc");
  return lab;
}

// The ring a-b-c-d-a with the hosts listed a, c, b, d (host X's end to Y named "lY"); d logs in
// as root.
Lab ring_out_of_order() {
  Lab lab{"a", "c", "b", "d"};
  lab.cable("a", "lb", "b", "la");
  lab.cable("b", "lc", "c", "lb");
  lab.cable("c", "ld", "d", "lc");
  lab.cable("d", "la", "a", "ld");
  lab.host("d").uid = 0;
  return lab;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// parse_discovery

TEST_CASE("parse_discovery reads interfaces, addresses, routes, forwarding, neighbours and RDMA devices") {
  // Shaped like real output of the script, with `ip -j` on one line per section.
  const std::string output = R"(@hostname
node1
@uid
1000
@ping
yes
@addr
[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP","LOWER_UP"],"mtu":65536,"qdisc":"noqueue","operstate":"UNKNOWN","group":"default","txqlen":1000,"link_type":"loopback","address":"00:00:00:00:00:00","broadcast":"00:00:00:00:00:00","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8,"scope":"host","label":"lo","valid_life_time":4294967295,"preferred_life_time":4294967295},{"family":"inet6","local":"::1","prefixlen":128,"scope":"host","valid_life_time":4294967295,"preferred_life_time":4294967295}]},{"ifindex":2,"ifname":"lan","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"link_type":"ether","address":"52:54:00:12:34:56","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[{"family":"inet","local":"10.77.0.1","prefixlen":24,"broadcast":"10.77.0.255","scope":"global","label":"lan"},{"family":"inet","local":"169.254.3.4","prefixlen":16,"scope":"link","label":"lan"},{"family":"inet","local":"10.77.9.9","prefixlen":32,"scope":"host","label":"lan"},{"family":"inet6","local":"fe80::5054:ff:fe12:3456","prefixlen":64,"scope":"link"}]},{"ifindex":3,"ifname":"lb","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1500,"link_type":"ether","address":"A6:7B:2B:C7:48:F6","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[{"family":"inet","local":"192.168.64.1","prefixlen":30,"scope":"global"},{"family":"inet6","local":"fe80::a47b:2bff:fec7:48f6","prefixlen":64,"scope":"link"}]},{"ifindex":4,"ifname":"lc","flags":["BROADCAST","MULTICAST"],"mtu":1500,"link_type":"ether","address":"a6:7b:2b:c7:48:f7","broadcast":"ff:ff:ff:ff:ff:ff","addr_info":[]}]
@route
[{"dst":"default","gateway":"10.77.0.254","dev":"lan"},{"dst":"default","gateway":"192.168.64.2","dev":"lb","metric":500},{"dst":"10.77.0.0/24","dev":"lan","protocol":"kernel","scope":"link","prefsrc":"10.77.0.1"},{"dst":"192.168.64.0/30","dev":"lb","protocol":"kernel","scope":"link","prefsrc":"192.168.64.1"},{"dst":"192.168.64.13","gateway":"192.168.64.2","dev":"lb"}]
@forwarding
all 0
default 0
lan 0
lb 1
lc 0
lo 0
@neigh
[{"dst":"fe80::e856:beff:fe08:aa87","dev":"lb","lladdr":"EA:56:BE:08:AA:87","router":null,"state":["REACHABLE"]},{"dst":"fe80::1","dev":"lan","lladdr":"00:1b:21:0a:0b:0c","router":true,"state":["STALE"]},{"dst":"fe80::e856:beff:fe08:aa87","dev":"lb","lladdr":"ea:56:be:08:aa:87","state":["DELAY"]},{"dst":"fe80::dead","dev":"lb","lladdr":"02:00:00:00:00:01","state":["FAILED"]},{"dst":"fe80::beef","dev":"lb","lladdr":"02:00:00:00:00:02","state":["INCOMPLETE"]},{"dst":"fe80::cafe","dev":"lan","state":["FAILED"]},{"dst":"fe80::f00d","dev":"lan","state":["STALE"]},{"dst":"fe80::abcd","dev":"gone","lladdr":"02:00:00:00:00:03","state":["REACHABLE"]}]
@rdma
rdma_lb lb
mlx5_9 
@end
)";
  const HostInfo h = parse_discovery(output, "n1");
  CHECK(h.ssh == "n1");
  CHECK(h.hostname == "node1");
  CHECK_FALSE(h.root);
  CHECK(h.pinged);
  CHECK(h.default_if == "lan");  // the first default route

  REQUIRE(h.interfaces.size() == 4);
  const Interface& lo = h.interfaces[0];
  CHECK(lo.name == "lo");
  CHECK(lo.loopback);
  CHECK(lo.up);
  CHECK(lo.v4.empty());

  const Interface& lan = h.interfaces[1];
  CHECK(lan.name == "lan");
  CHECK_FALSE(lan.loopback);
  CHECK(lan.up);
  CHECK(lan.mac == "52:54:00:12:34:56");
  REQUIRE(lan.v4.size() == 2);  // global and link scope, not host scope
  CHECK(lan.v4[0].cidr() == "10.77.0.1/24");
  CHECK(lan.v4[1].cidr() == "169.254.3.4/16");
  CHECK(lan.neighbor_macs == std::vector<std::string>{"00:1b:21:0a:0b:0c"});
  CHECK_FALSE(lan.forwarding);
  CHECK(lan.rdma.empty());

  const Interface& lb = h.interfaces[2];
  CHECK(lb.name == "lb");
  CHECK(lb.mac == "a6:7b:2b:c7:48:f6");
  REQUIRE(lb.v4.size() == 1);
  CHECK(lb.v4[0].cidr() == "192.168.64.1/30");
  // Lower-cased, once; the FAILED and INCOMPLETE entries are not neighbours.
  CHECK(lb.neighbor_macs == std::vector<std::string>{"ea:56:be:08:aa:87"});
  CHECK(lb.forwarding);
  CHECK(lb.rdma == "rdma_lb");

  const Interface& lc = h.interfaces[3];
  CHECK(lc.name == "lc");
  CHECK_FALSE(lc.up);
  CHECK(lc.v4.empty());
  CHECK(lc.neighbor_macs.empty());
  CHECK(lc.rdma.empty());

  REQUIRE(h.routes.size() == 5);
  CHECK(h.routes[0] == Route{"default", "10.77.0.254", "lan"});
  CHECK(h.routes[1] == Route{"default", "192.168.64.2", "lb"});
  CHECK(h.routes[2] == Route{"10.77.0.0/24", "", "lan"});
  CHECK(h.routes[3] == Route{"192.168.64.0/30", "", "lb"});
  CHECK(h.routes[4] == Route{"192.168.64.13/32", "192.168.64.2", "lb"});
  CHECK(h.routes[4].command() == "ip route replace 192.168.64.13/32 via 192.168.64.2 dev lb");
  CHECK(h.routes[3].command() == "ip route replace 192.168.64.0/30 dev lb");

  CHECK(h.main_address() == "10.77.0.1");
}

TEST_CASE("parse_discovery sees root, a host without ping, and empty sections") {
  const HostInfo h = parse_discovery("@hostname\nbox\n@uid\n0\n@ping\nno\n@addr\n[]\n@route\n\n@forwarding\n"
                                     "@neigh\n[]\n@rdma\n@end\n",
                                     "root@box");
  CHECK(h.hostname == "box");
  CHECK(h.root);
  CHECK_FALSE(h.pinged);
  CHECK(h.interfaces.empty());
  CHECK(h.routes.empty());
  CHECK(h.default_if.empty());
  CHECK(h.main_address().empty());

  // Only uid 0 is root.
  CHECK_FALSE(parse_discovery("@uid\n1000\n@end\n", "x").root);
  CHECK_FALSE(parse_discovery("@uid\n10\n@end\n", "x").root);
}

TEST_CASE("Discovery output that stops before @end, or holds unreadable JSON, is a usage error") {
  Machine m{"a"};
  m.nics.push_back({"lb", "02:00:00:00:01:01", {"192.168.64.1/30"}});
  CHECK_NOTHROW(parse_discovery(discovery_output(m), "a"));
  m.complete = false;
  CHECK_THROWS_WITH_AS(parse_discovery(discovery_output(m), "a"),
                       "host a: the discovery script stopped before its end", UsageError);
  CHECK_THROWS_AS(parse_discovery("", "a"), UsageError);
  CHECK_THROWS_WITH_AS(parse_discovery("@addr\nip: unknown option -j\n@end\n", "b"),
                       "host b: could not read the output of `ip -j addr` (is iproute2 older than 4.14, without -j?)",
                       UsageError);
  CHECK_THROWS_WITH_AS(parse_discovery("@neigh\n[{\n@end\n", "c"),
                       "host c: could not read the output of `ip -j neigh` (is iproute2 older than 4.14, without -j?)",
                       UsageError);
}

TEST_CASE("The test's discovery output reads back as the machine it describes") {
  Lab lab{"a", "b"};
  lab.cable("a", "lb", "b", "la");
  lab.nic("a", "lb").v4 = {"192.168.64.1/30"};
  lab.nic("a", "lb").rdma = "rdma_ab";
  lab.nic("a", "lb").forwarding = true;
  lab.host("a").routes.push_back(route("192.168.64.13", "192.168.64.2", "lb"));
  const auto hosts = lab.discover();
  const HostInfo& a = hosts[0];
  REQUIRE(a.interfaces.size() == 2);
  CHECK(a.interfaces[0].loopback);
  const Interface& lb = a.interfaces[1];
  CHECK(lb.name == "lb");
  CHECK(lb.mac == "02:00:00:00:01:01");
  CHECK(lb.up);
  REQUIRE(lb.v4.size() == 1);
  CHECK(lb.v4[0].cidr() == "192.168.64.1/30");
  CHECK(lb.neighbor_macs == std::vector<std::string>{"02:00:00:00:02:01"});
  CHECK(lb.rdma == "rdma_ab");
  CHECK(lb.forwarding);
  CHECK(a.routes == std::vector<Route>{{"192.168.64.13/32", "192.168.64.2", "lb"}, {"192.168.64.0/30", "", "lb"}});
  CHECK(link_local("ea:56:be:08:aa:87") == "fe80::e856:beff:fe08:aa87");
}

// ---------------------------------------------------------------------------------------------
// find_links, ring, mesh, plan_addresses, plan_routes, setup_commands

TEST_CASE("A full mesh of four hosts gives six links, a ring in host order and no routes through a third host") {
  Topology t = full_mesh_of_four().topology();
  CHECK(describe_links(t) == std::vector<std::string>{
                                 "a.lb - -- b.la -",
                                 "a.lc - -- c.la -",
                                 "a.ld - -- d.la -",
                                 "b.lc - -- c.lb -",
                                 "b.ld - -- d.lb -",
                                 "c.ld - -- d.lc -",
                             });
  CHECK(t.shared.empty());
  for (const auto& l : t.links) CHECK_FALSE(l.configured);
  CHECK(t.mesh());
  CHECK(t.ring() == std::vector<std::size_t>{0, 1, 2, 3});
  CHECK(t.cables(3, 0) == 1);
  CHECK(t.missing_pairs().empty());
  CHECK_FALSE(needs_forwarding(t));

  plan_addresses(t, kBase);
  CHECK(describe_links(t) == std::vector<std::string>{
                                 "a.lb 192.168.64.1/30 -- b.la 192.168.64.2/30",
                                 "a.lc 192.168.64.5/30 -- c.la 192.168.64.6/30",
                                 "a.ld 192.168.64.9/30 -- d.la 192.168.64.10/30",
                                 "b.lc 192.168.64.13/30 -- c.lb 192.168.64.14/30",
                                 "b.ld 192.168.64.17/30 -- d.lb 192.168.64.18/30",
                                 "c.ld 192.168.64.21/30 -- d.lc 192.168.64.22/30",
                             });

  // Every address on the other hosts' cables is reached over the cable to its owner.
  const auto routes = plan_routes(t);
  CHECK(route_commands(routes[0]) == std::vector<std::string>{
                                         "ip route replace 192.168.64.13/32 via 192.168.64.2 dev lb",
                                         "ip route replace 192.168.64.14/32 via 192.168.64.6 dev lc",
                                         "ip route replace 192.168.64.17/32 via 192.168.64.2 dev lb",
                                         "ip route replace 192.168.64.18/32 via 192.168.64.10 dev ld",
                                         "ip route replace 192.168.64.21/32 via 192.168.64.6 dev lc",
                                         "ip route replace 192.168.64.22/32 via 192.168.64.10 dev ld",
                                     });
  CHECK(route_commands(routes[3]) == std::vector<std::string>{
                                         "ip route replace 192.168.64.1/32 via 192.168.64.9 dev la",
                                         "ip route replace 192.168.64.2/32 via 192.168.64.17 dev lb",
                                         "ip route replace 192.168.64.5/32 via 192.168.64.9 dev la",
                                         "ip route replace 192.168.64.6/32 via 192.168.64.21 dev lc",
                                         "ip route replace 192.168.64.13/32 via 192.168.64.17 dev lb",
                                         "ip route replace 192.168.64.14/32 via 192.168.64.21 dev lc",
                                     });

  const auto commands = setup_commands(t);
  REQUIRE(commands.size() == 4);
  CHECK(std::vector<std::string>(commands[0].begin(), commands[0].begin() + 6) ==
        std::vector<std::string>{
            "sudo -n ip link set dev lb up",
            "sudo -n ip addr replace 192.168.64.1/30 dev lb",
            "sudo -n ip link set dev lc up",
            "sudo -n ip addr replace 192.168.64.5/30 dev lc",
            "sudo -n ip link set dev ld up",
            "sudo -n ip addr replace 192.168.64.9/30 dev ld",
        });
  for (const auto& host : commands) {
    CHECK(host.size() == 6 + 6);  // three interfaces (two commands each), six routes
    for (const auto& c : host) CHECK_FALSE(contains(c, "forwarding"));
  }
}

TEST_CASE("plan_addresses skips a /30 that overlaps an address on any host, and fails when the subnet runs out") {
  Lab lab = full_mesh_of_four();
  // An address on a host's interface that has no cable (a dummy service address, say).
  lab.nic("c", "svc").v4 = {"192.168.64.5/32"};
  Topology t = lab.topology();
  REQUIRE(t.links.size() == 6);
  plan_addresses(t, kBase);
  CHECK(describe_links(t) == std::vector<std::string>{
                                 "a.lb 192.168.64.1/30 -- b.la 192.168.64.2/30",
                                 "a.lc 192.168.64.9/30 -- c.la 192.168.64.10/30",
                                 "a.ld 192.168.64.13/30 -- d.la 192.168.64.14/30",
                                 "b.lc 192.168.64.17/30 -- c.lb 192.168.64.18/30",
                                 "b.ld 192.168.64.21/30 -- d.lb 192.168.64.22/30",
                                 "c.ld 192.168.64.25/30 -- d.lc 192.168.64.26/30",
                             });

  // A whole /24 in use on a shared network moves every link past it.
  Lab lan = full_mesh_of_four();
  lan.nic("b", "lan").v4 = {"192.168.64.200/24"};
  Topology u = lan.topology();
  plan_addresses(u, kBase);
  REQUIRE(u.links.size() == 6);
  CHECK(u.links.front().a_address->cidr() == "192.168.65.1/30");
  CHECK(u.links.back().b_address->cidr() == "192.168.65.22/30");

  Topology small = full_mesh_of_four().topology();
  CHECK_THROWS_WITH_AS(plan_addresses(small, *parse_ipv4("10.9.0.0/29")),
                       "the subnet 10.9.0.0/29 has no free /30 left for every link: pass a larger one with --subnet",
                       UsageError);
}

TEST_CASE("A ring of four hosts listed out of order is found, routed through the hosts between, and forwarded") {
  Topology t = ring_out_of_order().topology();  // hosts: a=0, c=1, b=2, d=3
  CHECK(describe_links(t) == std::vector<std::string>{
                                 "a.lb - -- b.la -",
                                 "a.ld - -- d.la -",
                                 "c.lb - -- b.lc -",
                                 "c.ld - -- d.lc -",
                             });
  CHECK_FALSE(t.mesh());
  CHECK(t.missing_pairs() == std::vector<std::pair<std::size_t, std::size_t>>{{0, 1}, {2, 3}});
  const auto ring = t.ring();
  CHECK(ring == std::vector<std::size_t>{0, 2, 1, 3});  // a, b, c, d
  REQUIRE(ring.size() == 4);
  CHECK(ring.front() == 0);
  CHECK(std::set<std::size_t>(ring.begin(), ring.end()).size() == 4);
  for (std::size_t k = 0; k < ring.size(); ++k) CHECK(t.cables(ring[k], ring[(k + 1) % ring.size()]) == 1);
  CHECK(needs_forwarding(t));

  plan_addresses(t, kBase);
  CHECK(describe_links(t) == std::vector<std::string>{
                                 "a.lb 192.168.64.1/30 -- b.la 192.168.64.2/30",
                                 "a.ld 192.168.64.5/30 -- d.la 192.168.64.6/30",
                                 "c.lb 192.168.64.9/30 -- b.lc 192.168.64.10/30",
                                 "c.ld 192.168.64.13/30 -- d.lc 192.168.64.14/30",
                             });

  // Rank r connects to rank r+1's addresses, so each rank lists its end of the cable from the
  // rank before it: a's from d, b's from a, c's from b, d's from c.
  CHECK(links_hostfile(t, "ring", {}) == json::parse(R"({"backend": "ring", "hosts": [
          {"ssh": "a", "ips": ["192.168.64.5"]},
          {"ssh": "b", "ips": ["192.168.64.2"]},
          {"ssh": "c", "ips": ["192.168.64.9"]},
          {"ssh": "d", "ips": ["192.168.64.14"]}]})"));

  // Each host reaches the addresses on the two cables it is not on through a neighbour.
  const auto routes = plan_routes(t);
  CHECK(route_commands(routes[0]) == std::vector<std::string>{  // a
                                         "ip route replace 192.168.64.9/32 via 192.168.64.2 dev lb",
                                         "ip route replace 192.168.64.10/32 via 192.168.64.2 dev lb",
                                         "ip route replace 192.168.64.13/32 via 192.168.64.2 dev lb",
                                         "ip route replace 192.168.64.14/32 via 192.168.64.6 dev ld",
                                     });
  CHECK(route_commands(routes[1]) == std::vector<std::string>{  // c
                                         "ip route replace 192.168.64.1/32 via 192.168.64.10 dev lb",
                                         "ip route replace 192.168.64.2/32 via 192.168.64.10 dev lb",
                                         "ip route replace 192.168.64.5/32 via 192.168.64.10 dev lb",
                                         "ip route replace 192.168.64.6/32 via 192.168.64.14 dev ld",
                                     });
  CHECK(route_commands(routes[2]) == std::vector<std::string>{  // b
                                         "ip route replace 192.168.64.5/32 via 192.168.64.1 dev la",
                                         "ip route replace 192.168.64.6/32 via 192.168.64.1 dev la",
                                         "ip route replace 192.168.64.13/32 via 192.168.64.9 dev lc",
                                         "ip route replace 192.168.64.14/32 via 192.168.64.1 dev la",
                                     });
  CHECK(route_commands(routes[3]) == std::vector<std::string>{  // d
                                         "ip route replace 192.168.64.1/32 via 192.168.64.5 dev la",
                                         "ip route replace 192.168.64.2/32 via 192.168.64.5 dev la",
                                         "ip route replace 192.168.64.9/32 via 192.168.64.13 dev lc",
                                         "ip route replace 192.168.64.10/32 via 192.168.64.5 dev la",
                                     });

  const auto commands = setup_commands(t);
  CHECK(commands[0] == std::vector<std::string>{
                           "sudo -n ip link set dev lb up",
                           "sudo -n ip addr replace 192.168.64.1/30 dev lb",
                           "sudo -n ip link set dev ld up",
                           "sudo -n ip addr replace 192.168.64.5/30 dev ld",
                           "sudo -n ip route replace 192.168.64.9/32 via 192.168.64.2 dev lb",
                           "sudo -n ip route replace 192.168.64.10/32 via 192.168.64.2 dev lb",
                           "sudo -n ip route replace 192.168.64.13/32 via 192.168.64.2 dev lb",
                           "sudo -n ip route replace 192.168.64.14/32 via 192.168.64.6 dev ld",
                           "sudo -n sysctl -q -w net.ipv4.conf.lb.forwarding=1",
                           "sudo -n sysctl -q -w net.ipv4.conf.ld.forwarding=1",
                       });
  // d's user is root: no sudo.
  CHECK(commands[3] == std::vector<std::string>{
                           "ip link set dev la up",
                           "ip addr replace 192.168.64.6/30 dev la",
                           "ip link set dev lc up",
                           "ip addr replace 192.168.64.14/30 dev lc",
                           "ip route replace 192.168.64.1/32 via 192.168.64.5 dev la",
                           "ip route replace 192.168.64.2/32 via 192.168.64.5 dev la",
                           "ip route replace 192.168.64.9/32 via 192.168.64.13 dev lc",
                           "ip route replace 192.168.64.10/32 via 192.168.64.5 dev la",
                           "sysctl -q -w net.ipv4.conf.la.forwarding=1",
                           "sysctl -q -w net.ipv4.conf.lc.forwarding=1",
                       });
  for (std::size_t h : {1, 2}) {
    CHECK(commands[h].size() == 10);
    for (const auto& c : commands[h]) CHECK(c.rfind("sudo -n ", 0) == 0);
  }
}

TEST_CASE("An interface already forwarding gets no sysctl, and a dot in its name is a slash in the key") {
  Lab lab{"a", "b", "c"};
  lab.cable("a", "eth1", "b", "eth0.100");
  lab.cable("b", "eth0.200", "c", "eth1");
  lab.nic("c", "eth1").forwarding = true;
  Topology t = lab.topology();
  plan_addresses(t, kBase);
  REQUIRE(needs_forwarding(t));
  const auto commands = setup_commands(t);
  CHECK(commands[1] == std::vector<std::string>{
                           "sudo -n ip link set dev eth0.100 up",
                           "sudo -n ip addr replace 192.168.64.2/30 dev eth0.100",
                           "sudo -n ip link set dev eth0.200 up",
                           "sudo -n ip addr replace 192.168.64.5/30 dev eth0.200",
                           "sudo -n sysctl -q -w net.ipv4.conf.eth0/100.forwarding=1",
                           "sudo -n sysctl -q -w net.ipv4.conf.eth0/200.forwarding=1",
                       });
  CHECK(commands[2] == std::vector<std::string>{
                           "sudo -n ip link set dev eth1 up",
                           "sudo -n ip addr replace 192.168.64.6/30 dev eth1",
                           "sudo -n ip route replace 192.168.64.1/32 via 192.168.64.5 dev eth1",
                           "sudo -n ip route replace 192.168.64.2/32 via 192.168.64.5 dev eth1",
                       });
}

TEST_CASE("Links already configured keep their addresses and leave nothing to do") {
  // The path a-b-c after an earlier run's set-up: addresses, routes and forwarding in place. No
  // ping this time, so the cables are found by their shared subnets alone.
  Lab lab{"a", "b", "c"};
  for (auto& m : lab.machines) m.pinged = false;
  lab.nic("a", "lb").v4 = {"192.168.64.1/30"};
  lab.nic("b", "la").v4 = {"192.168.64.2/30"};
  lab.nic("b", "lc").v4 = {"192.168.64.5/30"};
  lab.nic("c", "lb").v4 = {"192.168.64.6/30"};
  for (auto* n : {&lab.nic("a", "lb"), &lab.nic("b", "la"), &lab.nic("b", "lc"), &lab.nic("c", "lb")}) {
    n->forwarding = true;
  }
  lab.host("a").routes = {route("192.168.64.5", "192.168.64.2", "lb"), route("192.168.64.6", "192.168.64.2", "lb")};
  lab.host("c").routes = {route("192.168.64.1", "192.168.64.5", "lb"), route("192.168.64.2", "192.168.64.5", "lb")};

  Topology t = lab.topology();
  const std::vector<std::string> links{
      "a.lb 192.168.64.1/30 -- b.la 192.168.64.2/30",
      "b.lc 192.168.64.5/30 -- c.lb 192.168.64.6/30",
  };
  CHECK(describe_links(t) == links);
  for (const auto& l : t.links) CHECK(l.configured);
  plan_addresses(t, kBase);
  CHECK(describe_links(t) == links);
  CHECK(needs_forwarding(t));
  const auto commands = setup_commands(t);
  REQUIRE(commands.size() == 3);
  for (const auto& host : commands) CHECK(host.empty());

  SUBCASE("a missing route is the only command") {
    lab.host("a").routes.erase(lab.host("a").routes.begin() + 1);
    Topology u = lab.topology();
    plan_addresses(u, kBase);
    const auto c = setup_commands(u);
    CHECK(c[0] == std::vector<std::string>{"sudo -n ip route replace 192.168.64.6/32 via 192.168.64.2 dev lb"});
    CHECK(c[1].empty());
    CHECK(c[2].empty());
  }
  SUBCASE("forwarding off on one interface is the only command") {
    lab.nic("b", "lc").forwarding = false;
    Topology u = lab.topology();
    plan_addresses(u, kBase);
    const auto c = setup_commands(u);
    CHECK(c[0].empty());
    CHECK(c[1] == std::vector<std::string>{"sudo -n sysctl -q -w net.ipv4.conf.lc.forwarding=1"});
    CHECK(c[2].empty());
  }
}

// ---------------------------------------------------------------------------------------------
// Shared networks and --over ethernet

TEST_CASE("Four hosts on one /24 share a network, not links, and the ethernet hostfile lists their LAN addresses") {
  Lab lab{"a", "b", "c", "d"};
  // a has a management interface of its own besides the LAN, and the default route.
  lab.nic("a", "mgmt").v4 = {"172.16.0.1/24"};
  for (const auto& [host, address] : std::vector<std::pair<std::string, std::string>>{
           {"a", "10.77.0.1/24"}, {"b", "10.77.0.2/24"}, {"c", "10.77.0.3/24"}, {"d", "10.77.0.4/24"}}) {
    lab.nic(host, "lan").v4 = {address};
  }
  lab.host("a").routes.push_back(route("default", "10.77.0.254", "lan"));
  // The LAN interfaces see each other; b and a also have a cable, addressed already.
  lab.cable("a", "lan", "b", "lan");
  lab.cable("c", "lan", "d", "lan");
  lab.cable("a", "lb", "b", "la");
  lab.nic("a", "lb").v4 = {"192.168.64.1/30"};
  lab.nic("b", "la").v4 = {"192.168.64.2/30"};

  const Topology t = lab.topology();
  CHECK(describe_shared(t) == std::vector<std::string>{"a.lan b.lan c.lan d.lan"});
  CHECK(describe_links(t) == std::vector<std::string>{"a.lb 192.168.64.1/30 -- b.la 192.168.64.2/30"});
  // a: its default-route interface, not mgmt; b: its only addressed interface besides the link.
  CHECK(ethernet_hostfile(t, {"NCCL_DEBUG=INFO"}) == json::parse(R"({"backend": "ring", "hosts": [
          {"ssh": "a", "ips": ["10.77.0.1"]},
          {"ssh": "b", "ips": ["10.77.0.2"]},
          {"ssh": "c", "ips": ["10.77.0.3"]},
          {"ssh": "d", "ips": ["10.77.0.4"]}], "envs": ["NCCL_DEBUG=INFO"]})"));

  lab.nic("c", "mgmt").v4 = {"172.31.0.3/24"};  // on a network none of the others is on
  CHECK_THROWS_WITH_AS(ethernet_hostfile(lab.topology(), {}),
                       "host c has no main address (no default route and not exactly one addressed interface "
                       "besides its links): write the hostfile's \"ips\" by hand",
                       UsageError);
}

TEST_CASE("A cable on which a machine that is not one of the hosts answers is a shared network with others") {
  Lab lab{"a", "b"};
  lab.cable("a", "lb", "b", "la");
  lab.nic("a", "lb").neighbours.push_back("00:1b:21:0a:0b:0c");  // a switch's management port, say
  const Topology t = lab.topology();
  CHECK(t.links.empty());
  CHECK(describe_shared(t) == std::vector<std::string>{"a.lb b.la others"});
  CHECK(t.ring().empty());
}

TEST_CASE("Two hosts whose common segment carries a default route share a network, not a link") {
  Lab lab{"a", "b"};
  lab.nic("a", "lan").v4 = {"10.77.0.1/24"};
  lab.nic("b", "lan").v4 = {"10.77.0.2/24"};
  lab.host("b").routes.push_back(route("default", "10.77.0.254", "lan"));
  const Topology t = lab.topology();  // joined by their subnet alone
  CHECK(t.links.empty());
  CHECK(describe_shared(t) == std::vector<std::string>{"a.lan b.lan"});
}

TEST_CASE("A MAC address on two of the hosts joins nothing and marks nothing foreign") {
  // Cloned machines: b and c both have 02:aa:aa:aa:aa:aa.
  Lab lab{"a", "b", "c"};
  lab.nic("b", "la").mac = "02:aa:aa:aa:aa:aa";
  lab.nic("c", "la").mac = "02:aa:aa:aa:aa:aa";
  lab.nic("a", "lx").neighbours = {"02:aa:aa:aa:aa:aa"};
  const Topology t = lab.topology();
  CHECK(t.links.empty());
  CHECK(t.shared.empty());
}

// ---------------------------------------------------------------------------------------------
// Two hosts, and topologies with no ring

TEST_CASE("Two hosts with one cable are a ring, and each listens on its end of the cable") {
  Lab lab{"a", "b"};
  lab.cable("a", "lb", "b", "la");
  Topology t = lab.topology();
  plan_addresses(t, kBase);
  CHECK(describe_links(t) == std::vector<std::string>{"a.lb 192.168.64.1/30 -- b.la 192.168.64.2/30"});
  CHECK(t.mesh());
  CHECK(t.ring() == std::vector<std::size_t>{0, 1});
  CHECK_FALSE(needs_forwarding(t));
  CHECK(plan_routes(t) == std::vector<std::vector<Route>>{{}, {}});
  CHECK(pick_backend(t) == "ring");
  CHECK(links_hostfile(t, "ring", {"A=1", "B=2"}) == json::parse(R"({"backend": "ring", "hosts": [
          {"ssh": "a", "ips": ["192.168.64.1"]},
          {"ssh": "b", "ips": ["192.168.64.2"]}], "envs": ["A=1", "B=2"]})"));
  const auto commands = setup_commands(t);
  CHECK(commands[0] ==
        std::vector<std::string>{"sudo -n ip link set dev lb up", "sudo -n ip addr replace 192.168.64.1/30 dev lb"});
  CHECK(commands[1] ==
        std::vector<std::string>{"sudo -n ip link set dev la up", "sudo -n ip addr replace 192.168.64.2/30 dev la"});
}

TEST_CASE("An interface name a shell would act on is quoted in the commands; plain names are not") {
  Lab lab{"a", "b"};
  lab.cable("a", "e;x$(y)", "b", "la");
  Topology t = lab.topology();
  plan_addresses(t, kBase);
  const auto commands = setup_commands(t);
  CHECK(commands[0] == std::vector<std::string>{"sudo -n ip link set dev 'e;x$(y)' up",
                                                "sudo -n ip addr replace 192.168.64.1/30 dev 'e;x$(y)'"});
  CHECK(commands[1][0] == "sudo -n ip link set dev la up");
  CHECK(Route{"10.0.0.1/32", "10.0.0.2", "it's"}.command() == "ip route replace 10.0.0.1/32 via 10.0.0.2 dev 'it'\\''s'");
}

TEST_CASE("Two hosts with two cables list both their ends in the ring hostfile") {
  Lab lab{"a", "b"};
  lab.cable("a", "lb1", "b", "la1");
  lab.cable("a", "lb2", "b", "la2");
  Topology t = lab.topology();
  plan_addresses(t, kBase);
  CHECK(t.cables(0, 1) == 2);
  CHECK(t.ring() == std::vector<std::size_t>{0, 1});
  CHECK(links_hostfile(t, "ring", {}) == json::parse(R"({"backend": "ring", "hosts": [
          {"ssh": "a", "ips": ["192.168.64.1", "192.168.64.5"]},
          {"ssh": "b", "ips": ["192.168.64.2", "192.168.64.6"]}]})"));
}

TEST_CASE("A ring whose pairs have different numbers of cables uses the thinnest pair's count everywhere") {
  Lab lab{"a", "b", "c"};
  lab.cable("a", "lb1", "b", "la1");
  lab.cable("a", "lb2", "b", "la2");
  lab.cable("b", "lc", "c", "lb");
  lab.cable("c", "la", "a", "lc");
  Topology t = lab.topology();
  plan_addresses(t, kBase);
  CHECK(describe_links(t) == std::vector<std::string>{
                                 "a.lb1 192.168.64.1/30 -- b.la1 192.168.64.2/30",
                                 "a.lb2 192.168.64.5/30 -- b.la2 192.168.64.6/30",
                                 "a.lc 192.168.64.9/30 -- c.la 192.168.64.10/30",
                                 "b.lc 192.168.64.13/30 -- c.lb 192.168.64.14/30",
                             });
  CHECK(links_hostfile(t, "ring", {}) == json::parse(R"({"backend": "ring", "hosts": [
          {"ssh": "a", "ips": ["192.168.64.9"]},
          {"ssh": "b", "ips": ["192.168.64.2"]},
          {"ssh": "c", "ips": ["192.168.64.14"]}]})"));
}

TEST_CASE("A path of three hosts is no ring, and the hostfiles that need one name the missing pair") {
  Lab lab{"a", "b", "c"};
  lab.cable("a", "lb", "b", "la");
  lab.cable("b", "lc", "c", "lb");
  Topology t = lab.topology();
  plan_addresses(t, kBase);
  CHECK(t.links.size() == 2);
  CHECK(t.ring().empty());
  CHECK_FALSE(t.mesh());
  CHECK(pick_backend(t) == "ring");
  CHECK_THROWS_WITH_AS(
      links_hostfile(t, "ring", {}),
      "the links do not form a ring through all 3 hosts (no link between a-c): the ring backend needs one",
      UsageError);
  CHECK_THROWS_WITH_AS(
      links_hostfile(t, "jaccl-ring", {}),
      "the links do not form a ring through all 3 hosts (no link between a-c): the jaccl-ring backend needs one",
      UsageError);
  CHECK_THROWS_WITH_AS(links_hostfile(t, "jaccl", {}),
                       "the jaccl backend needs a link between every pair of hosts; none between a-c", UsageError);
  CHECK_THROWS_WITH_AS(links_hostfile(t, "mpi", {}),
                       "unknown backend \"mpi\" for collie config: choose ring, jaccl or jaccl-ring", UsageError);
}

TEST_CASE("A host with no cable leaves no ring, and the message names every pair without one") {
  Lab lab{"a", "b", "c"};
  lab.cable("a", "lb", "b", "la");
  lab.nic("c", "la");  // up, but nothing at the other end
  Topology t = lab.topology();
  plan_addresses(t, kBase);
  CHECK(t.links.size() == 1);
  CHECK(t.ring().empty());
  CHECK_FALSE(t.mesh());
  CHECK_THROWS_WITH_AS(
      links_hostfile(t, "ring", {}),
      "the links do not form a ring through all 3 hosts (no link between a-c, b-c): the ring backend needs one",
      UsageError);
  CHECK_THROWS_WITH_AS(links_hostfile(t, "jaccl", {}),
                       "the jaccl backend needs a link between every pair of hosts; none between a-c, b-c", UsageError);
}

TEST_CASE("A four-host ring is no mesh, so jaccl is refused") {
  Topology t = ring_out_of_order().topology();
  plan_addresses(t, kBase);
  CHECK_THROWS_WITH_AS(links_hostfile(t, "jaccl", {}),
                       "the jaccl backend needs a link between every pair of hosts; none between a-c, b-d", UsageError);
}

// ---------------------------------------------------------------------------------------------
// jaccl and jaccl-ring

namespace {

// A mesh of three hosts; every link interface has an RDMA device named rdma_XY (X's end of the
// cable to Y). a and b are on a LAN with their default route through it; c is not.
Lab rdma_mesh_of_three() {
  Lab lab{"a", "b", "c"};
  for (const auto& [x, y] : std::vector<std::pair<std::string, std::string>>{{"a", "b"}, {"a", "c"}, {"b", "c"}}) {
    lab.cable(x, "l" + y, y, "l" + x);
    lab.nic(x, "l" + y).rdma = "rdma_" + x + y;
    lab.nic(y, "l" + x).rdma = "rdma_" + y + x;
  }
  lab.nic("a", "lan").v4 = {"10.77.0.1/24"};
  lab.nic("b", "lan").v4 = {"10.77.0.2/24"};
  lab.host("a").routes.push_back(route("default", "10.77.0.254", "lan"));
  lab.host("b").routes.push_back(route("default", "10.77.0.254", "lan"));
  return lab;
}

}  // namespace

TEST_CASE("A mesh of RDMA links picks jaccl: one device per peer, null on the diagonal, rank 0's main address") {
  Topology t = rdma_mesh_of_three().topology();
  plan_addresses(t, kBase);
  CHECK(t.links.size() == 3);
  CHECK(describe_shared(t) == std::vector<std::string>{"a.lan b.lan"});
  CHECK(pick_backend(t) == "jaccl");
  CHECK(links_hostfile(t, "jaccl", {}) == json::parse(R"({"backend": "jaccl", "hosts": [
          {"ssh": "a", "ips": ["10.77.0.1"], "rdma": [null, "rdma_ab", "rdma_ac"]},
          {"ssh": "b", "ips": ["10.77.0.2"], "rdma": ["rdma_ba", null, "rdma_bc"]},
          {"ssh": "c", "ips": [], "rdma": ["rdma_ca", "rdma_cb", null]}]})"));
}

TEST_CASE("jaccl is refused without an RDMA device on one end of a link, or without a main address on rank 0") {
  SUBCASE("no RDMA device on c's end of the cable to a") {
    Lab lab = rdma_mesh_of_three();
    lab.nic("c", "la").rdma.clear();
    Topology t = lab.topology();
    plan_addresses(t, kBase);
    CHECK(pick_backend(t) == "ring");
    CHECK_THROWS_WITH_AS(
        links_hostfile(t, "jaccl", {}),
        "the jaccl backend needs RDMA devices: host c has none on its link to a (see /sys/class/infiniband)",
        UsageError);
  }
  SUBCASE("an RDMA device with no network interface, or another one, counts for nothing") {
    Lab lab = rdma_mesh_of_three();
    lab.nic("c", "la").rdma.clear();
    lab.host("c").extra_rdma = "rdma_ca \nrdma_cx ib0\n";
    Topology t = lab.topology();
    plan_addresses(t, kBase);
    CHECK(t.hosts[2].find("la")->rdma.empty());
    CHECK(t.hosts[2].find("lb")->rdma == "rdma_cb");
    CHECK(pick_backend(t) == "ring");
  }
  SUBCASE("no default route on a") {
    Lab lab = rdma_mesh_of_three();
    lab.host("a").routes.clear();
    lab.nic("a", "mgmt").v4 = {"172.16.0.1/24"};  // two addressed interfaces: no main address
    Topology t = lab.topology();
    plan_addresses(t, kBase);
    CHECK(pick_backend(t) == "ring");
    CHECK_THROWS_WITH_AS(links_hostfile(t, "jaccl", {}),
                         "the jaccl backend's coordinator runs on host a, which has no main address every host "
                         "reaches (no default route): set up its network, or write the hostfile by hand",
                         UsageError);
  }
}

TEST_CASE("A ring of RDMA links picks jaccl-ring, with devices towards the two ring neighbours only") {
  Lab lab = ring_out_of_order();  // a, c, b, d; the ring is a, b, c, d
  for (auto& m : lab.machines) {
    for (auto& n : m.nics) n.rdma = "rdma_" + m.ssh + n.name.substr(1);
  }
  lab.nic("a", "lan").v4 = {"10.77.0.1/24"};
  lab.host("a").routes.push_back(route("default", "10.77.0.254", "lan"));
  Topology t = lab.topology();
  plan_addresses(t, kBase);
  CHECK(pick_backend(t) == "jaccl-ring");
  // "rdma" is indexed by rank (ring position), like the hosts.
  CHECK(links_hostfile(t, "jaccl-ring", {}) == json::parse(R"({"backend": "jaccl-ring", "hosts": [
          {"ssh": "a", "ips": ["10.77.0.1"], "rdma": [null, "rdma_ab", null, "rdma_ad"]},
          {"ssh": "b", "ips": [], "rdma": ["rdma_ba", null, "rdma_bc", null]},
          {"ssh": "c", "ips": [], "rdma": [null, "rdma_cb", null, "rdma_cd"]},
          {"ssh": "d", "ips": [], "rdma": ["rdma_da", null, "rdma_dc", null]}]})"));
  CHECK_THROWS_AS(links_hostfile(t, "jaccl", {}), UsageError);

  lab.nic("c", "ld").rdma.clear();
  Topology u = lab.topology();
  plan_addresses(u, kBase);
  CHECK(pick_backend(u) == "ring");
  CHECK_THROWS_WITH_AS(links_hostfile(u, "jaccl-ring", {}),
                       "the jaccl-ring backend needs RDMA devices: host c has none on ld, its link to d", UsageError);
}

TEST_CASE("Two hosts with two RDMA cables list both devices for jaccl-ring") {
  Lab lab{"a", "b"};
  lab.cable("a", "lb1", "b", "la1");
  lab.cable("a", "lb2", "b", "la2");
  for (auto& m : lab.machines) {
    for (auto& n : m.nics) n.rdma = "rdma_" + m.ssh + n.name.substr(1);
  }
  lab.nic("a", "lan").v4 = {"10.77.0.1/24"};
  Topology t = lab.topology();
  plan_addresses(t, kBase);
  // A mesh of two is picked as jaccl; jaccl-ring can be asked for.
  CHECK(pick_backend(t) == "jaccl");
  CHECK(links_hostfile(t, "jaccl-ring", {}) == json::parse(R"({"backend": "jaccl-ring", "hosts": [
          {"ssh": "a", "ips": ["10.77.0.1"], "rdma": [null, ["rdma_ab1", "rdma_ab2"]]},
          {"ssh": "b", "ips": [], "rdma": [["rdma_ba1", "rdma_ba2"], null]}]})"));
}

TEST_CASE("Rank 0's main address is its LAN address when its links are configured as when they are not") {
  // A second run of collie config (after --auto-setup) over a mesh whose LAN has no default route:
  // the link interfaces now have addresses of their own, and must not hide the LAN address (the
  // jaccl coordinator) by making it one addressed interface among several.
  Lab lab = rdma_mesh_of_three();
  lab.host("a").routes.clear();
  lab.host("b").routes.clear();
  lab.nic("c", "lan").v4 = {"10.77.0.3/24"};  // three on the LAN: not a link of a and b
  Topology first = lab.topology();
  plan_addresses(first, kBase);
  REQUIRE(pick_backend(first) == "jaccl");
  const json expected = links_hostfile(first, "jaccl", {});
  CHECK(expected["hosts"][0]["ips"] == json::array({"10.77.0.1"}));

  // What the first run set up.
  for (const auto& l : first.links) {
    lab.nic(first.hosts[l.a.host].ssh, l.a.interface).v4 = {l.a_address->cidr()};
    lab.nic(first.hosts[l.b.host].ssh, l.b.interface).v4 = {l.b_address->cidr()};
  }
  Topology second = lab.topology();
  plan_addresses(second, kBase);
  for (const auto& l : second.links) REQUIRE(l.configured);
  CHECK(pick_backend(second) == "jaccl");
  json again;
  CHECK_NOTHROW(again = links_hostfile(second, "jaccl", {}));
  CHECK(again == expected);
}

// ---------------------------------------------------------------------------------------------
// dot and parse_ipv4

TEST_CASE("dot draws every host and one edge per link, labelled with its interfaces, names quoted") {
  Lab lab{"a", "b", "root@c", "odd\"name"};
  lab.cable("a", "lb", "b", "la");
  lab.cable("b", "lc", "root@c", "lb");
  lab.cable("b", "lc2", "root@c", "lb2");
  const Topology t = lab.topology();
  CHECK(dot(t) == "graph collie {\n"
                  "  node [shape=box];\n"
                  "  \"a\";\n"
                  "  \"b\";\n"
                  "  \"root@c\";\n"
                  "  \"odd\\\"name\";\n"
                  "  \"a\" -- \"b\" [label=\"lb/la\"];\n"
                  "  \"b\" -- \"root@c\" [label=\"lc/lb\"];\n"
                  "  \"b\" -- \"root@c\" [label=\"lc2/lb2\"];\n"
                  "}\n");
}

TEST_CASE("parse_ipv4 reads an address with or without a prefix, and Ipv4 gives its network and overlaps") {
  const auto a = parse_ipv4("10.0.0.1/24");
  REQUIRE(a);
  CHECK(a->ip == 0x0a000001u);
  CHECK(a->prefix == 24);
  CHECK(a->mask() == 0xffffff00u);
  CHECK(a->network() == 0x0a000000u);
  CHECK(a->text() == "10.0.0.1");
  CHECK(a->cidr() == "10.0.0.1/24");

  const auto host = parse_ipv4("192.168.64.13");
  REQUIRE(host);
  CHECK(host->prefix == 32);
  CHECK(host->cidr() == "192.168.64.13/32");
  CHECK(host->network() == host->ip);

  const auto all = parse_ipv4("0.0.0.0/0");
  REQUIRE(all);
  CHECK(all->mask() == 0u);
  CHECK(all->overlaps(*host));

  CHECK(a->overlaps(*parse_ipv4("10.0.0.200/30")));
  CHECK(parse_ipv4("10.0.0.200/30")->overlaps(*a));
  CHECK(a->overlaps(*parse_ipv4("10.0.0.0/8")));
  CHECK_FALSE(a->overlaps(*parse_ipv4("10.0.1.0/30")));
  CHECK_FALSE(parse_ipv4("192.168.64.4/30")->overlaps(*parse_ipv4("192.168.64.8/30")));
  CHECK(parse_ipv4("192.168.64.4/30")->overlaps(*parse_ipv4("192.168.64.7")));

  for (const char* bad : {"300.1.1.1", "1.2.3.4/33", "abc", "", "1.2.3", "1.2.3.4/", "1.2.3.4/x", "1.2.3.4/024",
                          "1.2.3.4/-1", "1.2.3.4 /24", "::1"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse_ipv4(bad));
  }
}
