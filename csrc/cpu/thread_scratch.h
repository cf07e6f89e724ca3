// Scratch memory that stays with a thread across calls. A kernel call that
// allocates megabytes afresh pays a page fault per 4 KB page on first touch
// (glibc hands large blocks back to the kernel on free): 4 MB of prepared x at
// M = 512, K = 4096 took 2.2-2.6 ms of a 39 ms call, on one thread while the
// others waited. oneDNN keeps a per-thread scratchpad for the same reason.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <memory>

namespace fusenas {
namespace cpu {

// What a buffer is for: one thread may hold one buffer per slot at a time.
// kInput/kInput2: the front end's copies of x; kOutput: its float32 results;
// kKernel: a kernel's own work space (on the thread that runs it).
enum class ScratchSlot { kInput, kInput2, kOutput, kKernel, kCount };

// At least `bytes` bytes, 64-byte aligned, contents unspecified. Up to
// kMaxCachedBytes the memory is the calling thread's buffer for `slot`, grown
// as needed and reused by its later calls (held until the thread exits); a
// larger request gets memory of its own, freed with this object.
class ThreadScratch {
 public:
  static constexpr size_t kMaxCachedBytes = size_t{16} << 20;
  using Memory = std::unique_ptr<void, void (*)(void*)>;
  ThreadScratch(ScratchSlot slot, size_t bytes);
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  Memory own_{nullptr, &std::free};
  void* ptr_;
};

}  // namespace cpu
}  // namespace fusenas
