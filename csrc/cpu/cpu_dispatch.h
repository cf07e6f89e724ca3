// Runtime choice of the CPU code path. The build targets baseline x86-64; the
// AVX2 and AVX-512 translation units are entered only when cpuid (and the OS,
// for the wider register state) says they can run. FUSENAS_CPU_ISA=scalar|avx2|
// avx512 forces a lower path (tests use it to cover every path on one machine).
#pragma once

namespace fusenas {
namespace cpu {

enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// Best ISA this CPU supports, capped by FUSENAS_CPU_ISA when set (read on every
// call so tests can switch it).
Isa active_isa();
// What the hardware supports, ignoring the environment.
Isa hardware_isa();
const char* isa_name(Isa isa);
bool has_avx512_bf16();
// AVX-512 with AVX512_VNNI (vpdpwssd), ignoring the environment.
bool has_avx512_vnni();
// The AVX512-BF16 kernels run: AVX-512 active, AVX512_BF16 present, and
// FUSENAS_CPU_BF16 is not "0" (tests switch it off to cover the plain AVX-512
// kernels on a BF16 machine).
bool use_avx512_bf16();
// AVX-512 runs on 256-bit units (AMD family 19h, Zen 4: a 512-bit FMA issues as
// two halves), so 8-wide AVX2 kernels reach the same multiply-add throughput.
bool avx512_double_pumped();
// The batch-1 GEMVs prefetch their weight streams as non-temporal data
// (stream_prefetch.h): only where L1D holds at least 48 KB (Zen 5, Intel since
// Ice Lake). A non-temporal line that leaves L1 before its load is not in L2
// either, and on 32 KB L1s (Zen 4) the 8-16 KB prefetch window shares L1 with
// the tables or x terms of the same loop.
bool streamed_prefetch_nta();

}  // namespace cpu
}  // namespace fusenas
