// Plane kernels of the PC-DARTS mixed op, written once over a SIMD vector type V
// (pc_mixed_vec.h) and instantiated by each per-ISA translation unit.
//
// Every kernel handles one (sample, channel) plane as a flat array: NCHW planes
// are used in place, channels_last planes are gathered into per-thread scratch
// (a few KiB, L1/L2 resident; never a whole-tensor conversion). Wide planes run
// flat loops over scratch planes, which keep the SIMD lanes full whatever the
// row width. Narrow planes (a row fits one vector: 8x8 and 16x16 with AVX-512)
// keep each row in a register instead: a masked store read back at once cannot
// be store-forwarded, and on those small maps the stalls cost more than the math.
//
// Pools are separable: a horizontal pass computes, for every input row, the
// stride-1 3-tap max (with the column of its first maximum) and sum; a
// vertical pass combines three of those rows. A stride-2 window of output o is
// the stride-1 window centred at 2 o, so stride 2 evaluates even rows at full
// width and keeps the even columns. Horizontal-then-vertical with "strictly
// greater replaces" picks the first maximum in row-major scan order: the element
// torch's max_pool2d routes the gradient to. Nothing of a pooled plane outlives
// the call; the backward recomputes it.
//
// Everything is in an anonymous namespace (see pc_mixed_vec.h for why).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/static_dispatch.h"
#include "cpu/pc_mixed_kernels.h"
#include "cpu/pc_mixed_vec.h"

// Per-plane helpers are inlined into their callers: see PcPlaneKernels for why
// plane structs must not cross a call boundary by value.
#define PC_INLINE __attribute__((always_inline)) inline

namespace fusenas {
namespace cpu {
namespace {

constexpr int64_t kFlushChunks = 64;  // float partial sums go to double this often

template <class V>
struct PcPlanes {
  using R = typename V::R;
  static constexpr int kW = V::W;

  // Per-thread scratch: kPcScratchPlanes planes of H * W floats, then rows.
  struct Scratch {
    float* base;
    int64_t plane;
    float* rows;
    int64_t row_stride;
    float* slot(int i) const { return base + i * plane; }
    float* row(int i) const { return rows + i * row_stride; }
  };
  enum Slot {
    kX,
    kG,
    kOut,
    kHmax,
    kHsum,
    kHcol,
    kM,
    kA,
    kArgmax,
    kDm,
    kU,
    kD,
    kP0,
    kGP0 = kP0 + kPcMaxParams
  };
  static_assert(kGP0 + kPcMaxParams <= kPcScratchPlanes, "scratch too small");

  static Scratch carve(const PcGeom& g, float* s) {
    const int64_t plane = pc_scratch_plane(g.H, g.W);
    return Scratch{s, plane, s + kPcScratchPlanes * plane, pc_scratch_row(g.W)};
  }

  static bool dense(int64_t sh, int64_t sw, int64_t w) { return sw == 1 && sh == w; }

  // The plane as one contiguous h x w array: in place when it already is one
  // (NCHW), else gathered into tmp (channels_last).
  static const float* in_plane(PlaneIn pl, int64_t h, int64_t w, float* tmp) {
    if (dense(pl.sh, pl.sw, w)) return pl.p;
    for (int64_t i = 0; i < h; ++i)
      for (int64_t j = 0; j < w; ++j) tmp[i * w + j] = pl.p[i * pl.sh + j * pl.sw];
    return tmp;
  }
  static float* out_plane(PlaneOut pl, int64_t w, float* tmp) {
    return dense(pl.sh, pl.sw, w) ? pl.p : tmp;
  }
  static void out_plane_done(PlaneOut pl, int64_t h, int64_t w, const float* tmp) {
    if (dense(pl.sh, pl.sw, w)) return;
    for (int64_t i = 0; i < h; ++i)
      for (int64_t j = 0; j < w; ++j) pl.p[i * pl.sh + j * pl.sw] = tmp[i * w + j];
  }

  template <class F>
  static void chunks(int64_t n, F&& f) {
    int64_t i = 0;
    for (; i + kW <= n; i += kW) f(i, kW);
    if (i < n) f(i, static_cast<int>(n - i));
  }

  // ---- pooling -------------------------------------------------------------

