// fusenas._C: pointer-level bindings of the CPU kernels. The Python layer
// (python/fusenas/ops) validates every argument before calling in; these
// functions release the GIL and trust what they are given.
#include <omp.h>
#include <pybind11/pybind11.h>

#include <cstdint>

#include "cpu/cpu_dispatch.h"
#include "fusenas/kbit.h"
#include "pointer_args.h"

namespace py = pybind11;
using fusenas::DType;
using fusenas::KbitWeight;
using fusenas::pyext::make_weight;
using fusenas::pyext::ptr;

PYBIND11_MODULE(_C, m) {
  m.doc() = "fusenas CPU kernels (pointer-level; use fusenas.ops)";
  m.def(
      "kbit_matmul_cpu",
      [](uintptr_t x, int64_t M, int64_t ldx, int dtype, uintptr_t codes, uintptr_t scales,
         uintptr_t zeros, int64_t N, int64_t K, int64_t row_stride, int bits, bool ternary,
         int64_t group_size, uintptr_t bias, uintptr_t y, int64_t ldy, int threads) {
        const KbitWeight w =
            make_weight(codes, scales, zeros, N, K, row_stride, bits, ternary, group_size);
        fusenas::kbit_matmul_cpu(ptr<const void>(x), M, ldx, static_cast<DType>(dtype), w,
                                 ptr<const void>(bias), ptr<void>(y), ldy, threads);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "kbit_dequantize_cpu",
      [](uintptr_t codes, uintptr_t scales, uintptr_t zeros, int64_t N, int64_t K,
         int64_t row_stride, int bits, bool ternary, int64_t group_size, uintptr_t out,
         int threads) {
        const KbitWeight w =
            make_weight(codes, scales, zeros, N, K, row_stride, bits, ternary, group_size);
        fusenas::kbit_dequantize_cpu(w, ptr<float>(out), threads);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def("build_info", [] {
    py::dict d;
    d["compiler"] = FUSENAS_VERSION_INFO;
    d["hardware_isa"] = fusenas::cpu::isa_name(fusenas::cpu::hardware_isa());
    d["active_isa"] = fusenas::kbit_cpu_isa();
    d["avx512_bf16"] = fusenas::cpu::has_avx512_bf16();
    d["openmp_max_threads"] = omp_get_max_threads();
    d["kbit_format_version"] = 1;
    return d;
  });
}
