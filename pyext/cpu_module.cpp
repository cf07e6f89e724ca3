// fusenas._C: pointer-level bindings of the CPU kernels. The Python layer
// (python/fusenas/ops) validates every argument before calling in; these
// functions release the GIL and trust what they are given.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <stdexcept>
#include <tuple>
#include <vector>

#include "cpu/cpu_dispatch.h"
#include "fusenas/huge_pages.h"
#include "fusenas/kbit.h"
#include "fusenas/lowrank.h"
#include "fusenas/pc_mixed.h"
#include "pointer_args.h"

namespace py = pybind11;
using fusenas::DType;
using fusenas::KbitWeight;
using fusenas::pyext::make_weight;
using fusenas::pyext::ptr;

namespace {

// A tensor as Python passes it: (data_ptr, stride_n, stride_c, stride_h, stride_w).
using TensorView = std::tuple<uintptr_t, int64_t, int64_t, int64_t, int64_t>;

fusenas::PcTensor pc_tensor(const TensorView& v) {
  return fusenas::PcTensor{ptr<const float>(std::get<0>(v)),
                           {std::get<1>(v), std::get<2>(v), std::get<3>(v), std::get<4>(v)}};
}
fusenas::PcMutTensor pc_mut_tensor(const TensorView& v) {
  return fusenas::PcMutTensor{ptr<float>(std::get<0>(v)),
                              {std::get<1>(v), std::get<2>(v), std::get<3>(v), std::get<4>(v)}};
}

// Owns what PcMixedArgs points to for the duration of one call.
struct PcMixedCall {
  std::vector<fusenas::PcCandidate> kinds;
  std::vector<fusenas::PcTensor> params;
  fusenas::PcMixedArgs args;
  PcMixedCall(const std::array<int64_t, 4>& shape, const TensorView& x,
              const std::vector<TensorView>& param_views, uintptr_t weights, uintptr_t edge_scale,
              const std::vector<int>& kind_codes, int64_t k, int stride, double eps) {
    if (param_views.size() > static_cast<size_t>(fusenas::kPcMaxParamOuts))
      throw std::invalid_argument("pc_mixed: too many param_outs");
    for (int code : kind_codes) kinds.push_back(static_cast<fusenas::PcCandidate>(code));
    for (const TensorView& v : param_views) params.push_back(pc_tensor(v));
    args = fusenas::PcMixedArgs{shape[0],
                                shape[1],
                                shape[2],
                                shape[3],
                                k,
                                stride,
                                static_cast<float>(eps),
                                pc_tensor(x),
                                kinds.data(),
                                static_cast<int>(kinds.size()),
                                ptr<const float>(weights),
                                ptr<const float>(edge_scale),
                                params.data(),
                                static_cast<int>(params.size())};
  }
};

}  // namespace

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
  m.def("kbit_lut_available", &fusenas::kbit_lut_available);
  m.def("kbit_lut_enabled", &fusenas::kbit_lut_enabled);
  // Python wraps it with torch.frombuffer (fusenas/weight_memory.py), which
  // keeps the buffer alive as long as any tensor viewing it.
  py::class_<fusenas::HugePageBuffer>(m, "HugePageBuffer", py::buffer_protocol(),
                                      "nbytes of zeroed memory on a 2 MiB boundary, advised "
                                      "MADV_HUGEPAGE (a writable buffer)")
      .def(py::init<size_t>(), py::arg("nbytes"))
      .def_property_readonly("nbytes", &fusenas::HugePageBuffer::size)
      .def_property_readonly("advised", &fusenas::HugePageBuffer::advised)
      .def_buffer([](fusenas::HugePageBuffer& b) {
        return py::buffer_info(b.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.size())}, {py::ssize_t{1}});
      });
  m.def(
      "kbit_lut_pack_codes_cpu",
      [](uintptr_t codes, int64_t N, int64_t K, int64_t row_stride, int bits, uintptr_t out,
         int threads) {
        const KbitWeight w = make_weight(codes, 0, 0, N, K, row_stride, bits, false, K);
        fusenas::kbit_lut_pack_codes(w, ptr<uint8_t>(out), threads);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "kbit_gemv_lut_cpu",
      [](uintptr_t x, int dtype, uintptr_t codes, uintptr_t scale, uintptr_t offset, int64_t N,
         int64_t K, int64_t group_size, float zero_term, int bits, uintptr_t bias, uintptr_t y,
         int threads) {
        const fusenas::KbitLutWeight w{ptr<const uint8_t>(codes),
                                       ptr<const float>(scale),
                                       ptr<const float>(offset),
                                       N,
                                       K,
                                       group_size,
                                       zero_term,
                                       bits};
        return fusenas::kbit_gemv_lut_cpu(ptr<const void>(x), static_cast<DType>(dtype), w,
                                          ptr<const void>(bias), ptr<void>(y), threads);
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
         int64_t dh, int64_t dw, int dtype, int threads, uintptr_t residual, bool relu,
         uintptr_t intermediate, bool intermediate_channels_last) {
        const fusenas::LowRankConvShape s{
            N,  C,  H,  W,  rank, nout, kh, kw, static_cast<fusenas::LowRankScheme>(scheme),
            sh, sw, ph, pw, dh,   dw};
        fusenas::lowrank_conv2d_cpu(ptr<const void>(x), {xsn, xsc, xsh, xsw}, ptr<const void>(w1),
                                    ptr<const void>(w2), ptr<const void>(bias), ptr<void>(y),
                                    {ysn, ysc, ysh, ysw}, s, static_cast<DType>(dtype), threads,
                                    ptr<const void>(residual), relu, ptr<float>(intermediate),
                                    intermediate_channels_last);
      },
      py::arg("x"), py::arg("xsn"), py::arg("xsc"), py::arg("xsh"), py::arg("xsw"), py::arg("w1"),
      py::arg("w2"), py::arg("bias"), py::arg("y"), py::arg("ysn"), py::arg("ysc"), py::arg("ysh"),
      py::arg("ysw"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"), py::arg("rank"),
      py::arg("nout"), py::arg("kh"), py::arg("kw"), py::arg("scheme"), py::arg("sh"),
      py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"), py::arg("dtype"),
      py::arg("threads"), py::arg("residual") = 0, py::arg("relu") = false,
      py::arg("intermediate") = 0, py::arg("intermediate_channels_last") = false,
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "lowrank_conv2d_backward_cpu",
      [](uintptr_t go, int64_t gsn, int64_t gsc, int64_t gsh, int64_t gsw, uintptr_t x, int64_t xsn,
         int64_t xsc, int64_t xsh, int64_t xsw, uintptr_t w1, uintptr_t w2, uintptr_t gx,
         int64_t gxsn, int64_t gxsc, int64_t gxsh, int64_t gxsw, uintptr_t gw1, uintptr_t gw2,
         int64_t N, int64_t C, int64_t H, int64_t W, int64_t rank, int64_t nout, int64_t kh,
         int64_t kw, int scheme, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
         int64_t dw, int dtype, int threads, uintptr_t intermediate, uintptr_t gb,
         bool intermediate_channels_last) {
        const fusenas::LowRankConvShape s{
            N,  C,  H,  W,  rank, nout, kh, kw, static_cast<fusenas::LowRankScheme>(scheme),
            sh, sw, ph, pw, dh,   dw};
        fusenas::lowrank_conv2d_backward_cpu(
            ptr<const void>(go), {gsn, gsc, gsh, gsw}, ptr<const void>(x), {xsn, xsc, xsh, xsw},
            ptr<const void>(w1), ptr<const void>(w2), ptr<void>(gx), {gxsn, gxsc, gxsh, gxsw},
            ptr<void>(gw1), ptr<void>(gw2), s, static_cast<DType>(dtype), threads,
            ptr<const float>(intermediate), ptr<void>(gb), intermediate_channels_last);
      },
      py::arg("go"), py::arg("gsn"), py::arg("gsc"), py::arg("gsh"), py::arg("gsw"), py::arg("x"),
      py::arg("xsn"), py::arg("xsc"), py::arg("xsh"), py::arg("xsw"), py::arg("w1"), py::arg("w2"),
      py::arg("gx"), py::arg("gxsn"), py::arg("gxsc"), py::arg("gxsh"), py::arg("gxsw"),
      py::arg("gw1"), py::arg("gw2"), py::arg("N"), py::arg("C"), py::arg("H"), py::arg("W"),
      py::arg("rank"), py::arg("nout"), py::arg("kh"), py::arg("kw"), py::arg("scheme"),
      py::arg("sh"), py::arg("sw"), py::arg("ph"), py::arg("pw"), py::arg("dh"), py::arg("dw"),
      py::arg("dtype"), py::arg("threads"), py::arg("intermediate") = 0, py::arg("gb") = 0,
      py::arg("intermediate_channels_last") = false, py::call_guard<py::gil_scoped_release>());
  m.def(
      "pc_mixed_forward_cpu",
      [](const std::array<int64_t, 4>& shape, const TensorView& x,
         const std::vector<TensorView>& params, uintptr_t weights, uintptr_t edge_scale,
         uintptr_t pool_stats, const std::vector<int>& kinds, int64_t k, int stride, double eps,
         const TensorView& out, uintptr_t stats, int threads) {
        const PcMixedCall call(shape, x, params, weights, edge_scale, kinds, k, stride, eps);
        fusenas::pc_mixed_forward_cpu(call.args, ptr<const float>(pool_stats), pc_mut_tensor(out),
                                      ptr<float>(stats), threads);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "pc_mixed_backward_cpu",
      [](const std::array<int64_t, 4>& shape, const TensorView& grad_out, const TensorView& x,
         const std::vector<TensorView>& params, uintptr_t weights, uintptr_t edge_scale,
         uintptr_t stats, bool batch_stats, const std::vector<int>& kinds, int64_t k, int stride,
         double eps, const TensorView& grad_x, const std::vector<TensorView>& grad_params,
         uintptr_t grad_weights, uintptr_t grad_edge_scale, int threads) {
        const PcMixedCall call(shape, x, params, weights, edge_scale, kinds, k, stride, eps);
        std::vector<fusenas::PcMutTensor> gp;
        for (const TensorView& v : grad_params) gp.push_back(pc_mut_tensor(v));
        fusenas::pc_mixed_backward_cpu(call.args, pc_tensor(grad_out), ptr<const float>(stats),
                                       batch_stats, pc_mut_tensor(grad_x), gp.data(),
                                       ptr<float>(grad_weights), ptr<float>(grad_edge_scale),
                                       threads);
      },
      py::call_guard<py::gil_scoped_release>());
  m.def("lowrank_conv2d_workspace_bytes",
        [](int64_t N, int64_t C, int64_t H, int64_t W, int64_t rank, int64_t nout, int64_t kh,
           int64_t kw, int scheme, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
           int64_t dw, bool backward, int dtype, int threads, bool channels_last) {
          const fusenas::LowRankConvShape s{
              N,  C,  H,  W,  rank, nout, kh, kw, static_cast<fusenas::LowRankScheme>(scheme),
              sh, sw, ph, pw, dh,   dw};
          const auto dt = static_cast<DType>(dtype);
          return backward ? fusenas::lowrank_conv2d_backward_workspace_bytes(s, dt, threads,
                                                                             channels_last)
                          : fusenas::lowrank_conv2d_workspace_bytes(s, dt, threads, channels_last);
        });
  m.def("build_info", [] {
    py::dict d;
    d["compiler"] = FUSENAS_VERSION_INFO;
    d["hardware_isa"] = fusenas::cpu::isa_name(fusenas::cpu::hardware_isa());
    d["active_isa"] = fusenas::kbit_cpu_isa();
    d["avx512_bf16"] = fusenas::cpu::has_avx512_bf16();
    d["avx512_bf16_active"] = fusenas::cpu::use_avx512_bf16();
    d["avx512_vnni"] = fusenas::cpu::has_avx512_vnni();
    d["openmp_max_threads"] = omp_get_max_threads();
    d["kbit_format_version"] = 1;
    d["lowrank_isa"] = fusenas::lowrank_cpu_isa();
    d["avx512_double_pumped"] = fusenas::cpu::avx512_double_pumped();
    d["pc_mixed_active_isa"] = fusenas::pc_mixed_cpu_isa();
    return d;
  });
}
