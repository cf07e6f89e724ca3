// AVX-512 decoder of packed k-bit blocks (layout: csrc/common/kbit_layout.h).
//
// For each row, the planes of a 128-element block are loaded once: a 4-bit
// plane is one 64-byte load, an 8-bit plane two; 2- and 1-bit planes (32 and 16
// bytes) are broadcast to all lanes and pre-shifted per lane, so that for every
// plane the codes of elements 16i..16i+15 sit at bit 4i (8-bit: 8*(i/2)) of
// each lane. Sub-vector i then costs one shift per plane, a ternary-logic merge
// for split widths, and either a table lookup (vpermps / vpermt2ps: codes of at
// most 5 bits index a register holding (t - z) * s, so the scale costs nothing
// per element and the lookup ignores the garbage bits above the code) or, for
// 6..8 bits, an int -> float conversion and (q - z) * s.
// Include only from translation units compiled with AVX-512 flags.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <utility>

#include "common/kbit_layout.h"
#include "fusenas/kbit.h"

namespace fusenas {
namespace cpu {
namespace avx512 {

template <int BITS>
struct Spec {
  static constexpr bool kHas8 = BITS == 8;
  static constexpr bool kHas4 = BITS != 8 && (BITS & 4);
  static constexpr bool kHas2 = BITS != 8 && (BITS & 2);
  static constexpr bool kHas1 = BITS != 8 && (BITS & 1);
  static constexpr int kOff2 = kHas4 ? 64 : 0;            // byte offset of the 2-bit plane
  static constexpr int kOff1 = kOff2 + (kHas2 ? 32 : 0);  // byte offset of the 1-bit plane
  static constexpr bool kTable = BITS <= 4;               // one-register lookup
  static constexpr bool kTable2 = BITS == 5;              // two-register lookup
  static constexpr bool kConvert = BITS >= 6;             // int -> float path
};

// The planes of one block of one row.
struct Planes {
  __m512i a;  // 8-bit: words 0..15; 4-bit plane; 2-bit plane; 3-bit: both planes merged
  __m512i b;  // 8-bit: words 16..31; 2-bit plane of 6- and 7-bit codes
  __m512i c;  // 1-bit plane of 5- and 7-bit codes
};

inline __m512i broadcast_plane2(const uint8_t* p) {
  // lanes 0..7 read words 0..7 at field 2i, lanes 8..15 the same words at 2i+1.
  const __m512i v = _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_srlv_epi32(v, _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0));
}

inline __m512i broadcast_plane1(const uint8_t* p) {
  // lane j reads word j % 4 at field 4i + j / 4.
  const __m512i v = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm512_srlv_epi32(v, _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0));
}

template <int BITS>
inline Planes load_planes(const uint8_t* block) {
  using S = Spec<BITS>;
  Planes pl;
  if constexpr (S::kHas8) {
    pl.a = _mm512_loadu_si512(block);
    pl.b = _mm512_loadu_si512(block + 64);
  } else if constexpr (S::kHas4) {
    pl.a = _mm512_loadu_si512(block);
    if constexpr (S::kHas2) pl.b = broadcast_plane2(block + S::kOff2);
    if constexpr (S::kHas1) pl.c = broadcast_plane1(block + S::kOff1);
  } else {
    pl.a = broadcast_plane2(block);  // 2- and 3-bit codes start with the 2-bit plane
    if constexpr (S::kHas1) {
      // 3-bit: merge the planes once per block into nibbles (bits 4I, 4I+1
      // from the 2-bit plane, bit 4I+2 from the 1-bit plane rotated up by 2),
      // so each sub-vector then costs one shift, as for 2 and 4 bits.
      const __m512i hi = _mm512_rol_epi32(broadcast_plane1(block + S::kOff1), 2);
      pl.a = _mm512_ternarylogic_epi32(_mm512_set1_epi32(0x33333333), pl.a, hi, 0xCA);
    }
  }
  return pl;
}

// Codes of sub-vector I (elements 16I..16I+15). Bits above the code are only
// guaranteed zero on the conversion path; lookups ignore them.
template <int BITS, int I>
inline __m512i codes(const Planes& pl) {
  if constexpr (BITS == 8) {
    const __m512i v = (I & 1) ? pl.b : pl.a;
    return _mm512_and_si512(_mm512_srli_epi32(v, 8 * (I >> 1)), _mm512_set1_epi32(0xff));
  } else if constexpr (BITS <= 4) {  // 2, 3 (merged in load_planes) and 4 bits
    return _mm512_srli_epi32(pl.a, 4 * I);
  } else if constexpr (BITS == 5) {
    // mask ? lo : hi bitwise (imm 0xCA), i.e. (lo & 15) | (hi & ~15).
    const __m512i lo = _mm512_srli_epi32(pl.a, 4 * I);
    const __m512i hi = _mm512_slli_epi32(_mm512_srli_epi32(pl.c, 4 * I), 4);
    return _mm512_ternarylogic_epi32(_mm512_set1_epi32(15), lo, hi, 0xCA);
  } else if constexpr (BITS == 6) {
    const __m512i lo = _mm512_srli_epi32(pl.a, 4 * I);
    const __m512i hi = _mm512_slli_epi32(_mm512_srli_epi32(pl.b, 4 * I), 4);
    const __m512i v = _mm512_ternarylogic_epi32(_mm512_set1_epi32(15), lo, hi, 0xCA);
    return _mm512_and_si512(v, _mm512_set1_epi32(63));
  } else {  // 7 = 4 + 2 + 1
    const __m512i lo = _mm512_srli_epi32(pl.a, 4 * I);
    const __m512i mid = _mm512_slli_epi32(_mm512_srli_epi32(pl.b, 4 * I), 4);
    const __m512i hi = _mm512_slli_epi32(_mm512_srli_epi32(pl.c, 4 * I), 6);
    const __m512i v = _mm512_ternarylogic_epi32(_mm512_set1_epi32(15), lo, mid, 0xCA);
    const __m512i w = _mm512_ternarylogic_epi32(_mm512_set1_epi32(63), v, hi, 0xCA);
    return _mm512_and_si512(w, _mm512_set1_epi32(127));
  }
}

// Per-row, per-group dequantization constants.
struct GroupConst {
  __m512 t0;  // lookup table (t - z) * s for t = 0..15 (or scale on the conversion path)
  __m512 t1;  // second table (t = 16..31) for 5-bit codes, or -z on the conversion path
};

template <int BITS>
inline GroupConst group_const(float s, float z) {
  using S = Spec<BITS>;
  GroupConst gc;
  const __m512 vs = _mm512_set1_ps(s), vz = _mm512_set1_ps(z);
  if constexpr (S::kConvert) {
    gc.t0 = vs;
    gc.t1 = vz;
  } else {
    // Replicate small tables so garbage above the code bits selects the same value.
    constexpr int period = S::kTable ? (1 << BITS) : 16;
    __m512 iota;
    if constexpr (period == 4)
      iota = _mm512_set_ps(3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0, 3, 2, 1, 0);
    else if constexpr (period == 8)
      iota = _mm512_set_ps(7, 6, 5, 4, 3, 2, 1, 0, 7, 6, 5, 4, 3, 2, 1, 0);
    else
      iota = _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    gc.t0 = _mm512_mul_ps(_mm512_sub_ps(iota, vz), vs);
    if constexpr (S::kTable2)
      gc.t1 = _mm512_mul_ps(_mm512_sub_ps(_mm512_add_ps(iota, _mm512_set1_ps(16.f)), vz), vs);
  }
  return gc;
}

// Dequantized weights of sub-vector I.
template <int BITS, int I>
inline __m512 decode(const Planes& pl, const GroupConst& gc) {
  using S = Spec<BITS>;
  const __m512i c = codes<BITS, I>(pl);
  if constexpr (S::kTable) {
    return _mm512_permutexvar_ps(c, gc.t0);
  } else if constexpr (S::kTable2) {
    return _mm512_permutex2var_ps(gc.t0, c, gc.t1);
  } else {
    return _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(c), gc.t1), gc.t0);
  }
}

