// The benchmark drivers' shared half: the nccl-tests sweep options, bus-bandwidth factors, the
// nccl-tests table on stdout and a JSON report, so that collie and its peers (MPI, raw sockets)
// are measured and printed the same way and can be compared row by row.
//
//   collie::bench::Sweep sweep;
//   CLI::App app{"all_sum sweep"};
//   collie::bench::add_sweep_options(app, sweep);
//   CLI11_PARSE(app, argc, argv);
//   collie::bench::Report report({.tool = "collectives", .op = "all_sum", ...}, rank == 0);
//   report.set_json_path(sweep.json_path);
//   for (auto bytes : collie::bench::sizes(sweep, sizeof(float), 1)) {
//     ...time it, reduce min/avg/max across ranks...
//     report.add(collie::bench::make_row("all_sum", ranks, bytes, bytes / 4, false, t, wrong));
//   }
//   report.finish(max_rss_across_ranks);
#pragma once

#include <sys/resource.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace collie::bench {

/// A sweep of message sizes and the repetitions at each, with nccl-tests' flags and defaults
/// (8 B to 256 MiB, doubling; 5 warm-up and 20 timed iterations; results checked).
struct Sweep {
  std::size_t min_bytes = 8, max_bytes = 256 << 20;
  double factor = 2;           // -f; used when step_bytes == 0
  std::size_t step_bytes = 0;  // -i; linear step instead of factor
  int warmup = 5, iters = 20;  // -w, -n
  // -N: at each size, time enough iterations to move this many bytes per rank (at least -n, at
  // most max_iters), so small sizes are timed over more than a few microseconds without making
  // large ones take minutes. 0 = -n at every size.
  std::size_t iter_bytes = 0;
  int max_iters = 10000;  // --max_iters
  bool check = true;           // -c 1|0
  std::string json_path;       // --json FILE ("" = none)
  std::string label;           // --label NAME, names the contender in the JSON
};

/// Parses a byte count: digits with an optional binary suffix K, M, G or T (either case, and an
/// optional trailing "B" or "iB": "64K", "64KB", "64KiB" are all 65536). Throws
/// std::invalid_argument naming the text when it is not such a count or does not fit a size_t.
inline std::size_t parse_size(std::string_view text) {
  auto fail = [&](const char* why) {
    throw std::invalid_argument("\"" + std::string(text) + "\" is not a byte count (" + why +
                                "; e.g. 8, 64K, 256M, 1G)");
  };
  std::size_t digits = 0;
  std::size_t value = 0;
  constexpr std::size_t max = std::numeric_limits<std::size_t>::max();
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) {
    const std::size_t digit = static_cast<std::size_t>(text[digits] - '0');
    if (value > (max - digit) / 10) fail("too large");
    value = value * 10 + digit;
    ++digits;
  }
  if (digits == 0) fail("no digits");
  std::string unit;
  for (char c : text.substr(digits)) {
    unit += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  int shift = 0;
  if (!unit.empty() && unit != "B") {
    switch (unit[0]) {
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      case 'T': shift = 40; break;
      default: fail("unknown unit");
    }
    const std::string_view rest = std::string_view(unit).substr(1);
    if (!rest.empty() && rest != "B" && rest != "IB") fail("unknown unit");
  }
  if (shift != 0 && value > (max >> shift)) fail("too large");
  return value << shift;
}

namespace detail {

// CLI11 transform: rewrites "256M" into "268435456" before the option's own conversion, so the
// size options bind straight to size_t fields and --help still shows their defaults.
inline CLI::Validator size_transform() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        try {
          text = std::to_string(parse_size(text));
          return {};
        } catch (const std::invalid_argument& error) {
          return error.what();
        }
      },
      "SIZE", "byte count");
}

}  // namespace detail

