// Tile geometry and layout conversions shared by the forward and backward
// drivers of the low-rank conv.
//
// A tile is one image and a block of R output rows. Its input lives in
// "phase planes": the zero-padded input rows the tile needs, split by the
// stride into sh x sw phases (rows / columns congruent mod the stride) and
// stored per channel as flattened rows of Wq = ceil((W + 2 pw) / sw) floats.
// In that layout every kernel tap (i, j) of a conv reads, for output pixel
// p = row * Wq + col of the tile's padded-width grid, the plane element
// p + offset(i, j): a whole tile of a conv stage is then one GEMM over P
// flattened pixels whose B rows are plane pointers (no im2col). Columns
// col >= Wo of the grid are computed and thrown away (about 2 pw / Wq of the
// work: 3% at 56 px, 20% at 8 px), the price of contiguous vectors.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

#include "common/dtype_convert.h"
#include "cpu/cpu_dispatch.h"
#include "cpu/lowrank_conv_kernels.h"
#include "fusenas/lowrank.h"

namespace fusenas {
namespace lowrank_detail {

using cpu::lowrank::kPixelAlign;

inline int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline const cpu::lowrank::Kernels& pick_kernels() {
  switch (cpu::active_isa()) {
    case cpu::Isa::kAvx512:
      return cpu::lowrank::kernels_avx512();
    case cpu::Isa::kAvx2:
      return cpu::lowrank::kernels_avx2();
    default:
      return cpu::lowrank::kernels_scalar();
  }
}

// The pixel-major path's kernels for layer s: the process's, except on a host
// whose AVX-512 is double-pumped (Zen 4), where 8-wide vectors do the same
// multiply-adds per cycle and round the rank up to 8 instead of 16: layers
// whose rank % 16 is 1..8 take the 8-wide kernels on the AVX-512 registers
// (forward, 2 threads, min of alternating processes, against 16-wide: 128 ch
// @28 channel rank 19, 24 columns against 32, 5.55 against 6.31 ms; 32 ch @16
// spatial rank 8 0.66 against 0.84; where the rounding is the same AVX-512 is
// as fast or faster: 64 ch @56 channel rank 29 12.9 against 16.6 ms). Those
// were the AVX2 kernels (16 registers, 4 x 3 tiles) until session 22; the
// avx512-ymm set's 32 registers take Cfg512's tiles: training step 3-20%
// faster on the 9 such layers of the benchmark grid (32 ch @16 channel rank 5
// 3.2 -> 2.55 ms, 128 ch @28 rank 19 18.1 -> 16.7), forward level or faster
// except 256 ch @14 rank 38 (5.9-6.0 -> 6.2-6.3 ms). FUSENAS_CPU_ISA, when
// set, is obeyed as it is; FUSENAS_LOWRANK_VEC8=0 / 1 switches the choice off / on.
inline const cpu::lowrank::Kernels& pixel_major_kernels(const LowRankConvShape& s) {
  const cpu::lowrank::Kernels& k = pick_kernels();
  if (cpu::active_isa() != cpu::Isa::kAvx512) return k;
  const char* force = std::getenv("FUSENAS_LOWRANK_VEC8");
  if (force != nullptr && *force != '\0')
    return std::strcmp(force, "1") == 0 ? cpu::lowrank::kernels_avx512_ymm() : k;
  const char* isa = std::getenv("FUSENAS_CPU_ISA");
  if ((isa != nullptr && *isa != '\0') || !cpu::avx512_double_pumped()) return k;
  const int64_t r = s.rank % 16;
  return r >= 1 && r <= 8 ? cpu::lowrank::kernels_avx512_ymm() : k;
}

// 64-byte aligned float buffer, zero-filled unless told otherwise (zeros matter
// to the plane path: the slack past the written region is read by whole-vector
// loads and must hold finite values; the pixel-major path writes before it reads).
struct Buffer {
  std::unique_ptr<float, decltype(&std::free)> p{nullptr, &std::free};
  explicit Buffer(int64_t n, bool zero = true) {
    const size_t bytes = static_cast<size_t>(round_up(std::max<int64_t>(n, 16), 16)) * 4;
    p.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    if (!p) throw std::bad_alloc();
    if (zero) std::memset(p.get(), 0, bytes);
  }
  float* get() const { return p.get(); }
};

// Output size of the dense conv the two factors replace.
inline int64_t output_height(const LowRankConvShape& s) {
  return (s.H + 2 * s.ph - s.dh * (s.kh - 1) - 1) / s.sh + 1;
}
inline int64_t output_width(const LowRankConvShape& s) {
  return (s.W + 2 * s.pw - s.dw * (s.kw - 1) - 1) / s.sw + 1;
}

struct Geometry {
  LowRankConvShape s;
  bool channel;
  int64_t Ho, Wo;
  int64_t Wq;      // plane row length (padded width / sw, rounded up)
  int64_t qh_max;  // largest row offset of a tap in plane rows: floor((kh-1) dh / sh)
  int64_t qw_max;  // largest column offset of a tap: floor((kw-1) dw / sw)
  int64_t R;       // output rows per tile
  int64_t ntiles;  // tiles per image
  int64_t RQ;      // rows per phase plane: R + qh_max + 1
  int64_t plane;   // floats per phase plane (with read slack)
  int64_t Pmax;    // pixels of a full tile, padded to kPixelAlign
  int64_t K1, K2;  // GEMM depth of the first / second factor
  int64_t planes_x() const { return s.sh * s.sw * s.C; }
};

// R is chosen for about `target_pixels` grid pixels per tile (the rank-r
// intermediate, r x P floats, and the input planes then sit in L2), fewer
// when that would leave a thread without a tile.
inline Geometry make_geometry(const LowRankConvShape& s, int threads, int64_t target_pixels) {
  Geometry g;
  g.s = s;
  g.channel = s.scheme == LowRankScheme::kChannel;
  g.Ho = output_height(s);
  g.Wo = output_width(s);
  g.Wq = ceil_div(s.W + 2 * s.pw, s.sw);
  g.qh_max = (s.kh - 1) * s.dh / s.sh;
  g.qw_max = (s.kw - 1) * s.dw / s.sw;
  int64_t R = std::clamp<int64_t>(ceil_div(target_pixels, g.Wq), 1, g.Ho);
  while (R > 1 && s.N * ceil_div(g.Ho, R) < 2 * threads) R = ceil_div(R, 2);
  g.R = R;
  g.ntiles = ceil_div(g.Ho, R);
  g.RQ = R + g.qh_max + 1;
  g.Pmax = round_up(R * g.Wq, kPixelAlign);
  // Reads reach pixel Pmax - 1 + qh_max * Wq + qw_max < RQ * Wq + kPixelAlign.
  g.plane = round_up(g.RQ * g.Wq, kPixelAlign) + kPixelAlign;
  g.K1 = g.channel ? s.C * s.kh * s.kw : s.C * s.kh;
  g.K2 = g.channel ? s.rank : s.rank * s.kw;
  return g;
}

// Plane offset of the first factor's tap k (order of w1's flattened rows):
// channel k = (c, i, j) reads phase ((i dh) % sh, (j dw) % sw); spatial
// k = (c, i) reads phase ((i dh) % sh, b) with b the column phase, added by
// the caller as b * C planes.
inline std::vector<int64_t> stage1_offsets(const Geometry& g) {
  const auto& s = g.s;
  std::vector<int64_t> off(static_cast<size_t>(g.K1));
  const int64_t kw = g.channel ? s.kw : 1;
  for (int64_t c = 0; c < s.C; ++c)
    for (int64_t i = 0; i < s.kh; ++i)
      for (int64_t j = 0; j < kw; ++j) {
        const int64_t a = (i * s.dh) % s.sh, b = g.channel ? (j * s.dw) % s.sw : 0;
        const int64_t col = g.channel ? j * s.dw / s.sw : 0;
        off[static_cast<size_t>((c * s.kh + i) * kw + j)] =
            ((a * s.sw + b) * s.C + c) * g.plane + (i * s.dh / s.sh) * g.Wq + col;
      }
  return off;
}

// Offset of the second factor's tap k into the intermediate planes (one per
// rank channel, spatial: one per (column phase, rank channel)), tplane floats
// each: channel k = r; spatial k = (r, j).
inline std::vector<int64_t> stage2_offsets(const Geometry& g, int64_t tplane) {
  const auto& s = g.s;
  std::vector<int64_t> off(static_cast<size_t>(g.K2));
  for (int64_t r = 0; r < s.rank; ++r) {
    if (g.channel) {
      off[static_cast<size_t>(r)] = r * tplane;
      continue;
    }
    for (int64_t j = 0; j < s.kw; ++j) {
      const int64_t b = (j * s.dw) % s.sw;
      off[static_cast<size_t>(r * s.kw + j)] = (b * s.rank + r) * tplane + j * s.dw / s.sw;
    }
  }
  return off;
}

template <class T>
inline float to_f32(T v);
template <>
inline float to_f32<float>(float v) {
  return v;
}
template <>
inline float to_f32<uint16_t>(uint16_t v) {
  return bf16_bits_to_float(v);
}
template <class T>
inline T from_f32(float v);
template <>
inline float from_f32<float>(float v) {
  return v;
}
template <>
inline uint16_t from_f32<uint16_t>(float v) {
  return float_to_bf16_bits(v);
}

// A float32 weight as it is, or a float32 copy of a bfloat16 one (in storage).
template <class T>
const float* as_f32(const T* w, int64_t n, std::vector<float>& storage) {
  if constexpr (std::is_same_v<T, float>) {
    return w;
  } else {
    storage.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) storage[static_cast<size_t>(i)] = to_f32(w[i]);
    return storage.data();
  }
}

// rows x cols row-major matrix (source dtype) -> float panels of `mr` rows:
// panel p holds row p*mr + i, column k at [(p * cols + k) * mr + i].
template <class T>
std::vector<float> pack_panels(const T* src, int64_t rows, int64_t cols, int mr) {
  const int64_t panels = ceil_div(rows, mr);
  std::vector<float> out(static_cast<size_t>(panels * cols * mr), 0.f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < cols; ++k)
      out[static_cast<size_t>(((r / mr) * cols + k) * mr + r % mr)] = to_f32(src[r * cols + k]);
  return out;
}

template <class T>
inline void convert_row(const T* src, int64_t n, float* dst) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = to_f32(src[i]);
  }
}

