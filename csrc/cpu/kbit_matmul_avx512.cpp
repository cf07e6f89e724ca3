// AVX-512 k-bit matmul (compiled with -mavx512f/bw/dq/vl; entered only when
// cpuid says so).
//
// Two paths, chosen by M:
// - GEMV (small M, memory-bound): each packed block is decoded in registers
//   (kbit_decode_avx512.h) and used at once by MT rows of x for R output rows,
//   so the weights are streamed from memory exactly once and never written.
// - GEMM (large M, compute-bound): a panel of 32 output rows x kKc inputs is
//   decoded once, transposed into a k-major buffer that stays in L1, and fed
//   to a 12 x 32 outer-product FMA micro-kernel (24 accumulators), which
//   amortises the decoding over all M rows.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstring>

#include "cpu/kbit_decode_avx512.h"
#include "cpu/kbit_kernels.h"
#include "cpu/kbit_panel_avx512.h"
#include "cpu/thread_scratch.h"

namespace fusenas {
namespace cpu {

using namespace avx512;

namespace {

constexpr int64_t kGemvMaxM = 8;  // above this the GEMM path wins (benchmarks/bench_kbit.py)
constexpr int kMr = 12;           // GEMM micro-kernel rows of x (24 accumulators)

// ---------------------------------------------------------------- GEMV ----

template <int BITS, int MT, int R>
void gemv_tile(const KbitProblem& p, const KbitWeight& w, int64_t m0, int64_t n0) {
  // With one x row, R accumulators are too few to hide the 4-cycle FMA
  // latency: even and odd sub-vectors then go to separate accumulators.
  constexpr int kSplit = MT == 1 ? 2 : 1;
  __m512 acc[MT * kSplit][R];
  FUSENAS_UNROLL for (int m = 0; m < MT * kSplit; ++m) FUSENAS_UNROLL for (int r = 0; r < R; ++r)
      acc[m][r] = _mm512_setzero_ps();
  GroupConst gc[R];
  const int64_t nb = kbit::num_blocks(w.K);
  const int64_t G = w.group_size;
  int64_t next_group = 0;  // first k of the next group
  const float* xrow[MT];
  FUSENAS_UNROLL for (int m = 0; m < MT; ++m) xrow[m] = p.x + (m0 + m) * p.ldx;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t k0 = b * kbit::kBlock;
    Planes pl[R];
    FUSENAS_UNROLL for (int r = 0; r < R; ++r) pl[r] =
        load_planes<BITS>(w.codes + (n0 + r) * w.row_stride + b * 16 * BITS);
    const bool full = k0 + kbit::kBlock <= w.K;
    for_each_subvector([&](auto ic) FUSENAS_ALWAYS_INLINE {
      constexpr int I = decltype(ic)::value;
      const int64_t k = k0 + 16 * I;
      if (!full && k >= w.K) return;
      if (k >= next_group) {
        const int64_t g = k / G;
        next_group = (g + 1) * G;
        FUSENAS_UNROLL for (int r = 0; r < R; ++r) {
          float s, z;
          group_params(w, n0 + r, g, s, z);
          gc[r] = group_const<BITS>(s, z);
        }
      }
      const __mmask16 mask = full ? static_cast<__mmask16>(0xffff) : tail_mask(w.K - k);
      __m512 xv[MT];
      FUSENAS_UNROLL for (int m = 0; m < MT; ++m) xv[m] = _mm512_maskz_loadu_ps(mask, xrow[m] + k);
      FUSENAS_UNROLL for (int r = 0; r < R; ++r) {
        const __m512 wv = decode<BITS, I>(pl[r], gc[r]);
        FUSENAS_UNROLL for (int m = 0; m < MT; ++m) {
          __m512& a = acc[kSplit == 2 ? (I & 1) : m][r];
          a = _mm512_fmadd_ps(xv[m], wv, a);
        }
      }
    });
  }
  if constexpr (kSplit == 2)
    FUSENAS_UNROLL for (int r = 0; r < R; ++r) acc[0][r] = _mm512_add_ps(acc[0][r], acc[1][r]);
  FUSENAS_UNROLL for (int r = 0; r < R; ++r) {
    const float bias = p.bias ? p.bias[n0 + r] : 0.f;
    FUSENAS_UNROLL for (int m = 0; m < MT; ++m) p.y[(m0 + m) * p.ldy + n0 + r] =
        _mm512_reduce_add_ps(acc[m][r]) + bias;
  }
}

template <int BITS>
void gemv(const KbitProblem& p, const KbitWeight& w, int64_t n_begin, int64_t n_end) {
  gemv_tiles<BITS>(p.M, n_begin, n_end, [&](auto mt, auto r, int64_t m0, int64_t n0) {
    gemv_tile<BITS, decltype(mt)::value, decltype(r)::value>(p, w, m0, n0);
  });
}

// ---------------------------------------------------------------- GEMM ----

// C[MR x 32] (+)= A[MR x kc] * B[kc x 32]; B is k-major (row stride 32).
template <int MR>
void micro_kernel(const float* A, int64_t lda, const float* B, int64_t kc, float* C, int64_t ldc,
                  __mmask16 m0, __mmask16 m1, bool first, const float* bias_or_null) {
  __m512 c0[MR], c1[MR];
  load_c_tile<MR>(c0, c1, C, ldc, m0, m1, first);
  for (int64_t k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_loadu_ps(B + k * kNr);
    const __m512 b1 = _mm512_loadu_ps(B + k * kNr + 16);
    FUSENAS_UNROLL for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_set1_ps(A[i * lda + k]);
      c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
    }
  }
  store_c_tile<MR>(c0, c1, C, ldc, m0, m1, bias_or_null);
}

using MicroKernel = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t,
                             __mmask16, __mmask16, bool, const float*);

