// The element-wise reduction kernels every algorithm runs on received data: `reduce_into`
// (one source into the destination) and `reduce_many` (several sources, in a fixed order).
// The only element-typed code on the data path, so the place where vectorization matters.
#pragma once

#include <complex>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "collie/core/call.hpp"
#include "collie/core/detail/reduce_passes.hpp"
#include "collie/core/detail/reduce_x86.hpp"
#include "collie/core/element.hpp"
#include "collie/core/ops.hpp"

// How an algorithm reaches the kernels: through the type-erased `Reduction` (call.hpp), built
// once per call for the element type and op, e.g.
//
//   [](const void* op, std::byte* dst, const std::byte* src, std::size_t n) noexcept {
//     reduce_into(reinterpret_cast<T*>(dst), reinterpret_cast<const T*>(src), n,
//                 *static_cast<const Op*>(op));
//   }
//
// Both kernels are reentrant and keep no state; they may run on any thread. They never
// allocate (reduce_many keeps its 4 KiB tile on the stack).
//
// Instruction sets. Users compile for plain x86-64 (SSE2), so the built-in ops are compiled a
// second time, for AVX2 + F16C, and that compilation is picked at run time where the CPU has
// both (asked once per process): 256-bit vectors for every element type, F16C conversions for
// float16 and 16-wide integer rounding for bfloat16, where the portable code spends most of
// its time converting. Both compilations give the same bits, NaN payloads included (the tests
// compare them on special values and every 16-bit encoding), so ranks on different CPUs still
// agree. User functors are compiled once, as written.

