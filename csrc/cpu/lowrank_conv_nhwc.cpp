// Forward of the fused low-rank conv for channels_last float32 tensors,
// pixel-major: every stage is a GEMM whose rows are pixels and whose columns
// are channels, so
//   - no phase planes, no transposes, no padded-width grid whose columns are
//     thrown away (20% of the work at 8 px in the plane path);
//   - the output tile is written straight into y (its pixels are contiguous
//     in channels_last), the residual + ReLU epilogue applied on the way;
//   - a tile can span several small images (a block of global output rows).
// Two forms of the same per-tile steps (T = first factor over its taps, then
// y = second factor over T's taps, T also written out when the backward
// keeps it):
//   - direct (horizontal stride 1, up to 32 input channels): BlockGemm, one
//     pointer per row and tap; x's rows are read in place at 16 channels,
//     else copied per tile into 16-channel blocks; T rows carry zero pixels
//     for the second factor's padding. Measured against the
//     indirect form in one process (batch 64, 2 threads, residual + ReLU):
//     16 ch @32 spatial rank 15 0.86 -> 0.67 ms, channel rank 16 1.41 ->
//     1.17 ms; the 32/64-channel ResNet-20 shapes level (0.98-1.02x), and
//     64-256 channels lost to the copies (0.90-0.98x), so they stay indirect.
//   - indirect (any stride, any channel count): IndGemm, a pointer per pixel and tap into x
//     where it lies, padding taps at a row of zeros.
// In either form, a 3-tap factor at stride and dilation 1 along its taps
// (spatial: both factors; channel scheme: the k x 3 one) runs by Winograd
// F(4, 3) where its rank and memory rules allow (lowrank_winograd.h, Plan).
// Packed weights must stay cache-resident across a tile's pixels, so large
// layers keep the plane path (lowrank_conv_cpu.cpp), and so do low ranks,
// which this path rounds up to whole vectors (nhwc_applies).
#include "cpu/lowrank_conv_nhwc.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "cpu/lowrank_conv_tiles.h"
#include "cpu/lowrank_winograd.h"

