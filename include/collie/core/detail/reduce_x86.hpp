// x86-64 AVX2 + F16C versions of the 16-bit float passes (float16, bfloat16 under a built-in
// op), and the run-time check that lets core/reduce.hpp select them. Users compile without -m
// flags, so each function here carries its own target attribute and runs only after
// `has_avx2_f16c()` said yes; every result is bit-identical to the portable passes
// (reduce_passes.hpp), which remain the reference and the path for other CPUs.
#pragma once

// Defines COLLIE_DETAIL_X86_KERNELS.
#include "collie/core/detail/reduce_passes.hpp"

#if COLLIE_DETAIL_X86_KERNELS

#include <cpuid.h>
#include <immintrin.h>

#include <cstddef>
#include <cstring>
#include <type_traits>

#include "collie/core/bfloat16.hpp"
#include "collie/core/float16.hpp"
#include "collie/core/ops.hpp"

// No "fma": with it, GCC's default -ffp-contract=fast (GNU dialects) could fuse a product and a
// sum that the portable path rounds separately.
#define COLLIE_DETAIL_X86_AVX2 __attribute__((target("avx2,f16c")))
#define COLLIE_DETAIL_X86_AVX2_INLINE COLLIE_DETAIL_X86_AVX2 inline __attribute__((always_inline))

namespace collie::detail::x86 {

/// True when this CPU runs AVX2 and F16C and the OS saves the 256-bit registers. Asked once;
/// after that one load and a branch. Constant true when the translation unit is already
/// compiled for both (-mavx2 -mf16c, or an -march that has them).
inline bool has_avx2_f16c() noexcept {
#if defined(__AVX2__) && defined(__F16C__)
  return true;
#else
  static const bool supported = [] {
    // May run from a static constructor that precedes libgcc's, which fills the model that
    // __builtin_cpu_supports reads; initialising twice is harmless.
    __builtin_cpu_init();
    // __builtin_cpu_supports("avx2") also checks that the OS enabled the AVX state (XGETBV).
    // Clang 14 has no "f16c" feature name, so that bit comes from CPUID leaf 1 directly.
    unsigned eax = 0;
    unsigned ebx = 0;
    unsigned ecx = 0;
    unsigned edx = 0;
    return __builtin_cpu_supports("avx2") && __get_cpuid(1, &eax, &ebx, &ecx, &edx) != 0 &&
           (ecx & bit_F16C) != 0;
  }();
  return supported;
#endif
}

// Sixteen 16-bit values widened to float, as two vectors of eight. Which eight go into which
// vector is up to the type (bfloat16 splits even from odd elements): values only ever meet
// values of the same position and go back through the same type, so any fixed split works.
// reduce_many's float accumulators hold their blocks of sixteen in that split too.
struct Widened {
  __m256 part[2];
};

// float16: two VCVTPH2PS, elements 0-7 and 8-15. Exact, and NaNs come out quiet with their
// payload, like half_bits_to_float (the two agree on all 2^16 inputs, also under FTZ/DAZ).
COLLIE_DETAIL_X86_AVX2_INLINE Widened load_widened(const float16* p) noexcept {
  const auto* vectors = reinterpret_cast<const __m128i*>(p);
  Widened values = {{_mm256_cvtph_ps(_mm_loadu_si128(vectors)),
                     _mm256_cvtph_ps(_mm_loadu_si128(vectors + 1))}};
#if defined(__clang__)
  // LLVM sees VCVTPH2PS as an exact widening and moves the comparisons made on its result back
  // onto the 16-bit values, which x86 cannot compare as vectors: it then converts and compares
  // element by element, seven times slower. An empty asm statement hides where they came from.
  __asm__("" : "+x"(values.part[0]), "+x"(values.part[1]));
#endif
  return values;
}

// bfloat16: a bfloat16 is the top half of its float, so one 256-bit load holds the odd elements
// in place (mask off the low halves) and the even ones a shift away: two instructions for
// sixteen values, where zero-extending eight at a time costs a shuffle each.
// bfloat_bits_to_float also quiets NaNs, which is left out here: a NaN stays NaN through every
// op (the selects in `apply` pass NaN operands on unchanged, arithmetic quiets them) and every
// value leaves through store_rounded, which sets the quiet bit where no sum or product already
// did, so the stored bits agree.
COLLIE_DETAIL_X86_AVX2_INLINE Widened load_widened(const bfloat16* p) noexcept {
  const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return {{_mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16)),
           _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32(-65536)))}};
}

// float16: VCVTPS2PH with an immediate rounding mode (not MXCSR's): ties to even, overflow to
// Inf, subnormals kept (even under FTZ), NaNs quieted with their top payload bits; equal to
// float_to_half_bits for all 2^32 inputs. (`Quiet` is for bfloat16's sake.)
template <bool Quiet = false>
COLLIE_DETAIL_X86_AVX2_INLINE void store_rounded(float16* p, Widened values) noexcept {
  auto* vectors = reinterpret_cast<__m128i*>(p);
  _mm_storeu_si128(vectors, _mm256_cvtps_ph(values.part[0], _MM_FROUND_TO_NEAREST_INT));
  _mm_storeu_si128(vectors + 1, _mm256_cvtps_ph(values.part[1], _MM_FROUND_TO_NEAREST_INT));
}

