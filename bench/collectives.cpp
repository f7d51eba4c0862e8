// The collie driver: one collective swept over message sizes, nccl-tests style, on whichever
// (transport, algorithm) pair the environment chose, or on N threads over the in-process transport.
//
//   scripts/run_local.sh 2 bazel-bin/bench/collectives -b 8 -e 64M -f 4 -o all_sum
//   COLLIE_ALGORITHM=mesh scripts/run_local.sh 4 bazel-bin/bench/collectives -o all_gather
//   bazel-bin/bench/collectives --threads 4 -d bfloat16 --json /tmp/sum.json
//
// Exit codes: 0 ok, 1 a result was wrong, 2 bad command line, 3 a collective failed.
#include <algorithm>
#include <array>
#include <chrono>
#include <complex>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <vector>

#include <collie/collie.hpp>

#include "report.hpp"

namespace {

using collie::bench::is_reduction;
using collie::bench::per_rank_blocks;
using collie::bench::redop_of;

using collie::bench::Sweep;

constexpr std::array<std::string_view, 9> op_names = {
    "all_sum",     "all_prod",  "all_max",    "all_min",  "all_gather",
    "sum_scatter", "broadcast", "all_to_all", "sendrecv"};

struct Config {
  Sweep sweep;
  std::string op = "all_sum";
  std::string type = "float32";
  bool in_place = false;      // --in-place given
  bool out_of_place = false;  // --out-of-place given; neither flag means both
  int root = 0;
  int threads = 0;  // 0: ranks from collie::init()
};

// Exit codes shared by every rank; a wrong result is reported only after the whole sweep so the
// table is complete.
constexpr int exit_ok = 0, exit_wrong = 1, exit_usage = 2, exit_failed = 3;

// A command-line value that only makes sense once the group is known (root, in-place support).
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// These have no in-place form in collie: sum_scatter and all_to_all reject overlapping buffers,
// and a sendrecv from and into one buffer would race its own send.
bool has_in_place(std::string_view op) {
  return op != "sum_scatter" && op != "all_to_all" && op != "sendrecv";
}

// ----- check patterns ----------------------------------------------------------------------------
// Every input element is a small non-negative integer p(rank, index), so each expected result is an
// integer computed exactly here and compared exactly: sums stay within 2^8 for bfloat16 and 2^11 for
// float16 (their exact-integer ranges) on up to 256 ranks, integer types wrap exactly as collie's
// kernels do (modulo 2^N), and bool gets or/and because p >= 0 (sum and max of non-negatives are
// non-zero iff one is; product and min iff all are).

template <class T>
constexpr bool is_16bit_float = std::is_same_v<T, collie::float16> ||
                                std::is_same_v<T, collie::bfloat16>;

template <class T>
T element(long long value) {
  if constexpr (std::is_same_v<T, bool>) {
    return value != 0;
  } else if constexpr (std::is_same_v<T, std::complex<float>>) {
    return T(static_cast<float>(value), 0.0f);
  } else if constexpr (is_16bit_float<T>) {
    return T(static_cast<float>(value));
  } else {
    return static_cast<T>(value);  // integers: modulo 2^N, as collie's wrapping kernels
  }
}

template <class T>
bool same(T a, T b) {
  if constexpr (is_16bit_float<T>) {
    return static_cast<float>(a) == static_cast<float>(b);
  } else {
    return a == b;
  }
}

// The period of the sum patterns: at most 16 distinct values, fewer where n*(period-1) must stay
// inside the exact-integer range of a 16-bit float.
template <class T>
long long sum_period(int ranks) {
  long long exact = 1LL << 24;
  if constexpr (std::is_same_v<T, collie::bfloat16>) exact = 256;
  if constexpr (std::is_same_v<T, collie::float16>) exact = 2048;
  return std::clamp<long long>(exact / std::max(ranks, 1) + 1, 2, 16);
}

// ----- the driver for one element type -----------------------------------------------------------

template <class T>
class Driver {
 public:
  Driver(collie::Group& group, const Config& config)
      : group_(group),
        config_(config),
        rank_(group.rank()),
        ranks_(group.size()),
        pattern_{config.op, group.size(), sum_period<T>(group.size())} {}

