// Shared by the pybind11 modules: Python passes tensors' data_ptr() values as
// integers; these turn them back into typed pointers and a KbitWeight.
#pragma once

#include <cstdint>

#include "fusenas/kbit.h"

namespace fusenas {
namespace pyext {

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

inline KbitWeight make_weight(uintptr_t codes, uintptr_t scales, uintptr_t zeros, int64_t N,
                              int64_t K, int64_t row_stride, int bits, bool ternary,
                              int64_t group_size) {
  return KbitWeight{ptr<const uint8_t>(codes),
                    ptr<const float>(scales),
                    ptr<const float>(zeros),
                    N,
                    K,
                    row_stride,
                    bits,
                    ternary,
                    group_size};
}

}  // namespace pyext
}  // namespace fusenas
