// Host emulation of the CUDA PC-DARTS mixed op: the launch sequence and block
// bodies of csrc/cuda/pc_mixed_blocks.h run block by block on the CPU
// (csrc/emu/host_block_backend.h). Only for tests on machines without a GPU.
#include "cuda/pc_mixed_blocks.h"
#include "emu/host_block_backend.h"
#include "fusenas/pc_mixed_cuda.h"

namespace fusenas {

int pc_mixed_forward_emulated(const PcMixedProblem& p, Tensor4 x, const Tensor4* params,
                              const void* weights, const void* edge_scale, const float* pool_stats,
                              Tensor4 out, float* stats_out, double* ws, int sm_count) {
  if (!pc_mixed_gpu::supported(p)) return 1;  // cudaErrorInvalidValue
  emu::HostBackend be;
  const pc_mixed_gpu::PcArgs a =
      pc_mixed_gpu::forward_args(p, x, params, weights, edge_scale, out, stats_out, ws);
  pc_mixed_gpu::run_forward(be, a, p.dtype, pool_stats, sm_count);
  return 0;
}

int pc_mixed_backward_emulated(const PcMixedProblem& p, Tensor4 grad_out, Tensor4 x,
                               const Tensor4* params, const void* weights, const void* edge_scale,
                               const float* stats, bool batch_stats, Tensor4 grad_x,
                               const Tensor4* grad_params, void* grad_weights,
                               void* grad_edge_scale, double* ws, int sm_count) {
  if (!pc_mixed_gpu::supported(p)) return 1;
  emu::HostBackend be;
  const pc_mixed_gpu::PcArgs a =
      pc_mixed_gpu::backward_args(p, grad_out, x, params, weights, edge_scale, stats, batch_stats,
                                  grad_x, grad_params, grad_weights, grad_edge_scale, ws);
  pc_mixed_gpu::run_backward(be, a, p.dtype, sm_count);
  return 0;
}

}  // namespace fusenas
