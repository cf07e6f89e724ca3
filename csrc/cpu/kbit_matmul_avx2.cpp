// AVX2 + FMA k-bit matmul (compiled with -mavx2 -mfma; entered only when
// cpuid says so): the AVX-512 kernel's design on 8-lane vectors and 16
// registers, for CPUs without AVX-512 (most client x86 parts) or where it is
// disabled.
// - GEMV (M <= 8; bound by decoding and memory): each packed block is
//   normalised and decoded in registers (kbit_decode_avx2.h) and used at once
//   by MT rows of x for R output rows, so weights are streamed exactly once.
//   2- and 3-bit codes decode through a vpermps table of (t - z) * s. For 4..8
//   bits the scale is factored out of the group: the kernel accumulates x * q
//   (shift, mask, convert, FMA per 8 weights, two ops fewer than (q - z) * s)
//   and adds s * sum(x q) - s * z * sum(x) per group, the sums of x taken once
//   per call. The result equals the dequantise-then-dot one up to float
//   rounding of the sums (same order of error; dequantize itself is exact).
//   Several accumulator chains per output hide the 4-cycle FMA latency, and K
//   is cut into chunks whose rows of x stay in L1.
// - GEMM (M > 8; compute-bound): a panel of 16 output rows x kKc inputs is
//   decoded once, transposed with 8 x 8 in-register transposes into a k-major
//   buffer that stays in L1 (16 KiB), and fed to a 6 x 16 outer-product FMA
//   micro-kernel: 12 accumulators + 2 B vectors + 1 broadcast = 15 of the 16
//   ymm registers, two FMAs per broadcast load (~85% of FMA peak on Zen 5).
// x is never read at or past K (masked vmaskmovps loads on the last 8 lanes),
// nor a scale or zero point past the last group.
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "cpu/kbit_decode_avx2.h"
#include "cpu/kbit_kernels.h"

