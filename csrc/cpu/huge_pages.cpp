#include "fusenas/huge_pages.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace fusenas {

namespace {
constexpr size_t kHugePage = size_t{2} << 20;
size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }
}  // namespace

#if defined(__linux__)

HugePageBuffer::HugePageBuffer(size_t bytes) : size_(bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  mapped_ = round_up(bytes > 0 ? bytes : 1, page);
  // Map 2 MiB more than needed, then unmap the unaligned head and the tail
  // past the last page: what stays starts on a 2 MiB boundary.
  void* raw = mmap(nullptr, mapped_ + kHugePage, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  const uintptr_t at = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = round_up(at, kHugePage);
  const size_t head = start - at, tail = kHugePage - head;
  if (head > 0) munmap(raw, head);
  if (tail > 0) munmap(reinterpret_cast<void*>(start + mapped_), tail);
  data_ = reinterpret_cast<void*>(start);
  advised_ = madvise(data_, mapped_, MADV_HUGEPAGE) == 0;
}

HugePageBuffer::~HugePageBuffer() { munmap(data_, mapped_); }

#else

HugePageBuffer::HugePageBuffer(size_t bytes) : size_(bytes) {
  mapped_ = round_up(bytes > 0 ? bytes : 1, 64);
  data_ = std::aligned_alloc(64, mapped_);
  if (data_ == nullptr) throw std::bad_alloc();
  std::memset(data_, 0, mapped_);
}

HugePageBuffer::~HugePageBuffer() { std::free(data_); }

#endif

}  // namespace fusenas