template <int... Is>
constexpr std::array<MicroKernel, sizeof...(Is)> micro_table(std::integer_sequence<int, Is...>) {
  return {&micro_kernel<Is + 1>...};
}

// The GEMM's x operand, one block of rows and one chunk of K at a time
// (GotoBLAS's packed A, untransposed): rows [m0, m0 + rows) x columns [k0, k0 +
// kc) of x (row stride ldx) copied to dst at row stride ld_pack (odd_line_stride).
// The chunk then stays in L2 for every weight panel of the thread; read in
// place, all of x came from L3 for every 32-row panel at M >= 128 (2 MB at
// M = 128, K = 4096).
inline void pack_x_block(const float* x, int64_t ldx, int64_t m0, int64_t rows, int64_t k0,
                         int64_t kc, float* dst, int64_t ld_pack) {
  for (int64_t m = 0; m < rows; ++m)
    std::memcpy(dst + m * ld_pack, x + (m0 + m) * ldx + k0, sizeof(float) * kc);
}

// Decodes the 32-row panel at n0 (`rows` valid) for K in [kc0, kc0 + kc) and
// runs it against x rows [0, mrows) (x at column kc0, row stride ldx), adding
// into y (rows from y, stride ldy; bias on the last K chunk).
template <int BITS>
void panel_times_x(const KbitProblem& p, const KbitWeight& w, int64_t n0, int rows, int64_t kc0,
                   int64_t kc, const float* x, int64_t ldx, int64_t mrows, float* y,
                   float* rows_buf, float* b_buf) {
  static constexpr auto kernels = micro_table(std::make_integer_sequence<int, kMr>{});
  const __mmask16 m0 = tail_mask(rows), m1 = tail_mask(std::max(0, rows - 16));
  decode_panel<BITS>(w, n0, rows, kc0, (kc + 127) / 128 * 128, rows_buf);
  for (int64_t kk = 0; kk < kc; kk += 16)
    FUSENAS_UNROLL for (int h = 0; h < 2; ++h)
        transpose16(rows_buf + h * 16 * kKc + kk, kKc, b_buf + kk * kNr + h * 16, kNr);
  const bool first = kc0 == 0, last = kc0 + kKc >= w.K;
  const float* bias = (last && p.bias) ? p.bias + n0 : nullptr;
  for (int64_t m = 0; m < mrows; m += kMr) {
    const int mr = static_cast<int>(std::min<int64_t>(kMr, mrows - m));
    kernels[mr - 1](x + m * ldx, ldx, b_buf, kc, y + m * p.ldy + n0, p.ldy, m0, m1, first, bias);
  }
}