// Channel-contiguous pixels -> channel planes:
// dst[c * ldd + p] = src[p * lds + c] for p < npix, c < nch (16 x 16 register
// transposes, the edges element by element).
template <class T>
void pixels_to_planes(const cpu::lowrank::Kernels& kern, const T* src, int64_t lds, int64_t npix,
                      int64_t nch, float* dst, int64_t ldd) {
  int64_t c0 = 0;
  for (; c0 + 16 <= nch; c0 += 16) {
    int64_t p0 = 0;
    for (; p0 + 16 <= npix; p0 += 16) {
      if constexpr (std::is_same_v<T, float>) {
        kern.transpose16(src + p0 * lds + c0, lds, dst + c0 * ldd + p0, ldd);
      } else {
        float tmp[16 * 16];
        for (int p = 0; p < 16; ++p)
          for (int c = 0; c < 16; ++c) tmp[p * 16 + c] = to_f32(src[(p0 + p) * lds + c0 + c]);
        kern.transpose16(tmp, 16, dst + c0 * ldd + p0, ldd);
      }
    }
    for (int64_t p = p0; p < npix; ++p)
      for (int64_t c = c0; c < c0 + 16; ++c) dst[c * ldd + p] = to_f32(src[p * lds + c]);
  }
  // The last nch % 16 channels (a rank of 14 is all tail): through a 16 x 16
  // block in L1 per 16 pixels, so the planes are still written a row of 16
  // pixels at a time rather than one element per plane per pixel.
  const int64_t tc = nch - c0;
  if (tc == 0) return;
  int64_t p0 = 0;
  alignas(64) float blk[16 * 16], out[16 * 16];
  for (; p0 + 16 <= npix; p0 += 16) {
    for (int p = 0; p < 16; ++p)
      for (int64_t c = 0; c < 16; ++c)
        blk[p * 16 + c] = c < tc ? to_f32(src[(p0 + p) * lds + c0 + c]) : 0.f;
    kern.transpose16(blk, 16, out, 16);
    for (int64_t c = 0; c < tc; ++c)
      std::memcpy(dst + (c0 + c) * ldd + p0, out + c * 16, 16 * sizeof(float));
  }
  for (int64_t c = c0; c < nch; ++c)
    for (int64_t p = p0; p < npix; ++p) dst[c * ldd + p] = to_f32(src[p * lds + c]);
}