namespace fusenas {
namespace lowrank_detail {

namespace {

// Output pixels per tile: T (pixels x rank) and the output tile stay in L2.
constexpr int64_t kTilePixels = 256;
// Most multiply-adds this path may do per output pixel, relative to the plane
// path's (see nhwc_applies): 1.25 as measured on AVX2 and Zen 5 hosts; 1.5 on
// AVX-512 hosts since session 22 (Zen 4, the 8-wide avx512-ymm kernels): of the
// three grid layers that moves, 16 ch @32 spatial rank 4 (1.41x the plane
// path's work) trains 10% faster (min of 5 alternating processes, 2 threads:
// 6.32 -> 5.48 ms per step, forward level), 32 ch @16 spatial rank 4 and channel
// rank 5 measured level. Not measured on AVX2 hosts, which keep 1.25.
constexpr double kMaxWorkRatio = 1.25, kMaxWorkRatioAvx512 = 1.5;
// Most input channels for the direct form (Plan::block).
constexpr int64_t kMaxBlockChannels = 32;

struct Plan : PixelMajorPlan {
  int64_t np;  // Nout rounded up to the vector width
  // The direct form (horizontal stride 1, BlockGemm): stage 1 reads x's rows,
  // or copies of them in channel blocks (`Wp` pixels each, `pw1` zero pixels
  // on both sides) in `xslots` row slots per tile; T rows hold `pw2` zero
  // pixels on both sides, so the second factor's horizontal padding taps read
  // zeros without a pointer per pixel.
  bool block;
  bool x_direct;  // x's rows are one block already (C = 16, no horizontal padding)
  int64_t pw1, pw2, Wp, xslot, xslots, Wtp, trow;
  // The first factor by Winograd along columns (ColumnWinograd): tiles are
  // then whole groups of 4 output rows of one image, `gpi` per image and
  // `gpt` per tile.
  bool col_wino;
  int64_t gpi = 0, gpt = 0;
  // The channel scheme's 3 x 3 first factor by 2D Winograd (stride 1; tiles
  // of row groups as col_wino's), else along rows (any vertical stride: the
  // tiles stay as they are); the spatial second factor along rows.
  bool wino2d, row_wino, second_wino;
  Plan(const LowRankConvShape& s, int vec, int threads)
      : PixelMajorPlan(s, vec, threads, kTilePixels), np(round_up(s.Nout, vec)) {
    constexpr int64_t CB = cpu::lowrank::kChannelBlock;
    col_wino = ColumnWinograd::applies(s, vec);
    wino2d = Winograd2D::applies(s, vec);
    row_wino = !wino2d && first_factor_row_winograd_applies(s, vec);
    second_wino = row_winograd_applies(s);
    // The Winograd forms hold transformed factors twice the direct ones' size
    // and per-thread transforms; the two-conv sequence holds the intermediate,
    // which this path never writes. All of this path's buffers are kept within
    // that intermediate, with the largest Winograd chunks that fit (else the
    // direct forms), so the fused forward's peak stays below the pair's
    // (without this rule: 64 ch @8 channel rank 10 at batch 128, 2.7 against
    // 2.4 MiB; 256 ch @14 rank 38 at batch 32, 8.1 against 7.1).
    // The 2D form's factor is twice the row form's: where it does not fit,
    // the row form may.
    if (col_wino || wino2d || row_wino || second_wino) {
      const int64_t used = std::min<int64_t>(threads, tiles);
      const int64_t intermediate = s.N * s.rank * Ho * Wo;
      auto fit = [&] {
        // The direct forms' packed factors and per-thread T and pointers (none
        // for a factor a Winograd form runs).
        const int64_t pointers =
            (first_winograd() ? 0 : taps1 * Wt) + (second_wino ? 0 : taps2 * Wo);
        const int64_t direct = taps1 * s.C * rp + taps2 * s.rank * np +
                               used * rows_per_tile * (Wt * rp + 2 * pointers);
        return winograd_cap([&](int64_t cap) {
          wino_cap = cap;  // winograd_extra_floats sizes the forms at the plan's cap
          return direct + winograd_extra_floats(s, used) <= intermediate;
        });
      };
      wino_cap = fit();
      if (wino_cap == 0 && wino2d) {
        wino2d = false;
        row_wino = first_factor_row_winograd_applies(s, vec);
        wino_cap = fit();
      }
      if (wino_cap == 0) col_wino = wino2d = row_wino = second_wino = false;
    }
    if (grouped()) {
      gpi = ceil_div(Ho, 4);
      gpt = std::max<int64_t>(1, rows_per_tile / 4);
      rows_per_tile = 4 * gpt;
      tiles = ceil_div(s.N * gpi, gpt);
    }
    // At 64-256 channels the per-tile copies into blocks cost more than the
    // pointers they save (same-process A/B, batch 32-128: 0.90-0.98x of the
    // indirect form for 64 ch @56 / @8, 128 ch @28, 256 ch @14, spatial).
    block = s.sw == 1 && s.C <= kMaxBlockChannels;
    pw1 = channel ? s.pw : 0;
    pw2 = channel ? 0 : s.pw;
    x_direct = s.C == CB && pw1 == 0;
    Wp = s.W + 2 * pw1;
    xslot = ceil_div(s.C, CB) * Wp * CB;
    // Each image a tile touches needs its rows' input rows: at most
    // (rows - 1) sh + (kh - 1) dh + 1 for each of the images a tile's rows span.
    const int64_t images = std::min(rows_per_tile, ceil_div(rows_per_tile - 1, Ho) + 1);
    xslots = x_direct || col_wino || wino2d || row_wino
                 ? 0
                 : rows_per_tile * s.sh + images * ((s.kh - 1) * s.dh + 1);
    Wtp = Wt + 2 * pw2;
    trow = ceil_div(rp, CB) * Wtp * CB;
  }
  // Whether tiles are groups of 4 output rows (the column and 2D forms).
  bool grouped() const { return col_wino || wino2d; }
  bool first_winograd() const { return col_wino || wino2d || row_wino; }
  // Tile `tile`'s global output rows [g0, g0 + rows) and, for grouped(), its
  // row groups [G0, G1).
  void tile_span(int64_t tile, int64_t total_rows, int64_t& g0, int64_t& rows, int64_t& G0,
                 int64_t& G1) const {
    if (!grouped()) {
      g0 = tile * rows_per_tile;
      rows = std::min(rows_per_tile, total_rows - g0);
      return;
    }
    G0 = tile * gpt;
    G1 = std::min(G0 + gpt, total_rows / Ho * gpi);
    auto row_of = [&](int64_t G) { return G / gpi * Ho + std::min(Ho, 4 * (G % gpi)); };
    g0 = row_of(G0);
    const int64_t last = G1 - 1;
    rows = last / gpi * Ho + std::min(Ho, 4 * (last % gpi) + 4) - g0;
  }
  // Floats the Winograd forms add to the direct forms' packed factors and
  // per-thread buffers (`threads` of them).
  int64_t winograd_extra_floats(const LowRankConvShape& s, int64_t threads) const {
    const auto& kern = pixel_major_kernels(s);
    int64_t extra = 0;
    if (second_wino) {
      const RowWinograd w = second_factor_winograd(nullptr, s, *this, np, kern);
      extra += w.packed_floats() - taps2 * s.rank * np + threads * w.scratch_floats();
    }
    if (col_wino) {
      const ColumnWinograd w = first_factor_column_winograd(nullptr, s, *this, kern);
      extra += w.packed_floats() - taps1 * s.C * rp + threads * w.scratch_floats();
    }
    if (row_wino) {
      const RowWinograd w = first_factor_winograd(nullptr, s, *this, kern);
      extra += w.packed_floats() - taps1 * s.C * rp + threads * w.scratch_floats();
    }
    if (wino2d) {
      const Winograd2D w = first_factor_winograd_2d(nullptr, s, *this, kern);
      extra += w.packed_floats() - taps1 * s.C * rp + threads * w.scratch_floats();
    }
    return extra;
  }
  int64_t p1_max() const { return rows_per_tile * Wt; }
  int64_t p2_max() const { return rows_per_tile * Wo; }
  // Per-thread floats: T, the output tile (when Nout is not whole vectors) and
  // the pointers (2 floats each): one per pixel and tap for the IndGemm form
  // (none for a factor a Winograd form runs), with the PaddingGroups of each
  // list; one per row and tap, plus the input row copies, for the direct form.
  int64_t thread_floats(const LowRankConvShape& s) const {
    const int64_t out = np != s.Nout ? p2_max() * np : 0;
    if (block)
      return rows_per_tile * trow + out + xslots * xslot + 2 * rows_per_tile * (taps1 + taps2);
    const int64_t first = first_winograd() ? 0 : p1_max(), second = second_wino ? 0 : p2_max();
    return p1_max() * rp + out + 2 * (taps1 * first + taps2 * second) +
           PaddingGroups::scratch_floats(first) + PaddingGroups::scratch_floats(second);
  }
};

}  // namespace

PixelMajorPlan::PixelMajorPlan(const LowRankConvShape& s, int vec, int threads,
                               int64_t tile_pixels) {
  channel = s.scheme == LowRankScheme::kChannel;
  Ho = output_height(s);
  Wo = output_width(s);
  Wt = channel ? Wo : s.W;
  taps1 = channel ? s.kh * s.kw : s.kh;
  taps2 = channel ? 1 : s.kw;
  rp = round_up(s.rank, vec);
  const int64_t rows = s.N * Ho;
  rows_per_tile =
      std::max<int64_t>(1, std::min(std::max<int64_t>(1, tile_pixels / std::max<int64_t>(Wo, 1)),
                                    ceil_div(rows, 4 * static_cast<int64_t>(threads))));
  tiles = ceil_div(rows, rows_per_tile);
}

void fill_first_factor_pointers(const LowRankConvShape& s, int64_t Ho, int64_t Wt, const float* x,
                                int64_t g0, int64_t rows, const float** ind, const float* zero) {
  const bool channel = s.scheme == LowRankScheme::kChannel;
  const int64_t P1 = rows * Wt;
  for (int64_t q = 0; q < rows; ++q) {
    const int64_t n = (g0 + q) / Ho, oh = (g0 + q) % Ho;
    const float* xn = x + n * s.H * s.W * s.C;
    for (int64_t i = 0; i < s.kh; ++i) {
      const int64_t ih = oh * s.sh - s.ph + i * s.dh;
      const bool row_ok = ih >= 0 && ih < s.H;
      for (int64_t jj = 0; jj < (channel ? s.kw : 1); ++jj) {
        const int64_t t = channel ? i * s.kw + jj : i;
        const float** dst = ind + t * P1 + q * Wt;
        if (channel)
          fill_row_pointers(dst, Wt, xn + ih * s.W * s.C, jj * s.dw - s.pw, s.sw, s.W, s.C, row_ok,
                            zero);
        else
          fill_row_pointers(dst, Wt, xn + ih * s.W * s.C, 0, 1, s.W, s.C, row_ok, zero);
      }
    }
  }
}

bool nhwc_applies(const LowRankConvShape& s, const Strides4& xs, const Strides4& ys,
                  int num_threads) {
  const char* env = std::getenv("FUSENAS_LOWRANK_NHWC");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  const int vec = pixel_major_kernels(s).vec_width;
  const Plan pl(s, vec, resolve_threads(num_threads));  // Winograd flags as the call plans them
  // No limit on the factors' size: IndGemm takes B in column panels and in
  // blocks of rows. At 128-512 channels this path is 1.0-1.4x faster than the plane
  // path, forward and forward+backward (in-process A/B, 2 threads, AVX2).
  if (!is_channels_last(xs, s.C, s.H, s.W) || !is_channels_last(ys, s.Nout, pl.Ho, pl.Wo))
    return false;
  if (env != nullptr && std::strcmp(env, "1") == 0) return true;
  // Multiply-adds per output pixel: this path rounds the rank (first stage) and
  // the output channels up to whole vectors; the plane path computes the
  // padded-width grid's extra columns. Low ranks (r = 2..12 of 16-wide vectors)
  // make this path do up to several times the work; measured (bench_lowrank,
  // 28 shapes) it still wins up to about 1.25x the plane path's count, since it
  // copies and transposes nothing.
  const double t_per_out = static_cast<double>(pl.Wt) / static_cast<double>(pl.Wo);
  const double useful = static_cast<double>(pl.taps1 * s.C * s.rank) * t_per_out +
                        static_cast<double>(pl.taps2 * s.rank * s.Nout);
  // A factor that runs by Winograd F(4, 3) does half its multiply-adds, by
  // F(4 x 4, 3 x 3) a quarter (with the rule counting F(4, 3), channels_last 64
  // ch @56 channel rank 10 moved here from the planes: training step 40.8 ->
  // 31.6 ms, forward 11.6 -> 8.9; 128 ch @28 rank 19 31.3 -> 25.1 and 9.4 ->
  // 8.1; 16 ch @32 rank 7 12.96 -> 10.58, but its forward 2.87 -> 3.64).
  const double first = pl.wino2d ? 0.25 : pl.col_wino || pl.row_wino ? 0.5 : 1.0;
  const double second = pl.second_wino ? 0.5 : 1.0;
  const double mine = first * static_cast<double>(pl.taps1 * s.C * pl.rp) * t_per_out +
                      second * static_cast<double>(pl.taps2 * s.rank * pl.np);
  const double grid = static_cast<double>(ceil_div(s.W + 2 * s.pw, s.sw)) / pl.Wo;
  const double most = cpu::active_isa() == cpu::Isa::kAvx512 ? kMaxWorkRatioAvx512 : kMaxWorkRatio;
  return mine <= most * useful * grid;
}

namespace {

// A tile computed at np columns (whole vectors) into y's pixels of Nout < np
// columns, then the residual + ReLU epilogue.
void store_padded_tile(const cpu::lowrank::Kernels& kern, const float* out, int64_t pixels,
                       int64_t np, int64_t nout, float* y, const float* residual, bool relu) {
  for (int64_t p = 0; p < pixels; ++p)
    std::memcpy(y + p * nout, out + p * np, sizeof(float) * nout);
  if (residual || relu) kern.add_relu(y, residual, pixels * nout, relu);
}

// The Winograd forms a layer's factors take (lowrank_winograd.h), each
// empty where the direct form runs: the first factor along columns (spatial)
// or rows (channel scheme), the second along rows (spatial).
struct TileWinograd {
  std::optional<ColumnWinograd> col;
  std::optional<Winograd2D> square;
  std::optional<RowWinograd> first_row, second;
  TileWinograd(const float* w1, const float* w2, const LowRankConvShape& s, const Plan& pl,
               const cpu::lowrank::Kernels& kern) {
    if (pl.col_wino) col.emplace(first_factor_column_winograd(w1, s, pl, kern));
    if (pl.wino2d) square.emplace(first_factor_winograd_2d(w1, s, pl, kern));
    if (pl.row_wino) first_row.emplace(first_factor_winograd(w1, s, pl, kern));
    if (pl.second_wino) second.emplace(second_factor_winograd(w2, s, pl, pl.np, kern));
  }
  bool first() const { return col || square || first_row; }
  WinogradScratch first_scratch() const {
    return col         ? col->scratch()
           : square    ? square->scratch()
           : first_row ? first_row->scratch()
                       : WinogradScratch();
  }
  WinogradScratch second_scratch() const { return second ? second->scratch() : WinogradScratch(); }

