// Block bodies and launch sequences of the CUDA low-rank convolution. Written
// once against common/block_exec.h: csrc/cuda/lowrank_conv_cuda.cu runs them as
// CUDA kernels, csrc/emu/cuda_block_emulation.cpp block by block on the host.
//
// Forward (one kernel): a block owns an output tile (n, th x tw pixels, 64
// output channels). Per rank chunk it computes the rank-r intermediate tile t
// (with the halo the second factor reads) into shared memory, from input
// tiles + halo and w1 staged in shared memory per chunk of input channels;
// then the second factor reads t and w2 from shared memory into 4 x 4
// register tiles (4 channels x 4 columns per thread). t never reaches global
// memory. Blocks of other output-channel tiles recompute t: with 64 channels
// per block that is nothing for O <= 64 and stays cheap next to the second
// factor for the low ranks TRP gives.
//
// Backward: the rank-r tensors are the smallest in the problem (R/O of
// grad_out), so they are materialised in float32 once instead of being
// recomputed per tile: t (for grad_w2; the forward block with the second factor
// replaced by a store) and gt = dL/dt (the transposed second factor). Then two
// generic block kinds finish the job:
//   dgrad: input gradient of a factor (transposed conv in gather form, no
//          atomics): gt from grad_out and w2, grad_x from gt and w1;
//   wgrad: weight gradient of a factor as a GEMM over pixels, 64 x 64 tiles,
//          split over pixels across blocks, one float32 atomic per weight and
//          block: grad_w2 from (grad_out, t), grad_w1 from (gt, x), grad_bias
//          from (grad_out, ones).
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/block_exec.h"
#include "common/elem_io.h"
#include "common/lowrank_cuda_tiling.h"

