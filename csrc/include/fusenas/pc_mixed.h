// C++ API of the fused PC-DARTS mixed op (fusenas::pc_mixed_op). No torch, no
// pybind11: raw float32 pointers with element strides, as the kernels see them.
//
// For x (N, C, H, W) and Ck = C / k, with y = sum_o weights[o] * cand_o(x[:, :Ck]):
//   out = edge_scale * channel_shuffle(cat([y, bypass(x[:, Ck:])]), k)
// where the parameter-free candidates (none, BN(max_pool_3x3), BN(avg_pool_3x3),
// skip at stride 1) are computed in the kernel and the parametric ones are read
// from `params`. Semantics in notes/CONTRACTS.md; the Python layer validates
// every argument before calling in.
#pragma once

#include <cstdint>

namespace fusenas {

// Most parametric candidates one call takes (PC-DARTS has 4 at stride 1, 5 at stride 2).
constexpr int kPcMaxParamOuts = 5;

enum class PcCandidate : int { kNone = 0, kMaxPool = 1, kAvgPool = 2, kSkip = 3, kParametric = 4 };

// A 4-D float32 tensor (n, c, h, w) with element strides; NCHW-contiguous and
// channels_last are the layouts the Python layer passes.
struct PcTensor {
  const float* data;
  int64_t stride[4];
};
struct PcMutTensor {
  float* data;
  int64_t stride[4];
};

struct PcMixedArgs {
  int64_t N, C, H, W;
  int64_t k;                 // divides C
  int stride;                // 1 or 2 (2: H and W even)
  float eps;                 // batch-norm epsilon of the pools
  PcTensor x;                // (N, C, H, W)
  const PcCandidate* kinds;  // num_ops entries, each kind at most once except kParametric
  int num_ops;
  const float* weights;     // num_ops mixing weights
  const float* edge_scale;  // one value, or null for 1
  const PcTensor* params;   // num_params tensors (N, C/k, H/stride, W/stride), in op order
  int num_params;
};

// out: (N, C, H/stride, W/stride). stats: (2, 2, C/k) [max, avg] x [mean, biased
// var] actually used; rows of absent pools are zero. pool_stats: same layout to
// normalise with (eval), or null for batch statistics (training).
// num_threads <= 0 uses OpenMP's default.
void pc_mixed_forward_cpu(const PcMixedArgs& a, const float* pool_stats, PcMutTensor out,
                          float* stats, int num_threads);

// Gradients of out w.r.t. x, every parametric output, the weights and the edge
// scale, given the forward's `stats` (batch_stats: they were batch statistics,
// so gradients flow through them). grad_params: num_params tensors shaped like
// params. grad_weights: num_ops floats. grad_edge_scale: one float, or null
// when it is not wanted (saves a pass over the bypassed input).
void pc_mixed_backward_cpu(const PcMixedArgs& a, PcTensor grad_out, const float* stats,
                           bool batch_stats, PcMutTensor grad_x, const PcMutTensor* grad_params,
                           float* grad_weights, float* grad_edge_scale, int num_threads);

// Name of the CPU code path chosen at run time: "avx512", "avx2" or "scalar".
const char* pc_mixed_cpu_isa();

}  // namespace fusenas
