// The 8-float vector of the low-rank conv kernels (lowrank_gemm_impl.h's V),
// shared by the AVX2 translation unit (16 registers) and the AVX-512 one
// (kernels_avx512_ymm: 32 registers, embedded broadcasts). Each includes it
// under its own -m flags; internal linkage keeps the copies apart.
#pragma once

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
  static LR_INLINE reg bcast(const float* p) { return _mm256_set1_ps(*p); }
  static LR_INLINE reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  static LR_INLINE reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  static LR_INLINE reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  static LR_INLINE reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
};

}  // namespace
}  // namespace lowrank
}  // namespace cpu
}  // namespace fusenas