namespace fusenas {
namespace cpu {

using namespace avx2;

namespace {

constexpr int64_t kGemvMaxM = 8;  // above this the GEMM path wins
constexpr int kNr = 16;           // GEMM panel width (output rows) = two ymm
constexpr int kMr = 6;            // GEMM micro-kernel rows of x
constexpr int64_t kKc = 256;      // GEMM k-chunk: 256 x 16 floats = 16 KiB, fits L1

// ---------------------------------------------------------------- GEMV ----

// Loads 8 floats of x at k; with TAIL, lanes at or past K read nothing
// (vmaskmovps does not touch masked-out lanes).
template <bool TAIL>
inline FUSENAS_AVX2_INLINE __m256 load_x(const float* x, int64_t k, int64_t K) {
  if (!TAIL || k + 8 <= K) return _mm256_loadu_ps(x + k);
  return _mm256_maskload_ps(x + k, lane_mask(K - k));
}

// Blocks [b_begin, b_end) of the rows a GEMV tile works on.
struct BlockRange {
  int64_t b_begin, b_end;
  bool first;  // the range starts at k = 0: write y (with bias), else add to it
};

// Walks blocks [rg.b_begin, rg.b_end) of rows row[0..R): loads each block's
// codes and calls step(ih, codes, k, tail) for its halves ih = 2I + H that
// start before K. Full blocks are unrolled without any bounds test; only the
// last, partial block of a row carries them (tail = std::true_type). With
// ahead > 0 each block's lines are also prefetched `ahead` bytes further on.
template <int BITS, int R, typename Step>
inline FUSENAS_AVX2_INLINE void walk_halves(const KbitWeight& w, const uint8_t* const* row,
                                            const BlockRange& rg, int64_t ahead, Step&& step) {
  const int64_t K = w.K, full = std::min(rg.b_end, K / kbit::kBlock);
  auto block = [&](int64_t b, auto tail) FUSENAS_AVX2_INLINE {
    Codes c[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const uint8_t* codes = row[r] + b * 16 * BITS;
      c[r] = load_codes<BITS>(codes);
      // Prefetches never fault, so running past the weight's end is harmless.
      if (ahead > 0)
        for (int o = 0; o < 16 * BITS; o += 64)
          _mm_prefetch(reinterpret_cast<const char*>(codes + ahead + o), _MM_HINT_T1);
    }
    const int64_t k0 = b * kbit::kBlock;
    static_for<16>([&](auto ih) FUSENAS_AVX2_INLINE {
      const int64_t k = k0 + 8 * decltype(ih)::value;
      if (decltype(tail)::value && k >= K) return;
      step(ih, c, k, tail);
    });
  };
  for (int64_t b = rg.b_begin; b < full; ++b) block(b, std::false_type{});
  if (full < rg.b_end) block(full, std::true_type{});
}

// Table path (2 and 3 bits): acc += x * T[code], T = (t - z) * s, in MT*R*C
// independent chains.
template <int BITS, int MT, int R, int C>
void gemv_tile_table(const KbitProblem& p, const KbitWeight& w, int64_t m0, int64_t n0,
                     const BlockRange& rg, int64_t ahead) {
  __m256 acc[MT][R][C];
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int i = 0; i < C; ++i) acc[m][r][i] = _mm256_setzero_ps();
  GroupConst gc[R]{};
  const int64_t K = w.K, G = w.group_size, k_begin = rg.b_begin * kbit::kBlock;
  int64_t g = k_begin / G - 1, next_group = k_begin;  // current group, first k of the next
  const float* xrow[MT];
  for (int m = 0; m < MT; ++m) xrow[m] = p.x + (m0 + m) * p.ldx;
  const uint8_t* row[R];
  for (int r = 0; r < R; ++r) row[r] = w.codes + (n0 + r) * w.row_stride;
  auto step = [&](auto ih, const Codes* c, int64_t k, auto tail) FUSENAS_AVX2_INLINE {
    constexpr int I = decltype(ih)::value / 2, H = decltype(ih)::value % 2;
    constexpr int chain = (2 * I + H) % C;
    if (H == 0 && k >= next_group) {  // groups are multiples of 16: they start at H = 0
      next_group = (++g + 1) * G;
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        float s, z;
        group_params(w, n0 + r, g, s, z);
        gc[r] = group_const<BITS>(s, z);
      }
    }
    __m256 xv[MT];
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) xv[m] = load_x<decltype(tail)::value>(xrow[m], k, K);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 wv = decode<BITS, I, H>(c[r], gc[r]);
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) acc[m][r][chain] = _mm256_fmadd_ps(xv[m], wv, acc[m][r][chain]);
    }
  };
  walk_halves<BITS, R>(w, row, rg, ahead, step);
  for (int r = 0; r < R; ++r) {
    const float bias = p.bias ? p.bias[n0 + r] : 0.f;
    for (int m = 0; m < MT; ++m) {
      __m256 a = acc[m][r][0];
      for (int i = 1; i < C; ++i) a = _mm256_add_ps(a, acc[m][r][i]);
      float& y = p.y[(m0 + m) * p.ldy + n0 + r];
      y = rg.first ? hsum(a) + bias : y + hsum(a);
    }
  }
}

// Sum over groups of s * z * xsum for row n: the zero-point part of the
// factored dot product.
inline float zero_term(const KbitWeight& w, int64_t n, const float* xsum) {
  const int64_t groups = w.K / w.group_size;
  const float* s = w.scales + n * groups;
  const float* z = w.zeros ? w.zeros + n * groups : nullptr;
  __m256 acc = _mm256_setzero_ps();
  int64_t g = 0;
  for (; g + 8 <= groups; g += 8) {
    __m256 sx = _mm256_mul_ps(_mm256_loadu_ps(s + g), _mm256_loadu_ps(xsum + g));
    if (z) sx = _mm256_mul_ps(sx, _mm256_loadu_ps(z + g));
    acc = _mm256_add_ps(acc, sx);
  }
  float t = hsum(acc);
  for (; g < groups; ++g) t += s[g] * xsum[g] * (z ? z[g] : 1.f);
  return z ? t : t * kbit::symmetric_zero(w.bits, w.ternary);
}