// Channel planes -> channel-contiguous pixels:
// dst[p * ldd + c] = src[c * lds + p] for p < npix, c < nch.
template <class T>
void planes_to_pixels(const cpu::lowrank::Kernels& kern, const float* src, int64_t lds,
                      int64_t npix, int64_t nch, T* dst, int64_t ldd) {
  int64_t c0 = 0;
  for (; c0 + 16 <= nch; c0 += 16) {
    int64_t p0 = 0;
    for (; p0 + 16 <= npix; p0 += 16) {
      if constexpr (std::is_same_v<T, float>) {
        kern.transpose16(src + c0 * lds + p0, lds, dst + p0 * ldd + c0, ldd);
      } else {
        float tmp[16 * 16];
        kern.transpose16(src + c0 * lds + p0, lds, tmp, 16);
        for (int p = 0; p < 16; ++p)
          for (int c = 0; c < 16; ++c) dst[(p0 + p) * ldd + c0 + c] = from_f32<T>(tmp[p * 16 + c]);
      }
    }
    for (int64_t p = p0; p < npix; ++p)
      for (int64_t c = c0; c < c0 + 16; ++c) dst[p * ldd + c] = from_f32<T>(src[c * lds + p]);
  }
  // The last nch % 16 channels through a 16 x 16 block in L1 (see pixels_to_planes).
  const int64_t tc = nch - c0;
  if (tc == 0) return;
  int64_t p0 = 0;
  alignas(64) float blk[16 * 16], out[16 * 16];
  for (; p0 + 16 <= npix; p0 += 16) {
    for (int64_t c = 0; c < 16; ++c) {
      if (c < tc)
        std::memcpy(blk + c * 16, src + (c0 + c) * lds + p0, 16 * sizeof(float));
      else
        std::memset(blk + c * 16, 0, 16 * sizeof(float));
    }
    kern.transpose16(blk, 16, out, 16);
    for (int p = 0; p < 16; ++p)
      for (int64_t c = 0; c < tc; ++c) dst[(p0 + p) * ldd + c0 + c] = from_f32<T>(out[p * 16 + c]);
  }
  for (int64_t p = p0; p < npix; ++p)
    for (int64_t c = c0; c < nch; ++c) dst[p * ldd + c] = from_f32<T>(src[c * lds + p]);
}

