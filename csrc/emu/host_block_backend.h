// Host backend of the CUDA launch sequences: runs every block of a grid one
// after the other through HostExec (common/block_exec.h). Shared memory is
// filled with NaN before each block, so a body that reads a shared-memory
// element no thread wrote shows up as NaN in the results; every access is
// bounds-checked against the launch's dynamic shared-memory size, and checked
// for races between barriers when smem_tracker().race_check is on.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "common/block_exec.h"

namespace fusenas {
namespace emu {

struct HostBackend {
  template <class Body>
  void launch(blockexec::BlockId grid, int smem_bytes, const typename Body::Args& a) {
    std::vector<float> smem(static_cast<size_t>(smem_bytes) / sizeof(float) + 4);
    // Heap, not stack: one slot per thread of every Local.
    auto ex = std::make_unique<blockexec::HostExec<Body::kThreads>>();
    blockexec::SmemTracker& tracker = blockexec::smem_tracker();
    for (int z = 0; z < grid.z; ++z) {
      for (int y = 0; y < grid.y; ++y) {
        for (int x = 0; x < grid.x; ++x) {
          std::fill(smem.begin(), smem.end(), std::numeric_limits<float>::quiet_NaN());
          tracker.reset(smem.data(), static_cast<size_t>(smem_bytes) / sizeof(float));
          Body::run(a, *ex, blockexec::SmemPtr(smem.data()), blockexec::BlockId{x, y, z});
        }
      }
    }
  }
  template <typename T>
  void zero(T* p, int64_t count) {
    std::fill(p, p + count, T(0));
  }
};

}  // namespace emu
}  // namespace fusenas
