// Conformance of every reduction of every enabled pair: rank counts {1, 2, 3, 4, 5, 8}, element
// counts {0, 1, p-1, p, p+1, 1 000 003}, every element type, every op and a user functor (through
// the transports other than the in-process reference, every op with a type of each kind: see
// full_reduction_matrix), in place and out of place; every rank's whole output is compared with a
// serial reference, and all ranks must agree bit for bit.
#include "collie/core/collective.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <complex>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "pairs.hpp"

namespace {

using namespace collie;
using namespace collie::testing;

// Compares a rank's whole output with the reference, and with rank 0's output bit for bit;
// reports the first difference. The reference sits in the board's shared memory, computed in
// slices by the ranks; every rank calls this (it synchronises them).
template <class E>
void compare_with_reference(const std::span<const E> output, std::span<const E> reference,
                            Board& board, int rank, const std::string& what) {
  for (std::size_t i = 0; i < output.size(); ++i) {
    // Equal in value (the sign of a zero may depend on the order of a complex product).
    if (!(output[i] == reference[i])) {
      board.fail(what + ": rank " + std::to_string(rank) + " element " + std::to_string(i) +
                 " is " + describe_value(output[i]) + ", expected " + describe_value(reference[i]));
      break;
    }
  }
  board.publish(rank, hash_bytes(std::as_bytes(output)));
  board.sync();
  if (board.value(rank) != board.value(0)) {
    board.fail(what + ": rank " + std::to_string(rank) + " differs from rank 0 bit for bit");
  }
  board.sync();  // the reference stays until everyone has compared
}

// Runs one (type, op) over every count, in place and out of place, on rank `c`. Both forms
// reduce the same inputs, so one reference serves both.
template <class E, class Op, class C>
void check_reduction(C& c, Board& board, std::uint64_t type_id, std::uint64_t op_id) {
  const int p = c.size();
  const int r = c.rank();
  for (std::size_t count : element_counts(p)) {
    const std::uint64_t case_id = type_id * 1000 + op_id * 10 + count;
    Array<E> input(count);
    for (std::size_t i = 0; i < count; ++i) input[i] = input_value<E, Op>(case_id, r, i);
    const auto reference = board.scratch<E>(count);
    const auto slice = detail::piece(count, static_cast<std::size_t>(p), static_cast<std::size_t>(r));
    for (std::size_t i = slice.begin; i < slice.begin + slice.count; ++i) {
      E expected = input_value<E, Op>(case_id, 0, i);
      for (int k = 1; k < p; ++k) expected = Op{}(expected, input_value<E, Op>(case_id, k, i));
      reference[i] = expected;
    }
    board.sync();
    for (bool in_place : {true, false}) {
      const std::string what = std::string(Op::name) + " of " + std::string(name(data_type_v<E>)) +
                               ", count " + std::to_string(count) +
                               (in_place ? " in place" : " out of place");
      Array<E> output(count);
      if (in_place) {
        output = input;
        c.all_reduce(output, Op{});
      } else {
        const std::uint64_t before = hash_bytes(std::as_bytes(std::span(input.data(), count)));
        c.all_reduce(input, output, Op{});
        // Out of place leaves the input alone.
        if (hash_bytes(std::as_bytes(std::span(input.data(), count))) != before) {
          board.fail(what + ": the input changed");
        }
      }
      compare_with_reference<E>(output, reference, board, r, what);
    }
  }
}

// The suite is built as COLLIE_CONFORMANCE_PARTS binaries, each taking every PARTS-th element
// type (part COLLIE_CONFORMANCE_PART): the whole matrix is one of the heaviest things in the
// build to compile, and split this way both cores compile it at once.
#ifndef COLLIE_CONFORMANCE_PARTS
#define COLLIE_CONFORMANCE_PARTS 1
#define COLLIE_CONFORMANCE_PART 0
#endif

// Every op runs with every type through the reference transport, and with these through the
// others (see full_reduction_matrix): a signed integer, a float, a 16-bit float, a complex.
template <class E>
constexpr bool every_op_everywhere = std::is_same_v<E, std::int8_t> || std::is_same_v<E, float> ||
                                     std::is_same_v<E, bfloat16> || std::is_same_v<E, std::complex<float>>;

template <class C>
void check_every_type_and_op(C& c, Board& board) {
  for_each_type(CheckedTypes{}, [&]<class E>() {
    constexpr std::uint64_t type_id = detail::type_index_v<E, detail::ElementTypes> + 1;
    if constexpr (detail::type_index_v<E, CheckedTypes> % COLLIE_CONFORMANCE_PARTS ==
                  COLLIE_CONFORMANCE_PART) {
      check_reduction<E, Sum>(c, board, type_id, 1);
      if constexpr (full_reduction_matrix<transport_of<C>> || every_op_everywhere<E>) {
        check_reduction<E, Prod>(c, board, type_id, 2);
        check_reduction<E, Max>(c, board, type_id, 3);
        check_reduction<E, Min>(c, board, type_id, 4);
        check_reduction<E, Custom>(c, board, type_id, 5);
      }
    }
  });
}

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("every reduction matches the serial reference on every rank", C,
                          reductions) {
  for_every_rank_count<C>([](auto& c, Board& board) { check_every_type_and_op(c, board); });
}
TEST_CASE_TEMPLATE_APPLY(reductions, Pairs);

#if COLLIE_CONFORMANCE_PART == 0

TEST_CASE_TEMPLATE_DEFINE("named reductions are all_reduce with the built-in ops, on any buffer",
                          C, named) {
  report<C>(3, run_pair<C>(3, [](auto& c, Board& board) {
              std::vector<int> x = {c.rank() + 1, -(c.rank() + 1), 2};
              auto sum = x, prod = x, max = x, min = x;
              c.all_sum(sum);
              c.all_prod(prod);
              c.all_max(max);
              c.all_min(min);
              if (sum != std::vector<int>{6, -6, 6}) board.fail("all_sum");
              if (prod != std::vector<int>{6, -6, 8}) board.fail("all_prod");
              if (max != std::vector<int>{3, -1, 2}) board.fail("all_max");
              if (min != std::vector<int>{1, -3, 2}) board.fail("all_min");
              std::array<int, 3> out{};
              c.all_sum(x, out);
              if (out != std::array<int, 3>{6, -6, 6}) board.fail("out-of-place all_sum into std::array");
              c.all_min(x, out);
              if (out != std::array<int, 3>{1, -3, 2}) board.fail("out-of-place all_min");
              int c_array[3] = {1, 2, 3};
              c.all_sum(c_array);
              if (c_array[0] != 3 || c_array[1] != 6 || c_array[2] != 9) board.fail("all_sum of a C array");
              std::vector<int> y = x;
              std::span<int> view(y.data(), 2);
              c.all_max(view);
              if (y != std::vector<int>{3, -1, 2}) board.fail("all_max through a std::span of part of a vector");
            }));
}
TEST_CASE_TEMPLATE_APPLY(named, Pairs);

TEST_CASE_TEMPLATE_DEFINE("float sums of random data are bit-identical on every rank", C,
                          identical) {
  // 10007 floats take the algorithms' small-message paths, 300007 their large-message ones.
  for (const std::size_t count : {std::size_t{10007}, std::size_t{300007}}) {
    for (int p : {2, 3, 4, 5, 8}) {
      report<C>(p, run_pair<C>(p, [count](auto& c, Board& board) {
                  std::vector<float> x(count);
                  const auto value = [](int rank, std::size_t i) {
                    return static_cast<float>(mix(7, static_cast<std::uint64_t>(rank), i) % 100000) / 7.0f -
                           5000.0f;
                  };
                  for (std::size_t i = 0; i < count; ++i) x[i] = value(c.rank(), i);
                  c.all_sum(x);
                  for (std::size_t i = 0; i < count; ++i) {
                    double exact = 0.0;
                    for (int k = 0; k < c.size(); ++k) exact += value(k, i);
                    // p-1 roundings of a float, each within half an ulp of a value below 40000·p.
                    if (std::abs(x[i] - exact) > 40000.0 * c.size() * c.size() * 6e-8) {
                      board.fail("count " + std::to_string(count) + " element " + std::to_string(i) +
                                 " is " + std::to_string(x[i]) + ", exact sum " + std::to_string(exact));
                      break;
                    }
                  }
                  board.publish(c.rank(), hash_bytes(std::as_bytes(std::span(x))));
                  board.sync();
                  if (board.value(c.rank()) != board.value(0)) {
                    board.fail("count " + std::to_string(count) + ": rank " + std::to_string(c.rank()) +
                               " differs from rank 0");
                  }
                }));
    }
  }
}
TEST_CASE_TEMPLATE_APPLY(identical, Pairs);

// The default Ring sends small and middle all-reduces through recursive doubling and halving;
// with those paths off (or forced on), each schedule must still cope with counts below the rank
// count, blocks of unequal and zero size, and rank counts that are no power of two.
TEST_CASE_TEMPLATE_DEFINE("each of the ring's all-reduce schedules handles every count", C,
                          ring_schedules) {
  const Ring schedules[] = {Ring{.small_bytes = 0, .halving_bytes = 0},
                            Ring{.small_bytes = 0, .halving_bytes = std::size_t{1} << 30},
                            Ring{.small_bytes = std::size_t{1} << 30,
                                 .halving_from_bytes = std::size_t{1} << 30}};
  for (const Ring& ring : schedules) {
    CAPTURE(ring.small_bytes);
    CAPTURE(ring.halving_bytes);
    for_every_rank_count<C>(
        [](auto& c, Board& board) {
          check_reduction<std::int32_t, Sum>(c, board, 101, 1);
          check_reduction<float16, Sum>(c, board, 102, 1);
          check_reduction<double, Max>(c, board, 103, 3);
        },
        ring);
  }
}
TEST_CASE_TEMPLATE_APPLY(ring_schedules, PairsWith<Ring>);

TEST_CASE_TEMPLATE_DEFINE("mesh sums 16-bit floats of all ranks in float and rounds once", C,
                          mesh_rounding) {
  // 1 + 8 × 2^-11: every partial sum 1 + k·2^-11 is a tie in float16 that rounds to even (1),
  // so rounding after each step would give 1; one rounding of the exact sum 1 + 2^-8 keeps it.
  report<C>(9, run_pair<C>(9, [](auto& c, Board& board) {
              std::vector<float16> x(5, float16(c.rank() == 0 ? 1.0f : 0.00048828125f));
              c.all_sum(x);
              for (const float16 v : x) {
                if (static_cast<float>(v) != 1.00390625f) {
                  board.fail("rank " + std::to_string(c.rank()) + " got " +
                             std::to_string(static_cast<float>(v)));
                  break;
                }
              }
            }));
}
TEST_CASE_TEMPLATE_APPLY(mesh_rounding, PairsWith<Mesh>);

#endif  // COLLIE_CONFORMANCE_PART == 0
