// The packed k-bit weight layout (docs/kbit_format.md, format version 1).
//
// Shared by the CPU and CUDA kernels and mirrored by
// python/fusenas/quant/packing.py. A row of K codes is cut into blocks of 128;
// a block of a b-bit weight takes 16*b bytes, split into bit planes of width
// 4, 2 or 1 (low bits first): 3 = 2+1, 5 = 4+1, 6 = 4+2, 7 = 4+2+1.
// Inside a plane of width p (4p little-endian uint32 words), element e sits in
// word e % (4p) at field e / (4p). So 16 consecutive elements 16i..16i+15 come
// from 16 consecutive words at one shift when 4p >= 16, or from a broadcast of
// all 4p words with a per-lane shift when 4p < 16: one vector load and one
// shift per 16 elements on AVX-512, two 8-lane halves on AVX2, and one 16-byte
// load per plane per lane on CUDA (kbit_lane_decode.h), for every bit width.
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace fusenas {
namespace kbit {

constexpr int kFormatVersion = 1;
constexpr int kBlock = 128;  // elements of K per block
constexpr int kTernaryBits = 2;
// CPU table layout of 2- and 3-bit codes (kbit_format.md, "CPU table
// layout"): rows in tiles of 16, tiles in passes of 8 that the GEMV reads as
// one stream.
constexpr int kLutTilesPerPass = 8;
// 64-byte vectors per tile and pair of 16-input chunks: (b1, b0) of each chunk,
// and for 3-bit codes the b2 plane of both.
constexpr int lut_vectors_per_pair(int bits) { return bits == 3 ? 3 : 2; }

// Number of bit planes of a b-bit code, and the width of plane i (low first).
FUSENAS_HD int plane_count(int bits) {
  return bits == 8 ? 1 : ((bits >> 2) & 1) + ((bits >> 1) & 1) + (bits & 1);
}
FUSENAS_HD int plane_width(int bits, int i) {
  if (bits == 8) return 8;
  // planes in decreasing width order: 4, then 2, then 1, restricted to set bits.
  int widths[3] = {4, 2, 1};
  int k = 0;
  for (int w = 0; w < 3; ++w) {
    if (bits & widths[w]) {
      if (k == i) return widths[w];
      ++k;
    }
  }
  return 0;
}
// Bit offset of plane i inside the code (sum of the widths before it).
FUSENAS_HD int plane_shift(int bits, int i) {
  int s = 0;
  for (int j = 0; j < i; ++j) s += plane_width(bits, j);
  return s;
}

FUSENAS_HD int64_t num_blocks(int64_t K) { return (K + kBlock - 1) / kBlock; }
FUSENAS_HD int64_t row_bytes(int64_t K, int bits) { return num_blocks(K) * 16 * bits; }

// Zero point of symmetric weights: codes are unsigned, 0 .. 2^b - 1.
FUSENAS_HD float symmetric_zero(int bits, bool ternary) {
  return ternary ? 1.0f : static_cast<float>(1 << (bits - 1));
}

// Code of element e (0 <= e < 128) of one block. Scalar path and tests.
FUSENAS_HD uint32_t code_at(const uint8_t* block, int bits, int e) {
  uint32_t code = 0;
  const int planes = plane_count(bits);
  int byte_offset = 0;
  for (int i = 0; i < planes; ++i) {
    const int p = plane_width(bits, i);
    const int words = 4 * p;
    const int word = e % words, field = e / words;
    const uint8_t* w = block + byte_offset + 4 * word;
    const uint32_t v = static_cast<uint32_t>(w[0]) | (static_cast<uint32_t>(w[1]) << 8) |
                       (static_cast<uint32_t>(w[2]) << 16) | (static_cast<uint32_t>(w[3]) << 24);
    code |= ((v >> (p * field)) & ((1u << p) - 1u)) << plane_shift(bits, i);
    byte_offset += 16 * p;
  }
  return code;
}

}  // namespace kbit
}  // namespace fusenas
