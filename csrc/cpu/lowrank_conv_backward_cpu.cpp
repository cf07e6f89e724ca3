// Backward of the fused low-rank conv on CPU, tile by tile like the forward
// (one image, R output rows per tile), nothing of size N x r x H x W stored
// beyond the forward's kept intermediate (when the caller kept it):
//   G   = grad_out rows [oh0 - qh_max, oh0 + R) on the padded-width grid
//         (zero on discarded columns, so garbage never reaches a gradient);
//   T   = first factor (only when grad_w2 is wanted): read from the forward's
//         kept intermediate, or recomputed for the tile;
//   gT  = second factor transposed applied to G (rows above the tile too: the
//         input rows this tile owns receive from them);
//   grad_w2 += G . Tt and grad_w1[tap] += gT . X_tap: row GEMMs with the
//         tile's pixels as the reduction (operands transposed to
//         channel-contiguous pixel rows, only the columns where a term can
//         be nonzero), into per-thread sums added up at the end; threads
//         take fixed sets of tiles, so the sums are the same bits every call;
//   grad_x rows owned by the tile (padded rows [oh0 sh, (oh0 + R) sh), the
//         last tile to the end) inside the image = first factor transposed
//         applied to gT, per stride phase: every input element is written by
//         exactly one tile, so threads never race and nothing is zero-filled
//         beforehand.
// channels_last float32 calls take the pixel-major backward instead where it
// applies (lowrank_conv_nhwc_backward.cpp).
#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu/lowrank_conv_nhwc.h"
#include "cpu/lowrank_conv_tiles.h"
#include "fusenas/lowrank.h"