  // Every input row of x (H x W, contiguous): stride-1 3-tap max (sc kHmax),
  // column offset (-1, 0, 1, as float) of its first maximum (kHcol) and sum
  // (kHsum). Templates on what is wanted: no per-vector branches.
  template <bool kMax, bool kCol, bool kSum>
  static void horizontal(const PcGeom& g, const float* x, const Scratch& sc) {
    const int64_t W = g.W;
    const R one = V::set1(1.0f), zero = V::set1(0.0f), last = V::set1(static_cast<float>(W - 1));
    for (int64_t h = 0; h < g.H; ++h) {
      const float* r = x + h * W;
      float* hm = sc.slot(kHmax) + h * W;
      float* hc = sc.slot(kHcol) + h * W;
      float* hs = sc.slot(kHsum) + h * W;
      chunks(W, [&](int64_t w, int n) {
        // Left / right neighbours; past the row's ends the centre is repeated
        // (a duplicate never changes a max, and never wins a strict comparison
        // against the element it copies; the sums are fixed below).
        const R b = V::load_n(r + w, n);
        const R a = V::load_range_or(r + w - 1, w == 0 ? 1 : 0, n, b);
        const R c =
            V::load_range_or(r + w + 1, 0, static_cast<int>(std::min<int64_t>(n, W - w - 1)), b);
        if (kCol) {
          const R col = V::add(V::iota(), V::set1(static_cast<float>(w)));
          R m = a, idx = V::max(V::sub(col, one), zero);
          idx = V::select_gt(b, m, col, idx);
          m = V::max(m, b);
          idx = V::select_gt(c, m, V::min(V::add(col, one), last), idx);
          m = V::max(m, c);
          V::store_n(hc + w, V::sub(idx, col), n);
          V::store_n(hm + w, m, n);
        } else if (kMax) {
          V::store_n(hm + w, V::max(V::max(a, b), c), n);
        }
        if (kSum) V::store_n(hs + w, V::add(V::add(a, b), c), n);
      });
      if (kSum) {  // edge columns sum two taps (one when W == 1), not the replicas
        hs[0] = W > 1 ? r[0] + r[1] : r[0];
        if (W > 1) hs[W - 1] = r[W - 2] + r[W - 1];
      }
    }
  }

  // Where the vertical pass writes: pooled max, flat in-plane index of its
  // first maximum (as float; exact below 2^24, which the Python layer checks)
  // and pooled avg.
  struct VerticalOut {
    float* m;
    float* arg;
    float* a;
    VerticalOut at(int64_t off) const { return VerticalOut{m + off, arg + off, a + off}; }
  };

  // Vertical combination of the horizontal planes at offsets top / mid / bot
  // (rows above, at and below the window centres) over `count` values: a run
  // of whole rows, or all interior rows as one flat run.
  template <bool kMax, bool kArg, bool kAvg>
  static void vertical(const PcGeom& g, int64_t top, int64_t mid, int64_t bot, int64_t count,
                       bool sum_top, bool sum_bot, const VerticalOut& o, const Scratch& sc) {
    const float* hm = sc.slot(kHmax);
    const float* hc = sc.slot(kHcol);
    const float* hs = sc.slot(kHsum);
    const float* inv = g.inv_count_in + mid;
    const R d_top = V::set1(static_cast<float>(top - mid)),
            d_bot = V::set1(static_cast<float>(bot - mid));
    chunks(count, [&](int64_t i, int n) {
      if (kMax) {
        const R mt = V::load_n(hm + top + i, n), mm = V::load_n(hm + mid + i, n);
        const R mb = V::load_n(hm + bot + i, n);
        if (kArg) {  // offset of the first maximum from the window centre
          R mx = mt, d = V::add(d_top, V::load_n(hc + top + i, n));
          d = V::select_gt(mm, mx, V::load_n(hc + mid + i, n), d);
          mx = V::max(mx, mm);
          d = V::select_gt(mb, mx, V::add(d_bot, V::load_n(hc + bot + i, n)), d);
          mx = V::max(mx, mb);
          const R centre = V::add(V::iota(), V::set1(static_cast<float>(mid + i)));
          V::store_n(o.m + i, mx, n);
          V::store_n(o.arg + i, V::add(centre, d), n);
        } else {
          V::store_n(o.m + i, V::max(V::max(mt, mm), mb), n);
        }
      }
      if (kAvg) {
        R s = V::load_n(hs + mid + i, n);
        if (sum_top) s = V::add(V::load_n(hs + top + i, n), s);
        if (sum_bot) s = V::add(s, V::load_n(hs + bot + i, n));
        V::store_n(o.a + i, V::mul(s, V::load_n(inv + i, n)), n);
      }
    });
  }

  // ---- pooling of narrow planes (W <= kW): one row per register ------------

  // A row's horizontal 3-tap results: max, column offset of its first maximum
  // (as float) and sum.
  struct HRow {
    R m, col, s;
  };

  // Lane permutations of one row: left / right neighbour (clamped to the row,
  // so the max sees the centre repeated at the ends) and the even lanes.
  struct RowLanes {
    typename V::I left, right, even;
    R lane, last;  // lane index and W - 1, as floats
  };

  // Built from vector ops: tables written with scalar stores and loaded as a
  // vector at once stall (no store forwarding), and this runs once per plane.
  static RowLanes row_lanes(int W) {
    const R lane = V::iota(), one = V::set1(1.0f), zero = V::set1(0.0f);
    const R last = V::set1(static_cast<float>(W - 1));
    return RowLanes{
        V::index(V::max(V::sub(lane, one), zero)), V::index(V::min(V::add(lane, one), last)),
        V::index(V::min(V::add(lane, lane), V::set1(static_cast<float>(kW - 1)))), lane, last};
  }

  template <bool kMax, bool kCol, bool kSum>
  static HRow row_horizontal(const float* row, int W, const RowLanes& L) {
    const R zero = V::set1(0.0f), one = V::set1(1.0f);
    const R b = V::load_n(row, W);
    const R a = V::permute(b, L.left), c = V::permute(b, L.right);
    HRow o{zero, zero, zero};
    if (kCol) {  // the same comparisons, in the same order, as horizontal()
      R m = a, idx = V::max(V::sub(L.lane, one), zero);
      idx = V::select_gt(b, m, L.lane, idx);
      m = V::max(m, b);
      idx = V::select_gt(c, m, V::min(V::add(L.lane, one), L.last), idx);
      o.m = V::max(m, c);
      o.col = V::sub(idx, L.lane);
    } else if (kMax) {
      o.m = V::max(V::max(a, b), c);
    }
    if (kSum)  // the clamped neighbours are not taps: drop them at the ends
      o.s = V::add(V::add(V::select_gt(L.lane, zero, a, zero), b),
                   V::select_gt(L.last, L.lane, c, zero));
    return o;
  }

