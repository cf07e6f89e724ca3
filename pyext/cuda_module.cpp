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

#include "fusenas/kbit.h"
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
         int64_t row_stride, int bits, bool ternary, int64_t group_size, uintptr_t out,
         uintptr_t stream) {
        const KbitWeight w =
            make_weight(codes, scales, zeros, N, K, row_stride, bits, ternary, group_size);
        int err;
        {
          py::gil_scoped_release release;
          err = fusenas::kbit_dequantize_cuda(w, ptr<float>(out), ptr<void>(stream));
        }
        check(err, "kbit_dequantize_cuda");
      },
      py::arg("codes"), py::arg("scales"), py::arg("zeros"), py::arg("N"), py::arg("K"),
      py::arg("row_stride"), py::arg("bits"), py::arg("ternary"), py::arg("group_size"),
      py::arg("out"), py::arg("stream"));
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