  int run() {
    const std::string_view op = config_.op;
    if (op == "broadcast" && (config_.root < 0 || config_.root >= ranks_)) {
      throw UsageError("--root " + std::to_string(config_.root) + " is outside [0, " +
                       std::to_string(ranks_) + ")");
    }
    bool out_of_place = config_.out_of_place || !config_.in_place;
    bool in_place = config_.in_place || !config_.out_of_place;
    if (!has_in_place(op)) {
      if (config_.in_place && !config_.out_of_place) {
        throw UsageError(std::string(op) + " has no in-place form; use --out-of-place");
      }
      in_place = false;
      out_of_place = true;
    }

    const auto sizes = collie::bench::sizes(config_.sweep, sizeof(T),
                                            per_rank_blocks(op) ? ranks_ : 1);
    allocate(sizes.empty() ? 0 : sizes.back() / sizeof(T), out_of_place);

    const std::string name = group_.name();
    const auto slash = name.find('/');
    collie::bench::Header header;
    header.tool = "collectives";
    header.contender = config_.sweep.label;
    if (header.contender.empty()) {
      header.contender = "collie-" + name;
      std::replace(header.contender.begin(), header.contender.end(), '/', '-');
    }
    header.op = config_.op;
    header.type = std::string(collie::name(collie::data_type_v<T>));
    header.redop = std::string(redop_of(op));
    header.transport = name.substr(0, slash);
    header.algorithm = slash == std::string::npos ? "" : name.substr(slash + 1);
    header.ranks = ranks_;
    header.host = collie::bench::host_name();
    collie::bench::Report report(std::move(header), rank_ == 0);
    report.set_json_path(config_.sweep.json_path);

    std::size_t wrong_total = 0;
    for (std::size_t bytes : sizes) {
      for (bool placed_in : {false, true}) {  // out of place first, as nccl-tests prints them
        if ((placed_in && !in_place) || (!placed_in && !out_of_place)) continue;
        const std::size_t wrong = config_.sweep.check ? check(bytes, placed_in) : 0;
        const collie::bench::Times time = measure(bytes, placed_in);
        const auto wrong_all = static_cast<std::size_t>(reduce_sum(static_cast<double>(wrong)));
        wrong_total += wrong_all;
        report.add(collie::bench::make_row(op, ranks_, bytes, row_count(bytes), placed_in, time,
                                           wrong_all));
      }
    }
    std::array<double, 1> rss{static_cast<double>(collie::bench::peak_rss_bytes())};
    group_.all_max(rss);
    report.finish(static_cast<std::size_t>(rss[0]));
    return wrong_total == 0 ? exit_ok : exit_wrong;
  }

 private:
  // Buffers for the largest size, allocated once and written through before any timing: a page's
  // first touch costs a fault (and on these VMs a slow one) that would be charged to the first
  // size using it.
  void allocate(std::size_t count, bool out_of_place) {
    const std::string_view op = config_.op;
    const auto n = static_cast<std::size_t>(ranks_);
    std::size_t in_count = count, out_count = count;
    if (op == "all_gather") in_count = out_of_place ? count / n : 0;
    if (op == "sum_scatter") out_count = count / n;
    if ((is_reduction(op) || op == "broadcast") && !out_of_place) in_count = 0;
    in_ = allocate_touched(in_count);
    out_ = allocate_touched(out_count);
  }

  // Not std::vector: vector<bool> has no data(). Written element by element rather than
  // value-initialised, which an allocator may satisfy with untouched zero pages.
  static std::unique_ptr<T[]> allocate_touched(std::size_t count) {
    auto buffer = std::make_unique_for_overwrite<T[]>(count);
    std::fill_n(buffer.get(), count, element<T>(0));
    return buffer;
  }

  std::size_t in_count(std::size_t bytes) const { return counts(bytes).in; }
  std::size_t out_count(std::size_t bytes) const { return counts(bytes).out; }
  std::size_t row_count(std::size_t bytes) const { return counts(bytes).row; }
  collie::bench::Counts counts(std::size_t bytes) const {
    return collie::bench::counts(config_.op, bytes, sizeof(T), ranks_);
  }

