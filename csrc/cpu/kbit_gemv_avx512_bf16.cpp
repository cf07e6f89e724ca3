// Small-M k-bit GEMV on integer codes with vdpbf16ps (AVX512-BF16 CPUs; this
// translation unit is compiled with -mavx512bf16 and entered only when cpuid
// reports it). Covers 2-, 3-, 4-bit and ternary codes whose scale groups are
// whole 128-element blocks (group 128, 256, ... or one scale per row).
//
// Why: the float32 GEMV spends a shift, a vpermps and an FMA per 16 weights
// and is bound by that instruction stream, not by DRAM (2-bit ran at 0.83x the
// 4-bit time). Here a shift and a vpermw turn 32 codes into exact bfloat16
// values of (q - zc) (small integers are exact in bfloat16), and one vdpbf16ps
// multiplies them with 32 activations and adds pairs into float32 lanes. The
// scale is applied once per group in float32: y = sum_g s_g * (dot_g - z_g *
// sum_g x) (the zero term only for asymmetric codes). No weight is rounded.
//
// Activations come prepared by the front end (kbit_matmul_cpu.cpp):
// permuted to the order in which a block's codes come out of the decoder and
// split into bfloat16 terms, hi + lo for float32 input (16 significant bits,
// each product exact, accumulation in float32), hi only for bfloat16 input.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/dtype_convert.h"
#include "cpu/cpu_dispatch.h"
#include "cpu/kbit_bf16_micro_avx512.h"
#include "cpu/kbit_decode_avx512.h"
#include "cpu/kbit_kernels.h"
#include "cpu/stream_prefetch.h"

