// AVX2 decoder of packed k-bit blocks (layout: csrc/common/kbit_layout.h).
//
// A 16-lane sub-vector I of the format (elements 16I..16I+15 of a block) is
// two 8-lane halves H = 0, 1 (elements 16I+8H .. 16I+8H+7). AVX2 has no
// ternary logic, no two-register permute and only 16 vector registers, so
// instead of merging bit planes for every sub-vector (as the AVX-512 decoder
// does), each block of each row is first normalised once, at a cost spread
// over its 16 halves, into one of two forms whose per-half extraction is a
// single shift (and a mask):
// - nibble form (2..4 bits): vector v[H][0] holds, in lane l, the code of
//   element 16I+8H+l at bits 4I..4I+3. A 4-bit plane is already in this form;
//   2- and 3-bit codes are assembled from their planes with a uniform shift
//   (2-bit plane) and a per-lane vpsllvd / vpsrlvd (1-bit plane).
// - byte form (5..8 bits): v[H][J] holds the code of sub-vector I = 2j + J at
//   byte j, zero above the code. 8-bit codes are already in this form; 5..7
//   bits spread the 4-bit plane's nibbles to bytes and OR in the upper planes.
// 2- and 3-bit codes are then decoded with one vpermps from a register holding
// (t - z) * s for t = 0..7 (vpermps reads only the low 3 index bits, so the
// garbage above the code costs no mask, and the scale costs nothing per
// element). 4..8-bit codes are masked, converted to float and scaled,
// (q - z) * s, exactly as the scalar and AVX-512 kernels compute it.
// Include only from translation units compiled with -mavx2 -mfma.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <utility>

#include "common/kbit_layout.h"
#include "fusenas/kbit.h"

// Forces inlining of the small helpers and lambdas of the unrolled block loops:
// GCC keeps accumulator arrays in registers only when no call is left between
// their uses.
#define FUSENAS_AVX2_INLINE __attribute__((always_inline))

