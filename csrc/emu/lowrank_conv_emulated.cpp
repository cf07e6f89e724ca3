// Host emulation of the CUDA low-rank conv: the launch sequence and block
// bodies of csrc/cuda/lowrank_conv_blocks.h run block by block on the CPU
// (csrc/emu/host_block_backend.h). Only for tests on machines without a GPU.
#include "cuda/lowrank_conv_blocks.h"
#include "emu/host_block_backend.h"
#include "fusenas/lowrank_cuda.h"

namespace fusenas {

int lowrank_conv2d_forward_emulated(const LowrankConvProblem& p, const void* x, const void* w1,
                                    const void* w2, const void* bias, void* y) {
  if (p.N == 0 || p.O == 0) return 0;
  if (!lowrank::make_plan(p).ok) return 1;  // cudaErrorInvalidValue
  emu::HostBackend be;
  lowrank::run_forward(be, p, x, w1, w2, bias, y);
  return 0;
}

int lowrank_conv2d_backward_emulated(const LowrankConvProblem& p, const void* grad_out,
                                     const void* x, const void* w1, const void* w2, void* grad_x,
                                     float* grad_w1, float* grad_w2, float* grad_bias, float* t_ws,
                                     float* gt_ws) {
  if (!lowrank::make_plan(p).ok) return 1;
  if ((grad_w2 && !t_ws) || ((grad_x || grad_w1) && !gt_ws)) return 1;
  emu::HostBackend be;
  lowrank::run_backward(be, p, grad_out, x, w1, w2, grad_x, grad_w1, grad_w2, grad_bias, t_ws,
                        gt_ws);
  return 0;
}

}  // namespace fusenas