/// Adds nccl-tests' sweep flags to `app`, bound to `sweep`: -b/--minbytes, -e/--maxbytes,
/// -i/--stepbytes (all accept "64K", "256M"), -f/--stepfactor (> 1), -w/--warmup_iters,
/// -n/--iters, -N/--iter_bytes, --max_iters, -c/--check 1|0, plus --json FILE and --label NAME.
inline void add_sweep_options(CLI::App& app, Sweep& sweep) {
  app.add_option("-b,--minbytes", sweep.min_bytes, "smallest size in bytes (64K, 1M, ...)")
      ->transform(detail::size_transform())
      ->capture_default_str();
  app.add_option("-e,--maxbytes", sweep.max_bytes, "largest size in bytes")
      ->transform(detail::size_transform())
      ->capture_default_str();
  app.add_option("-f,--stepfactor", sweep.factor, "multiply the size by this between steps")
      ->check(CLI::Validator(
          [](std::string& text) -> std::string {
            try {
              if (std::stod(text) > 1) return {};
            } catch (const std::exception&) {
            }
            return "the step factor must be a number greater than 1, not " + text;
          },
          "FACTOR>1", "step factor"))
      ->capture_default_str();
  app.add_option("-i,--stepbytes", sweep.step_bytes,
                 "add this many bytes between steps instead of multiplying (0: use -f)")
      ->transform(detail::size_transform())
      ->capture_default_str();
  app.add_option("-w,--warmup_iters", sweep.warmup, "untimed iterations per size")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("-n,--iters", sweep.iters, "timed iterations per size")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("-N,--iter_bytes", sweep.iter_bytes,
                 "time enough iterations at each size to move this many bytes per rank, at least "
                 "-n and at most --max_iters (0: -n at every size)")
      ->transform(detail::size_transform())
      ->capture_default_str();
  app.add_option("--max_iters", sweep.max_iters, "the most timed iterations -N asks for")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app.add_option("-c,--check", sweep.check, "check the results (1) or not (0)")
      ->capture_default_str();
  app.add_option("--json", sweep.json_path, "also write the results to this JSON file");
  app.add_option("--label", sweep.label, "the contender's name in the report");
}

/// The byte sizes of the sweep, from min_bytes up to max_bytes, each rounded down to a multiple
/// of element_bytes * count_multiple (all-gather, reduce-scatter and all-to-all need an element
/// count divisible by the rank count), skipping zero and repeats; ascending. Empty when
/// min_bytes > max_bytes. A factor of at most 1 with no step gives min_bytes alone.
inline std::vector<std::size_t> sizes(const Sweep& sweep, std::size_t element_bytes,
                                      std::size_t count_multiple) {
  const std::size_t unit = std::max<std::size_t>(1, element_bytes) *
                           std::max<std::size_t>(1, count_multiple);
  std::vector<std::size_t> out;
  auto keep = [&](std::size_t bytes) {
    const std::size_t rounded = bytes / unit * unit;
    if (rounded != 0 && (out.empty() || out.back() != rounded)) out.push_back(rounded);
  };
  std::size_t bytes = sweep.min_bytes;
  while (bytes <= sweep.max_bytes) {
    keep(bytes);
    std::size_t next;
    if (sweep.step_bytes != 0) {
      if (bytes > std::numeric_limits<std::size_t>::max() - sweep.step_bytes) break;
      next = bytes + sweep.step_bytes;
    } else {
      if (!(sweep.factor > 1)) break;
      const double scaled = static_cast<double>(bytes) * sweep.factor;
      if (scaled >= static_cast<double>(std::numeric_limits<std::size_t>::max())) break;
      // A fractional factor on a small size (8 * 1.1) must still advance.
      next = std::max(bytes + 1, static_cast<std::size_t>(scaled));
    }
    bytes = next;
  }
  return out;
}

