// fusenas._C: pointer-level bindings of the CPU kernels. The Python layer
// (python/fusenas/ops) validates every argument before calling in; these
// functions release the GIL and trust what they are given.
#include <omp.h>
#include <pybind11/pybind11.h>

#include <cstdint>

#include "cpu/cpu_dispatch.h"
#include "fusenas/kbit.h"
#include "fusenas/lowrank.h"
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
  m.def(
      "lowrank_conv2d_cpu",
      [](uintptr_t x, int64_t xsn, int64_t xsc, int64_t xsh, int64_t xsw, uintptr_t w1,
         uintptr_t w2, uintptr_t bias, uintptr_t y, int64_t ysn, int64_t ysc, int64_t ysh,
         int64_t ysw, int64_t N, int64_t C, int64_t H, int64_t W, int64_t rank, int64_t nout,
         int64_t kh, int64_t kw, int scheme, int64_t sh, int64_t sw, int64_t ph, int64_t pw,
         int64_t dh, int64_t dw, int dtype, int threads) {
        const fusenas::LowRankConvShape s{
            N,  C,  H,  W,  rank, nout, kh, kw, static_cast<fusenas::LowRankScheme>(scheme),
            sh, sw, ph, pw, dh,   dw};
        fusenas::lowrank_conv2d_cpu(ptr<const void>(x), {xsn, xsc, xsh, xsw}, ptr<const void>(w1),
                                    ptr<const void>(w2), ptr<const void>(bias), ptr<void>(y),
                                    {ysn, ysc, ysh, ysw}, s, static_cast<DType>(dtype), threads);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "lowrank_conv2d_backward_cpu",
      [](uintptr_t go, int64_t gsn, int64_t gsc, int64_t gsh, int64_t gsw, uintptr_t x, int64_t xsn,
         int64_t xsc, int64_t xsh, int64_t xsw, uintptr_t w1, uintptr_t w2, uintptr_t gx,
         int64_t gxsn, int64_t gxsc, int64_t gxsh, int64_t gxsw, uintptr_t gw1, uintptr_t gw2,
         int64_t N, int64_t C, int64_t H, int64_t W, int64_t rank, int64_t nout, int64_t kh,
         int64_t kw, int scheme, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
         int64_t dw, int dtype, int threads) {
        const fusenas::LowRankConvShape s{
            N,  C,  H,  W,  rank, nout, kh, kw, static_cast<fusenas::LowRankScheme>(scheme),
            sh, sw, ph, pw, dh,   dw};
        fusenas::lowrank_conv2d_backward_cpu(
            ptr<const void>(go), {gsn, gsc, gsh, gsw}, ptr<const void>(x), {xsn, xsc, xsh, xsw},
            ptr<const void>(w1), ptr<const void>(w2), ptr<void>(gx), {gxsn, gxsc, gxsh, gxsw},
            ptr<void>(gw1), ptr<void>(gw2), s, static_cast<DType>(dtype), threads);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def("lowrank_conv2d_workspace_bytes",
        [](int64_t N, int64_t C, int64_t H, int64_t W, int64_t rank, int64_t nout, int64_t kh,
           int64_t kw, int scheme, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
           int64_t dw, bool backward, int dtype, int threads) {
          const fusenas::LowRankConvShape s{
              N,  C,  H,  W,  rank, nout, kh, kw, static_cast<fusenas::LowRankScheme>(scheme),
              sh, sw, ph, pw, dh,   dw};
          const auto dt = static_cast<DType>(dtype);
          return backward ? fusenas::lowrank_conv2d_backward_workspace_bytes(s, dt, threads)
                          : fusenas::lowrank_conv2d_workspace_bytes(s, dt, threads);
        });
  m.def("build_info", [] {
    py::dict d;
    d["compiler"] = FUSENAS_VERSION_INFO;
    d["hardware_isa"] = fusenas::cpu::isa_name(fusenas::cpu::hardware_isa());
    d["active_isa"] = fusenas::kbit_cpu_isa();
    d["avx512_bf16"] = fusenas::cpu::has_avx512_bf16();
    d["openmp_max_threads"] = omp_get_max_threads();
    d["kbit_format_version"] = 1;
    d["lowrank_isa"] = fusenas::lowrank_cpu_isa();
    return d;
  });
}
