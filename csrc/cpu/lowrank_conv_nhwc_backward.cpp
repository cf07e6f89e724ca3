// Backward of the fused low-rank conv for channels_last float32 tensors,
// pixel-major like its forward (lowrank_conv_nhwc.cpp): nothing is copied
// into planes, every operand is read where it lies through pointer lists.
// Per tile of global output rows (several small images, or part of one):
//   gT      = grad_out through the second factor transposed: an IndGemm over
//             the tile's intermediate rows and, per image, the qh_max rows
//             above them (the input rows the tile owns receive from those
//             too; they are recomputed, about 2 rows per tile);
//   T       = the tile's intermediate, kept by the forward (planes,
//             transposed to pixels here) or recomputed (IndGemm);
//   grad_w2 += G^T T (per second-factor tap) and grad_w1 += X^T gT (per
//             first-factor tap): PairGemms over the pixel pairs where both
//             operands lie inside the image, into per-thread sums where
//             their copies are small, else into one set shared by the
//             threads (tiles in rounds of one per thread; after each round
//             every thread adds all of its tiles into its own rows of the
//             sums, in tile order); either way the same bits on every call
//             at a given thread count;
//   grad_x  of the input rows the tile owns = an IndGemm over gT through the
//             first factor transposed, written straight into grad_x: every
//             input row is owned by exactly one tile, so threads never race
//             and nothing is zero-filled beforehand.
#include <algorithm>
#include <cstring>
#include <optional>
#include <vector>

#include "cpu/lowrank_conv_nhwc.h"
#include "cpu/lowrank_conv_tiles.h"
#include "cpu/lowrank_winograd.h"