namespace fusenas {
namespace cpu {
namespace avx2 {

template <int BITS>
struct Spec {
  static constexpr bool kHas4 = BITS != 8 && (BITS & 4);
  static constexpr bool kHas2 = BITS != 8 && (BITS & 2);
  static constexpr bool kHas1 = BITS != 8 && (BITS & 1);
  static constexpr int kOff2 = kHas4 ? 64 : 0;            // byte offset of the 2-bit plane
  static constexpr int kOff1 = kOff2 + (kHas2 ? 32 : 0);  // byte offset of the 1-bit plane
  static constexpr bool kNibble = BITS <= 4;              // nibble form, else byte form
  static constexpr bool kTable = BITS <= 3;               // vpermps lookup of (t - z) * s
};

// One block of one row in normalised form (see the header comment).
struct Codes {
  __m256i v[2][2];
};

inline __m256i load256(const uint8_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

// Shifts every lane left by SHIFT bits (right when SHIFT < 0).
template <int SHIFT>
inline __m256i shift_uniform(__m256i v) {
  if constexpr (SHIFT > 0) return _mm256_slli_epi32(v, SHIFT);
  if constexpr (SHIFT < 0) return _mm256_srli_epi32(v, -SHIFT);
  return v;
}

// A 1-bit plane broadcast to both 128-bit lanes holds, in lane l, word l % 4;
// half H of sub-vector I reads field 4I + 2H + l / 4 of it. Shifts lanes 0..3
// left by L0 and lanes 4..7 by L0 - 1 (right for negative counts), which moves
// that field to bit 4I + 2H + L0 of every lane.
template <int L0>
inline __m256i place_plane1(__m256i b) {
  if constexpr (L0 >= 1)
    return _mm256_sllv_epi32(b, _mm256_setr_epi32(L0, L0, L0, L0, L0 - 1, L0 - 1, L0 - 1, L0 - 1));
  else
    return _mm256_srlv_epi32(b,
                             _mm256_setr_epi32(-L0, -L0, -L0, -L0, 1 - L0, 1 - L0, 1 - L0, 1 - L0));
}

// Byte form of half H, parity J, of a 5..7-bit block (see Codes).
template <int BITS, int H, int J>
inline __m256i byte_form(const uint8_t* block, __m256i p1) {
  using S = Spec<BITS>;
  const __m256i p4 = load256(block + 32 * H);
  // nibble 2j + J of the 4-bit plane to the low half of byte j
  __m256i v = _mm256_and_si256(shift_uniform<-4 * J>(p4), _mm256_set1_epi32(0x0f0f0f0f));
  if constexpr (S::kHas2) {  // field 4I + 2H of the 2-bit plane to bits 4..5 of byte j
    const __m256i p2 = load256(block + S::kOff2);
    const __m256i hi = shift_uniform<4 - 4 * J - 2 * H>(p2);
    v = _mm256_or_si256(v, _mm256_and_si256(hi, _mm256_set1_epi32(0x30303030)));
  }
  if constexpr (S::kHas1) {  // the 1-bit plane to bit 4 (5-bit) or 6 (7-bit) of byte j
    constexpr int kBit = BITS == 5 ? 4 : 6;
    const __m256i hi = place_plane1<kBit - 4 * J - 2 * H>(p1);
    v = _mm256_or_si256(v, _mm256_and_si256(hi, _mm256_set1_epi32(0x01010101 << kBit)));
  }
  return v;
}

template <int BITS>
inline Codes load_codes(const uint8_t* block) {
  using S = Spec<BITS>;
  Codes c;
  if constexpr (BITS == 8) {
    c.v[0][0] = load256(block);
    c.v[1][0] = load256(block + 32);
    c.v[0][1] = load256(block + 64);
    c.v[1][1] = load256(block + 96);
  } else if constexpr (BITS == 4) {
    c.v[0][0] = load256(block);
    c.v[1][0] = load256(block + 32);
  } else if constexpr (BITS == 2) {
    const __m256i p2 = load256(block);
    c.v[0][0] = p2;
    c.v[1][0] = _mm256_srli_epi32(p2, 2);
  } else if constexpr (BITS == 3) {
    const __m256i p2 = load256(block);
    const __m256i p1 =
        _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 32)));
    const __m256i m2 = _mm256_set1_epi32(0x33333333), m1 = _mm256_set1_epi32(0x44444444);
    c.v[0][0] =
        _mm256_or_si256(_mm256_and_si256(p2, m2), _mm256_and_si256(place_plane1<2>(p1), m1));
    c.v[1][0] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(p2, 2), m2),
                                _mm256_and_si256(place_plane1<0>(p1), m1));
  } else {
    __m256i p1 = _mm256_setzero_si256();
    if constexpr (S::kHas1)
      p1 = _mm256_broadcastsi128_si256(
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + S::kOff1)));
    c.v[0][0] = byte_form<BITS, 0, 0>(block, p1);
    c.v[0][1] = byte_form<BITS, 0, 1>(block, p1);
    c.v[1][0] = byte_form<BITS, 1, 0>(block, p1);
    c.v[1][1] = byte_form<BITS, 1, 1>(block, p1);
  }
  return c;
}