namespace fusenas {

using namespace lowrank_detail;  // NOLINT: the shared tile helpers

namespace {

constexpr int64_t kBackwardTilePixels = 512;
// A thread's tile buffers (planes of x, G, gT, T and the GEMM operands) grow
// with the channel counts: at 128 channels and 512 pixels they take 2 MiB.
// Above this many floats (1 MiB) the tile is halved: at 128 ch @28 channel
// rank 19 that cut the backward's buffers from 4.0 to 2.5 MiB (the step's
// heap peak was 1.0 MiB above the two convs') at the same time (AVX-512, 2
// threads, four runs: 15.0-16.5 against 15.1-15.8 ms). Not below kBackwardMinRows rows:
// each tile recomputes qh_max + 1 rows above it, and 64 ch @56 with 5-row
// tiles ran 10-15% slower (25.5-26.3 against 22.5-23.0 ms). Halving every
// tile cost 5-8% at 16-32 channels, whose buffers are far below the limit.
constexpr int64_t kBackwardThreadFloats = 256 * 1024;
constexpr int64_t kBackwardMinRows = 8;

// Taps of the first factor that read stride phase (a, b), and their plane
// offsets (rows, columns); spatial taps are (i, 0).
struct PhaseTaps {
  std::vector<int64_t> i, j;
  std::vector<float> a;         // panels of the C x (rank * taps) matrix W1[r, c, i, j]
  std::vector<int64_t> offset;  // gT offset per (r, tap), relative to the tile's row 0
};

template <class T>
std::vector<PhaseTaps> first_factor_transposed(const T* w1, const Geometry& g, int64_t gtplane,
                                               int mr) {
  const auto& s = g.s;
  const int64_t kw1 = g.channel ? s.kw : 1;
  std::vector<PhaseTaps> phases(static_cast<size_t>(s.sh * s.sw));
  for (int64_t a = 0; a < s.sh; ++a)
    for (int64_t b = 0; b < s.sw; ++b) {
      PhaseTaps& ph = phases[static_cast<size_t>(a * s.sw + b)];
      for (int64_t i = 0; i < s.kh; ++i)
        for (int64_t j = 0; j < kw1; ++j)
          if ((i * s.dh) % s.sh == a && (!g.channel || (j * s.dw) % s.sw == b)) {
            ph.i.push_back(i);
            ph.j.push_back(j);
          }
      const int64_t taps = static_cast<int64_t>(ph.i.size()), K = s.rank * taps;
      std::vector<float> m(static_cast<size_t>(s.C * K));
      for (int64_t c = 0; c < s.C; ++c)
        for (int64_t r = 0; r < s.rank; ++r)
          for (int64_t t = 0; t < taps; ++t)
            m[static_cast<size_t>(c * K + r * taps + t)] =
                to_f32(w1[((r * s.C + c) * s.kh + ph.i[t]) * kw1 + ph.j[t]]);
      ph.a = pack_panels(m.data(), s.C, K, mr);
      const int64_t tb = g.channel ? 0 : b * s.rank;  // spatial: gT of column phase b
      for (int64_t r = 0; r < s.rank; ++r)
        for (int64_t t = 0; t < taps; ++t) {
          const int64_t qi = ph.i[t] * s.dh / s.sh, qj = g.channel ? ph.j[t] * s.dw / s.sw : 0;
          ph.offset.push_back((tb + r) * gtplane - qi * g.Wq - qj);
        }
    }
  return phases;
}

// Second factor transposed, per column phase b of the intermediate:
// gT_b[r][p] = sum_{o, j : (j dw) % sw == b} W2[o, r, j] G[o][p - (j dw) / sw].
struct SecondTransposed {
  std::vector<float> a;  // panels of the rank x K_b matrix
  std::vector<int64_t> offset;
};

template <class T>
std::vector<SecondTransposed> second_factor_transposed(const T* w2, const Geometry& g,
                                                       int64_t gplane, int mr) {
  const auto& s = g.s;
  const int64_t kw2 = g.channel ? 1 : s.kw, nphase = g.channel ? 1 : s.sw;
  std::vector<SecondTransposed> out(static_cast<size_t>(nphase));
  for (int64_t b = 0; b < nphase; ++b) {
    std::vector<int64_t> js;
    for (int64_t j = 0; j < kw2; ++j)
      if (g.channel || (j * s.dw) % s.sw == b) js.push_back(j);
    const int64_t taps = static_cast<int64_t>(js.size()), K = s.Nout * taps;
    std::vector<float> m(static_cast<size_t>(s.rank * K));
    for (int64_t r = 0; r < s.rank; ++r)
      for (int64_t o = 0; o < s.Nout; ++o)
        for (int64_t t = 0; t < taps; ++t)
          m[static_cast<size_t>(r * K + o * taps + t)] = to_f32(w2[(o * s.rank + r) * kw2 + js[t]]);
    out[static_cast<size_t>(b)].a = pack_panels(m.data(), s.rank, K, mr);
    for (int64_t o = 0; o < s.Nout; ++o)
      for (int64_t t = 0; t < taps; ++t)
        out[static_cast<size_t>(b)].offset.push_back(o * gplane -
                                                     (g.channel ? 0 : js[t] * s.dw / s.sw));
  }
  return out;
}

// grad_out rows [oh0 - qh_max, oh0 + rows) of image n -> G (zero elsewhere).
template <class T>
void pack_grad_out(const cpu::lowrank::Kernels& kern, const T* go, const Strides4& gs, int64_t n,
                   int64_t oh0, int64_t rows, const Geometry& g, int64_t grid_rows, float* G,
                   int64_t gplane, int64_t front) {
  const auto& s = g.s;
  const T* gn = go + n * gs.n;
  const int64_t r0 = std::max<int64_t>(-g.qh_max, -oh0);
  if constexpr (std::is_same_v<T, float>) {
    if (gs.w == 1 && rows > r0) {
      // Grid rows [r0 + qh_max, rows + qh_max) are written whole (the discarded
      // columns zeroed by the copy); only the rows around them are cleared, so
      // G is written once rather than cleared and then written (64 ch @56 channel
      // rank 10, Zen 4: this copy 8.5-9.0 -> 8.0-8.1 thread-ms per step).
      const int64_t a = r0 + g.qh_max, b = rows + g.qh_max;
      for (int64_t o = 0; o < s.Nout; ++o) {
        float* plane = G + o * gplane + front;
        std::memset(plane, 0, a * g.Wq * 4);
        kern.copy_pad_rows(gn + o * gs.c + (oh0 + r0) * gs.h, gs.h, rows - r0, 0, g.Wo, g.Wq,
                           plane + a * g.Wq, g.Wq);
        std::memset(plane + b * g.Wq, 0, (grid_rows - b) * g.Wq * 4);
      }
      return;
    }
  }
  for (int64_t o = 0; o < s.Nout; ++o) std::memset(G + o * gplane + front, 0, grid_rows * g.Wq * 4);
  for (int64_t i = r0; i < rows; ++i) {
    const int64_t oh = oh0 + i;
    float* row = G + front + (i + g.qh_max) * g.Wq;
    if (gs.w == 1) {
      for (int64_t o = 0; o < s.Nout; ++o)
        convert_row(gn + o * gs.c + oh * gs.h, g.Wo, row + o * gplane);
    } else if (gs.c == 1) {
      pixels_to_planes(kern, gn + oh * gs.h, gs.w, g.Wo, s.Nout, row, gplane);
    } else {
      for (int64_t ow = 0; ow < g.Wo; ++ow) {
        const T* px = gn + oh * gs.h + ow * gs.w;
        for (int64_t o = 0; o < s.Nout; ++o) row[o * gplane + ow] = to_f32(px[o * gs.c]);
      }
    }
  }
}

// Owned plane rows [0, qown) of the tile's grad planes -> grad_x.
template <class T>
void store_grad_input(const cpu::lowrank::Kernels& kern, const float* gxp, int64_t n, int64_t oh0,
                      int64_t qown, const Geometry& g, T* gx, const Strides4& gxs) {
  const auto& s = g.s;
  T* gn = gx + n * gxs.n;
  if constexpr (std::is_same_v<T, float>) {
    if (gxs.w == 1 && s.sw == 1) {  // NCHW: each channel's owned rows in one call
      for (int64_t a = 0; a < s.sh; ++a) {
        const ImageWindow w = image_window(g, oh0, a, qown);
        if (w.q_hi == w.q_lo) continue;
        for (int64_t c = 0; c < s.C; ++c)
          kern.copy_pad_rows(gxp + (a * s.C + c) * g.plane + w.q_lo * g.Wq + w.lo, g.Wq,
                             w.q_hi - w.q_lo, 0, w.hi - w.lo, w.hi - w.lo,
                             gn + c * gxs.c + (w.ih0 + w.q_lo * s.sh) * gxs.h + (w.lo - s.pw),
                             s.sh * gxs.h);
      }
      return;
    }
  }
  for (int64_t a = 0; a < s.sh; ++a)
    for (int64_t q = 0; q < qown; ++q) {
      const int64_t ih = (oh0 + q) * s.sh + a - s.ph;
      if (ih < 0 || ih >= s.H) continue;
      for (int64_t b = 0; b < s.sw; ++b) {
        const float* src0 = gxp + (a * s.sw + b) * s.C * g.plane + q * g.Wq;
        const int64_t lo = std::min(g.Wq, ceil_div(std::max<int64_t>(0, s.pw - b), s.sw));
        const int64_t hi = std::max(lo, std::min(g.Wq, ceil_div(s.W + s.pw - b, s.sw)));
        const int64_t iw0 = lo * s.sw + b - s.pw;
        T* dst = gn + ih * gxs.h + iw0 * gxs.w;
        if (gxs.w == 1 && s.sw == 1) {
          for (int64_t c = 0; c < s.C; ++c)
            store_row(src0 + c * g.plane + lo, hi - lo, dst + c * gxs.c);
        } else if (gxs.c == 1) {
          planes_to_pixels(kern, src0 + lo, g.plane, hi - lo, s.C, dst, s.sw * gxs.w);
        } else {
          for (int64_t qc = lo; qc < hi; ++qc) {
            T* d = dst + (qc - lo) * s.sw * gxs.w;
            for (int64_t c = 0; c < s.C; ++c) d[c * gxs.c] = from_f32<T>(src0[c * g.plane + qc]);
          }
        }
      }
    }
}

// Grid columns [lo, hi) where grad_w1's terms gT[p] X_tap[p] can be nonzero
// for intermediate column phase b (see the grad_w1 GEMM).
struct ColumnRange {
  int64_t lo, hi;
};

inline ColumnRange grad_w1_columns(const Geometry& g, int64_t b) {
  const auto& s = g.s;
  if (g.channel) return {0, g.Wo};
  const int64_t lo = std::min(g.Wq, ceil_div(std::max<int64_t>(0, s.pw - b), s.sw));
  return {lo, std::max(lo, std::min(g.Wq, ceil_div(s.W + s.pw - b, s.sw)))};
}

// Pixels i * Wq + c of the tile's rows [0, rows) and columns [lo, hi) ->
// kpix, and the offsets of their rows in a pixel-major operand of row length
// ldb -> krows: the reduction list of a weight-gradient GEMM.
inline void grid_pixels(int64_t rows, int64_t Wq, ColumnRange cr, int64_t ldb,
                        std::vector<int64_t>& kpix, std::vector<int64_t>& krows) {
  kpix.clear();
  krows.clear();
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = cr.lo; c < cr.hi; ++c) {
      kpix.push_back(i * Wq + c);
      krows.push_back((i * Wq + c) * ldb);
    }
}

// Rows [0, m) of the planes at src (ld floats apart) at the pixels kpix ->
// panels of mr rows (RowGemm's packed A; rows past m are zero). Runs of 16
// consecutive pixels go through a 16 x 16 register transpose in L1; element
// by element (a strided load and a store per value) this gather was half the
// plane backward's own time at 16 ch @32 spatial rank 4. Training step, NCHW,
// 1 thread (process time), Zen 4, min of alternating processes: that case
// 11.77 -> 11.69 ms, 16 ch @32 channel rank 7 19.87 -> 19.38, 32 ch @16
// spatial rank 8 7.05 -> 6.66.
inline void pack_pixel_panels(const cpu::lowrank::Kernels& kern, const float* src, int64_t ld,
                              int64_t m, const std::vector<int64_t>& kpix, int mr, float* dst) {
  alignas(64) float blk[16 * 16] = {}, out[16 * 16];  // rows mr..15 of blk: read, unused
  const size_t n = kpix.size();
  for (int64_t r0 = 0; r0 < m; r0 += mr) {
    const int64_t rows = std::min<int64_t>(mr, m - r0);
    if (mr <= 16)
      for (int64_t i = rows; i < mr; ++i) std::memset(blk + i * 16, 0, sizeof(float) * 16);
    size_t k = 0;
    while (k < n) {
      if (mr <= 16 && k + 16 <= n && kpix[k + 15] == kpix[k] + 15) {
        for (int64_t i = 0; i < rows; ++i)
          std::memcpy(blk + i * 16, src + (r0 + i) * ld + kpix[k], sizeof(float) * 16);
        kern.transpose16(blk, 16, out, 16);  // rows of blk past mr: unused columns of out
        for (int p = 0; p < 16; ++p) std::memcpy(dst + p * mr, out + p * 16, sizeof(float) * mr);
        dst += 16 * mr;
        k += 16;
      } else {
        for (int64_t i = 0; i < mr; ++i) *dst++ = i < rows ? src[(r0 + i) * ld + kpix[k]] : 0.f;
        ++k;
      }
    }
  }
}

// Sizes of the backward's per-tile grids. G and gT hold rows [-qh_max, RQ)
// of the tile after `front` zeros that the negative tap offsets of the
// transposed convs read.
//
// grad_w2 is a row GEMM over the tile's output pixels too: acc (Nout x K2p)
// += G (Nout x pixels, packed) . Tt (pixels x K2p), Tt[p][j rpad + r] =
// intermediate plane r at pixel p + the second factor's tap-j shift (ranks
// padded to rpad). The dot products over a tile's 64-512 pixels as
// horizontal sums cost more than their multiply-adds.
//
// Low ranks pad badly to whole vectors (rank 4: 48 columns for 12 sums
// with the 3 taps of the spatial scheme), so where it takes fewer
// multiply-adds grad_w2 runs the other way round (`w2_by_rank`): per tap j,
// acc_j (rank x Npad) += T_j (rank x pixels, packed) . Gt (pixels x Npad),
// with G transposed once instead of the intermediate once per tap. Training
// step, NCHW, 2 threads, Zen 4, min of alternating processes: 16 ch @32
// spatial rank 4 6.8-7.5 -> 5.6-6.2 ms, 32 ch @16 spatial rank 8 3.7-4.3 ->
// 3.5-4.2 ms, 256 ch @14 channel rank 38 22.4-23.0 -> 21.5-23.2 ms; forced on
// a rank of whole vectors (128 ch @28 spatial rank 96) it was slower (67-68
// against 68-77 ms), which the multiply-add count rules out.
struct BackwardLayout {
  int64_t front, grid_rows, gplane, tplane, row0;
  int64_t taps2, rpad, k2p;  // second-factor taps, padded rank, Tt row length
  int64_t t_planes;          // intermediate planes, with slack for the padded rank
  int64_t npad;              // Gt row length (w2_by_rank)
  bool w2_by_rank;
  BackwardLayout(const Geometry& g, int mr)
      : front(round_up(g.qw_max, kPixelAlign) + kPixelAlign),
        grid_rows(g.qh_max + g.RQ),
        gplane(front + round_up(grid_rows * g.Wq, kPixelAlign) + 2 * kPixelAlign),
        tplane(g.Pmax + round_up(g.qw_max, kPixelAlign) + kPixelAlign),
        row0(front + g.qh_max * g.Wq),
        taps2(g.channel ? 1 : g.s.kw),
        rpad(round_up(g.s.rank, kPixelAlign)),
        k2p(taps2 * rpad),
        t_planes((g.channel ? 1 : g.s.sw) * g.s.rank + rpad - g.s.rank),
        npad(round_up(g.s.Nout, kPixelAlign)),
        w2_by_rank(round_up(g.s.rank, mr) * npad < g.s.Nout * rpad) {}
  // grad_w2's GEMM operands (A rows x pixels, pixels x B columns) and sums.
  int64_t w2_a_rows(const Geometry& g, int mr) const {
    return w2_by_rank ? taps2 * round_up(g.s.rank, mr) : round_up(g.s.Nout, mr);
  }
  int64_t w2_cols() const { return w2_by_rank ? npad : k2p; }
  int64_t w2_sums(const Geometry& g) const {
    return w2_by_rank ? taps2 * g.s.rank * npad : g.s.Nout * k2p;
  }
  // Per-thread floats with every gradient requested.
  int64_t thread_floats(const Geometry& g, int mr) const {
    const auto& s = g.s;
    const int64_t nb = g.channel ? 1 : s.sw, cpad = round_up(s.C, kPixelAlign);
    return 2 * g.planes_x() * g.plane + t_planes * tplane + nb * s.rank * gplane + s.Nout * gplane +
           s.sh * s.sw * g.plane * cpad + round_up(s.rank, mr) * g.Pmax +
           (w2_a_rows(g, mr) + w2_cols()) * g.Pmax +   // grad_w1, grad_w2 operands
           (g.K1 / s.C) * s.rank * cpad + w2_sums(g);  // gradient sums
  }
};

// The plane backward's tiles: kBackwardTilePixels, halved once where a
// thread's buffers exceed kBackwardThreadFloats and the halved tile keeps
// kBackwardMinRows output rows.
Geometry backward_geometry(const LowRankConvShape& s, int threads) {
  const int mr = pick_kernels().mr;
  const Geometry g = make_geometry(s, threads, kBackwardTilePixels);
  if (BackwardLayout(g, mr).thread_floats(g, mr) <= kBackwardThreadFloats) return g;
  const Geometry half = make_geometry(s, threads, kBackwardTilePixels / 2);
  return half.R >= kBackwardMinRows ? half : g;
}

template <class T>
void backward(const T* go, const Strides4& gs, const T* x, const Strides4& xs, const T* w1,
              const T* w2, T* gx, const Strides4& gxs, T* gw1, T* gw2, T* gb,
              const LowRankConvShape& s, int num_threads, const float* t_saved, bool t_cl) {
  const auto& kern = pick_kernels();
  const int threads = resolve_threads(num_threads);
  const Geometry g = backward_geometry(s, threads);
  const bool want_gx = gx != nullptr, want_w1 = gw1 != nullptr, want_w2 = gw2 != nullptr;
  const bool want_gt = want_gx || want_w1;
  const int64_t nb = g.channel ? 1 : s.sw;  // column phases of the intermediate
  const BackwardLayout lay(g, kern.mr);
  const int64_t front = lay.front, grid_rows = lay.grid_rows, gplane = lay.gplane;
  const int64_t tplane = lay.tplane, row0 = lay.row0;  // row0: the tile's first row in G / gT

  // The first factor forward (w1 as float32, tap offsets) only when it is recomputed.
  const bool recompute = want_w2 && !t_saved;
  std::vector<float> w1_store;
  const float* a1 = recompute ? as_f32(w1, s.rank * g.K1, w1_store) : nullptr;
  const std::vector<int64_t> off1 = recompute ? stage1_offsets(g) : std::vector<int64_t>();
  const auto w2t = second_factor_transposed(w2, g, gplane, kern.mr);
  std::vector<PhaseTaps> w1t;
  if (want_gx) w1t = first_factor_transposed(w1, g, gplane, kern.mr);

  // grad_w1 as row GEMMs vectorised over input channels (no horizontal sums):
  // per tap t, acc[t] (rank x Cpad) += gT (rank x pixels) . X_t (pixels x Cpad),
  // X_t = the tile's input, channel-contiguous per pixel, shifted by the tap.
  // Where a kernel row's taps read consecutive pixels (channel scheme, sw = dw
  // = 1), its kw taps are one GEMM of kw Cpad columns: the B row of a pixel
  // holds the kw neighbours' channels back to back. At 16 channels that is 3
  // vectors per pixel instead of 1, so each broadcast of gT feeds 3 FMAs, not
  // one. 16 ch @32, channel rank 7, on Zen 4 (2 threads): the grad_w1 pass
  // 4.5 -> 3.8 thread-ms per step, of which the GEMMs 2.5 (the rest is the
  // transposes feeding them); the whole step about 3% faster.
  const int64_t cpad = round_up(s.C, kPixelAlign);
  const int64_t taps1 = g.K1 / s.C;  // kh kw (channel) or kh (spatial)
  const int64_t group_taps = g.channel && s.sw == 1 && s.dw == 1 ? s.kw : 1;
  const int64_t group_cols = group_taps * cpad;  // acc[group][r][tap in group][c]
  struct Tap {
    int64_t phase, shift;  // input phase plane (spatial: + the column phase b), pixel shift
  };
  std::vector<Tap> groups;  // the first tap of each group
  for (int64_t t = 0; t < taps1; t += group_taps) {
    const int64_t i = g.channel ? t / s.kw : t, j = g.channel ? t % s.kw : 0;
    const int64_t a = (i * s.dh) % s.sh, bj = g.channel ? (j * s.dw) % s.sw : 0;
    const int64_t shift = (i * s.dh / s.sh) * g.Wq + (g.channel ? j * s.dw / s.sw : 0);
    groups.push_back({a * s.sw + bj, shift});
  }
  const int64_t panel_rows = round_up(s.rank, kern.mr);

  const int64_t Hp = s.H + 2 * s.ph;
  const int64_t items = s.N * g.ntiles;
  const int used = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, items)));
  std::vector<std::vector<float>> acc_w2(used), acc_taps(used);
  BiasSums bias(gb != nullptr, used, s.Nout);
  // Intermediate offset of each second-factor tap (grad_w2 operand Tt).
  const int64_t taps2 = lay.taps2, rpad = lay.rpad, k2p = lay.k2p;
  std::vector<int64_t> tap2_off(static_cast<size_t>(taps2));
  for (int64_t j = 0; j < taps2; ++j)
    tap2_off[static_cast<size_t>(j)] =
        g.channel ? 0 : ((j * s.dw) % s.sw) * s.rank * tplane + j * s.dw / s.sw;
