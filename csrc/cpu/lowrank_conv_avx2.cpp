// AVX2+FMA kernels of the low-rank conv: 8 pixels per vector. 4 x 3 vector
// row micro-tile = 12 accumulators + 3 B vectors + 1 broadcast of 16 ymm.
#include <immintrin.h>

#include "cpu/lowrank_gemm_impl.h"
#include "cpu/lowrank_vec256.h"

namespace fusenas {
namespace cpu {
namespace lowrank {
namespace {

struct Cfg256 {
  static constexpr int kMR = 4, kNVMax = 5;
  // rows x vectors + vectors + 1 broadcast <= 16 registers.
  static constexpr int nv_for(int rows) { return rows <= 2 ? 5 : 3; }
  // IndGemm: pixels x vectors + vectors + 1 broadcast <= 16 registers.
  static constexpr int kIndMR = 8, kIndNV = 3;
  static constexpr int ind_mr(int nv) { return nv == 1 ? 8 : nv == 2 ? 6 : 4; }
  // BlockGemm: no pixel pointers, so one vector takes 12 pixels.
  static constexpr int kBlockMR = 12;
  static constexpr int block_mr(int nv) { return nv == 1 ? 12 : ind_mr(nv); }
  // PairGemm: two pointers per pair, so one vector takes 12 rows.
  static constexpr int kPairMR = 12;
  static constexpr int pair_mr(int nv) { return nv == 1 ? 12 : ind_mr(nv); }
};

// 8 x 8 block transpose (unpack, shuffle, 128-bit permute); 16 x 16 is four.
void transpose8(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m256 r[8], t[8];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
    r[4 * h + 0] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
    r[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
    r[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
    r[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    _mm256_storeu_ps(dst + j * ldd, _mm256_permute2f128_ps(r[j], r[4 + j], 0x20));
    _mm256_storeu_ps(dst + (4 + j) * ldd, _mm256_permute2f128_ps(r[j], r[4 + j], 0x31));
  }
}

void transpose16(const float* src, int64_t lds, float* dst, int64_t ldd) {
  for (int i = 0; i < 16; i += 8)
    for (int j = 0; j < 16; j += 8) transpose8(src + i * lds + j, lds, dst + j * ldd + i, ldd);
}

void copy_pad_rows(const float* src, int64_t lds, int64_t rows, int64_t lo, int64_t n,
                   int64_t width, float* dst, int64_t ldd) {
  copy_pad_rows_loops(src, lds, rows, lo, n, width, dst, ldd);
}

}  // namespace

const Kernels& kernels_avx2() { return make_kernels<V256, Cfg256>("avx2"); }

}  // namespace lowrank
}  // namespace cpu
}  // namespace fusenas
