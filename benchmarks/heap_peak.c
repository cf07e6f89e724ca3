// LD_PRELOAD shim for the benchmarks: live heap bytes of the whole process and their peak.
//
// Why: torch's profiler sees only torch's own allocations (not oneDNN's
// scratchpad, not fusenas' kernel buffers), and it attributes some frees to
// both a node and its parent, so its running total can drop below what is
// live. Counting at malloc/free sees every library alike. Built and loaded
// by benchmarks/heap_peak.py; heap_peak_reset() / heap_peak() are read
// through ctypes.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>

static void* (*real_malloc)(size_t);
static void (*real_free)(void*);
static void* (*real_calloc)(size_t, size_t);
static void* (*real_realloc)(void*, size_t);
static int (*real_posix_memalign)(void**, size_t, size_t);
static void* (*real_aligned_alloc)(size_t, size_t);
static void* (*real_memalign)(size_t, size_t);
static _Atomic long long live_bytes, peak_bytes;

// dlsym may call calloc before real_calloc is known: those few bytes come from
// here and are never freed to the real allocator.
static _Alignas(16) char boot[8192];
static size_t boot_used;
static _Atomic int resolving;

static void resolve(void) {
  if (real_free) return;
  atomic_store(&resolving, 1);
  real_calloc = dlsym(RTLD_NEXT, "calloc");
  real_malloc = dlsym(RTLD_NEXT, "malloc");
  real_realloc = dlsym(RTLD_NEXT, "realloc");
  real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
  real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
  real_memalign = dlsym(RTLD_NEXT, "memalign");
  real_free = dlsym(RTLD_NEXT, "free");
  atomic_store(&resolving, 0);
}

static int from_boot(const void* p) {
  return (const char*)p >= boot && (const char*)p < boot + sizeof boot;
}

static void count_alloc(void* p) {
  if (!p) return;
  const long long n = (long long)malloc_usable_size(p);
  const long long now = atomic_fetch_add(&live_bytes, n) + n;
  long long old = atomic_load(&peak_bytes);
  while (now > old && !atomic_compare_exchange_weak(&peak_bytes, &old, now)) {
  }
}

static void count_free(void* p) {
  if (p && !from_boot(p)) atomic_fetch_sub(&live_bytes, (long long)malloc_usable_size(p));
}

void* malloc(size_t n) {
  resolve();
  void* p = real_malloc(n);
  count_alloc(p);
  return p;
}

void* calloc(size_t count, size_t size) {
  if (!real_calloc && atomic_load(&resolving)) {
    const size_t n = (count * size + 15) & ~(size_t)15;
    if (boot_used + n > sizeof boot) return NULL;
    void* p = boot + boot_used;
    boot_used += n;
    memset(p, 0, n);
    return p;
  }
  resolve();
  void* p = real_calloc(count, size);
  count_alloc(p);
  return p;
}

void free(void* p) {
  if (!p || from_boot(p)) return;
  resolve();
  count_free(p);
  real_free(p);
}

void* realloc(void* p, size_t n) {
  if (from_boot(p)) {  // never handed to the real allocator: move it there
    void* q = malloc(n);
    const size_t left = (size_t)(boot + sizeof boot - (char*)p);
    if (q) memcpy(q, p, n < left ? n : left);
    return q;
  }
  resolve();
  const long long before = p ? (long long)malloc_usable_size(p) : 0;
  void* q = real_realloc(p, n);
  if (q || n == 0) {
    atomic_fetch_sub(&live_bytes, before);
    count_alloc(q);
  }
  return q;
}

int posix_memalign(void** out, size_t alignment, size_t n) {
  resolve();
  const int rc = real_posix_memalign(out, alignment, n);
  if (rc == 0) count_alloc(*out);
  return rc;
}

void* aligned_alloc(size_t alignment, size_t n) {
  resolve();
  void* p = real_aligned_alloc(alignment, n);
  count_alloc(p);
  return p;
}

void* memalign(size_t alignment, size_t n) {
  resolve();
  void* p = real_memalign(alignment, n);
  count_alloc(p);
  return p;
}

// Starts a new peak at the bytes live now; returns them.
long long heap_peak_reset(void) {
  const long long now = atomic_load(&live_bytes);
  atomic_store(&peak_bytes, now);
  return now;
}

long long heap_peak(void) { return atomic_load(&peak_bytes); }
