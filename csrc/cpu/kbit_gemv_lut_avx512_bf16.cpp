// Batch-1 GEMV for 2-bit and ternary weights on subset-sum tables (AVX512-BF16
// CPUs; compiled with -mavx512bf16, entered only when cpuid reports it).
//
// Why: the GEMV on codes (kbit_gemv_avx512_bf16.cpp) spends a shift, a vpermw
// and a vdpbf16ps per 32 weights at every width, so 2-bit weights cost as much
// compute as 4-bit ones and save only DRAM time. Here a code is split into its
// two bit planes, q = 2 b1 + b0, and the planes of 4 consecutive weights form a
// 4-bit index into a table of the 16 sums T[m] = sum_i (bit_i(m) - 1/2) x_i of
// those 4 inputs (T-MAC's idea, with bfloat16 tables instead of int8 ones).
// One vpermw looks up 32 such sums (16 rows x 2 planes) and one vdpbf16ps adds
// 2 T[b1] + T[b0] = sum_i (q_i - 3/2) x_i into each row's float32 lane: 64
// weights per lookup instead of 32. Per group, y += s * (acc + (3/2 - z) *
// sum x), so zero points (and ternary's z = 1) cost nothing in the loop; with
// one zero point for all rows (symmetric, ternary) s * (3/2 - z) is not stored.
//
// Precision: table entries are rounded to bfloat16 (hi); float32 x adds a
// second table of what hi missed (lo), so each entry keeps 16 significant bits,
// as the GEMV on codes keeps for x. bfloat16 x uses hi only: an error of up to
// 2^-9 per entry, the precision of its bfloat16 output.
#include <immintrin.h>

#include <algorithm>
#include <cmath>

#include "common/dtype_convert.h"
#include "common/kbit_layout.h"
#include "cpu/kbit_bf16_micro_avx512.h"
#include "cpu/kbit_kernels.h"

