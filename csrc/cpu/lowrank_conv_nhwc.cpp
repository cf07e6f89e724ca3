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

namespace fusenas {
namespace lowrank_detail {

namespace {

// Output pixels per tile: T (pixels x rank) and the output tile stay in L2.
constexpr int64_t kTilePixels = 256;
// Most multiply-adds this path may do per output pixel, relative to the plane
// path's (see nhwc_applies).
constexpr double kMaxWorkRatio = 1.25;
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
  Plan(const LowRankConvShape& s, int vec, int threads)
      : PixelMajorPlan(s, vec, threads, kTilePixels), np(round_up(s.Nout, vec)) {
    constexpr int64_t CB = cpu::lowrank::kChannelBlock;
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
    xslots = x_direct ? 0 : rows_per_tile * s.sh + images * ((s.kh - 1) * s.dh + 1);
    Wtp = Wt + 2 * pw2;
    trow = ceil_div(rp, CB) * Wtp * CB;
  }
  int64_t p1_max() const { return rows_per_tile * Wt; }
  int64_t p2_max() const { return rows_per_tile * Wo; }
  // Per-thread floats: T, the output tile (when Nout is not whole vectors) and
  // the pointers (2 floats each): one per pixel and tap for the IndGemm form;
  // one per row and tap, plus the input row copies, for the direct form.
  int64_t thread_floats(const LowRankConvShape& s) const {
    const int64_t out = np != s.Nout ? p2_max() * np : 0;
    if (block)
      return rows_per_tile * trow + out + xslots * xslot + 2 * rows_per_tile * (taps1 + taps2);
    return p1_max() * rp + out + 2 * (taps1 * p1_max() + taps2 * p2_max());
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

bool nhwc_applies(const LowRankConvShape& s, const Strides4& xs, const Strides4& ys) {
  const char* env = std::getenv("FUSENAS_LOWRANK_NHWC");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  const int vec = pick_kernels().vec_width;
  const Plan pl(s, vec, 1);
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
  const double mine = static_cast<double>(pl.taps1 * s.C * pl.rp) * t_per_out +
                      static_cast<double>(pl.taps2 * s.rank * pl.np);
  const double grid = static_cast<double>(ceil_div(s.W + 2 * s.pw, s.sw)) / pl.Wo;
  return mine <= kMaxWorkRatio * useful * grid;
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

// The spatial scheme's second factor (1 x 3, stride and dilation 1) by
// Winograd F(4, 3) along each T row (kernels: WinogradIn / WinogradOut): 6
// multiply-adds per 4 output pixels and channel pair instead of 12, so the
// factor's GEMM work halves and the forward's falls by a quarter at C = Nout.
// Per chunk of T rows: U = B^T over each group of 6 T pixels (6 matrices of
// groups x rank), then, for each block of at most 64 output channels, one
// IndGemm per xi into M (6 x groups x 64 floats, in L1/L2) and A^T of M
// straight into the output rows with bias, residual and ReLU. The transformed
// factor (G w2, 6 taps) is packed per channel block, each a whole IndGemm B.
// Rounding: the transforms' constants (up to 8 in A^T, 5 in B^T) add a few
// units in the last place of float32 per value.
class RowWinograd {
 public:
  // FUSENAS_LOWRANK_WINOGRAD=0 switches it off, =1 on at any rank.
  static bool applies(const LowRankConvShape& s) {
    if (s.scheme != LowRankScheme::kSpatial || s.kw != 3 || s.sw != 1 || s.dw != 1) return false;
    const char* env = std::getenv("FUSENAS_LOWRANK_WINOGRAD");
    if (env != nullptr && std::strcmp(env, "0") == 0) return false;
    if (env != nullptr && std::strcmp(env, "1") == 0) return true;
    // Below rank 16 the transforms and the short GEMMs (K = rank) cost what
    // the halved multiply-adds save (forward, 2 threads, channels_last,
    // Winograd / direct time: 16 ch @32 rank 12 1.10, rank 4 1.01; 32 ch @16
    // rank 8 1.00; rank 16-384 at 8-56 px 0.81-0.97).
    return s.rank >= kMinRank;
  }

  RowWinograd(const float* w2, const LowRankConvShape& s, const PixelMajorPlan& pl, int64_t np,
              const cpu::lowrank::Kernels& kern)
      : rank_(s.rank), rp_(pl.rp), np_(np), Wo_(pl.Wo), pw_(s.pw) {
    cols_ = std::min<int64_t>(np, kColumnBlock);
    col_blocks_ = ceil_div(np, cols_);
    per_row_ = ceil_div(Wo_, 4);
    rows_ = std::max<int64_t>(1, kGroups / per_row_);
    groups_ = rows_ * per_row_;
    b_stride_ = rank_ * cols_;
    if (w2 == nullptr) return;  // sizes only (workspace_bytes)
    // (G w2)_xi[n][k] from the 3 taps of w2[n][k][:], in double.
    constexpr double G[6][3] = {{0.25, 0, 0},
                                {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                {0, 0, 1}};
    std::vector<float> gw(static_cast<size_t>(6 * s.Nout * rank_));
    for (int xi = 0; xi < 6; ++xi)
      for (int64_t i = 0; i < s.Nout * rank_; ++i) {
        const float* w = w2 + i * 3;
        gw[static_cast<size_t>(xi * s.Nout * rank_ + i)] =
            static_cast<float>(G[xi][0] * w[0] + G[xi][1] * w[1] + G[xi][2] * w[2]);
      }
    b_.assign(static_cast<size_t>(col_blocks_ * 6 * b_stride_), 0.f);
    for (int64_t cb = 0; cb < col_blocks_; ++cb) {
      const int64_t j0 = cb * cols_, n = std::min(cols_, np - j0);
      const int64_t real = std::max<int64_t>(0, std::min(n, s.Nout - j0));
      for (int xi = 0; xi < 6; ++xi) {
        const std::vector<float> packed =
            pack_factor(gw.data() + (xi * s.Nout + j0) * rank_, real, rank_, 1, n, kern);
        std::copy(packed.begin(), packed.end(), b_.begin() + (cb * 6 + xi) * b_stride_);
      }
    }
  }

  // Per-thread buffers: pixel pointers of a chunk's rows, U, M and the GEMM's
  // row pointers into U (fixed, so built once).
  struct Scratch {
    std::vector<const float*> pix, ind;
    Buffer u{0, false}, m{0, false};
  };
  Scratch scratch() const {
    Scratch sc{std::vector<const float*>(static_cast<size_t>(rows_ * (4 * per_row_ + 2))),
               std::vector<const float*>(static_cast<size_t>(6 * groups_)),
               Buffer(6 * groups_ * rp_, false), Buffer(6 * groups_ * cols_, false)};
    for (int64_t xi = 0; xi < 6; ++xi)
      for (int64_t g = 0; g < groups_; ++g)
        sc.ind[static_cast<size_t>(xi * groups_ + g)] = sc.u.get() + (xi * groups_ + g) * rp_;
    return sc;
  }
  int64_t packed_floats() const { return col_blocks_ * 6 * b_stride_; }
  int64_t scratch_floats() const {
    return 6 * groups_ * (rp_ + cols_) + rows_ * (4 * per_row_ + 2) * 2 + 6 * groups_ * 2;
  }

  // y rows q < rows (output pixel (q, ow) at y + (q Wo + ow) ldy, residual laid
  // out as y) from T: pixel(q, p) -> T pixel p (-pw <= p < Wt + 2) of row q or a
  // zero row, its channel c at (c / 16) cblock + c % 16.
  template <class Pixel>
  void run(const cpu::lowrank::Kernels& kern, Scratch& sc, int64_t rows, Pixel pixel,
           int64_t cblock, const float* bias, float* y, int64_t ldy, const float* residual,
           bool relu) const {
    const int64_t span = 4 * per_row_ + 2;
    for (int64_t q0 = 0; q0 < rows; q0 += rows_) {
      const int64_t nq = std::min(rows_, rows - q0), P = nq * per_row_;
      for (int64_t q = 0; q < nq; ++q) {
        const float** pix = sc.pix.data() + q * span;
        for (int64_t i = 0; i < span; ++i) pix[i] = pixel(q0 + q, i - pw_);
        kern.winograd_in(pix, per_row_, rp_, cblock, sc.u.get() + q * per_row_ * rp_, rp_,
                         groups_ * rp_);
      }
      for (int64_t cb = 0; cb < col_blocks_; ++cb) {
        const int64_t j0 = cb * cols_, n = std::min(cols_, np_ - j0);
        for (int64_t xi = 0; xi < 6; ++xi)
          kern.ind_gemm({P, rank_, n, 1, sc.ind.data() + xi * groups_,
                         b_.data() + (cb * 6 + xi) * b_stride_, nullptr,
                         sc.m.get() + xi * groups_ * cols_, cols_});
        for (int64_t q = 0; q < nq; ++q) {
          const int64_t at = (q0 + q) * Wo_ * ldy + j0;
          kern.winograd_out(sc.m.get() + q * per_row_ * cols_, groups_ * cols_, cols_, per_row_, n,
                            bias + j0, y + at, ldy, Wo_, residual ? residual + at : nullptr, relu);
        }
      }
    }
  }

 private:
  // Output channels per GEMM block (one AVX-512 column panel) and groups of 4
  // output pixels per chunk of rows: M (6 x 64 x 64 floats) stays in L2 with U.
  static constexpr int64_t kColumnBlock = 64, kGroups = 64;
  static constexpr int64_t kMinRank = 16;
  int64_t rank_, rp_, np_, Wo_, pw_;
  int64_t cols_ = 0, col_blocks_ = 0, per_row_ = 0, rows_ = 0, groups_ = 0, b_stride_ = 0;
  std::vector<float> b_;
};

// The IndGemm form: a pointer per pixel and tap (any stride).
void forward_ind(const float* x, const float* w1, const float* w2, const float* bias, float* y,
                 const LowRankConvShape& s, const Plan& pl, int threads, const float* residual,
                 bool relu, float* t_out) {
  const auto& kern = pick_kernels();
  const std::vector<float> b1 = pack_factor(w1, s.rank, s.C, pl.taps1, pl.rp, kern);
  std::optional<RowWinograd> wino;
  if (RowWinograd::applies(s)) wino.emplace(w2, s, pl, pl.np, kern);
  const std::vector<float> b2 =
      wino ? std::vector<float>() : pack_factor(w2, s.Nout, s.rank, pl.taps2, pl.np, kern);
  std::vector<float> bias_p(static_cast<size_t>(pl.np), 0.f);
  if (bias) std::copy(bias, bias + s.Nout, bias_p.begin());
  const std::vector<float> zeros(static_cast<size_t>(std::max(s.C, pl.rp)), 0.f);
  const int64_t total_rows = s.N * pl.Ho;
  struct State {
    Buffer t, out;
    std::vector<const float*> ind1, ind2;
    RowWinograd::Scratch wino;
  };
  parallel_items(
      pl.tiles, threads,
      [&] {
        return State{
            Buffer(pl.p1_max() * pl.rp, false),
            Buffer(pl.np != s.Nout ? pl.p2_max() * pl.np : 0, false),
            std::vector<const float*>(static_cast<size_t>(pl.taps1 * pl.p1_max())),
            std::vector<const float*>(wino ? 0 : static_cast<size_t>(pl.taps2 * pl.p2_max())),
            wino ? wino->scratch() : RowWinograd::Scratch()};
      },
      [&](State& st, int64_t tile) {
        const int64_t g0 = tile * pl.rows_per_tile;
        const int64_t rows = std::min(pl.rows_per_tile, total_rows - g0);
        const int64_t P1 = rows * pl.Wt, P2 = rows * pl.Wo;
        fill_first_factor_pointers(s, pl.Ho, pl.Wt, x, g0, rows, st.ind1.data(), zeros.data());
        kern.ind_gemm(
            {P1, s.C, pl.rp, pl.taps1, st.ind1.data(), b1.data(), nullptr, st.t.get(), pl.rp});
        if (t_out)  // kept for the backward: (N, rank, Ho, Wt) float32, a row per tile row
          for (int64_t q = 0; q < rows; ++q) {
            const int64_t n = (g0 + q) / pl.Ho, oh = (g0 + q) % pl.Ho;
            pixels_to_planes(kern, st.t.get() + q * pl.Wt * pl.rp, pl.rp, pl.Wt, s.rank,
                             t_out + (n * s.rank * pl.Ho + oh) * pl.Wt, pl.Ho * pl.Wt);
          }
        float* yt = y + g0 * pl.Wo * s.Nout;  // the tile's pixels, contiguous
        const bool direct = pl.np == s.Nout;
        if (wino) {
          const float* t = st.t.get();
          wino->run(
              kern, st.wino, rows,
              [&](int64_t q, int64_t p) {
                return p >= 0 && p < pl.Wt ? t + (q * pl.Wt + p) * pl.rp : zeros.data();
              },
              cpu::lowrank::kChannelBlock, bias_p.data(), direct ? yt : st.out.get(),
              direct ? s.Nout : pl.np,
              direct && residual ? residual + g0 * pl.Wo * s.Nout : nullptr, direct && relu);
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
        kern.ind_gemm({P2, s.rank, pl.np, pl.taps2, st.ind2.data(), b2.data(), bias_p.data(),
                       direct ? yt : st.out.get(), direct ? s.Nout : pl.np});
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
                   bool relu, float* t_out) {
  constexpr int64_t CB = cpu::lowrank::kChannelBlock;
  const auto& kern = pick_kernels();
  const std::vector<float> b1 = pack_factor(w1, s.rank, s.C, pl.taps1, pl.rp, kern);
  std::optional<RowWinograd> wino;
  if (RowWinograd::applies(s)) wino.emplace(w2, s, pl, pl.np, kern);
  const std::vector<float> b2 =
      wino ? std::vector<float>() : pack_factor(w2, s.Nout, s.rank, pl.taps2, pl.np, kern);
  std::vector<float> bias_p(static_cast<size_t>(pl.np), 0.f);
  if (bias) std::copy(bias, bias + s.Nout, bias_p.begin());
  // Zero rows: x's padding rows (xslot floats) and T pixels past a row's
  // padding for the Winograd windows (a T row's channel blocks, trow floats).
  const std::vector<float> zeros(static_cast<size_t>(std::max(pl.xslot, pl.trow)), 0.f);
  const int64_t total_rows = s.N * pl.Ho;
  const int64_t xkbs = pl.Wp * CB, tkbs = pl.Wtp * CB;
  const int64_t kw1 = pl.channel ? s.kw : 1;
  struct State {
    Buffer t, out, xin;
    std::vector<const float*> base1, base2;
    RowWinograd::Scratch wino;
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
                 wino ? wino->scratch() : RowWinograd::Scratch()};
        for (int64_t b = 0; b < pl.rows_per_tile * pl.trow; b += tkbs) {
          std::memset(st.t.get() + b, 0, sizeof(float) * pl.pw2 * CB);
          std::memset(st.t.get() + b + (pl.pw2 + pl.Wt) * CB, 0, sizeof(float) * pl.pw2 * CB);
        }
        return st;
      },
      [&](State& st, int64_t tile) {
        const int64_t g0 = tile * pl.rows_per_tile;
        const int64_t rows = std::min(pl.rows_per_tile, total_rows - g0);
        // First factor's row pointers; the input rows of each image the tile
        // touches are copied once (a contiguous range per image).
        int64_t used = 0, img = -1, ih_lo = 0, slot0 = 0;
        for (int64_t q = 0; q < rows; ++q) {
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
        float* t = st.t.get();
        kern.block_gemm({rows, pl.Wt, s.C, pl.rp, pl.taps1, st.base1.data(), xkbs, b1.data(),
                         nullptr, t + pl.pw2 * CB, pl.trow, CB, tkbs, nullptr, false});
        if (t_out)  // kept for the backward: (N, rank, Ho, Wt) float32, a row per tile row
          for (int64_t q = 0; q < rows; ++q) {
            const int64_t n = (g0 + q) / pl.Ho, oh = (g0 + q) % pl.Ho;
            for (int64_t c0 = 0; c0 < s.rank; c0 += CB)
              pixels_to_planes(kern, t + q * pl.trow + (c0 / CB) * tkbs + pl.pw2 * CB, CB, pl.Wt,
                               std::min(CB, s.rank - c0),
                               t_out + ((n * s.rank + c0) * pl.Ho + oh) * pl.Wt, pl.Ho * pl.Wt);
          }
        float* yt = y + g0 * pl.Wo * s.Nout;  // the tile's pixels, contiguous
        const float* rt = residual ? residual + g0 * pl.Wo * s.Nout : nullptr;
        const bool direct = pl.np == s.Nout;
        if (wino) {
          // T pixel p of row q at padded pixel pw2 + p; the zero row past the padding.
          wino->run(
              kern, st.wino, rows,
              [&](int64_t q, int64_t p) {
                return p >= -pl.pw2 && p < pl.Wt + pl.pw2 ? t + q * pl.trow + (pl.pw2 + p) * CB
                                                          : zeros.data();
              },
              tkbs, bias_p.data(), direct ? yt : st.out.get(), direct ? s.Nout : pl.np,
              direct ? rt : nullptr, direct && relu);
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
          kern.block_gemm({rows, pl.Wo, s.rank, pl.np, pl.taps2, st.base2.data(), tkbs, b2.data(),
                           bias_p.data(), yt, pl.Wo * s.Nout, s.Nout, CB, rt, relu});
        } else {
          kern.block_gemm({rows, pl.Wo, s.rank, pl.np, pl.taps2, st.base2.data(), tkbs, b2.data(),
                           bias_p.data(), st.out.get(), pl.Wo * pl.np, pl.np, CB, nullptr, false});
          store_padded_tile(kern, st.out.get(), rows * pl.Wo, pl.np, s.Nout, yt, rt, relu);
        }
      });
}

}  // namespace

void forward_nhwc(const float* x, const float* w1, const float* w2, const float* bias, float* y,
                  const LowRankConvShape& s, int num_threads, const float* residual, bool relu,
                  float* t_out) {
  const int threads = resolve_threads(num_threads);
  const Plan pl(s, pick_kernels().vec_width, threads);
  if (pl.block)
    forward_block(x, w1, w2, bias, y, s, pl, threads, residual, relu, t_out);
  else
    forward_ind(x, w1, w2, bias, y, s, pl, threads, residual, relu, t_out);
}

int64_t nhwc_workspace_bytes(const LowRankConvShape& s, int num_threads) {
  const int threads = resolve_threads(num_threads);
  const Plan pl(s, pick_kernels().vec_width, threads);
  const int64_t used = std::max<int64_t>(1, std::min<int64_t>(threads, pl.tiles));
  int64_t packed = pl.taps1 * s.C * pl.rp + pl.taps2 * s.rank * pl.np + pl.np;
  int64_t per_thread = pl.thread_floats(s);
  if (RowWinograd::applies(s)) {
    const RowWinograd wino(nullptr, s, pl, pl.np, pick_kernels());
    packed += wino.packed_floats() - pl.taps2 * s.rank * pl.np;
    per_thread += wino.scratch_floats();
  }
  return 4 * (used * per_thread + packed + std::max({s.C, pl.rp, pl.block ? pl.trow : 0}));
}

}  // namespace lowrank_detail
}  // namespace fusenas