// Codes of half H of sub-vector I. Table path: bits above the low 3 are
// arbitrary (vpermps ignores them); otherwise exactly the code, taken from
// byte j = I / 2 with one op: a mask (j = 0), a shift (j = 3) or a vpshufb
// that moves byte j of every lane to byte 0 and zeroes the rest.
template <int BITS, int I, int H>
inline FUSENAS_AVX2_INLINE __m256i codes(const Codes& c) {
  if constexpr (Spec<BITS>::kTable) {
    return _mm256_srli_epi32(c.v[H][0], 4 * I);
  } else if constexpr (BITS == 4) {
    if constexpr (I == 7) return _mm256_srli_epi32(c.v[H][0], 28);
    return _mm256_and_si256(_mm256_srli_epi32(c.v[H][0], 4 * I), _mm256_set1_epi32(15));
  } else {
    constexpr int j = I >> 1;
    const __m256i v = c.v[H][I & 1];
    if constexpr (j == 0) return _mm256_and_si256(v, _mm256_set1_epi32(0xff));
    if constexpr (j == 3) return _mm256_srli_epi32(v, 24);
    constexpr char z = -128;  // vpshufb: a set top bit writes zero
    return _mm256_shuffle_epi8(
        v, _mm256_setr_epi8(j, z, z, z, 4 + j, z, z, z, 8 + j, z, z, z, 12 + j, z, z, z, j, z, z, z,
                            4 + j, z, z, z, 8 + j, z, z, z, 12 + j, z, z, z));
  }
}

// Codes of half H of sub-vector I as floats (conversion path; 2- and 3-bit
// codes are masked out of their nibbles, which the table path need not do).
template <int BITS, int I, int H>
inline __m256 codes_ps(const Codes& c) {
  if constexpr (Spec<BITS>::kTable) {
    return _mm256_cvtepi32_ps(
        _mm256_and_si256(codes<BITS, I, H>(c), _mm256_set1_epi32((1 << BITS) - 1)));
  } else {
    return _mm256_cvtepi32_ps(codes<BITS, I, H>(c));
  }
}

// Per-row, per-group dequantisation constants.
struct GroupConst {
  __m256 a;  // table path: (t - z) * s for t = 0..7; conversion path: s
  __m256 b;  // conversion path: z
};

template <int BITS>
inline GroupConst group_const(float s, float z) {
  const __m256 vs = _mm256_set1_ps(s), vz = _mm256_set1_ps(z);
  GroupConst gc;
  if constexpr (Spec<BITS>::kTable) {
    // 2-bit codes repeat the table with period 4, so index bit 2 (garbage) is harmless.
    const __m256 iota =
        BITS == 2 ? _mm256_setr_ps(0, 1, 2, 3, 0, 1, 2, 3) : _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7);
    gc.a = _mm256_mul_ps(_mm256_sub_ps(iota, vz), vs);
    gc.b = _mm256_setzero_ps();
  } else {
    gc.a = vs;
    gc.b = vz;
  }
  return gc;
}

// Dequantised weights (q - z) * s of half H of sub-vector I.
template <int BITS, int I, int H>
inline __m256 decode(const Codes& c, const GroupConst& gc) {
  if constexpr (Spec<BITS>::kTable) {
    return _mm256_permutevar8x32_ps(gc.a, codes<BITS, I, H>(c));
  } else {
    return _mm256_mul_ps(_mm256_sub_ps(codes_ps<BITS, I, H>(c), gc.b), gc.a);
  }
}

// Calls f(std::integral_constant<int, I>) for I = 0..N-1.
template <typename F, int... Is>
inline FUSENAS_AVX2_INLINE void static_for_impl(F&& f, std::integer_sequence<int, Is...>) {
  (f(std::integral_constant<int, Is>{}), ...);
}
template <int N, typename F>
inline FUSENAS_AVX2_INLINE void static_for(F&& f) {
  static_for_impl(f, std::make_integer_sequence<int, N>{});
}

// Scale and zero point of (row n, group g).
inline void group_params(const KbitWeight& w, int64_t n, int64_t g, float& s, float& z) {
  const int64_t groups = w.K / w.group_size;
  s = w.scales[n * groups + g];
  z = w.zeros ? w.zeros[n * groups + g] : kbit::symmetric_zero(w.bits, w.ternary);
}

// Lane mask of the first `count` (0..8) lanes, for vmaskmovps.
inline __m256i lane_mask(int64_t count) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Sum of the 8 lanes.
inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

}  // namespace avx2
}  // namespace cpu
}  // namespace fusenas
