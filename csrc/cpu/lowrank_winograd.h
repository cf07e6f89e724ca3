// Winograd F(4, 3) for the low-rank conv's 3-tap factors at stride and
// dilation 1 (along the taps' direction), in the pixel-major path: the
// forward's factors (lowrank_conv_nhwc.cpp) and the backward's transposed
// convs gT and grad_x (lowrank_conv_nhwc_backward.cpp). Each computes 4
// outputs from 6 products per channel pair instead of 12, so a factor's
// multiply-adds halve. Per chunk of pixels: U = B^T over windows of 6 inputs
// (6 matrices, pixels x channels), then for each block of at most 64 output
// channels one IndGemm per transformed point xi into M (6 x pixels x 64
// floats, in L2), and A^T of M straight into the destination rows. Rounding:
// the transforms' constants (up to 8 in A^T, 5 in B^T) add a few units in the
// last place of float32 per value (measured: max error 0.9-1.1e-6 of the
// output's scale against 5e-7 for the direct form).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cpu/lowrank_conv_nhwc.h"
#include "cpu/lowrank_conv_tiles.h"

namespace fusenas {
namespace lowrank_detail {

// Whether a layer's factors may run by Winograd: FUSENAS_LOWRANK_WINOGRAD=0
// switches it off, =1 on at any rank and batch size (the tests' small shapes),
// else from rank `min_rank` (each use measured its own). No channel limit:
// the memory rules keep weight-heavy layers on the direct forms (512 ch @7 at
// batch 32, whose transformed factors outgrow the intermediate). Where they
// fit, 512 channels gain too: spatial rank 128 at batch 192 (forward, 2
// threads) 22.4 against 34.6 ms for the direct forms, once the factors were
// transformed in parallel (serially they cost 9% of the samples).
inline bool winograd_forced() {
  const char* env = std::getenv("FUSENAS_LOWRANK_WINOGRAD");
  return env != nullptr && std::strcmp(env, "1") == 0;
}
inline bool winograd_wanted(const LowRankConvShape& s, int64_t min_rank) {
  const char* env = std::getenv("FUSENAS_LOWRANK_WINOGRAD");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  return winograd_forced() || s.rank >= min_rank;
}

// Whether a factor's GEMMs (K x n, n rounded to whole vectors) are large
// enough to pay for the transforms' loads and stores (unless forced). Forward,
// 2 threads, channels_last, Zen 4: F(4 x 4, 3 x 3) at 16 ch @32 rank 7 (K n =
// 128 either way round) level, training step 4% slower, 32 ch @16 rank 5 (256)
// 5-8% faster; the column form at 16 ch @32 rank 4 (128) 0.97 -> 1.16 ms,
// rank 12 (256) 1.63 -> 1.60, 32 ch @16 rank 8 (256) 0.65 -> 0.57, 64 ch @56
// rank 4 (512) 4.7-4.9 -> 3.5, 128 ch @28 rank 8 1.9-2.3 -> 1.6-1.8.
inline bool winograd_pays(int64_t K, int64_t n) { return winograd_forced() || K * n >= 256; }

// A 3-tap factor w (cols x K x 3) as the 6 GEMM operands (G w)_xi, or a 3 x 3
// one as the 36 operands (G w G^T)_xi, each packed as an IndGemm B of K rows,
// per block of at most 64 of the n columns (whole vectors; zeros past cols).
class WinogradFactor {
 public:
  static constexpr int64_t kBlock = 64;  // one AVX-512 column panel

  // Sizes only (workspace_bytes); pack() fills the panels. points: 6 for
  // F(4, 3) along a row or column, 36 for F(4 x 4, 3 x 3) (Winograd2D).
  WinogradFactor(int64_t cols, int64_t K, int64_t n, int points = 6)
      : cols_(cols),
        K_(K),
        n_(n),
        block_(std::min(n, kBlock)),
        blocks_(ceil_div(n, block_)),
        stride_(K * block_),
        points_(points) {}

