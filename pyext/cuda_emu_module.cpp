// fusenas._C_cuda_emu: the low-rank conv and PC-DARTS CUDA kernels' block
// bodies run block by block on the host (csrc/emu/), behind the same Python
// signatures as fusenas._C_cuda (pyext/fused_op_bindings.h). Pointers are host
// pointers and the stream is ignored. It exists so that the kernels' tiling,
// index math and launch sequences are tested on machines without a GPU
// (tests/test_cuda_emulation.py); it is slow and never used by the ops.
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "common/block_exec.h"
#include "fused_op_bindings.h"
#include "fusenas/lowrank_cuda.h"
#include "fusenas/pc_mixed_cuda.h"

namespace py = pybind11;

namespace {

void check(int err, const char* op) {
  if (err != 0)
    throw std::runtime_error(std::string("fusenas.") + op + " (emulated): error " +
                             std::to_string(err) + " (unsupported problem)");
}

struct HostEmulation {
  static int lowrank_forward(const fusenas::LowrankConvProblem& p, const void* x, const void* w1,
                             const void* w2, const void* bias, void* y, void*) {
    return fusenas::lowrank_conv2d_forward_emulated(p, x, w1, w2, bias, y);
  }
  static int lowrank_backward(const fusenas::LowrankConvProblem& p, const void* grad_out,
                              const void* x, const void* w1, const void* w2, void* grad_x,
                              float* grad_w1, float* grad_w2, float* grad_bias, float* t_ws,
                              float* gt_ws, void*) {
    return fusenas::lowrank_conv2d_backward_emulated(p, grad_out, x, w1, w2, grad_x, grad_w1,
                                                     grad_w2, grad_bias, t_ws, gt_ws);
  }
  static int pc_forward(const fusenas::PcMixedProblem& p, fusenas::Tensor4 x,
                        const fusenas::Tensor4* params, const void* weights, const void* edge_scale,
                        const float* pool_stats, fusenas::Tensor4 out, float* stats_out, double* ws,
                        int sm_count, void*) {
    return fusenas::pc_mixed_forward_emulated(p, x, params, weights, edge_scale, pool_stats, out,
                                              stats_out, ws, sm_count);
  }
  static int pc_backward(const fusenas::PcMixedProblem& p, fusenas::Tensor4 grad_out,
                         fusenas::Tensor4 x, const fusenas::Tensor4* params, const void* weights,
                         const void* edge_scale, const float* stats, bool batch_stats,
                         fusenas::Tensor4 grad_x, const fusenas::Tensor4* grad_params,
                         void* grad_weights, void* grad_edge_scale, double* ws, int sm_count,
                         void*) {
    return fusenas::pc_mixed_backward_emulated(p, grad_out, x, params, weights, edge_scale, stats,
                                               batch_stats, grad_x, grad_params, grad_weights,
                                               grad_edge_scale, ws, sm_count);
  }
};

}  // namespace

PYBIND11_MODULE(_C_cuda_emu, m) {
  m.doc() = "Host emulation of fusenas' CUDA low-rank conv and PC-DARTS kernels (tests only)";
  fusenas::pyext::bind_fused_ops<HostEmulation>(m, check);
  m.def(
      "set_thread_order",
      [](int order) {
        if (order < 0 || order > 2)
          throw std::invalid_argument("order: expected 0 (ascending), 1 (descending) or 2");
        fusenas::blockexec::host_thread_order() = order;
      },
      py::arg("order"),
      "Order of the emulated threads within a phase: 0 ascending, 1 descending, 2 scrambled");
  m.def(
      "set_race_check", [](bool on) { fusenas::blockexec::smem_tracker().race_check = on; },
      py::arg("on"), "Check shared-memory accesses for races between barriers (slower)");
}
