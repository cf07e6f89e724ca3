// AVX-512 kernels of the low-rank conv: 16 pixels per vector. 6 x 4 vector
// row micro-tile = 24 accumulators + 4 B vectors of the 32 zmm registers; the
// A value is a broadcast memory operand of the FMA.
#include <immintrin.h>

#include "cpu/lowrank_gemm_impl.h"

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
  static LR_INLINE float hsum(reg v) { return _mm512_reduce_add_ps(v); }
};

struct Cfg512 {
  static constexpr int kMR = 6, kNV = 4;
  static constexpr int kSmallRows = 2, kNVSmall = 8, kNVMax = 8;
  static constexpr int kRR = 4, kKR = 6;  // 24 accumulators + 6 B + 1 U registers
};

}  // namespace

const Kernels& kernels_avx512() { return make_kernels<V512, Cfg512>("avx512"); }

}  // namespace lowrank
}  // namespace cpu
}  // namespace fusenas
