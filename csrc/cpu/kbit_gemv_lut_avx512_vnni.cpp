// Batch-1 GEMV for 2-bit, ternary and 3-bit weights on subset-sum tables
// (AVX-512 with AVX512_VNNI; compiled with -mavx512vnni, entered only when
// cpuid reports it).
//
// Why: the GEMV on codes (kbit_gemv_avx512_bf16.cpp) spends a shift, a vpermw
// and a vdpbf16ps per 32 weights at every width, so 2-bit weights cost as much
// compute as 4-bit ones and save only DRAM time. Here a code is split into its
// bit planes, q = 4 b2 + 2 b1 + b0, and the bits of one plane for 4
// consecutive weights form a 4-bit index into a table of the 16 sums
// T[m] = sum_i (bit_i(m) - 1/2) x_i of those 4 inputs (T-MAC's idea, with
// int16 tables instead of int8 ones). One vpermw looks up 32 such sums and one
// vpdpwssd adds them in pairs, weighted by the planes' 4, 2, 1, into the rows'
// int32 lanes: sum_p 2^p T[b_p] = sum_i (q_i - c) x_i, c = (2^bits - 1) / 2.
// 2-bit: 64 weights per lookup instead of 32; 3-bit: 43. Each 128-input
// block's sums go to float32 once, times the block's table scale and the rows'
// scales; per group, y += s * (c - z) * sum x, so zero points (and ternary's
// z = 1) cost nothing in the loop; with one zero point for all rows
// (symmetric, ternary) s * (c - z) is not stored.
//
// Precision: table entries are int16 fixed point against the largest entry of
// their 128-input block, |T| <= top_b: an error of at most top_b / 65534 per
// entry, for float32 and bfloat16 x alike. One lookup per 64 weights (2-bit)
// for both (float32 x on bfloat16 tables needed a second, lo table: 0.64x the
// 4-bit time instead of 0.5x). int32 accumulators stay exact in float32: a
// block adds at most 32 * 3 * 32767 + 16 * 8 * 32767 < 2^24.
#include <immintrin.h>

#include <algorithm>
#include <limits>

#include "common/kbit_layout.h"
#include "common/static_dispatch.h"
#include "cpu/bf16_bits_avx512.h"
#include "cpu/cpu_dispatch.h"
#include "cpu/kbit_decode_avx512.h"
#include "cpu/kbit_kernels.h"
#include "cpu/stream_prefetch.h"

namespace fusenas {
namespace cpu {

using namespace avx512;

namespace {

// vpdpwssd weights for word pairs: (b1, b0) by (2, 1), and 3-bit's (b2 of one
// chunk, b2 of the next) by (4, 4).
constexpr uint32_t kTwoOne = 0x00010002;
constexpr uint32_t kFourFour = 0x00040004;

// The 16 entries of a 4-input table, broadcast to both 256-bit halves: vpermw
// reads 5 index bits and bit 4 is the next nibble's, so entries 16..31 repeat
// entries 0..15.
inline __m512i load_table(const int16_t* t) {
  return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t)));
}

// Two tables in one register: a's 16 entries in 0..15, b's in 16..31.
inline __m512i pair_table(const int16_t* a, const int16_t* b) {
  const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a));
  return _mm512_inserti64x4(_mm512_castsi256_si512(lo),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
}

// How far ahead a pass's codes are prefetched: every line, into L1
// (non-temporal where L1 allows: stream_prefetch.h). A pass reads one
// sequential stream, as the GEMV on codes does. Cold, 2 threads, 16 KB ahead
// against every fourth line 32 KB ahead into L2 (alternated in one process,
// ms): 2-bit 4096 x 4096 0.128 / 0.142 (slow memory) and 4096 x 11008
// 0.234 / 0.319 (fast); 3-bit 4096 x 4096 0.123 / 0.164 (fast). Every second
// line into L1 was no faster than every fourth; no prefetch at all, 0.134 /
// 0.142. Warm (weights in L3) the prefetches cost 7%: 0.052 / 0.048 ms.
// 8 KB ahead beat 16 KB by 1-6% (2-bit at the three large shapes, 3-bit at
// 4096 x 4096, slow and fast memory); 4 and 24 KB were no better than 16.
// With prefetchnta, 2 to 24 KB came out within 3% of each other.
constexpr int64_t kPrefetchBytes = 8 << 10;
constexpr int64_t kPairsPerBlock = kbit::kBlock / 32;

