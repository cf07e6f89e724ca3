#include "cpu/thread_scratch.h"

#include <cstdint>
#include <vector>

namespace fusenas {
namespace cpu {

namespace {

constexpr size_t kAlign = 64;

// The 64-byte-aligned start of a block of at least `bytes` usable bytes.
void* aligned_in(unsigned char* base) {
  const auto addr = reinterpret_cast<std::uintptr_t>(base);
  return base + ((kAlign - addr % kAlign) % kAlign);
}

}  // namespace

ThreadScratch::ThreadScratch(ScratchSlot slot, size_t bytes) {
  if (bytes > kMaxCachedBytes) {
    own_.reset(new unsigned char[bytes + kAlign]);
    ptr_ = aligned_in(own_.get());
    return;
  }
  thread_local std::vector<unsigned char> cached[static_cast<int>(ScratchSlot::kCount)];
  std::vector<unsigned char>& buf = cached[static_cast<int>(slot)];
  // Grown without copying the old contents (they are not kept) and with
  // headroom, so a slowly growing size does not reallocate every call.
  if (buf.size() < bytes + kAlign) buf = std::vector<unsigned char>(bytes + bytes / 4 + kAlign);
  ptr_ = aligned_in(buf.data());
}

}  // namespace cpu
}  // namespace fusenas
