// Plane kernels of the PC-DARTS mixed op, written once over a SIMD vector type V
// (pc_mixed_vec.h) and instantiated by each per-ISA translation unit.
//
// Pools are separable: a horizontal pass computes, for every input row, the
// stride-1 3-tap max (with its first-max column) and sum; a vertical pass
// combines three of those rows into the pooled row. A stride-2 window of output
// o is the stride-1 window centred at 2 o, so stride 2 computes full-width rows
// and keeps the even columns. Horizontal-then-vertical with "strictly greater
// replaces" picks the first maximum in row-major scan order, which is the
// element torch's max_pool2d routes the gradient to. Nothing of a pooled plane
// outlives the call: the backward recomputes what the forward computed.
//
// Everything is in an anonymous namespace (see pc_mixed_vec.h for why).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "cpu/pc_mixed_kernels.h"
#include "cpu/pc_mixed_vec.h"

namespace fusenas {
namespace cpu {
namespace {

constexpr int kMaxParams = kPcMaxParams;
constexpr int64_t kFlushRows = 16;  // float partial sums go to double this often

template <class V>
struct PcPlanes {
  using R = typename V::R;
  static constexpr int kW = V::W;

  struct Scratch {
    float* hmax;  // H x W: stride-1 horizontal 3-tap max of each input row
    float* hsum;  // H x W: horizontal 3-tap sum
    float* hcol;  // H x W: column of the first maximum (as float)
    float* plane_u;
    float* plane_d;
    float* rows;
    int64_t row_stride;
    float* row(int i) const { return rows + i * row_stride; }
  };

  static Scratch carve(const PcGeom& g, float* s) {
    const int64_t hw = g.H * g.W;
    return Scratch{s, s + hw, s + 2 * hw, s + 3 * hw, s + 4 * hw, s + 5 * hw, pc_scratch_row(g.W)};
  }

  // Row h of a plane as a contiguous pointer: in place for NCHW rows, gathered
  // into tmp for channels_last (no whole-tensor conversion).
  static const float* in_row(PlaneIn pl, int64_t h, int64_t n, float* tmp) {
    const float* r = pl.p + h * pl.sh;
    if (pl.sw == 1) return r;
    for (int64_t i = 0; i < n; ++i) tmp[i] = r[i * pl.sw];
    return tmp;
  }
  static float* out_row(PlaneOut pl, int64_t h, float* tmp) {
    return pl.sw == 1 ? pl.p + h * pl.sh : tmp;
  }
  static void out_row_done(PlaneOut pl, int64_t h, int64_t n, const float* tmp) {
    if (pl.sw == 1) return;
    float* r = pl.p + h * pl.sh;
    for (int64_t i = 0; i < n; ++i) r[i * pl.sw] = tmp[i];
  }

  template <class F>
  static void chunks(int64_t n, F&& f) {
    for (int64_t i = 0; i < n; i += kW) f(i, static_cast<int>(std::min<int64_t>(kW, n - i)));
  }