/// Timed iterations at a size of `bytes`: -n, or with -N the count that moves at least
/// `iter_bytes`, capped at `max_iters` and never below -n. It depends on the sweep and the size
/// alone, so every rank of a run arrives at the same count without asking the others.
inline int timed_iterations(const Sweep& sweep, std::size_t bytes) {
  if (sweep.iter_bytes == 0 || bytes == 0) return sweep.iters;
  const std::size_t wanted = sweep.iter_bytes / bytes + (sweep.iter_bytes % bytes != 0 ? 1 : 0);
  const auto most = static_cast<std::size_t>(std::max(sweep.max_iters, sweep.iters));
  return std::max(sweep.iters, static_cast<int>(std::min(wanted, most)));
}

/// The reductions the drivers know (all_sum, all_prod, all_max, all_min).
inline bool is_reduction(std::string_view op) {
  return op == "all_sum" || op == "all_prod" || op == "all_max" || op == "all_min";
}

/// Operations whose buffers split into one block per rank, so their counts must divide by it.
inline bool per_rank_blocks(std::string_view op) {
  return op == "all_gather" || op == "sum_scatter" || op == "all_to_all";
}

/// The nccl-tests "redop" column for an operation ("none" for data movement).
inline std::string_view redop_of(std::string_view op) {
  if (op == "all_sum" || op == "sum_scatter") return "sum";
  if (op == "all_prod") return "prod";
  if (op == "all_max") return "max";
  if (op == "all_min") return "min";
  return "none";
}

/// Element counts of one rank's input and output for a sweep size of `bytes`, and the count
/// column as nccl-tests prints it (per-rank send count for all-gather, receive count for
/// reduce-scatter, one block for all-to-all, the whole buffer otherwise).
struct Counts {
  std::size_t in = 0, out = 0, row = 0;
};
inline Counts counts(std::string_view op, std::size_t bytes, std::size_t element_bytes, int ranks) {
  const std::size_t count = bytes / element_bytes;
  const auto n = static_cast<std::size_t>(ranks);
  return {op == "all_gather" ? count / n : count, op == "sum_scatter" ? count / n : count,
          per_rank_blocks(op) ? count / n : count};
}

/// The value rank `rank` puts at `index` of its input, as a small integer every element type
/// holds exactly; `sum_period` bounds the sum patterns so that their totals stay exact too.
struct Pattern {
  std::string_view op;
  int ranks = 1;
  long long sum_period = 16;

  long long operator()(int rank, std::size_t index) const {
    const auto i = static_cast<long long>(index % 1000003);  // keeps the arithmetic small
    const long long r = rank;
    if (op == "all_sum" || op == "sum_scatter") return (r + i) % sum_period;
    // One rank per element contributes 2, 3 or 4 and the rest 1: the product never overflows.
    if (op == "all_prod") return i % ranks == r ? 2 + (i / ranks) % 3 : 1;
    if (op == "all_max" || op == "all_min") return (5 * r + 3 * i) % 97;
    // Data movement: values 1..101, never the 0 that pre-fills outputs, so an element that was
    // not written shows up as wrong.
    return 1 + (31 * r + 7 * i) % 101;
  }
};

/// Where one rank's check stands: its rank, the root of a broadcast, the per-rank input and
/// output counts, and the sendrecv partner (-1: this rank idles; its output then holds 0, or its
/// own input where the exchange was in place and left the buffer as it was).
struct CheckPoint {
  int rank = 0;
  int root = 0;
  std::size_t in_count = 0, out_count = 0;
  int partner = -1;
  bool idle_keeps_input = false;
};

