// Example 03: choosing the backend at compile time. `Collective<TcpTransport, Ring>` is the
// ring backend with nothing else compiled into the call path: no runtime selection, no variant.
// The configuration comes from the same environment as collie::init(): MLX_RANK + MLX_HOSTFILE,
// or, when no hostfile is set, a rendezvous through COLLIE_COORDINATOR (or MASTER_ADDR +
// MASTER_PORT) with a rank and world size.
//
// Run: bazel build //examples:03_compile_time &&
//      scripts/run_local.sh 4 --connections 2 bazel-bin/examples/03_compile_time
// It names the headers of the pair it uses, so it also builds with COLLIE_SEPARATE_COMPILATION,
// where <collie/collie.hpp> declares the runtime API only.
#include <collie/algorithm/ring.hpp>
#include <collie/collie.hpp>
#include <collie/core/collective.hpp>
#include <collie/runtime/environment.hpp>
#include <collie/runtime/rendezvous.hpp>
#include <collie/transport/tcp.hpp>

#include <cstdio>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

int main() {
  try {
    std::error_code ec;
    std::optional<collie::TcpConfig> from_hostfile = collie::ring_config_from_environment(ec);
    if (!from_hostfile && ec != collie::errc::not_configured) throw collie::Error(ec, collie::Group::last_error());
    collie::TcpConfig config = from_hostfile ? std::move(*from_hostfile) : collie::rendezvous_from_environment();
    // Tuning is part of the type's value: 4 rings (two per direction), 512 KiB segments.
    collie::Collective<collie::TcpTransport, collie::Ring> ring(
        collie::TcpTransport::connect(config), collie::Ring{.rings = 4, .segment_bytes = 512 << 10});
    std::vector<double> x(1 << 20, ring.rank() + 1.0);
    ring.all_sum(x);
    std::vector<double> mine(x.size() / static_cast<std::size_t>(ring.size()));
    ring.sum_scatter(x, mine);  // reduce-scatter, which MLX's ring lacks
    std::printf("rank %d of %d (%s): all_sum %g, sum_scatter %g\n", ring.rank(), ring.size(),
                ring.name().c_str(), x[0], mine[0]);
  } catch (const collie::Error& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
