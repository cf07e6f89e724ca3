// Large-M k-bit GEMM for bfloat16 x on AVX512-BF16 CPUs (compiled with
// -mavx512bf16, entered only when cpuid reports it), for the weights of the
// code GEMV (kbit_gemv_avx512_bf16.cpp): 2-, 3-, 4-bit and ternary codes whose
// scale groups are whole 128-element blocks.
//
// Why: the float GEMM (kbit_matmul_avx512_bf16.cpp) decodes each panel to
// float32, transposes it in 16 x 16 float blocks and converts pairs to
// bfloat16 (about a sixth of its time at M = 128). Here a shift and a vpermw
// on a per-(row, group) table turn 32 codes of a row straight into 16
// bfloat16 pairs of weights (q - z) * s in the decoder's order, so one 16 x 16
// transpose of 32-bit pairs gives the micro-kernel's panel; x comes permuted
// to the same order (kbit_gemv_bf16_prepare). The weights are rounded to
// bfloat16 once, as in the float GEMM and bfloat16 F.linear: keeping the codes
// exact and scaling each group's products on their way out of the
// micro-kernel cost 5-6% at M = 128..512 (4096 x 4096, group 128).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu/kbit_bf16_micro_avx512.h"
#include "cpu/kbit_decode_avx512.h"
#include "cpu/kbit_kernels.h"
#include "cpu/kbit_panel_avx512.h"
#include "cpu/thread_scratch.h"

