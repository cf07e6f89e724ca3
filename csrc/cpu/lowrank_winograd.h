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
// else from rank `min_rank` (each use measured its own). C and Nout stop at
// 256: at 512 channels the transformed factors (6 taps where the direct form
// packs 3) pushed the forward's peak memory past the two-conv sequence's
// (spatial, 7 px, rank 128: 6.8 against 5.4 MiB) for no measurable gain
// (0.99-1.08x).
inline bool winograd_forced() {
  const char* env = std::getenv("FUSENAS_LOWRANK_WINOGRAD");
  return env != nullptr && std::strcmp(env, "1") == 0;
}
inline bool winograd_wanted(const LowRankConvShape& s, int64_t min_rank) {
  if (s.C > 256 || s.Nout > 256) return false;
  const char* env = std::getenv("FUSENAS_LOWRANK_WINOGRAD");
  if (env != nullptr && std::strcmp(env, "0") == 0) return false;
  return winograd_forced() || s.rank >= min_rank;
}

// A 3-tap factor w (cols x K x 3, contiguous) as the 6 GEMM operands
// (G w)_xi, each packed as an IndGemm B of K rows, per block of at most 64 of
// the n columns (whole vectors; zeros past cols).
class WinogradFactor {
 public:
  static constexpr int64_t kBlock = 64;  // one AVX-512 column panel

