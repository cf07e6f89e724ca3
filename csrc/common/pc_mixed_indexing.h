// Per-element index math of the CUDA PC-DARTS mixed op, host/device: the 3x3
// pooling windows (padding 1) and the 2x2 bypass max-pool,
// with torch's max-pool rule (a later element wins only if strictly greater,
// or NaN), so gradients route to the element torch's indices would name.
#pragma once

#include <cstdint>

#include "common/elem_io.h"
#include "common/pc_mixed_index.h"

namespace fusenas {
namespace pc_mixed_gpu {

// Channel shuffle: the CPU kernels' maps (common/pc_mixed_index.h).
FUSENAS_HD int cat_channel_of_out(int oc, int k, int ck) {
  return static_cast<int>(pc_mixed::concat_channel_of(oc, ck, k));
}
FUSENAS_HD int out_channel_of_cat(int c, int k, int ck) {
  return static_cast<int>(pc_mixed::shuffled_channel(c, ck, k));
}

// Output size of the 3x3 / padding-1 pools (and of the op) at `stride`.
FUSENAS_HD int pooled_size(int in, int stride) { return (in - 1) / stride + 1; }

struct Window {
  float max, sum;
  int count;       // valid elements (count_include_pad=False divides by it)
  int argh, argw;  // first maximum, in row-major scan order
};

FUSENAS_HD bool replaces_max(float v, float m) { return v > m || v != v; }

// 3x3 window at (ho, wo), stride s, padding 1, of channel c of image n.
template <DType DT>
FUSENAS_HD Window pool3x3(const void* x, const Strides4& xs, int n, int c, int ho, int wo, int H,
                          int W, int s) {
  const int h0 = ho * s - 1, w0 = wo * s - 1;
  const int hb = h0 < 0 ? 0 : h0, he = h0 + 3 < H ? h0 + 3 : H;
  const int wb = w0 < 0 ? 0 : w0, we = w0 + 3 < W ? w0 + 3 : W;
  Window r;
  r.max = -__builtin_huge_valf();
  r.sum = 0.f;
  r.count = (he - hb) * (we - wb);
  r.argh = hb;
  r.argw = wb;
  for (int h = hb; h < he; ++h) {
    for (int w = wb; w < we; ++w) {
      const float v = ElemIO<DT>::load(x, offset4(xs, n, c, h, w));
      r.sum += v;
      if (replaces_max(v, r.max)) {
        r.max = v;
        r.argh = h;
        r.argw = w;
      }
    }
  }
  return r;
}

// 2x2 / stride-2 max-pool window at (ho, wo) (H and W even: always full).
template <DType DT>
FUSENAS_HD Window pool2x2(const void* x, const Strides4& xs, int n, int c, int ho, int wo) {
  Window r;
  r.max = -__builtin_huge_valf();
  r.sum = 0.f;
  r.count = 4;
  r.argh = 2 * ho;
  r.argw = 2 * wo;
  for (int h = 2 * ho; h < 2 * ho + 2; ++h) {
    for (int w = 2 * wo; w < 2 * wo + 2; ++w) {
      const float v = ElemIO<DT>::load(x, offset4(xs, n, c, h, w));
      if (replaces_max(v, r.max)) {
        r.max = v;
        r.argh = h;
        r.argw = w;
      }
    }
  }
  return r;
}

// Pooled rows (or columns) whose 3x3 window (padding 1, stride s) contains
// input row h: [first, last], clipped to [0, out).
FUSENAS_HD int first_window(int h, int s) { return h <= 1 ? 0 : (h - 1 + s - 1) / s; }
FUSENAS_HD int last_window(int h, int s, int out) {
  const int l = (h + 1) / s;
  return l < out - 1 ? l : out - 1;
}

// Decomposes a linear index of a (N, C, H, W) tensor dense in NCHW or NHWC
// order (the order the kernels walk the tensor they write).
FUSENAS_HD void unravel4(int64_t e, int C, int H, int W, bool channels_last, int& n, int& c, int& h,
                         int& w) {
  if (channels_last) {
    c = static_cast<int>(e % C);
    e /= C;
    w = static_cast<int>(e % W);
    e /= W;
    h = static_cast<int>(e % H);
    n = static_cast<int>(e / H);
  } else {
    w = static_cast<int>(e % W);
    e /= W;
    h = static_cast<int>(e % H);
    e /= H;
    c = static_cast<int>(e % C);
    n = static_cast<int>(e / C);
  }
}

}  // namespace pc_mixed_gpu
}  // namespace fusenas
