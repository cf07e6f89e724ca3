// AVX-512 kernels of the low-rank conv: 16 pixels per vector. 6 x 4 vector
// row micro-tile = 24 accumulators + 4 B vectors of the 32 zmm registers; the
// A value is a broadcast memory operand of the FMA.
#include <immintrin.h>

#include "cpu/lowrank_gemm_impl.h"
#include "cpu/lowrank_vec256.h"

namespace fusenas {
namespace cpu {
namespace lowrank {
namespace {

struct V512 {
  using reg = __m512;
  static constexpr int kWidth = 16;
  static LR_INLINE reg zero() { return _mm512_setzero_ps(); }
  static LR_INLINE reg loadu(const float* p) { return _mm512_loadu_ps(p); }
  static LR_INLINE void storeu(float* p, reg v) { _mm512_storeu_ps(p, v); }
  static LR_INLINE reg bcast(const float* p) { return _mm512_set1_ps(*p); }
  static LR_INLINE reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  static LR_INLINE reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  static LR_INLINE reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  static LR_INLINE reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
};

struct Cfg512 {
  static constexpr int kMR = 6, kNVMax = 8;
  // rows x vectors <= 24 accumulators (+ the B vectors) of the 32 registers.
  static constexpr int nv_for(int rows) { return rows <= 2 ? 8 : rows <= 4 ? 6 : 4; }
  // Rows x vectors <= 24 accumulators.
  static constexpr int tile_mr(int nv) { return nv <= 2 ? 12 : nv == 3 ? 8 : 6; }
  // IndGemm: one pixel pointer per row. At 12 rows some of the 12 pointers
  // were reloaded from the stack every k; 10 keeps them in registers. Forward,
  // 2 threads: 64 ch @56 channel rank 29 (10 x 2) 10.0-10.6 -> 9.2-9.9 ms (8 x 2:
  // 9.7-10.2), spatial rank 16 (10 x 1) 4.14-4.56 -> 4.09-4.16 ms (1 thread:
  // 8.8-9.2 -> 8.3-8.7); 64 ch @8 the same within 3%.
  static constexpr int kIndMR = 10, kIndNV = 4;
  static constexpr int ind_mr(int nv) { return nv <= 2 ? 10 : tile_mr(nv); }
  // BlockGemm: no pixel pointers, so one vector takes 16 pixels.
  static constexpr int kBlockMR = 16;
  static constexpr int block_mr(int nv) { return nv == 1 ? 16 : tile_mr(nv); }
  // PairGemm: two pointers per pair, so one vector takes 16 rows (17 registers).
  static constexpr int kPairMR = 16;
  static constexpr int pair_mr(int nv) { return nv == 1 ? 16 : tile_mr(nv); }
};

// 16 x 16: 4 x 4 transposes inside each 128-bit lane (unpack ps / pd), then a
// 4 x 4 transpose of the lanes (two rounds of shuffle_f32x4).
void transpose16(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m512 r[16], t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int g = 0; g < 4; ++g) {
    const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
    r[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  // r[4g + j], 128-bit lane L: rows 4g..4g+3 of column 4L + j.
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    const __m512 u0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x44);
    const __m512 u1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xEE);
    const __m512 u2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x44);
    const __m512 u3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xEE);
    _mm512_storeu_ps(dst + (0 + j) * ldd, _mm512_shuffle_f32x4(u0, u2, 0x88));
    _mm512_storeu_ps(dst + (4 + j) * ldd, _mm512_shuffle_f32x4(u0, u2, 0xDD));
    _mm512_storeu_ps(dst + (8 + j) * ldd, _mm512_shuffle_f32x4(u1, u3, 0x88));
    _mm512_storeu_ps(dst + (12 + j) * ldd, _mm512_shuffle_f32x4(u1, u3, 0xDD));
  }
}

// One masked load and one masked store per 16 columns: the zero padding comes
// from the load's zero-masking (masked-off lanes never touch memory, so src
// may point before or past the row). The masks are the same for every row,
// so they are worked out once: the rows are short and many.
void copy_pad_rows(const float* src, int64_t lds, int64_t rows, int64_t lo, int64_t n,
                   int64_t width, float* dst, int64_t ldd) {
  constexpr int64_t kMaxChunks = 8;  // rows up to 128 floats in one pass
  for (int64_t j0 = 0; j0 < width; j0 += 16 * kMaxChunks) {
    const int64_t chunks = std::min<int64_t>(kMaxChunks, (width - j0 + 15) / 16);
    __mmask16 min[kMaxChunks], mout[kMaxChunks];
    for (int64_t k = 0; k < chunks; ++k) {
      const int64_t j = j0 + 16 * k;
      const int64_t in_lo = std::clamp<int64_t>(lo - j, 0, 16);
      const int64_t in_hi = std::clamp<int64_t>(lo + n - j, 0, 16);
      mout[k] = static_cast<__mmask16>((1u << std::min<int64_t>(16, width - j)) - 1);
      min[k] = static_cast<__mmask16>(((1u << in_hi) - 1) & ~((1u << in_lo) - 1));
    }
    const float* s = src + j0 - lo;  // column j of the padded row reads s[j - j0]
    float* d = dst + j0;
    for (int64_t r = 0; r < rows; ++r, s += lds, d += ldd)
      for (int64_t k = 0; k < chunks; ++k)
        _mm512_mask_storeu_ps(d + 16 * k, mout[k], _mm512_maskz_loadu_ps(min[k], s + 16 * k));
  }
}

}  // namespace

const Kernels& kernels_avx512() { return make_kernels<V512, Cfg512>("avx512"); }
// 8 floats per vector on the same core (lowrank_vec256.h): 32 ymm registers
// and embedded broadcasts, so Cfg512's tiles fit as they are. For layers whose
// rank rounds up better to 8 than to 16 on hosts that split each 512-bit
// instruction in two (Zen 4): the same multiply-adds per cycle. The AVX2
// kernels, the earlier choice there, have 16 registers and 4 x 3 tiles.
const Kernels& kernels_avx512_ymm() { return make_kernels<V256, Cfg512>("avx512-ymm"); }

}  // namespace lowrank
}  // namespace cpu
}  // namespace fusenas