  // Horizontal pass over every input row into sc.hmax / sc.hcol / sc.hsum.
  static void horizontal(const PcGeom& g, PlaneIn x, bool want_max, bool want_col, bool want_sum,
                         const Scratch& sc) {
    const int64_t W = g.W;
    float* pad = sc.row(0);
    float* tmp = sc.row(1);
    const R one = V::set1(1.0f), zero = V::set1(0.0f), last = V::set1(static_cast<float>(W - 1));
    for (int64_t h = 0; h < g.H; ++h) {
      const float* r = in_row(x, h, W, tmp);
      // Edge columns replicated: a duplicate never changes a max, and never wins
      // a strict comparison against the element it copies.
      pad[0] = r[0];
      std::memcpy(pad + 1, r, sizeof(float) * W);
      pad[W + 1] = r[W - 1];
      float* hm = sc.hmax + h * W;
      float* hc = sc.hcol + h * W;
      float* hs = sc.hsum + h * W;
      chunks(W, [&](int64_t w, int n) {
        const R a = V::load_n(pad + w, n), b = V::load_n(pad + w + 1, n);
        const R c = V::load_n(pad + w + 2, n);
        if (want_max) {
          if (want_col) {
            const R col = V::add(V::iota(), V::set1(static_cast<float>(w)));
            R m = a, idx = V::max(V::sub(col, one), zero);
            idx = V::select_gt(b, m, col, idx);
            m = V::max(m, b);
            idx = V::select_gt(c, m, V::min(V::add(col, one), last), idx);
            m = V::max(m, c);
            V::store_n(hc + w, idx, n);
            V::store_n(hm + w, m, n);
          } else {
            V::store_n(hm + w, V::max(V::max(a, b), c), n);
          }
        }
        if (want_sum) V::store_n(hs + w, V::add(V::add(a, b), c), n);
      });
      if (want_sum) {  // edge columns sum two taps (one when W == 1), not the replicas
        hs[0] = W > 1 ? r[0] + r[1] : r[0];
        if (W > 1) hs[W - 1] = r[W - 2] + r[W - 1];
      }
    }
  }

  // Pooled output row ho (Wo values): max (with the row / column of its first
  // maximum when arow / acol are given) and avg (count_include_pad=False).
  static void pooled_row(const PcGeom& g, int64_t ho, float* m_out, float* arow_out,
                         float* acol_out, float* a_out, const Scratch& sc) {
    const int64_t W = g.W, H = g.H;
    const int64_t h = g.stride * ho;
    const int64_t ht = h > 0 ? h - 1 : 0, hb = h + 1 < H ? h + 1 : H - 1;
    const bool full = g.stride == 1;
    float* m = full ? m_out : sc.row(2);
    float* arow = full ? arow_out : sc.row(3);
    float* a = full ? a_out : sc.row(4);
    const float* t = sc.hmax + ht * W;
    const float* c = sc.hmax + h * W;
    const float* b = sc.hmax + hb * W;
    const float* inv = g.inv_count_in + h * W;
    const R rt = V::set1(static_cast<float>(ht)), rc = V::set1(static_cast<float>(h));
    const R rb = V::set1(static_cast<float>(hb));
    chunks(W, [&](int64_t w, int n) {
      if (m_out != nullptr) {
        const R mt = V::load_n(t + w, n), mc = V::load_n(c + w, n), mb = V::load_n(b + w, n);
        if (arow_out != nullptr) {
          R mx = mt, ri = rt;
          ri = V::select_gt(mc, mx, rc, ri);
          mx = V::max(mx, mc);
          ri = V::select_gt(mb, mx, rb, ri);
          mx = V::max(mx, mb);
          V::store_n(arow + w, ri, n);
          V::store_n(m + w, mx, n);
        } else {
          V::store_n(m + w, V::max(V::max(mt, mc), mb), n);
        }
      }
      if (a_out != nullptr) {
        R s = V::load_n(sc.hsum + h * W + w, n);
        if (h > 0) s = V::add(V::load_n(sc.hsum + (h - 1) * W + w, n), s);
        if (h + 1 < H) s = V::add(s, V::load_n(sc.hsum + (h + 1) * W + w, n));
        V::store_n(a + w, V::mul(s, V::load_n(inv + w, n)), n);
      }
    });
    if (full) {
      if (acol_out != nullptr)
        for (int64_t wo = 0; wo < W; ++wo)
          acol_out[wo] = sc.hcol[static_cast<int64_t>(arow_out[wo]) * W + wo];
      return;
    }
    for (int64_t wo = 0; wo < g.Wo; ++wo) {
      const int64_t w = 2 * wo;
      if (m_out != nullptr) m_out[wo] = m[w];
      if (a_out != nullptr) a_out[wo] = a[w];
      if (arow_out != nullptr) {
        arow_out[wo] = arow[w];
        acol_out[wo] = sc.hcol[static_cast<int64_t>(arow[w]) * W + w];
      }
    }
  }

