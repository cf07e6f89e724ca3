// Front end of the CPU PC-DARTS mixed op: splits (sample, channel) planes over
// OpenMP threads, owns everything that crosses planes (batch-norm statistics of
// the pooled maps, the backward's per-channel sums, weight and edge-scale
// gradients) and calls the plane kernels of the ISA chosen at run time.
//
// Forward: [batch statistics pass over the processed planes, pooling on the
// fly] then one pass that writes every output plane once (processed planes:
// pools + BN + skip + parametric outputs, weighted; bypass planes: copy or
// 2x2 max pool; both scaled and written to their shuffled channel).
// Backward: pass A (per-channel sums over the processed planes, weight-gradient
// dot products, grad of the parametric outputs, grad of the bypassed input),
// then pass B (grad of the processed input through the pools and their BN).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "common/pc_mixed_index.h"
#include "cpu/cpu_dispatch.h"
#include "cpu/pc_mixed_kernels.h"
#include "fusenas/pc_mixed.h"

namespace fusenas {

namespace {

using cpu::PlaneIn;
using cpu::PlaneOut;

const cpu::PcPlaneKernels& plane_kernels() {
  switch (cpu::active_isa()) {
    case cpu::Isa::kAvx512:
      return cpu::pc_plane_kernels_avx512();
    case cpu::Isa::kAvx2:
      return cpu::pc_plane_kernels_avx2();
    default:
      return cpu::pc_plane_kernels_scalar();
  }
}

// Which entry of `ops` each parameter-free candidate is (-1: absent), and the
// op index of each parametric output.
struct Candidates {
  int max_op = -1, avg_op = -1, skip_op = -1;
  std::vector<int> param_op;
};

Candidates classify(const PcMixedArgs& a) {
  Candidates c;
  for (int o = 0; o < a.num_ops; ++o) {
    switch (a.kinds[o]) {
      case PcCandidate::kMaxPool:
        c.max_op = o;
        break;
      case PcCandidate::kAvgPool:
        c.avg_op = o;
        break;
      case PcCandidate::kSkip:
        c.skip_op = o;
        break;
      case PcCandidate::kParametric:
        c.param_op.push_back(o);
        break;
      default:
        break;
    }
  }
  return c;
}

// Window-count reciprocals of AvgPool2d(3, stride, 1, count_include_pad=False).
struct Geometry {
  cpu::PcGeom g;
  std::vector<float> inv_in, inv_out;
  explicit Geometry(const PcMixedArgs& a) {
    const int64_t H = a.H, W = a.W, Ho = H / a.stride, Wo = W / a.stride;
    inv_in.resize(H * W);
    inv_out.resize(Ho * Wo);
    for (int64_t h = 0; h < H; ++h)
      for (int64_t w = 0; w < W; ++w)
        inv_in[h * W + w] =
            1.0f / static_cast<float>(pc_mixed::valid_taps_3(h, H) * pc_mixed::valid_taps_3(w, W));
    for (int64_t ho = 0; ho < Ho; ++ho)
      for (int64_t wo = 0; wo < Wo; ++wo) inv_out[ho * Wo + wo] = inv_in[a.stride * (ho * W + wo)];
    g = cpu::PcGeom{H, W, Ho, Wo, a.stride, inv_in.data(), inv_out.data()};
  }
};

PlaneIn plane(const PcTensor& t, int64_t n, int64_t c) {
  return PlaneIn{t.data + n * t.stride[0] + c * t.stride[1], t.stride[2], t.stride[3]};
}
PlaneOut plane_out(const PcMutTensor& t, int64_t n, int64_t c) {
  return PlaneOut{t.data + n * t.stride[0] + c * t.stride[1], t.stride[2], t.stride[3]};
}

// Threads for a call over `elements` values: waking a thread costs a few
// microseconds, so small edges (a few thousand values) stay on one.
int pick_threads(int requested, int64_t units, int64_t elements) {
  int t = requested > 0 ? requested : omp_get_max_threads();
  constexpr int64_t kMinElementsPerThread = 8192;
  t = static_cast<int>(
      std::min<int64_t>(t, std::max<int64_t>(1, elements / kMinElementsPerThread)));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(t, units)));
}

// fn(thread, unit_begin, unit_end) over contiguous shares of [0, units): a fixed
// split, so per-thread partial sums add up in the same order on every call.
template <typename Fn>
void parallel_units(int threads, int64_t units, Fn fn) {
  if (threads <= 1) {
    fn(0, int64_t{0}, units);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    const int64_t u0 = units * t / nt, u1 = units * (t + 1) / nt;
    if (u0 < u1) fn(t, u0, u1);
  }
}