namespace fusenas {
namespace lowrank_detail {

namespace {

// Output pixels per tile: gT, T and the pointer lists stay in L2; larger
// tiles make the recomputed gT rows above each tile a smaller share.
constexpr int64_t kTilePixels = 512;

struct BackwardPlan : PixelMajorPlan {
  int64_t cp;      // C rounded up to the vector width
  int64_t qh_max;  // intermediate rows above an input row's own that feed it
  BackwardPlan(const LowRankConvShape& s, int vec, int threads)
      : PixelMajorPlan(s, vec, threads, kTilePixels),
        cp(round_up(s.C, vec)),
        qh_max((s.kh - 1) * s.dh / s.sh) {}
  // Most intermediate rows of a tile's gT: its own rows plus qh_max per image.
  int64_t max_ext_rows() const {
    const int64_t images = std::min<int64_t>(ceil_div(rows_per_tile, Ho) + 1, rows_per_tile);
    return rows_per_tile + qh_max * images;
  }
  // Most input rows a tile owns: sh per output row, plus the rows below the
  // last output row of each image (H + ph - Ho sh < (kh - 1) dh + sh of them).
  int64_t max_own_rows(const LowRankConvShape& s) const {
    const int64_t images = std::min<int64_t>(ceil_div(rows_per_tile, Ho) + 1, rows_per_tile);
    return rows_per_tile * s.sh + images * ((s.kh - 1) * s.dh + s.sh);
  }
  // Per-thread buffer sizes (pixels): gT's rows (own and above), T's (own),
  // the input pixels whose gradient a tile writes, and a PairGemm list (at
  // most one pair per own pixel and tap).
  int64_t gt_pixels() const { return max_ext_rows() * Wt; }
  int64_t t_pixels() const { return rows_per_tile * Wt; }
  int64_t gx_pixels(const LowRankConvShape& s) const { return max_own_rows(s) * s.W; }
  int64_t pair_list() const { return rows_per_tile * std::max(Wo, Wt); }
};

// The image rows of one tile: own output rows [oh_a, oh_b) of image n; gT is
// computed for intermediate rows [ext0, oh_b), stored from row ext_start of
// the tile's gT buffer; the tile owns input rows [ih_lo, ih_hi).
struct Segment {
  int64_t n, oh_a, oh_b, ext0, ext_start, ih_lo, ih_hi;
};

// Padded input rows [oh sh, (oh + 1) sh) belong to output row oh, the rows
// below the last output row to it as well: a partition of every image's rows.
void tile_segments(const LowRankConvShape& s, const BackwardPlan& pl, int64_t g0, int64_t rows,
                   int64_t halo, std::vector<Segment>& segs) {
  segs.clear();
  int64_t ext = 0;
  for (int64_t q = 0; q < rows;) {
    const int64_t n = (g0 + q) / pl.Ho, oh_a = (g0 + q) % pl.Ho;
    const int64_t oh_b = std::min(pl.Ho, oh_a + rows - q);
    Segment sg{n, oh_a, oh_b, std::max<int64_t>(0, oh_a - halo), ext, 0, 0};
    ext += oh_b - sg.ext0;
    sg.ih_lo = std::clamp<int64_t>(oh_a * s.sh - s.ph, 0, s.H);
    sg.ih_hi = oh_b == pl.Ho ? s.H : std::clamp<int64_t>(oh_b * s.sh - s.ph, sg.ih_lo, s.H);
    segs.push_back(sg);
    q += oh_b - oh_a;
  }
}

// Appends to a PairGemm's lists from index k the pairs of one image row:
// (fixed + o fixed_pitch, mapped + (first + o step) mapped_pitch) for the
// o < count whose mapped column first + o step lies in [0, width) (the others
// would meet padding); returns the new list length. A plain loop the compiler
// vectorises: the lists are rebuilt per tile and tap.
inline int64_t append_pairs(const float** fixed_out, const float** mapped_out, int64_t k,
                            const float* fixed, int64_t fixed_pitch, const float* mapped,
                            int64_t first, int64_t step, int64_t width, int64_t mapped_pitch,
                            int64_t count) {
  const int64_t lo = first >= 0 ? 0 : std::min(count, ceil_div(-first, step));
  const int64_t hi =
      std::max(lo, first >= width ? 0 : std::min(count, ceil_div(width - first, step)));
  for (int64_t o = lo; o < hi; ++o) {
    fixed_out[k + o - lo] = fixed + o * fixed_pitch;
    mapped_out[k + o - lo] = mapped + (first + o * step) * mapped_pitch;
  }
  return k + hi - lo;
}

// Row of intermediate row oh of segment sg in the tile's gT buffer.
inline int64_t ext_row(const Segment& sg, int64_t oh) { return sg.ext_start + oh - sg.ext0; }

// Whether the threads share one set of weight-gradient sums. Private sums
// (one copy of both factors per thread) need no barriers and run each
// PairGemm over all rows of the sums: shared ones made the backward 10-25%
// slower where the factors are small (AVX-512, 2 threads: 16 ch @32 spatial
// rank 12, 4.3-4.9 -> 5.4-6.2 ms; 64 ch @56 spatial rank 16, 14-16 -> 17-19
// ms), each thread building every tile's pair lists and running half-height
// micro-tiles. At 512 channels a copy is 4.5 MiB, more than the rank-r
// intermediate the two-conv sequence holds; there the shared sums are as fast
// (512 ch @7 spatial rank 384: 27.3-27.6 against 27.6-28.6 ms). Private sums
// are taken while the extra copies stay within a quarter of that
// intermediate (N x rank x Ho x Wo floats).
bool share_weight_sums(const LowRankConvShape& s, const BackwardPlan& pl, int used) {
  const int64_t copy = (pl.taps1 * s.C + pl.taps2 * s.Nout) * pl.rp;
  const int64_t intermediate = s.N * s.rank * pl.Ho * pl.Wo;
  return (used - 1) * copy * 4 > intermediate;
}

// The backward's transposed convs by Winograd F(4, 3) (lowrank_winograd.h),
// spatial scheme at stride and dilation 1: gT = grad_out through the second
// factor along rows (flipped taps, left padding 2 - pw; K = Nout), grad_x = gT
// through the first factor along columns (K = rank). Same rank rule as the
// forward, and a memory rule: their extra buffers (net of the direct
// transposed factors they replace) within half the intermediate.
// Channel scheme (horizontal stride and dilation 1): grad_x = gT through the
// k x 3 factor; a 3 x 3 one at stride and dilation 1 by F(4 x 4, 3 x 3) on 6 x
// 6 patches of gT (K = rp), else (or where that does not fit) along rows,
// reducing over the kh gT rows of each input row (K = kh rp), any vertical
// stride and dilation; rank rule 4 as its forward.
struct BackwardWinograd {
  std::optional<RowWinograd> gt, gx_row;
  std::optional<ColumnWinograd> gx;
  std::optional<Winograd2D> gx2d;
  BackwardWinograd(const float* w1, const float* w2, const LowRankConvShape& s,
                   const BackwardPlan& pl, bool want_gt, bool want_gx, int64_t used,
                   const cpu::lowrank::Kernels& kern) {
    const int vec = kern.vec_width;
    if (s.scheme == LowRankScheme::kChannel) {
      if (want_gx && winograd_wanted(s, 4) && s.kw == 3 && s.sw == 1 && s.dw == 1 && s.pw <= 2 &&
          s.C % vec == 0 && pl.cp == s.C)
        channel_grad_x(w1, s, pl, used, kern);
      return;
    }
    if (s.scheme != LowRankScheme::kSpatial || !winograd_wanted(s, 16)) return;
    const bool row =
        want_gt && s.kw == 3 && s.sw == 1 && s.dw == 1 && s.pw <= 2 && s.Nout % vec == 0;
    const bool col = want_gx && s.kh == 3 && s.sh == 1 && s.dh == 1 && s.ph <= 2 &&
                     s.C % vec == 0 && pl.cp == s.C;
    if (!row && !col) return;
    // Sizes first (null weights), from the largest chunks that fit, net of the
    // direct transposed factors they replace (3 taps each).
    const int64_t intermediate = s.N * s.rank * pl.Ho * pl.Wo;
    const int64_t replaced = (row ? 3 * s.Nout * pl.rp : 0) + (col ? 3 * s.rank * pl.cp : 0);
    const int64_t cap = winograd_cap([&](int64_t c) {
      int64_t extra = -replaced;
      if (row) {
        const RowWinograd w(s.rank, s.Nout, pl.rp, 1, s.Nout, pl.Wt, 2 - s.pw, c);
        extra += w.packed_floats() + used * w.scratch_floats();
      }
      if (col) {
        const ColumnWinograd w(s.C, s.rank, pl.cp, pl.rp, s.W, c);
        extra += w.packed_floats() + used * w.scratch_floats();
      }
      return 2 * extra <= intermediate;
    });
    if (cap == 0) return;
    // The transposed convs as correlations: factor (d0, d1, 3) read as (d1, d0)
    // with its taps reversed (step -1 from tap 2).
    if (row) {  // gT[wt] = sum_j go[wt - (2 - pw) + j] w2[2 - j]
      gt.emplace(s.rank, s.Nout, pl.rp, 1, s.Nout, pl.Wt, 2 - s.pw, cap);
      if (w2 != nullptr)
        gt->pack([&](int64_t r, int64_t o) { return w2 + (o * s.rank + r) * 3 + 2; }, -1, kern);
    }
    if (col) {  // gx[ih] = sum_i gT[ih - (2 - ph) + i] w1[2 - i]
      gx.emplace(s.C, s.rank, pl.cp, pl.rp, s.W, cap);
      if (w1 != nullptr)
        gx->pack([&](int64_t c, int64_t r) { return w1 + (r * s.C + c) * 3 + 2; }, -1, kern);
    }
  }

