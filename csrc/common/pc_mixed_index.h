// Index maps of the PC-DARTS mixed op (fusenas::pc_mixed_op), shared by the CPU
// and CUDA kernels so both read the same channels and windows.
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace fusenas {
namespace pc_mixed {

// channel_shuffle(cat([y, bypass]), k): concatenated channel g * Ck + j lands
// on output channel j * k + g (view (N, k, Ck, H, W), transpose(1, 2), flatten).
FUSENAS_HD int64_t shuffled_channel(int64_t concat_channel, int64_t ck, int64_t k) {
  return (concat_channel % ck) * k + concat_channel / ck;
}

// Inverse: the concatenated channel that output channel `out_channel` holds.
// Group 0 (out_channel % k == 0) is the processed part y[:, out_channel / k];
// every other group is bypassed input channel (out_channel % k) * ck + out_channel / k.
FUSENAS_HD int64_t concat_channel_of(int64_t out_channel, int64_t ck, int64_t k) {
  return (out_channel % k) * ck + out_channel / k;
}

// Rows (or columns) of a 3x3, padding-1 pool window centred at `center` that
// lie inside [0, extent): the divisor of AvgPool2d(count_include_pad=False) is
// valid_rows * valid_cols. A stride-s window of output o is centred at s * o.
FUSENAS_HD int valid_taps_3(int64_t center, int64_t extent) {
  return 1 + (center > 0 ? 1 : 0) + (center + 1 < extent ? 1 : 0);
}

}  // namespace pc_mixed
}  // namespace fusenas