// Conversion path (4..8 bits), scale factored out of each group:
// acc += s * sum_g(x * q), then y -= sum_g s * z * sum_g(x). The MT*R*C
// chains of x * q live in registers; acc, touched once per group, in memory.
template <int BITS, int MT, int R, int C>
void gemv_tile_factored(const KbitProblem& p, const KbitWeight& w, int64_t m0, int64_t n0,
                        const BlockRange& rg, const float* xsum, int64_t ahead) {
  alignas(32) float acc[MT][R][8] = {};
  __m256 qacc[MT][R][C];
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int i = 0; i < C; ++i) qacc[m][r][i] = _mm256_setzero_ps();
  const int64_t K = w.K, G = w.group_size, groups = K / G, k_begin = rg.b_begin * kbit::kBlock;
  int64_t g = k_begin / G - 1, next_group = k_begin;  // current group, first k of the next
  float scale[R] = {};                                // scale of (row r, group g)
  const float* xrow[MT];
  for (int m = 0; m < MT; ++m) xrow[m] = p.x + (m0 + m) * p.ldx;
  const uint8_t* row[R];
  for (int r = 0; r < R; ++r) row[r] = w.codes + (n0 + r) * w.row_stride;
  auto fold = [&]() FUSENAS_AVX2_INLINE {
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 vs = _mm256_set1_ps(scale[r]);
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) {
        __m256 q = qacc[m][r][0];
#pragma GCC unroll 8
        for (int i = 1; i < C; ++i) q = _mm256_add_ps(q, qacc[m][r][i]);
        _mm256_store_ps(acc[m][r], _mm256_fmadd_ps(q, vs, _mm256_load_ps(acc[m][r])));
#pragma GCC unroll 8
        for (int i = 0; i < C; ++i) qacc[m][r][i] = _mm256_setzero_ps();
      }
    }
  };
  auto step = [&](auto ih, const Codes* c, int64_t k, auto tail) FUSENAS_AVX2_INLINE {
    constexpr int I = decltype(ih)::value / 2, H = decltype(ih)::value % 2;
    constexpr int chain = (2 * I + H) % C;
    if (H == 0 && k >= next_group) {  // groups are multiples of 16: they start at H = 0
      if (k > k_begin) fold();
      next_group = (++g + 1) * G;
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) scale[r] = w.scales[(n0 + r) * groups + g];
    }
    __m256 xv[MT];
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) xv[m] = load_x<decltype(tail)::value>(xrow[m], k, K);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 q = codes_ps<BITS, I, H>(c[r]);
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) qacc[m][r][chain] = _mm256_fmadd_ps(xv[m], q, qacc[m][r][chain]);
    }
  };
  walk_halves<BITS, R>(w, row, rg, ahead, step);
  fold();
  for (int r = 0; r < R; ++r) {
    const float bias = p.bias ? p.bias[n0 + r] : 0.f;
    for (int m = 0; m < MT; ++m) {
      float& y = p.y[(m0 + m) * p.ldy + n0 + r];
      const float part = hsum(_mm256_load_ps(acc[m][r]));
      y = rg.first ? part - zero_term(w, n0 + r, xsum + (m0 + m) * groups) + bias : y + part;
    }
  }
}

// Per-group sums of x: xsum[m * groups + g] = sum of x[m][g*G .. (g+1)*G).
std::vector<float> group_sums(const KbitProblem& p, const KbitWeight& w) {
  const int64_t G = w.group_size, groups = w.K / G;
  std::vector<float> xsum(static_cast<size_t>(p.M * groups));
  for (int64_t m = 0; m < p.M; ++m) {
    const float* x = p.x + m * p.ldx;
    for (int64_t g = 0; g < groups; ++g) {
      __m256 acc = _mm256_setzero_ps();
      int64_t k = g * G;
      const int64_t end = k + G;
      for (; k + 8 <= end; k += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(x + k));
      if (k < end) acc = _mm256_add_ps(acc, _mm256_maskload_ps(x + k, lane_mask(end - k)));
      xsum[m * groups + g] = hsum(acc);
    }
  }
  return xsum;
}

