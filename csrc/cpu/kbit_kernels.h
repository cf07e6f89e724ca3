// Internal interface between the k-bit matmul front end (kbit_matmul_cpu.cpp)
// and its per-ISA kernels. Every kernel works on float32 activations (the
// front end converts bfloat16 once) and computes output rows [n_begin, n_end)
// of y for all M, so threads split N and each streams only its own weights.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/static_dispatch.h"
#include "fusenas/kbit.h"

namespace fusenas {
namespace cpu {

struct KbitProblem {
  const float* x;  // M x K, row stride ldx
  int64_t M;
  int64_t ldx;
  const float* bias;  // N or null
  float* y;           // M x N, row stride ldy
  int64_t ldy;
};

// bfloat16 activations for the AVX512-BF16 kernel: rows zero-padded to a whole
// number of 128-element blocks (ldx >= num_blocks(K) * 128).
struct KbitProblemBf16 {
  const uint16_t* x;
  int64_t M;
  int64_t ldx;
  const float* bias;
  float* y;
  int64_t ldy;
};

// The kernels on integer codes for AVX512-BF16 CPUs (the GEMV of
// kbit_gemv_avx512_bf16.cpp, the GEMM of kbit_gemm_codes_avx512_bf16.cpp).
// x rows are prepared by the front end: zero-padded to whole 128-element
// blocks, each block permuted into the decoder's order (element j + 64h + 16t
// of a block at position 32t + 2j + h) and stored as bfloat16 terms whose sum
// is x (hi + lo for float32 input; lo null for bfloat16 input).
struct KbitGemvBf16Problem {
  const uint16_t* xhi;
  const uint16_t* xlo;  // null: one term
  int64_t M;
  int64_t ldx;        // >= num_blocks(K) * 128
  const float* xsum;  // M x groups: sums of x per group (asymmetric codes; GEMV), else null
  const float* bias;  // N or null
  float* y;           // M x N float32, row stride ldy (when ybf is null)
  uint16_t* ybf;      // or M x N bfloat16 bits, row stride ldy (rounded to nearest even)
  int64_t ldy;
};

// 2-, 3-, 4-bit and ternary codes with scale groups of whole blocks go to the
// kernels on codes (kbit_gemv_avx512_bf16.cpp, small M, and
// kbit_gemm_codes_avx512_bf16.cpp, large M) where they beat the decoding
// kernels (2 threads, the four benchmark shapes and three more of 4M weights):
// - float32 x up to M = 16, on the GEMV with two bfloat16 terms per x. At
//   M = 32 the code GEMV ran 0.86-1.09x the speed of the float32 kernels;
//   above, float32 FMAs on decoded weights do the same multiply-adds in fewer
//   instructions. (One loss inside the range: at K = 1024 and M = 8 the float32
//   GEMV was 1.1-1.4x faster; at M = 16 the code GEMV was 1.1-2.2x faster.)
// - bfloat16 x at every M: the GEMV up to M = 24, then the GEMM (the GEMV
//   re-reads every x row per chunk of 12 output rows; the GEMM keeps a block
//   of weight panels in L2 for all of them; the two are even at M = 24-32).
static constexpr int64_t kCodesMaxMFloat32 = 16;
static constexpr int64_t kGemvCodesMaxMBf16 = 24;
inline bool kbit_codes_bf16_applies(const KbitWeight& w, int64_t M, bool float32_x) {
  const int64_t groups = w.K / w.group_size;
  return M >= 1 && (!float32_x || M <= kCodesMaxMFloat32) && w.bits <= 4 &&
         (groups == 1 || w.group_size % 128 == 0);
}

using KbitKernel = void (*)(const KbitProblem& p, const KbitWeight& w, int64_t n_begin,
                            int64_t n_end);
using KbitDequantKernel = void (*)(const KbitWeight& w, float* out, int64_t n_begin, int64_t n_end);

void kbit_matmul_scalar(const KbitProblem& p, const KbitWeight& w, int64_t n_begin, int64_t n_end);
void kbit_dequantize_scalar(const KbitWeight& w, float* out, int64_t n_begin, int64_t n_end);
void kbit_matmul_avx2(const KbitProblem& p, const KbitWeight& w, int64_t n_begin, int64_t n_end);
void kbit_dequantize_avx2(const KbitWeight& w, float* out, int64_t n_begin, int64_t n_end);
void kbit_matmul_avx512(const KbitProblem& p, const KbitWeight& w, int64_t n_begin, int64_t n_end);
void kbit_dequantize_avx512(const KbitWeight& w, float* out, int64_t n_begin, int64_t n_end);
void kbit_matmul_avx512_bf16(const KbitProblemBf16& p, const KbitWeight& w, int64_t n_begin,
                             int64_t n_end);
void kbit_gemv_avx512_bf16(const KbitGemvBf16Problem& p, const KbitWeight& w, int64_t n_begin,
                           int64_t n_end);
// Same problem, bfloat16 x (xlo null), any M; for M > kGemvCodesMaxMBf16.
void kbit_gemm_codes_avx512_bf16(const KbitGemvBf16Problem& p, const KbitWeight& w, int64_t n_begin,
                                 int64_t n_end);
// Lays out M rows of x (float32, or bfloat16 bits when !float32_x; row stride
// ldx) for the kernels on integer codes: hi and lo (float32 only) get M rows
// of num_blocks(K) * 128 terms at row stride ldh (kbit_bf16_x_stride); xsum
// (or null) the M x (K / group_size) group sums.
void kbit_gemv_bf16_prepare(const void* x, int64_t M, int64_t ldx, bool float32_x, int64_t K,
                            int64_t group_size, uint16_t* hi, uint16_t* lo, int64_t ldh,
                            float* xsum);

// The batch-1 GEMV on subset-sum tables (kbit_gemv_lut_avx512_vnni.cpp) for
// 2-bit, ternary and 3-bit weights in the table layout (KbitLutWeight). The front end
// builds x's tables once per call with kbit_lut_prepare: for each 4-input block
// q of x (zero-padded to whole 128-element blocks), the 16 sums
// T[m] = sum_i (bit_i(m) - 1/2) x[4q + i] as int16 in table, in units of the
// 128-input block's tscale (its largest |T| / 32767), and x's sum per scale
// group in xsum. It returns false if x holds an Inf or NaN, or its sums
// overflow float32 (nothing usable written).
struct KbitLutProblem {
  const int16_t* table;  // num_blocks(K) * 32 blocks x 16 entries
  const float* tscale;   // num_blocks(K): entry value = table * tscale
  const float* xsum;     // K / group_size
  const float* bias;     // N float32, or null
  float* y;              // N float32 (when ybf is null)
  uint16_t* ybf;         // or N bfloat16 bits
};
bool kbit_lut_prepare(const void* x, bool float32_x, int64_t K, int64_t group_size, int16_t* table,
                      float* tscale, float* xsum);
// Output rows of passes [pass_begin, pass_end) (kbit::kLutTilesPerPass tiles
// of 16 rows each).
void kbit_gemv_lut_avx512_vnni(const KbitLutProblem& p, const KbitLutWeight& w, int64_t pass_begin,
                               int64_t pass_end);

// Row stride, in elements of T, for rows of n elements that a kernel reads
// several at once (the GEMM micro-kernels broadcast from 12 x rows, the panel
// transpose loads 16 rows): n rounded up to an odd number of 64-byte lines. At
// a power-of-two stride (8 KB: 4096 bfloat16) the rows share one set of the
// 8-way L1 and evict each other at every k step; an odd number of lines puts
// up to 64 consecutive rows in different sets. bfloat16 GEMM on codes, 4096 x
// 4096, 2 threads: M = 512 42.0-43.0 -> 39.1-39.3 ms, M = 128 11.2-11.5 ->
// 10.3-10.7 ms.
template <typename T>
constexpr int64_t odd_line_stride(int64_t n) {
  constexpr int64_t line = 64 / sizeof(T);
  const int64_t lines = (n + line - 1) / line;
  return (lines | 1) * line;
}

// Row stride (elements) of the bfloat16 copies of x the AVX512-BF16 kernels
// read: whole 128-element blocks, at an odd_line_stride.
inline int64_t kbit_bf16_x_stride(int64_t K) {
  return odd_line_stride<uint16_t>(kbit::num_blocks(K) * kbit::kBlock);
}

// Calls fn(std::integral_constant<int, B>{}) with B = bits (2..8), so each
// kernel is instantiated per bit width behind one switch.
template <typename Fn>
inline void with_bits(int bits, Fn&& fn) {
  with_constant<2, 8>(bits, static_cast<Fn&&>(fn));
}

// Rows each thread takes are a multiple of this, so the wide kernels' row tiles
// never straddle two threads.
constexpr int64_t kRowAlign = 32;

}  // namespace cpu
}  // namespace fusenas
