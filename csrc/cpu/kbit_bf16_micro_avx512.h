// Pieces shared by the AVX512-BF16 k-bit kernels (include only from
// translation units compiled with -mavx512bf16): the 12 x 32 vdpbf16ps
// micro-kernel of the GEMMs and the vpermw tables that turn codes into
// bfloat16 values.
#pragma once

#include <immintrin.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <utility>

#include "cpu/bf16_bits_avx512.h"
#include "cpu/kbit_decode_avx512.h"
#include "cpu/kbit_panel_avx512.h"

namespace fusenas {
namespace cpu {
namespace avx512 {

inline __m512bh as_bh(__m512i v) { return reinterpret_cast<__m512bh&>(v); }

// 32-entry word table for vpermw: entry i holds bfloat16(((i mod 2^BITS) - z)
// * s), the decoded weights of one (row, group) rounded to bfloat16 once.
// vpermw reads the low 5 bits of each index word; the bits above the code are
// neighbouring fields, so the table repeats with period 2^BITS.
template <int BITS>
inline __m512i scaled_table(float s, float z) {
  static_assert(BITS <= 4, "entries 16..31 repeat entries 0..15");
  constexpr int period = 1 << BITS;
  const __m512 iota = _mm512_set_ps(15 % period, 14 % period, 13 % period, 12 % period, 11 % period,
                                    10 % period, 9 % period, 8 % period, 7 % period, 6 % period,
                                    5 % period, 4 % period, 3, 2, 1, 0);
  // (i - z) * s as the float decoders compute it (kbit_decode_avx512.h), then rounded.
  const __m512 v = _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(z)), _mm512_set1_ps(s));
  const __m512bh t = _mm512_cvtne2ps_pbh(v, v);
  return reinterpret_cast<const __m512i&>(t);
}

// The unscaled table of the integer codes, bfloat16((i mod 2^BITS) - zc):
// exact for the integer zc the kernels pass (small integers fit bfloat16).
template <int BITS>
inline __m512i code_table(float zc) {
  return scaled_table<BITS>(1.f, zc);
}

constexpr int kMr = 12;  // x rows per micro-kernel tile

// The C tile of store_c_tile, plus the bias, written as bfloat16 to Y (row
// stride ldy): the last k-chunk converts in registers, so no float32 copy of
// the output is written and converted afterwards.
template <int MR>
FUSENAS_ALWAYS_INLINE inline void store_c_tile_bf16(const __m512 (&c0)[MR], const __m512 (&c1)[MR],
                                                    uint16_t* Y, int64_t ldy, __mmask16 m0,
                                                    __mmask16 m1, const float* bias_or_null) {
  __m512 bb0 = _mm512_setzero_ps(), bb1 = _mm512_setzero_ps();
  if (bias_or_null) {
    bb0 = _mm512_maskz_loadu_ps(m0, bias_or_null);
    bb1 = _mm512_maskz_loadu_ps(m1, bias_or_null + 16);
  }
  FUSENAS_UNROLL for (int i = 0; i < MR; ++i) {
    _mm256_mask_storeu_epi16(Y + i * ldy, m0, to_bf16_bits(_mm512_add_ps(c0[i], bb0)));
    _mm256_mask_storeu_epi16(Y + i * ldy + 16, m1, to_bf16_bits(_mm512_add_ps(c1[i], bb1)));
  }
}

// C[MR x 32] (+)= A[MR x 2*pairs] * B; B holds, per k-pair, 16 columns x 2 k
// interleaved (32 bf16) for columns 0..15, then the same for 16..31. With Y
// (the last k-chunk of a bfloat16 output), C + bias goes to Y instead of C.
template <int MR>
void micro_kernel(const uint16_t* A, int64_t lda, const uint16_t* B, int64_t pairs, float* C,
                  int64_t ldc, __mmask16 m0, __mmask16 m1, bool first, const float* bias,
                  uint16_t* Y, int64_t ldy) {
  __m512 c0[MR], c1[MR];
  load_c_tile<MR>(c0, c1, C, ldc, m0, m1, first);
  for (int64_t q = 0; q < pairs; ++q) {
    const __m512bh b0 = as_bh(_mm512_loadu_si512(B + q * 64));
    const __m512bh b1 = as_bh(_mm512_loadu_si512(B + q * 64 + 32));
    FUSENAS_UNROLL for (int i = 0; i < MR; ++i) {
      int32_t pair;
      std::memcpy(&pair, A + i * lda + 2 * q, sizeof(pair));
      const __m512bh a = as_bh(_mm512_set1_epi32(pair));
      c0[i] = _mm512_dpbf16_ps(c0[i], a, b0);
      c1[i] = _mm512_dpbf16_ps(c1[i], a, b1);
    }
  }
  if (Y)
    store_c_tile_bf16<MR>(c0, c1, Y, ldy, m0, m1, bias);
  else
    store_c_tile<MR>(c0, c1, C, ldc, m0, m1, bias);
}

using MicroKernel = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, float*, int64_t,
                             __mmask16, __mmask16, bool, const float*, uint16_t*, int64_t);

// micro_kernel<1..kMr>, indexed by MR - 1.
template <int... Is>
constexpr std::array<MicroKernel, sizeof...(Is)> micro_table(std::integer_sequence<int, Is...>) {
  return {&micro_kernel<Is + 1>...};
}
constexpr std::array<MicroKernel, kMr> micro_kernels() {
  return micro_table(std::make_integer_sequence<int, kMr>{});
}

}  // namespace avx512
}  // namespace cpu
}  // namespace fusenas