  // T rows [g0, g0 + rows) of the tile (row groups [G0, G1) for col and
  // square) from x: T row q at t + q ldt, pixel stride pt, channel block
  // stride tcb; zeros: a zero input row (W C floats).
  void first_factor(const cpu::lowrank::Kernels& kern, WinogradScratch& sc, const float* x,
                    const LowRankConvShape& s, int64_t Ho, int64_t g0, int64_t rows, int64_t G0,
                    int64_t G1, float* t, int64_t ldt, int64_t pt, int64_t tcb,
                    const float* zeros) const {
    if (square || col) {
      // Group G: image G / gpi, T rows 4 (G % gpi) + i < Ho from x rows 4 (G % gpi) - ph + i.
      const int64_t gpi = ceil_div(Ho, 4);
      auto group = [&](int64_t g, const float** rows) {
        const int64_t n = (G0 + g) / gpi, oh0 = 4 * ((G0 + g) % gpi);
        for (int64_t i = 0; i < 6; ++i) {
          const int64_t ih = oh0 - s.ph + i;
          rows[i] = ih >= 0 && ih < s.H ? x + (n * s.H + ih) * s.W * s.C : zeros;
        }
        return ColumnWinograd::Rows{t + (n * Ho + oh0 - g0) * ldt, std::min<int64_t>(4, Ho - oh0)};
      };
      if (square)
        square->run(kern, sc, G1 - G0, group, ldt, pt, tcb, zeros);
      else
        col->run(kern, sc, G1 - G0, group, ldt, pt, tcb);
      return;
    }
    first_row->run(
        kern, sc, rows,
        [&](int64_t q, int64_t i, int64_t p) {
          const int64_t n = (g0 + q) / Ho, ih = (g0 + q) % Ho * s.sh - s.ph + i * s.dh;
          return ih >= 0 && ih < s.H && p >= 0 && p < s.W ? x + ((n * s.H + ih) * s.W + p) * s.C
                                                          : zeros;
        },
        cpu::lowrank::kChannelBlock, nullptr, [&](int64_t q) { return t + q * ldt; }, pt, tcb,
        [](int64_t) -> const float* { return nullptr; }, false);
  }
};

// The IndGemm form: a pointer per pixel and tap (any stride).
void forward_ind(const float* x, const float* w1, const float* w2, const float* bias, float* y,
                 const LowRankConvShape& s, const Plan& pl, int threads, const float* residual,
                 bool relu, float* t_out, bool t_cl) {
  const auto& kern = pixel_major_kernels(s);
  const TileWinograd tw(w1, w2, s, pl, kern);
  const Buffer b1 =
      tw.first() ? Buffer(0, false) : pack_factor(w1, s.rank, s.C, pl.taps1, pl.rp, kern);
  const Buffer b2 =
      tw.second ? Buffer(0, false) : pack_factor(w2, s.Nout, s.rank, pl.taps2, pl.np, kern);
  std::vector<float> bias_p(static_cast<size_t>(pl.np), 0.f);
  if (bias) std::copy(bias, bias + s.Nout, bias_p.begin());
  // Zero rows: a padding tap's pixel, or a whole padding row of x (ColumnWinograd).
  const std::vector<float> zeros(
      static_cast<size_t>(std::max({s.C, pl.rp, tw.col || tw.square ? s.W * s.C : 0})), 0.f);
  const int64_t total_rows = s.N * pl.Ho;
  struct State {
    Buffer t, out;
    std::vector<const float*> ind1, ind2;
    WinogradScratch first, second;
    PaddingGroups groups1, groups2;
  };
  parallel_items(
      pl.tiles, threads,
      [&] {
        return State{
            Buffer(pl.p1_max() * pl.rp, false),
            Buffer(pl.np != s.Nout ? pl.p2_max() * pl.np : 0, false),
            std::vector<const float*>(tw.first() ? 0 : static_cast<size_t>(pl.taps1 * pl.p1_max())),
            std::vector<const float*>(tw.second ? 0 : static_cast<size_t>(pl.taps2 * pl.p2_max())),
            tw.first_scratch(),
            tw.second_scratch()};
      },
      [&](State& st, int64_t tile) {
        int64_t g0, rows, G0 = 0, G1 = 0;
        pl.tile_span(tile, total_rows, g0, rows, G0, G1);
        const int64_t P1 = rows * pl.Wt, P2 = rows * pl.Wo;
        if (tw.first()) {
          tw.first_factor(kern, st.first, x, s, pl.Ho, g0, rows, G0, G1, st.t.get(), pl.Wt * pl.rp,
                          pl.rp, cpu::lowrank::kChannelBlock, zeros.data());
        } else {
          fill_first_factor_pointers(s, pl.Ho, pl.Wt, x, g0, rows, st.ind1.data(), zeros.data());
          st.groups1.regroup(st.ind1.data(), P1, pl.taps1, zeros.data());
          kern.ind_gemm(st.groups1.apply(
              {P1, s.C, pl.rp, pl.taps1, st.ind1.data(), b1.get(), nullptr, st.t.get(), pl.rp}));
        }
        if (t_out && t_cl) {  // kept for the backward, channels_last: the tile's pixels in order
          // (short rows of rank floats: a masked vector copy each on AVX-512; the
          // forward measured level against a memcpy call per pixel)
          float* dst = t_out + g0 * pl.Wt * s.rank;
          if (pl.rp == s.rank)
            std::memcpy(dst, st.t.get(), sizeof(float) * P1 * s.rank);
          else
            kern.copy_pad_rows(st.t.get(), pl.rp, P1, 0, s.rank, s.rank, dst, s.rank);
        } else if (t_out) {  // kept as planes (N, rank, Ho, Wt), a row per tile row
          for (int64_t q = 0; q < rows; ++q) {
            const int64_t n = (g0 + q) / pl.Ho, oh = (g0 + q) % pl.Ho;
            pixels_to_planes(kern, st.t.get() + q * pl.Wt * pl.rp, pl.rp, pl.Wt, s.rank,
                             t_out + (n * s.rank * pl.Ho + oh) * pl.Wt, pl.Ho * pl.Wt);
          }
        }
        float* yt = y + g0 * pl.Wo * s.Nout;  // the tile's pixels, contiguous
        const bool direct = pl.np == s.Nout;
        if (tw.second) {
          const float* t = st.t.get();
          float* dst = direct ? yt : st.out.get();
          const int64_t ldy = direct ? s.Nout : pl.np;
          const float* rt = direct && residual ? residual + g0 * pl.Wo * s.Nout : nullptr;
          tw.second->run(
              kern, st.second, rows,
              [&](int64_t q, int64_t, int64_t p) {
                return p >= 0 && p < pl.Wt ? t + (q * pl.Wt + p) * pl.rp : zeros.data();
              },
              cpu::lowrank::kChannelBlock, bias_p.data(),
              [&](int64_t q) { return dst + q * pl.Wo * ldy; }, ldy, cpu::lowrank::kChannelBlock,
              [&](int64_t q) { return rt ? rt + q * pl.Wo * ldy : nullptr; }, direct && relu);
          if (!direct)
            store_padded_tile(kern, st.out.get(), rows * pl.Wo, pl.np, s.Nout, yt,
                              residual ? residual + g0 * pl.Wo * s.Nout : nullptr, relu);
          return;
        }
        // Second factor: output pixel (q, ow), tap jj reads T pixel (q, ow) for
        // the channel scheme, (q, ow sw - pw + jj dw) for spatial.
        for (int64_t q = 0; q < rows; ++q)
          for (int64_t jj = 0; jj < pl.taps2; ++jj) {
            const float* trow = st.t.get() + q * pl.Wt * pl.rp;
            fill_row_pointers(st.ind2.data() + jj * P2 + q * pl.Wo, pl.Wo, trow,
                              pl.channel ? 0 : jj * s.dw - s.pw, pl.channel ? 1 : s.sw, pl.Wt,
                              pl.rp, true, zeros.data());
          }
        st.groups2.regroup(st.ind2.data(), P2, pl.taps2, zeros.data());
        kern.ind_gemm(
            st.groups2.apply({P2, s.rank, pl.np, pl.taps2, st.ind2.data(), b2.get(), bias_p.data(),
                              direct ? yt : st.out.get(), direct ? s.Nout : pl.np}));
        const float* rt = residual ? residual + g0 * pl.Wo * s.Nout : nullptr;
        if (!direct)
          store_padded_tile(kern, st.out.get(), P2, pl.np, s.Nout, yt, rt, relu);
        else if (residual || relu)
          kern.add_relu(yt, rt, P2 * s.Nout, relu);
      });
}

// Input rows [lo, lo + n) of image `img` of x into row slots of `Wp` pixels in
// channel blocks: pixel p of the row at pixel pw1 + p, zeros at the sides.
void pack_input_rows(const float* x, const LowRankConvShape& s, const Plan& pl, int64_t img,
                     int64_t lo, int64_t n, float* dst) {
  constexpr int64_t CB = cpu::lowrank::kChannelBlock;
  const int64_t kbs = pl.Wp * CB;
  for (int64_t r = 0; r < n; ++r, dst += pl.xslot) {
    const float* row = x + ((img * s.H + lo + r) * s.W) * s.C;
    for (int64_t c0 = 0; c0 < s.C; c0 += CB) {
      float* d = dst + (c0 / CB) * kbs;
      std::memset(d, 0, sizeof(float) * pl.pw1 * CB);
      std::memset(d + (pl.pw1 + s.W) * CB, 0, sizeof(float) * pl.pw1 * CB);
      d += pl.pw1 * CB;
      if (s.C - c0 >= CB) {  // whole blocks: one 64-byte copy per pixel
        for (int64_t p = 0; p < s.W; ++p)
          std::memcpy(d + p * CB, row + p * s.C + c0, sizeof(float) * CB);
      } else {
        for (int64_t p = 0; p < s.W; ++p)
          std::memcpy(d + p * CB, row + p * s.C + c0, sizeof(float) * (s.C - c0));
      }
    }
  }
}

// The direct form (horizontal stride 1): BlockGemm over rows, one pointer per
// row and tap. Per tile: input rows (x's own rows at 16 channels without
// horizontal padding, else copies in channel blocks), T = first factor into
// blocked rows with zero pixels for the second factor's padding, then y =
// second factor, stored straight into y with the residual + ReLU epilogue.
void forward_block(const float* x, const float* w1, const float* w2, const float* bias, float* y,
                   const LowRankConvShape& s, const Plan& pl, int threads, const float* residual,
                   bool relu, float* t_out, bool t_cl) {
  constexpr int64_t CB = cpu::lowrank::kChannelBlock;
  const auto& kern = pixel_major_kernels(s);
  const TileWinograd tw(w1, w2, s, pl, kern);
  const Buffer b1 =
      tw.first() ? Buffer(0, false) : pack_factor(w1, s.rank, s.C, pl.taps1, pl.rp, kern);
  const Buffer b2 =
      tw.second ? Buffer(0, false) : pack_factor(w2, s.Nout, s.rank, pl.taps2, pl.np, kern);
  std::vector<float> bias_p(static_cast<size_t>(pl.np), 0.f);
  if (bias) std::copy(bias, bias + s.Nout, bias_p.begin());
  // Zero rows: x's padding rows (xslot floats, or W C for ColumnWinograd) and T
  // pixels past a row's padding for RowWinograd (a T row's blocks, trow floats).
  const std::vector<float> zeros(static_cast<size_t>(std::max({pl.xslot, pl.trow, s.W * s.C})),
                                 0.f);
  const int64_t total_rows = s.N * pl.Ho;
  const int64_t xkbs = pl.Wp * CB, tkbs = pl.Wtp * CB;
  const int64_t kw1 = pl.channel ? s.kw : 1;
  struct State {
    Buffer t, out, xin;
    std::vector<const float*> base1, base2;
    WinogradScratch first, second;
  };
  parallel_items(
      pl.tiles, threads,
      [&] {
        // T's padding pixels are read and never written: zeroed here, once.
        State st{Buffer(pl.rows_per_tile * pl.trow, false),
                 Buffer(pl.np != s.Nout ? pl.p2_max() * pl.np : 0, false),
                 Buffer(pl.xslots * pl.xslot, false),
                 std::vector<const float*>(static_cast<size_t>(pl.taps1 * pl.rows_per_tile)),
                 std::vector<const float*>(static_cast<size_t>(pl.taps2 * pl.rows_per_tile)),
                 tw.first_scratch(),
                 tw.second_scratch()};
        for (int64_t b = 0; b < pl.rows_per_tile * pl.trow; b += tkbs) {
          std::memset(st.t.get() + b, 0, sizeof(float) * pl.pw2 * CB);
          std::memset(st.t.get() + b + (pl.pw2 + pl.Wt) * CB, 0, sizeof(float) * pl.pw2 * CB);
        }
        return st;
      },
      [&](State& st, int64_t tile) {
        int64_t g0, rows, G0 = 0, G1 = 0;
        pl.tile_span(tile, total_rows, g0, rows, G0, G1);
        float* t = st.t.get();
        if (tw.first())
          tw.first_factor(kern, st.first, x, s, pl.Ho, g0, rows, G0, G1, t + pl.pw2 * CB, pl.trow,
                          CB, tkbs, zeros.data());  // Else the first factor's row pointers; the
                                                    // input rows of each image the
        // tile touches are copied once (a contiguous range per image).
        int64_t used = 0, img = -1, ih_lo = 0, slot0 = 0;
        for (int64_t q = 0; !tw.first() && q < rows; ++q) {
          const int64_t n = (g0 + q) / pl.Ho, oh = (g0 + q) % pl.Ho;
          if (!pl.x_direct && n != img) {
            const int64_t last = std::min(rows - 1, (n + 1) * pl.Ho - 1 - g0);
            const int64_t oh_last = (g0 + last) % pl.Ho;
            ih_lo = std::max<int64_t>(0, oh * s.sh - s.ph);
            const int64_t ih_hi =
                std::min<int64_t>(s.H - 1, oh_last * s.sh - s.ph + (s.kh - 1) * s.dh);
            img = n;
            slot0 = used;
            if (ih_hi >= ih_lo) {
              pack_input_rows(x, s, pl, n, ih_lo, ih_hi - ih_lo + 1,
                              st.xin.get() + used * pl.xslot);
              used += ih_hi - ih_lo + 1;
            }
          }
          for (int64_t i = 0; i < s.kh; ++i) {
            const int64_t ih = oh * s.sh - s.ph + i * s.dh;
            const bool inside = ih >= 0 && ih < s.H;
            const float* row = !inside       ? zeros.data()
                               : pl.x_direct ? x + ((n * s.H + ih) * s.W) * s.C
                                             : st.xin.get() + (slot0 + ih - ih_lo) * pl.xslot;
            for (int64_t jj = 0; jj < kw1; ++jj)
              st.base1[static_cast<size_t>((i * kw1 + jj) * rows + q)] =
                  inside ? row + jj * s.dw * CB : row;
          }
        }
        if (!tw.first())
          kern.block_gemm({rows, pl.Wt, s.C, pl.rp, pl.taps1, st.base1.data(), xkbs, b1.get(),
                           nullptr, t + pl.pw2 * CB, pl.trow, CB, tkbs, nullptr, false});
        if (t_out && t_cl) {  // kept for the backward, channels_last: row q's pixels, block c0
          for (int64_t q = 0; q < rows; ++q)
            for (int64_t c0 = 0; c0 < s.rank; c0 += CB) {
              const int64_t cols = std::min(CB, s.rank - c0);
              kern.copy_pad_rows(t + q * pl.trow + (c0 / CB) * tkbs + pl.pw2 * CB, CB, pl.Wt, 0,
                                 cols, cols, t_out + (g0 + q) * pl.Wt * s.rank + c0, s.rank);
            }
        } else if (t_out) {  // kept as planes (N, rank, Ho, Wt), a row per tile row
          for (int64_t q = 0; q < rows; ++q) {
            const int64_t n = (g0 + q) / pl.Ho, oh = (g0 + q) % pl.Ho;
            for (int64_t c0 = 0; c0 < s.rank; c0 += CB)
              pixels_to_planes(kern, t + q * pl.trow + (c0 / CB) * tkbs + pl.pw2 * CB, CB, pl.Wt,
                               std::min(CB, s.rank - c0),
                               t_out + ((n * s.rank + c0) * pl.Ho + oh) * pl.Wt, pl.Ho * pl.Wt);
          }
        }
        float* yt = y + g0 * pl.Wo * s.Nout;  // the tile's pixels, contiguous
        const float* rt = residual ? residual + g0 * pl.Wo * s.Nout : nullptr;
        const bool direct = pl.np == s.Nout;
        if (tw.second) {
          // T pixel p of row q at padded pixel pw2 + p; the zero row past the padding.
          float* dst = direct ? yt : st.out.get();
          const int64_t ldy = direct ? s.Nout : pl.np;
          const float* r = direct ? rt : nullptr;
          tw.second->run(
              kern, st.second, rows,
              [&](int64_t q, int64_t, int64_t p) {
                return p >= -pl.pw2 && p < pl.Wt + pl.pw2 ? t + q * pl.trow + (pl.pw2 + p) * CB
                                                          : zeros.data();
              },
              tkbs, bias_p.data(), [&](int64_t q) { return dst + q * pl.Wo * ldy; }, ldy, CB,
              [&](int64_t q) { return r ? r + q * pl.Wo * ldy : nullptr; }, direct && relu);
          if (!direct)
            store_padded_tile(kern, st.out.get(), rows * pl.Wo, pl.np, s.Nout, yt, rt, relu);
          return;
        }
        // Second factor: tap jj of output pixel ow reads T pixel ow + jj dw of
        // the padded row (ow - pw + jj dw of the unpadded one).
        for (int64_t q = 0; q < rows; ++q)
          for (int64_t jj = 0; jj < pl.taps2; ++jj)
            st.base2[static_cast<size_t>(jj * rows + q)] = t + q * pl.trow + jj * s.dw * CB;
        if (direct) {
          kern.block_gemm({rows, pl.Wo, s.rank, pl.np, pl.taps2, st.base2.data(), tkbs, b2.get(),
                           bias_p.data(), yt, pl.Wo * s.Nout, s.Nout, CB, rt, relu});
        } else {
          kern.block_gemm({rows, pl.Wo, s.rank, pl.np, pl.taps2, st.base2.data(), tkbs, b2.get(),
                           bias_p.data(), st.out.get(), pl.Wo * pl.np, pl.np, CB, nullptr, false});
          store_padded_tile(kern, st.out.get(), rows * pl.Wo, pl.np, s.Nout, yt, rt, relu);
        }
      });
}

}  // namespace

void forward_nhwc(const float* x, const float* w1, const float* w2, const float* bias, float* y,
                  const LowRankConvShape& s, int num_threads, const float* residual, bool relu,
                  float* t_out, bool t_cl) {
  const int threads = resolve_threads(num_threads);
  const Plan pl(s, pixel_major_kernels(s).vec_width, threads);
  if (pl.block)
    forward_block(x, w1, w2, bias, y, s, pl, threads, residual, relu, t_out, t_cl);
  else
    forward_ind(x, w1, w2, bias, y, s, pl, threads, residual, relu, t_out, t_cl);
}

int64_t nhwc_workspace_bytes(const LowRankConvShape& s, int num_threads) {
  const int threads = resolve_threads(num_threads);
  const Plan pl(s, pixel_major_kernels(s).vec_width, threads);
  const int64_t used = std::max<int64_t>(1, std::min<int64_t>(threads, pl.tiles));
  int64_t packed = pl.taps1 * s.C * pl.rp + pl.taps2 * s.rank * pl.np + pl.np;
  int64_t per_thread = pl.thread_floats(s);
  packed += pl.winograd_extra_floats(s, used);
  const int64_t zeros = std::max(
      {s.C, pl.rp, pl.block ? std::max(pl.xslot, pl.trow) : 0, pl.grouped() ? s.W * s.C : 0});
  return 4 * (used * per_thread + packed + zeros);
}

}  // namespace lowrank_detail
}  // namespace fusenas