// float_to_bfloat_bits on eight floats, the result in the top half of each lane: add 0x7fff
// plus the lowest bit kept (ties to even), and quiet NaNs. That function truncates NaNs, lest
// the carry run through the payload into the sign; here no NaN has a carry to give: each is a
// widened bfloat16, an operand passed on by max or min, or the result of arithmetic on those,
// which keeps the payload or makes the default NaN, so its low 16 bits are zero. A sum or a
// product returns only quiet NaNs (`Quiet`), so all it takes is the rounding, four
// micro-ops; this pass is most of a bfloat16 kernel's work (it was a select, VPBLENDVB,
// three micro-ops on current Intel cores, on top of the rounding and the quieting).
template <bool Quiet>
COLLIE_DETAIL_X86_AVX2_INLINE __m256i round_to_bfloat(__m256 values) noexcept {
  const __m256i bits = _mm256_castps_si256(values);
  const __m256i lowest_kept = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i rounded =
      _mm256_add_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7fff)), lowest_kept);
  if constexpr (Quiet) return rounded;
  const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(values, values, _CMP_UNORD_Q));
  return _mm256_or_si256(rounded, _mm256_and_si256(is_nan, _mm256_set1_epi32(0x0040'0000)));
}

// bfloat16: round both vectors, then interleave their top halves back into element order.
template <bool Quiet = false>
COLLIE_DETAIL_X86_AVX2_INLINE void store_rounded(bfloat16* p, Widened values) noexcept {
  const __m256i even = _mm256_srli_epi32(round_to_bfloat<Quiet>(values.part[0]), 16);
  const __m256i odd = round_to_bfloat<Quiet>(values.part[1]);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_blend_epi16(even, odd, 0xaa));
}

COLLIE_DETAIL_X86_AVX2_INLINE Widened load_accumulator(const float* p) noexcept {
  return {{_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}};
}

COLLIE_DETAIL_X86_AVX2_INLINE void store_accumulator(float* p, Widened values) noexcept {
  _mm256_storeu_ps(p, values.part[0]);
  _mm256_storeu_ps(p + 8, values.part[1]);
}

// x + y and x * y with x as the instruction's first source. x86 then returns x (quieted)
// when both are NaN, as apply_op's select arranges for the portable path, but compilers treat
// the intrinsics as commutative and may swap the operands; in an asm statement they stay put,
// and the select (a compare and a three-micro-op VBLENDVPS per eight floats) is not needed.
// Both dialects are spelled out, so -masm=intel builds too.
COLLIE_DETAIL_X86_AVX2_INLINE __m256 first_nan_add(__m256 x, __m256 y) noexcept {
  __m256 sum;
  __asm__("vaddps {%2, %1, %0|%0, %1, %2}" : "=x"(sum) : "x"(x), "x"(y));
  return sum;
}

COLLIE_DETAIL_X86_AVX2_INLINE __m256 first_nan_mul(__m256 x, __m256 y) noexcept {
  __m256 product;
  __asm__("vmulps {%2, %1, %0|%0, %1, %2}" : "=x"(product) : "x"(x), "x"(y));
  return product;
}

// apply_op (reduce_passes.hpp) on eight floats, with the same results: a sum or product with
// x NaN is x quieted (x goes first, above), max and min take the first NaN through selects,
// then order -0 below +0. None depends on the order the compiler picks for a commutative
// instruction.
template <class Op>
COLLIE_DETAIL_X86_AVX2_INLINE __m256 apply(__m256 x, __m256 y) noexcept {
  using Plain = std::remove_cvref_t<Op>;
  if constexpr (std::is_same_v<Plain, Sum>) {
    return first_nan_add(x, y);
  } else if constexpr (std::is_same_v<Plain, Prod>) {
    return first_nan_mul(x, y);
  } else {
    // float_extremum: y when x is a number and y is NaN or beyond it, the tie on equality.
    constexpr bool is_max = std::is_same_v<Plain, Max>;
    static_assert(is_max || std::is_same_v<Plain, Min>);
    const __m256 y_beyond = _mm256_cmp_ps(x, y, is_max ? _CMP_NGE_UQ : _CMP_NLE_UQ);
    const __m256 take_y = _mm256_and_ps(_mm256_cmp_ps(x, x, _CMP_ORD_Q), y_beyond);
    const __m256 tie = is_max ? _mm256_and_ps(x, y) : _mm256_or_ps(x, y);
    const __m256 result = _mm256_blendv_ps(x, y, take_y);
    return _mm256_blendv_ps(result, tie, _mm256_cmp_ps(x, y, _CMP_EQ_OQ));
  }
}

template <class Op>
COLLIE_DETAIL_X86_AVX2_INLINE Widened apply(Widened x, Widened y) noexcept {
  return {{apply<Op>(x.part[0], y.part[0]), apply<Op>(x.part[1], y.part[1])}};
}

// Which arrays a pass reads (see `Pass`).
template <Pass P>
inline constexpr bool reads_dst_v = P == Pass::into || P == Pass::into_reversed ||
                                    P == Pass::round_trip || P == Pass::finish_in_place;
template <Pass P>
inline constexpr bool reads_a_v = P == Pass::into || P == Pass::into_reversed ||
                                  P == Pass::combine || P == Pass::convert || P == Pass::first ||
                                  P == Pass::accumulate || P == Pass::finish;
template <Pass P>
inline constexpr bool reads_b_v = P == Pass::combine || P == Pass::first;
template <Pass P>
inline constexpr bool writes_accumulator_v = P == Pass::first || P == Pass::accumulate;

inline constexpr std::size_t block_elements = 16;

// Elements [j, j + 16) of pass P.
template <Pass P, class T, class Op>
COLLIE_DETAIL_X86_AVX2_INLINE void step(T* dst, const T* a, const T* b, float* accumulator,
                                        std::size_t j) noexcept {
  // A sum or product returns only quiet NaNs; max and min pass their operands on as they are.
  constexpr bool quiet = std::is_same_v<std::remove_cvref_t<Op>, Sum> ||
                         std::is_same_v<std::remove_cvref_t<Op>, Prod>;
  if constexpr (P == Pass::into) {
    store_rounded<quiet>(dst + j, apply<Op>(load_widened(dst + j), load_widened(a + j)));
  } else if constexpr (P == Pass::into_reversed) {
    store_rounded<quiet>(dst + j, apply<Op>(load_widened(a + j), load_widened(dst + j)));
  } else if constexpr (P == Pass::combine) {
    store_rounded<quiet>(dst + j, apply<Op>(load_widened(a + j), load_widened(b + j)));
  } else if constexpr (P == Pass::convert) {
    store_rounded(dst + j, load_widened(a + j));
  } else if constexpr (P == Pass::round_trip) {
    store_rounded(dst + j, load_widened(dst + j));
  } else if constexpr (P == Pass::first) {
    store_accumulator(accumulator + j, apply<Op>(load_widened(a + j), load_widened(b + j)));
  } else if constexpr (P == Pass::accumulate) {
    store_accumulator(accumulator + j,
                      apply<Op>(load_accumulator(accumulator + j), load_widened(a + j)));
  } else if constexpr (P == Pass::finish) {
    store_rounded<quiet>(dst + j,
                         apply<Op>(load_accumulator(accumulator + j), load_widened(a + j)));
  } else if constexpr (P == Pass::finish_in_place) {
    store_rounded<quiet>(dst + j,
                         apply<Op>(load_accumulator(accumulator + j), load_widened(dst + j)));
  } else {
    static_assert(P == Pass::store);
    store_rounded(dst + j, load_accumulator(accumulator + j));
  }
}

/// Pass P over `length` elements of float16 or bfloat16 under a built-in op, sixteen at a time:
/// a std::size_t, or a std::integral_constant (a whole tile). The last length % 16 go through
/// the same vector code on zero-padded copies, so every element of every length is computed
/// one way (the padding computes harmless values that are dropped). Unused pointers may be
/// null. The accumulator, where the pass uses one, is private to the passes over it (its layout
/// within each block of 16 is the type's) and must have room for the length rounded up to a
/// multiple of 16: reduce_many's tiles do.
template <Pass P, class T, class Op, class Length>
COLLIE_DETAIL_X86_AVX2 void run_pass(T* dst, const T* a, const T* b, float* accumulator,
                                     Length length) noexcept {
  static_assert(is_16bit_float_v<T> && is_builtin_op_v<Op>);
  constexpr std::size_t width = block_elements;
  const std::size_t n = length;
  std::size_t j = 0;
  for (; j + width <= n; j += width) step<P, T, Op>(dst, a, b, accumulator, j);
  if constexpr (!std::is_same_v<Length, std::size_t>) {
    // A whole tile: no tail (and no code for one, which GCC would otherwise warn reads past
    // the end of the tile's accumulator, not knowing that it never runs).
    static_assert(Length::value % width == 0);
  } else {
    const std::size_t rest = n - j;
    if (rest == 0) return;
    T dst_tail[width] = {};
    T a_tail[width] = {};
    T b_tail[width] = {};
    if constexpr (reads_dst_v<P>) std::memcpy(dst_tail, dst + j, rest * sizeof(T));
    if constexpr (reads_a_v<P>) std::memcpy(a_tail, a + j, rest * sizeof(T));
    if constexpr (reads_b_v<P>) std::memcpy(b_tail, b + j, rest * sizeof(T));
    float* const accumulator_block = accumulator == nullptr ? nullptr : accumulator + j;
    step<P, T, Op>(dst_tail, a_tail, b_tail, accumulator_block, 0);
    if constexpr (!writes_accumulator_v<P>) std::memcpy(dst + j, dst_tail, rest * sizeof(T));
  }
}

}  // namespace collie::detail::x86

#endif  // COLLIE_DETAIL_X86_KERNELS