  // Floats of the packed forms and of `used` threads' buffers (null weights:
  // the same plan, sizes only).
  int64_t floats(int64_t used) const {
    int64_t n = 0;
    if (gt) n += gt->packed_floats() + used * gt->scratch_floats();
    if (gx) n += gx->packed_floats() + used * gx->scratch_floats();
    if (gx_row) n += gx_row->packed_floats() + used * gx_row->scratch_floats();
    if (gx2d) n += gx2d->packed_floats() + used * gx2d->scratch_floats();
    return n;
  }
  bool grad_x() const { return gx || gx_row || gx2d; }

 private:
  void channel_grad_x(const float* w1, const LowRankConvShape& s, const BackwardPlan& pl,
                      int64_t used, const cpu::lowrank::Kernels& kern) {
    const int64_t K = s.kh * pl.rp, intermediate = s.N * s.rank * pl.Ho * pl.Wo;
    const int64_t replaced = s.kh * s.kw * s.rank * pl.cp;  // the direct transposed factor
    auto fits = [&](const auto& w) {
      return 2 * (w.packed_floats() + used * w.scratch_floats() - replaced) <= intermediate;
    };
    if (s.kh == 3 && s.sh == 1 && s.dh == 1 && s.ph <= 2 && winograd_pays(pl.rp, pl.cp)) {
      const int64_t cap2d = winograd_cap(
          [&](int64_t c) { return fits(Winograd2D(s.C, pl.rp, pl.cp, pl.Wt, s.W, 2 - s.pw, c)); });
      if (cap2d > 0) {
        // grad_x[ih][iw] = sum_(a, b) gT[ih - (2 - ph) + a][iw - (2 - pw) + b] w1[2 - a][2 - b]:
        // the factor read from its last tap backwards (step -1), zeros past the rank.
        gx2d.emplace(s.C, pl.rp, pl.cp, pl.Wt, s.W, 2 - s.pw, cap2d);
        if (w1 != nullptr)
          gx2d->pack(
              [&](int64_t c, int64_t r) -> const float* {
                return r < s.rank ? w1 + (r * s.C + c) * 9 + 8 : nullptr;
              },
              -1, kern);
        return;
      }
    }
    const int64_t cap = winograd_cap(
        [&](int64_t c) { return fits(RowWinograd(s.C, K, pl.cp, s.kh, pl.rp, s.W, 2 - s.pw, c)); });
    if (cap == 0) return;
    gx_row.emplace(s.C, K, pl.cp, s.kh, pl.rp, s.W, 2 - s.pw, cap);
    if (w1 == nullptr) return;  // sizes only
    // GEMM row i rp + r is gT row i's channel r (zeros past the rank), taps
    // flipped: gx[iw] = sum_j gT[iw - (2 - pw) + j] w1[.., 2 - j].
    gx_row->pack(
        [&](int64_t c, int64_t k) -> const float* {
          const int64_t i = k / pl.rp, r = k % pl.rp;
          return r < s.rank ? w1 + ((r * s.C + c) * s.kh + i) * 3 + 2 : nullptr;
        },
        -1, kern);
  }
};

}  // namespace

void backward_nhwc(const float* go, const float* x, const float* w1, const float* w2, float* gx,
                   float* gw1, float* gw2, float* gb, const LowRankConvShape& s, int num_threads,
                   const float* t_saved, bool t_cl) {
  const auto& kern = pixel_major_kernels(s);
  const int threads = resolve_threads(num_threads);
  const BackwardPlan pl(s, kern.vec_width, threads);
  const bool want_gx = gx != nullptr, want_w1 = gw1 != nullptr, want_w2 = gw2 != nullptr;
  const bool want_gt = want_gx || want_w1;
  const int64_t halo = want_gx ? pl.qh_max : 0;
  const int64_t taps1 = pl.taps1, taps2 = pl.taps2, rp = pl.rp, cp = pl.cp, Wt = pl.Wt;
  const bool direct_gx = cp == s.C;  // grad_x rows written in place

  // Transposed factors for the IndGemms (gT: Nout -> rank; grad_x: rank -> C)
  // and, when T is recomputed, the first factor as the forward packs it.
  const int used = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, pl.tiles)));
  const BackwardWinograd wino(w1, w2, s, pl, want_gt, want_gx, used, kern);
  Buffer b2t(0, false), b1t(0, false), b1(0, false);
  if (want_gt && !wino.gt) b2t = pack_factor(w2, s.rank, s.Nout, taps2, rp, kern, true);
  if (want_gx && !wino.grad_x()) b1t = pack_factor(w1, s.C, s.rank, taps1, cp, kern, true);
  const bool recompute = want_w2 && !t_saved;
  if (recompute) b1 = pack_factor(w1, s.rank, s.C, taps1, rp, kern);
  // Zero rows: a padding pixel, or a whole gT row (grad_x by Winograd).
  const std::vector<float> zeros(
      static_cast<size_t>(
          std::max({s.C, s.Nout, rp, cp, wino.gx || wino.gx2d ? std::max(s.W, Wt) * rp : 0})),
      0.f);
  const float* zero = zeros.data();

  // The tiles go in rounds of one per thread: each thread computes its tile's
  // T, gT and grad_x. Private sums: the thread adds its tile into its own
  // copy, folded in thread order at the end. Shared sums: after a barrier,
  // each thread adds every tile of the round into its own slice of the one
  // set (rows of grad_w2 by output channel, of grad_w1 by input channel); a
  // second barrier keeps the tiles' buffers until all have read them, and
  // every sum runs over the tiles in order, whichever thread adds it.
  const bool shared = used > 1 && share_weight_sums(s, pl, used);
  const int copies = shared ? 1 : used;
  // A weight gradient's PairGemm runs channels x padded rank (broadcast from
  // the x or grad_out pixel, vectors of the gT or T pixel), or, where the rank
  // pads to a vector and the channels do not, rank x channels (`by_rank`): at
  // rank 12 and 16 channels 12 rows of one vector instead of 16, the padding's
  // multiply-adds gone. Private sums only (shared ones split the channels).
  // Training step, channels_last, 2 threads, Zen 4, min of alternating
  // processes: 16 ch @32 spatial rank 12 8.45-8.69 -> 7.61-8.39 ms, 32 ch @16
  // channel rank 14 5.41-5.97 -> 5.15-5.73, 64 ch @56 channel rank 29 63.1-64.1
  // -> 60.5-60.9, 128 ch @28 channel rank 58 58.4-58.6 -> 56.9-57.1; 64 ch @8
  // rank 29 level.
  const bool by_rank = !shared && s.rank < rp;
  const bool w1_by_rank = by_rank && s.C % kern.vec_width == 0;
  const bool w2_by_rank = by_rank && s.Nout % kern.vec_width == 0;
  // Shared sums of an unpadded rank are exactly a gradient's size: they
  // accumulate in the gradient tensors themselves (zeroed here) and are put in
  // the gradients' order at the end, through a copy made after the packed
  // factors are freed. At 512 ch @7 spatial rank 384 that takes the 4.5 MiB set
  // off the peak (19.6 -> 16.0 MiB; the two convs 18.3-19.7).
  const bool in_place = shared && rp == s.rank;
  const size_t sums1 = want_w1 ? static_cast<size_t>(taps1 * s.C * rp) : 0;
  const size_t sums2 = want_w2 ? static_cast<size_t>(taps2 * s.Nout * rp) : 0;
  std::vector<std::vector<float>> acc_w1(static_cast<size_t>(copies),
                                         std::vector<float>(in_place ? 0 : sums1, 0.f));
  std::vector<std::vector<float>> acc_w2(static_cast<size_t>(copies),
                                         std::vector<float>(in_place ? 0 : sums2, 0.f));
  if (in_place) {
    if (want_w1) std::fill_n(gw1, sums1, 0.f);
    if (want_w2) std::fill_n(gw2, sums2, 0.f);
  }
  // A kept channels_last T of an unpadded rank is read in place (its pixels
  // are the T rows the PairGemms want); otherwise each tile copies its rows.
  const bool t_in_place = t_saved && t_cl && rp == s.rank;
  struct TileWork {
    Buffer gt, t;                   // the tile's gT (own rows and above) and T (own rows)
    const float* t_rows = nullptr;  // T of the own rows: t, or the kept T in place
    std::vector<Segment> segs;
    int64_t g0 = 0, rows = 0;
    bool valid = false;
  };
  std::vector<TileWork*> work(static_cast<size_t>(used), nullptr);
  BiasSums bias(gb != nullptr, used, s.Nout);
  const int64_t total_rows = s.N * pl.Ho, rounds = ceil_div(pl.tiles, used);
