// Decoded weight panels for the AVX-512 GEMM paths (float32 and bfloat16):
// 32 output rows x kKc inputs decoded once per panel, then transposed to a
// k-major layout that the outer-product micro-kernels stream from L1.
// Include only from translation units compiled with AVX-512 flags.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/kbit_decode_avx512.h"

namespace fusenas {
namespace cpu {
namespace avx512 {

constexpr int kNr = 32;       // panel width (output rows) = two zmm of float32
constexpr int64_t kKc = 256;  // k-chunk: 256 x 32 floats = 32 KiB, fits L1

inline __mmask16 tail_mask(int64_t remaining) {
  return remaining >= 16 ? static_cast<__mmask16>(0xffff)
                         : static_cast<__mmask16>((1u << remaining) - 1u);
}

// Decodes rows [n0, n0 + rows) x k in [kc0, kc0 + kc) (kc0 a multiple of 128)
// into out[row][kk] (row stride kKc); rows past `rows` and k past K are zero.
template <int BITS>
void decode_panel(const KbitWeight& w, int64_t n0, int rows, int64_t kc0, int64_t kc, float* out) {
  const int64_t G = w.group_size;
  for (int r = 0; r < kNr; ++r) {
    float* dst = out + r * kKc;
    if (r >= rows) {
      std::memset(dst, 0, sizeof(float) * kKc);
      continue;
    }
    const int64_t n = n0 + r;
    int64_t next_group = kc0;
    GroupConst gc{};
    for (int64_t kb = 0; kb < kc; kb += kbit::kBlock) {
      const int64_t k0 = kc0 + kb;
      const Planes pl = load_planes<BITS>(w.codes + n * w.row_stride + (k0 / 128) * 16 * BITS);
      for_each_subvector([&](auto ic) FUSENAS_ALWAYS_INLINE {
        constexpr int I = decltype(ic)::value;
        const int64_t k = k0 + 16 * I;
        if (k >= w.K) {  // padding past K: no group, no scale
          _mm512_storeu_ps(dst + kb + 16 * I, _mm512_setzero_ps());
          return;
        }
        if (k >= next_group) {
          const int64_t g = k / G;
          next_group = (g + 1) * G;
          float s, z;
          group_params(w, n, g, s, z);
          gc = group_const<BITS>(s, z);
        }
        __m512 v = decode<BITS, I>(pl, gc);
        if (k + 16 > w.K) v = _mm512_maskz_mov_ps(tail_mask(std::max<int64_t>(0, w.K - k)), v);
        _mm512_storeu_ps(dst + kb + 16 * I, v);
      });
    }
    for (int64_t kk = kc; kk < kKc; ++kk) dst[kk] = 0.f;
  }
}

// The GEMM micro-kernels' C tile, MR rows x 32 columns as two zmm per row,
// masked to the panel's valid columns: loaded (zero for the first k-chunk) ...
template <int MR>
FUSENAS_ALWAYS_INLINE inline void load_c_tile(__m512 (&c0)[MR], __m512 (&c1)[MR], const float* C,
                                              int64_t ldc, __mmask16 m0, __mmask16 m1, bool first) {
  FUSENAS_UNROLL for (int i = 0; i < MR; ++i) {
    c0[i] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m0, C + i * ldc);
    c1[i] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(m1, C + i * ldc + 16);
  }
}

// ... and stored back, plus the bias (the last k-chunk's call passes it).
template <int MR>
FUSENAS_ALWAYS_INLINE inline void store_c_tile(__m512 (&c0)[MR], __m512 (&c1)[MR], float* C,
                                               int64_t ldc, __mmask16 m0, __mmask16 m1,
                                               const float* bias_or_null) {
  if (bias_or_null) {
    const __m512 bb0 = _mm512_maskz_loadu_ps(m0, bias_or_null);
    const __m512 bb1 = _mm512_maskz_loadu_ps(m1, bias_or_null + 16);
    FUSENAS_UNROLL for (int i = 0; i < MR; ++i) {
      c0[i] = _mm512_add_ps(c0[i], bb0);
      c1[i] = _mm512_add_ps(c1[i], bb1);
    }
  }
  FUSENAS_UNROLL for (int i = 0; i < MR; ++i) {
    _mm512_mask_storeu_ps(C + i * ldc, m0, c0[i]);
    _mm512_mask_storeu_ps(C + i * ldc + 16, m1, c1[i]);
  }
}

// 16 x 16 transpose of floats: src rows (stride ss) -> dst rows (stride ds).
inline void transpose16(const float* src, int64_t ss, float* dst, int64_t ds) {
  __m512 r[16], t[16];
  FUSENAS_UNROLL for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ss);
  FUSENAS_UNROLL for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  FUSENAS_UNROLL for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  FUSENAS_UNROLL for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
  }
  FUSENAS_UNROLL for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
    r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xDD);
  }
  FUSENAS_UNROLL for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * ds, r[i]);
}

}  // namespace avx512
}  // namespace cpu
}  // namespace fusenas
