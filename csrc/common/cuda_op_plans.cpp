// Host-side sizing of the CUDA low-rank conv and PC-DARTS kernels, callable
// without a GPU: the Python layer asks whether a shape fits and how much
// workspace to allocate before launching; tests and benchmarks print the plan.
// Compiled into both _C_cuda and the host emulation module.
#include "common/lowrank_cuda_tiling.h"
#include "cuda/pc_mixed_blocks.h"
#include "fusenas/lowrank_cuda.h"
#include "fusenas/pc_mixed_cuda.h"

namespace fusenas {

LowrankCudaPlan lowrank_conv2d_cuda_plan(const LowrankConvProblem& p) {
  return lowrank::make_plan(p);
}

int64_t pc_mixed_forward_workspace(const PcMixedProblem& p) {
  return pc_mixed_gpu::forward_workspace(p);
}

int64_t pc_mixed_backward_workspace(const PcMixedProblem& p) {
  return pc_mixed_gpu::backward_workspace(p);
}

}  // namespace fusenas