  // One operation on the first `bytes` of the buffers.
  void execute(std::size_t bytes, bool in_place) {
    const std::string_view op = config_.op;
    const std::size_t ic = in_count(bytes), oc = out_count(bytes);
    std::span<T> out(out_.get(), oc);
    std::span<T> in = in_place ? std::span<T>() : std::span<T>(in_.get(), ic);
    if (op == "all_sum") {
      in_place ? group_.all_sum(out) : group_.all_sum(in, out);
    } else if (op == "all_prod") {
      in_place ? group_.all_prod(out) : group_.all_prod(in, out);
    } else if (op == "all_max") {
      in_place ? group_.all_max(out) : group_.all_max(in, out);
    } else if (op == "all_min") {
      in_place ? group_.all_min(out) : group_.all_min(in, out);
    } else if (op == "all_gather") {
      // In place, this rank's block of the output is the input.
      if (in_place) in = out.subspan(static_cast<std::size_t>(rank_) * ic, ic);
      group_.all_gather(in, out);
    } else if (op == "sum_scatter") {
      group_.sum_scatter(in, out);
    } else if (op == "broadcast") {
      in_place ? group_.broadcast(out, config_.root) : group_.broadcast(in, out, config_.root);
    } else if (op == "all_to_all") {
      group_.all_to_all(in, out);
    } else if (op == "sendrecv") {
      sendrecv(in, out);
    }
  }

  // Ranks pair up as r and r^1 (an odd last rank idles) and exchange `bytes` both ways at once:
  // the receive is posted before the send, so neither side can wait for the other's receive.
  void sendrecv(std::span<T> in, std::span<T> out) {
    const int peer = rank_ ^ 1;
    if (peer >= ranks_) return;
    collie::Request pending = group_.recv_async(out, peer);
    std::error_code send_error;
    group_.send(in, peer, send_error);
    const std::string send_message = send_error ? collie::Group::last_error() : std::string();
    std::error_code recv_error;
    pending.wait(recv_error);  // always, so the buffer is idle before an error unwinds
    if (send_error) throw collie::Error(send_error, send_message);
    if (recv_error) throw collie::Error(recv_error, pending.message());
  }

  // Fills the inputs with the pattern, runs the operation once and counts this rank's wrong
  // output elements.
  std::size_t check(std::size_t bytes, bool in_place) {
    const std::string_view op = config_.op;
    const std::size_t ic = in_count(bytes), oc = out_count(bytes);
    std::fill_n(out_.get(), oc, element<T>(0));
    std::span<T> input = in_place ? std::span<T>(out_.get(), oc) : std::span<T>(in_.get(), ic);
    if (op == "all_gather" && in_place) {
      input = std::span<T>(out_.get() + static_cast<std::size_t>(rank_) * ic, ic);
    }
    const bool contributes = op != "broadcast" || rank_ == config_.root;
    if (contributes) {
      for (std::size_t i = 0; i < input.size(); ++i) input[i] = element<T>(pattern_(rank_, i));
    }

    execute(bytes, in_place);

    const collie::bench::CheckPoint at{rank_, config_.root, ic, oc,
                                       (rank_ ^ 1) < ranks_ ? rank_ ^ 1 : -1};
    std::size_t wrong = 0;
    for (std::size_t i = 0; i < oc; ++i) {
      if (!same(out_[i], element<T>(collie::bench::expected_value(pattern_, at, i)))) ++wrong;
    }
    return wrong;
  }

  // Warm-up, a barrier so every rank starts together, then the timed loop; each rank's time per
  // operation, reduced to the fastest, mean and slowest rank.
  collie::bench::Times measure(std::size_t bytes, bool in_place) {
    for (int i = 0; i < config_.sweep.warmup; ++i) execute(bytes, in_place);
    group_.barrier();
    const auto start = std::chrono::steady_clock::now();
    const int iters = collie::bench::timed_iterations(config_.sweep, bytes);
    for (int i = 0; i < iters; ++i) execute(bytes, in_place);
    const std::chrono::duration<double, std::micro> elapsed =
        std::chrono::steady_clock::now() - start;
    const double us = elapsed.count() / iters;
    std::array<double, 1> low{us}, high{us};
    group_.all_min(low);
    group_.all_max(high);
    return {low[0], reduce_sum(us) / ranks_, high[0], iters};
  }

  double reduce_sum(double value) {
    std::array<double, 1> sum{value};
    group_.all_sum(sum);
    return sum[0];
  }