  // taps(j, k): column j's taps for GEMM row k at p[0], p[step], p[2 step]
  // (step -1: a transposed conv's flipped taps), or null for zeros; for 36
  // points a 3 x 3 kernel, tap (a, b) at p[(3 a + b) step]. Each
  // factor is read in its own layout, the transform written straight into the
  // packed panels, split over threads: at 512 channels the factors take 2 x
  // 4.7 MB, and transformed, packed and copied on one thread they cost 9% of a
  // forward's samples while the other thread waited.
  template <class Taps>
  void pack(Taps taps, int64_t step, const cpu::lowrank::Kernels& kern) {
    using cpu::lowrank::panel_count;
    using cpu::lowrank::panel_start;
    b_ = Buffer(packed_floats(), false);
    float* b = b_.get();
    const int points = points_;
    const int64_t W = kern.vec_width, most = kern.ind_nv, K = K_;
    // Block cb, point xi: an IndGemm B of K rows and nb columns in column
    // panels (pack_factor's layout, one tap); zeros past cols.
#pragma omp parallel for collapse(2) schedule(static) if (packed_floats() >= (int64_t{1} << 15))
    for (int64_t cb = 0; cb < blocks_; ++cb)
      for (int64_t k = 0; k < K; ++k) {
        const int64_t j0 = cb * block_, nb = std::min(block_, n_ - j0), vecs = nb / W;
        const int64_t real = std::max<int64_t>(0, std::min(nb, cols_ - j0));
        for (int64_t c = 0; c < panel_count(vecs, most); ++c) {
          const int64_t p0 = panel_start(vecs, most, c) * W;
          const int64_t width = panel_start(vecs, most, c + 1) * W - p0;
          // This k's row of every point's panel, built in L1 and then copied
          // row by row: the points' panels lie a multiple of 4 KB apart, and
          // stored element by element their 36 streams thrashed one L1 set
          // (18% of a 64 ch @8 forward's samples).
          float rows[36][kBlock];
          for (int64_t j = 0; j < width; ++j) {
            // One read of a column's taps for all points (a column's taps
            // sit in another cache line than its neighbours').
            const float* t = p0 + j < real ? taps(j0 + p0 + j, k) : nullptr;
            if (t == nullptr) {
              for (int xi = 0; xi < points; ++xi) rows[xi][j] = 0.f;
            } else if (points == 6) {  // G w
              const double in[3] = {t[0], t[step], t[2 * step]};
              double out[6];
              g_times(in, out);
              for (int xi = 0; xi < 6; ++xi) rows[xi][j] = static_cast<float>(out[xi]);
            } else {  // G w G^T: w's rows (kh) give the first index
              double gw[3][6], in[3], out[6];
              for (int tc = 0; tc < 3; ++tc) {  // tap column
                for (int tr = 0; tr < 3; ++tr) in[tr] = t[(3 * tr + tc) * step];
                g_times(in, gw[tc]);
              }
              for (int xr = 0; xr < 6; ++xr) {
                for (int tc = 0; tc < 3; ++tc) in[tc] = gw[tc][xr];
                g_times(in, out);
                for (int xc = 0; xc < 6; ++xc) rows[xr * 6 + xc][j] = static_cast<float>(out[xc]);
              }
            }
          }
          for (int xi = 0; xi < points; ++xi)
            std::memcpy(b + (cb * points + xi) * stride_ + K * p0 + k * width, rows[xi],
                        sizeof(float) * static_cast<size_t>(width));
        }
      }
  }
  // out = G in for Lavin and Gray's G (rows (1/4, 0, 0), -(1, 1, 1)/6,
  // (-1, 1, -1)/6, (1/24, 1/12, 1/6), (1/24, -1/12, 1/6), (0, 0, 1)), using its
  // zeros and repeats (10 operations instead of 18), and multiplications by the
  // reciprocals: a division costs several times more.
  static void g_times(const double in[3], double out[6]) {
    constexpr double k6 = 1.0 / 6, k12 = 1.0 / 12, k24 = 1.0 / 24;
    const double s = -(in[0] + in[2]) * k6, q = in[0] * k24 + in[2] * k6;
    out[0] = in[0] * 0.25;
    out[1] = s - in[1] * k6;
    out[2] = s + in[1] * k6;
    out[3] = q + in[1] * k12;
    out[4] = q - in[1] * k12;
    out[5] = in[2];
  }
  int64_t block() const { return block_; }
  int64_t packed_floats() const { return blocks_ * points_ * stride_; }