#pragma omp parallel num_threads(used)
  {
    const int tid = omp_get_thread_num();
    Buffer xp(g.planes_x() * g.plane), t(want_w2 ? lay.t_planes * tplane : 0);
    Buffer w2b(want_w2 ? g.Pmax * lay.w2_cols() : 0);
    Buffer w2a(want_w2 ? lay.w2_a_rows(g, kern.mr) * g.Pmax : 0);
    Buffer G(s.Nout * gplane), gt(want_gt ? nb * s.rank * gplane : 0);
    Buffer gxp(want_gx ? g.planes_x() * g.plane : 0);
    Buffer xn(want_w1 ? s.sh * s.sw * g.plane * cpad : 0);
    Buffer gtp(want_w1 ? panel_rows * g.Pmax : 0);
    float* aw1 = nullptr;
    if (want_w1) {
      acc_taps[static_cast<size_t>(tid)].assign(static_cast<size_t>(taps1 * s.rank * cpad), 0.f);
      aw1 = acc_taps[static_cast<size_t>(tid)].data();
    }
    float* aw2 = nullptr;
    if (want_w2) {
      acc_w2[static_cast<size_t>(tid)].assign(static_cast<size_t>(lay.w2_sums(g)), 0.f);
      aw2 = acc_w2[static_cast<size_t>(tid)].data();
    }
    std::vector<ImageWindow> win(static_cast<size_t>(s.sh));
    std::vector<int64_t> kpix, krows;  // a weight gradient's pixels and their B rows
    // Static: each thread sums the same tiles on every call, so the weight
    // gradients are the same bits from run to run (at a given thread count);
    // the tiles of a call cost about the same, so little balance is lost.
#pragma omp for schedule(static)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t n = item / g.ntiles, tile = item % g.ntiles, oh0 = tile * g.R;
      const int64_t rows = std::min(g.R, g.Ho - oh0);
      const int64_t P = round_up(rows * g.Wq, kPixelAlign);
      const int64_t qown = tile + 1 < g.ntiles ? rows : ceil_div(Hp - oh0 * s.sh, s.sh);
      pack_grad_out(kern, go, gs, n, oh0, rows, g, grid_rows, G.get(), gplane, front);
      if (bias.wanted())  // the tile's own rows (columns past Wo are zero)
        for (int64_t o = 0; o < s.Nout; ++o)
          bias.add_plane(tid, o, G.get() + o * gplane + row0, rows * g.Wq);
      if (want_w1 || recompute) pack_input(kern, x, xs, n, oh0, rows + g.qh_max, g, xp.get());
      if (want_w2) {  // the intermediate (kept or recomputed), then grad_w2 += G . T^T
        if (t_saved) {
          load_intermediate(kern, t_saved, t_cl, n, oh0, rows, g, t.get(), tplane, tplane);
        } else {
          for (int64_t b = 0; b < nb; ++b)
            kern.row_gemm({s.rank, g.K1, P, a1, g.K1, xp.get() + b * s.C * g.plane, off1.data(),
                           nullptr, t.get() + b * s.rank * tplane, tplane, false});
        }
        // Over the output columns only: G is zero on the others.
        grid_pixels(rows, g.Wq, {0, g.Wo}, lay.w2_cols(), kpix, krows);
        const int64_t kv = static_cast<int64_t>(kpix.size());
        if (lay.w2_by_rank) {  // Gt columns past Nout stay zero (w2b starts zeroed)
          planes_to_pixels(kern, G.get() + row0, gplane, P, s.Nout, w2b.get(), lay.npad);
          const int64_t arows = round_up(s.rank, kern.mr);
          for (int64_t j = 0; j < taps2; ++j) {
            float* a = w2a.get() + j * arows * kv;
            pack_pixel_panels(kern, t.get() + tap2_off[static_cast<size_t>(j)], tplane, s.rank,
                              kpix, kern.mr, a);
            kern.row_gemm({s.rank, kv, lay.npad, a, 0, w2b.get(), krows.data(), nullptr,
                           aw2 + j * s.rank * lay.npad, lay.npad, true});
          }
        } else {
          for (int64_t j = 0; j < taps2; ++j)  // ranks past `rank` read finite slack: unused sums
            planes_to_pixels(kern, t.get() + tap2_off[static_cast<size_t>(j)], tplane, P, rpad,
                             w2b.get() + j * rpad, k2p);
          pack_pixel_panels(kern, G.get() + row0, gplane, s.Nout, kpix, kern.mr, w2a.get());
          kern.row_gemm(
              {s.Nout, kv, k2p, w2a.get(), 0, w2b.get(), krows.data(), nullptr, aw2, k2p, true});
        }
      }
      if (!want_gt) continue;
      // grad_x is computed for the owned plane rows inside the image only
      // ([q_lo, q_hi) per row phase): the padding rows would be thrown away
      // (on a 7 px image they are 2 of 9 rows, plus the grid's rounding).
      int64_t q_top = rows;
      if (want_gx)
        for (int64_t a = 0; a < s.sh; ++a) {
          win[static_cast<size_t>(a)] = image_window(g, oh0, a, qown);
          q_top = std::max(q_top, win[static_cast<size_t>(a)].q_hi);
        }
      // gT over rows [-qh_max, q_top): grad_w1 reads rows [0, rows) (P pixels:
      // past the last row it reads zeros, G being zero there), grad_x rows
      // [q_lo - qh_max, q_hi).
      const int64_t ext =
          round_up(g.qh_max * g.Wq + round_up(q_top * g.Wq, kPixelAlign), kPixelAlign);
      for (int64_t b = 0; b < nb; ++b) {
        const auto& w = w2t[static_cast<size_t>(b)];
        float* dst = gt.get() + b * s.rank * gplane + front;
        const int64_t K = static_cast<int64_t>(w.offset.size());
        if (K == 0) {
          for (int64_t r = 0; r < s.rank; ++r) std::memset(dst + r * gplane, 0, ext * 4);
          continue;
        }
        kern.row_gemm({s.rank, K, ext, w.a.data(), 0, G.get() + front, w.offset.data(), nullptr,
                       dst, gplane, false});
      }
      if (want_w1) {
        // Input phases as channel-contiguous pixels (padding channels stay zero).
        for (int64_t ph = 0; ph < s.sh * s.sw; ++ph)
          planes_to_pixels(kern, xp.get() + ph * s.C * g.plane, g.plane, g.plane, s.C,
                           xn.get() + ph * g.plane * cpad, cpad);
        for (int64_t b = 0; b < nb; ++b) {
          // The sum runs over the grid columns where a term can be nonzero:
          // channel, the output columns (gT = W2^T G is zero elsewhere);
          // spatial, the columns holding input (X is zero padding elsewhere).
          // 7 of 9 columns on a 7 px image.
          grid_pixels(rows, g.Wq, grad_w1_columns(g, b), cpad, kpix, krows);
          const int64_t kv = static_cast<int64_t>(kpix.size());
          if (kv == 0) continue;
          pack_pixel_panels(kern, gt.get() + b * s.rank * gplane + row0, gplane, s.rank, kpix,
                            kern.mr, gtp.get());
          for (size_t gi = 0; gi < groups.size(); ++gi) {
            const Tap& tp = groups[gi];
            const int64_t phase = g.channel ? tp.phase : tp.phase + b;
            kern.row_gemm({s.rank, kv, group_cols, gtp.get(), 0,
                           xn.get() + (phase * g.plane + tp.shift) * cpad, krows.data(), nullptr,
                           aw1 + static_cast<int64_t>(gi) * s.rank * group_cols, group_cols, true});
          }
        }
      }
      if (want_gx) {
        for (int64_t a = 0; a < s.sh; ++a) {
          const int64_t q_lo = win[static_cast<size_t>(a)].q_lo,
                        q_hi = win[static_cast<size_t>(a)].q_hi;
          if (q_hi == q_lo) continue;  // store_grad_input reads no row of this phase
          const int64_t Pown = round_up((q_hi - q_lo) * g.Wq, kPixelAlign);
          for (int64_t b = 0; b < s.sw; ++b) {
            const PhaseTaps& ph = w1t[static_cast<size_t>(a * s.sw + b)];
            float* dst = gxp.get() + (a * s.sw + b) * s.C * g.plane + q_lo * g.Wq;
            const int64_t K = static_cast<int64_t>(ph.offset.size());
            if (K == 0) {
              for (int64_t c = 0; c < s.C; ++c) std::memset(dst + c * g.plane, 0, Pown * 4);
              continue;
            }
            kern.row_gemm({s.C, K, Pown, ph.a.data(), 0, gt.get() + row0 + q_lo * g.Wq,
                           ph.offset.data(), nullptr, dst, g.plane, false});
          }
        }
        store_grad_input(kern, gxp.get(), n, oh0, qown, g, gx, gxs);
      }
    }
  }
  // The threads' sums of element i of a per-thread accumulator.
  auto total = [&](const std::vector<std::vector<float>>& acc, int64_t i) {
    return sum_over_threads(acc, used, i);
  };
  if (want_w1) {  // acc[group][r][tap in group][c] -> grad_w1[r][c][tap], by every thread
#pragma omp parallel for num_threads(used) schedule(static)
    for (int64_t r = 0; r < s.rank; ++r)
      for (int64_t c = 0; c < s.C; ++c)
        for (int64_t t = 0; t < taps1; ++t)
          gw1[(r * s.C + c) * taps1 + t] = from_f32<T>(total(
              acc_taps, ((t / group_taps * s.rank + r) * group_taps + t % group_taps) * cpad + c));
  }
  if (want_w2) {  // acc[o][j][r] (or acc[j][r][o], w2_by_rank) -> grad_w2[o][r][tap j]
#pragma omp parallel for num_threads(used) schedule(static)
    for (int64_t o = 0; o < s.Nout; ++o)
      for (int64_t r = 0; r < s.rank; ++r)
        for (int64_t j = 0; j < taps2; ++j)
          gw2[(o * s.rank + r) * taps2 + j] = from_f32<T>(total(
              acc_w2, lay.w2_by_rank ? (j * s.rank + r) * lay.npad + o : o * k2p + j * rpad + r));
  }
  if (bias.wanted()) bias.store(gb);
}

}  // namespace