  // Same results as the general path below, one output row at a time in
  // registers: fn(offset, Wo, max, argmax, avg) with the row's Wo values in the
  // first lanes. A row stored to scratch with a masked store and loaded back at
  // once cannot be store-forwarded; those stalls dominated 8x8 and 16x16 maps.
  template <bool kMax, bool kArg, bool kAvg, class Fn>
  PC_INLINE static void pool_rows(const PcGeom& g, const float* x, Fn&& fn) {
    const int W = static_cast<int>(g.W), Wo = static_cast<int>(g.Wo);
    const int64_t H = g.H;
    const RowLanes L = row_lanes(W);
    const R zero = V::set1(0.0f);
    auto emit = [&](int64_t h, const HRow& t, const HRow& c, const HRow& b) {
      auto out = [&](R v) { return g.stride == 1 ? v : V::permute(v, L.even); };
      R mx = zero, arg = zero, avg = zero;
      if (kMax) {
        if (kArg) {  // as vertical(): first maximum in row-major order
          mx = t.m;
          R d = V::add(V::set1(h > 0 ? -static_cast<float>(W) : 0.0f), t.col);
          d = V::select_gt(c.m, mx, c.col, d);
          mx = V::max(mx, c.m);
          const R d_bot = V::set1(h + 1 < H ? static_cast<float>(W) : 0.0f);
          d = V::select_gt(b.m, mx, V::add(d_bot, b.col), d);
          mx = V::max(mx, b.m);
          arg = out(V::add(V::add(L.lane, V::set1(static_cast<float>(h * W))), d));
        } else {
          mx = V::max(V::max(t.m, c.m), b.m);
        }
        mx = out(mx);
      }
      if (kAvg) {
        R s = c.s;
        if (h > 0) s = V::add(t.s, s);
        if (h + 1 < H) s = V::add(s, b.s);
        avg = out(V::mul(s, V::load_n(g.inv_count_in + h * W, W)));
      }
      fn((h / g.stride) * Wo, Wo, mx, arg, avg);
    };
    HRow prev{zero, zero, zero}, cur = row_horizontal<kMax, kArg, kAvg>(x, W, L);
    for (int64_t h = 0; h < H; ++h) {
      const HRow next = h + 1 < H ? row_horizontal<kMax, kArg, kAvg>(x + (h + 1) * W, W, L) : cur;
      if (h % g.stride == 0 && h / g.stride < g.Ho) emit(h, h > 0 ? prev : cur, cur, next);
      prev = cur;
      cur = next;
    }
  }

  static bool narrow(const PcGeom& g) { return kW > 1 && g.W <= kW; }

  // ---- pooling, general ----------------------------------------------------

  template <bool kMax, bool kArg, bool kAvg>
  static void pool_t(const PcGeom& g, const float* x, const Scratch& sc) {
    if (narrow(g)) {
      return pool_rows<kMax, kArg, kAvg>(g, x, [&](int64_t i, int n, R m, R arg, R a) {
        if (kMax) V::store_n(sc.slot(kM) + i, m, n);
        if (kArg) V::store_n(sc.slot(kArgmax) + i, arg, n);
        if (kAvg) V::store_n(sc.slot(kA) + i, a, n);
      });
    }
    horizontal<kMax, kArg, kAvg>(g, x, sc);
    const int64_t H = g.H, W = g.W;
    auto edge_row = [&](int64_t h, const VerticalOut& o) {
      const int64_t t = h > 0 ? h - 1 : 0, b = h + 1 < H ? h + 1 : H - 1;
      vertical<kMax, kArg, kAvg>(g, t * W, h * W, b * W, W, h > 0, h + 1 < H, o, sc);
    };
    const VerticalOut full{sc.slot(kM), sc.slot(kArgmax), sc.slot(kA)};
    if (g.stride == 1) {
      edge_row(0, full);
      if (H > 2)
        vertical<kMax, kArg, kAvg>(g, 0, W, 2 * W, (H - 2) * W, true, true, full.at(W), sc);
      if (H > 1) edge_row(H - 1, full.at((H - 1) * W));
      return;
    }
    // Stride 2: even rows at full width into scratch rows, then the even columns.
    const VerticalOut tmp{sc.row(1), sc.row(2), sc.row(3)};
    for (int64_t ho = 0; ho < g.Ho; ++ho) {
      const int64_t h = 2 * ho;
      if (h == 0 || h + 1 == H)
        edge_row(h, tmp);
      else
        vertical<kMax, kArg, kAvg>(g, (h - 1) * W, h * W, (h + 1) * W, W, true, true, tmp, sc);
      const int64_t o = ho * g.Wo;
      chunks(g.Wo, [&](int64_t wo, int n) {
        auto keep_even = [&](const float* src, float* dst) {
          R ev, od;
          V::load_even_odd(src + 2 * wo, n, ev, od);
          V::store_n(dst + o + wo, ev, n);
        };
        if (kMax) keep_even(tmp.m, full.m);
        if (kArg) keep_even(tmp.arg, full.arg);
        if (kAvg) keep_even(tmp.a, full.a);
      });
    }
  }