// One row of n values, float -> T (a plain copy for float).
template <class T>
inline void store_row(const float* __restrict src, int64_t n, T* __restrict dst) {
  if constexpr (std::is_same_v<T, float>) {
    std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = from_f32<T>(src[i]);
  }
}

// Which plane rows and columns of row phase `a` hold image data, for a tile
// starting at output row oh0 and plane rows [0, qrows), when sw = 1: plane row
// q holds input row ih0 + q sh, inside the image for q in [q_lo, q_hi); plane
// column lo holds input column 0, [lo, hi) are inside the image.
struct ImageWindow {
  int64_t ih0, q_lo, q_hi, lo, hi;
};

inline ImageWindow image_window(const Geometry& g, int64_t oh0, int64_t a, int64_t qrows) {
  const auto& s = g.s;
  ImageWindow w;
  w.ih0 = oh0 * s.sh + a - s.ph;
  w.q_lo = std::min(qrows, ceil_div(std::max<int64_t>(0, -w.ih0), s.sh));
  w.q_hi = std::max(w.q_lo, std::min(qrows, ceil_div(s.H - w.ih0, s.sh)));
  w.lo = std::min(g.Wq, s.pw);
  w.hi = std::max(w.lo, std::min(g.Wq, s.W + s.pw));
  return w;
}