// One pass: the TG tiles (16 rows each) of pass `pass`, every table register
// feeding TG tiles (one int32 accumulator each: TG vpdpwssd chains in flight;
// a second set would not fit the 32 registers with the codes and totals).
// Codes come per pair of 16-input chunks, kbit::lut_vectors_per_pair(BITS)
// vectors of TG x 64 bytes: the (b1, b0) vectors of both chunks, then 3-bit's
// b2 vector. Each 128-input block's sums go to float32 once, times the block's
// table scale and the rows' scales.
template <int BITS, int TG>
void lut_pass(const KbitLutProblem& p, const KbitLutWeight& w, int64_t pass) {
  constexpr int V = kbit::lut_vectors_per_pair(BITS);
  const int64_t blocks = kbit::num_blocks(w.K);
  const int64_t groups = w.K / w.group_size;
  const int64_t blocks_per_group = groups == 1 ? blocks : w.group_size / kbit::kBlock;
  const __m512i two_one = _mm512_set1_epi32(kTwoOne);
  const bool nta = streamed_prefetch_nta();
  const uint8_t* codes = w.codes + pass * kbit::kLutTilesPerPass * blocks * kPairsPerBlock * V * 64;
  const float* scale = w.scale + pass * kbit::kLutTilesPerPass * groups * 16;
  // Symmetric and ternary codes share one zero point: no offset stream to read.
  const float* offset = w.offset ? w.offset + pass * kbit::kLutTilesPerPass * groups * 16 : nullptr;
  __m512 tot[TG];
  FUSENAS_UNROLL for (int t = 0; t < TG; ++t) tot[t] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const float* sg = scale + g * TG * 16;
    for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
      __m512i acc[TG];
      FUSENAS_UNROLL for (int t = 0; t < TG; ++t) acc[t] = _mm512_setzero_si512();
      for (int64_t pr = b * kPairsPerBlock; pr < (b + 1) * kPairsPerBlock; ++pr) {
        const uint8_t* at = codes + pr * V * TG * 64;
        FUSENAS_UNROLL for (int l = 0; l < V * TG; ++l) {
          prefetch_streamed(at + kPrefetchBytes + l * 64, nta);
        }
        FUSENAS_UNROLL for (int h = 0; h < 2; ++h) {
          const int64_t c = 2 * pr + h;  // chunk of 16 inputs
          __m512i v[TG];
          FUSENAS_UNROLL for (int t = 0; t < TG; ++t) {
            v[t] = _mm512_loadu_si512(at + (h * TG + t) * 64);
          }
          // Nibble j of each word: the plane bits of inputs 16c + 4j .. 16c + 4j + 3.
          FUSENAS_UNROLL for (int j = 0; j < 4; ++j) {
            const __m512i tab = load_table(p.table + 16 * (4 * c + j));
            FUSENAS_UNROLL for (int t = 0; t < TG; ++t) {
              const __m512i idx = j == 0 ? v[t] : _mm512_srli_epi16(v[t], 4 * j);
              acc[t] = _mm512_dpwssd_epi32(acc[t], _mm512_permutexvar_epi16(idx, tab), two_one);
            }
          }
        }
        if constexpr (BITS == 3) {
          // Word 2r holds plane b2 of chunk 2pr, word 2r + 1 that of chunk
          // 2pr + 1; their tables sit in entries 0..15 and 16..31 of one
          // register, so index bit 4 must be the word's parity, not the next
          // nibble's bit.
          const __m512i four_four = _mm512_set1_epi32(kFourFour);
          const __m512i low = _mm512_set1_epi32(0x000F000F), odd = _mm512_set1_epi32(0x00100000);
          FUSENAS_UNROLL for (int j = 0; j < 4; ++j) {
            const int64_t q0 = 8 * pr + j;  // block j of both chunks: q0, q0 + 4
            const __m512i tab = pair_table(p.table + 16 * q0, p.table + 16 * (q0 + 4));
            FUSENAS_UNROLL for (int t = 0; t < TG; ++t) {
              const __m512i b2 = _mm512_loadu_si512(at + (2 * TG + t) * 64);
              const __m512i sh = j == 0 ? b2 : _mm512_srli_epi16(b2, 4 * j);
              const __m512i idx = _mm512_ternarylogic_epi32(sh, low, odd, 0xEA);  // sh & low | odd
              acc[t] = _mm512_dpwssd_epi32(acc[t], _mm512_permutexvar_epi16(idx, tab), four_four);
            }
          }
        }
      }
      // The block's sums in float32, weighed by its table scale and the rows' scales.
      const __m512 ts = _mm512_set1_ps(p.tscale[b]);
      FUSENAS_UNROLL for (int t = 0; t < TG; ++t) {
        const __m512 s = _mm512_mul_ps(ts, _mm512_loadu_ps(sg + t * 16));
        tot[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t]), s, tot[t]);
      }
    }
    const __m512 xs = _mm512_set1_ps(p.xsum[g]);
    const __m512 zterm = _mm512_set1_ps(w.zero_term * p.xsum[g]);
    FUSENAS_UNROLL for (int t = 0; t < TG; ++t) {
      const int64_t at = (g * TG + t) * 16;
      if (offset)
        tot[t] = _mm512_fmadd_ps(xs, _mm512_loadu_ps(offset + at), tot[t]);
      else
        tot[t] = _mm512_fmadd_ps(zterm, _mm512_loadu_ps(scale + at), tot[t]);
    }
  }
  FUSENAS_UNROLL for (int t = 0; t < TG; ++t) {
    const int64_t n0 = (pass * kbit::kLutTilesPerPass + t) * 16;
    const int64_t valid = std::min<int64_t>(16, w.N - n0);
    const __mmask16 k = static_cast<__mmask16>((1u << valid) - 1);
    __m512 r = tot[t];
    if (p.bias) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(k, p.bias + n0));
    if (p.ybf)
      _mm256_mask_storeu_epi16(p.ybf + n0, k, to_bf16_bits(r));
    else
      _mm512_mask_storeu_ps(p.y + n0, k, r);
  }
}

}  // namespace

