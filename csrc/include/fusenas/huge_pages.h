// Memory for packed weights that the batch-1 kernels stream from DRAM, laid
// out for transparent huge pages.
//
// Why: a cold batch-1 GEMV reads its weights once, front to back. On 4 KiB
// pages that is a page walk every 4 KiB, and the kernels' software prefetches
// run ahead of the walks. On 2 MiB pages the
// same call ran 1-15% faster on Zen 5, typically 3-8% (docs/benchmarks/
// kbit_notes.md, "Session 29").
// Memory from torch's allocator is not 2 MiB-aligned, and under the
// common THP setting "madvise" it never gets huge pages at all.
#pragma once

#include <cstddef>

namespace fusenas {

// A private anonymous mapping of `bytes` bytes (rounded up to whole 4 KiB
// pages), zero-filled, that starts on a 2 MiB boundary and is advised
// MADV_HUGEPAGE, so the kernel can back each whole 2 MiB of it with one huge
// page ("always" or "madvise" THP settings). The partial 2 MiB at the end is
// outside any huge page: at most 4 KiB of slack, never 2 MiB. On systems
// without mmap it is plain 64-byte-aligned heap memory. Throws std::bad_alloc.
class HugePageBuffer {
 public:
  explicit HugePageBuffer(size_t bytes);
  ~HugePageBuffer();
  HugePageBuffer(const HugePageBuffer&) = delete;
  HugePageBuffer& operator=(const HugePageBuffer&) = delete;

  void* data() const { return data_; }
  size_t size() const { return size_; }
  // madvise(MADV_HUGEPAGE) succeeded: whether huge pages back it is the
  // kernel's choice (the THP setting, free memory).
  bool advised() const { return advised_; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;    // bytes asked for
  size_t mapped_ = 0;  // bytes mapped (whole pages)
  bool advised_ = false;
};

}  // namespace fusenas
