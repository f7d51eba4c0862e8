// Conformance of every reduction of every enabled algorithm: rank counts {1, 2, 3, 4, 5, 8},
// element counts {0, 1, p-1, p, p+1, 1 000 003}, every element type, every op and a user functor,
// in place and out of place, against a serial reference; all ranks must agree bit for bit.
#include "collie/core/collective.hpp"

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <array>
#include <cmath>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "harness.hpp"

namespace {

using namespace collie;
using namespace collie::testing;

// Runs one (type, op) over every count, in place and out of place, on rank `c`. Every rank
// checks a slice of the elements of every rank's output against the reference, so the serial
// reference costs each thread only 1/p of the work.
template <class E, class Op, class C>
void check_reduction(C& c, Board& board, std::uint64_t type_id, std::uint64_t op_id) {
  const int p = c.size();
  const int r = c.rank();
  for (std::size_t count : element_counts(p)) {
    for (bool in_place : {true, false}) {
      const std::uint64_t case_id = type_id * 1000 + op_id * 10 + count;
      Array<E> input(count);
      for (std::size_t i = 0; i < count; ++i) input[i] = input_value<E, Op>(case_id, r, i);
      Array<E> output(count);
      if (in_place) {
        output = input;
        c.all_reduce(output, Op{});
      } else {
        c.all_reduce(input, output, Op{});
        // Out of place leaves the input alone.
        for (std::size_t i = 0; i < count; ++i) {
          const E original = input_value<E, Op>(case_id, r, i);
          if (std::memcmp(&input[i], &original, sizeof(E)) != 0) {
            board.fail("input changed by out-of-place reduction at " + std::to_string(i));
            break;
          }
        }
      }
      board.results[static_cast<std::size_t>(r)] = output.data();
      board.sync.arrive_and_wait();
      const auto slice = detail::piece(count, static_cast<std::size_t>(p), static_cast<std::size_t>(r));
      for (std::size_t i = slice.begin; i < slice.begin + slice.count; ++i) {
        E expected = input_value<E, Op>(case_id, 0, i);
        for (int k = 1; k < p; ++k) expected = Op{}(expected, input_value<E, Op>(case_id, k, i));
        const E& first = static_cast<const E*>(board.results[0])[i];
        for (int k = 0; k < p; ++k) {
          // Equal in value to the reference (the sign of a zero may depend on the order of a
          // complex product), and bit-identical to rank 0.
          const E& got = static_cast<const E*>(board.results[static_cast<std::size_t>(k)])[i];
          if (!(got == expected) || std::memcmp(&got, &first, sizeof(E)) != 0) {
            board.fail(std::string(Op::name) + " p=" + std::to_string(p) +
                       " count=" + std::to_string(count) + (in_place ? " in place" : " out of place") +
                       ": rank " + std::to_string(k) + " element " + std::to_string(i) + " is " +
                       describe_value(got) + ", expected " + describe_value(expected));
            i = slice.begin + slice.count;  // one report per slice is enough
            break;
          }
        }
      }
      board.sync.arrive_and_wait();  // outputs stay alive until everyone has checked them
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

template <class C>
void check_every_type_and_op(C& c, Board& board) {
  for_each_type(CheckedTypes{}, [&]<class E>() {
    constexpr std::uint64_t type_id = detail::type_index_v<E, detail::ElementTypes> + 1;
    if constexpr (detail::type_index_v<E, CheckedTypes> % COLLIE_CONFORMANCE_PARTS ==
                  COLLIE_CONFORMANCE_PART) {
      check_reduction<E, Sum>(c, board, type_id, 1);
      check_reduction<E, Prod>(c, board, type_id, 2);
      check_reduction<E, Max>(c, board, type_id, 3);
      check_reduction<E, Min>(c, board, type_id, 4);
      check_reduction<E, Custom>(c, board, type_id, 5);
    }
  });
}

}  // namespace

TEST_CASE_TEMPLATE_DEFINE("every reduction matches the serial reference on every rank", Algorithm,
                          reductions) {
  for (int p : rank_counts) {
    CAPTURE(p);
    const auto failures = run_ranks<Algorithm>(
        p, [](auto& c, Board& board) { check_every_type_and_op(c, board); });
    for (const auto& f : failures) FAIL_CHECK(f);
    CHECK(failures.empty());
  }
}
TEST_CASE_TEMPLATE_APPLY(reductions, AsTuple<collie::EnabledAlgorithms>::type);

#if COLLIE_CONFORMANCE_PART == 0

TEST_CASE_TEMPLATE_DEFINE("named reductions are all_reduce with the built-in ops", Algorithm,
                          named) {
  const auto failures = run_ranks<Algorithm>(3, [](auto& c, Board& board) {
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
    if (out[0] != 6) board.fail("out-of-place all_sum into std::array");
    int c_array[3] = {1, 1, 1};
    c.all_sum(c_array);
    if (c_array[2] != 3) board.fail("all_sum of a C array");
    std::span<int> view(x.data(), 2);
    c.all_max(view);
    if (x[0] != 3 || x[2] != 2) board.fail("all_max through a std::span of part of a vector");
  });
  for (const auto& f : failures) FAIL_CHECK(f);
}
TEST_CASE_TEMPLATE_APPLY(named, AsTuple<collie::EnabledAlgorithms>::type);

TEST_CASE_TEMPLATE_DEFINE("float sums of random data are bit-identical on every rank", Algorithm,
                          identical) {
  // 10007 floats take the algorithms' small-message paths, 300007 their large-message ones.
  for (const std::size_t count : {std::size_t{10007}, std::size_t{300007}}) {
    for (int p : {2, 3, 4, 5, 8}) {
      CAPTURE(count);
      CAPTURE(p);
      const auto failures = run_ranks<Algorithm>(p, [count](auto& c, Board& board) {
        std::vector<float> x(count);
        for (std::size_t i = 0; i < count; ++i) {
          x[i] = static_cast<float>(mix(7, static_cast<std::uint64_t>(c.rank()), i) % 100000) / 7.0f - 5000.0f;
        }
        std::vector<double> exact(count, 0.0);
        for (int k = 0; k < c.size(); ++k) {
          for (std::size_t i = 0; i < count; ++i) {
            exact[i] += static_cast<float>(mix(7, static_cast<std::uint64_t>(k), i) % 100000) / 7.0f - 5000.0f;
          }
        }
        c.all_sum(x);
        board.results[static_cast<std::size_t>(c.rank())] = x.data();
        board.sync.arrive_and_wait();
        if (std::memcmp(x.data(), board.results[0], count * sizeof(float)) != 0) {
          board.fail("rank " + std::to_string(c.rank()) + " differs from rank 0");
        }
        for (std::size_t i = 0; i < count; ++i) {
          // p-1 roundings of a float, each within half an ulp of a value below 40000·p.
          if (std::abs(x[i] - exact[i]) > 40000.0 * c.size() * c.size() * 6e-8) {
            board.fail("element " + std::to_string(i) + " is " + std::to_string(x[i]) +
                       ", exact sum " + std::to_string(exact[i]));
            break;
          }
        }
        board.sync.arrive_and_wait();
      });
      for (const auto& f : failures) FAIL_CHECK(f);
    }
  }
}
TEST_CASE_TEMPLATE_APPLY(identical, AsTuple<collie::EnabledAlgorithms>::type);

// The default Ring sends small and middle all-reduces through recursive doubling and halving;
// with those paths off (or forced on), each schedule must still cope with counts below the rank
// count, blocks of unequal and zero size, and rank counts that are no power of two.
TEST_CASE("each of the ring's all-reduce schedules handles every count") {
  const Ring schedules[] = {Ring{.small_bytes = 0, .halving_bytes = 0},
                            Ring{.small_bytes = 0, .halving_bytes = std::size_t{1} << 30},
                            Ring{.small_bytes = std::size_t{1} << 30,
                                 .halving_from_bytes = std::size_t{1} << 30}};
  for (const Ring& ring : schedules) {
    for (int p : rank_counts) {
      CAPTURE(ring.small_bytes);
      CAPTURE(ring.halving_bytes);
      CAPTURE(p);
      const auto failures = run_ranks<Ring>(
          p,
          [](auto& c, Board& board) {
            check_reduction<std::int32_t, Sum>(c, board, 101, 1);
            check_reduction<float16, Sum>(c, board, 102, 1);
            check_reduction<double, Max>(c, board, 103, 3);
          },
          Options{}, ring);
      for (const auto& f : failures) FAIL_CHECK(f);
      CHECK(failures.empty());
    }
  }
}

TEST_CASE("mesh sums 16-bit floats of all ranks in float and rounds once") {
  // 1 + 8 × 2^-11: every partial sum 1 + k·2^-11 is a tie in float16 that rounds to even (1),
  // so rounding after each step would give 1; one rounding of the exact sum 1 + 2^-8 keeps it.
  const auto failures = run_ranks<Mesh>(9, [](auto& c, Board& board) {
    std::vector<float16> x(5, float16(c.rank() == 0 ? 1.0f : 0.00048828125f));
    c.all_sum(x);
    if (static_cast<float>(x[0]) != 1.00390625f) {
      board.fail("rank " + std::to_string(c.rank()) + " got " + std::to_string(static_cast<float>(x[0])));
    }
  });
  for (const auto& f : failures) FAIL_CHECK(f);
  CHECK(failures.empty());
}

#endif  // COLLIE_CONFORMANCE_PART == 0