  // Mean and sum of squared deviations of one plane's pooled maps, two-pass
  // over the pooled plane kept in scratch (exact enough in float; the front end
  // merges planes in double with Chan's formula).
  static void pool_moments(const PcGeom& g, PlaneIn x, bool want_max, bool want_avg,
                           double* moments, float* s) {
    const Scratch sc = carve(g, s);
    horizontal(g, x, want_max, false, want_avg, sc);
    const int64_t Wo = g.Wo, n_out = g.Ho * g.Wo;
    for (int64_t ho = 0; ho < g.Ho; ++ho)
      pooled_row(g, ho, want_max ? sc.plane_u + ho * Wo : nullptr, nullptr, nullptr,
                 want_avg ? sc.plane_d + ho * Wo : nullptr, sc);
    for (int pool = 0; pool < 2; ++pool) {
      if (!(pool == 0 ? want_max : want_avg)) continue;
      const float* v = pool == 0 ? sc.plane_u : sc.plane_d;
      R acc = V::set1(0.0f);
      chunks(n_out, [&](int64_t i, int n) { acc = V::add(acc, V::load_n(v + i, n)); });
      const float mean = V::hsum(acc) / static_cast<float>(n_out);
      const R vm = V::set1(mean);
      R m2 = V::set1(0.0f);
      chunks(n_out, [&](int64_t i, int n) {
        const R d = V::keep_n(V::sub(V::load_n(v + i, n), vm), n);
        m2 = V::fmadd(d, d, m2);
      });
      moments[2 * pool] = mean;
      moments[2 * pool + 1] = V::hsum(m2);
    }
  }

  static void forward(const PcGeom& g, PlaneIn x, const PcForwardCoef& c, PlaneOut out, float* s) {
    const Scratch sc = carve(g, s);
    const bool pools = c.has_max || c.has_avg;
    if (pools) horizontal(g, x, c.has_max, false, c.has_avg, sc);
    float* m = sc.row(6);
    float* a = sc.row(7);
    const R bias = V::set1(c.bias), cm = V::set1(c.c_max), ca = V::set1(c.c_avg);
    const R cs = V::set1(c.c_skip);
    R cp[kMaxParams];
    for (int p = 0; p < c.num_params; ++p) cp[p] = V::set1(c.c_param[p]);
    const float* prow[kMaxParams];
    for (int64_t ho = 0; ho < g.Ho; ++ho) {
      if (pools)
        pooled_row(g, ho, c.has_max ? m : nullptr, nullptr, nullptr, c.has_avg ? a : nullptr, sc);
      const float* xr = c.has_skip ? in_row(x, ho, g.Wo, sc.row(8)) : nullptr;  // stride 1 only
      for (int p = 0; p < c.num_params; ++p)
        prow[p] = in_row(c.params[p], ho, g.Wo, sc.row(10 + p));
      float* o = out_row(out, ho, sc.row(9));
      chunks(g.Wo, [&](int64_t w, int n) {
        R acc = bias;
        if (c.has_max) acc = V::fmadd(cm, V::load_n(m + w, n), acc);
        if (c.has_avg) acc = V::fmadd(ca, V::load_n(a + w, n), acc);
        if (c.has_skip) acc = V::fmadd(cs, V::load_n(xr + w, n), acc);
        for (int p = 0; p < c.num_params; ++p)
          acc = V::fmadd(cp[p], V::load_n(prow[p] + w, n), acc);
        V::store_n(o + w, acc, n);
      });
      out_row_done(out, ho, g.Wo, sc.row(9));
    }
  }

