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
// slot per thread on the host. Shared memory is `typename Ex::Smem`: a float*
// on the device, a checked pointer on the host (bounds, and races between
// barriers when enabled). Bodies use no warp-level primitives, so the
// sequential host run computes exactly what the block computes on the GPU
// (up to the order of atomic additions).
#pragma once

#include <cstdint>
#include <cstring>
#if !defined(__CUDACC__)
#include <stdexcept>
#include <string>
#include <vector>
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
  using Smem = float*;  // shared memory: a plain pointer
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
// Order in which HostExec runs the threads of a phase: 0 ascending, 1
// descending, 2 scrambled (t * 97 mod NT).
inline int& host_thread_order() {
  static int order = 0;
  return order;
}

// Shared-memory checker of the host emulation (the racecheck of
// compute-sanitizer, for machines without a GPU): every access goes through
// SmemPtr and is checked against the block's allocation, and, when enabled,
// against the accesses of the other threads since the last barrier: a read of
// an element another thread wrote, or a write of an element another thread read
// or wrote, in the same barrier interval is a race on the GPU.
class SmemTracker {
 public:
  bool race_check = false;
  int tid = 0;

  void reset(const float* base, size_t n) {
    base_ = base;
    n_ = n;
    epoch_ = 1;
    if (race_check) {
      wepoch_.assign(n, 0);
      repoch_.assign(n, 0);
      writer_.assign(n, -1);
      reader_.assign(n, -1);
    }
  }
  void barrier() { ++epoch_; }
  void on_read(const float* p) {
    const size_t e = index(p);
    if (!race_check) return;
    if (wepoch_[e] == epoch_ && writer_[e] != tid)
      fail("thread reads shared memory another thread wrote since the last barrier", e);
    if (repoch_[e] != epoch_) {
      repoch_[e] = epoch_;
      reader_[e] = tid;
    } else if (reader_[e] != tid) {
      reader_[e] = -2;  // several readers
    }
  }
  void on_write(const float* p) {
    const size_t e = index(p);
    if (!race_check) return;
    if (wepoch_[e] == epoch_ && writer_[e] != tid)
      fail("two threads write one shared-memory element between barriers", e);
    if (repoch_[e] == epoch_ && reader_[e] != tid)
      fail("thread writes shared memory another thread read since the last barrier", e);
    wepoch_[e] = epoch_;
    writer_[e] = tid;
  }

 private:
  size_t index(const float* p) const {
    if (p < base_ || p >= base_ + n_) throw std::logic_error("shared-memory access out of bounds");
    return static_cast<size_t>(p - base_);
  }
  [[noreturn]] void fail(const char* what, size_t e) const {
    throw std::logic_error(std::string("shared-memory race: ") + what + " (element " +
                           std::to_string(e) + ", thread " + std::to_string(tid) + ")");
  }
  const float* base_ = nullptr;
  size_t n_ = 0;
  int64_t epoch_ = 1;
  std::vector<int64_t> wepoch_, repoch_;
  std::vector<int> writer_, reader_;
};

inline SmemTracker& smem_tracker() {
  static SmemTracker t;
  return t;
}

// One shared-memory float, read or written through the tracker.
class SmemRef {
 public:
  explicit SmemRef(float* p) : p_(p) {}
  operator float() const {  // NOLINT: reads like a float
    smem_tracker().on_read(p_);
    return *p_;
  }
  SmemRef& operator=(float v) {
    smem_tracker().on_write(p_);
    *p_ = v;
    return *this;
  }
  SmemRef& operator+=(float v) {
    smem_tracker().on_read(p_);
    smem_tracker().on_write(p_);
    *p_ += v;
    return *this;
  }

 private:
  float* p_;
};

// Host stand-in for a shared-memory float*: pointer arithmetic and indexing.
class SmemPtr {
 public:
  explicit SmemPtr(float* p) : p_(p) {}
  SmemPtr operator+(int64_t off) const { return SmemPtr(p_ + off); }
  SmemRef operator[](int64_t i) const { return SmemRef(p_ + i); }
  float* raw() const { return p_; }

 private:
  float* p_;
};

template <int NT>
struct HostExec {
  using Smem = SmemPtr;
  template <typename T>
  struct Local {
    T v[NT];
    T& operator()(int tid) { return v[tid]; }
  };
  template <typename F>
  void for_threads(F&& f) {
    const int order = host_thread_order();
    SmemTracker& tr = smem_tracker();
    for (int i = 0; i < NT; ++i) {
      const int t = order == 0 ? i : order == 1 ? NT - 1 - i : (i * 97) % NT;
      tr.tid = t;
      f(t);
    }
  }
  void sync() { smem_tracker().barrier(); }
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

#if !defined(__CUDACC__)
inline F4 load4(SmemPtr p) { return F4{p[0], p[1], p[2], p[3]}; }
#endif

FUSENAS_HD float lane(const F4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Floor / ceiling of a / b for any sign of a and b > 0.
FUSENAS_HD int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
FUSENAS_HD int ceil_div(int a, int b) { return -floor_div(-a, b); }
FUSENAS_HD int round_up4(int v) { return (v + 3) & ~3; }

}  // namespace blockexec
}  // namespace fusenas