namespace fusenas {
namespace cpu {

using namespace avx512;

namespace {

// How far ahead the tiles prefetch cold weights (bytes along the thread's
// rows), into L1. No prefetch ran at 30-36 GB/s with 2 threads cold (4096 x
// 4096, 4 bits), 64 KB ahead into L1 at 38-55 GB/s. Three alternating rounds
// of M = 1 over 1024 x 1024, 4096 x 4096 and 4096 x 11008 (the host's DRAM
// bandwidth drifts 2x within minutes, so only rough): 32 KB into L2 was never
// the slowest of {32 KB L2, 128 KB L2, 64 KB L1} and had no outliers; 128 KB
// leaves the first 128 KB of a thread's rows unprefetched (1024 x 1024:
// 0.023-0.036 ms against 0.023-0.028). Session 28, alternated in one process:
// 32 KB into L1 instead of L2 was 3-9% faster cold for float32 x at M = 1,
// K = 11008 (0.585 / 0.605 ms slow memory, 0.468 / 0.517 fast) and 3-6% at
// M = 4 and 8 (4096 x 4096, float32 x; bfloat16 x 0-2%), the same warm.
constexpr int64_t kPrefetchBytes = 32 << 10;
// One-row tiles prefetch non-temporal lines (stream_prefetch.h) 16 KB ahead:
// such a line has no copy in L2 to fall back on if L1 drops it early, and
// 16 KB beat 32 there (0.623 / 0.638 ms slow memory, 0.490 / 0.491 fast;
// float32 x, 11008 x 4096, alternated in one process).
constexpr int64_t kNtaPrefetchBytes = 16 << 10;

// Output rows per tile for MT x rows, with the 32 zmm registers in mind: the
// group's dot products (2 * R with one x row, MT * R otherwise), the scaled
// totals (MT * R), R code planes and the table. vdpbf16ps has a latency of
// 6 cycles at 2 per cycle (measured, Zen 5), so a one-row tile splits each dot
// product over two accumulators. Four x rows take three output rows: each x
// load then feeds three vdpbf16ps (1.15x faster than two at M = 8..32, although
// two of the twelve totals live on the stack, touched once per group).
constexpr int rows_per_tile(int mt) { return mt <= 2 ? 4 : 3; }
constexpr int chains(int mt) { return mt == 1 ? 2 : 1; }

template <int BITS, int MT, int R, bool SPLIT>
void gemv_tile(const KbitGemvBf16Problem& p, const KbitWeight& w, __m512i table, int64_t m0,
               int64_t n0, bool prefetch_ahead) {
  constexpr int C = chains(MT);
  __m512 acc[MT][C][R], tot[MT][R];
  FUSENAS_UNROLL for (int m = 0; m < MT; ++m) FUSENAS_UNROLL for (int r = 0; r < R; ++r) {
    FUSENAS_UNROLL for (int c = 0; c < C; ++c) acc[m][c][r] = _mm512_setzero_ps();
    tot[m][r] = _mm512_setzero_ps();
  }
  const int64_t nb = kbit::num_blocks(w.K);
  const int64_t groups = w.K / w.group_size;
  const int64_t blocks_per_group = groups == 1 ? nb : w.group_size / kbit::kBlock;
  const uint8_t* codes_row[R];
  const float* scale_row[R];
  FUSENAS_UNROLL for (int r = 0; r < R; ++r) {
    codes_row[r] = w.codes + (n0 + r) * w.row_stride;
    scale_row[r] = w.scales + (n0 + r) * groups;
  }
  // Rows are short streams (2 KB at K = 4096, 4 bits) that the hardware
  // prefetchers pick up late, so cold weights are fetched explicitly, whole
  // tiles ahead (a thread's rows are contiguous): with one or two x rows the
  // tile's bytes in address order, R lines per block, so the prefetches
  // themselves stream (cold, alternated in one process: M = 2 at 4096 x 4096
  // 10-14% faster with bfloat16 x and 2-5% with float32 x; float32 x at M = 1,
  // K = 11008, 7%); with more x rows, where it came out -5% to +4%, the same
  // block of each row.
  const bool nta = MT == 1 && streamed_prefetch_nta();
  const int64_t tile_bytes = R * w.row_stride;
  const int64_t prefetch =
      std::max<int64_t>(1, (nta ? kNtaPrefetchBytes : kPrefetchBytes) / tile_bytes) * tile_bytes;
  int64_t g = 0, left = blocks_per_group;  // current group, its blocks still to come
  for (int64_t b = 0; b < nb; ++b) {
    __m512i pl[R];
    FUSENAS_UNROLL for (int r = 0; r < R; ++r) {
      const uint8_t* block = codes_row[r] + b * 16 * BITS;
      pl[r] = load_planes<BITS>(block).a;
      if (prefetch_ahead) {
        const uint8_t* ahead =
            MT <= 2 ? codes_row[0] + prefetch + (b * R + r) * 16 * BITS : block + prefetch;
        prefetch_streamed(ahead, nta);
      }
    }
    // Word 2j+h of pl after a shift by 4t holds, in its low bits, the code of
    // element j + 64h + 16t of the block (kbit_format.md; the front end lays
    // x out in this order).
    FUSENAS_UNROLL for (int t = 0; t < 4; ++t) {
      const int64_t off = b * kbit::kBlock + 32 * t;
      FUSENAS_UNROLL for (int r = 0; r < R; ++r) {
        const __m512i codes = t == 0 ? pl[r] : _mm512_srli_epi16(pl[r], 4 * t);
        const __m512bh wv = as_bh(_mm512_permutexvar_epi16(codes, table));
        FUSENAS_UNROLL for (int m = 0; m < MT; ++m) {
          const int64_t row = (m0 + m) * p.ldx + off;
          __m512& a0 = acc[m][C == 2 ? (t & 1) : 0][r];
          a0 = _mm512_dpbf16_ps(a0, wv, as_bh(_mm512_loadu_si512(p.xhi + row)));
          if constexpr (SPLIT) {
            __m512& a1 = acc[m][C == 2 ? 1 - (t & 1) : 0][r];
            a1 = _mm512_dpbf16_ps(a1, wv, as_bh(_mm512_loadu_si512(p.xlo + row)));
          }
        }
      }
    }
    if (--left == 0 || b + 1 == nb) {  // end of a group: scale its dot products
      FUSENAS_UNROLL for (int r = 0; r < R; ++r) {
        const __m512 vs = _mm512_set1_ps(scale_row[r][g]);
        FUSENAS_UNROLL for (int m = 0; m < MT; ++m) {
          __m512 d = acc[m][0][r];
          if constexpr (C == 2) d = _mm512_add_ps(d, acc[m][1][r]);
          tot[m][r] = _mm512_fmadd_ps(d, vs, tot[m][r]);
          FUSENAS_UNROLL for (int c = 0; c < C; ++c) acc[m][c][r] = _mm512_setzero_ps();
        }
      }
      ++g;
      left = blocks_per_group;
    }
  }
  // Asymmetric codes: the zero points' term, out of the hot loop.
  FUSENAS_UNROLL for (int r = 0; r < R; ++r) {
    const float* zrow = w.zeros ? w.zeros + (n0 + r) * groups : nullptr;
    const float bias = p.bias ? p.bias[n0 + r] : 0.f;
    FUSENAS_UNROLL for (int m = 0; m < MT; ++m) {
      float corr = 0.f;
      if (zrow) {
        const float* xs = p.xsum + (m0 + m) * groups;
        for (int64_t q = 0; q < groups; ++q) corr += scale_row[r][q] * zrow[q] * xs[q];
      }
      const float v = _mm512_reduce_add_ps(tot[m][r]) - corr + bias;
      if (p.ybf)
        p.ybf[(m0 + m) * p.ldy + n0 + r] = float_to_bf16_bits(v);
      else
        p.y[(m0 + m) * p.ldy + n0 + r] = v;
    }
  }
}

// Batch 1 with x in L1: the rows one after another, so a thread reads its
// codes as one sequential stream, which the hardware prefetchers follow; a
// tile's rows are R streams 2 KB apart (K = 4096, 4 bits) that they follow
// less well. Cold, 4 bits, 2 threads, streamed / tiles alternated in one
// process (ms; fast memory, where a torch.sum over as many bytes took 0.139
// and 0.345):
//   4096 x 4096:  bfloat16 x 0.158 / 0.195, float32 x 0.176 / 0.219
//   4096 x 11008: bfloat16 x 0.381 / 0.531, float32 x 0.434 / 0.514
//   1024 x 1024:  bfloat16 x 0.0241 / 0.0266, float32 x 0.0257 / 0.0263
// In slow memory the gains were alike (4096 x 11008: 0.527 / 0.727, bfloat16
// x). Warm (weights in L3) it is 1-10% slower at K <= 4096 (4096 x 4096:
// 0.106 / 0.100, bfloat16 x): each x load feeds one row instead of R.
// A batch's 16 rows leave their lanes in `lanes`, reduced together.
constexpr int64_t kStreamRows = 16;
// The stream is prefetched 16 KB ahead into L1 (non-temporal:
// stream_prefetch.h): 5-9% faster cold than 32 KB into L2 (4096 x 4096 and
// 4096 x 11008, alternated in one process).
constexpr int64_t kStreamPrefetchBytes = 16 << 10;

template <int BITS, bool SPLIT>
void gemv_stream(const KbitGemvBf16Problem& p, const KbitWeight& w, __m512i table, int64_t n_begin,
                 int64_t n_end) {
  const int64_t nb = kbit::num_blocks(w.K);
  const int64_t groups = w.K / w.group_size;
  const int64_t blocks_per_group = groups == 1 ? nb : w.group_size / kbit::kBlock;
  const bool nta = streamed_prefetch_nta();
  alignas(64) float lanes[kStreamRows][16] = {};
  alignas(64) float sums[kStreamRows];
  // Lane j of row r is lanes[r][j]: gathering column j of every row adds 16 rows at once.
  const __m512i column =
      _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                         _mm512_set1_epi32(16));
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kStreamRows) {
    const int64_t rows = std::min(kStreamRows, n_end - n0);
    for (int64_t r = 0; r < rows; ++r) {
      const uint8_t* codes = w.codes + (n0 + r) * w.row_stride;
      const float* scale = w.scales + (n0 + r) * groups;
      // One block's dot product with x: two chains, hi and lo terms alternating.
      auto block_dot = [&](int64_t b) {
        const uint8_t* block = codes + b * 16 * BITS;
        __m512i pl = load_planes<BITS>(block).a;
        // Keeps the codes in a register: GCC otherwise folds the load into
        // each of the three shifts (four loads a block; 1.2x slower warm).
        asm volatile("" : "+v"(pl));
        prefetch_streamed(block + kStreamPrefetchBytes, nta);
        __m512 a0 = _mm512_setzero_ps(), a1 = a0;
        FUSENAS_UNROLL for (int t = 0; t < 4; ++t) {
          const int64_t off = b * kbit::kBlock + 32 * t;
          const __m512i c = t == 0 ? pl : _mm512_srli_epi16(pl, 4 * t);
          const __m512bh wv = as_bh(_mm512_permutexvar_epi16(c, table));
          __m512& h = t & 1 ? a1 : a0;
          h = _mm512_dpbf16_ps(h, wv, as_bh(_mm512_loadu_si512(p.xhi + off)));
          if constexpr (SPLIT) {
            __m512& l = t & 1 ? a0 : a1;
            l = _mm512_dpbf16_ps(l, wv, as_bh(_mm512_loadu_si512(p.xlo + off)));
          }
        }
        return _mm512_add_ps(a0, a1);
      };
      // Two totals (even and odd groups): the scaling FMA is latency-bound.
      __m512 tot0 = _mm512_setzero_ps(), tot1 = tot0;
      if (blocks_per_group == 1) {  // group 128: the usual case, two blocks a step
        int64_t b = 0;
        for (; b + 2 <= nb; b += 2) {
          tot0 = _mm512_fmadd_ps(block_dot(b), _mm512_set1_ps(scale[b]), tot0);
          tot1 = _mm512_fmadd_ps(block_dot(b + 1), _mm512_set1_ps(scale[b + 1]), tot1);
        }
        if (b < nb) tot0 = _mm512_fmadd_ps(block_dot(b), _mm512_set1_ps(scale[b]), tot0);
      } else {
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t b1 = std::min(nb, (g + 1) * blocks_per_group);
          __m512 d = block_dot(g * blocks_per_group);
          for (int64_t b = g * blocks_per_group + 1; b < b1; ++b)
            d = _mm512_add_ps(d, block_dot(b));
          __m512& tot = g & 1 ? tot1 : tot0;
          tot = _mm512_fmadd_ps(d, _mm512_set1_ps(scale[g]), tot);
        }
      }
      _mm512_store_ps(lanes[r], _mm512_add_ps(tot0, tot1));
    }
    __m512 sum = _mm512_setzero_ps();
    FUSENAS_UNROLL for (int j = 0; j < 16; ++j) {
      sum = _mm512_add_ps(sum, _mm512_i32gather_ps(column, &lanes[0][j], 4));
    }
    _mm512_store_ps(sums, sum);  // rows past `rows` add stale lanes and are not written
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t n = n0 + r;
      float corr = 0.f;  // asymmetric codes: the zero points' term
      if (w.zeros) {
        const float* zrow = w.zeros + n * groups;
        const float* scale = w.scales + n * groups;
        for (int64_t q = 0; q < groups; ++q) corr += scale[q] * zrow[q] * p.xsum[q];
      }
      const float v = sums[r] - corr + (p.bias ? p.bias[n] : 0.f);
      if (p.ybf)
        p.ybf[n] = float_to_bf16_bits(v);
      else
        p.y[n] = v;
    }
  }
}

