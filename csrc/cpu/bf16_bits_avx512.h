// float32 -> bfloat16 bits in AVX-512 integer instructions, so kernels built
// without -mavx512bf16 (the VNNI table GEMV) round their output as the others do.
// Include only from translation units compiled with AVX-512 flags.
#pragma once

#include <immintrin.h>

namespace fusenas {
namespace cpu {
namespace avx512 {

// 16 float32 -> bfloat16 bits, rounded to nearest even with NaN kept quiet,
// bit for bit as float_to_bf16_bits (common/dtype_convert.h). Not vcvtneps2bf16:
// it treats denormal inputs as zero.
inline __m256i to_bf16_bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), odd));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  const __m512i quiet = _mm512_or_si512(u, _mm512_set1_epi32(0x400000));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(_mm512_mask_mov_epi32(rounded, nan, quiet), 16));
}

}  // namespace avx512
}  // namespace cpu
}  // namespace fusenas