// Two loop orders:
// - many weight rows (kPackMinRows or more for this thread; the LLM shapes):
//   x in blocks of kMc rows, K chunks inside; each block's chunk is packed once
//   (pack_x_block: kMc x kKc floats, in L2) and every panel of the thread is
//   decoded for that chunk and run against it. Panels outside re-read all of x
//   for every panel, from L3 at M >= 128 (4096 x 4096, M = 128: 24.9 -> 23.6-
//   23.8 ms, M = 512: 91.3-92.7 -> 88.6-89.7 ms). A block re-decodes the
//   panels, so blocks are large: one block up to M = 384.
// - few rows (convolutions as im2col GEMMs: N of 16-256): panels outside, x
//   read in place. There the copies cost more than they save: M = 1024, K = 144,
//   N = 16 0.053 -> 0.068-0.084 ms packed; 4096 x 576 x 64 1.37-1.40 -> 1.56-
//   1.68 ms; 256 x 2304 x 256 1.37 -> 1.47 ms.
constexpr int64_t kMc = 384;
constexpr int64_t kPackMinRows = 1024;

template <int BITS>
void gemm(const KbitProblem& p, const KbitWeight& w, int64_t n_begin, int64_t n_end) {
  alignas(64) float rows_buf[kNr * kKc];  // decoded panel, n-major
  alignas(64) float b_buf[kKc * kNr];     // the same, k-major
  if (n_end - n_begin < kPackMinRows) {
    for (int64_t n0 = n_begin; n0 < n_end; n0 += kNr) {
      const int rows = static_cast<int>(std::min<int64_t>(kNr, n_end - n0));
      for (int64_t kc0 = 0; kc0 < w.K; kc0 += kKc)
        panel_times_x<BITS>(p, w, n0, rows, kc0, std::min<int64_t>(kKc, w.K - kc0), p.x + kc0,
                            p.ldx, p.M, p.y, rows_buf, b_buf);
    }
    return;
  }
  constexpr int64_t lda = odd_line_stride<float>(kKc);
  const ThreadScratch xs(ScratchSlot::kKernel, sizeof(float) * std::min(kMc, p.M) * lda);
  float* xpack = xs.as<float>();
  for (int64_t mb = 0; mb < p.M; mb += kMc) {
    const int64_t mrows = std::min(kMc, p.M - mb);
    for (int64_t kc0 = 0; kc0 < w.K; kc0 += kKc) {
      const int64_t kc = std::min<int64_t>(kKc, w.K - kc0);
      pack_x_block(p.x, p.ldx, mb, mrows, kc0, kc, xpack, lda);
      for (int64_t n0 = n_begin; n0 < n_end; n0 += kNr)
        panel_times_x<BITS>(p, w, n0, static_cast<int>(std::min<int64_t>(kNr, n_end - n0)), kc0, kc,
                            xpack, lda, mrows, p.y + mb * p.ldy, rows_buf, b_buf);
    }
  }
}

template <int BITS>
void matmul(const KbitProblem& p, const KbitWeight& w, int64_t n_begin, int64_t n_end) {
  if (p.M <= kGemvMaxM)
    gemv<BITS>(p, w, n_begin, n_end);
  else
    gemm<BITS>(p, w, n_begin, n_end);
}

template <int BITS>
void dequantize_rows(const KbitWeight& w, float* out, int64_t n_begin, int64_t n_end) {
  alignas(64) float buf[kNr * kKc];
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kNr) {
    const int rows = static_cast<int>(std::min<int64_t>(kNr, n_end - n0));
    for (int64_t kc0 = 0; kc0 < w.K; kc0 += kKc) {
      const int64_t kc = std::min<int64_t>(kKc, w.K - kc0);
      decode_panel<BITS>(w, n0, rows, kc0, (kc + 127) / 128 * 128, buf);
      FUSENAS_UNROLL for (int r = 0; r < rows; ++r)
          std::memcpy(out + (n0 + r) * w.K + kc0, buf + r * kKc, sizeof(float) * kc);
    }
  }
}

}  // namespace

void kbit_matmul_avx512(const KbitProblem& p, const KbitWeight& w, int64_t n_begin, int64_t n_end) {
  with_bits(w.bits, [&](auto b) { matmul<decltype(b)::value>(p, w, n_begin, n_end); });
}

void kbit_dequantize_avx512(const KbitWeight& w, float* out, int64_t n_begin, int64_t n_end) {
  with_bits(w.bits, [&](auto b) { dequantize_rows<decltype(b)::value>(w, out, n_begin, n_end); });
}

}  // namespace cpu
}  // namespace fusenas