  // For each column block j0 (nb columns): M_xi = U_xi (G w)_xi over P rows
  // into m[xi * xs + p * block() + j], then done(j0, nb). U row p of point xi
  // is `taps` pieces of K / taps floats, piece t at ind[xi * ind_stride + t P
  // + p] (GEMM rows t K / taps + k).
  template <class Done>
  void gemms(const cpu::lowrank::Kernels& kern, const float* const* ind, int64_t ind_stride,
             int64_t P, int64_t taps, float* m, int64_t xs, Done&& done) const {
    for (int64_t cb = 0; cb < blocks_; ++cb) {
      const int64_t j0 = cb * block_, nb = std::min(block_, n_ - j0);
      for (int64_t xi = 0; xi < points_; ++xi)
        kern.ind_gemm({P, K_ / taps, nb, taps, ind + xi * ind_stride,
                       b_.get() + (cb * points_ + xi) * stride_, nullptr, m + xi * xs, block_});
      done(j0, nb);
    }
  }

 private:
  int64_t cols_, K_, n_, block_, blocks_, stride_;
  int points_;
  Buffer b_{0, false};
};

// GEMM rows (groups or pixels) per chunk for U rows of `ldu` floats and M
// blocks of `block`: U and M (6 x rows x (ldu + block) floats) within 384 KB,
// 8 to `cap` rows (the plan's cap, 64 unless memory is short: PixelMajorPlan).
// Larger chunks reuse each packed block over more rows (128 ch @28 channel
// rank 58: 8 rows 5-10% slower than 42).
inline int64_t winograd_chunk(int64_t ldu, int64_t block, int64_t cap) {
  return std::clamp<int64_t>(98304 / (6 * (ldu + block)), 8, std::max<int64_t>(8, cap));
}

// The memory rules' chunk cap: the largest of 64, 32, 16 and 8 GEMM rows for
// which fits(cap) holds (64 when FUSENAS_LOWRANK_WINOGRAD=1 forces the forms),
// else 0: the direct forms run.
template <class Fits>
int64_t winograd_cap(Fits&& fits) {
  for (int64_t cap = 64; cap >= 8; cap /= 2)
    if (winograd_forced() || fits(cap)) return cap;
  return 0;
}

// Per-thread buffers of one direction: input pointers, U (6 x rows x K), M
// (6 x rows x block), the GEMMs' row pointers into U, `taps` per row (filled by
// the user: ColumnWinograd once, RowWinograd per chunk), and RowWinograd's
// input-row keys.
struct WinogradScratch {
  std::vector<const float*> pix, ind, keys;
  Buffer u{0, false}, m{0, false};
  WinogradScratch() = default;
  WinogradScratch(int64_t pointers, int64_t rows, int64_t K, int64_t block, int64_t taps = 1)
      : pix(static_cast<size_t>(pointers)),
        ind(static_cast<size_t>(6 * taps * rows)),
        keys(static_cast<size_t>(taps * rows)),
        u(6 * rows * K, false),
        m(6 * rows * block, false) {}
  static int64_t floats(int64_t pointers, int64_t rows, int64_t K, int64_t block,
                        int64_t taps = 1) {
    return 2 * pointers + 14 * taps * rows + 6 * rows * (K + block);
  }
  // The GEMMs' pointers at fixed places: row p of point xi at u + (xi rows +
  // p) K (ColumnWinograd and Winograd2D; RowWinograd refills them per chunk).
  void fix_rows(int64_t points, int64_t rows, int64_t K) {
    for (int64_t xi = 0; xi < points; ++xi)
      for (int64_t p = 0; p < rows; ++p)
        ind[static_cast<size_t>(xi * rows + p)] = u.get() + (xi * rows + p) * K;
  }
  // Sized as given (Winograd2D): no keys.
  static WinogradScratch sized(int64_t pointers, int64_t inds, int64_t u_floats, int64_t m_floats) {
    WinogradScratch sc;
    sc.pix.resize(static_cast<size_t>(pointers));
    sc.ind.resize(static_cast<size_t>(inds));
    sc.u = Buffer(u_floats, false);
    sc.m = Buffer(m_floats, false);
    return sc;
  }
};

// A 3-tap correlation along rows, summed over `taps` input rows per output
// row: the spatial scheme's 1 x 3 factor (T -> y, one input row) and the
// channel scheme's 3 x 3 factor (x -> T, kh input rows; the vertical taps are
// GEMM rows, so any vertical stride or dilation). U holds each distinct input
// row's transform once (`kin` channels per pixel group); one IndGemm per point
// reduces over an output row's `taps` input rows through a pointer per tap:
// K = taps x kin (or the factor's own K for one row).
class RowWinograd {
 public:
  // cols x K factor (K = the GEMM's reduction; pack() fills it); kin: channels
  // read per input row (whole vectors, >= K / taps); wout: output pixels per
  // row; pad: the row's left padding.
  RowWinograd(int64_t cols, int64_t K, int64_t n, int64_t taps, int64_t kin, int64_t wout,
              int64_t pad, int64_t cap)
      : factor_(cols, K, n),
        taps_(taps),
        kin_(kin),
        ldu_(taps * kin),
        wout_(wout),
        pad_(pad),
        per_row_(ceil_div(wout, 4)),
        rows_(std::max<int64_t>(1, winograd_chunk(ldu_, factor_.block(), cap) / per_row_)),
        groups_(rows_ * per_row_) {}

