// C++ API of the fused low-rank convolution (two TRP factors in one pass).
// No torch, no pybind11: raw pointers, element strides and sizes. Arguments are
// trusted: the Python layer (fusenas.ops.lowrank_conv) validates them first.
//
// scheme kChannel: w1 (rank, C, kh, kw), w2 (Nout, rank, 1, 1)
//     y = conv(conv(x, w1, stride, padding, dilation), w2) + bias
// scheme kSpatial: w1 (rank, C, kh, 1), w2 (Nout, rank, 1, kw)
//     t = conv(x, w1, (sh, 1), (ph, 0), (dh, 1)); y = conv(t, w2, (1, sw), (0, pw), (1, dw)) + bias
#pragma once

#include <cstdint>

#include "fusenas/kbit.h"  // DType

namespace fusenas {

enum class LowRankScheme : int { kChannel = 0, kSpatial = 1 };

struct LowRankConvShape {
  int64_t N, C, H, W;  // input
  int64_t rank, Nout;  // factor sizes
  int64_t kh, kw;      // kernel of the equivalent dense conv
  LowRankScheme scheme;
  int64_t sh, sw, ph, pw, dh, dw;  // stride, padding, dilation of the dense conv
};

// Element strides of a 4-D (N, C, H, W) tensor: NCHW-contiguous, channels_last
// or anything else (the two common layouts take the fast paths).
struct Strides4 {
  int64_t n, c, h, w;
};

// y: (N, Nout, Ho, Wo) with strides ys. w1, w2 contiguous; bias (Nout) or null.
// All tensors in `dtype` (float32 or bfloat16); accumulation in float32.
// Fused epilogue (float32 only): y = relu?(conv + bias + residual), residual
// (null: none) with y's strides ys. num_threads <= 0 uses OpenMP's default.
// intermediate (null: not kept): receives the first factor's output for the
// backward, float32 (N, rank, Ho, Wt), Wt = Wo (channel) or W (spatial), as
// conv(x, w1, ...) of the scheme's first factor; contiguous, or channels_last
// (pixel-major: N, Ho, Wt, rank) when intermediate_channels_last.
void lowrank_conv2d_cpu(const void* x, const Strides4& xs, const void* w1, const void* w2,
                        const void* bias, void* y, const Strides4& ys, const LowRankConvShape& s,
                        DType dtype, int num_threads, const void* residual = nullptr,
                        bool relu = false, float* intermediate = nullptr,
                        bool intermediate_channels_last = false);

// Gradients of x (strides gxs), w1 and w2 (contiguous) from grad_out (strides
// gs); a null output pointer skips that gradient. grad_w2 needs the rank-r
// intermediate: read from `intermediate` (as lowrank_conv2d_cpu wrote it, in
// the layout intermediate_channels_last says) or, when that is null,
// recomputed per tile. grad_bias (Nout, x's dtype),
// when not null, gets grad_out summed over the batch and the pixels; it needs
// at least one of the other gradients (their pass is where grad_out is read).
void lowrank_conv2d_backward_cpu(const void* grad_out, const Strides4& gs, const void* x,
                                 const Strides4& xs, const void* w1, const void* w2, void* grad_x,
                                 const Strides4& gxs, void* grad_w1, void* grad_w2,
                                 const LowRankConvShape& s, DType dtype, int num_threads,
                                 const float* intermediate = nullptr, void* grad_bias = nullptr,
                                 bool intermediate_channels_last = false);

// Bytes of the kernels' own buffers (per-thread tiles, packed weights,
// gradient accumulators) outside the tensors: what they add to peak memory.
// channels_last: x and y channels_last-contiguous.
int64_t lowrank_conv2d_workspace_bytes(const LowRankConvShape& s, DType dtype, int num_threads,
                                       bool channels_last = false);
int64_t lowrank_conv2d_backward_workspace_bytes(const LowRankConvShape& s, DType dtype,
                                                int num_threads, bool channels_last = false);

// Code path chosen at run time: "avx512", "avx2" or "scalar".
const char* lowrank_cpu_isa();

}  // namespace fusenas