struct Scratch {
  int64_t per_thread;
  std::unique_ptr<float[]> buf;
  Scratch(int threads, int64_t H, int64_t W)
      : per_thread(cpu::pc_scratch_floats(H, W)), buf(new float[threads * per_thread]) {}
  float* of(int t) const { return buf.get() + t * per_thread; }
};

// Count, mean and sum of squared deviations of a set of values.
struct Moments {
  double count = 0, mean = 0, m2 = 0;
  void merge(const Moments& o) {
    if (o.count == 0) return;
    const double n = count + o.count, delta = o.mean - mean;
    mean += delta * o.count / n;
    m2 += o.m2 + delta * delta * count * o.count / n;
    count = n;
  }
};

// Per-channel normalisation of a pool: mean and 1 / sqrt(var + eps).
struct PoolNorm {
  std::vector<float> mean, rstd;
  std::vector<double> rstd_d;
};

float* stat_row(float* stats, int64_t ck, int pool, int which) {
  return stats + (pool * 2 + which) * ck;
}

void norm_from_stats(const float* stats, int64_t ck, int pool, float eps, PoolNorm& n) {
  n.mean.resize(ck);
  n.rstd.resize(ck);
  n.rstd_d.resize(ck);
  for (int64_t j = 0; j < ck; ++j) {
    n.mean[j] = stats[(pool * 2) * ck + j];
    n.rstd_d[j] = 1.0 / std::sqrt(static_cast<double>(stats[(pool * 2 + 1) * ck + j]) + eps);
    n.rstd[j] = static_cast<float>(n.rstd_d[j]);
  }
}

}  // namespace

const char* pc_mixed_cpu_isa() { return cpu::isa_name(cpu::active_isa()); }

void pc_mixed_forward_cpu(const PcMixedArgs& a, const float* pool_stats, PcMutTensor out,
                          float* stats, int num_threads) {
  const cpu::PcPlaneKernels& kern = plane_kernels();
  const Candidates cd = classify(a);
  const Geometry geo(a);
  const cpu::PcGeom& g = geo.g;
  const int64_t N = a.N, C = a.C, k = a.k, ck = C / k;
  const bool has_max = cd.max_op >= 0, has_avg = cd.avg_op >= 0;
  const float scale = a.edge_scale != nullptr ? *a.edge_scale : 1.0f;
  const int threads = pick_threads(num_threads, N * k, N * C * a.H * a.W);
  const Scratch scratch(threads, a.H, a.W);

  // 1. statistics of the pooled maps (batch: one pooling pass, nothing stored)
  std::fill(stats, stats + 4 * ck, 0.0f);
  if (pool_stats != nullptr) {
    for (int pool = 0; pool < 2; ++pool)
      if (pool == 0 ? has_max : has_avg)
        std::copy(pool_stats + pool * 2 * ck, pool_stats + (pool + 1) * 2 * ck,
                  stats + pool * 2 * ck);
  } else if (has_max || has_avg) {
    // Per-thread running (mean, M2) per channel and pool, planes merged with
    // Chan's formula: no E[x^2] - E[x]^2 cancellation.
    std::vector<Moments> part(static_cast<size_t>(threads) * ck * 2);
    const double plane_count = static_cast<double>(g.Ho * g.Wo);
    parallel_units(threads, N * ck, [&](int t, int64_t u0, int64_t u1) {
      double mom[4] = {0, 0, 0, 0};
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t n = u / ck, j = u % ck;
        kern.pool_moments(g, plane(a.x, n, j), has_max, has_avg, mom, scratch.of(t));
        for (int pool = 0; pool < 2; ++pool)
          part[(t * ck + j) * 2 + pool].merge(
              Moments{plane_count, mom[2 * pool], mom[2 * pool + 1]});
      }
    });
    for (int64_t j = 0; j < ck; ++j)
      for (int pool = 0; pool < 2; ++pool) {
        if (!(pool == 0 ? has_max : has_avg)) continue;
        Moments m;
        for (int t = 0; t < threads; ++t) m.merge(part[(t * ck + j) * 2 + pool]);
        stat_row(stats, ck, pool, 0)[j] = static_cast<float>(m.mean);
        stat_row(stats, ck, pool, 1)[j] = static_cast<float>(m.m2 / m.count);
      }
  }

  // 2. per-channel coefficients: y = bias + c_max M + c_avg A + c_skip X + sum c_p P_p
  PoolNorm nmax, navg;
  norm_from_stats(stats, ck, 0, a.eps, nmax);
  norm_from_stats(stats, ck, 1, a.eps, navg);
  const float w_max = has_max ? a.weights[cd.max_op] : 0.0f;
  const float w_avg = has_avg ? a.weights[cd.avg_op] : 0.0f;
  std::vector<float> c_max(ck), c_avg(ck), bias(ck);
  for (int64_t j = 0; j < ck; ++j) {
    c_max[j] = scale * w_max * nmax.rstd[j];
    c_avg[j] = scale * w_avg * navg.rstd[j];
    bias[j] =
        -(has_max ? c_max[j] * nmax.mean[j] : 0.0f) - (has_avg ? c_avg[j] * navg.mean[j] : 0.0f);
  }
  const int np = static_cast<int>(cd.param_op.size());
  std::vector<float> c_param(np);
  for (int p = 0; p < np; ++p) c_param[p] = scale * a.weights[cd.param_op[p]];
  const float c_skip = cd.skip_op >= 0 ? scale * a.weights[cd.skip_op] : 0.0f;

  // 3. every output plane once. Work unit: (sample, shuffle group); group 0
  // is the processed part (output channels j * k), group g > 0 bypasses input
  // channels g * Ck + j to output channels j * k + g.
  parallel_units(threads, N * k, [&](int t, int64_t u0, int64_t u1) {
    PlaneIn params[cpu::kPcMaxParams];
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t n = u / k, grp = u % k;
      if (grp > 0) {
        kern.bypass_forward(g, plane(a.x, n, grp * ck), a.x.stride[1], scale,
                            plane_out(out, n, grp), k * out.stride[1], ck, scratch.of(t));
        continue;
      }
      for (int64_t j = 0; j < ck; ++j) {
        for (int p = 0; p < np; ++p) params[p] = plane(a.params[p], n, j);
        const cpu::PcForwardCoef coef{has_max,  has_avg,       cd.skip_op >= 0, c_max[j],
                                      c_avg[j], c_skip,        bias[j],         np,
                                      params,   c_param.data()};
        kern.forward(g, plane(a.x, n, j), coef,
                     plane_out(out, n, pc_mixed::shuffled_channel(j, ck, k)), scratch.of(t));
      }
    }
  });
}

