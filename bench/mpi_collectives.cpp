// OpenMPI's own collectives under collie's sweep, timing method and report: the peer every collie
// number is compared against, called exactly as an application would call MPI (nothing of MPI's
// is warmed or tuned beyond what the command line and mpirun's MCA settings ask for).
//
//   mpirun -np 4 bazel-bin/bench/mpi_collectives -b 64K -e 256M -f 4 -o all_sum
//   mpirun -np 4 --mca pml ob1 --mca btl tcp,self bazel-bin/bench/mpi_collectives --label openmpi-tcp
//
// Operations (-o) and the MPI call each times: all_sum, all_prod, all_max, all_min
// (MPI_Allreduce), all_gather (MPI_Allgather), sum_scatter (MPI_Reduce_scatter_block, MPI_SUM),
// broadcast (MPI_Bcast, in place only), all_to_all (MPI_Alltoall), sendrecv (MPI_Sendrecv between
// ranks r and r^1, MPI_Sendrecv_replace in place; an odd last rank idles). The in-place form
// passes MPI_IN_PLACE. Sizes, counts, bus bandwidths and check patterns are those of collie's
// driver (bench/collectives.cpp), so the two tables compare row by row.
//
// Exit codes: 0 ok, 1 a result was wrong, 2 bad command line.
#include <mpi.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "report.hpp"

namespace {

using collie::bench::is_reduction;
using collie::bench::per_rank_blocks;
using collie::bench::redop_of;

constexpr int exit_ok = 0, exit_wrong = 1, exit_usage = 2;

constexpr std::array<std::string_view, 9> op_names = {
    "all_sum",     "all_prod",  "all_max",    "all_min", "all_gather",
    "sum_scatter", "broadcast", "all_to_all", "sendrecv"};
constexpr std::array<std::string_view, 4> type_names = {"float32", "float64", "int32", "int64"};

struct Config {
  collie::bench::Sweep sweep;
  std::string op = "all_sum";
  std::string type = "float32";
  bool in_place = false;      // --in-place given
  bool out_of_place = false;  // --out-of-place given; neither flag means both
  int root = 0;
};

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

MPI_Op mpi_op_of(std::string_view op) {
  if (op == "all_prod") return MPI_PROD;
  if (op == "all_max") return MPI_MAX;
  if (op == "all_min") return MPI_MIN;
  return MPI_SUM;
}

std::string mpi_call_of(std::string_view op) {
  if (is_reduction(op)) return "MPI_Allreduce";
  if (op == "all_gather") return "MPI_Allgather";
  if (op == "sum_scatter") return "MPI_Reduce_scatter_block";
  if (op == "broadcast") return "MPI_Bcast";
  if (op == "all_to_all") return "MPI_Alltoall";
  return "MPI_Sendrecv";
}

template <class T>
MPI_Datatype mpi_type() {
  if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
  if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
  if constexpr (std::is_same_v<T, std::int32_t>) return MPI_INT32_T;
  if constexpr (std::is_same_v<T, std::int64_t>) return MPI_INT64_T;
}

// "mpi", plus the MCA choices that decide what MPI actually runs over (mpirun --mca passes them
// to the ranks as OMPI_MCA_* variables), so a table says which OpenMPI it measured.
std::string transport_from_environment() {
  std::string transport = "mpi";
  std::string details;
  for (const char* name : {"pml", "btl", "coll"}) {
    const std::string variable = std::string("OMPI_MCA_") + name;
    if (const char* value = std::getenv(variable.c_str()); value != nullptr && *value != '\0') {
      details += (details.empty() ? "" : ", ") + std::string(name) + "=" + value;
    }
  }
  return details.empty() ? transport : transport + " (" + details + ")";
}

// ----- check patterns ----------------------------------------------------------------------------
// The values of collie's driver: every input element a small non-negative integer p(rank, index),
// so each expected result is an integer computed exactly here and compared exactly (sums of at
// most 16 distinct values stay far inside every type's exact-integer range).

// ----- the driver for one element type -----------------------------------------------------------

template <class T>
class Driver {
 public:
  explicit Driver(const Config& config) : config_(config) {
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &ranks_);
    pattern_ = {config.op, ranks_, 16};
  }

