// fusenas._C_cuda: pointer-level bindings of the CUDA kernels, the GPU twin of
// pyext/cpu_module.cpp. The Python layer (python/fusenas/ops) validates every
// argument and passes device pointers and the current stream as integers;
// these functions release the GIL, launch on that stream and turn a CUDA error
// into RuntimeError. The CUDA runtime is linked statically, so importing this
// module and calling build_info() works on a machine with no GPU or driver.
#define FUSENAS_WITH_CUDA_API
#include <cuda_runtime_api.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "fused_op_bindings.h"
#include "fusenas/kbit.h"
#include "fusenas/lowrank_cuda.h"
#include "fusenas/pc_mixed_cuda.h"
#include "pointer_args.h"

#ifndef FUSENAS_CUDA_ARCHS_STR
#define FUSENAS_CUDA_ARCHS_STR "unknown"
#endif

namespace py = pybind11;
using fusenas::DType;
using fusenas::KbitWeight;
using fusenas::pyext::make_weight;
using fusenas::pyext::ptr;

namespace {

// Raises RuntimeError for a nonzero cudaError_t (called with the GIL held).
void check(int err, const char* op) {
  if (err != 0) {
    throw std::runtime_error(std::string("fusenas.") + op + ": CUDA error " + std::to_string(err) +
                             " (" + cudaGetErrorString(static_cast<cudaError_t>(err)) + ")");
  }
}

// The launchers of the low-rank conv and PC-DARTS kernels, for bind_fused_ops.
struct CudaLaunchers {
  static int lowrank_forward(const fusenas::LowrankConvProblem& p, const void* x, const void* w1,
                             const void* w2, const void* bias, void* y, void* stream) {
    return fusenas::lowrank_conv2d_forward_cuda(p, x, w1, w2, bias, y, stream);
  }
  static int lowrank_backward(const fusenas::LowrankConvProblem& p, const void* grad_out,
                              const void* x, const void* w1, const void* w2, void* grad_x,
                              float* grad_w1, float* grad_w2, float* grad_bias, float* t_ws,
                              float* gt_ws, void* stream) {
    return fusenas::lowrank_conv2d_backward_cuda(p, grad_out, x, w1, w2, grad_x, grad_w1, grad_w2,
                                                 grad_bias, t_ws, gt_ws, stream);
  }
  static int pc_forward(const fusenas::PcMixedProblem& p, fusenas::Tensor4 x,
                        const fusenas::Tensor4* params, const void* weights, const void* edge_scale,
                        const float* pool_stats, fusenas::Tensor4 out, float* stats_out, double* ws,
                        int sm_count, void* stream) {
    return fusenas::pc_mixed_forward_cuda(p, x, params, weights, edge_scale, pool_stats, out,
                                          stats_out, ws, sm_count, stream);
  }
  static int pc_backward(const fusenas::PcMixedProblem& p, fusenas::Tensor4 grad_out,
                         fusenas::Tensor4 x, const fusenas::Tensor4* params, const void* weights,
                         const void* edge_scale, const float* stats, bool batch_stats,
                         fusenas::Tensor4 grad_x, const fusenas::Tensor4* grad_params,
                         void* grad_weights, void* grad_edge_scale, double* ws, int sm_count,
                         void* stream) {
    return fusenas::pc_mixed_backward_cuda(p, grad_out, x, params, weights, edge_scale, stats,
                                           batch_stats, grad_x, grad_params, grad_weights,
                                           grad_edge_scale, ws, sm_count, stream);
  }
};

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "fusenas CUDA kernels (pointer-level; use fusenas.ops)";
  m.def(
      "kbit_matmul_cuda",
      [](uintptr_t x, int64_t M, int64_t ldx, int dtype, uintptr_t codes, uintptr_t scales,
         uintptr_t zeros, int64_t N, int64_t K, int64_t row_stride, int bits, bool ternary,
         int64_t group_size, uintptr_t bias, uintptr_t y, int64_t ldy, uintptr_t stream) {
        const KbitWeight w =
            make_weight(codes, scales, zeros, N, K, row_stride, bits, ternary, group_size);
        int err;
        {
          py::gil_scoped_release release;
          err = fusenas::kbit_matmul_cuda(ptr<const void>(x), M, ldx, static_cast<DType>(dtype), w,
                                          ptr<const void>(bias), ptr<void>(y), ldy,
                                          ptr<void>(stream));
        }
        check(err, "kbit_matmul_cuda");
      },
      py::arg("x"), py::arg("M"), py::arg("ldx"), py::arg("dtype"), py::arg("codes"),
      py::arg("scales"), py::arg("zeros"), py::arg("N"), py::arg("K"), py::arg("row_stride"),
      py::arg("bits"), py::arg("ternary"), py::arg("group_size"), py::arg("bias"), py::arg("y"),
      py::arg("ldy"), py::arg("stream"));
  m.def(
      "kbit_dequantize_cuda",
      [](uintptr_t codes, uintptr_t scales, uintptr_t zeros, int64_t N, int64_t K,
         int64_t row_stride, int bits, bool ternary, int64_t group_size, uintptr_t out, int dtype,
         uintptr_t stream) {
        const KbitWeight w =
            make_weight(codes, scales, zeros, N, K, row_stride, bits, ternary, group_size);
        int err;
        {
          py::gil_scoped_release release;
          err = fusenas::kbit_dequantize_cuda(w, ptr<void>(out), static_cast<DType>(dtype),
                                              ptr<void>(stream));
        }
        check(err, "kbit_dequantize_cuda");
      },
      py::arg("codes"), py::arg("scales"), py::arg("zeros"), py::arg("N"), py::arg("K"),
      py::arg("row_stride"), py::arg("bits"), py::arg("ternary"), py::arg("group_size"),
      py::arg("out"), py::arg("dtype"), py::arg("stream"));
  fusenas::pyext::bind_fused_ops<CudaLaunchers>(m, check);
  m.def("build_info", [] {
    py::dict d;
    d["cuda_archs"] = FUSENAS_CUDA_ARCHS_STR;
    int runtime = 0, driver = 0, devices = 0;
    cudaRuntimeGetVersion(&runtime);
    if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
    // No driver or no GPU: an error code, not an exception; clear it so that
    // it does not surface in a later cudaGetLastError().
    if (cudaGetDeviceCount(&devices) != cudaSuccess) devices = 0;
    cudaGetLastError();
    d["cuda_runtime_version"] = runtime;
    d["cuda_driver_version"] = driver;
    d["device_count"] = devices;
    d["kbit_format_version"] = 1;
    return d;
  });
}
