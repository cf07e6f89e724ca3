#include "cpu/thread_scratch.h"

#include <cstdlib>
#include <new>

namespace fusenas {
namespace cpu {

namespace {

constexpr size_t kAlign = 64;

// `bytes` (rounded up to whole lines, as aligned_alloc requires), 64-byte aligned.
ThreadScratch::Memory allocate(size_t bytes) {
  ThreadScratch::Memory m(std::aligned_alloc(kAlign, (bytes + kAlign - 1) / kAlign * kAlign),
                          &std::free);
  if (!m) throw std::bad_alloc();
  return m;
}

}  // namespace

ThreadScratch::ThreadScratch(ScratchSlot slot, size_t bytes) {
  if (bytes > kMaxCachedBytes) {
    own_ = allocate(bytes);
    ptr_ = own_.get();
    return;
  }
  struct Cached {
    Memory mem{nullptr, &std::free};
    size_t size = 0;
  };
  thread_local Cached cached[static_cast<int>(ScratchSlot::kCount)];
  Cached& c = cached[static_cast<int>(slot)];
  // Replaced without copying (the contents are not kept), with headroom so a
  // slowly growing size does not reallocate on every call.
  if (c.size < bytes) {
    c.size = bytes + bytes / 4;
    c.mem = allocate(c.size);
  }
  ptr_ = c.mem.get();
}

}  // namespace cpu
}  // namespace fusenas
