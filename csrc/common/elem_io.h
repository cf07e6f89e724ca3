// Scalar loads / stores of one activation dtype as float32, for block bodies
// that run on the device and in the host emulation (common/block_exec.h).
// The dtype is a template argument: no switch inside the inner loops.
#pragma once

#include <cstdint>

#include "common/block_exec.h"
#include "common/dtype_convert.h"
#include "common/fp16_convert.h"
#include "fusenas/kbit.h"  // DType

namespace fusenas {

template <DType DT>
struct ElemIO;

template <>
struct ElemIO<DType::kFloat32> {
  static FUSENAS_HD float load(const void* p, int64_t i) {
    return blockexec::ldg(static_cast<const float*>(p) + i);
  }
  static FUSENAS_HD void store(void* p, int64_t i, float v) { static_cast<float*>(p)[i] = v; }
};

template <>
struct ElemIO<DType::kBFloat16> {
  static FUSENAS_HD float load(const void* p, int64_t i) {
    return bf16_bits_to_float(blockexec::ldg(static_cast<const uint16_t*>(p) + i));
  }
  static FUSENAS_HD void store(void* p, int64_t i, float v) {
    static_cast<uint16_t*>(p)[i] = float_to_bf16_bits(v);
  }
};

template <>
struct ElemIO<DType::kFloat16> {
  static FUSENAS_HD float load(const void* p, int64_t i) {
    return half_bits_to_float(blockexec::ldg(static_cast<const uint16_t*>(p) + i));
  }
  static FUSENAS_HD void store(void* p, int64_t i, float v) {
    static_cast<uint16_t*>(p)[i] = float_to_half_bits(v);
  }
};

// Element offsets of a 4-D (N, C, H, W) tensor, contiguous in NCHW or in
// channels_last (NHWC) order: the kernels read both layouts directly.
struct Strides4 {
  int64_t n, c, h, w;
};

FUSENAS_HD Strides4 make_strides4(int64_t C, int64_t H, int64_t W, bool channels_last) {
  if (channels_last) return Strides4{H * W * C, 1, W * C, C};
  return Strides4{C * H * W, H * W, W, 1};
}

FUSENAS_HD int64_t offset4(const Strides4& s, int64_t n, int64_t c, int64_t h, int64_t w) {
  return n * s.n + c * s.c + h * s.h + w * s.w;
}

}  // namespace fusenas