  int64_t packed_floats() const { return factor_.packed_floats(); }
  template <class Taps>
  void pack(Taps taps, int64_t step, const cpu::lowrank::Kernels& kern) {
    factor_.pack(taps, step, kern);
  }
  WinogradScratch scratch() const {
    return WinogradScratch(rows_ * taps_ * span(), groups_, ldu_, factor_.block(), taps_);
  }
  int64_t scratch_floats() const {
    return WinogradScratch::floats(rows_ * taps_ * span(), groups_, ldu_, factor_.block(), taps_);
  }

  // Output rows q < rows: pixel(q, i, p) -> input row i's pixel p (-pad <= p <
  // 4 ceil(wout / 4) + 2 - pad) or a zero row, its channel c at (c / 16)
  // cblock + c % 16; out(q) -> output row q, pixel o at out(q) + o ops,
  // channel j at (j / 16) ocb + j % 16; res(q): the residual laid out the same
  // (or null); bias and res added and relu applied as the rows are stored.
  template <class Pixel, class Out, class Res>
  void run(const cpu::lowrank::Kernels& kern, WinogradScratch& sc, int64_t rows, Pixel pixel,
           int64_t cblock, const float* bias, Out out, int64_t ops, int64_t ocb, Res res,
           bool relu) const {
    const int64_t span = this->span(), ub = factor_.block(), slot = per_row_ * kin_;
    const int64_t xs = rows_ * taps_ * slot;  // U floats per point: room for every row distinct
    for (int64_t q0 = 0; q0 < rows; q0 += rows_) {
      const int64_t nq = std::min(rows_, rows - q0), P = nq * per_row_;
      // Each distinct input row transformed once (keyed by its pixel 0): the
      // channel scheme's T rows share kh - 1 of their kh input rows at stride
      // 1, so its 3 x 3 factor transforms a third of what it would per T row.
      int64_t slots = 0;
      for (int64_t q = 0; q < nq; ++q)
        for (int64_t i = 0; i < taps_; ++i) {
          const float* key = pixel(q0 + q, i, 0);
          int64_t sl = slots - 1;
          while (sl >= 0 && sc.keys[static_cast<size_t>(sl)] != key) --sl;
          if (sl < 0) {
            sl = slots++;
            sc.keys[static_cast<size_t>(sl)] = key;
            const float** pix = sc.pix.data() + sl * span;
            for (int64_t k = 0; k < span; ++k) pix[k] = pixel(q0 + q, i, k - pad_);
            kern.winograd_in({pix, 4, 0, per_row_, kin_, cblock, sc.u.get() + sl * slot, kin_, xs});
          }
          for (int64_t xi = 0; xi < 6; ++xi) {
            const float** ind = sc.ind.data() + (xi * taps_ + i) * P + q * per_row_;
            const float* u = sc.u.get() + xi * xs + sl * slot;
            for (int64_t g = 0; g < per_row_; ++g) ind[g] = u + g * kin_;
          }
        }
      factor_.gemms(
          kern, sc.ind.data(), taps_ * P, P, taps_, sc.m.get(), groups_ * ub,
          [&](int64_t j0, int64_t nb) {
            const int64_t at = (j0 / cpu::lowrank::kChannelBlock) * ocb;
            for (int64_t q = 0; q < nq; ++q) {
              const float* r = res(q0 + q);
              kern.winograd_out({sc.m.get() + q * per_row_ * ub, groups_ * ub, ub, per_row_, nb,
                                 bias ? bias + j0 : nullptr, out(q0 + q) + at, 4 * ops, ops, ocb,
                                 wout_, 4, r ? r + at : nullptr, relu});
            }
          });
    }
  }

