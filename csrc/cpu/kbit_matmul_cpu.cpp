// Front end of the CPU k-bit matmul: converts bfloat16 activations to float32
// once (M*K work against the kernel's N*K), splits the output across OpenMP
// threads (parallel_work), and calls the kernel of the ISA chosen at run time.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/dtype_convert.h"
#include "common/kbit_layout.h"
#include "cpu/cpu_dispatch.h"
#include "cpu/kbit_kernels.h"
#include "cpu/thread_scratch.h"
#include "fusenas/kbit.h"

namespace fusenas {

namespace {

cpu::KbitKernel pick_matmul() {
  switch (cpu::active_isa()) {
    case cpu::Isa::kAvx512:
      return cpu::kbit_matmul_avx512;
    case cpu::Isa::kAvx2:
      return cpu::kbit_matmul_avx2;
    default:
      return cpu::kbit_matmul_scalar;
  }
}

cpu::KbitDequantKernel pick_dequant() {
  switch (cpu::active_isa()) {
    case cpu::Isa::kAvx512:
      return cpu::kbit_dequantize_avx512;
    case cpu::Isa::kAvx2:
      return cpu::kbit_dequantize_avx2;
    default:
      return cpu::kbit_dequantize_scalar;
  }
}

// Runs fn(m0, m1, n0, n1) on each thread's share of the output. N is split in
// multiples of kRowAlign when there are enough row tiles to go round (each
// thread then streams only its own weights); otherwise (few output rows and
// many x rows: convolutions as im2col GEMMs) M is split and each thread decodes
// all N rows, which costs little next to M x N x K multiply-adds.
template <typename Fn>
void parallel_work(int64_t M, int64_t N, int64_t work, int num_threads, Fn fn) {
  const int64_t tiles = (N + cpu::kRowAlign - 1) / cpu::kRowAlign;
  int threads = num_threads > 0 ? num_threads : omp_get_max_threads();
  // Waking a thread costs microseconds: small products (a few hundred
  // thousand multiply-adds, e.g. batch-1 layers of a small CNN) run on one.
  constexpr int64_t kMinWorkPerThread = int64_t{1} << 18;
  threads =
      static_cast<int>(std::min<int64_t>(threads, std::max<int64_t>(1, work / kMinWorkPerThread)));
  constexpr int64_t kMinRowsPerThread = 48;
  const bool split_m = tiles < 2 * threads && M >= kMinRowsPerThread * threads;
  const int64_t units = split_m ? M : tiles;
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, units)));
  if (threads == 1) {
    fn(int64_t{0}, M, int64_t{0}, N);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    const int nt = omp_get_num_threads();
    const int64_t u0 = units * t / nt, u1 = units * (t + 1) / nt;
    if (split_m) {
      if (u0 < u1) fn(u0, u1, int64_t{0}, N);
    } else {
      const int64_t n0 = std::min(N, u0 * cpu::kRowAlign), n1 = std::min(N, u1 * cpu::kRowAlign);
      if (n0 < n1) fn(int64_t{0}, M, n0, n1);
    }
  }
}

// Runs fn(n_begin, n_end) on each thread's share of the N rows.
template <typename Fn>
void parallel_rows(int64_t N, int64_t work, int num_threads, Fn fn) {
  parallel_work(0, N, work, num_threads,
                [&](int64_t, int64_t, int64_t n0, int64_t n1) { fn(n0, n1); });
}

// A bfloat16 bias as float32 (empty when there is none).
std::vector<float> bias_to_float(const uint16_t* bias, int64_t n) {
  std::vector<float> out(bias ? static_cast<size_t>(n) : 0);
  for (size_t i = 0; i < out.size(); ++i) out[i] = bf16_bits_to_float(bias[i]);
  return out;
}

// Rows [m0, m1) x columns [n0, n1) of float32 results (row stride N) ->
// bfloat16 y (row stride ldy); each thread converts its own share.
void store_bf16(const float* yf, int64_t N, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                uint16_t* y, int64_t ldy) {
  for (int64_t m = m0; m < m1; ++m)
    for (int64_t n = n0; n < n1; ++n) y[m * ldy + n] = float_to_bf16_bits(yf[m * N + n]);
}