namespace collie::detail {

/// An instruction set the kernels are compiled for.
enum class Isa : std::uint8_t {
  portable,  ///< what the translation unit targets: SSE2 on plain x86-64, anything elsewhere
  x86_avx2,  ///< x86-64 with AVX2 and F16C (Haswell, Zen and later), for the built-in ops
};

/// "portable" or "x86-avx2", for benchmark output.
constexpr std::string_view name(Isa isa) noexcept {
  return isa == Isa::x86_avx2 ? "x86-avx2" : "portable";
}

/// True when this CPU can run the kernels compiled for `isa` (checked once, then cached).
inline bool isa_supported(Isa isa) noexcept {
#if COLLIE_DETAIL_X86_KERNELS
  if (isa == Isa::x86_avx2) return x86::has_avx2_f16c();
#endif
  return isa == Isa::portable;
}

/// The instruction set reduce_into and reduce_many use for the built-in ops on this CPU.
inline Isa selected_isa() noexcept {
  return isa_supported(Isa::x86_avx2) ? Isa::x86_avx2 : Isa::portable;
}

// True when (T, Op) has kernels of its own for AVX2: the built-in ops on every element type but
// std::complex<float>. User functors are compiled once, as written. Complex products and
// max/min do not vectorize, and std::complex's operators leave NaN payloads to the compiler,
// so complex numbers run the same SSE2 code on every x86-64 CPU.
template <class T, class Op>
inline constexpr bool has_x86_avx2_kernels_v =
    COLLIE_DETAIL_X86_KERNELS && is_builtin_op_v<Op> && !std::is_same_v<T, std::complex<float>>;

// True when the kernels for (T, Op) on `isa` use the hand-written x86 passes, which convert
// 16-bit floats in hardware; the other AVX2 kernels are the portable code compiled for AVX2.
template <Isa isa, class T, class Op>
inline constexpr bool uses_x86_passes_v =
    COLLIE_DETAIL_X86_KERNELS && isa == Isa::x86_avx2 && is_16bit_float_v<T> && is_builtin_op_v<Op>;

// One pass, on instruction set `isa`.
template <Isa isa, Pass P, class T, class Op, class Length>
COLLIE_DETAIL_PASS void run_pass_on(T* dst, const T* a, const T* b,
                                    accumulator_t<T, Op>* accumulator, Length length,
                                    const Op& op) noexcept {
#if COLLIE_DETAIL_X86_KERNELS
  if constexpr (uses_x86_passes_v<isa, T, Op>) {
    x86::run_pass<P, T, Op>(dst, a, b, accumulator, length);
    return;
  }
#endif
  run_pass<P, T, Op>(dst, a, b, accumulator, length, op);
}

// A pass without accumulator over whole arrays, tile by tile (in one go for the x86 passes:
// they need no compile-time trip count).
template <Isa isa, Pass P, class T, class Op>
COLLIE_DETAIL_PASS void run_tiled(T* dst, const T* a, const T* b, std::size_t count,
                                  const Op& op) noexcept {
  if constexpr (uses_x86_passes_v<isa, T, Op>) {
    run_pass_on<isa, P, T, Op>(dst, a, b, nullptr, count, op);
  } else {
    constexpr std::size_t tile = tile_elements_v<accumulator_t<T, Op>>;
    std::size_t offset = 0;
    for (; count - offset >= tile; offset += tile) {
      run_pass<P, T, Op>(dst + offset, offset_by(a, offset), offset_by(b, offset), nullptr,
                         std::integral_constant<std::size_t, tile>{}, op);
    }
    if (offset < count) {
      run_pass<P, T, Op>(dst + offset, offset_by(a, offset), offset_by(b, offset), nullptr,
                         count - offset, op);
    }
  }
}

// One tile of reduce_many with three or more sources (or one source twice): accumulate the
// tile of every source but the last into `accumulator`, then combine it with the last source
// while storing. dst is written only in that final pass, after all other sources of the tile
// have been read, so dst may be any of them; when it is the last source itself, the final pass
// reads and writes it through one pointer.
template <Isa isa, class T, class Op, class Length>
COLLIE_DETAIL_PASS void reduce_tile(T* dst, const T* const* srcs, std::size_t nsrc,
                                    accumulator_t<T, Op>* accumulator, std::size_t offset,
                                    Length length, const Op& op) noexcept {
  constexpr const T* none = nullptr;
  const T* last = srcs[nsrc - 1];
  run_pass_on<isa, Pass::first, T, Op>(nullptr, srcs[0] + offset, srcs[1] + offset, accumulator,
                                       length, op);
  for (std::size_t s = 2; s + 1 < nsrc; ++s) {
    run_pass_on<isa, Pass::accumulate, T, Op>(nullptr, srcs[s] + offset, none, accumulator,
                                              length, op);
  }
  if (nsrc == 2) {  // the same source twice
    run_pass_on<isa, Pass::store, T, Op>(dst + offset, none, none, accumulator, length, op);
  } else if (dst == last) {
    run_pass_on<isa, Pass::finish_in_place, T, Op>(dst + offset, none, none, accumulator, length,
                                                   op);
  } else {
    run_pass_on<isa, Pass::finish, T, Op>(dst + offset, last + offset, none, accumulator, length,
                                          op);
  }
}

// The body of reduce_many on instruction set `isa`.
template <Isa isa, class T, class Op>
COLLIE_DETAIL_PASS void reduce_many_body(T* dst, const T* const* srcs, std::size_t nsrc,
                                         std::size_t count, const Op& op) noexcept {
  using A = accumulator_t<T, Op>;
  constexpr const T* none = nullptr;
  if (nsrc == 1) {
    if (dst != srcs[0]) {
      run_tiled<isa, Pass::convert>(dst, srcs[0], none, count, op);
    } else if constexpr (!std::is_same_v<A, T>) {
      run_tiled<isa, Pass::round_trip>(dst, none, none, count, op);
    }
    return;
  }
  // Two different sources: one pass, with dst bound to whichever source it is (if any).
  if (nsrc == 2 && srcs[0] != srcs[1]) {
    if (dst == srcs[0]) {
      run_tiled<isa, Pass::into>(dst, srcs[1], none, count, op);
    } else if (dst == srcs[1]) {
      run_tiled<isa, Pass::into_reversed>(dst, srcs[0], none, count, op);
    } else {
      run_tiled<isa, Pass::combine>(dst, srcs[0], srcs[1], count, op);
    }
    return;
  }
  constexpr std::size_t tile = tile_elements_v<A>;
#if COLLIE_DETAIL_X86_KERNELS
  // The x86 passes work on whole blocks of the accumulator, also in the last, partial tile.
  static_assert(tile % x86::block_elements == 0);
#endif
  A accumulator[tile];
  std::size_t offset = 0;
  for (; count - offset >= tile; offset += tile) {
    reduce_tile<isa>(dst, srcs, nsrc, accumulator, offset,
                     std::integral_constant<std::size_t, tile>{}, op);
  }
  if (offset < count) reduce_tile<isa>(dst, srcs, nsrc, accumulator, offset, count - offset, op);
}

#if COLLIE_DETAIL_X86_KERNELS
// The AVX2 compilations: the bodies above are forced inline, so they are compiled here again,
// for AVX2 (the x86 passes they call for 16-bit floats carry the same target).
template <class T, class Op>
COLLIE_DETAIL_X86_AVX2 COLLIE_DETAIL_VECTORIZE void reduce_into_x86_avx2(
    T* __restrict dst, const T* __restrict src, std::size_t count, const Op& op) noexcept {
  run_tiled<Isa::x86_avx2, Pass::into>(dst, src, static_cast<const T*>(nullptr), count, op);
}

template <class T, class Op>
COLLIE_DETAIL_X86_AVX2 COLLIE_DETAIL_VECTORIZE void reduce_many_x86_avx2(
    T* dst, const T* const* srcs, std::size_t nsrc, std::size_t count, const Op& op) noexcept {
  reduce_many_body<Isa::x86_avx2>(dst, srcs, nsrc, count, op);
}
#endif

/// reduce_into (below) compiled for instruction set `isa`, whatever this CPU supports: for
/// tests and benchmarks comparing the two. Isa::x86_avx2 requires isa_supported(it) and
/// applies where has_x86_avx2_kernels_v holds; anything else gets the portable code.
template <Isa isa, Element T, class Op>
  requires ReduceOp<Op, T>
COLLIE_DETAIL_VECTORIZE void reduce_into_on(T* __restrict dst, const T* __restrict src,
                                            std::size_t count, const Op& op) noexcept {
#if COLLIE_DETAIL_X86_KERNELS
  if constexpr (isa == Isa::x86_avx2 && has_x86_avx2_kernels_v<T, Op>) {
    reduce_into_x86_avx2(dst, src, count, op);
    return;
  }
#endif
  run_tiled<Isa::portable, Pass::into>(dst, src, static_cast<const T*>(nullptr), count, op);
}

/// reduce_many (below) compiled for instruction set `isa`; see reduce_into_on.
template <Isa isa, Element T, class Op>
  requires ReduceOp<Op, T>
COLLIE_DETAIL_VECTORIZE void reduce_many_on(T* dst, const T* const* srcs, std::size_t nsrc,
                                            std::size_t count, const Op& op) noexcept {
#if COLLIE_DETAIL_X86_KERNELS
  if constexpr (isa == Isa::x86_avx2 && has_x86_avx2_kernels_v<T, Op>) {
    reduce_many_x86_avx2(dst, srcs, nsrc, count, op);
    return;
  }
#endif
  reduce_many_body<Isa::portable>(dst, srcs, nsrc, count, op);
}

/// dst[i] = op(dst[i], src[i]) for i < count.
///
/// `dst` and `src` must not overlap at all. float16/bfloat16 under a built-in op are widened
/// to float, combined, and rounded back: one rounding per call, so a chain of k calls rounds k
/// times (use reduce_many when all sources are at hand). Vectorized for the built-in ops on
/// every arithmetic element type (not for complex products and max/min, nor for 64-bit integer
/// products and max/min on x86-64 CPUs without AVX2), with AVX2 and hardware 16-bit float
/// conversions where the CPU has them (see `selected_isa`); user functors are vectorized as far
/// as the compiler manages for the target it was given. The cost is one pass over both arrays,
/// 3 * count * sizeof(T) bytes moved. Where dst[i] is NaN, max and min return it whatever
/// src[i] holds (quieted for 16-bit floats); on x86-64 sums and products do too (quieted).
template <Element T, class Op>
  requires ReduceOp<Op, T>
void reduce_into(T* __restrict dst, const T* __restrict src, std::size_t count,
                 const Op& op) noexcept {
  if constexpr (has_x86_avx2_kernels_v<T, Op>) {
    if (isa_supported(Isa::x86_avx2)) {
      reduce_into_on<Isa::x86_avx2>(dst, src, count, op);
      return;
    }
  }
  reduce_into_on<Isa::portable>(dst, src, count, op);
}

/// dst[i] = op(...op(op(srcs[0][i], srcs[1][i]), srcs[2][i])..., srcs[nsrc-1][i]) for i < count.
///
/// - Order: exactly the source order given, for every element. Floating-point ops are not
///   associative, so callers that pass sources in rank order get bit-identical results on
///   every rank, also on a mix of x86-64 CPUs (both instruction sets give the same bits, the
///   first NaN in source order being the result where NaNs meet, as in reduce_into).
/// - float16/bfloat16 under a built-in op: all sources are combined in float and the result is
///   rounded once, so reducing p contributions costs one rounding, not p - 1 (no drift along a
///   chain). A user functor is applied to the 16-bit values, rounding at every step.
/// - Aliasing: `dst` may be the very same pointer as any of the sources (in-place reduction);
///   otherwise no two ranges may overlap. Sources may repeat.
/// - Preconditions: nsrc >= 1; each srcs[k] and dst hold `count` elements.
/// - Cost: one streaming pass over every source and one over dst, (nsrc + 1) * count *
///   sizeof(T) bytes moved (nsrc * count * sizeof(T) in place). Two sources take one fused
///   pass, as fast as reduce_into; more go through L1-resident tiles of `tile_elements_v`
///   accumulators, with the first two sources and the last one fused into their passes.
template <Element T, class Op>
  requires ReduceOp<Op, T>
void reduce_many(T* dst, const T* const* srcs, std::size_t nsrc, std::size_t count,
                 const Op& op) noexcept {
  if constexpr (has_x86_avx2_kernels_v<T, Op>) {
    if (isa_supported(Isa::x86_avx2)) {
      reduce_many_on<Isa::x86_avx2>(dst, srcs, nsrc, count, op);
      return;
    }
  }
  reduce_many_on<Isa::portable>(dst, srcs, nsrc, count, op);
}

// The kernels of `Op` over `E` behind the type-erased `Reduction` that algorithms take
// (make_reduction.hpp): the op is referenced, not copied, so it must outlive the Reduction.
template <class E, class Op>
struct Kernels {
  static Reduction make(const Op& op) noexcept {
    Reduction r;
    r.element_size = sizeof(E);
    r.op = &op;
    r.into_fn = [](const void* o, std::byte* dst, const std::byte* src,
                   std::size_t count) noexcept {
      reduce_into(reinterpret_cast<E*>(dst), reinterpret_cast<const E*>(src), count,
                  *static_cast<const Op*>(o));
    };
    r.many_fn = [](const void* o, std::byte* dst, const std::byte* const* srcs,
                   std::size_t nsrc, std::size_t count) noexcept {
      reduce_many(reinterpret_cast<E*>(dst), reinterpret_cast<const E* const*>(srcs), nsrc,
                  count, *static_cast<const Op*>(o));
    };
    return r;
  }
};

// The Reduction of a stateless built-in op over E, on an instance that lives forever. With
// COLLIE_SEPARATE_COMPILATION, collie's source file compiles it for every element type and
// built-in op (src.hpp), and programs call that copy.
template <class E, class Op>
Reduction builtin_reduction() noexcept {
  static constexpr Op op{};
  return Kernels<E, Op>::make(op);
}

}  // namespace collie::detail