  int run() {
    const std::string_view op = config_.op;
    if (op == "broadcast" && (config_.root < 0 || config_.root >= ranks_)) {
      throw UsageError("--root " + std::to_string(config_.root) + " is outside [0, " +
                       std::to_string(ranks_) + ")");
    }
    bool out_of_place = config_.out_of_place || !config_.in_place;
    bool in_place = config_.in_place || !config_.out_of_place;
    if (op == "broadcast") {
      // MPI_Bcast has one buffer: the root's data is the output.
      if (config_.out_of_place && !config_.in_place) {
        throw UsageError("MPI_Bcast has no out-of-place form; use --in-place");
      }
      out_of_place = false;
      in_place = true;
    }

    const auto sizes =
        collie::bench::sizes(config_.sweep, sizeof(T), per_rank_blocks(op) ? ranks_ : 1);
    if (!sizes.empty() && sizes.back() / sizeof(T) > static_cast<std::size_t>(INT_MAX)) {
      throw UsageError("-e " + std::to_string(config_.sweep.max_bytes) +
                       " needs more elements than an MPI count (int) holds; use at most " +
                       std::to_string(static_cast<std::size_t>(INT_MAX) * sizeof(T)) + " bytes");
    }
    allocate(sizes.empty() ? 0 : sizes.back() / sizeof(T), out_of_place, in_place);

    collie::bench::Header header;
    header.tool = "mpi-collectives";
    header.contender = config_.sweep.label.empty() ? "openmpi" : config_.sweep.label;
    header.op = config_.op;
    header.type = config_.type;
    header.redop = std::string(redop_of(op));
    header.transport = transport_from_environment();
    header.algorithm = mpi_call_of(op);
    header.ranks = ranks_;
    header.host = collie::bench::host_name();
    collie::bench::Report report(std::move(header), rank_ == 0);
    report.set_json_path(config_.sweep.json_path);

    std::size_t wrong_total = 0;
    for (std::size_t bytes : sizes) {
      for (bool in : {false, true}) {
        if ((in && !in_place) || (!in && !out_of_place)) continue;
        std::uint64_t wrong = config_.sweep.check ? check(bytes, in) : 0;
        const collie::bench::Times time = measure(bytes, in);
        MPI_Allreduce(MPI_IN_PLACE, &wrong, 1, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD);
        wrong_total += wrong;
        report.add(collie::bench::make_row(op, ranks_, bytes, row_count(bytes), in, time,
                                           static_cast<std::size_t>(wrong)));
      }
    }
    std::uint64_t rss = collie::bench::peak_rss_bytes();
    MPI_Allreduce(MPI_IN_PLACE, &rss, 1, MPI_UINT64_T, MPI_MAX, MPI_COMM_WORLD);
    report.finish(static_cast<std::size_t>(rss));
    return wrong_total == 0 ? exit_ok : exit_wrong;
  }

 private:
  // Buffers for the largest size, allocated once and written through before any timing, as
  // collie's driver does: a page's first touch costs a fault that would otherwise be charged to
  // the first size using it.
  void allocate(std::size_t count, bool out_of_place, bool in_place) {
    const std::string_view op = config_.op;
    const auto n = static_cast<std::size_t>(ranks_);
    std::size_t in_count = out_of_place ? count : 0, out_count = count;
    if (op == "all_gather" && out_of_place) in_count = count / n;
    // In place, MPI_Reduce_scatter_block reads the whole input from the output buffer.
    if (op == "sum_scatter" && !in_place) out_count = count / n;
    in_ = allocate_touched(in_count);
    out_ = allocate_touched(out_count);
  }

  static std::unique_ptr<T[]> allocate_touched(std::size_t count) {
    auto buffer = std::make_unique_for_overwrite<T[]>(count);
    std::fill_n(buffer.get(), count, T(0));
    return buffer;
  }

  std::size_t in_count(std::size_t bytes) const { return counts(bytes).in; }
  std::size_t out_count(std::size_t bytes) const { return counts(bytes).out; }
  std::size_t row_count(std::size_t bytes) const { return counts(bytes).row; }
  collie::bench::Counts counts(std::size_t bytes) const {
    return collie::bench::counts(config_.op, bytes, sizeof(T), ranks_);
  }

  int partner() const { return (rank_ ^ 1) < ranks_ ? rank_ ^ 1 : MPI_PROC_NULL; }