// Tile shape of the GEMV for MT rows of x: R output rows per tile, C
// accumulator chains per (m, r). Both FMA pipes at a 4-cycle latency want ~8
// independent chains; the factored path also holds codes for 4..8 bits and
// the group fold, so it spills beyond ~4 (measured on Zen 5: 8 chains there
// cost 10-60%).
//
// 2- and 3-bit codes take the table path only with several x rows: one x row
// leaves vpermps (2 cycles per 8 weights on Zen 3) the bottleneck, and the
// conversion path was 1.2x (2-bit) to 1.7x (3-bit) faster at M = 1, while at
// M = 8 the table was 1.1x faster for 2-bit and 3-bit was within the VM's noise
// (kbit_notes.md, session 12).
template <int BITS, int MT>
struct GemvShape {
  static constexpr bool kTable = Spec<BITS>::kTable && MT > 1;
  static constexpr int kChains = kTable ? 8 : 4;
  static constexpr int R = MT == 1 || (MT == 2 && kTable) ? 2 : 1;
  static constexpr int C = std::max(1, kChains / (MT * R));
  static constexpr int C1 = std::min(4, std::max(1, kChains / MT));  // single-row tiles
};

// How far ahead the first pass over a chunk of rows prefetches their codes
// (bytes along the thread's rows, which are contiguous), into L2. A row is a
// short stream (2 KB at K = 4096, 4 bits) that the hardware prefetchers pick
// up late, page after page: see the measurements in kbit_notes.md.
constexpr int64_t kPrefetchBytes = 32 << 10;
// Rows per chunk: every tile of x rows passes over a chunk's codes while they
// are in L2 (512 KiB on Zen 3), so the codes come from DRAM once for M <= 8.
constexpr int64_t kChunkCodeBytes = 128 << 10;

// MT rows of x against rows [n_begin, n_end). K is cut into chunks of
// 8192 / MT elements, so the chunk of x (32 KiB) stays in L1 while every
// output row streams its codes for that chunk. ahead: prefetch distance
// (0: the codes are already in cache).
template <int BITS, int MT>
void gemv_rows(const KbitProblem& p, const KbitWeight& w, int64_t m0, int64_t n_begin,
               int64_t n_end, const float* xsum, int64_t ahead) {
  using S = GemvShape<BITS, MT>;
  constexpr int R = S::R, C = S::C, C1 = S::C1;
  constexpr int64_t kChunkBlocks = 8192 / kbit::kBlock / MT;
  const int64_t nb = kbit::num_blocks(w.K);
  // A whole number of tiles, so the prefetched block is the one a later tile reads.
  if (ahead > 0) ahead = std::max<int64_t>(1, ahead / (R * w.row_stride)) * R * w.row_stride;
  for (int64_t b0 = 0; b0 < nb; b0 += kChunkBlocks) {
    const BlockRange rg{b0, std::min(nb, b0 + kChunkBlocks), b0 == 0};
    int64_t n = n_begin;
    if constexpr (S::kTable) {
      for (; n + R <= n_end; n += R) gemv_tile_table<BITS, MT, R, C>(p, w, m0, n, rg, ahead);
      for (; n < n_end; ++n) gemv_tile_table<BITS, MT, 1, C1>(p, w, m0, n, rg, ahead);
    } else {
      for (; n + R <= n_end; n += R)
        gemv_tile_factored<BITS, MT, R, C>(p, w, m0, n, rg, xsum, ahead);
      for (; n < n_end; ++n) gemv_tile_factored<BITS, MT, 1, C1>(p, w, m0, n, rg, xsum, ahead);
    }
  }
}

template <int BITS>
void gemm(const KbitProblem& p, const KbitWeight& w, int64_t n_begin, int64_t n_end);

