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
