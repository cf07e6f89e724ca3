// Batch-1 GEMV for 2-bit and ternary weights on subset-sum tables (AVX-512 with
// AVX512_VNNI; compiled with -mavx512vnni, entered only when cpuid reports it).
//
// Why: the GEMV on codes (kbit_gemv_avx512_bf16.cpp) spends a shift, a vpermw
// and a vdpbf16ps per 32 weights at every width, so 2-bit weights cost as much
// compute as 4-bit ones and save only DRAM time. Here a code is split into its
// two bit planes, q = 2 b1 + b0, and the planes of 4 consecutive weights form a
// 4-bit index into a table of the 16 sums T[m] = sum_i (bit_i(m) - 1/2) x_i of
// those 4 inputs (T-MAC's idea, with int16 tables instead of int8 ones).
// One vpermw looks up 32 such sums (16 rows x 2 planes) and one vpdpwssd adds
// 2 T[b1] + T[b0] = sum_i (q_i - 3/2) x_i into each row's int32 lane: 64
// weights per lookup instead of 32. Each 128-input block's sums go to float32
// once, times the block's table scale and the rows' scales; per group, y +=
// s * (3/2 - z) * sum x, so zero points (and ternary's z = 1) cost nothing in
// the loop; with one zero point for all rows (symmetric, ternary) s * (3/2 - z)
// is not stored.
//
// Precision: table entries are int16 fixed point against the largest entry of
// their 128-input block, |T| <= top_b: an error of at most top_b / 65534 per
// entry, for float32 and bfloat16 x alike. One lookup per 64 weights for both
// (float32 x on bfloat16 tables needed a second, lo table: 0.64x the 4-bit
// time instead of 0.5x). int32 accumulators cannot overflow: a block adds 32
// lookups of at most 3 * 32767.
#include <immintrin.h>

#include <algorithm>

#include "common/kbit_layout.h"
#include "common/static_dispatch.h"
#include "cpu/bf16_bits_avx512.h"
#include "cpu/kbit_decode_avx512.h"
#include "cpu/kbit_kernels.h"

namespace fusenas {
namespace cpu {

using namespace avx512;

namespace {

// vpdpwssd pairs word 2i (plane b1) with 2 and word 2i + 1 (plane b0) with 1.
inline __m512i plane_weights() { return _mm512_set1_epi32(0x00010002); }

// The 16 entries of a 4-input table, broadcast to both 256-bit halves: vpermw
// reads 5 index bits and bit 4 is the next nibble's, so entries 16..31 repeat
// entries 0..15.
inline __m512i load_table(const int16_t* t) {
  return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t)));
}

// How far ahead a pass's codes are prefetched, into L2. A pass reads one
// sequential stream (TG x 64 bytes per chunk), as the GEMV on codes does.
constexpr int64_t kPrefetchBytes = 32 << 10;
constexpr int64_t kChunksPerBlock = kbit::kBlock / 16;

// One pass: the TG tiles (16 rows each) of pass `pass`, every table register
// feeding TG tiles. Two int32 accumulators per tile (even and odd lookups)
// keep 2 * TG vpdpwssd chains in flight; each 128-input block's sums go to
// float32 with the block's table scale.
template <int TG>
void lut_pass(const KbitLutProblem& p, const KbitLutWeight& w, int64_t pass) {
  const int64_t blocks = kbit::num_blocks(w.K);
  const int64_t groups = w.K / w.group_size;
  const int64_t blocks_per_group = groups == 1 ? blocks : w.group_size / kbit::kBlock;
  const __m512i two_one = plane_weights();
  const uint8_t* codes = w.codes + pass * kbit::kLutTilesPerPass * blocks * kChunksPerBlock * 64;
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
      for (int64_t c = b * kChunksPerBlock; c < (b + 1) * kChunksPerBlock; ++c) {
        const uint8_t* at = codes + c * TG * 64;
        _mm_prefetch(reinterpret_cast<const char*>(at + kPrefetchBytes), _MM_HINT_T1);
        if constexpr (TG > 1)
          _mm_prefetch(reinterpret_cast<const char*>(at + kPrefetchBytes + TG * 32), _MM_HINT_T1);
        __m512i v[TG];
        FUSENAS_UNROLL for (int t = 0; t < TG; ++t) v[t] = _mm512_loadu_si512(at + t * 64);
        // Nibble j of each word: the plane bits of inputs 16c + 4j .. 16c + 4j + 3.
        FUSENAS_UNROLL for (int j = 0; j < 4; ++j) {
          const __m512i tab = load_table(p.table + 16 * (4 * c + j));
          FUSENAS_UNROLL for (int t = 0; t < TG; ++t) {
            const __m512i idx = j == 0 ? v[t] : _mm512_srli_epi16(v[t], 4 * j);
            acc[t] = _mm512_dpwssd_epi32(acc[t], _mm512_permutexvar_epi16(idx, tab), two_one);
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

bool kbit_lut_prepare(const void* x, bool float32_x, int64_t K, int64_t group_size,
                      int16_t* table, float* tscale, float* xsum) {
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
      const __mmask16 in = static_cast<__mmask16>(
          k + 16 <= K ? 0xFFFF : k >= K ? 0 : (1u << (K - k)) - 1);
      const __m512 xv =
          float32_x ? _mm512_maskz_loadu_ps(in, xf + k)
                    : _mm512_castsi512_ps(_mm512_slli_epi32(
                          _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(in, xb + k)), 16));
      bad |= _mm512_fpclass_ps_mask(xv, 0x99);  // QNaN, SNaN, +Inf, -Inf
      sum = _mm512_add_ps(sum, xv);
      _mm512_store_ps(v + 16 * u, xv);
    }
    xsum[groups == 1 ? 0 : b * kbit::kBlock / group_size] += _mm512_reduce_add_ps(sum);
    __m512 t[Q];
    __m512 peak = _mm512_setzero_ps();
    for (int64_t q = 0; q < Q; ++q) {
      __m512 s = _mm512_mul_ps(c[0], _mm512_set1_ps(v[4 * q]));
      for (int i = 1; i < 4; ++i) s = _mm512_fmadd_ps(c[i], _mm512_set1_ps(v[4 * q + i]), s);
      t[q] = s;
      peak = _mm512_max_ps(peak, _mm512_abs_ps(s));
    }
    // Entries as int16 fixed point against the block's largest: 15 bits.
    const float top = _mm512_reduce_max_ps(peak);
    const __m512 inv = _mm512_set1_ps(top > 0.f ? 32767.f / top : 0.f);
    tscale[b] = top / 32767.f;
    for (int64_t q = 0; q < Q; ++q)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(table + 16 * (b * Q + q)),
                          _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(t[q], inv))));
  }
  return bad == 0;
}

void kbit_gemv_lut_avx512_vnni(const KbitLutProblem& p, const KbitLutWeight& w, int64_t pass_begin,
                               int64_t pass_end) {
  const int64_t tiles = (w.N + 15) / 16;
  for (int64_t pass = pass_begin; pass < pass_end; ++pass) {
    const int tg = static_cast<int>(
        std::min<int64_t>(kbit::kLutTilesPerPass, tiles - pass * kbit::kLutTilesPerPass));
    with_constant<1, kbit::kLutTilesPerPass>(
        tg, [&](auto c) { lut_pass<decltype(c)::value>(p, w, pass); });
  }
}

}  // namespace cpu
}  // namespace fusenas
