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

#include "cpu/kbit_decode_avx512.h"
#include "cpu/kbit_kernels.h"

namespace fusenas {
namespace cpu {

using namespace avx512;

namespace {

inline __m512bh as_bh(__m512i v) { return reinterpret_cast<__m512bh&>(v); }

// 32-entry word table for vpermw: entry i holds bfloat16((i mod 2^BITS) - zc),
// exact (small integers). vpermw reads the low 5 bits of each index word; the
// bits above the code are neighbouring fields, so the table repeats with
// period 2^BITS.
template <int BITS>
__m512i code_table(float zc) {
  alignas(64) uint16_t t[32];
  for (int i = 0; i < 32; ++i) {
    const float v = static_cast<float>(i % (1 << BITS)) - zc;
    uint32_t u;
    std::memcpy(&u, &v, 4);
    t[i] = static_cast<uint16_t>(u >> 16);
  }
  return _mm512_load_si512(t);
}

// Output rows per tile for MT x rows, with the 32 zmm registers in mind: the
// group's dot products (2 * R with one x row, MT * R otherwise), the scaled
// totals (MT * R), R code planes and two constants. vdpbf16ps has a latency of
// several cycles, so a one-row tile splits each dot product over two
// accumulators to keep eight chains in flight.
constexpr int rows_per_tile(int mt) { return mt <= 2 ? 4 : 2; }
constexpr int chains(int mt) { return mt == 1 ? 2 : 1; }

template <int BITS, int MT, int R, bool SPLIT>
void gemv_tile(const KbitGemvBf16Problem& p, const KbitWeight& w, __m512i table, int64_t m0,
               int64_t n0) {
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
  int64_t g = 0, left = blocks_per_group;  // current group, its blocks still to come
  for (int64_t b = 0; b < nb; ++b) {
    __m512i pl[R];
    FUSENAS_UNROLL for (int r = 0; r < R; ++r) pl[r] =
        load_planes<BITS>(codes_row[r] + b * 16 * BITS).a;
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
      p.y[(m0 + m) * p.ldy + n0 + r] = _mm512_reduce_add_ps(tot[m][r]) - corr + bias;
    }
  }
}

template <int BITS, bool SPLIT>
void gemv(const KbitGemvBf16Problem& p, const KbitWeight& w, int64_t n_begin, int64_t n_end) {
  // Symmetric codes: the table holds q - z; asymmetric: q (z per group comes
  // back through the group sums of x).
  const __m512i table = code_table<BITS>(w.zeros ? 0.f : kbit::symmetric_zero(w.bits, w.ternary));
  auto rows = [&](auto mt, int64_t m0) {
    constexpr int MT = decltype(mt)::value;
    constexpr int R = rows_per_tile(MT);
    int64_t n = n_begin;
    for (; n + R <= n_end; n += R) gemv_tile<BITS, MT, R, SPLIT>(p, w, table, m0, n);
    for (; n < n_end; ++n) gemv_tile<BITS, MT, 1, SPLIT>(p, w, table, m0, n);
  };
  int64_t m = 0;
  for (; m + 4 <= p.M; m += 4) rows(std::integral_constant<int, 4>{}, m);
  if (p.M - m >= 2) rows(std::integral_constant<int, 2>{}, m), m += 2;
  if (p.M - m >= 1) rows(std::integral_constant<int, 1>{}, m);
}

}  // namespace

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