// pack_input for float32 rows with unit column stride and sw = 1 (NCHW, the
// common case): each channel's valid rows in one copy_pad_rows call, the rows
// above and below the image zeroed whole.
inline void pack_input_rows(const cpu::lowrank::Kernels& kern, const float* xn, const Strides4& xs,
                            int64_t oh0, int64_t qrows, const Geometry& g, float* xp) {
  const auto& s = g.s;
  for (int64_t a = 0; a < s.sh; ++a) {
    const ImageWindow w = image_window(g, oh0, a, qrows);
    const float* src0 = xn + (w.ih0 + w.q_lo * s.sh) * xs.h + (w.lo - s.pw);
    for (int64_t c = 0; c < s.C; ++c) {
      float* dst = xp + (a * s.C + c) * g.plane;
      std::memset(dst, 0, static_cast<size_t>(w.q_lo * g.Wq) * sizeof(float));
      if (w.q_hi > w.q_lo)
        kern.copy_pad_rows(src0 + c * xs.c, s.sh * xs.h, w.q_hi - w.q_lo, w.lo, w.hi - w.lo, g.Wq,
                           dst + w.q_lo * g.Wq, g.Wq);
      std::memset(dst + w.q_hi * g.Wq, 0,
                  static_cast<size_t>((qrows - w.q_hi) * g.Wq) * sizeof(float));
    }
  }
}

// Fills rows [0, qrows) of the tile's phase planes from image n of x, the
// tile starting at output row oh0. The common layouts take whole-row copies
// (NCHW, stride 1) or a channel-blocked transpose (channels_last): the
// packing is about C * (R + kh - 1) / R loads per output pixel against
// r * C * kh * kw multiply-adds, so it must run at memory-copy speed.
template <class T>
void pack_input(const cpu::lowrank::Kernels& kern, const T* x, const Strides4& xs, int64_t n,
                int64_t oh0, int64_t qrows, const Geometry& g, float* xp) {
  const auto& s = g.s;
  const T* xn = x + n * xs.n;
  if constexpr (std::is_same_v<T, float>) {
    if (xs.w == 1 && s.sw == 1) {
      pack_input_rows(kern, xn, xs, oh0, qrows, g, xp);
      return;
    }
  }
  // Column range [lo, hi) of plane columns that hold input (the rest is padding).
  for (int64_t a = 0; a < s.sh; ++a)
    for (int64_t q = 0; q < qrows; ++q) {
      const int64_t ih = (oh0 + q) * s.sh + a - s.ph;
      const bool row_ok = ih >= 0 && ih < s.H;
      for (int64_t b = 0; b < s.sw; ++b) {
        float* dst0 = xp + (a * s.sw + b) * s.C * g.plane + q * g.Wq;
        if (!row_ok) {
          for (int64_t c = 0; c < s.C; ++c) std::memset(dst0 + c * g.plane, 0, g.Wq * 4);
          continue;
        }
        // Plane column qc holds input column iw = qc * sw + b - pw.
        const int64_t lo = std::min(g.Wq, ceil_div(std::max<int64_t>(0, s.pw - b), s.sw));
        const int64_t hi = std::max(lo, std::min(g.Wq, ceil_div(s.W + s.pw - b, s.sw)));
        for (int64_t c = 0; c < s.C; ++c) {
          float* dst = dst0 + c * g.plane;
          std::memset(dst, 0, lo * 4);
          std::memset(dst + hi, 0, (g.Wq - hi) * 4);
        }
        const int64_t iw0 = lo * s.sw + b - s.pw;
        const T* src = xn + ih * xs.h + iw0 * xs.w;
        if (xs.w == 1 && s.sw == 1) {  // NCHW: each channel's row is contiguous
          for (int64_t c = 0; c < s.C; ++c)
            convert_row(src + c * xs.c, hi - lo, dst0 + c * g.plane + lo);
        } else if (xs.c == 1) {  // channels_last: transpose
          pixels_to_planes(kern, src, xs.w * s.sw, hi - lo, s.C, dst0 + lo, g.plane);
        } else {
          for (int64_t c = 0; c < s.C; ++c) {
            float* dst = dst0 + c * g.plane;
            for (int64_t qc = lo; qc < hi; ++qc)
              dst[qc] = to_f32(src[c * xs.c + (qc - lo) * s.sw * xs.w]);
          }
        }
      }
    }
}

// The first factor's output kept as a tensor for the backward (float32,
// contiguous (N, rank, Ho, Wt); Wt = Wo for "channel", W for "spatial") and
// the tile's intermediate grid planes ((b * rank + r) * tplane, column phase
// b). Tensor column w sits at grid column w (channel) or, for spatial, at
// phase (w + pw) % sw, column (w + pw) / sw; the other grid columns are the
// second factor's zero padding (spatial) or thrown away (channel).
inline int64_t intermediate_width(const Geometry& g) { return g.channel ? g.Wo : g.s.W; }

