// The pixel-major forward of the low-rank conv for channels_last float32
// tensors (lowrank_conv_nhwc.cpp); lowrank_conv_cpu.cpp takes it where it
// applies and the plane path everywhere else.
#pragma once

#include <cstdint>

#include "fusenas/lowrank.h"

namespace fusenas {
namespace lowrank_detail {

// x and y channels_last-contiguous, both factors small enough to stay in
// cache, and its multiply-adds (rank rounded up to whole vectors) not far
// above the plane path's. FUSENAS_LOWRANK_NHWC=0 switches it off, =1 skips
// the work comparison. The caller also requires float32.
bool nhwc_forward_applies(const LowRankConvShape& s, const Strides4& xs, const Strides4& ys);

// y = relu?(conv + bias + residual); residual null or laid out as y; t_out
// (null: not kept) as lowrank_conv2d_cpu's `intermediate`.
void forward_nhwc(const float* x, const float* w1, const float* w2, const float* bias, float* y,
                  const LowRankConvShape& s, int num_threads, const float* residual, bool relu,
                  float* t_out);

int64_t nhwc_workspace_bytes(const LowRankConvShape& s, int num_threads);

}  // namespace lowrank_detail
}  // namespace fusenas
