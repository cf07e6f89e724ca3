// The pixel-major forward of the low-rank conv for channels_last float32
// tensors (lowrank_conv_nhwc.cpp); lowrank_conv_cpu.cpp takes it where it
// applies and the plane path everywhere else.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "cpu/lowrank_conv_kernels.h"
#include "cpu/lowrank_conv_tiles.h"
#include "fusenas/lowrank.h"

namespace fusenas {
namespace lowrank_detail {

inline bool is_channels_last(const Strides4& st, int64_t C, int64_t H, int64_t W) {
  return st.c == 1 && st.w == C && st.h == W * C && st.n == H * W * C;
}

// Strides (n, c, h, w) of a channels_last-contiguous C x H x W tensor.
inline Strides4 channels_last_strides(int64_t C, int64_t H, int64_t W) {
  return {H * W * C, 1, W * C, C};
}

// A factor as the B operand of IndGemm / BlockGemm: w (cols, K, taps)
// contiguous -> row (tap t, k), column j = w[j][k][t], in the column panels
// of the kernels `kern` (lowrank_conv_kernels.h), n columns (cols rounded up
// to whole vectors; zeros past cols). The forward packs the first factor as
// (rank x C x taps) and the second as (Nout x rank x taps); the backward packs
// their transposes: `transposed` reads w as (K, cols, taps) instead.
inline Buffer pack_factor(const float* w, int64_t cols, int64_t K, int64_t taps, int64_t n,
                          const cpu::lowrank::Kernels& kern, bool transposed = false) {
  using cpu::lowrank::panel_count;
  using cpu::lowrank::panel_start;
  const int64_t rows = taps * K, W = kern.vec_width, vecs = n / W;
  const int64_t chunks = panel_count(vecs, kern.ind_nv);
  const int64_t js = transposed ? taps : K * taps, ks = transposed ? cols * taps : taps;
  Buffer b(rows * n, false);  // every float written below, padding included
  // Each packed row written in order, the panel's columns read at a stride of
  // js floats: the lines of one k (a few KB) stay in L1 for all its taps and
  // the next k. Written column by column instead, every store went to another
  // line: 4.5% of a 512-channel forward's samples, on one thread while the
  // others waited. Factors of 512 channels take 4-5 MB: split over threads.
#pragma omp parallel for collapse(2) schedule(static) if (rows * n >= (int64_t{1} << 18))
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t j0 = panel_start(vecs, kern.ind_nv, c) * W;
      const int64_t width = panel_start(vecs, kern.ind_nv, c + 1) * W - j0;
      const int64_t j1 = std::min(cols, j0 + width);
      float* panel = b.get() + rows * j0;
      for (int64_t t = 0; t < taps; ++t) {
        float* dst = panel + (t * K + k) * width - j0;
        for (int64_t j = j0; j < j1; ++j) dst[j] = w[j * js + k * ks + t];
        for (int64_t j = std::max(j0, j1); j < j0 + width; ++j) dst[j] = 0.f;
      }
    }
  return b;
}

// dst[o] for o < count: the row element at column c = o * step + first
// (c in [0, width): row + c * pitch), else the zero row (also when !row_ok).
// The padding columns are found once, so the interior is a branch-free loop the
// compiler vectorises: a tile's pointers are rebuilt for every tile.
inline void fill_row_pointers(const float** dst, int64_t count, const float* row, int64_t first,
                              int64_t step, int64_t width, int64_t pitch, bool row_ok,
                              const float* zero) {
  int64_t lo = 0, hi = 0;  // columns o in [lo, hi) are inside the row
  if (row_ok) {
    lo = first >= 0 ? 0 : std::min(count, (-first + step - 1) / step);
    hi = first >= width ? 0 : std::min(count, (width - first + step - 1) / step);
    hi = std::max(lo, hi);
  }
  for (int64_t o = 0; o < lo; ++o) dst[o] = zero;
  for (int64_t o = lo; o < hi; ++o) dst[o] = row + (first + o * step) * pitch;
  for (int64_t o = hi; o < count; ++o) dst[o] = zero;
}

// Padding taps point at a row of zeros, and as plain IndGemm rows they cost
// their multiply-adds all the same: 18% of a 3 x 3 conv's taps at 7 x 7
// pixels, 9% at 14 x 14 (oneDNN's kernels skip them, so the two torch convs
// did fewer multiply-adds than this path at 512 ch @7). IndGemm skips a tap
// for a micro-tile when it is padding for all the tile's pixels, so the
// pixels of a pointer list are regrouped in place by their set of padding
// taps (the interior, each border, each corner: a tile of several rows gives
// most groups enough pixels for whole micro-tiles), and C rows follow them
// through IndGemm::crow.
class PaddingGroups {
 public:
  // Regroups ind (taps lists of P pointers, list t at ind + t * P) and returns
  // true, or changes nothing and returns false where padding taps are under
  // 1 / kMinShareDen of all (the smaller micro-tiles eat the savings: at 28 x
  // 28 pixels, 4.7% padding taps, it measured level; with 1 / 64, the 3-tap
  // factors at 32 x 32, 2.1%, regrouped too and 16 ch @32 spatial training
  // steps ran 7-20% slower) or there are more than 64 taps or kMaxGroups groups.
  bool regroup(const float** ind, int64_t P, int64_t taps, const float* zero) {
    groups_ = 0;
    zero_ = zero;
    if (taps > 64 || P == 0) return false;
    keys_.assign(static_cast<size_t>(P), 0);
    int64_t pads = 0;
    for (int64_t t = 0; t < taps; ++t)
      for (int64_t p = 0; p < P; ++p)
        if (ind[t * P + p] == zero) {
          keys_[static_cast<size_t>(p)] |= uint64_t{1} << t;
          ++pads;
        }
    if (pads * kMinShareDen < taps * P) return false;
    // Groups in order of first appearance; counting sort of the pixels.
    uint64_t key[kMaxGroups];
    int64_t count[kMaxGroups] = {};
    group_of_.resize(static_cast<size_t>(P));
    int64_t n = 0;
    for (int64_t p = 0; p < P; ++p) {
      const uint64_t k = keys_[static_cast<size_t>(p)];
      int64_t g = 0;
      while (g < n && key[g] != k) ++g;
      if (g == n) {
        if (n == kMaxGroups) return false;
        key[n++] = k;
      }
      ++count[g];
      group_of_[static_cast<size_t>(p)] = static_cast<int>(g);
    }
    splits_.assign(static_cast<size_t>(n + 1), 0);
    for (int64_t g = 0; g < n; ++g) splits_[static_cast<size_t>(g + 1)] = splits_[g] + count[g];
    int64_t next[kMaxGroups];
    std::copy(splits_.begin(), splits_.begin() + n, next);
    rows_.resize(static_cast<size_t>(P));
    for (int64_t p = 0; p < P; ++p) rows_[static_cast<size_t>(next[group_of_[p]]++)] = p;
    tmp_.resize(static_cast<size_t>(P));
    for (int64_t t = 0; t < taps; ++t) {
      const float** list = ind + t * P;
      std::copy(list, list + P, tmp_.begin());
      for (int64_t j = 0; j < P; ++j) list[j] = tmp_[static_cast<size_t>(rows_[j])];
    }
    groups_ = n;
    return true;
  }
  // g (over the list of the last regroup) with its zero row and its groups,
  // if it regrouped.
  cpu::lowrank::IndGemm apply(cpu::lowrank::IndGemm g) const {
    g.zero = zero_;
    if (groups_ > 0) {
      g.splits = splits_.data();
      g.groups = groups_;
      g.crow = rows_.data();
    }
    return g;
  }
  // Floats of scratch for lists of P pixels (keys, rows and a list: 8 bytes
  // per pixel each; group numbers 4).
  static int64_t scratch_floats(int64_t P) { return P > 0 ? 7 * P + 2 * (kMaxGroups + 1) : 0; }

