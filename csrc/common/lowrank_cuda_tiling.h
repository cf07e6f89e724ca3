// Geometry and tile plans of the CUDA low-rank convolution kernels
// (csrc/cuda/lowrank_conv_blocks.h), shared by the device launcher and the
// host emulation so both run exactly the same tiles.
//
// Both TRP schemes are one shape: a first factor conv f1 (x -> t, R channels,
// Ho x Wt) and a second factor conv f2 of height 1 (t -> y, O channels,
// Ho x Wo):
//   channel: f1 = the dense conv's (kh, kw) geometry, Wt = Wo; f2 = 1 x 1
//   spatial: f1 = (kh, 1), stride (sh, 1), padding (ph, 0), dilation (dh, 1),
//            Wt = W; f2 = (1, kw), stride (1, sw), padding (0, pw), dilation (1, dw)
#pragma once

#include <cstdint>

#include "common/block_exec.h"
#include "fusenas/lowrank_cuda.h"

namespace fusenas {
namespace lowrank {

constexpr int kThreads = 256;  // threads per block: 16 x 16 register tiles of 4 x 4
constexpr int kChanTile = 64;  // output channels per block (16 groups of 4)
// Shared-memory rows of 64 channels are padded to 68 floats: rows 4 banks
// apart let 8 rows x 4 channels of a warp's staging stores hit 32 distinct
// banks, and 68 * 4 bytes keeps the LDS.128 reads 16-byte aligned.
constexpr int kChanRow = kChanTile + 4;
constexpr int kPixGroups = 16;  // pixel groups of 4 consecutive columns per block
constexpr int kWgradPix = 16;   // pixels per shared-memory stage of the weight-gradient GEMM
// 48 KiB: no opt-in attribute needed, and two blocks can share an SM's 100+ KiB.
constexpr int kSmemBudgetFloats = 48 * 1024 / 4;
// A forward block that keeps all of t may take up to 96 KiB (opt-in; within
// sm_80's 163 KiB, sm_86's 99 KiB and sm_90's 227 KiB per block): recomputing
// t per output-channel tile would cost more than the lost occupancy.
constexpr int kResidentBudgetFloats = 96 * 1024 / 4;

// One convolution in gather form: out[o, a, b] reads in[c, a*sh - ph + i*dh, b*sw - pw + j*dw].
struct Factor {
  int kh, kw, sh, sw, ph, pw, dh, dw;
};

struct Geometry {
  int N, C, H, W, R, O, Ho, Wt, Wo;
  Factor f1, f2;
  bool channels_last;
};

FUSENAS_HD int64_t conv_out_size(int64_t in, int k, int s, int p, int d) {
  return (in + 2 * p - static_cast<int64_t>(d) * (k - 1) - 1) / s + 1;
}

inline Geometry make_geometry(const LowrankConvProblem& p) {
  Geometry g;
  g.N = static_cast<int>(p.N);
  g.C = static_cast<int>(p.C);
  g.H = static_cast<int>(p.H);
  g.W = static_cast<int>(p.W);
  g.R = static_cast<int>(p.R);
  g.O = static_cast<int>(p.O);
  g.Ho = static_cast<int>(conv_out_size(p.H, p.kh, p.sh, p.ph, p.dh));
  g.Wo = static_cast<int>(conv_out_size(p.W, p.kw, p.sw, p.pw, p.dw));
  g.channels_last = p.channels_last;
  if (p.scheme == LowrankScheme::kChannel) {
    g.f1 = Factor{p.kh, p.kw, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw};
    g.f2 = Factor{1, 1, 1, 1, 0, 0, 1, 1};
    g.Wt = g.Wo;
  } else {
    g.f1 = Factor{p.kh, 1, p.sh, 1, p.ph, 0, p.dh, 1};
    g.f2 = Factor{1, p.kw, 1, p.sw, 0, p.pw, 1, p.dw};
    g.Wt = g.W;
  }
  return g;
}

// Output tile width: 16 columns, fewer for narrow maps; its height makes 64
// pixels (16 groups of 4 columns), capped for short maps.
inline int tile_width(int width) { return width >= 12 ? 16 : width >= 6 ? 8 : 4; }
inline int max_tile_height(int tw, int height) {
  int th = kPixGroups * 4 / tw;
  while (th > 1 && th / 2 >= height) th /= 2;
  return th;
}

// Tiles of the fused forward block (also of the t-storing variant).
//   resident: all R ranks of the t tile stay in shared memory and the block
//             runs every 64-channel output tile from them (t computed once);
//   chunked:  rc ranks at a time, one output-channel tile per block (grid.y),
//             t recomputed per output tile: the fallback for ranks too large.
// The second factor stages w2 in chunks of rw <= 32 ranks either way.
struct FwdTiles {
  int th, tw;  // output tile (rows, columns)
  int tu;      // intermediate columns the tile reads (halo of f2)
  int xr, xc;  // input rows / columns the tile reads (halo of f1)
  int rc, cc;  // rank chunk of t and input-channel chunk per shared-memory stage
  int rcp;     // row stride of the w1 stage: rc padded to 4 mod 8 (conflict-free stores)
  int rw;      // rank chunk of the w2 stage
  bool resident;
  int ts_floats, xs_floats, w1s_floats, w2s_floats, smem_floats;
};

inline FwdTiles fwd_tiles(const Geometry& g, int th, int tw, int rc, int cc, bool resident) {
  FwdTiles t;
  t.th = th;
  t.tw = tw;
  t.rc = rc;
  t.cc = cc;
  t.rcp = rc % 8 == 4 ? rc : rc + 4;
  t.rw = rc < 32 ? rc : 32;
  t.resident = resident;
  t.tu = (tw - 1) * g.f2.sw + (g.f2.kw - 1) * g.f2.dw + 1;
  t.xr = (th - 1) * g.f1.sh + (g.f1.kh - 1) * g.f1.dh + 1;
  t.xc = (t.tu - 1) * g.f1.sw + (g.f1.kw - 1) * g.f1.dw + 1;
  // Regions start at multiples of 4 floats: the LDS.128 reads stay aligned.
  t.ts_floats = blockexec::round_up4(rc * th * t.tu);
  t.xs_floats = blockexec::round_up4(cc * t.xr * t.xc);
  t.w1s_floats = cc * g.f1.kh * g.f1.kw * t.rcp;
  t.w2s_floats = t.rw * g.f2.kw * kChanRow;
  const int p1 = t.xs_floats + t.w1s_floats;
  t.smem_floats = t.ts_floats + (p1 > t.w2s_floats ? p1 : t.w2s_floats);
  return t;
}

// Tallest tile that still gives every SM a block: small maps with few images
// would otherwise leave most of the GPU idle. Kept at >= 32 pixels (half the
// 16 x 16 thread grid of the second factor busy).
inline int fwd_tile_height(const Geometry& g, int tw, int sm_count) {
  int th = max_tile_height(tw, g.Ho);
  const int64_t tiles_w = (g.Wo + tw - 1) / tw;
  while (th * tw > 32 && static_cast<int64_t>(g.N) * tiles_w * ((g.Ho + th - 1) / th) < sm_count)
    th /= 2;
  return th;
}

// Resident tiles when t fits kResidentBudgetFloats (larger tiles first), else
// the largest chunked tiles that fit 48 KiB: tile height first (input-halo
// reuse), then the rank chunk (fewer re-reads of x), then the channel chunk.
// rc = 0: nothing fits.
inline FwdTiles plan_fwd(const Geometry& g, int sm_count) {
  const int tw = tile_width(g.Wo);
  const int cmax = g.C < 16 ? g.C : 16;
  const int rall = blockexec::round_up4(g.R);
  const int th_max = fwd_tile_height(g, tw, sm_count);
  for (int th = th_max; th >= 1; th /= 2) {
    for (int cc = cmax; cc >= 1; cc /= 2) {
      const FwdTiles t = fwd_tiles(g, th, tw, rall, cc, true);
      if (t.smem_floats <= kResidentBudgetFloats) return t;
    }
  }
  const int rmax = blockexec::round_up4(g.R < 32 ? g.R : 32);
  for (int th = th_max; th >= 1; th /= 2) {
    for (int rc = rmax; rc >= 4; rc = rc > 4 ? blockexec::round_up4(rc / 2) : 0) {
      for (int cc = cmax; cc >= 1; cc /= 2) {
        const FwdTiles t = fwd_tiles(g, th, tw, rc, cc, false);
        if (t.smem_floats <= kSmemBudgetFloats) return t;
      }
    }
  }
  FwdTiles none = fwd_tiles(g, 1, tw, 4, 1, false);
  none.rc = 0;
  return none;
}

// The geometry of "compute t and store it": f2 becomes the identity and the
// output is t itself (R channels, Ho x Wt).
inline Geometry t_geometry(const Geometry& g) {
  Geometry t = g;
  t.f2 = Factor{1, 1, 1, 1, 0, 0, 1, 1};
  t.Wo = g.Wt;
  t.O = g.R;
  return t;
}

// Tiles of the transposed-conv (input-gradient) block: gx tile th x tw, kChanTile
// gx channels, oc gy channels per stage; gy halo of gr x gc.
struct DgradTiles {
  int th, tw, oc, gr, gc, gys_floats, smem_floats;
};

inline DgradTiles dgrad_tiles(const Factor& f, int th, int tw, int oc) {
  DgradTiles t;
  t.th = th;
  t.tw = tw;
  t.oc = oc;
  t.gr = (th - 1 + (f.kh - 1) * f.dh) / f.sh + 1;
  t.gc = (tw - 1 + (f.kw - 1) * f.dw) / f.sw + 1;
  t.gys_floats = blockexec::round_up4(oc * t.gr * t.gc);
  t.smem_floats = t.gys_floats + oc * f.kh * f.kw * kChanRow;
  return t;
}

// oc = 0: nothing fits.
inline DgradTiles plan_dgrad(const Factor& f, int cy, int hx, int wx) {
  const int tw = tile_width(wx);
  const int omax = cy < 16 ? cy : 16;
  for (int th = max_tile_height(tw, hx); th >= 1; th /= 2) {
    for (int oc = omax; oc >= 1; oc /= 2) {
      const DgradTiles t = dgrad_tiles(f, th, tw, oc);
      if (t.smem_floats <= kSmemBudgetFloats) return t;
    }
  }
  DgradTiles none = dgrad_tiles(f, 1, tw, 1);
  none.oc = 0;
  return none;
}

constexpr int kWgradSmemFloats = 2 * kWgradPix * kChanRow;

inline LowrankCudaPlan make_plan(const LowrankConvProblem& p) {
  const Geometry g = make_geometry(p);
  const FwdTiles f = plan_fwd(g, p.sm_count);
  const FwdTiles ft = plan_fwd(t_geometry(g), p.sm_count);
  const DgradTiles d2 = plan_dgrad(g.f2, g.O, g.Ho, g.Wt);
  const DgradTiles d1 = plan_dgrad(g.f1, g.R, g.H, g.W);
  LowrankCudaPlan plan;
  plan.ok = f.rc > 0 && ft.rc > 0 && d2.oc > 0 && d1.oc > 0;
  plan.fwd_tile_h = f.th;
  plan.fwd_rank_chunk = f.rc;
  plan.fwd_channel_chunk = f.cc;
  plan.fwd_smem_bytes = 4 * f.smem_floats;
  plan.fwd_resident = f.resident;
  plan.bwd_tile_h = d1.th;
  plan.bwd_out_chunk = d1.oc;
  plan.bwd_smem_bytes = 4 * (d1.smem_floats > d2.smem_floats ? d1.smem_floats : d2.smem_floats);
  plan.Ho = g.Ho;
  plan.Wo = g.Wo;
  plan.Wt = g.Wt;
  return plan;
}

}  // namespace lowrank
}  // namespace fusenas
