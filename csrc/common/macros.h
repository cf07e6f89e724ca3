// Host/device qualifiers so the per-element math in csrc/common/ compiles in
// both the CPU kernels (plain C++) and the CUDA kernels (nvcc).
#pragma once

#if defined(__CUDACC__)
#define FUSENAS_HD __host__ __device__ __forceinline__
#else
#define FUSENAS_HD inline
#endif
