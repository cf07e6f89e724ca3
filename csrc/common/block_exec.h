// One CUDA thread block, written once, run two ways: on the GPU (DeviceExec,
// nvcc) and sequentially on the host (HostExec, any C++ compiler) so that the
// block bodies of the low-rank conv and PC-DARTS kernels can be checked on a
// machine without a GPU (fusenas._C_cuda_emu, tests/test_cuda_emulation.py).
//
// A block body is a template on the executor Ex. It runs its threads' work in
// phases, `ex.for_threads([&](int tid) {...})`, separated by `ex.sync()`
// (__syncthreads on the device; on the host the phases already run one after
// the other). State a thread keeps across a barrier lives in
// `typename Ex::template Local<T>`: a register variable on the device, one
// slot per thread on the host. Bodies use no warp-level primitives, so the
// sequential host run computes exactly what the block computes on the GPU
// (up to the order of atomic additions).
#pragma once

#include <cstdint>
#include <cstring>
#if !defined(__CUDACC__)
#include <stdexcept>
#endif

#include "common/macros.h"

#if defined(__CUDACC__)
// Block bodies run on the device only in nvcc builds and on the host only in
// host builds: never both in one compilation.
#define FUSENAS_BLOCK __device__ __forceinline__
#else
#define FUSENAS_BLOCK inline
#endif

// Index checks that cost nothing on the device and throw in the host
// emulation: they catch a shared-memory tile too small for its plan.
#if defined(__CUDACC__)
#define FUSENAS_BLOCK_CHECK(cond) ((void)0)
#else
#define FUSENAS_BLOCK_CHECK(cond) \
  ((cond) ? (void)0 : throw std::logic_error("block check failed: " #cond))
#endif

namespace fusenas {
namespace blockexec {

// Which block of the grid the body computes (blockIdx).
struct BlockId {
  int x, y, z;
};

#if defined(__CUDACC__)
struct DeviceExec {
  template <typename T>
  struct Local {
    T v;
    __device__ __forceinline__ T& operator()(int) { return v; }
  };
  template <typename F>
  __device__ __forceinline__ void for_threads(F&& f) {
    f(static_cast<int>(threadIdx.x));
  }
  __device__ __forceinline__ void sync() { __syncthreads(); }
  static __device__ __forceinline__ void atomic_add(float* p, float v) { atomicAdd(p, v); }
  static __device__ __forceinline__ void atomic_add(double* p, double v) { atomicAdd(p, v); }
};
#else
template <int NT>
struct HostExec {
  template <typename T>
  struct Local {
    T v[NT];
    T& operator()(int tid) { return v[tid]; }
  };
  template <typename F>
  void for_threads(F&& f) {
    for (int t = 0; t < NT; ++t) f(t);
  }
  void sync() {}
  static void atomic_add(float* p, float v) { *p += v; }
  static void atomic_add(double* p, double v) { *p += v; }
};
#endif

// Read-only global load: through the non-coherent texture path on the device.
template <typename T>
FUSENAS_HD T ldg(const T* p) {
#if defined(__CUDA_ARCH__)
  return __ldg(p);
#else
  return *p;
#endif
}

// Four consecutive floats of shared memory (16-byte aligned): one LDS.128 on
// the device.
struct F4 {
  float x, y, z, w;
};

FUSENAS_HD F4 load4(const float* p) {
#if defined(__CUDA_ARCH__)
  const float4 v = *reinterpret_cast<const float4*>(p);
  return F4{v.x, v.y, v.z, v.w};
#else
  return F4{p[0], p[1], p[2], p[3]};
#endif
}

FUSENAS_HD float lane(const F4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Floor / ceiling of a / b for any sign of a and b > 0.
FUSENAS_HD int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
FUSENAS_HD int ceil_div(int a, int b) { return -floor_div(-a, b); }
FUSENAS_HD int round_up4(int v) { return (v + 3) & ~3; }

}  // namespace blockexec
}  // namespace fusenas
