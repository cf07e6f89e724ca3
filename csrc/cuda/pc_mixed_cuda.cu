// CUDA fused PC-DARTS partial-channel mixed op (torch.ops.fusenas.pc_mixed_op
// and its backward): the launchers of the block bodies in pc_mixed_blocks.h,
// which also explains the kernels. 256 threads per block; float32, bfloat16
// or float16 tensors with float32 arithmetic and float64 cross-block sums.
#ifndef FUSENAS_WITH_CUDA_API
#define FUSENAS_WITH_CUDA_API
#endif

#include <cuda_runtime.h>

#include "cuda/cuda_block_backend.cuh"
#include "cuda/pc_mixed_blocks.h"
#include "fusenas/pc_mixed_cuda.h"

namespace fusenas {

int pc_mixed_forward_cuda(const PcMixedProblem& p, Tensor4 x, const Tensor4* params,
                          const void* weights, const void* edge_scale, const float* pool_stats,
                          Tensor4 out, float* stats_out, double* ws, int sm_count, void* stream) {
  if (!pc_mixed_gpu::supported(p)) return static_cast<int>(cudaErrorInvalidValue);
  cudablock::CudaBackend be{static_cast<cudaStream_t>(stream)};
  const pc_mixed_gpu::PcArgs a =
      pc_mixed_gpu::forward_args(p, x, params, weights, edge_scale, out, stats_out, ws);
  pc_mixed_gpu::run_forward(be, a, p.dtype, pool_stats, sm_count);
  return static_cast<int>(be.err);
}

int pc_mixed_backward_cuda(const PcMixedProblem& p, Tensor4 grad_out, Tensor4 x,
                           const Tensor4* params, const void* weights, const void* edge_scale,
                           const float* stats, bool batch_stats, Tensor4 grad_x,
                           const Tensor4* grad_params, void* grad_weights, void* grad_edge_scale,
                           double* ws, int sm_count, void* stream) {
  if (!pc_mixed_gpu::supported(p)) return static_cast<int>(cudaErrorInvalidValue);
  cudablock::CudaBackend be{static_cast<cudaStream_t>(stream)};
  const pc_mixed_gpu::PcArgs a =
      pc_mixed_gpu::backward_args(p, grad_out, x, params, weights, edge_scale, stats, batch_stats,
                                  grad_x, grad_params, grad_weights, grad_edge_scale, ws);
  pc_mixed_gpu::run_backward(be, a, p.dtype, sm_count);
  return static_cast<int>(be.err);
}

}  // namespace fusenas
