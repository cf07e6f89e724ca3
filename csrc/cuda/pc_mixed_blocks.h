// Block bodies and launch sequences of the CUDA PC-DARTS mixed op, written
// once against common/block_exec.h: csrc/cuda/pc_mixed_cuda.cu runs them as
// CUDA kernels, csrc/emu/pc_mixed_emulated.cpp block by block on the host.
//
// Forward (batch statistics: three kernels; given statistics: one):
//   stats:    grid (Ck, splits): per processed channel, the max- and
//             avg-pooled maps are pooled on the fly (never stored) and their
//             shifted sums / sums of squares reduced per block (shared-memory
//             tree), then added into float64 accumulators with one atomic
//             per block and value. The shift (the channel's first pooled
//             value) keeps E[v^2] - E[v]^2 away from cancellation.
//   finalize: one block turns them into mean / biased variance (the stats output).
//   forward:  one thread per output element, walking `out` in its memory
//             order (coalesced stores, each written once): shuffle source,
//             bypass (identity or 2x2 max), or the weighted sum of the pooled +
//             batch-normed candidates (recomputed from x), skip and the given
//             parametric outputs; times the edge scale.
// Backward (three kernels):
//   reduce:   grid (C or Ck, splits): per processed channel the sums the
//             batch-norm gradient and the weight gradients need (sum g,
//             sum g * bn(pool), sum g * x, sum g * param_j, with g the
//             unscaled grad_out of that channel), writing the parametric
//             outputs' gradients on the way; per bypassed channel sum g * bypass
//             (edge-scale gradient). Block reductions + float64 atomics.
//   finalize: one block: grad_weights, grad_edge_scale and per-channel
//             batch-norm gradient coefficients.
//   grad_x:   one thread per x element, in grad_x's memory order: bypass
//             routing (2x2 first maximum at stride 2), skip, and the pooled
//             gradients gathered from every 3x3 window that contains the
//             element (max: only where it is the window's first maximum; avg:
//             divided by the window's valid count); no atomics.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/block_exec.h"
#include "common/elem_io.h"
#include "common/pc_mixed_indexing.h"
#include "fusenas/pc_mixed_cuda.h"