  // w null: sizes only (workspace_bytes).
  WinogradFactor(const float* w, int64_t cols, int64_t K, int64_t n,
                 const cpu::lowrank::Kernels& kern)
      : K_(K),
        n_(n),
        block_(std::min(n, kBlock)),
        blocks_(ceil_div(n, block_)),
        stride_(K * block_) {
    if (w == nullptr) return;
    constexpr double G[6][3] = {{0.25, 0, 0},
                                {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                {0, 0, 1}};
    std::vector<float> gw(static_cast<size_t>(6 * cols * K));
    for (int xi = 0; xi < 6; ++xi)
      for (int64_t i = 0; i < cols * K; ++i) {
        const float* t = w + i * 3;
        gw[static_cast<size_t>(xi * cols * K + i)] =
            static_cast<float>(G[xi][0] * t[0] + G[xi][1] * t[1] + G[xi][2] * t[2]);
      }
    b_.assign(static_cast<size_t>(blocks_ * 6 * stride_), 0.f);
    for (int64_t cb = 0; cb < blocks_; ++cb) {
      const int64_t j0 = cb * block_, nb = std::min(block_, n - j0);
      const int64_t real = std::max<int64_t>(0, std::min(nb, cols - j0));
      for (int xi = 0; xi < 6; ++xi) {
        const std::vector<float> packed =
            pack_factor(gw.data() + (xi * cols + j0) * K, real, K, 1, nb, kern);
        std::copy(packed.begin(), packed.end(), b_.begin() + (cb * 6 + xi) * stride_);
      }
    }
  }
  int64_t block() const { return block_; }
  int64_t packed_floats() const { return blocks_ * 6 * stride_; }

  // For each column block j0 (nb columns): M_xi = U_xi (G w)_xi over P rows
  // (U row p of point xi at ind[xi * ind_stride + p]) into m[xi * xs + p *
  // block() + j], then done(j0, nb).
  template <class Done>
  void gemms(const cpu::lowrank::Kernels& kern, const float* const* ind, int64_t ind_stride,
             int64_t P, float* m, int64_t xs, Done&& done) const {
    for (int64_t cb = 0; cb < blocks_; ++cb) {
      const int64_t j0 = cb * block_, nb = std::min(block_, n_ - j0);
      for (int64_t xi = 0; xi < 6; ++xi)
        kern.ind_gemm({P, K_, nb, 1, ind + xi * ind_stride, b_.data() + (cb * 6 + xi) * stride_,
                       nullptr, m + xi * xs, block_});
      done(j0, nb);
    }
  }

 private:
  int64_t K_, n_, block_, blocks_, stride_;
  std::vector<float> b_;
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
// (6 x rows x block) and the GEMMs' row pointers into U (fixed: built once).
struct WinogradScratch {
  std::vector<const float*> pix, ind;
  Buffer u{0, false}, m{0, false};
  WinogradScratch() = default;
  WinogradScratch(int64_t pointers, int64_t rows, int64_t K, int64_t block)
      : pix(static_cast<size_t>(pointers)),
        ind(static_cast<size_t>(6 * rows)),
        u(6 * rows * K, false),
        m(6 * rows * block, false) {
    for (int64_t xi = 0; xi < 6; ++xi)
      for (int64_t p = 0; p < rows; ++p)
        ind[static_cast<size_t>(xi * rows + p)] = u.get() + (xi * rows + p) * K;
  }
  static int64_t floats(int64_t pointers, int64_t rows, int64_t K, int64_t block) {
    return 2 * pointers + 12 * rows + 6 * rows * (K + block);
  }
};

// A 3-tap correlation along rows, summed over `taps` input rows per output
// row: the spatial scheme's 1 x 3 factor (T -> y, one input row) and the
// channel scheme's 3 x 3 factor (x -> T, kh input rows; the vertical taps are
// GEMM rows, so any vertical stride or dilation). U holds each input row's
// transform side by side (`kin` channels each), so one GEMM per point
// reduces over all of them: K = taps x kin (or the factor's own K for one row).
class RowWinograd {
 public:
  // w: (cols, K, 3) contiguous, K = the GEMM's reduction; kin: channels read
  // per input row (whole vectors, >= K / taps); wout: output pixels per row;
  // pad: the row's left padding.
  RowWinograd(const float* w, int64_t cols, int64_t K, int64_t n, int64_t taps, int64_t kin,
              int64_t wout, int64_t pad, int64_t cap, const cpu::lowrank::Kernels& kern)
      : factor_(w, cols, K, n, kern),
        taps_(taps),
        kin_(kin),
        ldu_(taps * kin),
        wout_(wout),
        pad_(pad),
        per_row_(ceil_div(wout, 4)),
        rows_(std::max<int64_t>(1, winograd_chunk(ldu_, factor_.block(), cap) / per_row_)),
        groups_(rows_ * per_row_) {}

  int64_t packed_floats() const { return factor_.packed_floats(); }
  WinogradScratch scratch() const {
    return WinogradScratch(rows_ * taps_ * span(), groups_, ldu_, factor_.block());
  }
  int64_t scratch_floats() const {
    return WinogradScratch::floats(rows_ * taps_ * span(), groups_, ldu_, factor_.block());
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
    const int64_t span = this->span(), ub = factor_.block();
    for (int64_t q0 = 0; q0 < rows; q0 += rows_) {
      const int64_t nq = std::min(rows_, rows - q0);
      for (int64_t q = 0; q < nq; ++q)
        for (int64_t i = 0; i < taps_; ++i) {
          const float** pix = sc.pix.data() + (q * taps_ + i) * span;
          for (int64_t k = 0; k < span; ++k) pix[k] = pixel(q0 + q, i, k - pad_);
          kern.winograd_in({pix, 4, 0, per_row_, kin_, cblock,
                            sc.u.get() + q * per_row_ * ldu_ + i * kin_, ldu_, groups_ * ldu_});
        }
      factor_.gemms(
          kern, sc.ind.data(), groups_, nq * per_row_, sc.m.get(), groups_ * ub,
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
inline RowWinograd second_factor_winograd(const float* w2, const LowRankConvShape& s,
                                          const PixelMajorPlan& pl, int64_t np,
                                          const cpu::lowrank::Kernels& kern) {
  return RowWinograd(w2, s.Nout, s.rank, np, 1, pl.rp, pl.Wo, s.pw, pl.wino_cap, kern);
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
// w1: (rank, C, kh, 3), null for sizes only.
inline RowWinograd first_factor_winograd(const float* w1, const LowRankConvShape& s,
                                         const PixelMajorPlan& pl,
                                         const cpu::lowrank::Kernels& kern) {
  std::vector<float> w;  // (rank, kh, C, 3): U's row holds input row i's C channels at i C
  if (w1 != nullptr) {
    w.resize(static_cast<size_t>(s.rank * s.kh * s.C * 3));
    for (int64_t r = 0; r < s.rank; ++r)
      for (int64_t c = 0; c < s.C; ++c)
        for (int64_t i = 0; i < s.kh; ++i)
          std::copy_n(w1 + ((r * s.C + c) * s.kh + i) * 3, 3,
                      w.begin() + ((r * s.kh + i) * s.C + c) * 3);
  }
  return RowWinograd(w1 ? w.data() : nullptr, s.rank, s.kh * s.C, pl.rp, s.kh, s.C, pl.Wo, s.pw,
                     pl.wino_cap, kern);
}

// A 3-tap correlation along columns: groups of 4 output rows from 6 input
// rows, the chunk's pixels the GEMM rows, inputs read in place (a pixel's
// channels contiguous, so they must be whole vectors). The spatial scheme's
// 3 x 1 factor (x -> T) in the forward, and grad_x from gT in the backward.
// At 512 channels its 16-pixel chunks were slower than the direct form (rank
// 384: 0.71x); winograd_wanted stops at 256.
class ColumnWinograd {
 public:
  static bool applies(const LowRankConvShape& s, int vec) {
    return s.scheme == LowRankScheme::kSpatial && winograd_wanted(s, 16) && s.kh == 3 &&
           s.sh == 1 && s.dh == 1 && s.C % vec == 0;
  }

  // w: (cols, K, 3) contiguous; kin: channels read per input pixel (whole
  // vectors, >= K), also the input pixels' stride; width: pixels per row.
  ColumnWinograd(const float* w, int64_t cols, int64_t K, int64_t n, int64_t kin, int64_t width,
                 int64_t cap, const cpu::lowrank::Kernels& kern)
      : factor_(w, cols, K, n, kern),
        kin_(kin),
        W_(width),
        pixels_(winograd_chunk(kin, factor_.block(), cap)) {}

  int64_t packed_floats() const { return factor_.packed_floats(); }
  WinogradScratch scratch() const { return WinogradScratch(6, pixels_, kin_, factor_.block()); }
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
      factor_.gemms(kern, sc.ind.data(), pixels_, used, sc.m.get(), pixels_ * ub,
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

// The spatial first factor w1 (rank, C, 3, 1) as a ColumnWinograd over x.
inline ColumnWinograd first_factor_column_winograd(const float* w1, const LowRankConvShape& s,
                                                   const PixelMajorPlan& pl,
                                                   const cpu::lowrank::Kernels& kern) {
  return ColumnWinograd(w1, s.rank, s.C, pl.rp, s.C, s.W, pl.wino_cap, kern);
}

}  // namespace lowrank_detail
}  // namespace fusenas