/// The reference model: what output element `i` of `at.rank` must hold after `pattern.op`,
/// folding the pattern over the ranks in 64-bit integers.
inline long long expected_value(const Pattern& pattern, const CheckPoint& at, std::size_t i) {
  const std::string_view op = pattern.op;
  if (is_reduction(op)) {
    long long acc = pattern(0, i);
    for (int r = 1; r < pattern.ranks; ++r) {
      const long long p = pattern(r, i);
      if (op == "all_sum") acc += p;
      if (op == "all_prod") acc *= p;
      if (op == "all_max") acc = std::max(acc, p);
      if (op == "all_min") acc = std::min(acc, p);
    }
    return acc;
  }
  if (op == "sum_scatter") {
    long long acc = 0;
    const std::size_t index = static_cast<std::size_t>(at.rank) * at.out_count + i;
    for (int r = 0; r < pattern.ranks; ++r) acc += pattern(r, index);
    return acc;
  }
  if (op == "all_gather") return pattern(static_cast<int>(i / at.in_count), i % at.in_count);
  if (op == "broadcast") return pattern(at.root, i);
  if (op == "all_to_all") {
    // Block k of this rank's output is block `rank` of rank k's input.
    const std::size_t block = at.out_count / static_cast<std::size_t>(pattern.ranks);
    return pattern(static_cast<int>(i / block), static_cast<std::size_t>(at.rank) * block + i % block);
  }
  if (at.partner >= 0) return pattern(at.partner, i);  // sendrecv
  return at.idle_keeps_input ? pattern(at.rank, i) : 0;
}

/// busbw / algbw for an operation on `ranks` ranks, as nccl-tests defines it: what a link of the
/// optimal ring carries relative to the buffer size. all_sum, all_prod, all_max, all_min,
/// all_reduce: 2(n-1)/n; all_gather, sum_scatter, reduce_scatter, all_to_all: (n-1)/n;
/// broadcast, sendrecv, wire: 1; every operation on one rank: 1. Throws std::invalid_argument
/// for an operation it does not know, rather than printing a bus bandwidth that means nothing.
inline double bus_factor(std::string_view op, int ranks) {
  const double n = ranks;
  double factor;
  if (op == "all_sum" || op == "all_prod" || op == "all_max" || op == "all_min" ||
      op == "all_reduce") {
    factor = 2 * (n - 1) / n;
  } else if (op == "all_gather" || op == "sum_scatter" || op == "reduce_scatter" ||
             op == "all_to_all") {
    factor = (n - 1) / n;
  } else if (op == "broadcast" || op == "sendrecv" || op == "wire") {
    factor = 1;
  } else {
    throw std::invalid_argument("bus_factor: unknown operation \"" + std::string(op) + "\"");
  }
  return ranks <= 1 ? 1.0 : factor;
}

/// One operation's time across ranks, already reduced by the caller (the slowest rank is `max`).
struct Times {
  double min_us = 0, avg_us = 0, max_us = 0;
  int iters = 0;  // timed iterations behind them (0: not recorded)
};

/// One row of the table: a size and placement, its time and bandwidths, and how many elements
/// were wrong summed over all ranks.
struct Row {
  std::size_t bytes = 0, count = 0;
  bool in_place = false;
  Times time;
  double algbw_gbs = 0, busbw_gbs = 0;
  std::size_t wrong = 0;
};

/// A row with algbw = bytes / max_us in decimal GB/s and busbw = algbw * bus_factor(op, ranks).
/// `bytes` is the per-rank buffer size as nccl-tests defines it (for all-gather the gathered
/// output, for reduce-scatter the input, for all-to-all either buffer).
inline Row make_row(std::string_view op, int ranks, std::size_t bytes, std::size_t count,
                    bool in_place, Times t, std::size_t wrong) {
  Row row;
  row.bytes = bytes;
  row.count = count;
  row.in_place = in_place;
  row.time = t;
  row.wrong = wrong;
  // bytes / (us * 1e-6) / 1e9 = bytes / us / 1e3.
  row.algbw_gbs = t.max_us > 0 ? static_cast<double>(bytes) / t.max_us / 1e3 : 0;
  row.busbw_gbs = row.algbw_gbs * bus_factor(op, ranks);
  return row;
}