 private:
  int64_t span() const { return 4 * per_row_ + 2; }
  WinogradFactor factor_;
  int64_t taps_, kin_, ldu_, wout_, pad_, per_row_, rows_, groups_;
};

// The spatial scheme's 1 x 3 factor (T -> y) as a RowWinograd.
// Below rank 16 its transforms and short GEMMs (K = rank) cost what the halved
// multiply-adds save (forward, 2 threads, channels_last, Winograd / direct
// time: 16 ch @32 rank 12 1.10, rank 4 1.01; 32 ch @16 rank 8 1.00; rank
// 16-384 at 8-56 px 0.81-0.97).
inline bool row_winograd_applies(const LowRankConvShape& s) {
  return s.scheme == LowRankScheme::kSpatial && winograd_wanted(s, 16) && s.kw == 3 && s.sw == 1 &&
         s.dw == 1;
}
// w2: (Nout, rank, 1, 3), null for sizes only.
inline RowWinograd second_factor_winograd(const float* w2, const LowRankConvShape& s,
                                          const PixelMajorPlan& pl, int64_t np,
                                          const cpu::lowrank::Kernels& kern) {
  RowWinograd w(s.Nout, s.rank, np, 1, pl.rp, pl.Wo, s.pw, pl.wino_cap);
  if (w2 != nullptr)
    w.pack([&](int64_t j, int64_t k) { return w2 + (j * s.rank + k) * 3; }, 1, kern);
  return w;
}

// The channel scheme's kh x 3 factor (x -> T) as a RowWinograd over the kh
// input rows of each T row, x read in place (C whole vectors). Its GEMM
// reduces over kh C, so low ranks gain too (forward, 2 threads, channels_last,
// direct / Winograd time: 32 ch @16 rank 14 1.30, rank 5 1.06; 64 ch @8 rank
// 29 1.45, rank 10 1.24; 128 ch @28 rank 58 1.52, rank 19 1.09; 256 ch @14
// 1.25-1.32; 64 ch @56 rank 10 0.99), but not rank 2 (16 ch @32: 0.84).
inline bool first_factor_row_winograd_applies(const LowRankConvShape& s, int vec) {
  return s.scheme == LowRankScheme::kChannel && winograd_wanted(s, 4) && s.kw == 3 && s.sw == 1 &&
         s.dw == 1 && s.C % vec == 0;
}
// w1: (rank, C, kh, 3), null for sizes only. U's row holds input row i's C
// channels at i C: GEMM row i C + c.
inline RowWinograd first_factor_winograd(const float* w1, const LowRankConvShape& s,
                                         const PixelMajorPlan& pl,
                                         const cpu::lowrank::Kernels& kern) {
  RowWinograd w(s.rank, s.kh * s.C, pl.rp, s.kh, s.C, pl.Wo, s.pw, pl.wino_cap);
  if (w1 != nullptr)
    w.pack([&](int64_t r, int64_t k) { return w1 + ((r * s.C + k % s.C) * s.kh + k / s.C) * 3; }, 1,
           kern);
  return w;
}

// A 3-tap correlation along columns: groups of 4 output rows from 6 input
// rows, the chunk's pixels the GEMM rows, inputs read in place (a pixel's
// channels contiguous, so they must be whole vectors). The spatial scheme's
// 3 x 1 factor (x -> T) in the forward, and grad_x from gT in the backward.
class ColumnWinograd {
 public:
  // The forward's 3 x 1 factor from rank 4 (K = C: unlike the 1 x 3 factor's
  // K = rank, its GEMMs stay long at low rank).
  static bool applies(const LowRankConvShape& s, int vec) {
    return s.scheme == LowRankScheme::kSpatial && winograd_wanted(s, 4) && s.kh == 3 && s.sh == 1 &&
           s.dh == 1 && s.C % vec == 0 && winograd_pays(s.C, round_up(s.rank, vec));
  }