  // fn(offset, n, max, argmax, avg) over runs of the pooled planes of x (flat
  // Ho x Wo offsets, n values each; unwanted results are zero vectors).
  // Narrow planes stay in registers; others go through scratch.
  template <bool kMax, bool kArg, bool kAvg, class Fn>
  PC_INLINE static void pooled_runs(const PcGeom& g, const float* x, const Scratch& sc, Fn&& fn) {
    const R zero = V::set1(0.0f);
    if (!kMax && !kAvg) {
      chunks(g.Ho * g.Wo, [&](int64_t i, int n) { fn(i, n, zero, zero, zero); });
    } else if (narrow(g)) {
      pool_rows<kMax, kArg, kAvg>(g, x, fn);
    } else {
      pool_t<kMax, kArg, kAvg>(g, x, sc);
      chunks(g.Ho * g.Wo, [&](int64_t i, int n) {
        fn(i, n, kMax ? V::load_n(sc.slot(kM) + i, n) : zero,
           kArg ? V::load_n(sc.slot(kArgmax) + i, n) : zero,
           kAvg ? V::load_n(sc.slot(kA) + i, n) : zero);
      });
    }
  }

  // Calls fn(std::bool_constant<has_max>, std::bool_constant<has_avg>).
  template <class Fn>
  static void with_pools(bool has_max, bool has_avg, Fn&& fn) {
    if (has_max && has_avg) return fn(std::true_type{}, std::true_type{});
    if (has_max) return fn(std::true_type{}, std::false_type{});
    if (has_avg) return fn(std::false_type{}, std::true_type{});
    fn(std::false_type{}, std::false_type{});
  }

  // Pooled planes (Ho x Wo, contiguous) of x into sc: kM (+ kArgmax when
  // want_arg) and kA.
  static void pool(const PcGeom& g, const float* x, bool want_max, bool want_arg, bool want_avg,
                   const Scratch& sc) {
    if (want_max && want_arg && want_avg) return pool_t<true, true, true>(g, x, sc);
    if (want_max && want_arg) return pool_t<true, true, false>(g, x, sc);
    if (want_max && want_avg) return pool_t<true, false, true>(g, x, sc);
    if (want_max) return pool_t<true, false, false>(g, x, sc);
    if (want_avg) return pool_t<false, false, true>(g, x, sc);
  }

  // ---- forward ---------------------------------------------------------------

  static void pool_moments(const PcGeom& g, const PlaneIn& x, bool want_max, bool want_avg,
                           double* moments, float* s) {
    const Scratch sc = carve(g, s);
    pool(g, in_plane(x, g.H, g.W, sc.slot(kX)), want_max, false, want_avg, sc);
    const int64_t count = g.Ho * g.Wo;
    for (int p = 0; p < 2; ++p) {
      if (!(p == 0 ? want_max : want_avg)) continue;
      // Two passes over the pooled plane (it is in L1): no E[x^2] - E[x]^2.
      const float* v = sc.slot(p == 0 ? kM : kA);
      R acc = V::set1(0.0f);
      chunks(count, [&](int64_t i, int n) { acc = V::add(acc, V::load_n(v + i, n)); });
      const float mean = V::hsum(acc) / static_cast<float>(count);
      const R vm = V::set1(mean);
      R m2 = V::set1(0.0f);
      chunks(count, [&](int64_t i, int n) {
        const R d = V::keep_n(V::sub(V::load_n(v + i, n), vm), n);
        m2 = V::fmadd(d, d, m2);
      });
      moments[2 * p] = mean;
      moments[2 * p + 1] = V::hsum(m2);
    }
  }

  template <int NP, bool kMax, bool kAvg>
  PC_INLINE static void forward_np(const PcGeom& g, PlaneIn x, const PcForwardCoef& c, PlaneOut out,
                                   const Scratch& sc) {
    const float* xp = in_plane(x, g.H, g.W, sc.slot(kX));
    const float* pp[NP > 0 ? NP : 1];
    R cp[NP > 0 ? NP : 1];
    for (int p = 0; p < NP; ++p) {
      pp[p] = in_plane(c.params[p], g.Ho, g.Wo, sc.slot(kP0 + p));
      cp[p] = V::set1(c.c_param[p]);
    }
    float* o = out_plane(out, g.Wo, sc.slot(kOut));
    const R bias = V::set1(c.bias), cm = V::set1(c.c_max), ca = V::set1(c.c_avg);
    const R cs = V::set1(c.c_skip);
    pooled_runs<kMax, false, kAvg>(g, xp, sc, [&](int64_t i, int n, R m, R, R a) {
      R acc = bias;
      if (kMax) acc = V::fmadd(cm, m, acc);
      if (kAvg) acc = V::fmadd(ca, a, acc);
      if (c.has_skip) acc = V::fmadd(cs, V::load_n(xp + i, n), acc);  // stride 1 only
      for (int p = 0; p < NP; ++p) acc = V::fmadd(cp[p], V::load_n(pp[p] + i, n), acc);
      V::store_n(o + i, acc, n);
    });
    out_plane_done(out, g.Ho, g.Wo, sc.slot(kOut));
  }

