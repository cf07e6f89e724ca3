// pybind11 bindings of the CUDA low-rank conv and PC-DARTS kernels, shared by
// fusenas._C_cuda (the GPU launchers) and fusenas._C_cuda_emu (the same block
// bodies run on the host, for tests without a GPU): both modules expose the
// same Python signatures, so python/fusenas/ops/*_cuda.py drives either.
//
// Python passes a problem tuple, tensors as data_ptr() integers (4-D views
// of the PC-DARTS op as (ptr, s0, s1, s2, s3) tuples), the SM count and the
// stream; every check that protects memory happens in Python first.
//   lowrank problem: (N, C, H, W, R, O, kh, kw, sh, sw, ph, pw, dh, dw,
//                     scheme (0 channel, 1 spatial), channels_last, dtype code, SM count)
//   pc_mixed problem: (N, C, H, W, k, stride, eps, [op kinds], dtype code)
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "fusenas/lowrank_cuda.h"
#include "fusenas/pc_mixed_cuda.h"
#include "pointer_args.h"

namespace fusenas {
namespace pyext {

namespace py = pybind11;

using LowrankTuple = std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int,
                                int, int, int, int, int, int, bool, int, int>;
using PcTuple =
    std::tuple<int64_t, int64_t, int64_t, int64_t, int, int, double, std::vector<int>, int>;
using View = std::tuple<uintptr_t, int64_t, int64_t, int64_t, int64_t>;

inline LowrankConvProblem lowrank_problem(const LowrankTuple& t) {
  LowrankConvProblem p;
  std::tie(p.N, p.C, p.H, p.W, p.R, p.O, p.kh, p.kw, p.sh, p.sw, p.ph, p.pw, p.dh, p.dw,
           std::ignore, p.channels_last, std::ignore, p.sm_count) = t;
  p.scheme = static_cast<LowrankScheme>(std::get<14>(t));
  p.dtype = static_cast<DType>(std::get<16>(t));
  return p;
}

inline PcMixedProblem pc_problem(const PcTuple& t) {
  PcMixedProblem p{};
  std::vector<int> kinds;
  double eps;
  int dtype;
  std::tie(p.N, p.C, p.H, p.W, p.k, p.stride, eps, kinds, dtype) = t;
  if (kinds.empty() || kinds.size() > static_cast<size_t>(kPcMaxOps))
    throw std::invalid_argument("ops: expected 1 to 16 candidates");
  p.eps = static_cast<float>(eps);
  p.n_ops = static_cast<int>(kinds.size());
  for (int o = 0; o < p.n_ops; ++o) p.ops[o] = static_cast<PcOpKind>(kinds[o]);
  p.dtype = static_cast<DType>(dtype);
  return p;
}

inline Tensor4 tensor4(const View& v) {
  return Tensor4{ptr<const void>(std::get<0>(v)),
                 {std::get<1>(v), std::get<2>(v), std::get<3>(v), std::get<4>(v)}};
}

inline std::vector<Tensor4> tensor4s(const std::vector<View>& vs) {
  if (vs.size() > static_cast<size_t>(kPcMaxParams))
    throw std::invalid_argument("param_outs: expected at most 8 parametric outputs");
  std::vector<Tensor4> out;
  for (const View& v : vs) out.push_back(tensor4(v));
  out.resize(kPcMaxParams, Tensor4{});
  return out;
}

// Api: static forward / backward functions of the GPU launchers or the host
// emulation; `check` raises RuntimeError for a nonzero error code.
template <class Api>
void bind_fused_ops(py::module_& m, void (*check)(int, const char*)) {
  m.def(
      "lowrank_conv2d_cuda_plan",
      [](const LowrankTuple& t) {
        const LowrankCudaPlan plan = lowrank_conv2d_cuda_plan(lowrank_problem(t));
        py::dict d;
        d["ok"] = plan.ok;
        d["fwd_tile_h"] = plan.fwd_tile_h;
        d["fwd_rank_chunk"] = plan.fwd_rank_chunk;
        d["fwd_channel_chunk"] = plan.fwd_channel_chunk;
        d["fwd_smem_bytes"] = plan.fwd_smem_bytes;
        d["fwd_resident"] = plan.fwd_resident;
        d["bwd_tile_h"] = plan.bwd_tile_h;
        d["bwd_out_chunk"] = plan.bwd_out_chunk;
        d["bwd_smem_bytes"] = plan.bwd_smem_bytes;
        d["Ho"] = plan.Ho;
        d["Wo"] = plan.Wo;
        d["Wt"] = plan.Wt;
        return d;
      },
      py::arg("problem"));
  m.def(
      "lowrank_conv2d_forward_cuda",
      [check](const LowrankTuple& t, uintptr_t x, uintptr_t w1, uintptr_t w2, uintptr_t bias,
              uintptr_t y, uintptr_t stream) {
        const LowrankConvProblem p = lowrank_problem(t);
        int err;
        {
          py::gil_scoped_release release;
          err =
              Api::lowrank_forward(p, ptr<const void>(x), ptr<const void>(w1), ptr<const void>(w2),
                                   ptr<const void>(bias), ptr<void>(y), ptr<void>(stream));
        }
        check(err, "lowrank_conv2d_forward_cuda");
      },
      py::arg("problem"), py::arg("x"), py::arg("w1"), py::arg("w2"), py::arg("bias"), py::arg("y"),
      py::arg("stream"));
  m.def(
      "lowrank_conv2d_backward_cuda",
      [check](const LowrankTuple& t, uintptr_t grad_out, uintptr_t x, uintptr_t w1, uintptr_t w2,
              uintptr_t grad_x, uintptr_t grad_w1, uintptr_t grad_w2, uintptr_t grad_bias,
              uintptr_t t_ws, uintptr_t gt_ws, uintptr_t stream) {
        const LowrankConvProblem p = lowrank_problem(t);
        int err;
        {
          py::gil_scoped_release release;
          err = Api::lowrank_backward(
              p, ptr<const void>(grad_out), ptr<const void>(x), ptr<const void>(w1),
              ptr<const void>(w2), ptr<void>(grad_x), ptr<float>(grad_w1), ptr<float>(grad_w2),
              ptr<float>(grad_bias), ptr<float>(t_ws), ptr<float>(gt_ws), ptr<void>(stream));
        }
        check(err, "lowrank_conv2d_backward_cuda");
      },
      py::arg("problem"), py::arg("grad_out"), py::arg("x"), py::arg("w1"), py::arg("w2"),
      py::arg("grad_x"), py::arg("grad_w1"), py::arg("grad_w2"), py::arg("grad_bias"),
      py::arg("t_ws"), py::arg("gt_ws"), py::arg("stream"));
  m.def(
      "pc_mixed_workspace",
      [](const PcTuple& t) {
        const PcMixedProblem p = pc_problem(t);
        return std::make_tuple(pc_mixed_forward_workspace(p), pc_mixed_backward_workspace(p));
      },
      py::arg("problem"), "float64 workspace elements of (forward, backward)");
  m.def(
      "pc_mixed_forward_cuda",
      [check](const PcTuple& t, const View& x, const std::vector<View>& params, uintptr_t weights,
              uintptr_t edge_scale, uintptr_t pool_stats, const View& out, uintptr_t stats_out,
              uintptr_t ws, int sm_count, uintptr_t stream) {
        const PcMixedProblem p = pc_problem(t);
        const std::vector<Tensor4> pv = tensor4s(params);
        int err;
        {
          py::gil_scoped_release release;
          err = Api::pc_forward(p, tensor4(x), pv.data(), ptr<const void>(weights),
                                ptr<const void>(edge_scale), ptr<const float>(pool_stats),
                                tensor4(out), ptr<float>(stats_out), ptr<double>(ws), sm_count,
                                ptr<void>(stream));
        }
        check(err, "pc_mixed_forward_cuda");
      },
      py::arg("problem"), py::arg("x"), py::arg("params"), py::arg("weights"),
      py::arg("edge_scale"), py::arg("pool_stats"), py::arg("out"), py::arg("stats_out"),
      py::arg("ws"), py::arg("sm_count"), py::arg("stream"));
  m.def(
      "pc_mixed_backward_cuda",
      [check](const PcTuple& t, const View& grad_out, const View& x,
              const std::vector<View>& params, uintptr_t weights, uintptr_t edge_scale,
              uintptr_t stats, bool batch_stats, const View& grad_x,
              const std::vector<View>& grad_params, uintptr_t grad_weights,
              uintptr_t grad_edge_scale, uintptr_t ws, int sm_count, uintptr_t stream) {
        const PcMixedProblem p = pc_problem(t);
        const std::vector<Tensor4> pv = tensor4s(params);
        const std::vector<Tensor4> gpv = tensor4s(grad_params);
        int err;
        {
          py::gil_scoped_release release;
          err = Api::pc_backward(p, tensor4(grad_out), tensor4(x), pv.data(),
                                 ptr<const void>(weights), ptr<const void>(edge_scale),
                                 ptr<const float>(stats), batch_stats, tensor4(grad_x), gpv.data(),
                                 ptr<void>(grad_weights), ptr<void>(grad_edge_scale),
                                 ptr<double>(ws), sm_count, ptr<void>(stream));
        }
        check(err, "pc_mixed_backward_cuda");
      },
      py::arg("problem"), py::arg("grad_out"), py::arg("x"), py::arg("params"), py::arg("weights"),
      py::arg("edge_scale"), py::arg("stats"), py::arg("batch_stats"), py::arg("grad_x"),
      py::arg("grad_params"), py::arg("grad_weights"), py::arg("grad_edge_scale"), py::arg("ws"),
      py::arg("sm_count"), py::arg("stream"));
}

}  // namespace pyext
}  // namespace fusenas