// x's terms (hi, and lo for float32 x) per row take up to this many bytes for
// the streaming GEMV: they are read once per output row, so they must stay in
// L1 (32 KB on most x86 cores, 48 KB on Zen 5 and Sapphire Rapids) beside the
// streamed codes. At K = 11008 float32 x (44 KB) ran 1.4-1.5x slower streamed than
// on the tiles (0.93 / 0.63 ms cold); split in two K chunks, 1.2x (0.60 / 0.49).
constexpr int64_t kStreamXBytes = 24 << 10;

template <int BITS, bool SPLIT>
void gemv(const KbitGemvBf16Problem& p, const KbitWeight& w, int64_t n_begin, int64_t n_end) {
  // Symmetric codes: the table holds q - z; asymmetric: q (z per group comes
  // back through the group sums of x).
  const __m512i table = code_table<BITS>(w.zeros ? 0.f : kbit::symmetric_zero(w.bits, w.ternary));
  if (p.M == 1 && (SPLIT ? 4 : 2) * w.K <= kStreamXBytes) {
    gemv_stream<BITS, SPLIT>(p, w, table, n_begin, n_end);
    return;
  }
  // A chunk of output rows against every x row: the first x tile streams the
  // chunk's codes in from DRAM (and prefetches ahead), the later tiles find
  // them in L1 (12 rows x 2 KB at K = 4096, 4 bits), while each x tile (four
  // rows: 32 KB of bfloat16 at K = 4096) stays in L1 across the chunk's tiles.
  constexpr int64_t kChunk = 12;  // rows_per_tile's values divide it
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kChunk) {
    const int64_t n1 = std::min(n0 + kChunk, n_end);
    bool first = true;
    auto rows = [&](auto mt, int64_t m0) {
      constexpr int MT = decltype(mt)::value;
      constexpr int R = rows_per_tile(MT);
      int64_t n = n0;
      for (; n + R <= n1; n += R) gemv_tile<BITS, MT, R, SPLIT>(p, w, table, m0, n, first);
      for (; n < n1; ++n) gemv_tile<BITS, MT, 1, SPLIT>(p, w, table, m0, n, first);
      first = false;
    };
    int64_t m = 0;
    for (; m + 4 <= p.M; m += 4) rows(std::integral_constant<int, 4>{}, m);
    if (p.M - m >= 2) rows(std::integral_constant<int, 2>{}, m), m += 2;
    if (p.M - m >= 1) rows(std::integral_constant<int, 1>{}, m);
  }
}

