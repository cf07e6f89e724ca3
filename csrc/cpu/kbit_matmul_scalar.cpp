// Portable k-bit matmul: the fallback for CPUs without AVX2 and the baseline
// the SIMD kernels are tested against (FUSENAS_CPU_ISA=scalar). One block of
// 128 codes is decoded to floats, then dotted with every row of x.
#include <vector>

#include "common/kbit_layout.h"
#include "cpu/kbit_kernels.h"

namespace fusenas {
namespace cpu {

namespace {

// Dequantized values of block `b` of row n into out[0..len).
void decode_block(const KbitWeight& w, int64_t n, int64_t b, float* out, int64_t len) {
  const uint8_t* block = w.codes + n * w.row_stride + b * 16 * w.bits;
  const int64_t groups = w.K / w.group_size;
  const float zsym = kbit::symmetric_zero(w.bits, w.ternary);
  for (int64_t e = 0; e < len; ++e) {
    const int64_t k = b * kbit::kBlock + e;
    const int64_t g = k / w.group_size;
    const float s = w.scales[n * groups + g];
    const float z = w.zeros ? w.zeros[n * groups + g] : zsym;
    out[e] = (static_cast<float>(kbit::code_at(block, w.bits, static_cast<int>(e))) - z) * s;
  }
}

}  // namespace

void kbit_matmul_scalar(const KbitProblem& p, const KbitWeight& w, int64_t n_begin, int64_t n_end) {
  float wv[kbit::kBlock];
  std::vector<float> acc(p.M);
  const int64_t nb = kbit::num_blocks(w.K);
  for (int64_t n = n_begin; n < n_end; ++n) {
    for (auto& a : acc) a = 0.f;
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k0 = b * kbit::kBlock;
      const int64_t len = w.K - k0 < kbit::kBlock ? w.K - k0 : kbit::kBlock;
      decode_block(w, n, b, wv, len);
      for (int64_t m = 0; m < p.M; ++m) {
        const float* xr = p.x + m * p.ldx + k0;
        float s = 0.f;
        for (int64_t e = 0; e < len; ++e) s += xr[e] * wv[e];
        acc[m] += s;
      }
    }
    const float bias = p.bias ? p.bias[n] : 0.f;
    for (int64_t m = 0; m < p.M; ++m) p.y[m * p.ldy + n] = acc[m] + bias;
  }
}

void kbit_dequantize_scalar(const KbitWeight& w, float* out, int64_t n_begin, int64_t n_end) {
  const int64_t nb = kbit::num_blocks(w.K);
  for (int64_t n = n_begin; n < n_end; ++n) {
    for (int64_t b = 0; b < nb; ++b) {
      const int64_t k0 = b * kbit::kBlock;
      const int64_t len = w.K - k0 < kbit::kBlock ? w.K - k0 : kbit::kBlock;
      decode_block(w, n, b, out + n * w.K + k0, len);
    }
  }
}

}  // namespace cpu
}  // namespace fusenas
