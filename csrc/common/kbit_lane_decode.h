// Thread views of the packed k-bit layout (kbit_layout.h, format v1) used by
// the CUDA kernels, written as plain host/device functions so that a host
// test can check every (bits, lane, field, word) against kbit::code_at.
//
// In a plane of width p (4p words), element e of a block sits in word e % 4p
// at field e / 4p. Two ways to hand a block to threads follow from that:
//
// - LaneView (GEMV): P lanes share a block, P = the widest plane's width (8,
//   4 or 2). Lane j reads ONE 16-byte chunk per plane: chunk j of the widest
//   plane, chunk j % p of a narrower plane of width p, whose words it shifts
//   right by p * (j / p). Afterwards element e = 4P*f + 4j + c of the block
//   has its bits, in every plane, at bit P*f of word c: one uint4 load per
//   plane per lane, 4 consecutive elements per field (one float4 of x), and
//   compile-time shifts for every field.
// - OctetView (GEMM tiles, dequantize): a thread owns 8 consecutive elements
//   e0 .. e0+7 (e0 = 8o). From a plane of width p >= 2 it needs the 8 words
//   starting at e0 % 4p (two uint4) at field e0 / 4p; from a 1-bit plane all
//   4 words (one uint4). For the four octets 32q + 8j (q = 0..3) the words
//   are the same, so a GEMM thread loads them once per block.
#pragma once

#include <cstdint>
#include <cstring>

#include "common/kbit_layout.h"
#include "common/macros.h"

namespace fusenas {
namespace kbit {

// Compile-time bit planes of a BITS-bit code: widths 8, or 4 / 2 / 1 for the
// set bits, widest (lowest code bits) first.
template <int BITS>
struct PlaneSpec {
  static_assert(BITS >= 2 && BITS <= 8, "bits must be 2..8");
  static constexpr int kCount = BITS == 8 ? 1 : ((BITS >> 2) & 1) + ((BITS >> 1) & 1) + (BITS & 1);
  static constexpr FUSENAS_HD int width(int i) {
    if (BITS == 8) return 8;
    int k = 0;
    for (int w = 4; w >= 1; w >>= 1) {
      if (BITS & w) {
        if (k == i) return w;
        ++k;
      }
    }
    return 0;
  }
  // Bit offset of plane i inside the code.
  static constexpr FUSENAS_HD int shift(int i) {
    int s = 0;
    for (int k = 0; k < i; ++k) s += width(k);
    return s;
  }
  // A plane of width p takes 16p bytes, so plane i starts at 16 * shift(i).
  static constexpr FUSENAS_HD int byte_offset(int i) { return 16 * shift(i); }
  static constexpr FUSENAS_HD uint32_t mask(int i) { return (1u << width(i)) - 1u; }
  static constexpr int kWidest = BITS == 8 ? 8 : ((BITS & 4) ? 4 : 2);
};

// 2^23 + v as a float, exact for v < 2^23: v or-ed into the mantissa of 2^23.
// On the GPU that is one LOP3 (the i2f unit runs at a quarter of the FP32
// rate), and subtracting 2^23 + z, when exact, gives q - z in one FADD.
FUSENAS_HD float uint_plus_2p23(uint32_t v) {
  const uint32_t u = v | 0x4B000000u;
  float f;
  memcpy(&f, &u, sizeof(f));
  return f;
}

// Exact float of a small unsigned integer v < 2^23.
FUSENAS_HD float small_uint_to_float(uint32_t v) { return uint_plus_2p23(v) - 8388608.0f; }

// A zero point z split for uint_plus_2p23: zc = fl(2^23 + z) and the residual
// zr = z - (zc - 2^23), both exact, so that for a code q
//   (uint_plus_2p23(q) - zc) - zr == fl(q - z)   (one rounding, as q - z),
// and zr == 0 (the second subtraction can be skipped) when z is an integer.
struct SplitZero {
  float zc;
  float zr;
};
FUSENAS_HD SplitZero split_zero(float z) {
  const float zc = 8388608.0f + z;
  return SplitZero{zc, z - (zc - 8388608.0f)};
}

template <int BITS>
struct LaneView {
  using Spec = PlaneSpec<BITS>;
  static constexpr int kLanes = Spec::kWidest;        // lanes per 128-element block
  static constexpr int kFields = 32 / Spec::kWidest;  // fields per word
  static constexpr int kPlanes = Spec::kCount;

  // Byte offset, inside a block, of the 16 bytes lane j reads from plane i.
  static FUSENAS_HD int chunk_offset(int i, int j) {
    return Spec::byte_offset(i) + 16 * (j % Spec::width(i));
  }
  // Right shift lane j applies to the words of plane i.
  static FUSENAS_HD int pre_shift(int i, int j) { return Spec::width(i) * (j / Spec::width(i)); }
  // Block element of (lane j, field f, word c).
  static FUSENAS_HD int element(int j, int f, int c) { return 4 * kLanes * f + 4 * j + c; }
  // Code of field f from the pre-shifted words w[i] (word c of plane i).
  static FUSENAS_HD uint32_t code(const uint32_t (&w)[kPlanes], int f) {
    uint32_t v = 0;
#pragma unroll
    for (int i = 0; i < kPlanes; ++i)
      v |= ((w[i] >> (kLanes * f)) & Spec::mask(i)) << Spec::shift(i);
    return v;
  }
};

template <int BITS>
struct OctetView {
  using Spec = PlaneSpec<BITS>;
  static constexpr int kPlanes = Spec::kCount;

  // Number of 16-byte chunks a thread loads from plane i (2, or 1 for 1-bit).
  static constexpr FUSENAS_HD int chunks(int i) { return Spec::width(i) >= 2 ? 2 : 1; }
  // Byte offset, inside a block, of the first chunk of plane i for octet e0.
  static FUSENAS_HD int chunk_offset(int i, int e0) {
    const int p = Spec::width(i);
    return Spec::byte_offset(i) + (p >= 2 ? 4 * (e0 % (4 * p)) : 0);
  }
  // Code of element e0 + t from the words loaded for e0 (w[i][0..7], or
  // w[i][0..3] for a 1-bit plane). e0 may be any octet whose words are the
  // loaded ones (same e0 % 4p for every plane).
  static FUSENAS_HD uint32_t code(const uint32_t (&w)[kPlanes][8], int e0, int t) {
    uint32_t v = 0;
#pragma unroll
    for (int i = 0; i < kPlanes; ++i) {
      const int p = Spec::width(i);
      if (p >= 2) {
        const int field = e0 / (4 * p);
        v |= ((w[i][t] >> (p * field)) & Spec::mask(i)) << Spec::shift(i);
      } else {
        const int field = e0 / 4 + t / 4;
        v |= ((w[i][t & 3] >> field) & 1u) << Spec::shift(i);
      }
    }
    return v;
  }
};

}  // namespace kbit
}  // namespace fusenas