namespace fusenas {
namespace pc_mixed_gpu {

using blockexec::BlockId;

constexpr int kThreads = 256;
constexpr int kAcc = 4 + kPcMaxParams;  // per-channel float64 accumulators of the backward
// Slots of the backward accumulators.
constexpr int kAccGrad = 0, kAccMax = 1, kAccAvg = 2, kAccSkip = 3, kAccParam = 4;
constexpr int kCoefStride = 8;  // per channel and pool: istd, mean, mean(dy), mean(dy*xhat), w*s

struct PcArgs {
  int N, C, H, W, k, ck, stride, Ho, Wo;
  float eps;
  int n_ops, n_params;
  int kinds[kPcMaxOps];
  int param_of_op[kPcMaxOps];  // index into params for kParam ops, else -1
  int op_of_param[kPcMaxParams];
  bool has_max, has_avg, has_skip, batch_stats;
  const void* x;
  Strides4 xs;
  const void* params[kPcMaxParams];
  Strides4 ps[kPcMaxParams];
  const void* weights;
  const void* edge_scale;  // null: 1
  const float* stats;      // (2, 2, Ck) in use (forward kernel and backward)
  // forward
  void* out;
  Strides4 outs;
  bool out_cl;
  float* stats_out;
  // backward
  const void* gout;
  Strides4 gos;
  void* gx;
  Strides4 gxs;
  bool gx_cl;
  void* gparams[kPcMaxParams];
  Strides4 gps[kPcMaxParams];
  void* gweights;
  void* gscale;
  // float64 workspace: forward [Ck][2][2] sums; backward [C][kAcc] sums, then
  // [Ck][2][kCoefStride] coefficients.
  double* ws;
  int64_t split_len;     // positions (n, ho, wo) per block of the reductions
  int64_t grid_threads;  // threads of the elementwise grids
};

FUSENAS_HD int64_t positions(const PcArgs& a) { return static_cast<int64_t>(a.N) * a.Ho * a.Wo; }

template <DType DT>
FUSENAS_HD float edge_scale_of(const PcArgs& a) {
  return a.edge_scale ? ElemIO<DT>::load(a.edge_scale, 0) : 1.f;
}

// Sum of the weights of the ops of one kind (each name appears once, but the
// sum keeps the math right either way).
template <DType DT>
FUSENAS_HD float kind_weight(const PcArgs& a, int kind) {
  float s = 0.f;
  for (int o = 0; o < a.n_ops; ++o)
    if (a.kinds[o] == kind) s += ElemIO<DT>::load(a.weights, o);
  return s;
}

FUSENAS_HD float inv_std(float var, float eps) { return 1.f / sqrtf(var + eps); }

struct Vals {
  float v[kAcc];
};

// Tree-sums vals(tid).v[0..nv) over the block into red[v * kThreads].
template <class Ex, class L>
FUSENAS_BLOCK void block_sum(Ex& ex, typename Ex::Smem red, L& vals, int nv) {
  ex.for_threads([&](int tid) {
    for (int v = 0; v < kAcc; ++v)
      if (v < nv) red[v * kThreads + tid] = vals(tid).v[v];
  });
  for (int s = kThreads / 2; s > 0; s /= 2) {
    ex.sync();
    ex.for_threads([&](int tid) {
      if (tid < s) {
        for (int v = 0; v < kAcc; ++v)
          if (v < nv) red[v * kThreads + tid] += red[v * kThreads + tid + s];
      }
    });
  }
  ex.sync();
}

// -------------------------------------------------------------- forward --

// Pooled maps' statistics of channel blockIdx.x over positions of split blockIdx.y.
template <DType DT, class Ex>
FUSENAS_BLOCK void stats_block(const PcArgs& a, Ex& ex, typename Ex::Smem smem, BlockId b) {
  const int ci = b.x;
  const int64_t M = positions(a);
  const int64_t p0 = b.y * a.split_len;
  const int64_t p1 = p0 + a.split_len < M ? p0 + a.split_len : M;
  const int hw = a.Ho * a.Wo;
  typename Ex::template Local<Vals> vals;
  ex.for_threads([&](int tid) {
    const Window first = pool3x3<DT>(a.x, a.xs, 0, ci, 0, 0, a.H, a.W, a.stride);
    const float shift_m = first.max, shift_a = first.sum / first.count;
    float s[4] = {0.f, 0.f, 0.f, 0.f};
    for (int64_t p = p0 + tid; p < p1; p += kThreads) {
      const int n = static_cast<int>(p / hw), rem = static_cast<int>(p % hw);
      const Window win = pool3x3<DT>(a.x, a.xs, n, ci, rem / a.Wo, rem % a.Wo, a.H, a.W, a.stride);
      const float dm = win.max - shift_m, da = win.sum / win.count - shift_a;
      s[0] += dm;
      s[1] += dm * dm;
      s[2] += da;
      s[3] += da * da;
    }
    for (int v = 0; v < 4; ++v) vals(tid).v[v] = s[v];
  });
  block_sum(ex, smem, vals, 4);
  ex.for_threads([&](int tid) {
    if (tid < 4) Ex::atomic_add(a.ws + ci * 4 + tid, static_cast<double>(smem[tid * kThreads]));
  });
}

template <DType DT, class Ex>
FUSENAS_BLOCK void stats_finalize_block(const PcArgs& a, Ex& ex, typename Ex::Smem, BlockId) {
  const double M = static_cast<double>(positions(a));
  ex.for_threads([&](int tid) {
    for (int ci = tid; ci < a.ck; ci += kThreads) {
      const Window first = pool3x3<DT>(a.x, a.xs, 0, ci, 0, 0, a.H, a.W, a.stride);
      const float shift[2] = {first.max, first.sum / first.count};
      const bool used[2] = {a.has_max, a.has_avg};
      for (int pool = 0; pool < 2; ++pool) {
        float mean = 0.f, var = 0.f;
        if (used[pool]) {
          const double m1 = a.ws[ci * 4 + 2 * pool] / M;
          const double m2 = a.ws[ci * 4 + 2 * pool + 1] / M - m1 * m1;
          mean = static_cast<float>(shift[pool] + m1);
          var = static_cast<float>(m2 > 0.0 ? m2 : 0.0);
        }
        a.stats_out[(pool * 2) * a.ck + ci] = mean;
        a.stats_out[(pool * 2 + 1) * a.ck + ci] = var;
      }
    }
  });
}

// y (the processed channel ci) at (n, ho, wo), before the edge scale.
template <DType DT>
FUSENAS_HD float mixed_value(const PcArgs& a, int n, int ci, int ho, int wo) {
  Window win{0.f, 0.f, 1, 0, 0};
  if (a.has_max || a.has_avg) win = pool3x3<DT>(a.x, a.xs, n, ci, ho, wo, a.H, a.W, a.stride);
  float y = 0.f;
  for (int o = 0; o < a.n_ops; ++o) {
    const int kind = a.kinds[o];
    if (kind == static_cast<int>(PcOpKind::kNone)) continue;
    const float w = ElemIO<DT>::load(a.weights, o);
    float c;
    if (kind == static_cast<int>(PcOpKind::kMaxPool)) {
      c = (win.max - a.stats[ci]) * inv_std(a.stats[a.ck + ci], a.eps);
    } else if (kind == static_cast<int>(PcOpKind::kAvgPool)) {
      c = (win.sum / win.count - a.stats[2 * a.ck + ci]) * inv_std(a.stats[3 * a.ck + ci], a.eps);
    } else if (kind == static_cast<int>(PcOpKind::kSkip)) {
      c = ElemIO<DT>::load(a.x, offset4(a.xs, n, ci, ho, wo));
    } else {
      const int j = a.param_of_op[o];
      c = ElemIO<DT>::load(a.params[j], offset4(a.ps[j], n, ci, ho, wo));
    }
    y += w * c;
  }
  return y;
}

// bypass value of x channel c (>= Ck) at (n, ho, wo).
template <DType DT>
FUSENAS_HD float bypass_value(const PcArgs& a, int n, int c, int ho, int wo) {
  if (a.stride == 1) return ElemIO<DT>::load(a.x, offset4(a.xs, n, c, ho, wo));
  return pool2x2<DT>(a.x, a.xs, n, c, ho, wo).max;
}

template <DType DT, class Ex>
FUSENAS_BLOCK void forward_block(const PcArgs& a, Ex& ex, typename Ex::Smem, BlockId b) {
  const int64_t total = static_cast<int64_t>(a.N) * a.C * a.Ho * a.Wo;
  ex.for_threads([&](int tid) {
    const float s = edge_scale_of<DT>(a);
    for (int64_t e = static_cast<int64_t>(b.x) * kThreads + tid; e < total; e += a.grid_threads) {
      int n, oc, ho, wo;
      unravel4(e, a.C, a.Ho, a.Wo, a.out_cl, n, oc, ho, wo);
      const int c = cat_channel_of_out(oc, a.k, a.ck);
      const float v =
          c < a.ck ? mixed_value<DT>(a, n, c, ho, wo) : bypass_value<DT>(a, n, c, ho, wo);
      ElemIO<DT>::store(a.out, offset4(a.outs, n, oc, ho, wo), v * s);
    }
  });
}

// ------------------------------------------------------------- backward --

template <DType DT, class Ex>
FUSENAS_BLOCK void bwd_reduce_block(const PcArgs& a, Ex& ex, typename Ex::Smem smem, BlockId b) {
  const int c = b.x;
  const int64_t M = positions(a);
  const int64_t p0 = b.y * a.split_len;
  const int64_t p1 = p0 + a.split_len < M ? p0 + a.split_len : M;
  const int hw = a.Ho * a.Wo;
  const bool processed = c < a.ck;
  const int oc = out_channel_of_cat(c, a.k, a.ck);
  const int nv = processed ? kAccParam + a.n_params : 1;
  typename Ex::template Local<Vals> vals;
  ex.for_threads([&](int tid) {
    float acc[kAcc];
    for (int v = 0; v < kAcc; ++v) acc[v] = 0.f;
    const float s = edge_scale_of<DT>(a);
    float istd_m = 0.f, istd_a = 0.f;
    if (processed && a.has_max) istd_m = inv_std(a.stats[a.ck + c], a.eps);
    if (processed && a.has_avg) istd_a = inv_std(a.stats[3 * a.ck + c], a.eps);
    for (int64_t p = p0 + tid; p < p1; p += kThreads) {
      const int n = static_cast<int>(p / hw), rem = static_cast<int>(p % hw);
      const int ho = rem / a.Wo, wo = rem % a.Wo;
      const float g = ElemIO<DT>::load(a.gout, offset4(a.gos, n, oc, ho, wo));
      if (!processed) {
        acc[0] += g * bypass_value<DT>(a, n, c, ho, wo);
        continue;
      }
      acc[kAccGrad] += g;
      if (a.has_max || a.has_avg) {
        const Window win = pool3x3<DT>(a.x, a.xs, n, c, ho, wo, a.H, a.W, a.stride);
        if (a.has_max) acc[kAccMax] += g * (win.max - a.stats[c]) * istd_m;
        if (a.has_avg) acc[kAccAvg] += g * (win.sum / win.count - a.stats[2 * a.ck + c]) * istd_a;
      }
      if (a.has_skip) acc[kAccSkip] += g * ElemIO<DT>::load(a.x, offset4(a.xs, n, c, ho, wo));
      for (int j = 0; j < kPcMaxParams; ++j) {
        if (j >= a.n_params) break;
        acc[kAccParam + j] += g * ElemIO<DT>::load(a.params[j], offset4(a.ps[j], n, c, ho, wo));
        // grad of parametric output j = s * w_j * g (the weight load hits L1).
        const float wj = ElemIO<DT>::load(a.weights, a.op_of_param[j]);
        ElemIO<DT>::store(a.gparams[j], offset4(a.gps[j], n, c, ho, wo), s * wj * g);
      }
    }
    for (int v = 0; v < kAcc; ++v) vals(tid).v[v] = acc[v];
  });
  block_sum(ex, smem, vals, nv);
  ex.for_threads([&](int tid) {
    if (tid < nv) Ex::atomic_add(a.ws + c * kAcc + tid, static_cast<double>(smem[tid * kThreads]));
  });
}

// Accumulator slot of (non-none) op o: sum over positions of g * candidate.
FUSENAS_HD int acc_slot(const PcArgs& a, int o) {
  switch (static_cast<PcOpKind>(a.kinds[o])) {
    case PcOpKind::kMaxPool:
      return kAccMax;
    case PcOpKind::kAvgPool:
      return kAccAvg;
    case PcOpKind::kSkip:
      return kAccSkip;
    default:
      return kAccParam + a.param_of_op[o];
  }
}

template <DType DT, class Ex>
FUSENAS_BLOCK void bwd_finalize_block(const PcArgs& a, Ex& ex, typename Ex::Smem, BlockId) {
  const double M = static_cast<double>(positions(a));
  double* coef = a.ws + static_cast<int64_t>(a.C) * kAcc;
  ex.for_threads([&](int tid) {
    const float s = edge_scale_of<DT>(a);
    // Weight gradients: s * sum over channels of the op's accumulator.
    for (int o = tid; o < a.n_ops; o += kThreads) {
      const int kind = a.kinds[o];
      double tot = 0.0;
      if (kind != static_cast<int>(PcOpKind::kNone)) {
        const int slot = acc_slot(a, o);
        for (int ci = 0; ci < a.ck; ++ci) tot += a.ws[ci * kAcc + slot];
      }
      ElemIO<DT>::store(a.gweights, o, static_cast<float>(s * tot));
    }
    // Edge scale: sum over all out elements of grad_out * (out / s).
    if (tid == 0 && a.gscale) {
      double gs = 0.0;
      for (int o = 0; o < a.n_ops; ++o) {
        const int kind = a.kinds[o];
        if (kind == static_cast<int>(PcOpKind::kNone)) continue;
        const int slot = acc_slot(a, o);
        double tot = 0.0;
        for (int ci = 0; ci < a.ck; ++ci) tot += a.ws[ci * kAcc + slot];
        gs += static_cast<double>(ElemIO<DT>::load(a.weights, o)) * tot;
      }
      for (int c = a.ck; c < a.C; ++c) gs += a.ws[c * kAcc];
      ElemIO<DT>::store(a.gscale, 0, static_cast<float>(gs));
    }
    // Batch-norm gradient per channel: dz = istd * (ws * g - mean(dy) - xhat * mean(dy * xhat)).
    const float wsum[2] = {s * kind_weight<DT>(a, static_cast<int>(PcOpKind::kMaxPool)),
                           s * kind_weight<DT>(a, static_cast<int>(PcOpKind::kAvgPool))};
    for (int ci = tid; ci < a.ck; ci += kThreads) {
      for (int pool = 0; pool < 2; ++pool) {
        double* cf = coef + (ci * 2 + pool) * kCoefStride;
        cf[0] = inv_std(a.stats[(2 * pool + 1) * a.ck + ci], a.eps);
        cf[1] = a.stats[2 * pool * a.ck + ci];
        cf[2] = a.batch_stats ? wsum[pool] * a.ws[ci * kAcc + kAccGrad] / M : 0.0;
        cf[3] = a.batch_stats ? wsum[pool] * a.ws[ci * kAcc + kAccMax + pool] / M : 0.0;
        cf[4] = wsum[pool];
      }
    }
  });
}

template <DType DT>
FUSENAS_HD float pooled_grad_at(const PcArgs& a, const double* coef, int n, int ci, int h, int w) {
  const int oc = ci * a.k;
  float gx = 0.f;
  const int hb = first_window(h, a.stride), he = last_window(h, a.stride, a.Ho);
  const int wb = first_window(w, a.stride), we = last_window(w, a.stride, a.Wo);
  const double* cm = coef + (ci * 2) * kCoefStride;
  const double* ca = cm + kCoefStride;
  for (int ho = hb; ho <= he; ++ho) {
    for (int wo = wb; wo <= we; ++wo) {
      const Window win = pool3x3<DT>(a.x, a.xs, n, ci, ho, wo, a.H, a.W, a.stride);
      const float g = ElemIO<DT>::load(a.gout, offset4(a.gos, n, oc, ho, wo));
      if (a.has_max && win.argh == h && win.argw == w) {
        const float istd = static_cast<float>(cm[0]);
        const float xhat = (win.max - static_cast<float>(cm[1])) * istd;
        gx += istd * (static_cast<float>(cm[4]) * g - static_cast<float>(cm[2]) -
                      xhat * static_cast<float>(cm[3]));
      }
      if (a.has_avg) {
        const float istd = static_cast<float>(ca[0]);
        const float xhat = (win.sum / win.count - static_cast<float>(ca[1])) * istd;
        gx += istd *
              (static_cast<float>(ca[4]) * g - static_cast<float>(ca[2]) -
               xhat * static_cast<float>(ca[3])) /
              win.count;
      }
    }
  }
  return gx;
}

template <DType DT, class Ex>
FUSENAS_BLOCK void bwd_gx_block(const PcArgs& a, Ex& ex, typename Ex::Smem, BlockId b) {
  const int64_t total = static_cast<int64_t>(a.N) * a.C * a.H * a.W;
  const double* coef = a.ws + static_cast<int64_t>(a.C) * kAcc;
  ex.for_threads([&](int tid) {
    const float s = edge_scale_of<DT>(a);
    const float skip_w =
        a.has_skip ? s * kind_weight<DT>(a, static_cast<int>(PcOpKind::kSkip)) : 0.f;
    for (int64_t e = static_cast<int64_t>(b.x) * kThreads + tid; e < total; e += a.grid_threads) {
      int n, c, h, w;
      unravel4(e, a.C, a.H, a.W, a.gx_cl, n, c, h, w);
      float gx = 0.f;
      if (c >= a.ck) {
        const int oc = out_channel_of_cat(c, a.k, a.ck);
        if (a.stride == 1) {
          gx = s * ElemIO<DT>::load(a.gout, offset4(a.gos, n, oc, h, w));
        } else {
          const Window win = pool2x2<DT>(a.x, a.xs, n, c, h / 2, w / 2);
          if (win.argh == h && win.argw == w)
            gx = s * ElemIO<DT>::load(a.gout, offset4(a.gos, n, oc, h / 2, w / 2));
        }
      } else {
        if (a.has_skip) gx = skip_w * ElemIO<DT>::load(a.gout, offset4(a.gos, n, c * a.k, h, w));
        if (a.has_max || a.has_avg) gx += pooled_grad_at<DT>(a, coef, n, c, h, w);
      }
      ElemIO<DT>::store(a.gx, offset4(a.gxs, n, c, h, w), gx);
    }
  });
}

// ------------------------------------------------------- body wrappers --

// The reduction keeps 12 accumulators per thread: one block per SM may use
// all the registers it needs; the elementwise kernels stay at 3+ blocks.
#define FUSENAS_PC_BODY(NAME, FN, MIN_BLOCKS)                                                 \
  template <DType DT>                                                                         \
  struct NAME {                                                                               \
    using Args = PcArgs;                                                                      \
    static constexpr int kThreads = pc_mixed_gpu::kThreads;                                   \
    static constexpr int kMinBlocks = MIN_BLOCKS;                                             \
    template <class Ex>                                                                       \
    static FUSENAS_BLOCK void run(const Args& a, Ex& ex, typename Ex::Smem smem, BlockId b) { \
      FN<DT>(a, ex, smem, b);                                                                 \
    }                                                                                         \
  };
FUSENAS_PC_BODY(StatsBody, stats_block, 3)
FUSENAS_PC_BODY(StatsFinalizeBody, stats_finalize_block, 1)
FUSENAS_PC_BODY(ForwardBody, forward_block, 3)
FUSENAS_PC_BODY(BwdReduceBody, bwd_reduce_block, 1)
FUSENAS_PC_BODY(BwdFinalizeBody, bwd_finalize_block, 1)
FUSENAS_PC_BODY(BwdGxBody, bwd_gx_block, 3)
#undef FUSENAS_PC_BODY

// ------------------------------------------------------ launch sequences --

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

// Common fields; tensors are (ptr, strides) pairs set by the caller.
inline PcArgs make_args(const PcMixedProblem& p) {
  PcArgs a{};
  a.N = static_cast<int>(p.N);
  a.C = static_cast<int>(p.C);
  a.H = static_cast<int>(p.H);
  a.W = static_cast<int>(p.W);
  a.k = p.k;
  a.ck = a.C / p.k;
  a.stride = p.stride;
  a.Ho = pooled_size(a.H, p.stride);
  a.Wo = pooled_size(a.W, p.stride);
  a.eps = p.eps;
  a.n_ops = p.n_ops;
  a.n_params = 0;
  for (int o = 0; o < p.n_ops; ++o) {
    a.kinds[o] = static_cast<int>(p.ops[o]);
    a.param_of_op[o] = -1;
    if (p.ops[o] == PcOpKind::kParam) {
      a.op_of_param[a.n_params] = o;
      a.param_of_op[o] = a.n_params++;
    }
    a.has_max = a.has_max || p.ops[o] == PcOpKind::kMaxPool;
    a.has_avg = a.has_avg || p.ops[o] == PcOpKind::kAvgPool;
    a.has_skip = a.has_skip || p.ops[o] == PcOpKind::kSkip;
  }
  return a;
}

inline Strides4 strides_of(const Tensor4& t) {
  return Strides4{t.stride[0], t.stride[1], t.stride[2], t.stride[3]};
}
// Walk a written tensor channel-fastest when that is its memory order.
inline bool channels_fastest(const Tensor4& t) { return t.stride[1] == 1 && t.stride[3] != 1; }

inline PcArgs forward_args(const PcMixedProblem& p, Tensor4 x, const Tensor4* params,
                           const void* weights, const void* edge_scale, Tensor4 out,
                           float* stats_out, double* ws) {
  PcArgs a = make_args(p);
  a.x = x.data;
  a.xs = strides_of(x);
  for (int j = 0; j < a.n_params; ++j) {
    a.params[j] = params[j].data;
    a.ps[j] = strides_of(params[j]);
  }
  a.weights = weights;
  a.edge_scale = edge_scale;
  a.out = const_cast<void*>(out.data);
  a.outs = strides_of(out);
  a.out_cl = channels_fastest(out);
  a.stats_out = stats_out;
  a.ws = ws;
  return a;
}

inline PcArgs backward_args(const PcMixedProblem& p, Tensor4 grad_out, Tensor4 x,
                            const Tensor4* params, const void* weights, const void* edge_scale,
                            const float* stats, bool batch_stats, Tensor4 grad_x,
                            const Tensor4* grad_params, void* grad_weights, void* grad_edge_scale,
                            double* ws) {
  PcArgs a = forward_args(p, x, params, weights, edge_scale, Tensor4{}, nullptr, ws);
  a.out = nullptr;
  a.stats = stats;
  a.batch_stats = batch_stats;
  a.gout = grad_out.data;
  a.gos = strides_of(grad_out);
  a.gx = const_cast<void*>(grad_x.data);
  a.gxs = strides_of(grad_x);
  a.gx_cl = channels_fastest(grad_x);
  for (int j = 0; j < a.n_params; ++j) {
    a.gparams[j] = const_cast<void*>(grad_params[j].data);
    a.gps[j] = strides_of(grad_params[j]);
  }
  a.gweights = grad_weights;
  a.gscale = edge_scale ? grad_edge_scale : nullptr;
  return a;
}

inline int64_t forward_workspace(const PcMixedProblem& p) { return 4 * (p.C / p.k); }
inline int64_t backward_workspace(const PcMixedProblem& p) {
  return p.C * kAcc + (p.C / p.k) * 2 * kCoefStride;
}

// Sizes the kernels handle (32-bit coordinates, at most kPcMaxParams params).
inline bool supported(const PcMixedProblem& p) {
  int params = 0;
  for (int o = 0; o < p.n_ops; ++o) params += p.ops[o] == PcOpKind::kParam;
  return p.n_ops >= 1 && p.n_ops <= kPcMaxOps && params <= kPcMaxParams && p.k >= 1 &&
         p.C % p.k == 0 && (p.stride == 1 || p.stride == 2) && p.N >= 1 && p.H >= 1 && p.W >= 1 &&
         p.C < (int64_t{1} << 24) && p.N * p.C * p.H * p.W < (int64_t{1} << 62) &&
         p.N < (int64_t{1} << 31) && p.H < (int64_t{1} << 24) && p.W < (int64_t{1} << 24);
}

// Splits of the per-channel reductions: about 4 blocks per SM in all, at
// least 1024 positions per block.
inline int reduction_splits(int64_t positions, int channels, int sm_count) {
  int64_t s = (4 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1) + channels - 1) / channels;
  const int64_t most = (positions + 1023) / 1024;
  if (s > most) s = most;
  if (s > 65535) s = 65535;
  return static_cast<int>(s < 1 ? 1 : s);
}

// Elementwise grids: enough blocks to fill the GPU, grid-stride beyond that.
inline int elementwise_blocks(int64_t total, int sm_count) {
  const int64_t most = 32 * static_cast<int64_t>(sm_count > 0 ? sm_count : 1);
  const int64_t need = (total + kThreads - 1) / kThreads;
  return static_cast<int>(need < most ? (need < 1 ? 1 : need) : most);
}

template <class Backend>
void run_forward(Backend& be, const PcArgs& base, DType dtype, const float* pool_stats,
                 int sm_count) {
  PcArgs a = base;
  const int64_t M = positions(a);
  with_dtype(dtype, [&](auto dt) {
    constexpr DType DT = decltype(dt)::value;
    if (pool_stats == nullptr && (a.has_max || a.has_avg)) {
      be.zero(a.ws, static_cast<int64_t>(a.ck) * 4);
      const int splits = reduction_splits(M, a.ck, sm_count);
      a.split_len = (M + splits - 1) / splits;
      be.template launch<StatsBody<DT>>(BlockId{a.ck, splits, 1}, 4 * kThreads * 4, a);
      be.template launch<StatsFinalizeBody<DT>>(BlockId{1, 1, 1}, 0, a);
      a.stats = a.stats_out;
    } else if (pool_stats == nullptr) {
      be.zero(a.stats_out, static_cast<int64_t>(a.ck) * 4);
      a.stats = a.stats_out;
    } else {
      a.stats = pool_stats;
    }
    const int64_t total = static_cast<int64_t>(a.N) * a.C * a.Ho * a.Wo;
    const int blocks = elementwise_blocks(total, sm_count);
    a.grid_threads = static_cast<int64_t>(blocks) * kThreads;
    be.template launch<ForwardBody<DT>>(BlockId{blocks, 1, 1}, 0, a);
  });
}

template <class Backend>
void run_backward(Backend& be, const PcArgs& base, DType dtype, int sm_count) {
  PcArgs a = base;
  const int64_t M = positions(a);
  with_dtype(dtype, [&](auto dt) {
    constexpr DType DT = decltype(dt)::value;
    be.zero(a.ws, static_cast<int64_t>(a.C) * kAcc + static_cast<int64_t>(a.ck) * 2 * kCoefStride);
    // Bypassed channels only feed the edge-scale gradient.
    const int channels = a.gscale ? a.C : a.ck;
    const int splits = reduction_splits(M, channels, sm_count);
    a.split_len = (M + splits - 1) / splits;
    be.template launch<BwdReduceBody<DT>>(BlockId{channels, splits, 1}, 4 * kThreads * kAcc, a);
    be.template launch<BwdFinalizeBody<DT>>(BlockId{1, 1, 1}, 0, a);
    const int64_t total = static_cast<int64_t>(a.N) * a.C * a.H * a.W;
    const int blocks = elementwise_blocks(total, sm_count);
    a.grid_threads = static_cast<int64_t>(blocks) * kThreads;
    be.template launch<BwdGxBody<DT>>(BlockId{blocks, 1, 1}, 0, a);
  });
}

}  // namespace pc_mixed_gpu
}  // namespace fusenas
