// AVX2+FMA kernels of the low-rank conv: 8 pixels per vector. 4 x 3 vector
// row micro-tile = 12 accumulators + 3 B vectors + 1 broadcast of 16 ymm.
#include <immintrin.h>

#include "cpu/lowrank_gemm_impl.h"

namespace fusenas {
namespace cpu {
namespace lowrank {
namespace {

struct V256 {
  using reg = __m256;
  static constexpr int kWidth = 8;
  static LR_INLINE reg zero() { return _mm256_setzero_ps(); }
  static LR_INLINE reg loadu(const float* p) { return _mm256_loadu_ps(p); }
  static LR_INLINE void storeu(float* p, reg v) { _mm256_storeu_ps(p, v); }
  static LR_INLINE reg bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static LR_INLINE reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static LR_INLINE float hsum(reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

struct Cfg256 {
  static constexpr int kMR = 4, kNV = 3;
  static constexpr int kSmallRows = 2, kNVSmall = 5, kNVMax = 5;
  static constexpr int kRR = 3, kKR = 3;  // 9 accumulators + 3 B + 1 U registers
};

}  // namespace

const Kernels& kernels_avx2() { return make_kernels<V256, Cfg256>("avx2"); }

}  // namespace lowrank
}  // namespace cpu
}  // namespace fusenas