namespace fusenas {
namespace lowrank {

using blockexec::BlockId;
using blockexec::F4;
using blockexec::lane;
using blockexec::load4;

FUSENAS_HD int imin(int a, int b) { return a < b ? a : b; }

struct Acc4x4 {
  float v[4][4];
};

// Thread -> (channel group, pixel group) of a 16 x 16 register-tile grid.
// NCHW: neighbouring threads take neighbouring columns of one channel;
// NHWC: neighbouring channels of one pixel. Either way a warp's stores are
// contiguous runs.
FUSENAS_HD void thread_groups(int tid, bool channels_last, int& cg, int& pg) {
  if (channels_last) {
    pg = tid / 16;
    cg = tid % 16;
  } else {
    cg = tid / 16;
    pg = tid % 16;
  }
}

// ---------------------------------------------------------------- forward --

struct FwdArgs {
  Geometry g;  // t_geometry(...) for the t-storing variant
  FwdTiles t;
  int tiles_w;
  const void* x;
  const void* w1;
  const void* w2;
  const void* bias;
  void* y;  // y (dtype DT), or t (float32) for the t-storing variant
  Strides4 xs, ys;
};

template <DType DT, bool kStoreT, class Ex>
FUSENAS_BLOCK void fwd_block(const FwdArgs& a, Ex& ex, typename Ex::Smem smem, BlockId b) {
  const Geometry& g = a.g;
  const FwdTiles& T = a.t;
  const Factor& f1 = g.f1;
  const Factor& f2 = g.f2;
  const int n = b.z;
  const int ho0 = (b.x / a.tiles_w) * T.th;
  const int wo0 = (b.x % a.tiles_w) * T.tw;
  const int u0 = wo0 * f2.sw - f2.pw;  // first intermediate column the tile reads
  const int xr0 = ho0 * f1.sh - f1.ph;
  const int xc0 = u0 * f1.sw - f1.pw;
  const int taps1 = f1.kh * f1.kw;
  const int npos = T.th * T.tu;
  const auto ts = smem;                 // [rc][th][tu]
  const auto xs = smem + T.ts_floats;   // [cc][xr][xc]
  const auto w1s = xs + T.xs_floats;    // [cc][kh][kw][rcp]: 4 ranks per LDS.128
  const auto w2s = smem + T.ts_floats;  // [rw][kw2][kChanRow] (reuses the x / w1 space)

  typename Ex::template Local<Acc4x4> acc;
  ex.for_threads([&](int tid) {
    for (int i = 0; i < 4; ++i)
      for (int q = 0; q < 4; ++q) acc(tid).v[i][q] = 0.f;
  });

  for (int r0 = 0; r0 < g.R; r0 += T.rc) {
    ex.for_threads([&](int tid) {
      for (int i = tid; i < T.rc * npos; i += kThreads) ts[i] = 0.f;
    });
    for (int c0 = 0; c0 < g.C; c0 += T.cc) {
      const int ccur = imin(T.cc, g.C - c0);
      ex.sync();  // ts zeroed; the previous stage's reads of xs / w1s are done
      ex.for_threads([&](int tid) {
        // Input tile + halo, zero outside the image (f1's padding).
        const int plane = T.xr * T.xc;
        for (int i = tid; i < ccur * plane; i += kThreads) {
          int c, rest;
          if (g.channels_last) {
            c = i % ccur;
            rest = i / ccur;
          } else {
            c = i / plane;
            rest = i % plane;
          }
          const int rr = rest / T.xc, cc = rest % T.xc;
          const int h = xr0 + rr, w = xc0 + cc;
          float v = 0.f;
          if (h >= 0 && h < g.H && w >= 0 && w < g.W)
            v = ElemIO<DT>::load(a.x, offset4(a.xs, n, c0 + c, h, w));
          xs[(c * T.xr + rr) * T.xc + cc] = v;
        }
        // w1 in groups of 8 (c, tap) x 4 ranks per 32 threads: each group of 8
        // reads 8 consecutive weights of one rank (a full 32-byte sector), and
        // the padded row stride rcp puts the 32 stores on 32 banks.
        const int nct = ccur * taps1;  // ctap = c * taps1 + tap
        const int ct8 = (nct + 7) / 8;
        for (int i = tid; i < ct8 * 8 * T.rc; i += kThreads) {
          const int grp = i / 32, r4 = grp % (T.rc / 4), c8 = grp / (T.rc / 4);
          const int ctap = c8 * 8 + i % 8, r = r4 * 4 + (i / 8) % 4;
          if (ctap >= nct) continue;
          float v = 0.f;
          if (r0 + r < g.R) {
            const int64_t src = (static_cast<int64_t>(r0 + r) * g.C + c0) * taps1 + ctap;
            v = ElemIO<DT>::load(a.w1, src);
          }
          w1s[ctap * T.rcp + r] = v;
        }
      });
      ex.sync();
      ex.for_threads([&](int tid) {
        // t[r, th, tu] += sum_{c, i, j} w1[r, c, i, j] x[c, row, col]: a thread
        // takes 4 ranks x 2 positions (pos and pos + half), so one LDS.128 of
        // weights and two LDS of x feed 8 FMAs. Positions outside t (or past
        // the last row) keep t = 0: the second factor's zero padding.
        const int groups = T.rc / 4;
        const int half = (npos + 1) / 2;
        for (int it = tid; it < groups * half; it += kThreads) {
          const int rg = it / half, pos0 = it % half;
          int xoff[2];
          bool ok[2];
          for (int q = 0; q < 2; ++q) {
            const int pos = pos0 + q * half;
            const int th = pos / T.tu, tu = pos % T.tu;
            const int u = u0 + tu;
            ok[q] = pos < npos && u >= 0 && u < g.Wt && ho0 + th < g.Ho;
            // The taps (i, j) add i*dh rows and j*dw columns: still inside the tile.
            FUSENAS_BLOCK_CHECK(!ok[q] || (th * f1.sh + (f1.kh - 1) * f1.dh < T.xr &&
                                           tu * f1.sw + (f1.kw - 1) * f1.dw < T.xc));
            xoff[q] = ok[q] ? th * f1.sh * T.xc + tu * f1.sw : 0;
          }
          if (!ok[0] && !ok[1]) continue;
          float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
          for (int c = 0; c < ccur; ++c) {
            for (int i = 0; i < f1.kh; ++i) {
              const auto xp = xs + (c * T.xr + i * f1.dh) * T.xc;
              const auto wp = w1s + (c * f1.kh + i) * f1.kw * T.rcp + 4 * rg;
              for (int j = 0; j < f1.kw; ++j) {
                const F4 w = load4(wp + j * T.rcp);
                for (int q = 0; q < 2; ++q) {
                  const float xv = xp[xoff[q] + j * f1.dw];
                  s[q][0] += w.x * xv;
                  s[q][1] += w.y * xv;
                  s[q][2] += w.z * xv;
                  s[q][3] += w.w * xv;
                }
              }
            }
          }
          for (int q = 0; q < 2; ++q) {
            if (!ok[q]) continue;
            const auto tp = ts + 4 * rg * npos + pos0 + q * half;
            for (int r = 0; r < 4; ++r) tp[r * npos] += s[q][r];
          }
        }
      });
    }
    ex.sync();  // t chunk complete; x / w1 reads done
    if constexpr (kStoreT) {
      ex.for_threads([&](int tid) {
        const int rcur = imin(T.rc, g.R - r0);
        for (int i = tid; i < rcur * npos; i += kThreads) {
          int r, pos;
          if (g.channels_last) {
            r = i % rcur;
            pos = i / rcur;
          } else {
            r = i / npos;
            pos = i % npos;
          }
          const int th = pos / T.tu, tu = pos % T.tu;
          const int ho = ho0 + th, u = u0 + tu;
          if (ho < g.Ho && u >= 0 && u < g.Wt && tu < T.tw)
            static_cast<float*>(a.y)[offset4(a.ys, n, r0 + r, ho, u)] = ts[r * npos + pos];
        }
      });
    } else {
      // Second factor from the t chunk in shared memory, per output-channel tile:
      // all of them when t is resident, the block's own (gridDim.y) otherwise.
      const bool last_chunk = r0 + T.rc >= g.R;
      const int ot_end = T.resident ? (g.O + kChanTile - 1) / kChanTile : b.y + 1;
      for (int ot = T.resident ? 0 : b.y; ot < ot_end; ++ot) {
        const int o0 = ot * kChanTile;
        for (int rw0 = 0; rw0 < imin(T.rc, g.R - r0); rw0 += T.rw) {
          const int rwcur = imin(T.rw, g.R - r0 - rw0);
          ex.for_threads([&](int tid) {
            // Groups of 8 (r, j) x 4 channels per 32 threads: 8 consecutive
            // weights of one w2 row per group, 32 banks per warp store.
            const int nrj = rwcur * f2.kw;  // rj = r * kw2 + j, contiguous in a w2 row
            for (int i = tid; i < (nrj + 7) / 8 * 8 * kChanTile; i += kThreads) {
              const int grp = i / 32, o4 = grp % (kChanTile / 4), c8 = grp / (kChanTile / 4);
              const int rj = c8 * 8 + i % 8, o = o4 * 4 + (i / 8) % 4;
              if (rj >= nrj) continue;
              float v = 0.f;
              if (o0 + o < g.O) {
                const int64_t src = (static_cast<int64_t>(o0 + o) * g.R + r0 + rw0) * f2.kw;
                v = ElemIO<DT>::load(a.w2, src + rj);
              }
              w2s[rj * kChanRow + o] = v;
            }
          });
          ex.sync();
          ex.for_threads([&](int tid) {
            int og, pg;
            thread_groups(tid, g.channels_last, og, pg);
            const int gpr = T.tw / 4;
            if (pg >= T.th * gpr) return;
            const int th = pg / gpr, tw0 = (pg % gpr) * 4;
            Acc4x4& ac = acc(tid);
            for (int r = 0; r < rwcur; ++r) {
              const auto trow = ts + ((rw0 + r) * T.th + th) * T.tu + tw0 * f2.sw;
              for (int j = 0; j < f2.kw; ++j) {
                const F4 w = load4(w2s + (r * f2.kw + j) * kChanRow + 4 * og);
                const auto tp = trow + j * f2.dw;
                FUSENAS_BLOCK_CHECK((tw0 + 3) * f2.sw + j * f2.dw < T.tu);
                for (int q = 0; q < 4; ++q) {
                  const float tv = tp[q * f2.sw];
                  ac.v[0][q] += w.x * tv;
                  ac.v[1][q] += w.y * tv;
                  ac.v[2][q] += w.z * tv;
                  ac.v[3][q] += w.w * tv;
                }
              }
            }
          });
          ex.sync();  // before the next stage overwrites w2s
        }
        if (last_chunk) {
          ex.for_threads([&](int tid) {
            int og, pg;
            thread_groups(tid, g.channels_last, og, pg);
            const int gpr = T.tw / 4;
            Acc4x4& ac = acc(tid);
            const int ho = ho0 + pg / gpr, wb = wo0 + (pg % gpr) * 4;
            if (pg < T.th * gpr && ho < g.Ho) {
              for (int i = 0; i < 4; ++i) {
                const int o = o0 + 4 * og + i;
                if (o >= g.O) break;
                const float bv = a.bias ? ElemIO<DT>::load(a.bias, o) : 0.f;
                for (int q = 0; q < 4; ++q) {
                  if (wb + q < g.Wo)
                    ElemIO<DT>::store(a.y, offset4(a.ys, n, o, ho, wb + q), ac.v[i][q] + bv);
                }
              }
            }
            for (int i = 0; i < 4; ++i)
              for (int q = 0; q < 4; ++q) ac.v[i][q] = 0.f;
          });
        }
      }
    }
    ex.sync();  // before the next chunk overwrites ts
  }
}

// ------------------------------------------------------------------ dgrad --
// gx[n, c, h, w] = sum_{o, i, j} W[o, c, i, j] gy[n, o, ho, wo] over
// h = ho*sh - ph + i*dh, w = wo*sw - pw + j*dw. A block owns a gx tile
// (n, th x tw, 64 channels) and stages per chunk of gy channels the gy halo
// tile and the weights in shared memory.

struct DgradArgs {
  Factor f;
  DgradTiles t;
  int tiles_w;
  int N, Cy, Hy, Wy, Cx, Hx, Wx;
  bool channels_last;
  const void* gy;
  const void* w;  // (Cy, Cx, kh, kw), contiguous
  void* gx;
  Strides4 gys, gxs;
};

template <DType GYT, DType WT, DType GXT, class Ex>
FUSENAS_BLOCK void dgrad_block(const DgradArgs& a, Ex& ex, typename Ex::Smem smem, BlockId b) {
  const Factor& f = a.f;
  const DgradTiles& T = a.t;
  const int n = b.z;
  const int h0 = (b.x / a.tiles_w) * T.th;
  const int w0 = (b.x % a.tiles_w) * T.tw;
  const int c0 = b.y * kChanTile;
  // First gy row / column any pixel of the tile gathers from (may be < 0: zeros).
  const int hlo = blockexec::ceil_div(h0 + f.ph - (f.kh - 1) * f.dh, f.sh);
  const int wlo = blockexec::ceil_div(w0 + f.pw - (f.kw - 1) * f.dw, f.sw);
  const int taps = f.kh * f.kw;
  const auto gs = smem;                 // [oc][gr][gc]
  const auto ws = smem + T.gys_floats;  // [oc][kh][kw][kChanRow]: 4 gx channels per LDS.128

  typename Ex::template Local<Acc4x4> acc;
  ex.for_threads([&](int tid) {
    for (int i = 0; i < 4; ++i)
      for (int q = 0; q < 4; ++q) acc(tid).v[i][q] = 0.f;
  });

  for (int o0 = 0; o0 < a.Cy; o0 += T.oc) {
    const int ocur = imin(T.oc, a.Cy - o0);
    ex.sync();  // the previous stage's reads are done
    ex.for_threads([&](int tid) {
      const int plane = T.gr * T.gc;
      for (int i = tid; i < ocur * plane; i += kThreads) {
        int o, rest;
        if (a.channels_last) {
          o = i % ocur;
          rest = i / ocur;
        } else {
          o = i / plane;
          rest = i % plane;
        }
        const int ho = hlo + rest / T.gc, wo = wlo + rest % T.gc;
        float v = 0.f;
        if (ho >= 0 && ho < a.Hy && wo >= 0 && wo < a.Wy)
          v = ElemIO<GYT>::load(a.gy, offset4(a.gys, n, o0 + o, ho, wo));
        gs[o * plane + rest] = v;
      }
      for (int i = tid; i < ocur * kChanTile * taps; i += kThreads) {
        const int tap = i % taps, rest = i / taps;
        const int c = rest % kChanTile, o = rest / kChanTile;
        float v = 0.f;
        if (c0 + c < a.Cx)
          v = ElemIO<WT>::load(a.w, (static_cast<int64_t>(o0 + o) * a.Cx + c0 + c) * taps + tap);
        ws[(o * taps + tap) * kChanRow + c] = v;
      }
    });
    ex.sync();
    ex.for_threads([&](int tid) {
      int cg, pg;
      thread_groups(tid, a.channels_last, cg, pg);
      const int gpr = T.tw / 4;
      if (pg >= T.th * gpr) return;
      const int h = h0 + pg / gpr, wb = w0 + (pg % gpr) * 4;
      Acc4x4& ac = acc(tid);
      for (int o = 0; o < ocur; ++o) {
        for (int i = 0; i < f.kh; ++i) {
          const int rh = h + f.ph - i * f.dh - hlo * f.sh;  // (ho - hlo) * sh when it is a tap
          // Unit strides (the common case) skip the integer divisions.
          if (rh < 0 || (f.sh != 1 && rh % f.sh != 0)) continue;
          const int hi = f.sh == 1 ? rh : rh / f.sh;
          FUSENAS_BLOCK_CHECK(hi < T.gr);
          const auto grow = gs + (o * T.gr + hi) * T.gc;
          for (int j = 0; j < f.kw; ++j) {
            const F4 w = load4(ws + (o * taps + i * f.kw + j) * kChanRow + 4 * cg);
            for (int q = 0; q < 4; ++q) {
              const int rw = wb + q + f.pw - j * f.dw - wlo * f.sw;
              if (rw < 0 || (f.sw != 1 && rw % f.sw != 0)) continue;
              const int wi = f.sw == 1 ? rw : rw / f.sw;
              FUSENAS_BLOCK_CHECK(wi < T.gc);
              const float gv = grow[wi];
              ac.v[0][q] += w.x * gv;
              ac.v[1][q] += w.y * gv;
              ac.v[2][q] += w.z * gv;
              ac.v[3][q] += w.w * gv;
            }
          }
        }
      }
    });
  }

  ex.for_threads([&](int tid) {
    int cg, pg;
    thread_groups(tid, a.channels_last, cg, pg);
    const int gpr = T.tw / 4;
    if (pg >= T.th * gpr) return;
    const int h = h0 + pg / gpr, wb = w0 + (pg % gpr) * 4;
    if (h >= a.Hx) return;
    for (int i = 0; i < 4; ++i) {
      const int c = c0 + 4 * cg + i;
      if (c >= a.Cx) break;
      for (int q = 0; q < 4; ++q) {
        if (wb + q < a.Wx)
          ElemIO<GXT>::store(a.gx, offset4(a.gxs, n, c, h, wb + q), acc(tid).v[i][q]);
      }
    }
  });
}

// ------------------------------------------------------------------ wgrad --
// gw[o, c, i, j] += sum_{n, ho, wo} gy[n, o, ho, wo] xin[n, c, ho*sh - ph + i*dh,
// wo*sw - pw + j*dw] for the pixels [z * pix_per_split, ...) of block z: a
// 64 (o) x 64 (c, i, j) GEMM tile over pixels staged 16 at a time.
// xin == nullptr reads ones (the bias gradient).

struct WgradArgs {
  Factor f;
  int N, Cy, Hy, Wy, Cx, Hx, Wx;
  int64_t pix_per_split;
  bool channels_last;
  const void* gy;
  const void* xin;
  float* gw;  // (Cy, Cx, kh, kw) float32, zeroed by the launcher
  Strides4 gys, xins;
};

template <DType GYT, DType XT, class Ex>
FUSENAS_BLOCK void wgrad_block(const WgradArgs& a, Ex& ex, typename Ex::Smem smem, BlockId b) {
  const Factor& f = a.f;
  const int taps = f.kh * f.kw;
  const int K = a.Cx * taps;
  const int k0 = b.x * kChanTile;
  const int o0 = b.y * kChanTile;
  const int64_t plane = static_cast<int64_t>(a.Hy) * a.Wy;
  const int64_t P = a.N * plane;
  const int64_t p_begin = b.z * a.pix_per_split;
  const int64_t p_end = p_begin + a.pix_per_split < P ? p_begin + a.pix_per_split : P;
  const auto as = smem;                         // [16 pixels][kChanRow] of o
  const auto bs = smem + kWgradPix * kChanRow;  // [16 pixels][kChanRow] of (c, i, j)

  typename Ex::template Local<Acc4x4> acc;
  ex.for_threads([&](int tid) {
    for (int i = 0; i < 4; ++i)
      for (int q = 0; q < 4; ++q) acc(tid).v[i][q] = 0.f;
  });

  for (int64_t pb0 = p_begin; pb0 < p_end; pb0 += kWgradPix) {
    ex.sync();
    ex.for_threads([&](int tid) {
      for (int i = tid; i < kWgradPix * kChanTile; i += kThreads) {
        // NCHW: neighbouring threads read neighbouring pixels; NHWC: channels.
        const int pp = a.channels_last ? i / kChanTile : i % kWgradPix;
        const int col = a.channels_last ? i % kChanTile : i / kWgradPix;
        const int64_t p = pb0 + pp;
        float gv = 0.f, xv = 0.f;
        if (p < p_end) {
          const int nn = static_cast<int>(p / plane);
          const int rem = static_cast<int>(p % plane);
          const int ho = rem / a.Wy, wo = rem % a.Wy;
          if (o0 + col < a.Cy) gv = ElemIO<GYT>::load(a.gy, offset4(a.gys, nn, o0 + col, ho, wo));
          const int k = k0 + col;
          if (k < K) {
            if (a.xin == nullptr) {
              xv = 1.f;
            } else {
              const int c = k / taps, tap = k % taps;
              const int h = ho * f.sh - f.ph + (tap / f.kw) * f.dh;
              const int w = wo * f.sw - f.pw + (tap % f.kw) * f.dw;
              if (h >= 0 && h < a.Hx && w >= 0 && w < a.Wx)
                xv = ElemIO<XT>::load(a.xin, offset4(a.xins, nn, c, h, w));
            }
          }
        }
        as[pp * kChanRow + col] = gv;
        bs[pp * kChanRow + col] = xv;
      }
    });
    ex.sync();
    ex.for_threads([&](int tid) {
      const int og = tid / 16, kg = tid % 16;
      Acc4x4& ac = acc(tid);
      for (int pp = 0; pp < kWgradPix; ++pp) {
        const F4 gv = load4(as + pp * kChanRow + 4 * og);
        const F4 xv = load4(bs + pp * kChanRow + 4 * kg);
        for (int i = 0; i < 4; ++i) {
          const float g = lane(gv, i);
          ac.v[i][0] += g * xv.x;
          ac.v[i][1] += g * xv.y;
          ac.v[i][2] += g * xv.z;
          ac.v[i][3] += g * xv.w;
        }
      }
    });
  }

  ex.for_threads([&](int tid) {
    const int og = tid / 16, kg = tid % 16;
    for (int i = 0; i < 4; ++i) {
      const int o = o0 + 4 * og + i;
      if (o >= a.Cy) break;
      for (int q = 0; q < 4; ++q) {
        const int k = k0 + 4 * kg + q;
        if (k < K) Ex::atomic_add(a.gw + static_cast<int64_t>(o) * K + k, acc(tid).v[i][q]);
      }
    }
  });
}

// ------------------------------------------------------- body wrappers --

template <DType DT, bool kStoreT>
struct FwdBody {
  using Args = FwdArgs;
  static constexpr int kThreads = lowrank::kThreads;
  static constexpr int kMinBlocks = 2;
  template <class Ex>
  static FUSENAS_BLOCK void run(const Args& a, Ex& ex, typename Ex::Smem smem, BlockId b) {
    fwd_block<DT, kStoreT>(a, ex, smem, b);
  }
};

template <DType GYT, DType WT, DType GXT>
struct DgradBody {
  using Args = DgradArgs;
  static constexpr int kThreads = lowrank::kThreads;
  static constexpr int kMinBlocks = 2;
  template <class Ex>
  static FUSENAS_BLOCK void run(const Args& a, Ex& ex, typename Ex::Smem smem, BlockId b) {
    dgrad_block<GYT, WT, GXT>(a, ex, smem, b);
  }
};

template <DType GYT, DType XT>
struct WgradBody {
  using Args = WgradArgs;
  static constexpr int kThreads = lowrank::kThreads;
  static constexpr int kMinBlocks = 2;
  template <class Ex>
  static FUSENAS_BLOCK void run(const Args& a, Ex& ex, typename Ex::Smem smem, BlockId b) {
    wgrad_block<GYT, XT>(a, ex, smem, b);
  }
};

// ------------------------------------------------------ launch sequences --
// Backend: launch<Body>(BlockId grid, int smem_bytes, const Body::Args&) and
// zero(float*, int64_t count), on one stream in order; error() after the last.

template <typename F>
void with_dtype(DType dt, F&& f) {
  switch (dt) {
    case DType::kBFloat16:
      f(std::integral_constant<DType, DType::kBFloat16>{});
      break;
    case DType::kFloat16:
      f(std::integral_constant<DType, DType::kFloat16>{});
      break;
    default:
      f(std::integral_constant<DType, DType::kFloat32>{});
      break;
  }
}

inline int ceil_div_i64(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

template <DType DT, bool kStoreT, class Backend>
void launch_fwd(Backend& be, const Geometry& g, int sm_count, const void* x, const void* w1,
                const void* w2, const void* bias, void* y) {
  FwdArgs a;
  a.g = g;
  a.t = plan_fwd(g, sm_count);
  a.tiles_w = ceil_div_i64(g.Wo, a.t.tw);
  a.x = x;
  a.w1 = w1;
  a.w2 = w2;
  a.bias = bias;
  a.y = y;
  a.xs = make_strides4(g.C, g.H, g.W, g.channels_last);
  a.ys = make_strides4(g.O, g.Ho, g.Wo, g.channels_last);
  // Resident t: each block runs every output-channel tile itself.
  const int o_tiles = kStoreT || a.t.resident ? 1 : ceil_div_i64(g.O, kChanTile);
  const BlockId grid{a.tiles_w * ceil_div_i64(g.Ho, a.t.th), o_tiles, g.N};
  be.template launch<FwdBody<DT, kStoreT>>(grid, 4 * a.t.smem_floats, a);
}

template <DType GYT, DType WT, DType GXT, class Backend>
void launch_dgrad(Backend& be, const Factor& f, bool channels_last, int N, int Cy, int Hy, int Wy,
                  int Cx, int Hx, int Wx, const void* gy, const void* w, void* gx) {
  DgradArgs a;
  a.f = f;
  a.t = plan_dgrad(f, Cy, Hx, Wx);
  a.tiles_w = ceil_div_i64(Wx, a.t.tw);
  a.N = N;
  a.Cy = Cy;
  a.Hy = Hy;
  a.Wy = Wy;
  a.Cx = Cx;
  a.Hx = Hx;
  a.Wx = Wx;
  a.channels_last = channels_last;
  a.gy = gy;
  a.w = w;
  a.gx = gx;
  a.gys = make_strides4(Cy, Hy, Wy, channels_last);
  a.gxs = make_strides4(Cx, Hx, Wx, channels_last);
  const BlockId grid{a.tiles_w * ceil_div_i64(Hx, a.t.th), ceil_div_i64(Cx, kChanTile), N};
  be.template launch<DgradBody<GYT, WT, GXT>>(grid, 4 * a.t.smem_floats, a);
}

// The pixel split gives about 4 blocks per SM over the whole grid, with at
// least 256 pixels per block so that the atomics stay a small fraction.
template <DType GYT, DType XT, class Backend>
void launch_wgrad(Backend& be, const Factor& f, bool channels_last, int N, int Cy, int Hy, int Wy,
                  int Cx, int Hx, int Wx, const void* gy, const void* xin, float* gw,
                  int sm_count) {
  WgradArgs a;
  a.f = f;
  a.N = N;
  a.Cy = Cy;
  a.Hy = Hy;
  a.Wy = Wy;
  a.Cx = Cx;
  a.Hx = Hx;
  a.Wx = Wx;
  a.channels_last = channels_last;
  a.gy = gy;
  a.xin = xin;
  a.gw = gw;
  a.gys = make_strides4(Cy, Hy, Wy, channels_last);
  a.xins = make_strides4(Cx, Hx, Wx, channels_last);
  const int kt = ceil_div_i64(static_cast<int64_t>(Cx) * f.kh * f.kw, kChanTile);
  const int ot = ceil_div_i64(Cy, kChanTile);
  const int64_t P = static_cast<int64_t>(N) * Hy * Wy;
  int64_t splits = (4 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1)) / (kt * ot);
  const int64_t max_splits = (P + 255) / 256;
  if (splits > max_splits) splits = max_splits;
  if (splits > 65535) splits = 65535;
  if (splits < 1) splits = 1;
  a.pix_per_split = (P + splits - 1) / splits;
  splits = (P + a.pix_per_split - 1) / a.pix_per_split;
  be.template launch<WgradBody<GYT, XT>>(BlockId{kt, ot, static_cast<int>(splits)},
                                         4 * kWgradSmemFloats, a);
}

template <class Backend>
void run_forward(Backend& be, const LowrankConvProblem& p, const void* x, const void* w1,
                 const void* w2, const void* bias, void* y) {
  const Geometry g = make_geometry(p);
  with_dtype(p.dtype, [&](auto dt) {
    constexpr DType DT = decltype(dt)::value;
    launch_fwd<DT, false>(be, g, p.sm_count, x, w1, w2, bias, y);
  });
}

template <class Backend>
void run_backward(Backend& be, const LowrankConvProblem& p, const void* gout, const void* x,
                  const void* w1, const void* w2, void* grad_x, float* grad_w1, float* grad_w2,
                  float* grad_bias, float* t_ws, float* gt_ws) {
  const int sm_count = p.sm_count;
  const Geometry g = make_geometry(p);
  const bool cl = g.channels_last;
  constexpr DType F32 = DType::kFloat32;
  with_dtype(p.dtype, [&](auto dt) {
    constexpr DType DT = decltype(dt)::value;
    if (grad_w2) {
      // t = first factor of x, stored in float32 (N, R, Ho, Wt).
      launch_fwd<DT, true>(be, t_geometry(g), sm_count, x, w1, nullptr, nullptr, t_ws);
      be.zero(grad_w2, static_cast<int64_t>(g.O) * g.R * g.f2.kw);
      launch_wgrad<DT, F32>(be, g.f2, cl, g.N, g.O, g.Ho, g.Wo, g.R, g.Ho, g.Wt, gout, t_ws,
                            grad_w2, sm_count);
    }
    if (grad_bias) {
      be.zero(grad_bias, g.O);
      launch_wgrad<DT, F32>(be, Factor{1, 1, 1, 1, 0, 0, 1, 1}, cl, g.N, g.O, g.Ho, g.Wo, 1, g.Ho,
                            g.Wo, gout, nullptr, grad_bias, sm_count);
    }
    if (grad_x || grad_w1) {
      // gt = dL/dt: the second factor transposed, from grad_out and w2.
      launch_dgrad<DT, DT, F32>(be, g.f2, cl, g.N, g.O, g.Ho, g.Wo, g.R, g.Ho, g.Wt, gout, w2,
                                gt_ws);
    }
    if (grad_w1) {
      be.zero(grad_w1, static_cast<int64_t>(g.R) * g.C * g.f1.kh * g.f1.kw);
      launch_wgrad<F32, DT>(be, g.f1, cl, g.N, g.R, g.Ho, g.Wt, g.C, g.H, g.W, gt_ws, x, grad_w1,
                            sm_count);
    }
    if (grad_x) {
      launch_dgrad<F32, DT, DT>(be, g.f1, cl, g.N, g.R, g.Ho, g.Wt, g.C, g.H, g.W, gt_ws, w1,
                                grad_x);
    }
  });
}

}  // namespace lowrank
}  // namespace fusenas