#pragma omp parallel num_threads(used)
  {
    const int tid = omp_get_thread_num();
    // gT and T rows are rp floats; the columns past the rank are zero (T: the
    // buffer starts zeroed and only rank columns are written; gT: the packed
    // factor's columns past the rank are zero), which the PairGemms read.
    TileWork mine{Buffer(want_gt ? pl.gt_pixels() * rp : 0, false),
                  Buffer(want_w2 && !t_in_place ? pl.t_pixels() * rp : 0),
                  {}};
    work[static_cast<size_t>(tid)] = &mine;
    Buffer gxt(want_gx && !direct_gx ? pl.gx_pixels(s) * cp : 0, false);
    std::vector<float> bias_tile(bias.wanted() ? static_cast<size_t>(s.Nout) : 0);
    std::vector<const float*> ind;
    PaddingGroups pad;  // regroups `ind` before each IndGemm
    std::vector<const float*> pa(static_cast<size_t>(pl.pair_list())),
        pb(static_cast<size_t>(pl.pair_list()));
    WinogradScratch gt_scratch = wino.gt ? wino.gt->scratch() : WinogradScratch();
    WinogradScratch gx_scratch = wino.gx       ? wino.gx->scratch()
                                 : wino.gx2d   ? wino.gx2d->scratch()
                                 : wino.gx_row ? wino.gx_row->scratch()
                                               : WinogradScratch();
    std::vector<const float*> go_rows;
    std::vector<std::pair<const Segment*, int64_t>> gx_groups;  // (segment, input row)
    // This thread's rows of the sums: output channels [o0, o1), input [c0, c1)
    // (all of its own copy when private).
    const int64_t o0 = shared ? s.Nout * tid / used : 0;
    const int64_t o1 = shared ? s.Nout * (tid + 1) / used : s.Nout;
    const int64_t c0 = shared ? s.C * tid / used : 0, c1 = shared ? s.C * (tid + 1) / used : s.C;
    float* const sums_w1 = in_place ? gw1 : acc_w1[shared ? 0 : static_cast<size_t>(tid)].data();
    float* const sums_w2 = in_place ? gw2 : acc_w2[shared ? 0 : static_cast<size_t>(tid)].data();
#pragma omp barrier
    for (int64_t round = 0; round < rounds; ++round) {
      const int64_t tile = round * used + tid;
      mine.valid = tile < pl.tiles;
      if (mine.valid) {
        const int64_t g0 = tile * pl.rows_per_tile;
        const int64_t rows = std::min(pl.rows_per_tile, total_rows - g0);
        mine.g0 = g0;
        mine.rows = rows;
        std::vector<Segment>& segs = mine.segs;
        tile_segments(s, pl, g0, rows, halo, segs);
        const Segment& last = segs.back();
        const int64_t ext_rows = last.ext_start + last.oh_b - last.ext0;
        mine.t_rows = mine.t.get();
        if (want_w2) {  // T of the own rows, pixel-major
          if (t_in_place) {
            mine.t_rows = t_saved + g0 * Wt * rp;
          } else if (t_saved && t_cl) {  // pixels of rank floats -> rows of rp, zeros past the rank
            kern.copy_pad_rows(t_saved + g0 * Wt * s.rank, s.rank, rows * Wt, 0, s.rank, rp,
                               mine.t.get(), rp);
          } else if (t_saved) {
            int64_t q = 0;
            for (const Segment& sg : segs) {
              const int64_t np = (sg.oh_b - sg.oh_a) * Wt;
              planes_to_pixels(kern, t_saved + (sg.n * s.rank * pl.Ho + sg.oh_a) * Wt, pl.Ho * Wt,
                               np, s.rank, mine.t.get() + q * Wt * rp, rp);
              q += sg.oh_b - sg.oh_a;
            }
          } else {
            ind.resize(static_cast<size_t>(taps1 * rows * Wt));
            fill_first_factor_pointers(s, pl.Ho, Wt, x, g0, rows, ind.data(), zero);
            pad.regroup(ind.data(), rows * Wt, taps1, zero);
            kern.ind_gemm(pad.apply(
                {rows * Wt, s.C, rp, taps1, ind.data(), b1.get(), nullptr, mine.t.get(), rp}));
          }
        }
        if (want_gt && wino.gt) {
          go_rows.resize(static_cast<size_t>(ext_rows));
          for (const Segment& sg : segs)
            for (int64_t oh = sg.ext0; oh < sg.oh_b; ++oh)
              go_rows[static_cast<size_t>(ext_row(sg, oh))] =
                  go + ((sg.n * pl.Ho + oh) * pl.Wo) * s.Nout;
          float* gt = mine.gt.get();
          wino.gt->run(
              kern, gt_scratch, ext_rows,
              [&](int64_t q, int64_t, int64_t p) {
                return p >= 0 && p < pl.Wo ? go_rows[static_cast<size_t>(q)] + p * s.Nout : zero;
              },
              cpu::lowrank::kChannelBlock, nullptr, [&](int64_t q) { return gt + q * Wt * rp; }, rp,
              cpu::lowrank::kChannelBlock, [](int64_t) -> const float* { return nullptr; }, false);
        } else if (want_gt) {
          // gT over the segments' intermediate rows [ext0, oh_b): T pixel (oh, wt)
          // receives from output pixel (oh, ow) with ow sw - pw + j dw = wt.
          const int64_t pt = ext_rows * Wt;
          ind.resize(static_cast<size_t>(taps2 * pt));
          for (const Segment& sg : segs)
            for (int64_t oh = sg.ext0; oh < sg.oh_b; ++oh) {
              const float* grow = go + ((sg.n * pl.Ho + oh) * pl.Wo) * s.Nout;
              for (int64_t j = 0; j < taps2; ++j) {
                const float** dst = ind.data() + j * pt + ext_row(sg, oh) * Wt;
                if (pl.channel) {
                  fill_row_pointers(dst, Wt, grow, 0, 1, pl.Wo, s.Nout, true, zero);
                } else if (s.sw == 1) {
                  fill_row_pointers(dst, Wt, grow, s.pw - j * s.dw, 1, pl.Wo, s.Nout, true, zero);
                } else {
                  for (int64_t wt = 0; wt < Wt; ++wt) {
                    const int64_t num = wt + s.pw - j * s.dw;
                    const bool ok = num >= 0 && num % s.sw == 0 && num / s.sw < pl.Wo;
                    dst[wt] = ok ? grow + (num / s.sw) * s.Nout : zero;
                  }
                }
              }
            }
          pad.regroup(ind.data(), pt, taps2, zero);
          kern.ind_gemm(pad.apply(
              {pt, s.Nout, rp, taps2, ind.data(), b2t.get(), nullptr, mine.gt.get(), rp}));
        }
        if (bias.wanted())  // the tile's grad_out rows (in cache when gT just read them)
          bias.add_pixels(tid, go + g0 * pl.Wo * s.Nout, rows * pl.Wo, s.Nout, bias_tile.data());
        if (want_gx && (wino.gx || wino.gx2d)) {
          // Groups of 4 owned input rows per segment; input row ih reads gT rows
          // ih + ph - 2 .. ih + ph, those outside [ext0, oh_b) zero (padding, or
          // sources of the rows past ih_hi, which are not stored).
          gx_groups.clear();
          for (const Segment& sg : segs)
            for (int64_t ih = sg.ih_lo; ih < sg.ih_hi; ih += 4) gx_groups.emplace_back(&sg, ih);
          const float* gt = mine.gt.get();
          auto group = [&](int64_t g, const float** rows) {
            const Segment& sg = *gx_groups[static_cast<size_t>(g)].first;
            const int64_t ih0 = gx_groups[static_cast<size_t>(g)].second;
            for (int64_t i = 0; i < 6; ++i) {
              const int64_t oh = ih0 + s.ph - 2 + i;
              rows[i] = oh >= sg.ext0 && oh < sg.oh_b ? gt + ext_row(sg, oh) * Wt * rp : zero;
            }
            return ColumnWinograd::Rows{gx + (sg.n * s.H + ih0) * s.W * s.C,
                                        std::min<int64_t>(4, sg.ih_hi - ih0)};
          };
          const int64_t count = static_cast<int64_t>(gx_groups.size());
          if (wino.gx)
            wino.gx->run(kern, gx_scratch, count, group, s.W * s.C, s.C,
                         cpu::lowrank::kChannelBlock);
          else
            wino.gx2d->run(kern, gx_scratch, count, group, s.W * s.C, s.C,
                           cpu::lowrank::kChannelBlock, zero);
        } else if (want_gx && wino.gx_row) {
          // Input row ih, kernel row i reads gT row (ih + ph - i dh) / sh where it
          // divides and lies inside (else zeros); the owned rows are consecutive
          // in grad_x across segments.
          gx_groups.clear();
          for (const Segment& sg : segs)
            for (int64_t ih = sg.ih_lo; ih < sg.ih_hi; ++ih) gx_groups.emplace_back(&sg, ih);
          const float* gt = mine.gt.get();
          float* out = gx + (segs.front().n * s.H + segs.front().ih_lo) * s.W * s.C;
          wino.gx_row->run(
              kern, gx_scratch, static_cast<int64_t>(gx_groups.size()),
              [&](int64_t q, int64_t i, int64_t p) {
                const Segment& sg = *gx_groups[static_cast<size_t>(q)].first;
                const int64_t num = gx_groups[static_cast<size_t>(q)].second + s.ph - i * s.dh;
                const bool ok =
                    num >= 0 && num % s.sh == 0 && num / s.sh < pl.Ho && p >= 0 && p < Wt;
                return ok ? gt + (ext_row(sg, num / s.sh) * Wt + p) * rp : zero;
              },
              cpu::lowrank::kChannelBlock, nullptr, [&](int64_t q) { return out + q * s.W * s.C; },
              s.C, cpu::lowrank::kChannelBlock, [](int64_t) -> const float* { return nullptr; },
              false);
        } else if (want_gx) {
          // Input pixel (ih, iw), tap (i, jj) reads gT pixel ((ih + ph - i dh) / sh,
          // (iw + pw - jj dw) / sw) where both divide and land inside (channel),
          // (.., iw) for spatial. The owned rows of consecutive segments are
          // consecutive in memory (a segment that ends an image owns its last row).
          int64_t px = 0;
          for (const Segment& sg : segs) px += (sg.ih_hi - sg.ih_lo) * s.W;
          if (px > 0) {
            ind.resize(static_cast<size_t>(taps1 * px));
            int64_t p0 = 0;
            for (const Segment& sg : segs)
              for (int64_t ih = sg.ih_lo; ih < sg.ih_hi; ++ih, p0 += s.W)
                for (int64_t tp = 0; tp < taps1; ++tp) {
                  const int64_t i = pl.channel ? tp / s.kw : tp, jj = pl.channel ? tp % s.kw : 0;
                  const float** dst = ind.data() + tp * px + p0;
                  const int64_t num = ih + s.ph - i * s.dh;
                  const bool row_ok = num >= 0 && num % s.sh == 0 && num / s.sh < pl.Ho;
                  const float* grow =
                      row_ok ? mine.gt.get() + ext_row(sg, num / s.sh) * Wt * rp : nullptr;
                  if (!pl.channel) {
                    fill_row_pointers(dst, s.W, grow, 0, 1, Wt, rp, row_ok, zero);
                  } else if (s.sw == 1) {
                    fill_row_pointers(dst, s.W, grow, s.pw - jj * s.dw, 1, Wt, rp, row_ok, zero);
                  } else {
                    for (int64_t iw = 0; iw < s.W; ++iw) {
                      const int64_t nw = iw + s.pw - jj * s.dw;
                      const bool ok = row_ok && nw >= 0 && nw % s.sw == 0 && nw / s.sw < Wt;
                      dst[iw] = ok ? grow + (nw / s.sw) * rp : zero;
                    }
                  }
                }
            float* out = gx + (segs.front().n * s.H + segs.front().ih_lo) * s.W * s.C;
            pad.regroup(ind.data(), px, taps1, zero);
            kern.ind_gemm(pad.apply({px, s.rank, cp, taps1, ind.data(), b1t.get(), nullptr,
                                     direct_gx ? out : gxt.get(), direct_gx ? s.C : cp}));
            if (!direct_gx)
              for (int64_t p = 0; p < px; ++p)
                std::memcpy(out + p * s.C, gxt.get() + p * cp, sizeof(float) * s.C);
          }
        }
      }
      if (shared) {
#pragma omp barrier
      }
      // This thread's rows of the sums, over the round's tiles in order (its
      // own tile only when the sums are private).
      for (int k = shared ? 0 : tid; k < (shared ? used : tid + 1); ++k) {
        const TileWork& w = *work[static_cast<size_t>(k)];
        if (!w.valid) continue;
        if (want_w2 && o1 > o0) {                                 // grad_w2[j] += G^T T_j
          const float* g_tile = go + w.g0 * pl.Wo * s.Nout + o0;  // the tile's grad_out pixels
          for (int64_t j = 0; j < taps2; ++j) {
            // Output pixel (q, ow) meets T pixel (q, ow sw - pw + j dw) (spatial).
            const int64_t first = pl.channel ? 0 : j * s.dw - s.pw, step = pl.channel ? 1 : s.sw;
            int64_t n = 0;
            const float** gp = w2_by_rank ? pb.data() : pa.data();  // the grad_out side
            const float** tq = w2_by_rank ? pa.data() : pb.data();  // the T side
            for (int64_t q = 0; q < w.rows; ++q)
              n = append_pairs(gp, tq, n, g_tile + q * pl.Wo * s.Nout, s.Nout,
                               w.t_rows + q * Wt * rp, first, step, Wt, rp, pl.Wo);
            if (w2_by_rank)  // sums[j][r][o]
              kern.pair_gemm(
                  {s.rank, s.Nout, n, pa.data(), pb.data(), sums_w2 + j * s.rank * s.Nout, s.Nout});
            else  // sums[j][o][r]
              kern.pair_gemm(
                  {o1 - o0, rp, n, pa.data(), pb.data(), sums_w2 + (j * s.Nout + o0) * rp, rp});
          }
        }
        if (want_w1 && c1 > c0) {  // grad_w1[t] += X_t^T gT over the own intermediate pixels
          for (int64_t tp = 0; tp < taps1; ++tp) {
            const int64_t i = pl.channel ? tp / s.kw : tp, jj = pl.channel ? tp % s.kw : 0;
            // T pixel (oh, wt) meets input pixel (oh sh - ph + i dh, wt sw - pw + jj dw)
            // (channel) or (.., wt) (spatial).
            const int64_t first = pl.channel ? jj * s.dw - s.pw : 0, step = pl.channel ? s.sw : 1;
            int64_t n = 0;
            for (const Segment& sg : w.segs) {
              const float* xn = x + sg.n * s.H * s.W * s.C + c0;
              for (int64_t oh = sg.oh_a; oh < sg.oh_b; ++oh) {
                const int64_t ih = oh * s.sh - s.ph + i * s.dh;
                if (ih < 0 || ih >= s.H) continue;
                n = append_pairs(w1_by_rank ? pa.data() : pb.data(),
                                 w1_by_rank ? pb.data() : pa.data(), n,
                                 w.gt.get() + ext_row(sg, oh) * Wt * rp, rp, xn + ih * s.W * s.C,
                                 first, step, s.W, s.C, Wt);
              }
            }
            if (w1_by_rank)  // sums[t][r][c] (c0 = 0: private sums)
              kern.pair_gemm(
                  {s.rank, s.C, n, pa.data(), pb.data(), sums_w1 + tp * s.rank * s.C, s.C});
            else  // sums[t][c][r]
              kern.pair_gemm(
                  {c1 - c0, rp, n, pa.data(), pb.data(), sums_w1 + (tp * s.C + c0) * rp, rp});
          }
        }
      }
      if (shared) {
#pragma omp barrier
      }
    }
  }
  // The sums (copies added in thread order): acc_w1[t][c][r] (by rank:
  // [t][r][c]) -> grad_w1[r][c][t], acc_w2[j][o][r] (by rank: [j][r][o]) ->
  // grad_w2[o][r][j]. In place: the packed factors go first, then each
  // gradient is copied out as the one set of sums and put in order.
  if (in_place) {
    for (Buffer* b : {&b1, &b1t, &b2t}) b->p.reset();
    if (want_w1) acc_w1[0].assign(gw1, gw1 + sums1);
  }
  if (want_w1) {
#pragma omp parallel for num_threads(used) schedule(static)
    for (int64_t r = 0; r < s.rank; ++r)
      for (int64_t c = 0; c < s.C; ++c)
        for (int64_t tp = 0; tp < taps1; ++tp)
          gw1[(r * s.C + c) * taps1 + tp] = sum_over_threads(
              acc_w1, copies, w1_by_rank ? (tp * s.rank + r) * s.C + c : (tp * s.C + c) * rp + r);
  }
  if (in_place && want_w2) {
    acc_w1[0] = std::vector<float>();
    acc_w2[0].assign(gw2, gw2 + sums2);
  }
  if (want_w2) {
#pragma omp parallel for num_threads(used) schedule(static)
    for (int64_t o = 0; o < s.Nout; ++o)
      for (int64_t r = 0; r < s.rank; ++r)
        for (int64_t j = 0; j < taps2; ++j)
          gw2[(o * s.rank + r) * taps2 + j] = sum_over_threads(
              acc_w2, copies,
              w2_by_rank ? (j * s.rank + r) * s.Nout + o : (j * s.Nout + o) * rp + r);
  }
  if (bias.wanted()) bias.store(gb);
}

