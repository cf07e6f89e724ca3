// CUDA fused low-rank convolution (torch.ops.fusenas.lowrank_conv2d and its
// backward): the launchers of the block bodies in lowrank_conv_blocks.h, which
// also explains the kernels. 256 threads per block, 4 x 4 float32 register
// tiles, at most 48 KiB of dynamic shared memory per block (the tile plans of
// common/lowrank_cuda_tiling.h); x / y / weights in float32, bfloat16 or
// float16, NCHW or channels_last.
#ifndef FUSENAS_WITH_CUDA_API
#define FUSENAS_WITH_CUDA_API
#endif

#include <cuda_runtime.h>

#include "cuda/cuda_block_backend.cuh"
#include "cuda/lowrank_conv_blocks.h"
#include "fusenas/lowrank_cuda.h"

namespace fusenas {

namespace {

// Sizes the kernels index with 32-bit coordinates and 16-bit grid dimensions.
bool launchable(const LowrankConvProblem& p) {
  const LowrankCudaPlan plan = lowrank::make_plan(p);
  return plan.ok && p.N <= 65535 && p.C < (int64_t{1} << 24) && p.O < (int64_t{1} << 22) &&
         p.R < (int64_t{1} << 22) && p.H < (int64_t{1} << 24) && p.W < (int64_t{1} << 24);
}

}  // namespace

int lowrank_conv2d_forward_cuda(const LowrankConvProblem& p, const void* x, const void* w1,
                                const void* w2, const void* bias, void* y, void* stream) {
  if (p.N == 0 || p.O == 0) return static_cast<int>(cudaSuccess);
  if (!launchable(p)) return static_cast<int>(cudaErrorInvalidValue);
  cudablock::CudaBackend be{static_cast<cudaStream_t>(stream)};
  lowrank::run_forward(be, p, x, w1, w2, bias, y);
  return static_cast<int>(be.err);
}

int lowrank_conv2d_backward_cuda(const LowrankConvProblem& p, const void* grad_out, const void* x,
                                 const void* w1, const void* w2, void* grad_x, float* grad_w1,
                                 float* grad_w2, float* grad_bias, float* t_ws, float* gt_ws,
                                 void* stream) {
  if (!launchable(p)) return static_cast<int>(cudaErrorInvalidValue);
  if ((grad_w2 && !t_ws) || ((grad_x || grad_w1) && !gt_ws))
    return static_cast<int>(cudaErrorInvalidValue);
  cudablock::CudaBackend be{static_cast<cudaStream_t>(stream)};
  lowrank::run_backward(be, p, grad_out, x, w1, w2, grad_x, grad_w1, grad_w2, grad_bias, t_ws,
                        gt_ws);
  return static_cast<int>(be.err);
}

}  // namespace fusenas