int64_t lowrank_conv2d_backward_workspace_bytes(const LowRankConvShape& s, DType dtype,
                                                int num_threads, bool channels_last) {
  if (channels_last && dtype == DType::kFloat32) {
    if (nhwc_applies(s, channels_last_strides(s.C, s.H, s.W),
                     channels_last_strides(s.Nout, output_height(s), output_width(s)), num_threads))
      return nhwc_backward_workspace_bytes(s, num_threads);
  }
  const int threads = resolve_threads(num_threads);
  const Geometry g = backward_geometry(s, threads);
  const int64_t mr = pick_kernels().mr;
  const int64_t used = std::max<int64_t>(1, std::min<int64_t>(threads, s.N * g.ntiles));
  const int64_t kw2 = g.channel ? 1 : s.kw;
  const int64_t weights = (dtype == DType::kBFloat16 ? s.rank * g.K1 : 0) +
                          round_up(s.rank, mr) * s.Nout * kw2 +
                          round_up(s.C, mr) * s.rank * s.kh * (g.channel ? s.kw : 1);
  const BackwardLayout lay(g, static_cast<int>(mr));
  const int64_t offsets = 2 * (g.K1 + lay.taps2 + used * 2 * g.Pmax);  // int64 = 2 floats
  return 4 * (used * lay.thread_floats(g, static_cast<int>(mr)) + weights + offsets);
}