namespace fusenas {
namespace cpu {

using namespace avx512;

namespace {

// vdpbf16ps pairs word 2i (plane b1) with 2.0 and word 2i + 1 (plane b0) with 1.0.
inline __m512bh plane_weights() {
  const __m512i w = _mm512_set1_epi32(0x3F804000);  // bfloat16 1.0 << 16 | bfloat16 2.0
  return as_bh(w);
}

// The 16 entries of a 4-input table, broadcast to both 256-bit halves: vpermw
// reads 5 index bits and bit 4 is the next nibble's, so entries 16..31 repeat
// entries 0..15.
inline __m512i load_table(const uint16_t* t) {
  return _mm512_broadcast_i64x4(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(t)));
}

// How far ahead a pass's codes are prefetched, into L2. A pass reads one
// sequential stream (TG x 64 bytes per chunk), as the GEMV on codes does.
constexpr int64_t kPrefetchBytes = 32 << 10;

// One pass: the TG tiles (16 rows each) of pass `pass`, every table register
// feeding TG tiles. Two accumulators per tile (even and odd lookups) keep
// 2 * TG vdpbf16ps chains in flight against its 6-cycle latency.
template <int TG, bool SPLIT>
void lut_pass(const KbitLutProblem& p, const KbitLutWeight& w, int64_t pass) {
  const int64_t chunks = kbit::num_blocks(w.K) * (kbit::kBlock / 16);
  const int64_t groups = w.K / w.group_size;
  const int64_t chunks_per_group = groups == 1 ? chunks : w.group_size / 16;
  const __m512bh two_one = plane_weights();
  const uint8_t* codes = w.codes + pass * kbit::kLutTilesPerPass * chunks * 64;
  const float* scale = w.scale + pass * kbit::kLutTilesPerPass * groups * 16;
  // Symmetric and ternary codes share one zero point: no offset stream to read.
  const float* offset = w.offset ? w.offset + pass * kbit::kLutTilesPerPass * groups * 16 : nullptr;
  __m512 acc[TG][2], tot[TG];
  FUSENAS_UNROLL for (int t = 0; t < TG; ++t) {
    acc[t][0] = acc[t][1] = tot[t] = _mm512_setzero_ps();
  }
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t c = g * chunks_per_group; c < (g + 1) * chunks_per_group; ++c) {
      const uint8_t* at = codes + c * TG * 64;
      _mm_prefetch(reinterpret_cast<const char*>(at + kPrefetchBytes), _MM_HINT_T1);
      if constexpr (TG > 1)
        _mm_prefetch(reinterpret_cast<const char*>(at + kPrefetchBytes + TG * 32), _MM_HINT_T1);
      __m512i v[TG];
      FUSENAS_UNROLL for (int t = 0; t < TG; ++t) v[t] = _mm512_loadu_si512(at + t * 64);
      // Nibble j of each word: the plane bits of inputs 16c + 4j .. 16c + 4j + 3.
      FUSENAS_UNROLL for (int j = 0; j < 4; ++j) {
        const int64_t q = 4 * c + j;  // 4-input block
        const __m512i th = load_table(p.thi + 16 * q);
        __m512i tl = th;
        if constexpr (SPLIT) tl = load_table(p.tlo + 16 * q);
        FUSENAS_UNROLL for (int t = 0; t < TG; ++t) {
          const __m512i idx = j == 0 ? v[t] : _mm512_srli_epi16(v[t], 4 * j);
          __m512& a = acc[t][j & 1];
          a = _mm512_dpbf16_ps(a, as_bh(_mm512_permutexvar_epi16(idx, th)), two_one);
          if constexpr (SPLIT) {
            __m512& b = acc[t][1 - (j & 1)];
            b = _mm512_dpbf16_ps(b, as_bh(_mm512_permutexvar_epi16(idx, tl)), two_one);
          }
        }
      }
    }
    const __m512 xs = _mm512_set1_ps(p.xsum[g]);
    const __m512 zterm = _mm512_set1_ps(w.zero_term * p.xsum[g]);
    FUSENAS_UNROLL for (int t = 0; t < TG; ++t) {
      const int64_t at = (g * TG + t) * 16;
      __m512 a = _mm512_add_ps(acc[t][0], acc[t][1]);
      if (!offset) a = _mm512_add_ps(a, zterm);
      tot[t] = _mm512_fmadd_ps(a, _mm512_loadu_ps(scale + at), tot[t]);
      if (offset) tot[t] = _mm512_fmadd_ps(xs, _mm512_loadu_ps(offset + at), tot[t]);
      acc[t][0] = acc[t][1] = _mm512_setzero_ps();
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

template <bool SPLIT>
void lut_passes(const KbitLutProblem& p, const KbitLutWeight& w, int64_t pass_begin,
                int64_t pass_end) {
  const int64_t tiles = (w.N + 15) / 16;
  for (int64_t pass = pass_begin; pass < pass_end; ++pass) {
    const int tg = static_cast<int>(
        std::min<int64_t>(kbit::kLutTilesPerPass, tiles - pass * kbit::kLutTilesPerPass));
    with_constant<1, kbit::kLutTilesPerPass>(
        tg, [&](auto c) { lut_pass<decltype(c)::value, SPLIT>(p, w, pass); });
  }
}

}  // namespace

bool kbit_lut_prepare(const void* x, bool float32_x, int64_t K, int64_t group_size, uint16_t* thi,
                      uint16_t* tlo, float* xsum) {
  // Lane m of c[i] is bit i of m, minus 1/2.
  __m512 c[4];
  for (int i = 0; i < 4; ++i) {
    alignas(64) float lanes[16];
    for (int m = 0; m < 16; ++m) lanes[m] = static_cast<float>((m >> i) & 1) - 0.5f;
    c[i] = _mm512_load_ps(lanes);
  }
  const int64_t blocks = kbit::num_blocks(K) * (kbit::kBlock / 4);
  const int64_t groups = K / group_size;
  std::fill(xsum, xsum + groups, 0.f);
  const float* xf = static_cast<const float*>(x);
  const uint16_t* xb = static_cast<const uint16_t*>(x);
  for (int64_t q = 0; q < blocks; ++q) {
    float v[4];
    for (int i = 0; i < 4; ++i) {
      const int64_t k = 4 * q + i;
      v[i] = k >= K ? 0.f : float32_x ? xf[k] : bf16_bits_to_float(xb[k]);
      if (!std::isfinite(v[i])) return false;
    }
    if (4 * q < K) xsum[std::min(groups - 1, 4 * q / group_size)] += v[0] + v[1] + v[2] + v[3];
    __m512 t = _mm512_mul_ps(c[0], _mm512_set1_ps(v[0]));
    for (int i = 1; i < 4; ++i) t = _mm512_fmadd_ps(c[i], _mm512_set1_ps(v[i]), t);
    const __m256i hi = to_bf16_bits(t);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(thi + 16 * q), hi);
    if (tlo) {
      const __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(hi), 16));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(tlo + 16 * q),
                          to_bf16_bits(_mm512_sub_ps(t, hf)));
    }
  }
  return true;
}

void kbit_gemv_lut_avx512_bf16(const KbitLutProblem& p, const KbitLutWeight& w, int64_t pass_begin,
                               int64_t pass_end) {
  if (p.tlo)
    lut_passes<true>(p, w, pass_begin, pass_end);
  else
    lut_passes<false>(p, w, pass_begin, pass_end);
}

}  // namespace cpu
}  // namespace fusenas