  // cols x K factor (pack() fills it); kin: channels read per input pixel
  // (whole vectors, >= K), also the input pixels' stride; width: pixels per row.
  ColumnWinograd(int64_t cols, int64_t K, int64_t n, int64_t kin, int64_t width, int64_t cap)
      : factor_(cols, K, n),
        kin_(kin),
        W_(width),
        pixels_(winograd_chunk(kin, factor_.block(), cap)) {}

  int64_t packed_floats() const { return factor_.packed_floats(); }
  template <class Taps>
  void pack(Taps taps, int64_t step, const cpu::lowrank::Kernels& kern) {
    factor_.pack(taps, step, kern);
  }
  // U row p of point xi at a fixed place: the GEMMs' pointers are built once.
  WinogradScratch scratch() const {
    WinogradScratch sc(6, pixels_, kin_, factor_.block());
    sc.fix_rows(6, pixels_, kin_);
    return sc;
  }
  int64_t scratch_floats() const {
    return WinogradScratch::floats(6, pixels_, kin_, factor_.block());
  }

  // For groups g < count: group(g, rows) sets the 6 input rows (pixel 0 of
  // each, or a zero row of width x kin floats) and returns {output row 0,
  // valid rows (<= 4)}; output row i's pixel w at out + i ldo + w pso, its
  // channel c at (c / 16) ocb + c % 16.
  struct Rows {
    float* out;
    int64_t valid;
  };
  template <class Group>
  void run(const cpu::lowrank::Kernels& kern, WinogradScratch& sc, int64_t count, Group group,
           int64_t ldo, int64_t pso, int64_t ocb) const {
    const int64_t ub = factor_.block();
    struct Piece {
      float* out;
      int64_t rows, nw, p;
    };
    Piece pieces[64];  // pixels_ <= 64
    int64_t npiece = 0, used = 0;
    auto flush = [&] {
      factor_.gemms(kern, sc.ind.data(), pixels_, used, 1, sc.m.get(), pixels_ * ub,
                    [&](int64_t j0, int64_t nb) {
                      for (int64_t i = 0; i < npiece; ++i) {
                        const Piece& pc = pieces[i];
                        kern.winograd_out({sc.m.get() + pc.p * ub, pixels_ * ub, ub, pc.nw, nb,
                                           nullptr, pc.out + (j0 / 16) * ocb, pso, ldo, ocb,
                                           pc.rows, 0, nullptr, false});
                      }
                    });
      npiece = used = 0;
    };
    for (int64_t g = 0; g < count; ++g) {
      const float* rows[6];
      const Rows r = group(g, rows);
      for (int64_t w0 = 0; w0 < W_;) {
        if (used == pixels_) flush();
        const int64_t nw = std::min(W_ - w0, pixels_ - used);
        const float** pix = sc.pix.data();
        for (int64_t i = 0; i < 6; ++i) pix[i] = rows[i] + w0 * kin_;
        kern.winograd_in({pix, 0, kin_, nw, kin_, cpu::lowrank::kChannelBlock,
                          sc.u.get() + used * kin_, kin_, pixels_ * kin_});
        pieces[npiece++] = {r.out + w0 * pso, r.valid, nw, used};
        used += nw;
        w0 += nw;
      }
    }
    if (used > 0) flush();
  }