void pc_mixed_backward_cpu(const PcMixedArgs& a, PcTensor grad_out, const float* stats,
                           bool batch_stats, PcMutTensor grad_x, const PcMutTensor* grad_params,
                           float* grad_weights, float* grad_edge_scale, int num_threads) {
  const cpu::PcPlaneKernels& kern = plane_kernels();
  const Candidates cd = classify(a);
  const Geometry geo(a);
  const cpu::PcGeom& g = geo.g;
  const int64_t N = a.N, C = a.C, k = a.k, ck = C / k;
  const bool has_max = cd.max_op >= 0, has_avg = cd.avg_op >= 0, has_skip = cd.skip_op >= 0;
  const float scale = a.edge_scale != nullptr ? *a.edge_scale : 1.0f;
  const int threads = pick_threads(num_threads, N * k, N * C * a.H * a.W);
  const Scratch scratch(threads, a.H, a.W);
  const int np = static_cast<int>(cd.param_op.size());
  PoolNorm nmax, navg;
  norm_from_stats(stats, ck, 0, a.eps, nmax);
  norm_from_stats(stats, ck, 1, a.eps, navg);
  std::vector<float> c_grad_param(np);
  for (int p = 0; p < np; ++p) c_grad_param[p] = scale * a.weights[cd.param_op[p]];

  // Pass A: per-channel sums of the processed planes, weight-gradient dot
  // products, grad of the parametric outputs, and the bypassed part of grad x.
  const int64_t tot_n = 1 + np;
  std::vector<double> ch(static_cast<size_t>(threads) * ck * 3, 0.0);
  std::vector<double> tot(static_cast<size_t>(threads) * tot_n, 0.0);
  std::vector<double> dot(threads, 0.0);
  const bool want_dot = grad_edge_scale != nullptr;
  parallel_units(threads, N * k, [&](int t, int64_t u0, int64_t u1) {
    PlaneIn params[cpu::kPcMaxParams];
    PlaneOut gparams[cpu::kPcMaxParams];
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t n = u / k, grp = u % k;  // as in the forward's step 3
      if (grp > 0) {
        kern.bypass_backward(g, plane(a.x, n, grp * ck), a.x.stride[1], plane(grad_out, n, grp),
                             k * grad_out.stride[1], scale, plane_out(grad_x, n, grp * ck),
                             grad_x.stride[1], ck, want_dot ? &dot[t] : nullptr, scratch.of(t));
        continue;
      }
      for (int64_t c = 0; c < ck; ++c) {
        for (int p = 0; p < np; ++p) {
          params[p] = plane(a.params[p], n, c);
          gparams[p] = plane_out(grad_params[p], n, c);
        }
        const cpu::PcReduceCoef coef{has_max, has_avg, has_skip, nmax.mean[c],       navg.mean[c],
                                     np,      params,  gparams,  c_grad_param.data()};
        kern.backward_reduce(g, plane(a.x, n, c),
                             plane(grad_out, n, pc_mixed::shuffled_channel(c, ck, k)), coef,
                             &ch[(t * ck + c) * 3], &tot[t * tot_n], scratch.of(t));
      }
    }
  });
  std::vector<double> s0(ck, 0.0), sgm(ck, 0.0), sga(ck, 0.0), T(tot_n, 0.0);
  double dot_sum = 0.0;
  for (int t = 0; t < threads; ++t) {
    for (int64_t j = 0; j < ck; ++j) {
      s0[j] += ch[(t * ck + j) * 3 + 0];
      sgm[j] += ch[(t * ck + j) * 3 + 1];
      sga[j] += ch[(t * ck + j) * 3 + 2];
    }
    for (int64_t i = 0; i < tot_n; ++i) T[i] += tot[t * tot_n + i];
    dot_sum += dot[t];
  }

  // Weight and edge-scale gradients: T_o = sum over the processed part of
  // grad_out * candidate o (before the edge scale).
  std::vector<double> T_op(a.num_ops, 0.0);
  for (int64_t j = 0; j < ck; ++j) {
    if (has_max) T_op[cd.max_op] += nmax.rstd_d[j] * sgm[j];
    if (has_avg) T_op[cd.avg_op] += navg.rstd_d[j] * sga[j];
  }
  if (has_skip) T_op[cd.skip_op] = T[0];
  for (int p = 0; p < np; ++p) T_op[cd.param_op[p]] = T[1 + p];
  double scale_grad = dot_sum;
  for (int o = 0; o < a.num_ops; ++o) {
    grad_weights[o] = static_cast<float>(scale * T_op[o]);
    scale_grad += static_cast<double>(a.weights[o]) * T_op[o];
  }
  if (grad_edge_scale != nullptr) *grad_edge_scale = static_cast<float>(scale_grad);

  // Pass B: grad of the processed input. BN with batch statistics:
  // dP = r (dc - mean(dc) - xhat mean(dc xhat)) with dc = w s G, xhat = (P - mu) r.
  const double count = static_cast<double>(N * g.Ho * g.Wo);
  std::vector<cpu::PcDxCoef> dxc(ck);
  const double w_max = has_max ? a.weights[cd.max_op] : 0.0;
  const double w_avg = has_avg ? a.weights[cd.avg_op] : 0.0;
  for (int64_t j = 0; j < ck; ++j) {
    const double am = scale * w_max * nmax.rstd_d[j], aa = scale * w_avg * navg.rstd_d[j];
    double bm = 0, cm = 0, ba = 0, ca = 0;
    if (batch_stats) {
      bm = -am * s0[j] / count;
      cm = -am * nmax.rstd_d[j] * nmax.rstd_d[j] * sgm[j] / count;
      ba = -aa * s0[j] / count;
      ca = -aa * navg.rstd_d[j] * navg.rstd_d[j] * sga[j] / count;
    }
    dxc[j] = cpu::PcDxCoef{has_max,
                           has_avg,
                           has_skip,
                           static_cast<float>(am),
                           static_cast<float>(bm),
                           static_cast<float>(cm),
                           nmax.mean[j],
                           static_cast<float>(aa),
                           static_cast<float>(ba),
                           static_cast<float>(ca),
                           navg.mean[j],
                           has_skip ? scale * a.weights[cd.skip_op] : 0.0f};
  }
  parallel_units(threads, N * ck, [&](int t, int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t n = u / ck, j = u % ck;
      kern.backward_dx(g, plane(a.x, n, j), plane(grad_out, n, j * k), dxc[j],
                       plane_out(grad_x, n, j), scratch.of(t));
    }
  });
}

}  // namespace fusenas
