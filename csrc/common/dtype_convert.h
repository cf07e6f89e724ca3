// bfloat16 / float16 <-> float32 conversions shared by CPU and CUDA code.
// bfloat16 is the top half of a float32; rounding to it is round-to-nearest-
// even, NaN kept quiet (same as torch).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace fusenas {

FUSENAS_HD float bf16_bits_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

FUSENAS_HD uint16_t float_to_bf16_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace fusenas