// n elements of T in the calling thread's scratch for `slot`: not zero-filled
// (the kernels write before they read) and not freshly mapped on every call.
template <typename T>
cpu::ThreadScratch scratch(cpu::ScratchSlot slot, int64_t n) {
  return cpu::ThreadScratch(slot, sizeof(T) * static_cast<size_t>(std::max<int64_t>(n, 1)));
}

// bfloat16 activations on AVX512-BF16 CPUs (M >= 2): x stays bfloat16, padded
// with zeros to whole 128-element blocks so the kernel's loads need no masks
// (rows kbit_bf16_x_stride apart).
void bf16_avx512(const uint16_t* x, int64_t M, int64_t ldx, const KbitWeight& w,
                 const uint16_t* bias, uint16_t* y, int64_t ldy, int num_threads) {
  const int64_t K = w.K, N = w.N, Kp = cpu::kbit_bf16_x_stride(K);
  const auto xs = scratch<uint16_t>(cpu::ScratchSlot::kInput, M * Kp);
  uint16_t* xp = xs.as<uint16_t>();
  for (int64_t m = 0; m < M; ++m) {
    std::memcpy(xp + m * Kp, x + m * ldx, sizeof(uint16_t) * K);
    std::memset(xp + m * Kp + K, 0, sizeof(uint16_t) * (Kp - K));
  }
  const auto ys = scratch<float>(cpu::ScratchSlot::kOutput, M * N);
  float* yf = ys.as<float>();
  const std::vector<float> bf = bias_to_float(bias, N);
  parallel_work(M, N, M * N * w.K, num_threads,
                [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
                  const cpu::KbitProblemBf16 p{
                      xp + m0 * Kp, m1 - m0, Kp, bias ? bf.data() : nullptr, yf + m0 * N, N};
                  cpu::kbit_matmul_avx512_bf16(p, w, n0, n1);
                  store_bf16(yf, N, m0, m1, n0, n1, y, ldy);
                });
}

// 2-, 3-, 4-bit or ternary codes on AVX512-BF16 CPUs (kbit_codes_bf16_applies):
// prepares x as the kernels on integer codes expect (O(M K) vector work, against
// the kernel's M N K) and splits the output across threads. Returns false, having
// written nothing, where the GEMV cannot give the reference's result: with zero
// points it computes s * (sum(x q) - z sum(x)), so an infinite x gives inf - inf =
// NaN where the dequantised dot gives +-inf; a non-finite group sum sends the call
// to the decoding kernels, which multiply x by the dequantised weights.
bool codes_bf16(const void* x, int64_t M, int64_t ldx, DType dtype, const KbitWeight& w,
                const void* bias, void* y, int64_t ldy, int num_threads) {
  const int64_t K = w.K, N = w.N;
  const int64_t Kp = cpu::kbit_bf16_x_stride(K);
  const int64_t groups = K / w.group_size;
  const bool split = dtype == DType::kFloat32;
  const bool gemv = split || M <= cpu::kGemvCodesMaxMBf16;
  // Only the GEMV needs x's group sums: the GEMM folds zero points into its tables.
  const bool sums = gemv && w.zeros;
  // prepare writes every term the kernels read (the line past each row is never read).
  const auto his = scratch<uint16_t>(cpu::ScratchSlot::kInput, M * Kp);
  const auto los = scratch<uint16_t>(cpu::ScratchSlot::kInput2, split ? M * Kp : 0);
  uint16_t* hi = his.as<uint16_t>();
  uint16_t* lo = split ? los.as<uint16_t>() : nullptr;
  std::vector<float> xsum(sums ? static_cast<size_t>(M * groups) : 0);
  cpu::kbit_gemv_bf16_prepare(x, M, ldx, split, K, w.group_size, hi, lo, Kp,
                              sums ? xsum.data() : nullptr);
  for (const float v : xsum)
    if (!std::isfinite(v)) return false;
  const std::vector<float> bf =
      split ? std::vector<float>() : bias_to_float(static_cast<const uint16_t*>(bias), N);
  const float* b = split ? static_cast<const float*>(bias) : (bias ? bf.data() : nullptr);
  // float32 x gives float32 y; bfloat16 x gives bfloat16 y, which the kernels
  // round and write themselves.
  float* yf = split ? static_cast<float*>(y) : nullptr;
  uint16_t* yb = split ? nullptr : static_cast<uint16_t*>(y);
  parallel_work(M, N, M * N * K, num_threads, [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
    const cpu::KbitGemvBf16Problem p{hi + m0 * Kp,
                                     split ? lo + m0 * Kp : nullptr,
                                     m1 - m0,
                                     Kp,
                                     sums ? xsum.data() + m0 * groups : nullptr,
                                     b,
                                     yf ? yf + m0 * ldy : nullptr,
                                     yb ? yb + m0 * ldy : nullptr,
                                     ldy};
    if (gemv)
      cpu::kbit_gemv_avx512_bf16(p, w, n0, n1);
    else
      cpu::kbit_gemm_codes_avx512_bf16(p, w, n0, n1);
  });
  return true;
}

}  // namespace