int64_t nhwc_backward_workspace_bytes(const LowRankConvShape& s, int num_threads) {
  const int threads = resolve_threads(num_threads);
  const BackwardPlan pl(s, pixel_major_kernels(s).vec_width, threads);
  const int64_t used = std::max<int64_t>(1, std::min<int64_t>(threads, pl.tiles));
  // Pointer lists (2 floats per pointer): the largest IndGemm list (grad_x,
  // gT, or a recomputed T) and the two PairGemm lists.
  const int64_t pointers = 2 * std::max({pl.taps1 * pl.gx_pixels(s), pl.taps2 * pl.gt_pixels(),
                                         pl.taps1 * pl.t_pixels()}) +
                           4 * pl.pair_list();
  // PaddingGroups of the largest IndGemm list.
  const int64_t groups =
      PaddingGroups::scratch_floats(std::max({pl.gx_pixels(s), pl.gt_pixels(), pl.t_pixels()}));
  const int64_t per_thread = (pl.gt_pixels() + pl.t_pixels()) * pl.rp +
                             (pl.cp != s.C ? pl.gx_pixels(s) * pl.cp : 0) + pointers + groups;
  // Packed factors (the transposes, and a temporary of each while packing), the
  // recomputed first factor, the sums (one set, or one per thread) and the zero row.
  const bool shared = used > 1 && share_weight_sums(s, pl, static_cast<int>(used));
  const int64_t copies = shared ? 1 : used;
  // Shared unpadded sums live in the gradients; one gradient's copy at the end.
  const int64_t sums = shared && pl.rp == s.rank
                           ? std::max(pl.taps1 * s.C, pl.taps2 * s.Nout) * pl.rp
                           : copies * (pl.taps1 * s.C * pl.rp + pl.taps2 * s.Nout * pl.rp);
  // The Winograd forms replace the transposed factor(s) they cover.
  const BackwardWinograd wino(nullptr, nullptr, s, pl, true, true, used, pixel_major_kernels(s));
  const int64_t packed = 2 * ((wino.gt ? 0 : pl.taps2 * s.Nout * pl.rp) +
                              (wino.grad_x() ? 0 : pl.taps1 * s.rank * pl.cp)) +
                         pl.taps1 * s.C * pl.rp + sums + wino.floats(used) +
                         std::max({s.C, s.Nout, pl.rp, pl.cp,
                                   wino.gx || wino.gx2d ? std::max(s.W, pl.Wt) * pl.rp : 0});
  return 4 * (used * per_thread + packed);
}

}  // namespace lowrank_detail
}  // namespace fusenas
