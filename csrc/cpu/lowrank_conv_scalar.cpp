// Portable kernels of the low-rank conv (baseline x86-64 or any CPU): a
// "vector" of 4 floats in plain C++, which the compiler maps to SSE2 or
// scalar code. The reference path the SIMD kernels are tested against.
#include "cpu/lowrank_gemm_impl.h"

namespace fusenas {
namespace cpu {
namespace lowrank {
namespace {

struct Vec4 {
  float v[4];
};

struct VScalar {
  using reg = Vec4;
  static constexpr int kWidth = 4;
  static LR_INLINE reg zero() { return Vec4{{0.f, 0.f, 0.f, 0.f}}; }
  static LR_INLINE reg loadu(const float* p) { return Vec4{{p[0], p[1], p[2], p[3]}}; }
  static LR_INLINE void storeu(float* p, reg a) {
    for (int i = 0; i < 4; ++i) p[i] = a.v[i];
  }
  static LR_INLINE reg bcast(const float* p) { return Vec4{{*p, *p, *p, *p}}; }
  static LR_INLINE reg fmadd(reg a, reg b, reg c) {
    for (int i = 0; i < 4; ++i) c.v[i] += a.v[i] * b.v[i];
    return c;
  }
  static LR_INLINE reg add(reg a, reg b) {
    for (int i = 0; i < 4; ++i) a.v[i] += b.v[i];
    return a;
  }
  static LR_INLINE reg sub(reg a, reg b) {
    for (int i = 0; i < 4; ++i) a.v[i] -= b.v[i];
    return a;
  }
  static LR_INLINE reg max(reg a, reg b) {
    for (int i = 0; i < 4; ++i) a.v[i] = a.v[i] > b.v[i] ? a.v[i] : b.v[i];
    return a;
  }
};

struct CfgScalar {
  static constexpr int kMR = 4, kNVMax = 4;
  static constexpr int nv_for(int rows) { return rows <= 2 ? 4 : 2; }
  static constexpr int kIndMR = 4, kIndNV = 4;
  static constexpr int ind_mr(int) { return 4; }
  static constexpr int kBlockMR = 4;
  static constexpr int block_mr(int) { return 4; }
  static constexpr int kPairMR = 4;
  static constexpr int pair_mr(int) { return 4; }
};

void transpose16(const float* src, int64_t lds, float* dst, int64_t ldd) {
  for (int c = 0; c < 16; ++c)
    for (int p = 0; p < 16; ++p) dst[c * ldd + p] = src[p * lds + c];
}

void copy_pad_rows(const float* src, int64_t lds, int64_t rows, int64_t lo, int64_t n,
                   int64_t width, float* dst, int64_t ldd) {
  copy_pad_rows_loops(src, lds, rows, lo, n, width, dst, ldd);
}

}  // namespace

const Kernels& kernels_scalar() { return make_kernels<VScalar, CfgScalar>("scalar"); }

}  // namespace lowrank
}  // namespace cpu
}  // namespace fusenas