void kbit_matmul_cpu(const void* x, int64_t M, int64_t ldx, DType dtype, const KbitWeight& w,
                     const void* bias, void* y, int64_t ldy, int num_threads) {
  const int64_t K = w.K, N = w.N;
  std::vector<float> bbuf;
  if (cpu::use_avx512_bf16() && cpu::kbit_codes_bf16_applies(w, M, dtype == DType::kFloat32) &&
      codes_bf16(x, M, ldx, dtype, w, bias, y, ldy, num_threads))
    return;
  if (dtype == DType::kBFloat16 && M >= 2 && cpu::use_avx512_bf16()) {
    bf16_avx512(static_cast<const uint16_t*>(x), M, ldx, w, static_cast<const uint16_t*>(bias),
                static_cast<uint16_t*>(y), ldy, num_threads);
    return;
  }
  cpu::KbitProblem p{static_cast<const float*>(x), M,  ldx, static_cast<const float*>(bias),
                     static_cast<float*>(y),       ldy};
  // bfloat16 x: float32 copies of x and of the results.
  const bool bf16 = dtype == DType::kBFloat16;
  const auto xs = scratch<float>(cpu::ScratchSlot::kInput, bf16 ? M * K : 0);
  const auto ys = scratch<float>(cpu::ScratchSlot::kOutput, bf16 ? M * N : 0);
  float* ybuf = bf16 ? ys.as<float>() : nullptr;
  if (bf16) {
    float* xbuf = xs.as<float>();
    const uint16_t* xb = static_cast<const uint16_t*>(x);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t k = 0; k < K; ++k) xbuf[m * K + k] = bf16_bits_to_float(xb[m * ldx + k]);
    p = {xbuf, M, K, nullptr, ybuf, N};
    bbuf = bias_to_float(static_cast<const uint16_t*>(bias), N);
    if (bias) p.bias = bbuf.data();
  }
  const cpu::KbitKernel kernel = pick_matmul();
  parallel_work(M, N, M * N * w.K, num_threads,
                [&](int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
                  const cpu::KbitProblem sub{p.x + m0 * p.ldx, m1 - m0,          p.ldx,
                                             p.bias,           p.y + m0 * p.ldy, p.ldy};
                  kernel(sub, w, n0, n1);
                  if (ybuf) store_bf16(ybuf, N, m0, m1, n0, n1, static_cast<uint16_t*>(y), ldy);
                });
}