// Forced inlining keeps the callers' accumulator arrays in registers: without
// it (and FUSENAS_UNROLL) GCC leaves them on the stack and every FMA waits on a store-to-load
// round trip (measured: M=1 GEMV 1.5-2x slower).
#define FUSENAS_ALWAYS_INLINE __attribute__((always_inline))
// Fully unrolls the small constant loops over accumulators before GCC decides
// where arrays live, for the same reason.
#define FUSENAS_UNROLL _Pragma("GCC unroll 16")

// Calls f(std::integral_constant<int, I>) for I = 0..7.
template <typename F, int... Is>
FUSENAS_ALWAYS_INLINE inline void for_each_subvector_impl(F&& f,
                                                          std::integer_sequence<int, Is...>) {
  (f(std::integral_constant<int, Is>{}), ...);
}
template <typename F>
FUSENAS_ALWAYS_INLINE inline void for_each_subvector(F&& f) {
  for_each_subvector_impl(f, std::make_integer_sequence<int, 8>{});
}

// Output rows per GEMV tile: as many as the 32 zmm registers hold without
// spilling (MT*R accumulators, R tables, one register per plane per row;
// checked in the assembly), since each decoded vector feeds MT rows of x.
constexpr int gemv_rows_per_tile(int bits, int mt) {
  const bool one_plane = bits <= 4;  // 3-bit planes are merged; 8-bit: two registers
  return mt <= 2 ? (one_plane || bits == 8 ? 4 : 2) : (one_plane ? 2 : 1);
}

// GEMV tiling shared by the float32 and bfloat16 kernels: x rows in tiles of
// 8, 4, 2, 1 and output rows in tiles of gemv_rows_per_tile (then singly).
// tile(mt, r, m0, n0) receives MT and R as std::integral_constant.
template <int BITS, typename Tile>
inline void gemv_tiles(int64_t M, int64_t n_begin, int64_t n_end, Tile&& tile) {
  auto rows = [&](auto mt, int64_t m0) {
    constexpr int R = gemv_rows_per_tile(BITS, decltype(mt)::value);
    int64_t n = n_begin;
    for (; n + R <= n_end; n += R) tile(mt, std::integral_constant<int, R>{}, m0, n);
    for (; n < n_end; ++n) tile(mt, std::integral_constant<int, 1>{}, m0, n);
  };
  int64_t m = 0;
  for (; m + 8 <= M; m += 8) rows(std::integral_constant<int, 8>{}, m);
  if (M - m >= 4) rows(std::integral_constant<int, 4>{}, m), m += 4;
  if (M - m >= 2) rows(std::integral_constant<int, 2>{}, m), m += 2;
  if (M - m >= 1) rows(std::integral_constant<int, 1>{}, m);
}

// Scale and zero point of (row n, group g).
inline void group_params(const KbitWeight& w, int64_t n, int64_t g, float& s, float& z) {
  const int64_t groups = w.K / w.group_size;
  s = w.scales[n * groups + g];
  z = w.zeros ? w.zeros[n * groups + g] : kbit::symmetric_zero(w.bits, w.ternary);
}

}  // namespace avx512
}  // namespace cpu
}  // namespace fusenas