/// What was measured: the program, the contender's name, the operation, element type, reduction
/// ("none" where there is none), transport and algorithm, the rank count and the host.
struct Header {
  std::string tool, contender, op, type, redop, transport, algorithm;
  int ranks = 1;
  std::string host;
};

/// This machine's host name, for Header::host ("" if it cannot be read).
inline std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0) return {};
  return name;
}

/// This process's peak resident set size in bytes (getrusage; Linux reports kilobytes).
inline std::size_t peak_rss_bytes() {
  rusage usage{};
  if (::getrusage(RUSAGE_SELF, &usage) != 0) return 0;
#if defined(__APPLE__)
  return static_cast<std::size_t>(usage.ru_maxrss);
#else
  return static_cast<std::size_t>(usage.ru_maxrss) * 1024;
#endif
}

/// The table on stdout and the JSON report of one run. Every rank may build one and call every
/// member; only the one built with `print` (rank 0) writes anything, so the others cost nothing.
///
/// Rows print as they arrive, nccl-tests style: an out-of-place row opens a line, and an in-place
/// row of the same size that follows it completes that line; a row with no partner leaves its
/// half blank. After the nccl-tests columns come the cross-rank min and avg times of each half
/// (the nccl-tests "time" is the slowest rank's). Not thread-safe.
class Report {
 public:
  /// Prints the '#' header block naming everything in `header` when `print`.
  Report(Header header, bool print) : header_(std::move(header)), print_(print) {
    if (!print_) return;
    std::printf("# collie benchmark: %s\n", header_.tool.c_str());
    std::printf("#   contender %s\n", header_.contender.c_str());
    std::printf("#   op %s  type %s  redop %s\n", header_.op.c_str(), header_.type.c_str(),
                header_.redop.c_str());
    std::printf("#   transport %s  algorithm %s  ranks %d  host %s\n", header_.transport.c_str(),
                header_.algorithm.c_str(), header_.ranks, header_.host.c_str());
    std::printf("#\n");
    std::printf("# %10s  %12s  %8s  %6s  %38s  %38s  %41s\n", "", "", "", "",
                "out-of-place", "in-place", "time across ranks (us)");
    std::printf("# %10s  %12s  %8s  %6s  %10s %8s %8s %8s  %10s %8s %8s %8s  %10s %10s %10s %10s\n",
                "size", "count", "type", "redop", "time", "algbw", "busbw", "#wrong", "time",
                "algbw", "busbw", "#wrong", "oop min", "oop avg", "ip min", "ip avg");
    std::printf("# %10s  %12s  %8s  %6s  %10s %8s %8s %8s  %10s %8s %8s\n", "(B)",
                "(elements)", "", "", "(us)", "(GB/s)", "(GB/s)", "", "(us)", "(GB/s)", "(GB/s)");
    std::fflush(stdout);
  }

  Report(const Report&) = delete;
  Report& operator=(const Report&) = delete;

  /// Where finish() writes the JSON ("" = nowhere).
  void set_json_path(std::string path) { json_path_ = std::move(path); }

  /// Prints one row at once (flushed) and keeps it for the JSON and the average.
  void add(const Row& row) {
    rows_.push_back(row);
    if (!print_) return;
    if (row.in_place && open_ && open_->bytes == row.bytes) {
      print_half(row);
      close_line(row);
      return;
    }
    if (open_) close_line(std::nullopt);
    print_prefix(row);
    if (row.in_place) {
      print_blank_half();
      print_half(row);
      close_line(row);
    } else {
      print_half(row);
      open_ = row;
      std::fflush(stdout);
    }
  }

