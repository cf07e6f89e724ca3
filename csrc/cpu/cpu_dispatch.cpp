#include "cpu/cpu_dispatch.h"

#include <cstdlib>
#include <cstring>

#if __has_include(<unistd.h>)
#include <unistd.h>  // sysconf
#endif

namespace fusenas {
namespace cpu {

Isa hardware_isa() {
#if defined(__x86_64__) || defined(__i386__)
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("fma"))
      return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
    return Isa::kScalar;
  }();
  return isa;
#else
  return Isa::kScalar;
#endif
}

bool has_avx512_bf16() {
#if defined(__x86_64__)
  static const bool ok = [] {
    __builtin_cpu_init();
    return hardware_isa() == Isa::kAvx512 && __builtin_cpu_supports("avx512bf16");
  }();
  return ok;
#else
  return false;
#endif
}

bool has_avx512_vnni() {
#if defined(__x86_64__)
  static const bool ok = [] {
    __builtin_cpu_init();
    return hardware_isa() == Isa::kAvx512 && __builtin_cpu_supports("avx512vnni");
  }();
  return ok;
#else
  return false;
#endif
}

bool avx512_double_pumped() {
#if defined(__x86_64__)
  static const bool yes = [] {
    __builtin_cpu_init();
    return hardware_isa() == Isa::kAvx512 && __builtin_cpu_is("amdfam19h");
  }();
  return yes;
#else
  return false;
#endif
}

bool use_avx512_bf16() {
  if (active_isa() != Isa::kAvx512 || !has_avx512_bf16()) return false;
  const char* env = std::getenv("FUSENAS_CPU_BF16");
  return env == nullptr || std::strcmp(env, "0") != 0;
}

Isa active_isa() {
  Isa hw = hardware_isa();
  const char* env = std::getenv("FUSENAS_CPU_ISA");
  if (env == nullptr || *env == '\0') return hw;
  Isa want = hw;
  if (std::strcmp(env, "scalar") == 0)
    want = Isa::kScalar;
  else if (std::strcmp(env, "avx2") == 0)
    want = Isa::kAvx2;
  else if (std::strcmp(env, "avx512") == 0)
    want = Isa::kAvx512;
  return static_cast<int>(want) < static_cast<int>(hw) ? want : hw;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

bool streamed_prefetch_nta() {
  static const bool yes = [] {
#ifdef _SC_LEVEL1_DCACHE_SIZE
    return sysconf(_SC_LEVEL1_DCACHE_SIZE) >= 48 * 1024;  // 0 or -1 when unknown
#else
    return false;
#endif
  }();
  return yes;
}

}  // namespace cpu
}  // namespace fusenas