// 16 elements of x at p (n valid, the rest read as zero) as float32.
inline __m512 load16(const void* p, int64_t n, bool float32_x) {
  const __mmask16 k = n >= 16 ? static_cast<__mmask16>(0xffff)
                              : static_cast<__mmask16>((1u << std::max<int64_t>(n, 0)) - 1);
  if (float32_x) return _mm512_maskz_loadu_ps(k, p);
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

// The two terms of 16 float32 values: hi = the top 16 bits (truncation never
// overflows to infinity; a NaN becomes the quiet NaN 0x7fc0, since truncating
// its payload could leave an infinity), lo = x - hi rounded to nearest even
// (exact subtraction; zero where x is not finite). Returned as 32-bit lanes
// holding the bfloat16 bits in their top half.
inline void split_terms(__m512 v, __m512i& hi, __m512i& lo) {
  const __m512i top = _mm512_set1_epi32(static_cast<int>(0xffff0000u));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  const __mmask16 finite = _mm512_fpclass_ps_mask(v, 0x99) ^ 0xffff;  // not (NaN|inf)
  hi = _mm512_and_si512(_mm512_castps_si512(v), top);
  hi = _mm512_mask_mov_epi32(hi, nan, _mm512_set1_epi32(0x7fc00000));
  const __m512i r = _mm512_castps_si512(_mm512_sub_ps(v, _mm512_castsi512_ps(hi)));
  // round to nearest even on bit 16: r + 0x7fff + ((r >> 16) & 1)
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(r, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(r, _mm512_set1_epi32(0x7fff)), odd);
  lo = _mm512_maskz_and_epi32(finite, rounded, top);
}

// Pairs two 16-lane term vectors (bfloat16 bits in the top halves) into 32
// words, element j of a at word 2j, of b at word 2j + 1 (select: mask ? b : a >> 16).
inline __m512i interleave(__m512i a, __m512i b) {
  return _mm512_ternarylogic_epi32(_mm512_srli_epi32(a, 16), b,
                                   _mm512_set1_epi32(static_cast<int>(0xffff0000u)), 0xD8);
}

}  // namespace

