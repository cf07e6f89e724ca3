// AVX-512 BF16 k-bit matmul for bfloat16 activations (M >= 2), compiled with
// -mavx512bf16 and entered only when cpuid reports AVX512_BF16.
//
// vdpbf16ps does 32 multiply-adds per instruction against 16 for a float32
// FMA, so with bfloat16 inputs the compute-bound shapes run up to twice as
// fast. Decoded weights ((q - z) * s, exact in float32) are rounded to
// bfloat16 once, the same rounding bfloat16 F.linear applies to its weights;
// products accumulate in float32. x arrives zero-padded to a whole number of
// 128-element blocks, so no load needs a mask.
// - GEMV (small M): two decoded sub-vectors make one 32-element bfloat16
//   vector whose element order matches 32 consecutive x values.
// - GEMM: the float32 panel (kbit_panel_avx512.h) is converted to k-pair
//   interleaved bfloat16 and fed to a 12 x 32 vdpbf16ps micro-kernel.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "cpu/kbit_bf16_micro_avx512.h"
#include "cpu/kbit_decode_avx512.h"
#include "cpu/kbit_kernels.h"
#include "cpu/kbit_panel_avx512.h"

namespace fusenas {
namespace cpu {

using namespace avx512;

namespace {

constexpr int64_t kGemvMaxM = 8;

// ---------------------------------------------------------------- GEMV ----

template <int BITS, int MT, int R>
void gemv_tile(const KbitProblemBf16& p, const KbitWeight& w, int64_t m0, int64_t n0) {
  __m512 acc[MT][R];
  FUSENAS_UNROLL for (int m = 0; m < MT; ++m) FUSENAS_UNROLL for (int r = 0; r < R; ++r) acc[m][r] =
      _mm512_setzero_ps();
  GroupConst gc[R];
  const int64_t nb = kbit::num_blocks(w.K);
  const int64_t G = w.group_size;
  int64_t next_group = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t k0 = b * kbit::kBlock;
    Planes pl[R];
    FUSENAS_UNROLL for (int r = 0; r < R; ++r) pl[r] =
        load_planes<BITS>(w.codes + (n0 + r) * w.row_stride + b * 16 * BITS);
    __m512 lo[R];
    for_each_subvector([&](auto ic) FUSENAS_ALWAYS_INLINE {
      constexpr int I = decltype(ic)::value;
      const int64_t k = k0 + 16 * I;
      const bool valid = k < w.K;  // past K: x is zero, weights must be finite
      if (valid && k >= next_group) {
        const int64_t g = k / G;
        next_group = (g + 1) * G;
        FUSENAS_UNROLL for (int r = 0; r < R; ++r) {
          float s, z;
          group_params(w, n0 + r, g, s, z);
          gc[r] = group_const<BITS>(s, z);
        }
      }
      FUSENAS_UNROLL for (int r = 0; r < R; ++r) {
        const __m512 v = valid ? decode<BITS, I>(pl[r], gc[r]) : _mm512_setzero_ps();
        if constexpr (I % 2 == 0) {
          lo[r] = v;
        } else {
          // [lo 0..15, v 0..15] as bf16 elements: the order of x[k-16 .. k+15].
          const __m512bh wv = _mm512_cvtne2ps_pbh(v, lo[r]);
          FUSENAS_UNROLL for (int m = 0; m < MT; ++m) {
            const __m512bh xv = as_bh(_mm512_loadu_si512(p.x + (m0 + m) * p.ldx + k - 16));
            acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, wv);
          }
        }
      }
    });
  }
  FUSENAS_UNROLL for (int r = 0; r < R; ++r) {
    const float bias = p.bias ? p.bias[n0 + r] : 0.f;
    FUSENAS_UNROLL for (int m = 0; m < MT; ++m) p.y[(m0 + m) * p.ldy + n0 + r] =
        _mm512_reduce_add_ps(acc[m][r]) + bias;
  }
}

template <int BITS>
void gemv(const KbitProblemBf16& p, const KbitWeight& w, int64_t n_begin, int64_t n_end) {
  gemv_tiles<BITS>(p.M, n_begin, n_end, [&](auto mt, auto r, int64_t m0, int64_t n0) {
    gemv_tile<BITS, decltype(mt)::value, decltype(r)::value>(p, w, m0, n0);
  });
}

// ---------------------------------------------------------------- GEMM ----

// k-major float32 panel (kc x 32) -> k-pair interleaved bfloat16.
inline void pack_pairs(const float* b, int64_t pairs, uint16_t* out) {
  const __m512i interleave =
      _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                       21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (int64_t q = 0; q < pairs; ++q) {
    FUSENAS_UNROLL for (int h = 0; h < 2; ++h) {
      const __m512 even = _mm512_loadu_ps(b + (2 * q) * kNr + 16 * h);
      const __m512 odd = _mm512_loadu_ps(b + (2 * q + 1) * kNr + 16 * h);
      __m512bh v = _mm512_cvtne2ps_pbh(odd, even);  // [even 0..15, odd 0..15]
      const __m512i x = _mm512_permutexvar_epi16(interleave, reinterpret_cast<__m512i&>(v));
      _mm512_storeu_si512(out + q * 64 + 32 * h, x);
    }
  }
}

template <int BITS>
void gemm(const KbitProblemBf16& p, const KbitWeight& w, int64_t n_begin, int64_t n_end) {
  alignas(64) float rows_buf[kNr * kKc];
  alignas(64) float b_buf[kKc * kNr];
  alignas(64) uint16_t bp[kKc * kNr];
  static constexpr auto kernels = micro_kernels();
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kNr) {
    const int rows = static_cast<int>(std::min<int64_t>(kNr, n_end - n0));
    const __mmask16 m0 = tail_mask(rows), m1 = tail_mask(std::max(0, rows - 16));
    for (int64_t kc0 = 0; kc0 < w.K; kc0 += kKc) {
      const int64_t kc = std::min<int64_t>(kKc, w.K - kc0);
      const int64_t kc_blocks = (kc + 127) / 128 * 128;
      decode_panel<BITS>(w, n0, rows, kc0, kc_blocks, rows_buf);
      for (int64_t kk = 0; kk < kc; kk += 16)
        FUSENAS_UNROLL for (int h = 0; h < 2; ++h)
            transpose16(rows_buf + h * 16 * kKc + kk, kKc, b_buf + kk * kNr + h * 16, kNr);
      const int64_t pairs = (kc + 1) / 2;  // a lone last k pairs with x's zero padding
      pack_pairs(b_buf, pairs, bp);
      const bool first = kc0 == 0, last = kc0 + kKc >= w.K;
      const float* bias = (last && p.bias) ? p.bias + n0 : nullptr;
      for (int64_t m = 0; m < p.M; m += kMr) {
        const int mr = static_cast<int>(std::min<int64_t>(kMr, p.M - m));
        kernels[mr - 1](p.x + m * p.ldx + kc0, p.ldx, bp, pairs, p.y + m * p.ldy + n0, p.ldy, m0,
                        m1, first, bias, nullptr, 0);
      }
    }
  }
}

template <int BITS>
void matmul(const KbitProblemBf16& p, const KbitWeight& w, int64_t n_begin, int64_t n_end) {
  if (p.M <= kGemvMaxM)
    gemv<BITS>(p, w, n_begin, n_end);
  else
    gemm<BITS>(p, w, n_begin, n_end);
}

}  // namespace

void kbit_matmul_avx512_bf16(const KbitProblemBf16& p, const KbitWeight& w, int64_t n_begin,
                             int64_t n_end) {
  with_bits(w.bits, [&](auto b) { matmul<decltype(b)::value>(p, w, n_begin, n_end); });
}

}  // namespace cpu
}  // namespace fusenas