void kbit_lut_pack_codes(const KbitWeight& w, uint8_t* out, int num_threads) {
  constexpr int64_t P = kbit::kLutTilesPerPass;
  const int64_t V = kbit::lut_vectors_per_pair(w.bits);
  const int64_t tiles = (w.N + 15) / 16, pairs = kbit::num_blocks(w.K) * 4;
  // Bits 0-1 of element e of a block sit in 32-bit word e mod 8 of its first
  // plane at bit 2 (e div 8); 3-bit's bit 2 in word e mod 4 of the 1-bit plane
  // that follows (32 bytes on) at bit e div 4 (kbit_format.md).
  auto plane_word = [&](const uint32_t* blk, int plane, int64_t e) -> uint32_t {
    return plane == 0 ? (blk[e % 8] >> (2 * (e / 8))) & 3u : (blk[8 + e % 4] >> (e / 4)) & 1u;
  };
  parallel_rows(tiles * 16, w.N * w.K, num_threads, [&](int64_t n0, int64_t n1) {
    for (int64_t t = n0 / 16; t < (n1 + 15) / 16; ++t) {
      // Pass t / P: per pair of chunks, V vectors of in_pass tiles x 64 bytes.
      const int64_t in_pass = std::min(P, tiles - t / P * P);
      uint8_t* pass = out + t / P * P * pairs * V * 64;
      for (int64_t pr = 0; pr < pairs; ++pr)
        for (int64_t r = 0; r < 16; ++r) {
          const int64_t n = 16 * t + r;
          uint32_t words[3] = {0, 0, 0};  // (b1, b0) of chunks 2pr, 2pr + 1; b2 of both
          if (n < w.N) {
            uint32_t blk[12];
            std::memcpy(blk, w.codes + n * w.row_stride + (pr / 4) * 16 * w.bits, 16 * w.bits);
            for (int h = 0; h < 2; ++h)
              for (int u = 0; u < 16; ++u) {
                const int64_t e = 32 * (pr % 4) + 16 * h + u;
                const uint32_t q = plane_word(blk, 0, e);
                words[h] |= ((q >> 1) << u) | ((q & 1u) << (16 + u));
                if (w.bits == 3) words[2] |= plane_word(blk, 1, e) << (16 * h + u);
              }
          }
          for (int64_t v = 0; v < V; ++v)
            std::memcpy(pass + (((pr * V + v) * in_pass + t % P) * 16 + r) * 4, &words[v], 4);
        }
    }
  });
}

bool kbit_lut_available() {
  return cpu::active_isa() == cpu::Isa::kAvx512 && cpu::has_avx512_vnni();
}

bool kbit_lut_enabled() {
  if (!kbit_lut_available()) return false;
  const char* env = std::getenv("FUSENAS_CPU_LUT");
  return env == nullptr || std::strcmp(env, "0") != 0;
}

bool kbit_gemv_lut_cpu(const void* x, DType dtype, const KbitLutWeight& w, const void* bias,
                       void* y, int num_threads) {
  if (!kbit_lut_available()) return false;
  const bool f32 = dtype == DType::kFloat32;
  const int64_t blocks = kbit::num_blocks(w.K);
  const auto tables = scratch<int16_t>(cpu::ScratchSlot::kInput, blocks * kbit::kBlock * 4);
  const auto tscale = scratch<float>(cpu::ScratchSlot::kInput2, blocks);
  std::vector<float> xsum(static_cast<size_t>(w.K / w.group_size));
  if (!cpu::kbit_lut_prepare(x, f32, w.K, w.group_size, tables.as<int16_t>(), tscale.as<float>(),
                             xsum.data()))
    return false;
  const std::vector<float> bf =
      f32 ? std::vector<float>() : bias_to_float(static_cast<const uint16_t*>(bias), w.N);
  const cpu::KbitLutProblem p{tables.as<int16_t>(),
                              tscale.as<float>(),
                              xsum.data(),
                              f32 ? static_cast<const float*>(bias) : (bias ? bf.data() : nullptr),
                              f32 ? static_cast<float*>(y) : nullptr,
                              f32 ? nullptr : static_cast<uint16_t*>(y)};
  // Threads take whole passes: parallel_rows splits passes * kRowAlign
  // stand-in rows in multiples of kRowAlign, one per pass.
  const int64_t passes = ((w.N + 15) / 16 + kbit::kLutTilesPerPass - 1) / kbit::kLutTilesPerPass;
  parallel_rows(passes * cpu::kRowAlign, w.N * w.K, num_threads, [&](int64_t n0, int64_t n1) {
    cpu::kbit_gemv_lut_avx512_vnni(p, w, n0 / cpu::kRowAlign, n1 / cpu::kRowAlign);
  });
  return true;
}

void kbit_dequantize_cpu(const KbitWeight& w, float* out, int num_threads) {
  const cpu::KbitDequantKernel kernel = pick_dequant();
  parallel_rows(w.N, w.N * w.K, num_threads,
                [&](int64_t n0, int64_t n1) { kernel(w, out, n0, n1); });
}

const char* kbit_cpu_isa() { return cpu::isa_name(cpu::active_isa()); }

}  // namespace fusenas