 private:
  WinogradFactor factor_;
  int64_t kin_, W_, pixels_;
};

// Winograd F(4 x 4, 3 x 3): the channel scheme's 3 x 3 factor at stride and
// dilation 1, 16 outputs from 36 products per channel pair (the row form's
// F(4, 3): 72; direct: 144). Groups of 4 output rows of one image, each cut
// into patches of 4 x 4 outputs (6 x 6 inputs); x read in place. Per chunk of
// groups: B^T along each of a group's 6 input rows (U1), then B^T along the
// columns of U1 into V (36 matrices, patches x channels); for each block of
// at most 64 output channels one IndGemm per point into M, A^T down the
// columns of M (Z) and A^T along its rows into the destination rows. Rounding:
// both directions' constants (measured against float64, channels_last, max
// error over the output's scale: forward 3e-6 to 6e-6 at 16-256 channels and
// 1.6e-5 at 512; grad_x 1e-6 to 6e-6; the direct forms 3e-7 to 1.3e-6).
class Winograd2D {
 public:
  using Rows = ColumnWinograd::Rows;
  static bool applies(const LowRankConvShape& s, int vec) {
    return s.scheme == LowRankScheme::kChannel && winograd_wanted(s, 4) && s.kh == 3 && s.kw == 3 &&
           s.sh == 1 && s.sw == 1 && s.dh == 1 && s.dw == 1 && s.C % vec == 0 &&
           winograd_pays(s.C, round_up(s.rank, vec));
  }

  // cols x K factor (pack() fills it); K: input channels, also the input
  // pixels' stride (whole vectors); width: input pixels per row; wout: output
  // pixels per row; pad: the rows' left padding.
  Winograd2D(int64_t cols, int64_t K, int64_t n, int64_t width, int64_t wout, int64_t pad,
             int64_t cap)
      : factor_(cols, K, n, 36),
        K_(K),
        W_(width),
        wout_(wout),
        pad_(pad),
        tpr_(ceil_div(wout, 4)),
        groups_(std::max<int64_t>(1, chunk_patches(K, factor_.block(), cap) / tpr_)),
        patches_(groups_ * tpr_) {}

  int64_t packed_floats() const { return factor_.packed_floats(); }
  template <class Taps>
  void pack(Taps taps, int64_t step, const cpu::lowrank::Kernels& kern) {
    factor_.pack(taps, step, kern);
  }
  // pix: a row's input pixels; ind: V's rows, fixed; u: V, then U1 (6 rows x
  // 6 points x tpr x K); m: M, then Z (6 x 4 x patches x block).
  WinogradScratch scratch() const {
    const Sizes z = sizes();
    WinogradScratch sc = WinogradScratch::sized(z.pointers, z.inds, z.u, z.m);
    sc.fix_rows(36, patches_, K_);
    return sc;
  }
  int64_t scratch_floats() const {
    const Sizes z = sizes();
    return 2 * (z.pointers + z.inds) + z.u + z.m;
  }