namespace fusenas {
namespace cpu {

using namespace avx512;

namespace {

// Cache blocking (GotoBLAS order): the weights of kNc output rows x
// kKcBlocks blocks of K become one block of panels (kNc x 512 pairs x 4 bytes
// = 256 KB, held in L2); each 12-row sliver of x over those K (12 KB, held in
// L1) then runs against every panel of the block. x is read once per block of
// panels and the output once per chunk of K. Sweeping all of K per 32-row
// panel instead (as the float GEMM does) re-reads x from L3 for every panel
// at large M: 4096 x 4096, M = 512 took 19.9-20.9 ms that way, 18.6-18.9 ms
// blocked (256 x 4 blocks then; 128 x 8 and 256 x 4 measured the same).
constexpr int64_t kNc = 128;
constexpr int64_t kKcBlocks = 8;
constexpr int64_t kKcPairs = kKcBlocks * kbit::kBlock / 2;  // 512
constexpr int64_t kPanelWords = kKcPairs * kNr;             // one panel, 32-bit pairs
// Row stride of the row-major scratch, whose rows the transpose reads 16 at
// a time (2 KB apart they fell in two L1 sets; 1 thread, M = 128: 21.4-21.6 ->
// 20.6-20.9 ms).
constexpr int64_t kRowsStride = odd_line_stride<uint32_t>(kKcPairs);

// Weights of rows [n0, n0 + rows) x blocks [b0, b0 + nblk) as bfloat16 pairs,
// k-pair major as the micro-kernel reads them: bp[p * 32 + c] holds the pair
// p (decoder order) of row n0 + c; rows past `rows` are zero. rows_buf:
// kNr rows of kRowsStride words, scratch.
template <int BITS>
void weight_panel(const KbitWeight& w, int64_t n0, int rows, int64_t b0, int64_t nblk,
                  int64_t blocks_per_group, uint32_t* rows_buf, uint32_t* bp) {
  const int64_t groups = w.K / w.group_size;
  const float zc = kbit::symmetric_zero(w.bits, w.ternary);
  for (int r = 0; r < kNr; ++r) {
    uint32_t* dst = rows_buf + r * kRowsStride;
    if (r >= rows) {
      std::memset(dst, 0, sizeof(uint32_t) * kKcPairs);
      continue;
    }
    const int64_t n = n0 + r;
    const uint8_t* row = w.codes + n * w.row_stride;
    // The codes this row's panel needs next (the next chunk of K, or the
    // first chunk of the row kNc further on), fetched into L2 while the
    // micro-kernels run: rows are streams of a few lines per chunk, too short
    // for the hardware prefetchers. 4096 x 4096, M = 128, three alternating
    // rounds: cold 4.90-4.92 ms without, 4.77-4.84 ms with; warm 4.51-4.53 ms
    // without, 4.56-4.62 ms with (the prefetch instructions' own cost).
    const int64_t nb = kbit::num_blocks(w.K);
    const bool more_k = b0 + kKcBlocks < nb;
    const uint8_t* next = more_k          ? row + (b0 + kKcBlocks) * 16 * BITS
                          : n + kNc < w.N ? row + kNc * w.row_stride
                                          : nullptr;
    const int64_t next_blocks = std::min(kKcBlocks, more_k ? nb - b0 - kKcBlocks : nb);
    int64_t g = -1;
    __m512i table = _mm512_setzero_si512();
    for (int64_t b = 0; b < nblk; ++b) {
      if ((b0 + b) / blocks_per_group != g) {
        g = (b0 + b) / blocks_per_group;
        table =
            scaled_table<BITS>(w.scales[n * groups + g], w.zeros ? w.zeros[n * groups + g] : zc);
      }
      const __m512i pl = load_planes<BITS>(row + (b0 + b) * 16 * BITS).a;
      if (next && b < next_blocks)
        _mm_prefetch(reinterpret_cast<const char*>(next + b * 16 * BITS), _MM_HINT_T1);
      FUSENAS_UNROLL for (int t = 0; t < 4; ++t) {
        const __m512i codes = t == 0 ? pl : _mm512_srli_epi16(pl, 4 * t);
        _mm512_storeu_si512(dst + b * 64 + t * 16, _mm512_permutexvar_epi16(codes, table));
      }
    }
  }
  const int64_t pairs = nblk * kbit::kBlock / 2;
  for (int64_t p = 0; p < pairs; p += 16)
    FUSENAS_UNROLL for (int h = 0; h < 2; ++h)
        transpose16(reinterpret_cast<const float*>(rows_buf + h * 16 * kRowsStride + p),
                    kRowsStride, reinterpret_cast<float*>(bp + p * kNr + h * 16), kNr);
}

template <int BITS>
void gemm(const KbitGemvBf16Problem& p, const KbitWeight& w, int64_t n_begin, int64_t n_end) {
  static constexpr auto kernels = micro_kernels();
  constexpr int64_t kPanels = kNc / kNr;
  const int64_t nb = kbit::num_blocks(w.K);
  const bool chunked = nb > kKcBlocks;
  // The block of panels (256 KB), one panel's row-major scratch (64 KB) and,
  // for a bfloat16 output over several k-chunks, the float32 partial sums of
  // the block's columns (M x kNc): the thread's scratch (thread_scratch.h),
  // not its stack; every word is written before it is read.
  const int64_t part_floats = p.ybf && chunked ? p.M * kNc : 0;
  const ThreadScratch buf(
      ScratchSlot::kKernel,
      sizeof(uint32_t) * (kPanels * kPanelWords + kNr * kRowsStride + part_floats));
  uint32_t* block = buf.as<uint32_t>();
  uint32_t* rows_buf = block + kPanels * kPanelWords;
  float* part = reinterpret_cast<float*>(rows_buf + kNr * kRowsStride);
  const int64_t groups = w.K / w.group_size;
  // Groups are whole blocks or the whole row (kbit_codes_bf16_applies).
  const int64_t blocks_per_group = groups == 1 ? nb : w.group_size / kbit::kBlock;
  for (int64_t nc0 = n_begin; nc0 < n_end; nc0 += kNc) {
    const int64_t nc = std::min(kNc, n_end - nc0);
    const int64_t panels = (nc + kNr - 1) / kNr;
    for (int64_t b0 = 0; b0 < nb; b0 += kKcBlocks) {
      const int64_t nblk = std::min(kKcBlocks, nb - b0);
      const int64_t pairs = nblk * kbit::kBlock / 2;
      for (int64_t j = 0; j < panels; ++j) {
        const int rows = static_cast<int>(std::min<int64_t>(kNr, nc - j * kNr));
        weight_panel<BITS>(w, nc0 + j * kNr, rows, b0, nblk, blocks_per_group, rows_buf,
                           block + j * kPanelWords);
      }
      const bool first = b0 == 0, last = b0 + nblk == nb;
      for (int64_t m = 0; m < p.M; m += kMr) {
        const int mr = static_cast<int>(std::min<int64_t>(kMr, p.M - m));
        for (int64_t j = 0; j < panels; ++j) {
          const int64_t n0 = nc0 + j * kNr;
          const int rows = static_cast<int>(std::min<int64_t>(kNr, nc - j * kNr));
          const __mmask16 m0 = tail_mask(rows), m1 = tail_mask(std::max(0, rows - 16));
          float* c = !p.ybf ? p.y + m * p.ldy + n0 : chunked ? part + m * kNc + j * kNr : nullptr;
          const int64_t ldc = p.ybf ? kNc : p.ldy;
          kernels[mr - 1](p.xhi + m * p.ldx + b0 * kbit::kBlock, p.ldx,
                          reinterpret_cast<const uint16_t*>(block + j * kPanelWords), pairs, c, ldc,
                          m0, m1, first, (last && p.bias) ? p.bias + n0 : nullptr,
                          p.ybf && last ? p.ybf + m * p.ldy + n0 : nullptr, p.ldy);
        }
      }
    }
  }
}

}  // namespace

void kbit_gemm_codes_avx512_bf16(const KbitGemvBf16Problem& p, const KbitWeight& w, int64_t n_begin,
                                 int64_t n_end) {
  switch (w.bits) {
    case 2:
      gemm<2>(p, w, n_begin, n_end);
      break;
    case 3:
      gemm<3>(p, w, n_begin, n_end);
      break;
    default:
      gemm<4>(p, w, n_begin, n_end);
      break;
  }
}

}  // namespace cpu
}  // namespace fusenas