void kbit_gemv_bf16_prepare(const void* x, int64_t M, int64_t ldx, bool float32_x, int64_t K,
                            int64_t group_size, uint16_t* hi, uint16_t* lo, int64_t ldh,
                            float* xsum) {
  const int64_t nb = kbit::num_blocks(K);
  const int64_t esize = float32_x ? 4 : 2;
  // Groups are whole blocks or the whole row (kbit_codes_bf16_applies).
  const int64_t groups = K / group_size;
  const int64_t blocks_per_group = groups == 1 ? nb : group_size / kbit::kBlock;
  for (int64_t m = 0; m < M; ++m) {
    const char* xr = static_cast<const char*>(x) + m * ldx * esize;
    if (xsum) std::fill(xsum + m * groups, xsum + (m + 1) * groups, 0.f);
    for (int64_t b = 0; b < nb; ++b) {
      __m512 sum = _mm512_setzero_ps();  // of the values the kernel multiplies (hi + lo)
      for (int t = 0; t < 4; ++t) {
        // Words 2j + h of (block b, step t) hold elements j + 64h + 16t.
        const int64_t k0 = b * kbit::kBlock + 16 * t, k1 = k0 + 64;
        const __m512 va = load16(xr + k0 * esize, K - k0, float32_x);
        const __m512 vb = load16(xr + k1 * esize, K - k1, float32_x);
        const int64_t pos = m * ldh + b * kbit::kBlock + 32 * t;
        if (float32_x) {
          __m512i ha, la, hb, lb;
          split_terms(va, ha, la);
          split_terms(vb, hb, lb);
          _mm512_storeu_si512(hi + pos, interleave(ha, hb));
          _mm512_storeu_si512(lo + pos, interleave(la, lb));
          const __m512 a = _mm512_add_ps(_mm512_castsi512_ps(ha), _mm512_castsi512_ps(la));
          const __m512 c = _mm512_add_ps(_mm512_castsi512_ps(hb), _mm512_castsi512_ps(lb));
          sum = _mm512_add_ps(sum, _mm512_add_ps(a, c));
        } else {
          _mm512_storeu_si512(hi + pos,
                              interleave(_mm512_castps_si512(va), _mm512_castps_si512(vb)));
          sum = _mm512_add_ps(sum, _mm512_add_ps(va, vb));
        }
      }
      if (xsum) xsum[m * groups + b / blocks_per_group] += _mm512_reduce_add_ps(sum);
    }
  }
}

void kbit_gemv_avx512_bf16(const KbitGemvBf16Problem& p, const KbitWeight& w, int64_t n_begin,
                           int64_t n_end) {
  const bool split = p.xlo != nullptr;
  switch (w.bits) {
    case 2:
      split ? gemv<2, true>(p, w, n_begin, n_end) : gemv<2, false>(p, w, n_begin, n_end);
      break;
    case 3:
      split ? gemv<3, true>(p, w, n_begin, n_end) : gemv<3, false>(p, w, n_begin, n_end);
      break;
    default:
      split ? gemv<4, true>(p, w, n_begin, n_end) : gemv<4, false>(p, w, n_begin, n_end);
      break;
  }
}

}  // namespace cpu
}  // namespace fusenas