// Spatial scheme, stride sw > 1: grid offset (row 0) of column w of rank
// plane r of the intermediate.
inline int64_t spatial_grid_offset(const Geometry& g, int64_t r, int64_t w, int64_t tplane) {
  const int64_t b = (w + g.s.pw) % g.s.sw, qc = (w + g.s.pw) / g.s.sw;
  return (b * g.s.rank + r) * tplane + qc;
}

// Element (r, i, w) of image n's rows from oh0 of t: planes (N, rank, Ho, wt)
// or, channels_last, pixels (N, Ho, wt, rank). F: float or const float.
template <class F>
struct IntermediateRows {
  F* base;
  int64_t plane, pixel;  // strides of r and of w (a row is wt pixels)
  int64_t wt;
  IntermediateRows(F* t, bool cl, int64_t n, int64_t oh0, const Geometry& g) {
    const int64_t rank = g.s.rank;
    wt = intermediate_width(g);
    const int64_t img = g.Ho * wt;
    base = t + n * rank * img + oh0 * wt * (cl ? rank : 1);
    plane = cl ? 1 : img;
    pixel = cl ? rank : 1;
  }
  F* at(int64_t r, int64_t i, int64_t w) const { return base + r * plane + (i * wt + w) * pixel; }
};

// Grid rows [0, rows) of the tile at output row oh0 -> image n of t (t_cl:
// channels_last).
inline void store_intermediate(const cpu::lowrank::Kernels& kern, const float* tg, int64_t tplane,
                               int64_t rows, int64_t n, int64_t oh0, const Geometry& g, float* t,
                               bool t_cl) {
  const auto& s = g.s;
  const IntermediateRows<float> tr(t, t_cl, n, oh0, g);
  const int64_t wt = tr.wt;
  if (g.channel || s.sw == 1) {
    const int64_t c0 = g.channel ? 0 : s.pw;
    if (t_cl) {  // a pixel row of all rank planes at a time
      for (int64_t i = 0; i < rows; ++i)
        planes_to_pixels(kern, tg + c0 + i * g.Wq, tplane, wt, s.rank, tr.at(0, i, 0), s.rank);
      return;
    }
    for (int64_t r = 0; r < s.rank; ++r)
      kern.copy_pad_rows(tg + r * tplane + c0, g.Wq, rows, 0, wt, wt, tr.at(r, 0, 0), wt);
    return;
  }
  for (int64_t r = 0; r < s.rank; ++r)
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t w = 0; w < wt; ++w)
        *tr.at(r, i, w) = tg[spatial_grid_offset(g, r, w, tplane) + i * g.Wq];
}

// Image n of t (t_cl: channels_last), rows [oh0, oh0 + rows) -> the tile's
// grid planes, zero in every other column and up to `clear` floats of each plane.
inline void load_intermediate(const cpu::lowrank::Kernels& kern, const float* t, bool t_cl,
                              int64_t n, int64_t oh0, int64_t rows, const Geometry& g, float* tg,
                              int64_t tplane, int64_t clear) {
  const auto& s = g.s;
  const IntermediateRows<const float> tr(t, t_cl, n, oh0, g);
  const int64_t wt = tr.wt;
  const int64_t nb = g.channel ? 1 : s.sw;
  if ((g.channel || s.sw == 1) && !t_cl) {
    const int64_t c0 = g.channel ? 0 : s.pw;
    for (int64_t r = 0; r < s.rank; ++r) {
      float* dst = tg + r * tplane;
      kern.copy_pad_rows(tr.at(r, 0, 0), wt, rows, c0, wt, g.Wq, dst, g.Wq);
      std::memset(dst + rows * g.Wq, 0, static_cast<size_t>(clear - rows * g.Wq) * sizeof(float));
    }
    return;
  }
  for (int64_t pl = 0; pl < nb * s.rank; ++pl)
    std::memset(tg + pl * tplane, 0, static_cast<size_t>(clear) * sizeof(float));
  if (g.channel || s.sw == 1) {  // channels_last: a pixel row of all rank planes at a time
    const int64_t c0 = g.channel ? 0 : s.pw;
    for (int64_t i = 0; i < rows; ++i)
      pixels_to_planes(kern, tr.at(0, i, 0), s.rank, wt, s.rank, tg + c0 + i * g.Wq, tplane);
    return;
  }
  for (int64_t r = 0; r < s.rank; ++r)
    for (int64_t i = 0; i < rows; ++i)
      for (int64_t w = 0; w < wt; ++w)
        tg[spatial_grid_offset(g, r, w, tplane) + i * g.Wq] = *tr.at(r, i, w);
}