 private:
  static constexpr int64_t kMinShareDen = 25;
  static constexpr int64_t kMaxGroups = 32;
  int64_t groups_ = 0;
  const float* zero_ = nullptr;
  std::vector<uint64_t> keys_;
  std::vector<int> group_of_;
  std::vector<int64_t> splits_, rows_;
  std::vector<const float*> tmp_;
};

// Sizes shared by the pixel-major forward and backward. A tile is a block of
// rows_per_tile global output rows (image n, row oh): about tile_pixels output
// pixels, fewer where that leaves under 4 tiles per thread.
struct PixelMajorPlan {
  bool channel;
  int64_t Ho, Wo, Wt;    // output size; the intermediate's width (Wo, or W for spatial)
  int64_t taps1, taps2;  // taps of each factor
  int64_t rp;            // rank rounded up to the vector width
  int64_t rows_per_tile, tiles;
  int64_t wino_cap = 64;  // most GEMM rows per Winograd chunk (lowrank_winograd.h)
  PixelMajorPlan(const LowRankConvShape& s, int vec, int threads, int64_t tile_pixels);
};

// The first factor's IndGemm rows for global output rows [g0, g0 + rows) of
// x (channels_last): ind[t * rows * Wt + q * Wt + wt] -> the input pixel tap
// t of intermediate pixel (row q, column wt) reads, (oh sh - ph + i dh,
// wt sw - pw + jj dw), or `zero`; spatial taps are (i, 0) at column wt (its
// first factor convolves rows only).
void fill_first_factor_pointers(const LowRankConvShape& s, int64_t Ho, int64_t Wt, const float* x,
                                int64_t g0, int64_t rows, const float** ind, const float* zero);

// Whether the pixel-major path runs (forward and backward alike; ys: y's or
// grad_out's strides): x and y channels_last-contiguous, and its multiply-adds
// (rank rounded up to whole vectors, Winograd factors at half; the Winograd rules
// depend on num_threads) not far above the plane path's. FUSENAS_LOWRANK_NHWC=0
// switches it off, =1 skips the work comparison. The caller also requires float32.
bool nhwc_applies(const LowRankConvShape& s, const Strides4& xs, const Strides4& ys,
                  int num_threads);

// y = relu?(conv + bias + residual); residual null or laid out as y; t_out
// (null: not kept) as lowrank_conv2d_cpu's `intermediate`, channels_last when t_cl.
void forward_nhwc(const float* x, const float* w1, const float* w2, const float* bias, float* y,
                  const LowRankConvShape& s, int num_threads, const float* residual, bool relu,
                  float* t_out, bool t_cl);

int64_t nhwc_workspace_bytes(const LowRankConvShape& s, int num_threads);

// The pixel-major backward (lowrank_conv_nhwc_backward.cpp), where
// nhwc_applies(s, xs, gs) holds and grad_x (when wanted) is channels_last
// too. Arguments as lowrank_conv2d_backward_cpu's, float32.
void backward_nhwc(const float* grad_out, const float* x, const float* w1, const float* w2,
                   float* grad_x, float* grad_w1, float* grad_w2, float* grad_bias,
                   const LowRankConvShape& s, int num_threads, const float* t_saved, bool t_cl);

int64_t nhwc_backward_workspace_bytes(const LowRankConvShape& s, int num_threads);

}  // namespace lowrank_detail
}  // namespace fusenas
