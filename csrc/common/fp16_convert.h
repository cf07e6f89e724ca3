// float16 <-> float32 conversions shared by CPU and CUDA code (dtype_convert.h
// holds the bfloat16 ones). On the device they are single cvt instructions;
// the host versions are exact bit manipulations (round-to-nearest-even, NaN
// kept quiet, overflow to infinity), so a host build of the CUDA kernels and
// the device give the same bits.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace fusenas {

FUSENAS_HD float half_bits_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
#else
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1fu) {
    u = sign | 0x7f800000u | (mant << 13);  // infinity or NaN
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (mant << 13);  // rebias 15 -> 127
  } else {
    // zero or subnormal: mant * 2^-24, exact in float32
    const float f = static_cast<float>(mant) * 5.9604644775390625e-8f;
    memcpy(&u, &f, sizeof(u));
    u |= sign;
  }
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

FUSENAS_HD uint16_t float_to_half_bits(float f) {
#if defined(__CUDA_ARCH__)
  uint16_t h;
  asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
  return h;
#else
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (u >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: infinity
  if (u < 0x38800000u) {
    // below 2^-14: subnormal half. |f| * 2^24 rounded to an integer, RNE by
    // the float adder (the sum stays below 2^24, so its ulp is 1).
    float a;
    memcpy(&a, &u, sizeof(a));
    const float r = (a * 16777216.0f + 8388608.0f) - 8388608.0f;
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(r));
  }
  u += 0xfffu + ((u >> 13) & 1u);  // round to nearest even at bit 13
  return static_cast<uint16_t>(sign | ((u - (112u << 23)) >> 13));
#endif
}

}  // namespace fusenas