  static void forward(const PcGeom& g, const PlaneIn& x, const PcForwardCoef& c,
                      const PlaneOut& out, float* s) {
    const Scratch sc = carve(g, s);
    with_np(c.num_params, [&](auto np) {
      with_pools(c.has_max, c.has_avg, [&](auto mx, auto av) {
        forward_np<decltype(np)::value, decltype(mx)::value, decltype(av)::value>(g, x, c, out, sc);
      });
    });
  }

  static void bypass_forward(const PcGeom& g, const PlaneIn& x, int64_t x_step, float scale,
                             const PlaneOut& out, int64_t out_step, int64_t planes, float* s) {
    const Scratch sc = carve(g, s);
    for (int64_t i = 0; i < planes; ++i)
      bypass_forward_one(g, PlaneIn{x.p + i * x_step, x.sh, x.sw}, scale,
                         PlaneOut{out.p + i * out_step, out.sh, out.sw}, sc);
  }

  PC_INLINE static void bypass_forward_one(const PcGeom& g, PlaneIn x, float scale, PlaneOut out,
                                           const Scratch& sc) {
    const float* xp = in_plane(x, g.H, g.W, sc.slot(kX));
    float* o = out_plane(out, g.Wo, sc.slot(kOut));
    const R vs = V::set1(scale);
    if (g.stride == 1) {
      chunks(g.H * g.W,
             [&](int64_t i, int n) { V::store_n(o + i, V::mul(vs, V::load_n(xp + i, n)), n); });
    } else {
      for (int64_t ho = 0; ho < g.Ho; ++ho) {
        const float* r0 = xp + 2 * ho * g.W;
        const float* r1 = r0 + g.W;
        chunks(g.Wo, [&](int64_t wo, int n) {
          R a0, a1, b0, b1;
          V::load_even_odd(r0 + 2 * wo, n, a0, a1);
          V::load_even_odd(r1 + 2 * wo, n, b0, b1);
          const R mx = V::max(V::max(a0, a1), V::max(b0, b1));
          V::store_n(o + ho * g.Wo + wo, V::mul(vs, mx), n);
        });
      }
    }
    out_plane_done(out, g.Ho, g.Wo, sc.slot(kOut));
  }

  // ---- backward --------------------------------------------------------------

  template <int NP, bool kMax, bool kAvg>
  PC_INLINE static void backward_reduce_np(const PcGeom& g, PlaneIn x, PlaneIn grad,
                                           const PcReduceCoef& c, double* ch, double* tot,
                                           const Scratch& sc) {
    const float* xp = in_plane(x, g.H, g.W, sc.slot(kX));
    const float* gp = in_plane(grad, g.Ho, g.Wo, sc.slot(kG));
    const float* pp[NP > 0 ? NP : 1];
    float* gout[NP > 0 ? NP : 1];
    R cg[NP > 0 ? NP : 1], tp[NP > 0 ? NP : 1];
    const R zero = V::set1(0.0f);
    for (int p = 0; p < NP; ++p) {
      pp[p] = in_plane(c.params[p], g.Ho, g.Wo, sc.slot(kP0 + p));
      gout[p] = out_plane(c.grad_params[p], g.Wo, sc.slot(kGP0 + p));
      cg[p] = V::set1(c.c_grad_param[p]);
      tp[p] = zero;
    }
    const R mum = V::set1(c.mu_max), mua = V::set1(c.mu_avg);
    R s0 = zero, sgm = zero, sga = zero, tsk = zero;
    int64_t pending = 0;
    auto flush = [&] {
      ch[0] += V::hsum(s0);
      ch[1] += V::hsum(sgm);
      ch[2] += V::hsum(sga);
      tot[0] += V::hsum(tsk);
      s0 = sgm = sga = tsk = zero;
      for (int p = 0; p < NP; ++p) {
        tot[1 + p] += V::hsum(tp[p]);
        tp[p] = zero;
      }
      pending = 0;
    };
    pooled_runs<kMax, false, kAvg>(g, xp, sc, [&](int64_t i, int n, R m, R, R a) {
      // Lanes past n load as zero (and pooled lanes past n are finite), so
      // every product with gv vanishes there.
      const R gv = V::load_n(gp + i, n);
      s0 = V::add(s0, gv);
      if (kMax) sgm = V::fmadd(gv, V::sub(m, mum), sgm);
      if (kAvg) sga = V::fmadd(gv, V::sub(a, mua), sga);
      if (c.has_skip) tsk = V::fmadd(gv, V::load_n(xp + i, n), tsk);
      for (int p = 0; p < NP; ++p) {
        tp[p] = V::fmadd(gv, V::load_n(pp[p] + i, n), tp[p]);
        V::store_n(gout[p] + i, V::mul(cg[p], gv), n);
      }
      if (++pending == kFlushChunks) flush();
    });
    flush();
    for (int p = 0; p < NP; ++p) out_plane_done(c.grad_params[p], g.Ho, g.Wo, sc.slot(kGP0 + p));
  }

