// C++ API of the CUDA fused low-rank convolution (torch.ops.fusenas.lowrank_conv2d).
// No torch, no pybind11: raw device pointers and sizes, as the kernels see them.
//
// Schemes (TRP), for x (N, C, H, W) and the dense conv's stride / padding /
// dilation (sh, sw), (ph, pw), (dh, dw):
//   channel: w1 (R, C, kh, kw), w2 (O, R, 1, 1)
//            y = conv(conv(x, w1, s, p, d), w2) + bias
//   spatial: w1 (R, C, kh, 1), w2 (O, R, 1, kw)
//            t = conv(x, w1, (sh, 1), (ph, 0), (dh, 1))
//            y = conv(t, w2, (1, sw), (0, pw), (1, dw)) + bias
// x, y, grad_out, grad_x (and the float32 workspaces) are all contiguous in
// the same memory format: NCHW, or channels_last (NHWC) when channels_last.
// Weights and bias are contiguous. Arithmetic is float32 for every dtype.
#pragma once

#include <cstdint>

#include "fusenas/kbit.h"  // DType

namespace fusenas {

enum class LowrankScheme : int { kChannel = 0, kSpatial = 1 };

struct LowrankConvProblem {
  int64_t N, C, H, W;
  int64_t R;                           // rank: channels of the intermediate t
  int64_t O;                           // output channels
  int kh, kw, sh, sw, ph, pw, dh, dw;  // of the equivalent dense kh x kw conv
  LowrankScheme scheme;
  bool channels_last;
  DType dtype;
  int sm_count;  // of the device: sizes the forward tiles and the weight-gradient splits
};

// Tile sizes the kernels will use for a problem; ok = false when a tile of
// even the smallest size would not fit the shared memory budget (the Python
// layer then runs the reference).
struct LowrankCudaPlan {
  bool ok;
  int fwd_tile_h, fwd_rank_chunk, fwd_channel_chunk, fwd_smem_bytes;
  bool fwd_resident;  // t computed once per pixel tile for all output channels
  int bwd_tile_h, bwd_out_chunk, bwd_smem_bytes;  // the transposed-conv kernels (worst of two)
  int64_t Ho, Wo, Wt;                             // output size and the intermediate's width
};

LowrankCudaPlan lowrank_conv2d_cuda_plan(const LowrankConvProblem& p);

#ifdef FUSENAS_WITH_CUDA_API
// y = lowrank_conv2d(x, w1, w2) + bias (bias may be null). Returns a cudaError_t
// as int (0 = success); cudaErrorInvalidValue when the plan is not ok.
int lowrank_conv2d_forward_cuda(const LowrankConvProblem& p, const void* x, const void* w1,
                                const void* w2, const void* bias, void* y, void* stream);

// Gradients of lowrank_conv2d; every output pointer may be null (not wanted).
// grad_x is in p.dtype and p's layout. grad_w1 / grad_w2 / grad_bias are
// float32 buffers of w1.numel() / w2.numel() / O elements that this call
// overwrites (the caller casts them to the weights' dtype). t_ws and gt_ws are
// float32 workspaces of N * R * Ho * Wt elements in p's layout: t_ws is needed
// for grad_w2, gt_ws for grad_x or grad_w1 (null otherwise).
int lowrank_conv2d_backward_cuda(const LowrankConvProblem& p, const void* grad_out, const void* x,
                                 const void* w1, const void* w2, void* grad_x, float* grad_w1,
                                 float* grad_w2, float* grad_bias, float* t_ws, float* gt_ws,
                                 void* stream);
#endif

// The same computations run block by block on the host through the very
// block bodies of the CUDA kernels (common/block_exec.h): the correctness check
// of the kernels' tiling and index math on machines without a GPU. Host
// pointers; slow; for tests only.
int lowrank_conv2d_forward_emulated(const LowrankConvProblem& p, const void* x, const void* w1,
                                    const void* w2, const void* bias, void* y);
int lowrank_conv2d_backward_emulated(const LowrankConvProblem& p, const void* grad_out,
                                     const void* x, const void* w1, const void* w2, void* grad_x,
                                     float* grad_w1, float* grad_w2, float* grad_bias, float* t_ws,
                                     float* gt_ws);

}  // namespace fusenas