void lowrank_conv2d_backward_cpu(const void* grad_out, const Strides4& gs, const void* x,
                                 const Strides4& xs, const void* w1, const void* w2, void* grad_x,
                                 const Strides4& gxs, void* grad_w1, void* grad_w2,
                                 const LowRankConvShape& s, DType dtype, int num_threads,
                                 const float* intermediate, void* grad_bias,
                                 bool intermediate_channels_last) {
  if (dtype == DType::kBFloat16) {
    using T = uint16_t;
    backward(static_cast<const T*>(grad_out), gs, static_cast<const T*>(x), xs,
             static_cast<const T*>(w1), static_cast<const T*>(w2), static_cast<T*>(grad_x), gxs,
             static_cast<T*>(grad_w1), static_cast<T*>(grad_w2), static_cast<T*>(grad_bias), s,
             num_threads, intermediate, intermediate_channels_last);
  } else if (nhwc_applies(s, xs, gs, num_threads) &&
             (grad_x == nullptr || is_channels_last(gxs, s.C, s.H, s.W))) {
    backward_nhwc(static_cast<const float*>(grad_out), static_cast<const float*>(x),
                  static_cast<const float*>(w1), static_cast<const float*>(w2),
                  static_cast<float*>(grad_x), static_cast<float*>(grad_w1),
                  static_cast<float*>(grad_w2), static_cast<float*>(grad_bias), s, num_threads,
                  intermediate, intermediate_channels_last);
  } else {
    using T = float;
    backward(static_cast<const T*>(grad_out), gs, static_cast<const T*>(x), xs,
             static_cast<const T*>(w1), static_cast<const T*>(w2), static_cast<T*>(grad_x), gxs,
             static_cast<T*>(grad_w1), static_cast<T*>(grad_w2), static_cast<T*>(grad_bias), s,
             num_threads, intermediate, intermediate_channels_last);
  }
}

}  // namespace fusenas