  static void backward_reduce(const PcGeom& g, const PlaneIn& x, const PlaneIn& grad,
                              const PcReduceCoef& c, double* ch, double* tot, float* s) {
    const Scratch sc = carve(g, s);
    with_np(c.num_params, [&](auto np) {
      with_pools(c.has_max, c.has_avg, [&](auto mx, auto av) {
        backward_reduce_np<decltype(np)::value, decltype(mx)::value, decltype(av)::value>(
            g, x, grad, c, ch, tot, sc);
      });
    });
  }

  // Gradient reaching a pooled value from the output gradient g through its
  // batch norm (PcDxCoef): max(m, g) before routing to the first maximum,
  // avg(a, g) before dividing by the window's count.
  struct PoolGrad {
    R am, bm, cm, mum, aa, ba, ca, mua;
    explicit PoolGrad(const PcDxCoef& c)
        : am(V::set1(c.a_max)),
          bm(V::set1(c.b_max)),
          cm(V::set1(c.c_max)),
          mum(V::set1(c.mu_max)),
          aa(V::set1(c.a_avg)),
          ba(V::set1(c.b_avg)),
          ca(V::set1(c.c_avg)),
          mua(V::set1(c.mu_avg)) {}
    R max(R m, R g) const { return V::fmadd(cm, V::sub(m, mum), V::fmadd(am, g, bm)); }
    R avg(R a, R g) const { return V::fmadd(ca, V::sub(a, mua), V::fmadd(aa, g, ba)); }
  };

  static void backward_dx(const PcGeom& g, const PlaneIn& x, const PlaneIn& grad, const PcDxCoef& c,
                          const PlaneOut& dx, float* s) {
    const Scratch sc = carve(g, s);
    const int64_t H = g.H, W = g.W, n_out = g.Ho * g.Wo;
    const float* gp = in_plane(grad, g.Ho, g.Wo, sc.slot(kG));
    float* d = out_plane(dx, W, sc.slot(kD));
    if ((c.has_max || c.has_avg) && narrow(g)) {
      const float* xp = in_plane(x, H, W, sc.slot(kX));
      with_pools(c.has_max, c.has_avg, [&](auto mx, auto av) {
        backward_dx_narrow<decltype(mx)::value, decltype(av)::value>(g, xp, gp, c, d, sc);
      });
      out_plane_done(dx, H, W, sc.slot(kD));
      return;
    }
    if (c.has_skip) {  // stride 1: grad and dx planes have the same shape
      const R cs = V::set1(c.c_skip);
      chunks(H * W,
             [&](int64_t i, int n) { V::store_n(d + i, V::mul(cs, V::load_n(gp + i, n)), n); });
    } else {
      std::memset(d, 0, sizeof(float) * H * W);
    }
    if (c.has_max || c.has_avg) {
      const float* xp = in_plane(x, H, W, sc.slot(kX));
      pool(g, xp, c.has_max, c.has_max, c.has_avg, sc);
      const float* m = sc.slot(kM);
      const float* a = sc.slot(kA);
      float* dm = sc.slot(kDm);
      // The avg gradient divided by each window's count; at stride 1 it is
      // already the plane to box-sum, at stride 2 it is spread on the even grid.
      float* u = sc.slot(kU);
      const PoolGrad pg(c);
      float* da_plane = g.stride == 1 ? u : sc.slot(kOut);
      chunks(n_out, [&](int64_t i, int n) {
        const R gv = V::load_n(gp + i, n);
        if (c.has_max) V::store_n(dm + i, pg.max(V::load_n(m + i, n), gv), n);
        if (c.has_avg) {
          const R v = pg.avg(V::load_n(a + i, n), gv);
          V::store_n(da_plane + i, V::mul(v, V::load_n(g.inv_count_out + i, n)), n);
        }
      });
      if (c.has_max) {  // each window's gradient goes to its first maximum
        const float* arg = sc.slot(kArgmax);
        for (int64_t i = 0; i < n_out; ++i) d[static_cast<int64_t>(arg[i])] += dm[i];
      }
      if (c.has_avg) {
        if (g.stride != 1) {  // even rows interleave with zeros, odd rows are zero
          const R zero = V::set1(0.0f);
          for (int64_t ho = 0; ho < g.Ho; ++ho) {
            chunks(g.Wo, [&](int64_t wo, int n) {
              V::store_interleaved(u + 2 * ho * W + 2 * wo, n,
                                   V::load_n(da_plane + ho * g.Wo + wo, n), zero);
            });
            std::memset(u + (2 * ho + 1) * W, 0, sizeof(float) * W);
          }
        }
        box_sum_into(g, u, d, sc);
      }
    }
    out_plane_done(dx, H, W, sc.slot(kD));
  }

  // Input columns a window's gradient can reach, for narrow planes: lane w of
  // permute(row, idx[k]) is the output column whose window covers column w
  // (at most 3 at stride 1, 2 at stride 2); valid[k] is w where that holds and
  // a large negative number where it does not.
  struct ColumnReach {
    typename V::I idx[3];
    R valid[3];
    int count;
  };