template <int BITS>
void gemv(const KbitProblem& p, const KbitWeight& w, int64_t n_begin, int64_t n_end) {
  // Group sums of x for the factored tiles (O(M K), against the GEMV's M N K;
  // taken for every call rather than tracking which tiles will need them).
  // The factored form computes s * (sum(x q) - z sum(x)): an infinite x gives
  // inf - inf = NaN where the dequantised dot gives +-inf. A non-finite group
  // sum (an inf or NaN in x, or a finite overflow) sends the call to the GEMM,
  // which multiplies x by the decoded weights as the reference does.
  const std::vector<float> xsum = group_sums(p, w);
  for (const float v : xsum)
    if (!std::isfinite(v)) return gemm<BITS>(p, w, n_begin, n_end);
  // Chunks of rows, each passed over by every tile of x rows while its codes
  // are in L2: the first tile streams them from DRAM and prefetches ahead.
  const int64_t chunk = std::max<int64_t>(2, kChunkCodeBytes / w.row_stride / 2 * 2);
  for (int64_t n0 = n_begin; n0 < n_end; n0 += chunk) {
    const int64_t n1 = std::min(n0 + chunk, n_end);
    int64_t m = 0, ahead = kPrefetchBytes;
    for (; m + 4 <= p.M; m += 4, ahead = 0) gemv_rows<BITS, 4>(p, w, m, n0, n1, xsum.data(), ahead);
    if (p.M - m >= 2) gemv_rows<BITS, 2>(p, w, m, n0, n1, xsum.data(), ahead), m += 2, ahead = 0;
    if (p.M - m >= 1) gemv_rows<BITS, 1>(p, w, m, n0, n1, xsum.data(), ahead);
  }
}

// ---------------------------------------------------------------- GEMM ----

// Dequantises row n, k in [kc0, kc0 + kc) (kc0 a multiple of 128), into
// dst[0 .. kc). With `pad`, k past K is written as zero up to the end of the
// last block; without, nothing at or past K is written.
template <int BITS>
void decode_row(const KbitWeight& w, int64_t n, int64_t kc0, int64_t kc, float* dst, bool pad) {
  const int64_t K = w.K, G = w.group_size;
  const uint8_t* row = w.codes + n * w.row_stride;
  int64_t next_group = kc0, g = kc0 / G - 1;
  GroupConst gc{};
  for (int64_t kb = 0; kb < kc; kb += kbit::kBlock) {
    const int64_t k0 = kc0 + kb;
    const Codes c = load_codes<BITS>(row + (k0 / kbit::kBlock) * 16 * BITS);
    static_for<16>([&](auto ih) FUSENAS_AVX2_INLINE {
      constexpr int I = decltype(ih)::value / 2, H = decltype(ih)::value % 2;
      const int64_t k = k0 + 16 * I + 8 * H;
      float* d = dst + kb + 16 * I + 8 * H;
      if (k >= K) {  // padding past K: no group, no scale
        if (pad) _mm256_storeu_ps(d, _mm256_setzero_ps());
        return;
      }
      if (H == 0 && k >= next_group) {
        ++g;
        next_group = (g + 1) * G;
        float s, z;
        group_params(w, n, g, s, z);
        gc = group_const<BITS>(s, z);
      }
      const __m256 v = decode<BITS, I, H>(c, gc);
      if (k + 8 <= K)
        _mm256_storeu_ps(d, v);
      else if (pad)
        _mm256_storeu_ps(d, _mm256_and_ps(v, _mm256_castsi256_ps(lane_mask(K - k))));
      else
        _mm256_maskstore_ps(d, lane_mask(K - k), v);
    });
  }
}

// 8 x 8 transpose of floats: src rows (stride ss) -> dst rows (stride ds).
inline void transpose8(const float* src, int64_t ss, float* dst, int64_t ds) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * ss);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x20);
    t[i + 4] = _mm256_permute2f128_ps(r[i], r[i + 4], 0x31);
  }
  for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + i * ds, t[i]);
}