  static void bypass_forward(const PcGeom& g, PlaneIn x, float scale, PlaneOut out, float* s) {
    const Scratch sc = carve(g, s);
    const R vs = V::set1(scale);
    if (g.stride == 1) {
      for (int64_t h = 0; h < g.H; ++h) {
        const float* r = in_row(x, h, g.W, sc.row(0));
        float* o = out_row(out, h, sc.row(1));
        chunks(g.W,
               [&](int64_t w, int n) { V::store_n(o + w, V::mul(vs, V::load_n(r + w, n)), n); });
        out_row_done(out, h, g.W, sc.row(1));
      }
      return;
    }
    float* v = sc.row(2);
    for (int64_t ho = 0; ho < g.Ho; ++ho) {
      const float* r0 = in_row(x, 2 * ho, g.W, sc.row(0));
      const float* r1 = in_row(x, 2 * ho + 1, g.W, sc.row(1));
      chunks(g.W, [&](int64_t w, int n) {
        V::store_n(v + w, V::max(V::load_n(r0 + w, n), V::load_n(r1 + w, n)), n);
      });
      float* o = out_row(out, ho, sc.row(3));
      for (int64_t wo = 0; wo < g.Wo; ++wo) o[wo] = scale * std::max(v[2 * wo], v[2 * wo + 1]);
      out_row_done(out, ho, g.Wo, sc.row(3));
    }
  }

  static void backward_reduce(const PcGeom& g, PlaneIn x, PlaneIn grad, const PcReduceCoef& c,
                              double* ch, double* tot, float* s) {
    const Scratch sc = carve(g, s);
    const bool pools = c.has_max || c.has_avg;
    if (pools) horizontal(g, x, c.has_max, false, c.has_avg, sc);
    float* m = sc.row(6);
    float* a = sc.row(7);
    const R mum = V::set1(c.mu_max), mua = V::set1(c.mu_avg);
    const R zero = V::set1(0.0f);
    R s0 = zero, sgm = zero, sga = zero, tsk = zero;
    R tp[kMaxParams], cg[kMaxParams];
    const float* prow[kMaxParams];
    float* gout[kMaxParams];
    for (int p = 0; p < c.num_params; ++p) {
      tp[p] = zero;
      cg[p] = V::set1(c.c_grad_param[p]);
    }
    for (int64_t ho = 0; ho < g.Ho; ++ho) {
      if (pools)
        pooled_row(g, ho, c.has_max ? m : nullptr, nullptr, nullptr, c.has_avg ? a : nullptr, sc);
      const float* gr = in_row(grad, ho, g.Wo, sc.row(8));
      const float* xr = c.has_skip ? in_row(x, ho, g.Wo, sc.row(9)) : nullptr;
      for (int p = 0; p < c.num_params; ++p) {
        prow[p] = in_row(c.params[p], ho, g.Wo, sc.row(10 + p));
        gout[p] = out_row(c.grad_params[p], ho, sc.row(10 + kMaxParams + p));
      }
      chunks(g.Wo, [&](int64_t w, int n) {
        // Lanes past n load as zero, so every product with gv vanishes there.
        const R gv = V::load_n(gr + w, n);
        s0 = V::add(s0, gv);
        if (c.has_max) sgm = V::fmadd(gv, V::sub(V::load_n(m + w, n), mum), sgm);
        if (c.has_avg) sga = V::fmadd(gv, V::sub(V::load_n(a + w, n), mua), sga);
        if (c.has_skip) tsk = V::fmadd(gv, V::load_n(xr + w, n), tsk);
        for (int p = 0; p < c.num_params; ++p) {
          tp[p] = V::fmadd(gv, V::load_n(prow[p] + w, n), tp[p]);
          V::store_n(gout[p] + w, V::mul(cg[p], gv), n);
        }
      });
      for (int p = 0; p < c.num_params; ++p)
        out_row_done(c.grad_params[p], ho, g.Wo, sc.row(10 + kMaxParams + p));
      if ((ho + 1) % kFlushRows == 0 || ho + 1 == g.Ho) {
        ch[0] += V::hsum(s0);
        ch[1] += V::hsum(sgm);
        ch[2] += V::hsum(sga);
        tot[0] += V::hsum(tsk);
        s0 = sgm = sga = tsk = zero;
        for (int p = 0; p < c.num_params; ++p) {
          tot[1 + p] += V::hsum(tp[p]);
          tp[p] = zero;
        }
      }
    }
  }

