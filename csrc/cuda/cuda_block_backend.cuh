// Runs the block bodies of common/block_exec.h as CUDA kernels: the device
// backend of the launch sequences in lowrank_conv_blocks.h and
// pc_mixed_blocks.h (the host emulation has the same interface,
// csrc/emu/host_block_backend.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/block_exec.h"

namespace fusenas {
namespace cudablock {

// Body::kMinBlocks caps registers at 64K / (kThreads * kMinBlocks) per thread.
template <class Body>
__global__ void __launch_bounds__(Body::kThreads, Body::kMinBlocks)
    block_kernel(const typename Body::Args a) {
  extern __shared__ float4 smem4[];  // float4: 16-byte aligned for the LDS.128 reads
  blockexec::DeviceExec ex;
  Body::run(a, ex, reinterpret_cast<float*>(smem4),
            blockexec::BlockId{static_cast<int>(blockIdx.x), static_cast<int>(blockIdx.y),
                               static_cast<int>(blockIdx.z)});
}

// Launches in order on one stream; the first error sticks and stops later launches.
struct CudaBackend {
  cudaStream_t stream;
  cudaError_t err = cudaSuccess;

  template <class Body>
  void launch(blockexec::BlockId grid, int smem_bytes, const typename Body::Args& a) {
    if (err != cudaSuccess || grid.x <= 0 || grid.y <= 0 || grid.z <= 0) return;
    if (grid.y > 65535 || grid.z > 65535) {
      err = cudaErrorInvalidConfiguration;
      return;
    }
    if (smem_bytes > 48 * 1024) {
      // Above 48 KiB of dynamic shared memory a kernel must opt in.
      err = cudaFuncSetAttribute(block_kernel<Body>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 smem_bytes);
      if (err != cudaSuccess) return;
    }
    block_kernel<Body><<<dim3(grid.x, grid.y, grid.z), Body::kThreads, smem_bytes, stream>>>(a);
    err = cudaGetLastError();
  }
  template <typename T>
  void zero(T* p, int64_t count) {
    if (err == cudaSuccess && count > 0)
      err = cudaMemsetAsync(p, 0, static_cast<size_t>(count) * sizeof(T), stream);
  }
};

}  // namespace cudablock
}  // namespace fusenas