  collie::Group& group_;
  const Config& config_;
  int rank_, ranks_;
  collie::bench::Pattern pattern_;
  std::unique_ptr<T[]> in_, out_;
};

// Runs the driver for the element type named `type` (a collie::name(DataType)).
template <class... T>
int run_typed(collie::Group& group, const Config& config, collie::detail::TypeList<T...>) {
  int code = exit_usage;
  (void)((collie::name(collie::data_type_v<T>) == config.type
              ? (code = Driver<T>(group, config).run(), true)
              : false) ||
         ...);
  return code;
}

int run_rank(collie::Group& group, const Config& config) {
  return run_typed(group, config, collie::detail::ElementTypes{});
}

template <class... T>
std::vector<std::string> type_names(collie::detail::TypeList<T...>) {
  return {std::string(collie::name(collie::data_type_v<T>))...};
}

// --threads: the ranks run over the in-process transport, with the algorithm COLLIE_ALGORITHM (or
// MLX_ALGORITHM) names among the enabled ones (default: the first), its knobs read from the
// environment as collie::init() reads them.
int run_threads(const Config& config) {
  std::string algorithm;
  if (auto variable = collie::detail::env("ALGORITHM")) algorithm = variable->value;
  // Every rank computes the same summed #wrong, so rank 0's code stands for all.
  int code = exit_ok;
  bool found = false;
  std::error_code ec;
  collie::detail::for_each_algorithm<collie::InProcessTransport>([&]<class A>() {
    if (found || (!algorithm.empty() && A::name != algorithm)) return;
    found = true;
    A policy;
    if (!collie::detail::knobs_from_environment(policy, ec)) return;
    collie::run_as_threads<A>(
        config.threads,
        [&](collie::Group& group) {
          const int rank_code = run_rank(group, config);
          if (group.rank() == 0) code = rank_code;
        },
        policy);
  });
  if (ec) throw UsageError(collie::detail::last_error_message);
  if (!found) {
    throw UsageError("COLLIE_ALGORITHM=" + algorithm + " is not an algorithm; use one of: " +
                     collie::detail::algorithm_names<collie::InProcessTransport>());
  }
  return code;
}

// --list-algorithms: the algorithms the ring backend can run (COLLIE_ALGORITHM's values), one per
// line, for bench/compare.py.
int list_algorithms() {
#if COLLIE_WITH_TCP
  collie::detail::for_each_algorithm<collie::TcpTransport>(
      [&]<class A>() { std::printf("%s\n", std::string(A::name).c_str()); });
#endif
  return exit_ok;
}

// Messages go out as one line each, however the library or CLI11 broke them.
void print_error(const std::string& text) {
  std::string line = text;
  std::replace(line.begin(), line.end(), '\n', ' ');
  std::fprintf(stderr, "collectives: %s\n", line.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  Config config;
  CLI::App app{"collie collectives over a sweep of message sizes, nccl-tests style"};
  collie::bench::add_sweep_options(app, config.sweep);
  app.add_option("-o,--op", config.op, "the collective")
      ->check(CLI::IsMember(std::vector<std::string>(op_names.begin(), op_names.end())))
      ->capture_default_str();
  app.add_option("-d,--datatype", config.type, "the element type")
      ->check(CLI::IsMember(type_names(collie::detail::ElementTypes{})))
      ->capture_default_str();
  app.add_flag("--in-place", config.in_place, "time the in-place form (default: both forms)");
  app.add_flag("--out-of-place", config.out_of_place,
               "time the out-of-place form (default: both forms)");
  app.add_option("--root", config.root, "the broadcast root")->capture_default_str();
  bool list = false;
  app.add_flag("--list-algorithms", list,
               "print the algorithms COLLIE_ALGORITHM may name (one per line) and exit");
  app.add_option("--threads", config.threads,
                 "run this many ranks as threads over the in-process transport instead of the "
                 "ranks the environment describes")
      ->check(CLI::PositiveNumber);
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    print_error(std::string(e.what()) + " (see --help)");
    return exit_usage;
  }

  try {
    if (list) return list_algorithms();
    if (config.threads > 0) return run_threads(config);
    collie::Group world = collie::init();
    return run_rank(world, config);
  } catch (const UsageError& e) {
    print_error(e.what());
    return exit_usage;
  } catch (const std::exception& e) {
    print_error(e.what());
    return exit_failed;
  }
}
