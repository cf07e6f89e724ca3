// TEMPORARY: AVX2 kernels are being written; until then AVX2 machines use the scalar path.
#include "cpu/kbit_kernels.h"
namespace fusenas {
namespace cpu {
void kbit_matmul_avx2(const KbitProblem& p, const KbitWeight& w, int64_t n0, int64_t n1) {
  kbit_matmul_scalar(p, w, n0, n1);
}
void kbit_dequantize_avx2(const KbitWeight& w, float* out, int64_t n0, int64_t n1) {
  kbit_dequantize_scalar(w, out, n0, n1);
}
}  // namespace cpu
}  // namespace fusenas
