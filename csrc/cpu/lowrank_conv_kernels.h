// Internal interface between the low-rank conv front end (lowrank_conv_cpu.cpp,
// lowrank_conv_backward_cpu.cpp) and its per-ISA GEMM kernels. The front end
// lays every tile out as channel planes of flattened pixels (a padded-width
// grid), so each stage of the conv, forward or backward, is a GEMM whose B
// operand is a list of row offsets into such planes: im2col-free.
#pragma once

#include <algorithm>
#include <cstdint>

namespace fusenas {
namespace cpu {
namespace lowrank {

// Pixel counts handed to the kernels are multiples of this (buffers are padded).
constexpr int64_t kPixelAlign = 16;

// C[m][j] = bias[m] + sum_k A[m][k] * B[boff[k] + j]   (accumulate: C[m][j] += ...)
// for m < M, j < P. A is either packed in panels of `mr` rows (lda == 0):
// panel p holds A[p*mr + i][k] at A[(p*K + k)*mr + i], rows past M zero; or
// row-major with row stride lda (no copy of a float32 weight needed).
struct RowGemm {
  int64_t M, K, P;
  const float* A;
  int64_t lda;
  const float* B;
  const int64_t* boff;
  const float* bias;  // M entries or null (ignored when accumulating)
  float* C;
  int64_t ldc;
  bool accumulate;
};

// IndGemm's and BlockGemm's B operand is packed in column panels: the N / W
// vectors of columns (W = Kernels::vec_width) in the fewest chunks of at most
// Kernels::ind_nv, near-equal, the larger first; chunk c covers vectors
// [panel_start(c), panel_start(c + 1)) and stores its part of B row r (tap
// r / K, k = r % K) contiguously at B + rows * v0 * W + r * nv * W (rows =
// taps * K, v0 its first vector, nv its width). A block of rows is then one
// piece of memory: with B rows N floats apart, 512 columns (2 KB) put every
// row of a block into the same few L1 sets. static: every translation unit,
// whatever its -m flags, keeps its own copy (no ODR merge across ISAs).
static inline int64_t panel_count(int64_t vecs, int64_t most) { return (vecs + most - 1) / most; }
static inline int64_t panel_start(int64_t vecs, int64_t most, int64_t c) {
  const int64_t n = std::max<int64_t>(1, panel_count(vecs, most));
  return c * (vecs / n) + std::min(c, vecs % n);
}

// Pixel-major GEMM through an indirection buffer (channels_last forward):
//   C[p][j] = bias[j] + sum_t sum_k ind[t * P + p][k] * B(t * K + k, j)
// for p < P and j < N (N a multiple of the vector width, B in column panels
// as above with zeros past the real columns, bias's columns up to N
// readable). Each ind entry points at K contiguous floats: an input pixel's
// channels, or a row of zeros for padding taps, so every tap of a conv is a
// row lookup and no input is copied or transposed.
//
// Padding taps (optional; PaddingGroups in lowrank_conv_nhwc.h fills them):
// with `zero` set, a micro-tile skips every tap whose pointers are all `zero`
// for its pixels; micro-tiles never straddle the group bounds splits[0] = 0 <
// ... < splits[groups] = P; and with `crow` set, list pixel p is C row
// crow[p] instead of p (the list can then be ordered by group).
struct IndGemm {
  int64_t P, K, N, taps;
  const float* const* ind;
  const float* B;
  const float* bias;  // N entries or null
  float* C;
  int64_t ldc;
  const float* zero = nullptr;
  const int64_t* splits = nullptr;
  int64_t groups = 0;
  const int64_t* crow = nullptr;
};

// Channel block of BlockGemm's operands: a row of pixels is stored as
// ceil(channels / 16) blocks, each `width` pixels x 16 floats, so within a
// block consecutive pixels are 16 floats apart whatever the channel count.
constexpr int64_t kChannelBlock = 16;

// Pixel-major GEMM over rows of pixels (the direct form of IndGemm, for
// horizontal stride 1): for q < Q rows, o < width pixels and j < N,
//   C(q, o, j) = bias[j] + sum_t sum_k A_tq(o, k) * B(t * K + k, j)  (B in column panels)
// with A_tq(o, k) = base[t * Q + q][(k / 16) * kbs + o * 16 + k % 16]: each
// tap of each row is one base pointer, and a pixel's tap reads sit at a fixed
// distance from its neighbours', so the micro-kernel addresses them as
// compile-time offsets from one register (an indirection buffer needs a
// pointer per pixel, more than the 16 general registers hold). C(q, o, j) is
// at C[q * cq + o * co + (j / 16) * cb + j % 16] (channels_last rows: co = N,
// cb = 16; the blocked layout above: co = 16, cb = block stride). residual
// (null, or laid out as C) is added and relu applied as the tile is stored.
struct BlockGemm {
  int64_t Q, width, K, N, taps;
  const float* const* base;
  int64_t kbs;
  const float* B;
  const float* bias;  // N entries or null
  float* C;
  int64_t cq, co, cb;
  const float* residual;
  bool relu;
};

// Weight-gradient GEMM of the pixel-major backward, the pixels as the
// reduction, both operands through pointer lists:
//   C[m][j] += sum_p a[p][m] * b[p][j]   for m < M, j < N
// (N a multiple of the vector width, every b row readable up to N). Pairs
// where either operand would be padding are simply left out of the lists.
struct PairGemm {
  int64_t M, N, P;
  const float* const* a;
  const float* const* b;
  float* C;
  int64_t ldc;
};

// dst[c * ldd + p] = src[p * lds + c] for p, c < 16: the channels_last <->
// channel-plane conversion, one 16 x 16 block at a time in registers.
using Transpose16 = void (*)(const float* src, int64_t lds, float* dst, int64_t ldd);

// For each of `rows` rows: dst[row * ldd + j] for j < width is
// src[row * lds + j - lo] where lo <= j < lo + n, else 0. Copies image rows into
// zero-padded plane rows and plane rows back out. The rows are short (8-56
// floats on the ResNet shapes), where a memcpy and two memsets per row cost
// more than the copy itself.
using CopyPadRows = void (*)(const float* src, int64_t lds, int64_t rows, int64_t lo, int64_t n,
                             int64_t width, float* dst, int64_t ldd);

// y[i] = y[i] + r[i] (r may be null), then max(y[i], 0) when relu: the fused
// epilogue, run on output rows while they are still in cache.
using AddRelu = void (*)(float* y, const float* r, int64_t n, bool relu);

// Winograd F(4, 3) for a 3-tap correlation along a row or a column of pixels
// (lowrank_winograd.h: 3-tap factors at stride and dilation 1): 4 outputs from 6
// products per channel pair instead of 12, y = A^T [(G w) . (B^T d)]
// (Lavin and Gray's matrices). Between the two transforms, one GEMM per
// transformed point xi < 6: M_xi = U_xi (G w)_xi.
// WinogradIn, for g < groups: the 6 inputs d_i = pix[g * pstep + i] + g * gstride
// (channel c at d_i[(c / 16) * cblock + c % 16]; zero rows for padding) give
// u[xi * xs + g * ldu + c] = (B^T d)_xi for c < K (a multiple of the vector
// width). Along a row: pstep 4 (overlapping windows of a pixel list), gstride
// 0; along a column: 6 row pointers, pstep 0, gstride a pixel's stride.
struct WinogradIn {
  const float* const* pix;
  int64_t pstep, gstride, groups, K, cblock;
  float* u;
  int64_t ldu, xs;
};
// WinogradOut, for g < groups and outputs i < min(4, outputs - g * ostep):
// y[g * ygs + i * ldy + (j / 16) * cblock + j % 16] = relu?(bias[j] + (A^T M)_i
// + r[same offset]) for j < N (a multiple of the vector width), from M_xi[g][j]
// at m[xi * xs + g * ldm + j]; bias and r may be null.
struct WinogradOut {
  const float* m;
  int64_t xs, ldm, groups, N;
  const float* bias;
  float* y;
  int64_t ygs, ldy, cblock, outputs, ostep;
  const float* r;
  bool relu;
};

struct Kernels {
  int mr;  // panel height of RowGemm::A
  void (*row_gemm)(const RowGemm&);
  void (*ind_gemm)(const IndGemm&);
  void (*block_gemm)(const BlockGemm&);
  void (*pair_gemm)(const PairGemm&);
  int vec_width;  // floats per vector of ind_gemm's N dimension
  int ind_nv;     // most vectors per column panel of IndGemm / BlockGemm B
  Transpose16 transpose16;
  CopyPadRows copy_pad_rows;
  AddRelu add_relu;
  void (*winograd_in)(const WinogradIn&);
  void (*winograd_out)(const WinogradOut&);
  const char* name;
};

const Kernels& kernels_scalar();
const Kernels& kernels_avx2();
const Kernels& kernels_avx512();
const Kernels& kernels_avx512_ymm();  // 8-wide vectors, AVX-512 registers

}  // namespace lowrank
}  // namespace cpu
}  // namespace fusenas