// Runs fn(state, item) over items on up to `threads` OpenMP threads, after
// setup() on each (per-thread buffers). Each thread takes one contiguous run
// of items (tiles are consecutive output rows), so its reads of x and the
// residual and its writes of y are long sequential streams the hardware
// prefetchers follow; tiles dealt out one at a time (dynamic, 1) interleave
// the two threads' streams every tile. Measured on the TRP ResNet-20 at batch
// 64 (2 threads, one process, 11 alternating rounds): 12.9-13.5 -> 11.4-11.7
// ms per pass when the host's memory was slow, level (8.1-9.0 ms) when fast;
// one 16-channel layer on cold caches 0.90-1.06 -> 0.76-0.96 ms (pixel-major
// forward; the plane path's tiles, image row blocks, take the same schedule).
template <class Setup, class Fn>
void parallel_items(int64_t items, int threads, Setup setup, Fn fn) {
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, items)));
#pragma omp parallel num_threads(threads)
  {
    auto state = setup();
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) fn(state, it);
  }
}

// Element i of per-thread accumulators summed in thread order (the same bits
// on every call at a given thread count): the backwards' weight gradients.
inline float sum_over_threads(const std::vector<std::vector<float>>& acc, int used, int64_t i) {
  float v = 0.f;
  for (int th = 0; th < used; ++th) v += acc[static_cast<size_t>(th)][static_cast<size_t>(i)];
  return v;
}

// The bias gradient: the sum of grad_out over the batch and the pixels, added
// up tile by tile from the grad_out the backward reads anyway, not by a torch
// sum that reads it from memory again (training step, 2 threads, Zen 4, min
// of alternating processes: 16 ch @32 spatial rank 4, NCHW, 6.21 -> 5.99 ms;
// 32 ch @16 channel rank 14, channels_last, 5.38 -> 5.19; 64 ch @56 channel
// rank 10, NCHW, 32.5 -> 31.9). Float partial sums within a tile, double across
// tiles, folded in thread order at the end (the same bits at a given thread
// count).
struct BiasSums {
  std::vector<std::vector<double>> per_thread;
  BiasSums(bool want, int threads, int64_t nout)
      : per_thread(want ? static_cast<size_t>(threads) : 0,
                   std::vector<double>(static_cast<size_t>(nout), 0.0)) {}
  bool wanted() const { return !per_thread.empty(); }
  // Channel o += the n floats at p (plane rows; zero padding included).
  void add_plane(int tid, int64_t o, const float* p, int64_t n) {
    float lane[16] = {};  // 16 independent sums: vectorised without reassociation
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
      for (int l = 0; l < 16; ++l) lane[l] += p[i + l];
    float v = 0.f;
    for (; i < n; ++i) v += p[i];
    for (int l = 0; l < 16; ++l) v += lane[l];
    per_thread[static_cast<size_t>(tid)][static_cast<size_t>(o)] += v;
  }
  // Channels [0, nout) += the pixel-major rows at p (pixels rows nout apart).
  void add_pixels(int tid, const float* p, int64_t pixels, int64_t nout, float* scratch) {
    std::fill(scratch, scratch + nout, 0.f);
    for (int64_t q = 0; q < pixels; ++q)
      for (int64_t o = 0; o < nout; ++o) scratch[o] += p[q * nout + o];
    double* acc = per_thread[static_cast<size_t>(tid)].data();
    for (int64_t o = 0; o < nout; ++o) acc[o] += scratch[o];
  }
  template <class T>
  void store(T* grad_bias) const {
    const size_t nout = per_thread.front().size();
    for (size_t o = 0; o < nout; ++o) {
      double v = 0.0;
      for (const auto& t : per_thread) v += t[o];
      grad_bias[o] = from_f32<T>(static_cast<float>(v));
    }
  }
};

inline int resolve_threads(int num_threads) {
  return num_threads > 0 ? num_threads : omp_get_max_threads();
}

}  // namespace lowrank_detail
}  // namespace fusenas
