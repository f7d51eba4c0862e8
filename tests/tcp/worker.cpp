// One rank of the multi-process TCP tests, configured by the environment like any collie
// program (MLX_RANK + MLX_HOSTFILE, COLLIE_ALGORITHM). Modes:
//   worker conformance     every reduction of every element type and op, all_gather,
//                          sum_scatter, broadcast, all_to_all, send/recv between all pairs,
//                          split and barrier, checked against a serial reference; exit 1 on
//                          any mismatch
//   worker big_sum MIB     all_sum of MIB MiB of float32 in a loop (prints "ready" after the
//                          first); on failure prints the error and exits 3
#include "collie/collie.hpp"

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "../conformance/harness.hpp"

namespace {

using namespace collie;
using namespace collie::testing;

int failures = 0;
int checks = 0;

template <class C>
void fail(const C& world, const std::string& what) {
  if (++failures <= 10) std::fprintf(stderr, "rank %d: %s\n", world.rank(), what.c_str());
}

template <class E, class Op, class C>
void check_reduction(C& world, std::uint64_t case_base) {
  const int p = world.size();
  for (std::size_t count : element_counts(p)) {
    for (bool in_place : {true, false}) {
      const std::uint64_t case_id = case_base + count;
      Array<E> input(count);
      for (std::size_t i = 0; i < count; ++i) input[i] = input_value<E, Op>(case_id, world.rank(), i);
      Array<E> output(count);
      if (in_place) {
        output = input;
        world.all_reduce(output, Op{});
      } else {
        world.all_reduce(input, output, Op{});
      }
      ++checks;
      for (std::size_t i = 0; i < count; ++i) {
        E expected = input_value<E, Op>(case_id, 0, i);
        for (int k = 1; k < p; ++k) expected = Op{}(expected, input_value<E, Op>(case_id, k, i));
        if (!(output[i] == expected)) {
          fail(world, std::string(Op::name) + " count " + std::to_string(count) + " element " +
                          std::to_string(i) + ": " + describe_value(output[i]) + " != " +
                          describe_value(expected));
          break;
        }
      }
    }
  }
}

// Typed on the collective, not run through Group: Group would compile every check for every
// enabled pair, the in-process ones included, and this file is the slowest of the suite to build.
template <class C>
void conformance(C& world) {
  const int p = world.size();
  const int r = world.rank();
  std::uint64_t type_id = 0;
  for_each_type(CheckedTypes{}, [&]<class E>() {
    type_id += 1000000;
    check_reduction<E, Sum>(world, type_id + 100000);
    check_reduction<E, Prod>(world, type_id + 200000);
    check_reduction<E, Max>(world, type_id + 300000);
    check_reduction<E, Min>(world, type_id + 400000);
    check_reduction<E, Custom>(world, type_id + 500000);
  });
  for (std::size_t count : element_counts(p)) {
    std::vector<std::int32_t> mine(count, r), gathered(count * static_cast<std::size_t>(p));
    world.all_gather(mine, gathered);
    ++checks;
    for (std::size_t i = 0; i < gathered.size(); ++i) {
      if (gathered[i] != static_cast<std::int32_t>(i / count)) {
        fail(world, "all_gather count " + std::to_string(count));
        break;
      }
    }
    std::vector<double> whole(count * static_cast<std::size_t>(p)), part(count);
    for (std::size_t i = 0; i < whole.size(); ++i) whole[i] = static_cast<double>(i + static_cast<std::size_t>(r));
    world.sum_scatter(whole, part);
    ++checks;
    for (std::size_t i = 0; i < count; ++i) {
      const double at = static_cast<double>(static_cast<std::size_t>(r) * count + i);
      if (part[i] != p * at + p * (p - 1) / 2.0) {
        fail(world, "sum_scatter count " + std::to_string(count));
        break;
      }
    }
    for (int root = 0; root < p; ++root) {
      std::vector<float> data(count, r == root ? static_cast<float>(root + 1) : -1.0f);
      world.broadcast(data, root);
      ++checks;
      if (count > 0 && data[count - 1] != static_cast<float>(root + 1)) fail(world, "broadcast");
    }
  }
  const std::size_t block = 1001;
  std::vector<std::int64_t> out(block * static_cast<std::size_t>(p)), in(out.size());
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::int64_t>(r * 100000 + static_cast<int>(i));
  world.all_to_all(out, in);
  ++checks;
  for (int k = 0; k < p; ++k) {
    if (in[static_cast<std::size_t>(k) * block] != k * 100000 + r * static_cast<int>(block)) fail(world, "all_to_all");
  }
  for (int from = 0; from < p; ++from) {
    for (int to = 0; to < p; ++to) {
      if (from == to) continue;
      std::vector<std::uint16_t> message(777, static_cast<std::uint16_t>(from * 16 + to));
      if (r == from) world.send(message, to);
      if (r == to) {
        std::vector<std::uint16_t> got(777);
        world.recv(got, from);
        ++checks;
        if (got != message) fail(world, "send " + std::to_string(from) + " -> " + std::to_string(to));
      }
    }
  }
  auto half = world.split(r % 2, p - r);
  std::vector<int> ones(5, 1);
  half.all_sum(ones);
  ++checks;
  if (ones[4] != half.size()) fail(world, "split all_sum");
  world.barrier();
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "conformance";
  try {
    Group world = init("ring", /*strict=*/true);
    if (mode == "big_sum") {
      const std::size_t mib = argc > 2 ? std::stoul(argv[2]) : 256;
      std::vector<float> x(mib * (std::size_t{1} << 20) / sizeof(float), 1.0f);
      for (int round = 0;; ++round) {
        std::error_code ec;
        world.all_sum(x, ec);
        if (ec) {
          std::fprintf(stderr, "rank %d: %s\n", world.rank(), Group::last_error().c_str());
          return 3;
        }
        if (round == 0) {
          std::printf("rank %d: ready\n", world.rank());
          std::fflush(stdout);
        }
      }
    }
    if (auto* ring = world.get_if<Collective<TcpTransport, Ring>>()) {
      conformance(*ring);
    } else if (auto* mesh = world.get_if<Collective<TcpTransport, Mesh>>()) {
      conformance(*mesh);
    } else {
      std::fprintf(stderr, "rank %d: not a TCP group: %s\n", world.rank(), world.name().c_str());
      return 2;
    }
    std::printf("rank %d of %d (%s): %d checks, %d failures\n", world.rank(), world.size(),
                world.name().c_str(), checks, failures);
    return failures == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 2;
  }
}
