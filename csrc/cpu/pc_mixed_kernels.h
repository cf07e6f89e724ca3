// Internal interface between the pc_mixed front end (pc_mixed_cpu.cpp) and its
// per-ISA plane kernels (pc_mixed_{scalar,avx2,avx512}.cpp, one template in
// pc_mixed_planes.h). A kernel handles one (sample, channel) plane: the front
// end splits planes across OpenMP threads, owns the cross-plane reductions
// (batch-norm statistics, weight gradients) and turns them into per-channel
// coefficients.
#pragma once

#include <cstdint>

#include "fusenas/pc_mixed.h"

namespace fusenas {
namespace cpu {

// Element (h, w) of a plane is p[h * sh + w * sw]: sw == 1 for NCHW rows,
// sw == C for channels_last (rows are then gathered into a scratch row).
struct PlaneIn {
  const float* p;
  int64_t sh, sw;
};
struct PlaneOut {
  float* p;
  int64_t sh, sw;
};

struct PcGeom {
  int64_t H, W, Ho, Wo;
  int stride;
  // 1 / (valid taps) of the 3x3 window centred at each input position (H x W)
  // and at each output position (Ho x Wo): AvgPool2d(count_include_pad=False).
  const float* inv_count_in;
  const float* inv_count_out;
};

// At most 5 of the 8 PC-DARTS candidates are parametric (4 at stride 1, plus
// FactorizedReduce at stride 2); the bindings reject more.
constexpr int kPcMaxParams = kPcMaxParamOuts;
// Per-thread scratch of a plane kernel: kPcScratchPlanes planes of
// pc_scratch_plane(H, W) floats (H rows of at least 16, so a narrow plane's
// rows fit whole AVX-512 vectors), then kPcScratchRows rows of pc_scratch_row(W)
// floats (W + 2 padded values plus slack).
constexpr int kPcScratchPlanes = 24;
constexpr int kPcScratchRows = 6;
inline int64_t pc_scratch_row(int64_t W) { return W + 64; }
inline int64_t pc_scratch_plane(int64_t H, int64_t W) { return H * (W > 16 ? W : 16); }
inline int64_t pc_scratch_floats(int64_t H, int64_t W) {
  return kPcScratchPlanes * pc_scratch_plane(H, W) + kPcScratchRows * pc_scratch_row(W);
}

// Forward, processed channel: y = bias + c_max * M + c_avg * A + c_skip * X
// + sum_p c_param[p] * P_p, with M / A the 3x3 max / avg pools of X.
struct PcForwardCoef {
  bool has_max, has_avg, has_skip;
  float c_max, c_avg, c_skip, bias;
  int num_params;
  const PlaneIn* params;
  const float* c_param;
};

// Backward reduction over a processed plane (accumulated, +=):
// ch[0] = sum G, ch[1] = sum G (M - mu_max), ch[2] = sum G (A - mu_avg);
// tot[0] = sum G X (skip), tot[1 + p] = sum G P_p. Also writes grad P_p = c_grad_param[p] * G.
struct PcReduceCoef {
  bool has_max, has_avg, has_skip;
  float mu_max, mu_avg;
  int num_params;
  const PlaneIn* params;
  const PlaneOut* grad_params;
  const float* c_grad_param;
};

// Backward, grad of a processed plane of x:
// dM = a_max G + b_max + c_max (M - mu_max) routed to each window's first max;
// dA = a_avg G + b_avg + c_avg (A - mu_avg) spread over each window / count;
// plus c_skip G (skip at stride 1).
struct PcDxCoef {
  bool has_max, has_avg, has_skip;
  float a_max, b_max, c_max, mu_max;
  float a_avg, b_avg, c_avg, mu_avg;
  float c_skip;
};

// Planes go by reference: a 24-byte struct passed by value travels through the
// stack, and the callee's wider reload of the caller's 8-byte stores cannot be
// store-forwarded (a stall per plane that dominated 8x8 maps).
struct PcPlaneKernels {
  // moments = {mean, sum of squared deviations} of the plane's max pool, then of its avg pool.
  void (*pool_moments)(const PcGeom& g, const PlaneIn& x, bool want_max, bool want_avg,
                       double* moments, float* scratch);
  void (*forward)(const PcGeom& g, const PlaneIn& x, const PcForwardCoef& c, const PlaneOut& out,
                  float* scratch);
  // out = scale * x (stride 1) or scale * MaxPool2d(2, 2)(x) (stride 2), for
  // `planes` planes: plane i of x starts x_step elements after plane i - 1
  // (likewise out). One call per bypassed group keeps small maps from paying a
  // call per 8x8 plane.
  void (*bypass_forward)(const PcGeom& g, const PlaneIn& x, int64_t x_step, float scale,
                         const PlaneOut& out, int64_t out_step, int64_t planes, float* scratch);
  void (*backward_reduce)(const PcGeom& g, const PlaneIn& x, const PlaneIn& grad,
                          const PcReduceCoef& c, double* ch, double* tot, float* scratch);
  void (*backward_dx)(const PcGeom& g, const PlaneIn& x, const PlaneIn& grad, const PcDxCoef& c,
                      const PlaneOut& dx, float* scratch);
  // dx = scale * grad routed through the bypass, over `planes` planes as in
  // bypass_forward; *dot += sum grad * bypass when dot != null.
  void (*bypass_backward)(const PcGeom& g, const PlaneIn& x, int64_t x_step, const PlaneIn& grad,
                          int64_t grad_step, float scale, const PlaneOut& dx, int64_t dx_step,
                          int64_t planes, double* dot, float* scratch);
};

const PcPlaneKernels& pc_plane_kernels_scalar();
const PcPlaneKernels& pc_plane_kernels_avx2();
const PcPlaneKernels& pc_plane_kernels_avx512();

}  // namespace cpu
}  // namespace fusenas
