// Turning a small run-time integer into a compile-time constant: the kernels
// instantiate their inner loops per value (bit width, number of parametric
// inputs) so that per-value accumulators live in registers.
#pragma once

#include <type_traits>

namespace fusenas {

// Calls fn(std::integral_constant<int, V>{}) with V = clamp(value, Lo, Hi).
template <int Lo, int Hi, typename Fn>
inline void with_constant(int value, Fn&& fn) {
  if constexpr (Lo >= Hi) {
    return fn(std::integral_constant<int, Hi>{});
  } else {
    if (value <= Lo) return fn(std::integral_constant<int, Lo>{});
    return with_constant<Lo + 1, Hi>(value, static_cast<Fn&&>(fn));
  }
}

}  // namespace fusenas