  static void backward_dx(const PcGeom& g, PlaneIn x, PlaneIn grad, const PcDxCoef& c, PlaneOut dx,
                          float* s) {
    const Scratch sc = carve(g, s);
    const int64_t H = g.H, W = g.W;
    // NCHW planes are accumulated in place; channels_last ones in scratch.
    const bool in_place = dx.sw == 1 && dx.sh == W;
    float* d = in_place ? dx.p : sc.plane_d;
    if (c.has_skip) {  // stride 1: grad and dx planes have the same shape
      const R cs = V::set1(c.c_skip);
      for (int64_t h = 0; h < H; ++h) {
        const float* gr = in_row(grad, h, W, sc.row(8));
        chunks(W, [&](int64_t w, int n) {
          V::store_n(d + h * W + w, V::mul(cs, V::load_n(gr + w, n)), n);
        });
      }
    } else {
      std::memset(d, 0, sizeof(float) * H * W);
    }
    if (c.has_max || c.has_avg) {
      horizontal(g, x, c.has_max, c.has_max, c.has_avg, sc);
      float* m = sc.row(6);
      float* a = sc.row(7);
      float* arow = sc.row(11);
      float* acol = sc.row(12);
      float* dm = sc.row(13);
      float* da = sc.row(14);
      float* u = sc.plane_u;
      if (c.has_avg && g.stride != 1) std::memset(u, 0, sizeof(float) * H * W);
      const R am = V::set1(c.a_max), bm = V::set1(c.b_max), cm = V::set1(c.c_max);
      const R mum = V::set1(c.mu_max);
      const R aa = V::set1(c.a_avg), ba = V::set1(c.b_avg), ca = V::set1(c.c_avg);
      const R mua = V::set1(c.mu_avg);
      for (int64_t ho = 0; ho < g.Ho; ++ho) {
        pooled_row(g, ho, c.has_max ? m : nullptr, c.has_max ? arow : nullptr,
                   c.has_max ? acol : nullptr, c.has_avg ? a : nullptr, sc);
        const float* gr = in_row(grad, ho, g.Wo, sc.row(8));
        const float* inv = g.inv_count_out + ho * g.Wo;
        // At stride 1 the avg gradient (divided by the window's count) goes
        // straight into row ho of u; at stride 2 it is spread on the even grid.
        float* da_row = g.stride == 1 ? u + ho * W : da;
        chunks(g.Wo, [&](int64_t w, int n) {
          const R gv = V::load_n(gr + w, n);
          if (c.has_max) {
            const R v = V::fmadd(cm, V::sub(V::load_n(m + w, n), mum), V::fmadd(am, gv, bm));
            V::store_n(dm + w, v, n);
          }
          if (c.has_avg) {
            const R v = V::fmadd(ca, V::sub(V::load_n(a + w, n), mua), V::fmadd(aa, gv, ba));
            V::store_n(da_row + w, V::mul(v, V::load_n(inv + w, n)), n);
          }
        });
        if (c.has_max)  // each window's gradient goes to its first maximum
          for (int64_t wo = 0; wo < g.Wo; ++wo)
            d[static_cast<int64_t>(arow[wo]) * W + static_cast<int64_t>(acol[wo])] += dm[wo];
        if (c.has_avg && g.stride != 1)
          for (int64_t wo = 0; wo < g.Wo; ++wo) u[2 * ho * W + 2 * wo] = da[wo];
      }
      if (c.has_avg) box_sum_into(g, u, d, sc);
    }
    if (!in_place)
      for (int64_t h = 0; h < H; ++h) {
        float* o = out_row(dx, h, sc.row(9));
        std::memcpy(o, d + h * W, sizeof(float) * W);
        out_row_done(dx, h, W, sc.row(9));
      }
  }