  static ColumnReach column_reach(const PcGeom& g) {
    const R lane = V::iota(), zero = V::set1(0.0f), half = V::set1(0.5f);
    const R none = V::set1(-1e9f);  // below any index
    const R w_end = V::set1(static_cast<float>(g.W)), wo_end = V::set1(static_cast<float>(g.Wo));
    const R top = V::set1(static_cast<float>(kW - 1));
    ColumnReach cr{};
    cr.count = g.stride == 1 ? 3 : 2;
    for (int k = 0; k < cr.count; ++k) {
      // stride 1: windows at w - 1, w, w + 1; stride 2: at floor(w / 2) and,
      // for odd w, at (w + 1) / 2 (for even w that is the first one again).
      const R kf = V::set1(static_cast<float>(k));
      R wo = g.stride == 1 ? V::add(lane, V::set1(static_cast<float>(k - 1)))
                           : V::mul(V::add(lane, kf), half);  // truncated below
      if (g.stride != 1) wo = V::from_index(V::index(wo));
      R valid = V::select_gt(w_end, lane, lane, none);  // w < W
      valid = V::select_gt(zero, wo, none, valid);      // wo >= 0
      valid = V::select_gt(wo_end, wo, valid, none);    // wo < Wo
      if (g.stride != 1 && k == 1)                      // odd w only
        valid = V::select_eq(wo, V::from_index(V::index(V::mul(lane, half))), none, valid);
      cr.idx[k] = V::index(V::min(V::max(wo, zero), top));
      cr.valid[k] = valid;
    }
    return cr;
  }

  // dx of a narrow plane (W <= kW) with a pool: per output row, the max gradient, its first-max
  // index and the count-divided avg gradient spread over its windows' columns go to scratch as
  // whole vectors (stored and reloaded at the same width, so they forward); then every input row
  // gathers from the window rows that reach it, comparing indices instead of scattering (no
  // read-modify-write of masked stores).
  template <bool kMax, bool kAvg>
  static void backward_dx_narrow(const PcGeom& g, const float* xp, const float* gp,
                                 const PcDxCoef& c, float* d, const Scratch& sc) {
    const int W = static_cast<int>(g.W), Wo = static_cast<int>(g.Wo);
    const ColumnReach cr = column_reach(g);
    const R zero = V::set1(0.0f), neg = V::set1(-0.5f);
    float* dm_rows = sc.slot(kDm);
    float* arg_rows = sc.slot(kArgmax);
    float* da_rows = sc.slot(kU);
    const PoolGrad pg(c);
    pooled_runs<kMax, kMax, kAvg>(g, xp, sc, [&](int64_t i, int n, R m, R arg, R a) {
      const int64_t row = (i / Wo) * kW;
      const R gv = V::load_n(gp + i, n);
      if (kMax) {
        V::storeu(dm_rows + row, pg.max(m, gv));
        V::storeu(arg_rows + row, arg);
      }
      if (kAvg) {
        const R v = pg.avg(a, gv);
        const R da = V::mul(v, V::load_n(g.inv_count_out + i, n));
        R spread = zero;
        for (int k = 0; k < cr.count; ++k)
          spread = V::add(spread, V::select_gt(cr.valid[k], neg, V::permute(da, cr.idx[k]), zero));
        V::storeu(da_rows + row, spread);
      }
    });
    const R cs = V::set1(c.c_skip);
    for (int64_t r = 0; r < g.H; ++r) {
      // skip_connect is the identity at stride 1 (grad rows match dx rows)
      R acc = c.has_skip ? V::mul(cs, V::load_n(gp + r * W, W)) : zero;
      const R base = V::set1(static_cast<float>(r * W));
      // window rows ho with |stride * ho - r| <= 1
      const int64_t first = std::max<int64_t>(0, (r - 1 + g.stride - 1) / g.stride);
      for (int64_t ho = first; ho < g.Ho && ho * g.stride <= r + 1; ++ho) {
        if (kAvg) acc = V::add(acc, V::loadu(da_rows + ho * kW));
        if (kMax) {
          const R arg = V::loadu(arg_rows + ho * kW), dmv = V::loadu(dm_rows + ho * kW);
          for (int k = 0; k < cr.count; ++k) {
            const R target = V::add(base, cr.valid[k]);  // negative where invalid
            acc = V::add(acc, V::select_eq(V::permute(arg, cr.idx[k]), target,
                                           V::permute(dmv, cr.idx[k]), zero));
          }
        }
      }
      V::store_n(d + r * W, acc, W);
    }
  }

  // d += 3x3 box sum (zero padded) of u (H x W): every input position collects
  // the count-divided gradient of each window that contains it.
  static void box_sum_into(const PcGeom& g, const float* u, float* d, const Scratch& sc) {
    const int64_t H = g.H, W = g.W;
    // Vertical 3-sum into kHsum (free by now), flat over the interior rows.
    float* v = sc.slot(kHsum);
    auto row = [&](int64_t h) {
      chunks(W, [&](int64_t w, int n) {
        R s = V::load_n(u + h * W + w, n);
        if (h > 0) s = V::add(V::load_n(u + (h - 1) * W + w, n), s);
        if (h + 1 < H) s = V::add(s, V::load_n(u + (h + 1) * W + w, n));
        V::store_n(v + h * W + w, s, n);
      });
    };
    row(0);
    if (H > 2)
      chunks((H - 2) * W, [&](int64_t i, int n) {
        const int64_t j = W + i;
        V::store_n(
            v + j,
            V::add(V::add(V::load_n(u + j - W, n), V::load_n(u + j, n)), V::load_n(u + j + W, n)),
            n);
      });
    if (H > 1) row(H - 1);
    const R zero = V::set1(0.0f);
    for (int64_t h = 0; h < H; ++h) {
      const float* vr = v + h * W;
      float* dr = d + h * W;
      chunks(W, [&](int64_t w, int n) {
        const R left = V::load_range_or(vr + w - 1, w == 0 ? 1 : 0, n, zero);
        const R right = V::load_range_or(vr + w + 1, 0,
                                         static_cast<int>(std::min<int64_t>(n, W - w - 1)), zero);
        const R s = V::add(V::add(left, V::load_n(vr + w, n)), right);
        V::store_n(dr + w, V::add(V::load_n(dr + w, n), s), n);
      });
    }
  }