bool kbit_lut_prepare(const void* x, bool float32_x, int64_t K, int64_t group_size, int16_t* table,
                      float* tscale, float* xsum) {
  // Lane m of c[i] is bit i of m, minus 1/2.
  __m512 c[4];
  for (int i = 0; i < 4; ++i) {
    alignas(64) float lanes[16];
    for (int m = 0; m < 16; ++m) lanes[m] = static_cast<float>((m >> i) & 1) - 0.5f;
    c[i] = _mm512_load_ps(lanes);
  }
  constexpr int64_t Q = kbit::kBlock / 4;  // 4-input tables per block
  const int64_t groups = K / group_size;
  std::fill(xsum, xsum + groups, 0.f);
  const float* xf = static_cast<const float*>(x);
  const uint16_t* xb = static_cast<const uint16_t*>(x);
  __mmask16 bad = 0;
  for (int64_t b = 0; b < kbit::num_blocks(K); ++b) {
    // The block's inputs in float32, zero past K; Inf and NaN flagged.
    alignas(64) float v[kbit::kBlock];
    __m512 sum = _mm512_setzero_ps();
    for (int64_t u = 0; u < kbit::kBlock / 16; ++u) {
      const int64_t k = b * kbit::kBlock + 16 * u;
      const __mmask16 in = static_cast<__mmask16>(k + 16 <= K ? 0xFFFF
                                                  : k >= K    ? 0
                                                              : (1u << (K - k)) - 1);
      const __m512 xv = float32_x
                            ? _mm512_maskz_loadu_ps(in, xf + k)
                            : _mm512_castsi512_ps(_mm512_slli_epi32(
                                  _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(in, xb + k)), 16));
      bad |= _mm512_fpclass_ps_mask(xv, 0x99);  // QNaN, SNaN, +Inf, -Inf
      sum = _mm512_add_ps(sum, xv);
      _mm512_store_ps(v + 16 * u, xv);
    }
    xsum[groups == 1 ? 0 : b * kbit::kBlock / group_size] += _mm512_reduce_add_ps(sum);
    // Entries as int16 fixed point against the block's largest, 15 bits. The
    // largest |T| of inputs x0..x3 is (|x0| + |x1| + |x2| + |x3|) / 2 (every
    // sign matched), so top comes from x before any table is built and each
    // entry is scaled and stored as soon as it is computed: no tables kept on
    // the stack, no libm frexp (a 2-bit call at K = 4096, N = 16, one thread,
    // went from 8.3 to 7.8 us). An entry rounded a few ulps past top
    // saturates to 32767.
    const __m512 half = _mm512_set1_ps(0.5f);
    __m512 peak = _mm512_setzero_ps();
    for (int64_t u = 0; u < kbit::kBlock / 16; ++u) {
      const __m512 h = _mm512_mul_ps(_mm512_abs_ps(_mm512_load_ps(v + 16 * u)), half);
      const __m512 pairs = _mm512_add_ps(h, _mm512_permute_ps(h, 0xB1));  // (1, 0, 3, 2)
      peak = _mm512_max_ps(peak,
                           _mm512_add_ps(pairs, _mm512_permute_ps(pairs, 0x4E)));  // (2, 3, 0, 1)
    }
    const float top = _mm512_reduce_max_ps(peak);
    if (!(top <= std::numeric_limits<float>::max())) return false;  // sums overflowed
    // top = f * 2^e, f in [1, 2): the entries are scaled by 2^-e first
    // (vscalefps, exact) and then by 32767 / f, so no factor overflows for
    // tiny x (32767 / top is inf below about 1e-34) or loses bits to denormals.
    __m512 shift = _mm512_setzero_ps(), inv = _mm512_setzero_ps();
    tscale[b] = 1.f / 32767.f;
    if (top > 0.f) {
      const __m128 t1 = _mm_set_ss(top);
      const __m128 e = _mm_getexp_ss(t1, t1);
      const __m128 f = _mm_getmant_ss(t1, t1, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
      shift = _mm512_set1_ps(-_mm_cvtss_f32(e));
      inv = _mm512_set1_ps(32767.f / _mm_cvtss_f32(f));
      tscale[b] = _mm_cvtss_f32(_mm_scalef_ss(_mm_div_ss(f, _mm_set_ss(32767.f)), e));
    }
    for (int64_t q = 0; q < Q; ++q) {
      __m512 t = _mm512_mul_ps(c[0], _mm512_set1_ps(v[4 * q]));
      for (int i = 1; i < 4; ++i) t = _mm512_fmadd_ps(c[i], _mm512_set1_ps(v[4 * q + i]), t);
      const __m512 unit = _mm512_mul_ps(_mm512_scalef_ps(t, shift), inv);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(table + 16 * (b * Q + q)),
                          _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(unit)));
    }
  }
  return bad == 0;
}

void kbit_gemv_lut_avx512_vnni(const KbitLutProblem& p, const KbitLutWeight& w, int64_t pass_begin,
                               int64_t pass_end) {
  const int64_t tiles = (w.N + 15) / 16;
  for (int64_t pass = pass_begin; pass < pass_end; ++pass) {
    const int tg = static_cast<int>(
        std::min<int64_t>(kbit::kLutTilesPerPass, tiles - pass * kbit::kLutTilesPerPass));
    with_constant<1, kbit::kLutTilesPerPass>(tg, [&](auto c) {
      if (w.bits == 3)
        lut_pass<3, decltype(c)::value>(p, w, pass);
      else
        lut_pass<2, decltype(c)::value>(p, w, pass);
    });
  }
}

}  // namespace cpu
}  // namespace fusenas