  // For groups g < count: group(g, rows) sets the 6 input rows (pixel 0 of
  // each, or a zero row of W K floats) and returns {output row 0, valid rows
  // (<= 4)}; output row i's pixel w at out + i ldo + w pso, its channel c at
  // (c / 16) ocb + c % 16. zeros: a zero pixel (the rows' padding).
  template <class Group>
  void run(const cpu::lowrank::Kernels& kern, WinogradScratch& sc, int64_t count, Group group,
           int64_t ldo, int64_t pso, int64_t ocb, const float* zeros) const {
    constexpr int64_t CB = cpu::lowrank::kChannelBlock;
    const int64_t ub = factor_.block(), K = K_, span = 4 * tpr_ + 2;
    const int64_t vs = patches_ * K, ms = patches_ * ub, u1s = tpr_ * K;  // per point
    float* v = sc.u.get();
    float* u1 = v + 36 * vs;  // point xc, input row i at (6 xc + i) u1s
    float* m = sc.m.get();
    float* z = m + 36 * ms;  // point xc, output row i at (4 xc + i) ms
    Rows outs[64];           // groups_ <= 64
    for (int64_t g0 = 0; g0 < count; g0 += groups_) {
      const int64_t ng = std::min(groups_, count - g0);
      for (int64_t gi = 0; gi < ng; ++gi) {
        const float* rows[6];
        outs[gi] = group(g0 + gi, rows);
        for (int64_t i = 0; i < 6; ++i) {
          const float** pix = sc.pix.data();
          for (int64_t k = 0; k < span; ++k) {
            const int64_t p = k - pad_;
            pix[k] = p >= 0 && p < W_ ? rows[i] + p * K : zeros;
          }
          kern.winograd_in({pix, 4, 0, tpr_, K, CB, u1 + i * u1s, K, 6 * u1s});
        }
        for (int64_t xc = 0; xc < 6; ++xc) {
          const float* col[6];
          for (int64_t i = 0; i < 6; ++i) col[i] = u1 + (6 * xc + i) * u1s;
          kern.winograd_in({col, 0, K, tpr_, K, CB, v + xc * vs + gi * u1s, K, 6 * vs});
        }
      }
      const int64_t P = ng * tpr_;
      factor_.gemms(kern, sc.ind.data(), patches_, P, 1, m, ms, [&](int64_t j0, int64_t nb) {
        for (int64_t xc = 0; xc < 6; ++xc)
          kern.winograd_out({m + xc * ms, 6 * ms, ub, P, nb, nullptr, z + 4 * xc * ms, ub, ms, CB,
                             4, 0, nullptr, false});
        for (int64_t gi = 0; gi < ng; ++gi)
          for (int64_t i = 0; i < outs[gi].valid; ++i)
            kern.winograd_out({z + i * ms + gi * tpr_ * ub, 4 * ms, ub, tpr_, nb, nullptr,
                               outs[gi].out + i * ldo + (j0 / CB) * ocb, 4 * pso, pso, ocb, wout_,
                               4, nullptr, false});
      });
    }
  }

 private:
  // Patches per chunk: V, M and Z (36 K + 60 block floats a patch) within 384
  // KB, 4 to `cap` (the plan's cap).
  static int64_t chunk_patches(int64_t K, int64_t block, int64_t cap) {
    return std::clamp<int64_t>(98304 / (36 * K + 60 * block), 4, std::max<int64_t>(4, cap));
  }
  struct Sizes {
    int64_t pointers, inds, u, m;
  };
  Sizes sizes() const {
    const int64_t ub = factor_.block();
    return {4 * tpr_ + 2, 36 * patches_, 36 * (patches_ + tpr_) * K_, 60 * patches_ * ub};
  }
  WinogradFactor factor_;
  int64_t K_, W_, wout_, pad_, tpr_, groups_, patches_;
};

// The channel scheme's 3 x 3 first factor w1 (rank, C, 3, 3) as a Winograd2D
// over x (null: sizes only).
inline Winograd2D first_factor_winograd_2d(const float* w1, const LowRankConvShape& s,
                                           const PixelMajorPlan& pl,
                                           const cpu::lowrank::Kernels& kern) {
  Winograd2D w(s.rank, s.C, pl.rp, s.W, pl.Wo, s.pw, pl.wino_cap);
  if (w1 != nullptr) w.pack([&](int64_t j, int64_t k) { return w1 + (j * s.C + k) * 9; }, 1, kern);
  return w;
}

// The spatial first factor w1 (rank, C, 3, 1) as a ColumnWinograd over x
// (null: sizes only).
inline ColumnWinograd first_factor_column_winograd(const float* w1, const LowRankConvShape& s,
                                                   const PixelMajorPlan& pl,
                                                   const cpu::lowrank::Kernels& kern) {
  ColumnWinograd w(s.rank, s.C, pl.rp, s.C, s.W, pl.wino_cap);
  if (w1 != nullptr) w.pack([&](int64_t j, int64_t k) { return w1 + (j * s.C + k) * 3; }, 1, kern);
  return w;
}

}  // namespace lowrank_detail
}  // namespace fusenas
