// Latency and throughput of vdpbf16ps and vfmadd231ps (zmm) on this CPU: C
// independent accumulator chains, each instruction depending on the previous
// one of its chain. With one chain the time per instruction is the latency;
// with enough chains, the reciprocal throughput. Single thread; prints cycles
// at the clock given as argv[1] in GHz (perf stat reports it; default 4.43).
//
//   g++ -O2 -mavx512f -mavx512bf16 -o /tmp/fp_throughput \
//       benchmarks/microbench/fp_throughput.cpp && /tmp/fp_throughput 4.43
#include <immintrin.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace {

template <int C, bool BF16>
__attribute__((noinline)) float run(long iters, __m512 x, __m512 y) {
  __m512 acc[C];
  for (int i = 0; i < C; ++i) acc[i] = _mm512_set1_ps(static_cast<float>(i));
  const __m512bh a = _mm512_cvtne2ps_pbh(x, y), b = _mm512_cvtne2ps_pbh(y, x);
  for (long it = 0; it < iters; ++it) {
#pragma GCC unroll 32
    for (int i = 0; i < C; ++i)
      acc[i] = BF16 ? _mm512_dpbf16_ps(acc[i], a, b) : _mm512_fmadd_ps(acc[i], x, y);
  }
  float s = 0.f;
  for (int i = 0; i < C; ++i) s += _mm512_reduce_add_ps(acc[i]);
  return s;
}

template <int C, bool BF16>
void report(double ghz) {
  const long iters = 200000000 / C;
  const auto t0 = std::chrono::steady_clock::now();
  volatile float sink = run<C, BF16>(iters, _mm512_set1_ps(1e-3f), _mm512_set1_ps(2e-3f));
  (void)sink;
  const double ns =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%-9s chains %2d: %.2f cycles per instruction\n", BF16 ? "vdpbf16ps" : "vfmadd", C,
              ns / (static_cast<double>(iters) * C) * ghz);
}

}  // namespace

int main(int argc, char** argv) {
  const double ghz = argc > 1 ? std::atof(argv[1]) : 4.43;
  report<1, true>(ghz);
  report<8, true>(ghz);
  report<12, true>(ghz);
  report<16, true>(ghz);
  report<1, false>(ghz);
  report<8, false>(ghz);
  report<16, false>(ghz);
}