  // d += 3x3 box sum (zero padded) of u: every input position collects the
  // (count-divided) gradient of each window that contains it.
  static void box_sum_into(const PcGeom& g, const float* u, float* d, const Scratch& sc) {
    const int64_t H = g.H, W = g.W;
    float* pad = sc.row(0);
    pad[0] = 0.0f;
    pad[W + 1] = 0.0f;
    for (int64_t h = 0; h < H; ++h) {
      chunks(W, [&](int64_t w, int n) {
        R v = V::load_n(u + h * W + w, n);
        if (h > 0) v = V::add(V::load_n(u + (h - 1) * W + w, n), v);
        if (h + 1 < H) v = V::add(v, V::load_n(u + (h + 1) * W + w, n));
        V::store_n(pad + 1 + w, v, n);
      });
      float* dr = d + h * W;
      chunks(W, [&](int64_t w, int n) {
        const R v = V::add(V::add(V::load_n(pad + w, n), V::load_n(pad + w + 1, n)),
                           V::load_n(pad + w + 2, n));
        V::store_n(dr + w, V::add(V::load_n(dr + w, n), v), n);
      });
    }
  }

  static void bypass_backward(const PcGeom& g, PlaneIn x, PlaneIn grad, float scale, PlaneOut dx,
                              double* dot, float* s) {
    const Scratch sc = carve(g, s);
    const R vs = V::set1(scale);
    if (g.stride == 1) {
      R acc = V::set1(0.0f);
      for (int64_t h = 0; h < g.H; ++h) {
        const float* gr = in_row(grad, h, g.W, sc.row(0));
        const float* xr = dot != nullptr ? in_row(x, h, g.W, sc.row(1)) : nullptr;
        float* o = out_row(dx, h, sc.row(2));
        chunks(g.W, [&](int64_t w, int n) {
          const R gv = V::load_n(gr + w, n);
          V::store_n(o + w, V::mul(vs, gv), n);
          if (dot != nullptr) acc = V::fmadd(gv, V::load_n(xr + w, n), acc);
        });
        out_row_done(dx, h, g.W, sc.row(2));
        if (dot != nullptr && ((h + 1) % kFlushRows == 0 || h + 1 == g.H)) {
          *dot += V::hsum(acc);
          acc = V::set1(0.0f);
        }
      }
      return;
    }
    // MaxPool2d(2, 2): the gradient goes to the first maximum of each 2x2
    // window in scan order (torch's choice on ties), zero elsewhere.
    for (int64_t ho = 0; ho < g.Ho; ++ho) {
      const float* r0 = in_row(x, 2 * ho, g.W, sc.row(0));
      const float* r1 = in_row(x, 2 * ho + 1, g.W, sc.row(1));
      const float* gr = in_row(grad, ho, g.Wo, sc.row(2));
      float* o0 = out_row(dx, 2 * ho, sc.row(3));
      float* o1 = out_row(dx, 2 * ho + 1, sc.row(4));
      float acc = 0.0f;
      for (int64_t wo = 0; wo < g.Wo; ++wo) {
        const int64_t w = 2 * wo;
        float mx = r0[w];
        int pos = 0;
        if (r0[w + 1] > mx) mx = r0[w + 1], pos = 1;
        if (r1[w] > mx) mx = r1[w], pos = 2;
        if (r1[w + 1] > mx) mx = r1[w + 1], pos = 3;
        const float gv = scale * gr[wo];
        o0[w] = pos == 0 ? gv : 0.0f;
        o0[w + 1] = pos == 1 ? gv : 0.0f;
        o1[w] = pos == 2 ? gv : 0.0f;
        o1[w + 1] = pos == 3 ? gv : 0.0f;
        acc += gr[wo] * mx;
      }
      out_row_done(dx, 2 * ho, g.W, sc.row(3));
      out_row_done(dx, 2 * ho + 1, g.W, sc.row(4));
      if (dot != nullptr) *dot += acc;
    }
  }

  static PcPlaneKernels table() {
    return PcPlaneKernels{&pool_moments,    &forward,     &bypass_forward,
                          &backward_reduce, &backward_dx, &bypass_backward};
  }
};

}  // namespace
}  // namespace cpu
}  // namespace fusenas
