// Software prefetch of weights that a call reads once (the batch-1 GEMVs).
#pragma once

#include <immintrin.h>

namespace fusenas {
namespace cpu {

// Prefetches the line holding p into L1 as non-temporal data (prefetchnta)
// when nta is set: pass cpu::streamed_prefetch_nta().
// AMD's optimization guides describe a non-temporal line that came from
// memory as never evicted into L2; on Zen, whose L3 is filled with L2's
// victims, it is then not written into the L3 either. A weight stream that
// will not be read again in the call thus stops pushing each line through L2
// and L3 on its way out. Measured on Zen 5 (2 threads, weights cold,
// alternated in one process) against prefetcht0, K x N, in ms:
//   4-bit stream, bfloat16 x: 11008 x 4096 0.427 / 0.467 (fast memory);
//     4096 x 11008 0.507 / 0.556 (slow); 4096 x 4096 0.199 / 0.204 (slow)
//   4-bit stream, float32 x: 4096 x 11008 0.519 / 0.544; 4096 x 4096
//     0.201 / 0.211 (slow)
//   4-bit one-row tiles (float32 x, 11008 x 4096), 16 KB ahead against
//     prefetcht0 32 KB ahead: 0.623 / 0.649 (slow), 0.490 / 0.496 (fast);
//     32 KB ahead in both, 1.2-12% faster in four runs
//   2-bit tables: 4096 x 11008 0.346 / 0.368; 11008 x 4096 0.347 / 0.357;
//     4096 x 4096 0.104 / 0.109 (fast), 0.137 / 0.141 (slow)
// Warm (weights in L3, reused every call) the times did not change: the lines
// L3 already holds stay there. Tiles of two or more x rows keep prefetcht0:
// at M = 2 the two came out the same, and from M = 4 the tiles are
// compute-bound.
// Not measured on Intel, where prefetchnta also skips L2. Where L1D is
// smaller than 48 KB (streamed_prefetch_nta() false) it is prefetcht0.
inline void prefetch_streamed(const void* p, bool nta) {
  if (nta)
    _mm_prefetch(static_cast<const char*>(p), _MM_HINT_NTA);
  else
    _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0);
}

}  // namespace cpu
}  // namespace fusenas