  // One operation on the first `bytes` of the buffers (MPI takes int counts; run() checked that
  // the largest size fits).
  void execute(std::size_t bytes, bool in_place) {
    const std::string_view op = config_.op;
    const MPI_Datatype type = mpi_type<T>();
    const int ic = static_cast<int>(in_count(bytes)), oc = static_cast<int>(out_count(bytes));
    const void* send = in_place ? MPI_IN_PLACE : in_.get();
    T* out = out_.get();
    if (is_reduction(op)) {
      MPI_Allreduce(send, out, oc, type, mpi_op_of(op), MPI_COMM_WORLD);
    } else if (op == "all_gather") {
      MPI_Allgather(send, ic, type, out, ic, type, MPI_COMM_WORLD);
    } else if (op == "sum_scatter") {
      MPI_Reduce_scatter_block(send, out, oc, type, MPI_SUM, MPI_COMM_WORLD);
    } else if (op == "broadcast") {
      MPI_Bcast(out, oc, type, config_.root, MPI_COMM_WORLD);
    } else if (op == "all_to_all") {
      const int block = oc / ranks_;
      MPI_Alltoall(send, block, type, out, block, type, MPI_COMM_WORLD);
    } else if (op == "sendrecv") {
      const int peer = partner();
      if (in_place) {
        MPI_Sendrecv_replace(out, oc, type, peer, 0, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      } else {
        MPI_Sendrecv(in_.get(), ic, type, peer, 0, out, oc, type, peer, 0, MPI_COMM_WORLD,
                     MPI_STATUS_IGNORE);
      }
    }
  }

  // Fills the inputs with the pattern, runs the operation once and counts this rank's wrong
  // output elements.
  std::uint64_t check(std::size_t bytes, bool in_place) {
    const std::string_view op = config_.op;
    const std::size_t ic = in_count(bytes), oc = out_count(bytes);
    // In place, the input lives in the output buffer: all of it for sum_scatter, this rank's
    // block for all_gather.
    const std::size_t filled = op == "sum_scatter" && in_place ? ic : oc;
    std::fill_n(out_.get(), filled, T(0));
    T* input = in_place ? out_.get() : in_.get();
    std::size_t input_count = ic;
    if (op == "all_gather" && in_place) input += static_cast<std::size_t>(rank_) * ic;
    if (op == "broadcast" && rank_ != config_.root) input_count = 0;
    for (std::size_t i = 0; i < input_count; ++i) input[i] = static_cast<T>(pattern_(rank_, i));

    execute(bytes, in_place);

    // sendrecv: an idle rank keeps what its output held (its input, in place).
    const int peer = partner();
    const collie::bench::CheckPoint at{rank_, config_.root, ic, oc,
                                       peer == MPI_PROC_NULL ? -1 : peer, in_place};
    std::uint64_t wrong = 0;
    for (std::size_t i = 0; i < oc; ++i) {
      if (out_[i] != static_cast<T>(collie::bench::expected_value(pattern_, at, i))) ++wrong;
    }
    return wrong;
  }

  // Warm-up, a barrier so every rank starts together, then the timed loop; each rank's time per
  // operation, reduced to the fastest, mean and slowest rank.
  collie::bench::Times measure(std::size_t bytes, bool in_place) {
    for (int i = 0; i < config_.sweep.warmup; ++i) execute(bytes, in_place);
    MPI_Barrier(MPI_COMM_WORLD);
    const auto start = std::chrono::steady_clock::now();
    const int iters = collie::bench::timed_iterations(config_.sweep, bytes);
    for (int i = 0; i < iters; ++i) execute(bytes, in_place);
    const std::chrono::duration<double, std::micro> elapsed =
        std::chrono::steady_clock::now() - start;
    const double us = elapsed.count() / iters;
    double low = us, sum = us, high = us;
    MPI_Allreduce(MPI_IN_PLACE, &low, 1, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &high, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    return {low, sum / ranks_, high, iters};
  }

  const Config& config_;
  int rank_ = 0, ranks_ = 1;
  collie::bench::Pattern pattern_{};
  std::unique_ptr<T[]> in_, out_;
};

int run(const Config& config) {
  if (config.type == "float32") return Driver<float>(config).run();
  if (config.type == "float64") return Driver<double>(config).run();
  if (config.type == "int32") return Driver<std::int32_t>(config).run();
  return Driver<std::int64_t>(config).run();
}

// Messages go out as one line each, however CLI11 broke them.
void print_error(const std::string& text) {
  std::string line = text;
  std::replace(line.begin(), line.end(), '\n', ' ');
  std::fprintf(stderr, "mpi_collectives: %s\n", line.c_str());
}

int parse_and_run(int argc, char** argv, int rank) {
  Config config;
  CLI::App app{"OpenMPI's collectives over a sweep of message sizes, nccl-tests style"};
  collie::bench::add_sweep_options(app, config.sweep);
  app.add_option("-o,--op", config.op, "the collective")
      ->check(CLI::IsMember(std::vector<std::string>(op_names.begin(), op_names.end())))
      ->capture_default_str();
  app.add_option("-d,--datatype", config.type, "the element type")
      ->check(CLI::IsMember(std::vector<std::string>(type_names.begin(), type_names.end())))
      ->capture_default_str();
  app.add_flag("--in-place", config.in_place,
               "time the in-place form, MPI_IN_PLACE (default: both forms)");
  app.add_flag("--out-of-place", config.out_of_place,
               "time the out-of-place form (default: both forms; broadcast has none)");
  app.add_option("--root", config.root, "the broadcast root")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    // --help. Every rank parses the same line; one copy of the help is enough.
    std::ostringstream ignored;
    return rank == 0 ? app.exit(e) : app.exit(e, ignored, ignored);
  } catch (const CLI::ParseError& e) {
    if (rank == 0) print_error(std::string(e.what()) + " (see --help)");
    return exit_usage;
  }
  try {
    return run(config);
  } catch (const UsageError& e) {
    if (rank == 0) print_error(e.what());
    return exit_usage;
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  const int code = parse_and_run(argc, argv, rank);
  MPI_Finalize();
  return code;
}
