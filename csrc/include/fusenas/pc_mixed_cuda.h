// C++ API of the CUDA fused PC-DARTS partial-channel mixed op
// (torch.ops.fusenas.pc_mixed_op). No torch, no pybind11: raw device pointers.
//
// x (N, C, H, W), Ck = C / k, Ho x Wo = the pooled size at `stride`:
//   y = sum_o weights[o] * cand_o(x[:, :Ck])   (internal candidates recomputed,
//       parametric ones read from param_outs (N, Ck, Ho, Wo) in `ops` order)
//   bypass = x[:, Ck:] (stride 1) or MaxPool2d(2, 2)(x[:, Ck:]) (stride 2)
//   out = channel_shuffle(cat([y, bypass], 1), k) * edge_scale
// Internal candidates: none (0), BN(MaxPool2d(3, stride, 1)), BN(AvgPool2d(3,
// stride, 1, count_include_pad=False)), skip (identity, stride 1), BN without
// affine, batch statistics (biased variance) unless pool_stats are given.
// x, out, param_outs, grad_out, grad_x and grad_param_outs are 4-D views with
// their own element strides (each dense in NCHW or channels_last order; a
// kernel walks the tensor it writes in that tensor's memory order). x,
// params, weights (n_ops,) and edge_scale (0-dim) are in `dtype`; statistics
// are float32 (2, 2, Ck): [max, avg] x [mean, var]. Arithmetic is float32.
#pragma once

#include <cstdint>

#include "fusenas/kbit.h"  // DType

namespace fusenas {

enum class PcOpKind : int { kNone = 0, kMaxPool = 1, kAvgPool = 2, kSkip = 3, kParam = 4 };

constexpr int kPcMaxOps = 16;
constexpr int kPcMaxParams = 8;

struct PcMixedProblem {
  int64_t N, C, H, W;
  int k;       // partial-channel proportion: Ck = C / k channels are processed
  int stride;  // 1 or 2 (2 needs even H and W)
  float eps;
  int n_ops;
  PcOpKind ops[kPcMaxOps];  // kParam entries take param_outs in order
  DType dtype;
};

// A 4-D (N, C, H, W) tensor: data and element strides.
struct Tensor4 {
  const void* data;
  int64_t stride[4];
};

// Float64 accumulators the calls below need (the caller allocates; the calls zero them).
int64_t pc_mixed_forward_workspace(const PcMixedProblem& p);   // doubles
int64_t pc_mixed_backward_workspace(const PcMixedProblem& p);  // doubles

#ifdef FUSENAS_WITH_CUDA_API
// out (N, C, Ho, Wo) and stats_out (2, 2, Ck) float32. pool_stats null:
// batch statistics are computed and written to stats_out (rows of pools not in
// ops are zero); otherwise pool_stats are used and stats_out is left alone.
// edge_scale may be null. params: host array of n_params views of device
// memory. ws: pc_mixed_forward_workspace(p) doubles. Returns a cudaError_t.
int pc_mixed_forward_cuda(const PcMixedProblem& p, Tensor4 x, const Tensor4* params,
                          const void* weights, const void* edge_scale, const float* pool_stats,
                          Tensor4 out, float* stats_out, double* ws, int sm_count, void* stream);

// stats: the statistics the forward used; batch_stats: whether gradients flow
// through them. grad_params: views shaped like params; grad_weights (n_ops,)
// and grad_edge_scale (0-dim; null when edge_scale is null) in `dtype`.
// ws: pc_mixed_backward_workspace(p) doubles.
int pc_mixed_backward_cuda(const PcMixedProblem& p, Tensor4 grad_out, Tensor4 x,
                           const Tensor4* params, const void* weights, const void* edge_scale,
                           const float* stats, bool batch_stats, Tensor4 grad_x,
                           const Tensor4* grad_params, void* grad_weights, void* grad_edge_scale,
                           double* ws, int sm_count, void* stream);
#endif

// Host emulation through the same block bodies (tests without a GPU; host pointers).
int pc_mixed_forward_emulated(const PcMixedProblem& p, Tensor4 x, const Tensor4* params,
                              const void* weights, const void* edge_scale, const float* pool_stats,
                              Tensor4 out, float* stats_out, double* ws, int sm_count);
int pc_mixed_backward_emulated(const PcMixedProblem& p, Tensor4 grad_out, Tensor4 x,
                               const Tensor4* params, const void* weights, const void* edge_scale,
                               const float* stats, bool batch_stats, Tensor4 grad_x,
                               const Tensor4* grad_params, void* grad_weights,
                               void* grad_edge_scale, double* ws, int sm_count);

}  // namespace fusenas