// C[MR x 16] (+)= A[MR x kc] * B[kc x 16]; B is k-major (row stride 16). FULL:
// all 16 columns of C exist; otherwise only the first `cols`.
template <int MR, bool FULL>
void micro_kernel(const float* A, int64_t lda, const float* B, int64_t kc, float* C, int64_t ldc,
                  int cols, bool first, const float* bias_or_null) {
  const __m256i m0 = lane_mask(std::min(cols, 8)), m1 = lane_mask(std::max(0, cols - 8));
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    if (first) {
      c0[i] = _mm256_setzero_ps();
      c1[i] = _mm256_setzero_ps();
    } else if (FULL) {
      c0[i] = _mm256_loadu_ps(C + i * ldc);
      c1[i] = _mm256_loadu_ps(C + i * ldc + 8);
    } else {
      c0[i] = _mm256_maskload_ps(C + i * ldc, m0);
      c1[i] = _mm256_maskload_ps(C + i * ldc + 8, m1);
    }
  }
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(B + k * kNr);
    const __m256 b1 = _mm256_load_ps(B + k * kNr + 8);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(A + i * lda + k);
      c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
    }
  }
  if (bias_or_null) {
    const __m256 bb0 = FULL ? _mm256_loadu_ps(bias_or_null) : _mm256_maskload_ps(bias_or_null, m0);
    const __m256 bb1 =
        FULL ? _mm256_loadu_ps(bias_or_null + 8) : _mm256_maskload_ps(bias_or_null + 8, m1);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      c0[i] = _mm256_add_ps(c0[i], bb0);
      c1[i] = _mm256_add_ps(c1[i], bb1);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    if (FULL) {
      _mm256_storeu_ps(C + i * ldc, c0[i]);
      _mm256_storeu_ps(C + i * ldc + 8, c1[i]);
    } else {
      _mm256_maskstore_ps(C + i * ldc, m0, c0[i]);
      _mm256_maskstore_ps(C + i * ldc + 8, m1, c1[i]);
    }
  }
}

using MicroKernel = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int,
                             bool, const float*);

template <bool FULL, int... Is>
constexpr std::array<MicroKernel, sizeof...(Is)> micro_table(std::integer_sequence<int, Is...>) {
  return {&micro_kernel<Is + 1, FULL>...};
}

template <int BITS>
void gemm(const KbitProblem& p, const KbitWeight& w, int64_t n_begin, int64_t n_end) {
  alignas(32) float rows_buf[kNr * kKc];  // decoded panel, n-major
  alignas(32) float b_buf[kKc * kNr];     // the same, k-major
  static constexpr auto kFull = micro_table<true>(std::make_integer_sequence<int, kMr>{});
  static constexpr auto kPart = micro_table<false>(std::make_integer_sequence<int, kMr>{});
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kNr) {
    const int rows = static_cast<int>(std::min<int64_t>(kNr, n_end - n0));
    const auto& kernels = rows == kNr ? kFull : kPart;
    for (int64_t kc0 = 0; kc0 < w.K; kc0 += kKc) {
      const int64_t kc = std::min<int64_t>(kKc, w.K - kc0);
      const int64_t kc_blocks = (kc + kbit::kBlock - 1) / kbit::kBlock * kbit::kBlock;
      for (int r = 0; r < kNr; ++r) {
        if (r < rows)
          decode_row<BITS>(w, n0 + r, kc0, kc_blocks, rows_buf + r * kKc, true);
        else
          std::memset(rows_buf + r * kKc, 0, sizeof(float) * kc_blocks);
      }
      for (int64_t kk = 0; kk < kc; kk += 8) {
        transpose8(rows_buf + kk, kKc, b_buf + kk * kNr, kNr);
        transpose8(rows_buf + 8 * kKc + kk, kKc, b_buf + kk * kNr + 8, kNr);
      }
      const bool first = kc0 == 0, last = kc0 + kKc >= w.K;
      const float* bias = (last && p.bias) ? p.bias + n0 : nullptr;
      for (int64_t m = 0; m < p.M; m += kMr) {
        const int mr = static_cast<int>(std::min<int64_t>(kMr, p.M - m));
        kernels[mr - 1](p.x + m * p.ldx + kc0, p.ldx, b_buf, kc, p.y + m * p.ldy + n0, p.ldy, rows,
                        first, bias);
      }
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
  for (int64_t n = n_begin; n < n_end; ++n) decode_row<BITS>(w, n, 0, w.K, out + n * w.K, false);
}

}  // namespace

void kbit_matmul_avx2(const KbitProblem& p, const KbitWeight& w, int64_t n_begin, int64_t n_end) {
  with_bits(w.bits, [&](auto b) { matmul<decltype(b)::value>(p, w, n_begin, n_end); });
}

void kbit_dequantize_avx2(const KbitWeight& w, float* out, int64_t n_begin, int64_t n_end) {
  with_bits(w.bits, [&](auto b) { dequantize_rows<decltype(b)::value>(w, out, n_begin, n_end); });
}

}  // namespace cpu
}  // namespace fusenas