  static void bypass_backward(const PcGeom& g, const PlaneIn& x, int64_t x_step,
                              const PlaneIn& grad, int64_t grad_step, float scale,
                              const PlaneOut& dx, int64_t dx_step, int64_t planes, double* dot,
                              float* s) {
    const Scratch sc = carve(g, s);
    for (int64_t i = 0; i < planes; ++i)
      bypass_backward_one(g, PlaneIn{x.p + i * x_step, x.sh, x.sw},
                          PlaneIn{grad.p + i * grad_step, grad.sh, grad.sw}, scale,
                          PlaneOut{dx.p + i * dx_step, dx.sh, dx.sw}, dot, sc);
  }

  PC_INLINE static void bypass_backward_one(const PcGeom& g, PlaneIn x, PlaneIn grad, float scale,
                                            PlaneOut dx, double* dot, const Scratch& sc) {
    const float* gp = in_plane(grad, g.Ho, g.Wo, sc.slot(kG));
    const float* xp =
        dot != nullptr || g.stride != 1 ? in_plane(x, g.H, g.W, sc.slot(kX)) : nullptr;
    float* o = out_plane(dx, g.W, sc.slot(kD));
    if (g.stride == 1) {
      const R vs = V::set1(scale);
      R acc = V::set1(0.0f);
      int64_t pending = 0;
      chunks(g.H * g.W, [&](int64_t i, int n) {
        const R gv = V::load_n(gp + i, n);
        V::store_n(o + i, V::mul(vs, gv), n);
        if (dot != nullptr) {
          acc = V::fmadd(gv, V::load_n(xp + i, n), acc);
          if (++pending == kFlushChunks) {
            *dot += V::hsum(acc);
            acc = V::set1(0.0f);
            pending = 0;
          }
        }
      });
      if (dot != nullptr) *dot += V::hsum(acc);
    } else {
      // MaxPool2d(2, 2): the gradient goes to the first maximum of each 2x2
      // window in scan order (torch's choice on ties), zero elsewhere.
      const R vs = V::set1(scale), zero = V::set1(0.0f);
      const R p1 = V::set1(1.0f), p2 = V::set1(2.0f), p3 = V::set1(3.0f);
      R acc = zero;
      for (int64_t ho = 0; ho < g.Ho; ++ho) {
        const float* r0 = xp + 2 * ho * g.W;
        const float* r1 = r0 + g.W;
        const float* gr = gp + ho * g.Wo;
        float* o0 = o + 2 * ho * g.W;
        float* o1 = o0 + g.W;
        chunks(g.Wo, [&](int64_t wo, int n) {
          R a0, a1, b0, b1;
          V::load_even_odd(r0 + 2 * wo, n, a0, a1);
          V::load_even_odd(r1 + 2 * wo, n, b0, b1);
          R mx = a0, pos = zero;
          pos = V::select_gt(a1, mx, p1, pos);
          mx = V::max(mx, a1);
          pos = V::select_gt(b0, mx, p2, pos);
          mx = V::max(mx, b0);
          pos = V::select_gt(b1, mx, p3, pos);
          mx = V::max(mx, b1);
          const R gv = V::load_n(gr + wo, n);
          const R sg = V::mul(vs, gv);
          V::store_interleaved(o0 + 2 * wo, n, V::select_eq(pos, zero, sg, zero),
                               V::select_eq(pos, p1, sg, zero));
          V::store_interleaved(o1 + 2 * wo, n, V::select_eq(pos, p2, sg, zero),
                               V::select_eq(pos, p3, sg, zero));
          acc = V::fmadd(gv, mx, acc);  // gv is zero past n
        });
        if (dot != nullptr && ((ho + 1) % 16 == 0 || ho + 1 == g.Ho)) {
          *dot += V::hsum(acc);
          acc = zero;
        }
      }
    }
    out_plane_done(dx, g.H, g.W, sc.slot(kD));
  }

  // Calls fn(std::integral_constant<int, NP>{}) for NP = num_params (0..kPcMaxParams),
  // so the per-parameter accumulators live in registers.
  template <class Fn>
  static void with_np(int num_params, Fn&& fn) {
    with_constant<0, kPcMaxParams>(num_params, static_cast<Fn&&>(fn));
  }

  static PcPlaneKernels table() {
    return PcPlaneKernels{&pool_moments,    &forward,     &bypass_forward,
                          &backward_reduce, &backward_dx, &bypass_backward};
  }
};

}  // namespace
}  // namespace cpu
}  // namespace fusenas
