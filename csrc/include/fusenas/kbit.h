// C++ API of the k-bit quantized matmul: y = x @ dequant(W)^T + bias.
// No torch, no pybind11: raw pointers and sizes, as the kernels see them.
#pragma once

#include <cstdint>

namespace fusenas {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

// A packed weight of N output rows and K inputs (docs/kbit_format.md).
struct KbitWeight {
  const uint8_t* codes;  // N rows of row_bytes(K, bits) bytes, row stride `row_stride` bytes
  const float* scales;   // N x groups, row-major
  const float* zeros;    // N x groups (asymmetric) or nullptr (symmetric zero point)
  int64_t N;
  int64_t K;
  int64_t row_stride;  // bytes between consecutive rows of codes
  int bits;            // 2..8 (ternary: 2 with `ternary`)
  bool ternary;
  int64_t group_size;  // elements of K per scale (divides K), or K for per-channel
};

// x: M x K (row stride ldx elements) in `dtype`; bias: N in `dtype` or null;
// y: M x N (row stride ldy elements) in `dtype`. Accumulates in float32.
// num_threads <= 0 uses OpenMP's default.
void kbit_matmul_cpu(const void* x, int64_t M, int64_t ldx, DType dtype, const KbitWeight& w,
                     const void* bias, void* y, int64_t ldy, int num_threads);

// Unpacks to float32 W (N x K, row-major): the dequantized weight.
void kbit_dequantize_cpu(const KbitWeight& w, float* out, int num_threads);

// 2-bit, ternary and 3-bit weights in the CPU's table layout
// (docs/kbit_format.md, "CPU table layout"): a copy of the codes made once per
// weight for the batch-1 GEMV on subset-sum tables, kbit_gemv_lut_cpu.
// c = (2^bits - 1) / 2 is the codes' centre (1.5 or 3.5).
struct KbitLutWeight {
  // Rows in tiles of 16, tiles in passes of 8 (the last pass may hold fewer).
  // Per pass: per pair of 16-input chunks (K padded to 128), V vectors of
  // tiles x 64 bytes (V = kbit::lut_vectors_per_pair(bits): 2, or 3 for 3-bit).
  const uint8_t* codes;
  const float* scale;   // per pass: groups x tiles x 16: s[n, g] (0 on padding rows)
  const float* offset;  // per pass: groups x tiles x 16: s[n, g] * (c - z[n, g]),
                        // or null (symmetric, ternary): s[n, g] * zero_term
  int64_t N;
  int64_t K;
  int64_t group_size;  // a multiple of 128, or K (one group per row)
  float zero_term;     // c - z where offset is null: -0.5 symmetric, 0.5 ternary
  int bits;            // 2 (and ternary) or 3
};

// Whether this CPU runs kbit_gemv_lut_cpu (AVX-512 with AVX512_VNNI).
bool kbit_lut_available();

// kbit_lut_available() and FUSENAS_CPU_LUT is not "0": whether batch-1 calls
// take the tables (read per call, as the other FUSENAS_CPU_* switches are).
bool kbit_lut_enabled();

// Writes the codes of a 2- or 3-bit weight w in the table layout: out holds
// ceil(N / 16) * num_blocks(K) * 4 * lut_vectors_per_pair(bits) * 64 bytes.
void kbit_lut_pack_codes(const KbitWeight& w, uint8_t* out, int num_threads);

// y (1 x N) = x (1 x K) @ dequant(W)^T + bias in dtype (float32 or bfloat16).
// Table entries (sums of four +-x/2) are int16 fixed point per 128-input block
// b: each within top_b / 65534 of its value, top_b the block's largest
// (half the largest sum of |x| over its 4-input runs). Returns false, having
// written nothing, when x holds an Inf or NaN or values whose sums of four
// overflow float32 (the tables would mix them; the caller runs kbit_matmul_cpu)
// or the CPU lacks AVX512_VNNI.
bool kbit_gemv_lut_cpu(const void* x, DType dtype, const KbitLutWeight& w, const void* bias,
                       void* y, int num_threads);

// Name of the CPU code path chosen at run time: "avx512", "avx2" or "scalar".
const char* kbit_cpu_isa();

#ifdef FUSENAS_WITH_CUDA_API
// CUDA launcher: all pointers on the device; stream is a cudaStream_t.
// Returns a cudaError_t as int (0 = success).
int kbit_matmul_cuda(const void* x, int64_t M, int64_t ldx, DType dtype, const KbitWeight& w,
                     const void* bias, void* y, int64_t ldy, void* stream);
// Dequantized W (N x K, row-major) in dtype (float32, bfloat16 or float16).
int kbit_dequantize_cuda(const KbitWeight& w, void* out, DType dtype, void* stream);
#endif

}  // namespace fusenas