  /// Closes the table with the peak RSS (`rss_bytes`, the caller's maximum over ranks), the
  /// #wrong total and the average bus bandwidth over every row (nccl-tests' figure of merit),
  /// and writes the JSON when a path was set.
  /// Throws std::runtime_error if the JSON file cannot be written.
  void finish(std::size_t rss_bytes) {
    if (!print_) return;
    if (open_) close_line(std::nullopt);
    std::size_t wrong = 0;
    double busbw_sum = 0;
    for (const Row& row : rows_) {
      wrong += row.wrong;
      busbw_sum += row.busbw_gbs;
    }
    const double avg_busbw = rows_.empty() ? 0 : busbw_sum / static_cast<double>(rows_.size());
    std::printf("# peak RSS : %.1f MiB\n", static_cast<double>(rss_bytes) / (1 << 20));
    std::printf("# Out of bounds values : %zu %s\n", wrong, wrong == 0 ? "OK" : "FAILED");
    std::printf("# Avg bus bandwidth    : %g\n", avg_busbw);
    std::printf("#\n");
    std::fflush(stdout);
    if (json_path_.empty()) return;

    nlohmann::json rows = nlohmann::json::array();
    for (const Row& row : rows_) {
      const nlohmann::json time = {
          {"min", row.time.min_us}, {"avg", row.time.avg_us}, {"max", row.time.max_us}};
      rows.push_back({{"bytes", row.bytes},
                      {"count", row.count},
                      {"in_place", row.in_place},
                      {"time_us", time},
                      {"algbw_gbs", row.algbw_gbs},
                      {"busbw_gbs", row.busbw_gbs},
                      {"wrong", row.wrong},
                      {"iters", row.time.iters}});
    }
    const nlohmann::json report = {{"tool", header_.tool},
                                   {"contender", header_.contender},
                                   {"op", header_.op},
                                   {"type", header_.type},
                                   {"redop", header_.redop},
                                   {"transport", header_.transport},
                                   {"algorithm", header_.algorithm},
                                   {"ranks", header_.ranks},
                                   {"host", header_.host},
                                   {"peak_rss_bytes", rss_bytes},
                                   {"rows", std::move(rows)},
                                   {"avg_busbw_gbs", avg_busbw}};
    std::ofstream file(json_path_);
    file << report.dump(2) << '\n';
    file.close();
    if (!file) throw std::runtime_error("cannot write the JSON report to " + json_path_);
  }

  /// The rows added so far, in order.
  const std::vector<Row>& rows() const noexcept { return rows_; }

 private:
  // Times keep three significant decimals while they are short and drop them as they grow, so
  // the column keeps its width from 1 us to hours.
  static void print_time(double us) {
    std::printf(us < 1e4 ? " %10.2f" : us < 1e7 ? " %10.1f" : " %10.0f", us);
  }

  void print_prefix(const Row& row) const {
    std::printf("  %10zu  %12zu  %8s  %6s ", row.bytes, row.count, header_.type.c_str(),
                header_.redop.c_str());
  }

  static void print_half(const Row& row) {
    std::printf(" ");
    print_time(row.time.max_us);
    std::printf(" %8.2f %8.2f %8zu", row.algbw_gbs, row.busbw_gbs, row.wrong);
  }

  static void print_blank_half() { std::printf("  %10s %8s %8s %8s", "-", "-", "-", "-"); }

  // Ends the open line: blanks for a missing in-place half, then both halves' min and avg.
  void close_line(const std::optional<Row>& in_place) {
    if (!in_place) print_blank_half();
    std::printf(" ");
    if (open_) {
      print_time(open_->time.min_us);
      print_time(open_->time.avg_us);
    } else {
      std::printf(" %10s %10s", "-", "-");
    }
    if (in_place) {
      print_time(in_place->time.min_us);
      print_time(in_place->time.avg_us);
    } else {
      std::printf(" %10s %10s", "-", "-");
    }
    std::printf("\n");
    std::fflush(stdout);
    open_.reset();
  }

  Header header_;
  bool print_;
  std::string json_path_;
  std::vector<Row> rows_;
  std::optional<Row> open_;  // the out-of-place half of the line still waiting for its partner
};

}  // namespace collie::bench
