// CUDA k-bit quantized matmul, y = x @ dequant(W)^T + bias, and the
// dequantize kernel. W is packed as csrc/common/kbit_layout.h describes
// (format v1); the thread views of that layout are in kbit_lane_decode.h.
// x / y / bias are float32, bfloat16 or float16; all arithmetic is float32.
//
// Two matmul paths, chosen by M (kGemvMaxM):
// - GEMV (small M: decode-time inference, memory- then decode-bound). A CTA
//   stages MT rows of x as float32 in shared memory (padded per 128-element
//   block so the float4 reads of one warp hit 32 distinct banks) and each
//   warp streams R rows of codes straight from global memory: P lanes share a
//   block and each lane issues ONE 16-byte load per bit plane (LaneView), so
//   a warp's load is 32 x 16 contiguous bytes of the widest plane. A code
//   becomes the float 2^23 + q with one LOP3 (a PRMT for bytes; the i2f unit
//   runs at a quarter rate) and q - z is one FADD against 2^23 + z, exact for
//   integer zero points (always so for symmetric weights; other zero points
//   take a second FADD and stay exact). (q - z) feeds MT FMAs and the group
//   scale is applied once per group (acc += s * sum x (q - z)), so a weight
//   costs about 3 + MT instructions. A warp-shuffle reduction ends it.
//   Codes are read exactly once; M > MT re-reads them from L2 in
//   neighbouring CTAs (the m-tile index varies fastest in blockIdx.x).
// - GEMM (larger M, FMA-bound). 64 x 64 output tiles, 256 threads, 4 x 4
//   register tiles (16 FMAs per two LDS.128), k-steps of 32 double-buffered in
//   shared memory so one __syncthreads per step suffices. Each thread keeps
//   the packed words of its (row, octet) for a whole 128-element block in
//   registers (OctetView: the same words serve the block's 4 k-steps),
//   decodes 8 weights per step into the k-major W tile, and stores 8 x values
//   into the k-major x tile with an XOR swizzle that keeps both the transposed
//   stores and the float4 reads bank-conflict free. The next step's codes,
//   scales and x are loaded into registers before the FMAs of this one.
//
// Kernels are templated on the bit width (and the GEMV on MT): 40 kernels per
// arch, compiled in about a minute on 2 cores; the dtype is a warp-uniform
// switch outside the inner loops. Loads are 128-bit
// when the codes are 16-byte aligned, which the launcher checks (a tensor
// view can start anywhere); otherwise they fall back to byte loads instead of
// faulting. K is never read past: x is zero-filled and scale indices are
// clamped, so padded codes at the end of a row contribute 0 * finite.
#ifndef FUSENAS_WITH_CUDA_API
#define FUSENAS_WITH_CUDA_API
#endif

#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype_convert.h"
#include "common/fp16_convert.h"
#include "common/kbit_lane_decode.h"
#include "common/kbit_layout.h"
#include "fusenas/kbit.h"

namespace fusenas {
namespace {

// M up to this runs the GEMV (MT rows of x per pass); above it the tiled GEMM.
// With SIMT FMAs a 64 x 64 GEMM tile only pays off once M fills its rows and
// M/64 * N/64 fills the SMs; benchmarks/bench_kbit_cuda.py is the place to
// retune this.
constexpr int64_t kGemvMaxM = 64;
// Largest K the kernels accept (indices inside a row are 32-bit).
constexpr int64_t kMaxK = int64_t{1} << 30;

struct MatmulArgs {
  const void* x;
  void* y;
  const void* bias;
  const uint8_t* codes;
  const float* scales;
  const float* zeros;  // null: symmetric, zero point zsym
  int64_t M;
  int64_t ldx;
  int64_t ldy;
  int64_t N;
  int64_t row_stride;
  int K;
  int group_size;
  int groups;
  float zsym;
  DType dtype;
  bool codes_aligned;  // codes and row_stride are multiples of 16 bytes
  bool x_vec4;         // x rows start at multiples of 4 elements, vector-aligned
};

struct DequantArgs {
  const uint8_t* codes;
  const float* scales;
  const float* zeros;
  void* out;  // (N, K) row-major in DequantArgs::dtype
  int64_t N;
  int64_t row_stride;
  int K;
  int group_size;
  int groups;
  float zsym;
  bool codes_aligned;
  bool out_vec;  // out and K allow 16-byte stores of a row's octets
};

// ------------------------------------------------------------- helpers ----

__device__ __forceinline__ float lane_of(const float4& v, int c) {
  return c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w;
}

// 2^23 + code of (word c, field f) of a lane's pre-shifted block words
// (LaneView). 8-bit codes are a byte: one PRMT builds 0x4B0000cc.
template <int BITS>
__device__ __forceinline__ float code_plus_2p23(
    const uint32_t (&w)[kbit::LaneView<BITS>::kPlanes][4], int c, int f) {
  using L = kbit::LaneView<BITS>;
  if constexpr (BITS == 8) {
    const uint32_t u = __byte_perm(w[0][c], 0x4B000000u, 0x7440u | static_cast<uint32_t>(f));
    return __uint_as_float(u);
  } else {
    uint32_t wc[L::kPlanes];
#pragma unroll
    for (int i = 0; i < L::kPlanes; ++i) wc[i] = w[i][c];
    return kbit::uint_plus_2p23(L::code(wc, f));
  }
}

__device__ __forceinline__ int min_int(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

// 16 bytes of packed codes: one 128-bit load, or byte loads when misaligned.
__device__ __forceinline__ uint4 load_u4(const uint8_t* p, bool aligned) {
  if (aligned) return __ldg(reinterpret_cast<const uint4*>(p));
  uint32_t v[4];
#pragma unroll
  for (int c = 0; c < 4; ++c) {
    v[c] = static_cast<uint32_t>(__ldg(p + 4 * c)) |
           (static_cast<uint32_t>(__ldg(p + 4 * c + 1)) << 8) |
           (static_cast<uint32_t>(__ldg(p + 4 * c + 2)) << 16) |
           (static_cast<uint32_t>(__ldg(p + 4 * c + 3)) << 24);
  }
  return make_uint4(v[0], v[1], v[2], v[3]);
}

// Activation loads / stores of one dtype, converted to / from float32.
template <DType DT>
struct Act;

template <>
struct Act<DType::kFloat32> {
  static __device__ __forceinline__ float load(const void* p, int64_t i) {
    return __ldg(static_cast<const float*>(p) + i);
  }
  // i is a multiple of 4 and the row is vector-aligned (MatmulArgs::x_vec4).
  static __device__ __forceinline__ float4 load4(const void* p, int64_t i) {
    return __ldg(reinterpret_cast<const float4*>(static_cast<const float*>(p) + i));
  }
  static __device__ __forceinline__ void store(void* p, int64_t i, float v) {
    static_cast<float*>(p)[i] = v;
  }
};

template <>
struct Act<DType::kBFloat16> {
  static __device__ __forceinline__ float cvt(uint32_t h) {
    return bf16_bits_to_float(static_cast<uint16_t>(h));
  }
  static __device__ __forceinline__ float load(const void* p, int64_t i) {
    return cvt(__ldg(static_cast<const unsigned short*>(p) + i));
  }
  static __device__ __forceinline__ float4 load4(const void* p, int64_t i) {
    const uint2 u = __ldg(reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(p) + i));
    return make_float4(cvt(u.x & 0xffffu), cvt(u.x >> 16), cvt(u.y & 0xffffu), cvt(u.y >> 16));
  }
  static __device__ __forceinline__ void store(void* p, int64_t i, float v) {
    static_cast<uint16_t*>(p)[i] = float_to_bf16_bits(v);
  }
};

template <>
struct Act<DType::kFloat16> {
  static __device__ __forceinline__ float cvt(uint32_t h) {
    return half_bits_to_float(static_cast<uint16_t>(h));
  }
  static __device__ __forceinline__ float load(const void* p, int64_t i) {
    return cvt(__ldg(static_cast<const unsigned short*>(p) + i));
  }
  static __device__ __forceinline__ float4 load4(const void* p, int64_t i) {
    const uint2 u = __ldg(reinterpret_cast<const uint2*>(static_cast<const uint16_t*>(p) + i));
    return make_float4(cvt(u.x & 0xffffu), cvt(u.x >> 16), cvt(u.y & 0xffffu), cvt(u.y >> 16));
  }
  static __device__ __forceinline__ void store(void* p, int64_t i, float v) {
    static_cast<uint16_t*>(p)[i] = float_to_half_bits(v);
  }
};

// Four x values at k .. k+3 of one row (base = row * ldx); zero past kend
// (the valid length of the row from `base`) and for rows past M.
template <DType DT>
__device__ __forceinline__ float4 load_x4(const MatmulArgs& a, bool row_ok, int64_t base, int k,
                                          int kend) {
  if (row_ok && a.x_vec4 && k + 4 <= kend) return Act<DT>::load4(a.x, base + k);
  float v[4];
#pragma unroll
  for (int c = 0; c < 4; ++c)
    v[c] = (row_ok && k + c < kend) ? Act<DT>::load(a.x, base + k + c) : 0.f;
  return make_float4(v[0], v[1], v[2], v[3]);
}

// y[m, n] = v + bias[n], in the activation dtype.
template <DType DT>
__device__ __forceinline__ void store_y(const MatmulArgs& a, int64_t m, int64_t n, float v) {
  if (a.bias) v += Act<DT>::load(a.bias, n);
  Act<DT>::store(a.y, m * a.ldy + n, v);
}

__device__ __forceinline__ void store_y_any(const MatmulArgs& a, int64_t m, int64_t n, float v) {
  switch (a.dtype) {
    case DType::kBFloat16:
      store_y<DType::kBFloat16>(a, m, n, v);
      break;
    case DType::kFloat16:
      store_y<DType::kFloat16>(a, m, n, v);
      break;
    default:
      store_y<DType::kFloat32>(a, m, n, v);
      break;
  }
}

// ---------------------------------------------------------------- GEMV ----

template <int BITS, int MT>
struct GemvShape {
  static constexpr int kLanes = kbit::LaneView<BITS>::kLanes;  // lanes per block (P)
  static constexpr int kBlocksPerWarp = 32 / kLanes;
  // Rows per warp: R rows share every x value read from shared memory, and
  // 2 * MT * R accumulators + 4 * planes * R code words + 4 * MT x values
  // must fit in 128 registers without spilling: MT * R <= 8, R <= 4.
  static constexpr int kRows = MT >= 4 ? 8 / MT : 4;
  // 16 rows per CTA whatever R: the x staging is amortised over 16 rows.
  static constexpr int kWarps = 16 / kRows;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kRowsPerCta = kRows * kWarps;
  // x staged per pass: MT * kChunk floats (32 KiB + padding, under the 48 KiB
  // static limit); kChunk / 128 >= kBlocksPerWarp keeps every lane busy.
  static constexpr int kChunk = 8192 / MT;
  // Floats after each 128-element block: P lanes read 16P bytes of a block
  // and a warp's 8-lane phase spans 8/P blocks, so a stride of 128 + 4P floats
  // puts consecutive blocks on disjoint banks (P = 8 needs none).
  static constexpr int kPad = kLanes == 8 ? 0 : 4 * kLanes;
  static constexpr int kBlockStride = 128 + kPad;
  static constexpr int kRowFloats = (kChunk / 128) * kBlockStride;
  static_assert(kChunk / 128 >= kBlocksPerWarp, "chunk too short for a warp");
  static_assert(MT * kRows <= 32, "one output per lane in the epilogue");
};

// Stages rows m0 .. m0+MT-1 of x, k in [kc0, kc0 + nel), into xs (float32,
// block-strided), zero past K and past M. nel is a multiple of 128.
template <DType DT, typename G, int MT>
__device__ __forceinline__ void gemv_stage_x(const MatmulArgs& a, float* xs, int64_t m0, int kc0,
                                             int nel) {
  const int kend = a.K - kc0;
  // Not unrolled: the scheduler would hoist the loads of all MT rows and spill.
#pragma unroll 1
  for (int m = 0; m < MT; ++m) {
    const bool row_ok = m0 + m < a.M;
    const int64_t base = (m0 + m) * a.ldx + kc0;
    float* dst = xs + m * G::kRowFloats;
    for (int i = 4 * static_cast<int>(threadIdx.x); i < nel; i += 4 * G::kThreads) {
      const float4 v = load_x4<DT>(a, row_ok, base, i, kend);
      *reinterpret_cast<float4*>(dst + (i >> 7) * G::kBlockStride + (i & 127)) = v;
    }
  }
}

// gacc += x * (q - z) for field f of a lane's block words w (R rows). With
// integer zero points (always for symmetric weights) q - z is a single FADD.
template <int BITS, int MT, int R, bool kIntZero>
__device__ __forceinline__ void gemv_fma_field(
    const uint32_t (&w)[R][kbit::LaneView<BITS>::kPlanes][4], int f, const float4 (&xv)[MT],
    const float (&zc)[R], const float (&zr)[R], float (&gacc)[MT][R]) {
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      float q = code_plus_2p23<BITS>(w[r], c, f) - zc[r];
      if (!kIntZero) q -= zr[r];
#pragma unroll
      for (int m = 0; m < MT; ++m) gacc[m][r] = fmaf(lane_of(xv[m], c), q, gacc[m][r]);
    }
  }
}

template <int BITS, int MT>
__global__ void __launch_bounds__(GemvShape<BITS, MT>::kThreads,
                                  512 / GemvShape<BITS, MT>::kThreads)
    kbit_gemv_kernel(const MatmulArgs a) {
  using G = GemvShape<BITS, MT>;
  using L = kbit::LaneView<BITS>;
  constexpr int R = G::kRows;
  constexpr int P = L::kLanes;
  constexpr int NP = L::kPlanes;
  __shared__ __align__(16) float xs[MT * G::kRowFloats];

  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t m_tiles = (a.M + MT - 1) / MT;
  const int64_t m0 = (blockIdx.x % m_tiles) * MT;
  const int64_t n0 = (blockIdx.x / m_tiles) * G::kRowsPerCta + warp * R;
  const int gi = lane / P;  // block slot of this lane in the warp
  const int j = lane % P;   // lane inside the block

  // Rows past N repeat row N-1 (their results are never stored), so that every
  // warp reaches the CTA barriers.
  int64_t nrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) nrow[r] = min_i64(n0 + r, a.N - 1);

  // Per row: the group's scale and its zero point split for uint_plus_2p23.
  float acc[MT][R], gacc[MT][R], sc[R], zc[R], zr[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    sc[r] = 0.f;
    zc[r] = zr[r] = 0.f;
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[m][r] = gacc[m][r] = 0.f;
  }
  int next_k = 0;         // first k of this lane's next group
  bool int_zero = false;  // every row's zero point in this group is an integer

  // Folds the finished group into acc and loads the scale / zero of k's group.
  auto next_group = [&](int k) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        acc[m][r] = fmaf(sc[r], gacc[m][r], acc[m][r]);
        gacc[m][r] = 0.f;
      }
    }
    const int g = min_int(k, a.K - 1) / a.group_size;  // padded k: the last group
    next_k = (g + 1) * a.group_size;
    int_zero = true;
#pragma unroll
    for (int r = 0; r < R; ++r) {
      sc[r] = __ldg(a.scales + nrow[r] * a.groups + g);
      const kbit::SplitZero z =
          kbit::split_zero(a.zeros ? __ldg(a.zeros + nrow[r] * a.groups + g) : a.zsym);
      zc[r] = z.zc;
      zr[r] = z.zr;
      int_zero = int_zero && z.zr == 0.f;
    }
  };

  for (int kc0 = 0; kc0 < a.K; kc0 += G::kChunk) {
    const int nblk = (min_int(G::kChunk, a.K - kc0) + 127) >> 7;
    __syncthreads();  // the previous chunk's reads are done
    switch (a.dtype) {
      case DType::kBFloat16:
        gemv_stage_x<DType::kBFloat16, G, MT>(a, xs, m0, kc0, nblk * 128);
        break;
      case DType::kFloat16:
        gemv_stage_x<DType::kFloat16, G, MT>(a, xs, m0, kc0, nblk * 128);
        break;
      default:
        gemv_stage_x<DType::kFloat32, G, MT>(a, xs, m0, kc0, nblk * 128);
        break;
    }
    __syncthreads();

    for (int b = gi; b < nblk; b += G::kBlocksPerWarp) {
      const int kb = kc0 + 128 * b;
      const int64_t block_off = static_cast<int64_t>(kb >> 7) * (16 * BITS);
      uint32_t w[R][NP][4];
#pragma unroll
      for (int r = 0; r < R; ++r) {
        const uint8_t* blk = a.codes + nrow[r] * a.row_stride + block_off;
#pragma unroll
        for (int i = 0; i < NP; ++i) {
          const uint4 u = load_u4(blk + L::chunk_offset(i, j), a.codes_aligned);
          const int sh = L::pre_shift(i, j);
          w[r][i][0] = u.x >> sh;
          w[r][i][1] = u.y >> sh;
          w[r][i][2] = u.z >> sh;
          w[r][i][3] = u.w >> sh;
        }
      }
      const float* xb = xs + b * G::kBlockStride + 4 * j;
#pragma unroll
      for (int f = 0; f < L::kFields; ++f) {
        const int k = kb + 4 * P * f + 4 * j;
        if (k >= next_k) next_group(k);
        float4 xv[MT];
#pragma unroll
        for (int m = 0; m < MT; ++m)
          xv[m] = *reinterpret_cast<const float4*>(xb + m * G::kRowFloats + 4 * P * f);
        if (int_zero)
          gemv_fma_field<BITS, MT, R, true>(w, f, xv, zc, zr, gacc);
        else
          gemv_fma_field<BITS, MT, R, false>(w, f, xv, zc, zr, gacc);
      }
    }
  }
#pragma unroll
  for (int r = 0; r < R; ++r) {
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      float v = fmaf(sc[r], gacc[m][r], acc[m][r]);
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
      acc[m][r] = v;
    }
  }
  // Lane i stores output i = (m, r).
#pragma unroll
  for (int i = 0; i < MT * R; ++i) {
    const int m = i / R, r = i % R;
    if (lane == i && m0 + m < a.M && n0 + r < a.N) store_y_any(a, m0 + m, n0 + r, acc[m][r]);
  }
}

// ---------------------------------------------------------------- GEMM ----

constexpr int kGemmBM = 64;  // rows of x per CTA
constexpr int kGemmBN = 64;  // output features per CTA
constexpr int kGemmBK = 32;  // k per pipeline step (a quarter of a packed block)
constexpr int kGemmThreads = 256;

// Eight x values at k .. k+7 of one row.
template <DType DT>
__device__ __forceinline__ void gemm_load_x8(const MatmulArgs& a, bool row_ok, int64_t base, int k,
                                             float (&xv)[8]) {
  const float4 lo = load_x4<DT>(a, row_ok, base, k, a.K);
  const float4 hi = load_x4<DT>(a, row_ok, base, k + 4, a.K);
  xv[0] = lo.x;
  xv[1] = lo.y;
  xv[2] = lo.z;
  xv[3] = lo.w;
  xv[4] = hi.x;
  xv[5] = hi.y;
  xv[6] = hi.z;
  xv[7] = hi.w;
}

template <int BITS>
__global__ void __launch_bounds__(kGemmThreads, 2) kbit_gemm_kernel(const MatmulArgs a) {
  using O = kbit::OctetView<BITS>;
  constexpr int NP = O::kPlanes;
  // k-major tiles, double-buffered: 2 x (32 x 64 + 32 x 64) floats = 32 KiB.
  __shared__ __align__(16) float xs[2][kGemmBK][kGemmBM];
  __shared__ __align__(16) float ws[2][kGemmBK][kGemmBN];

  const int tid = threadIdx.x;
  const int64_t m_tiles = (a.M + kGemmBM - 1) / kGemmBM;
  const int64_t m0 = (blockIdx.x % m_tiles) * kGemmBM;
  const int64_t n0 = (blockIdx.x / m_tiles) * kGemmBN;

  // Decode role: weight row dn of the tile, octet dj (k = 8dj .. 8dj+7 of each step).
  const int dn = tid & 63, dj = tid >> 6;
  const int64_t wn = min_i64(n0 + dn, a.N - 1);
  const uint8_t* wrow = a.codes + wn * a.row_stride;
  const float* srow = a.scales + wn * a.groups;
  const float* zrow = a.zeros ? a.zeros + wn * a.groups : nullptr;
  // x role: tile row xm, k = 8xj .. 8xj+7 of each step (4 threads per 32 k of a row).
  const int xm = tid >> 2, xj = tid & 3;
  const bool x_ok = m0 + xm < a.M;
  const int64_t xbase = (m0 + xm) * a.ldx;
  // Compute role: a warp covers 4 x 8 threads of 4 x 4 outputs, so its float4
  // reads touch 64 bytes of x and 128 bytes of W per k: one wavefront each.
  const int warp = tid >> 5, lane = tid & 31;
  const int tn = (warp & 1) * 8 + (lane & 7);
  const int tm = (warp >> 1) * 4 + (lane >> 3);

  uint32_t pw[NP][8];  // packed words of (wn, octet dj) for the current block
  float xv[8];         // x for the next step
  float sc = 0.f, zp = a.zsym;
  const int steps = (a.K + kGemmBK - 1) / kGemmBK;

  auto prefetch = [&](int s) {
    const int k0 = kGemmBK * s;
    if ((s & 3) == 0) {
      const uint8_t* blk = wrow + static_cast<int64_t>(s >> 2) * (16 * BITS);
#pragma unroll
      for (int i = 0; i < NP; ++i) {
#pragma unroll
        for (int c = 0; c < O::chunks(i); ++c) {
          const uint4 u = load_u4(blk + O::chunk_offset(i, 8 * dj) + 16 * c, a.codes_aligned);
          pw[i][4 * c] = u.x;
          pw[i][4 * c + 1] = u.y;
          pw[i][4 * c + 2] = u.z;
          pw[i][4 * c + 3] = u.w;
        }
      }
    }
    const int g = min_int(k0 + 8 * dj, a.K - 1) / a.group_size;  // groups are 16-aligned
    sc = __ldg(srow + g);
    if (zrow) zp = __ldg(zrow + g);
    switch (a.dtype) {
      case DType::kBFloat16:
        gemm_load_x8<DType::kBFloat16>(a, x_ok, xbase, k0 + 8 * xj, xv);
        break;
      case DType::kFloat16:
        gemm_load_x8<DType::kFloat16>(a, x_ok, xbase, k0 + 8 * xj, xv);
        break;
      default:
        gemm_load_x8<DType::kFloat32>(a, x_ok, xbase, k0 + 8 * xj, xv);
        break;
    }
  };

  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[i][c] = 0.f;
  }

  prefetch(0);
  for (int s = 0; s < steps; ++s) {
    const int buf = s & 1;
    // Tiles of step s. Writing buffer `buf` is safe: every thread passed the
    // barrier of step s-1 after its FMAs of step s-2 on this buffer.
    const int e0 = 32 * (s & 3) + 8 * dj;
    const int kd = kGemmBK * s + 8 * dj;
#pragma unroll
    for (int t = 0; t < 8; ++t) {
      const float q = kbit::small_uint_to_float(O::code(pw, e0, t));
      ws[buf][8 * dj + t][dn] = kd + t < a.K ? (q - zp) * sc : 0.f;
    }
    // x tile column m holds row m; XOR by 8 * (k / 8 % 4) spreads the four
    // threads of a row over four bank octets.
#pragma unroll
    for (int t = 0; t < 8; ++t) xs[buf][8 * xj + t][xm ^ (xj << 3)] = xv[t];
    __syncthreads();
    if (s + 1 < steps) prefetch(s + 1);
#pragma unroll
    for (int kk = 0; kk < kGemmBK; ++kk) {
      const float4 xa =
          *reinterpret_cast<const float4*>(&xs[buf][kk][(4 * tm) ^ (((kk >> 3) & 3) << 3)]);
      const float4 wb = *reinterpret_cast<const float4*>(&ws[buf][kk][4 * tn]);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float xi = lane_of(xa, i);
        acc[i][0] = fmaf(xi, wb.x, acc[i][0]);
        acc[i][1] = fmaf(xi, wb.y, acc[i][1]);
        acc[i][2] = fmaf(xi, wb.z, acc[i][2]);
        acc[i][3] = fmaf(xi, wb.w, acc[i][3]);
      }
    }
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + 4 * tm + i;
    if (m >= a.M) continue;
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t n = n0 + 4 * tn + c;
      if (n < a.N) store_y_any(a, m, n, acc[i][c]);
    }
  }
}

// ---------------------------------------------------------- dequantize ----

constexpr int kDequantThreads = 256;

// Eight values of a row, stored at out[i .. i+7] in DT: two 16-byte stores for
// float32, one for the 16-bit types (vec: 16-byte aligned and inside the row).
template <DType DT>
__device__ __forceinline__ void store_octet(void* out, int64_t i, const float (&v)[8], bool vec,
                                            int valid) {
  if (vec && valid >= 8) {
    if constexpr (DT == DType::kFloat32) {
      float4* dst = reinterpret_cast<float4*>(static_cast<float*>(out) + i);
      dst[0] = make_float4(v[0], v[1], v[2], v[3]);
      dst[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else {
      uint32_t h[8];
#pragma unroll
      for (int t = 0; t < 8; ++t) {
        h[t] = DT == DType::kBFloat16 ? float_to_bf16_bits(v[t]) : float_to_half_bits(v[t]);
      }
      *reinterpret_cast<uint4*>(static_cast<uint16_t*>(out) + i) =
          make_uint4(h[0] | h[1] << 16, h[2] | h[3] << 16, h[4] | h[5] << 16, h[6] | h[7] << 16);
    }
    return;
  }
#pragma unroll
  for (int t = 0; t < 8; ++t) {
    if (t < valid) Act<DT>::store(out, i + t, v[t]);
  }
}

// One thread per (row, octet of K): consecutive threads write consecutive 16
// or 32 bytes of a row; the 16 threads of a block share its codes through L1.
// Writing the 16-bit dtypes directly halves the bytes of the large-M path
// (dequantize, then a cuBLAS GEMM; see kbit_matmul.py) against float32 + a cast.
template <int BITS, DType DT>
__global__ void __launch_bounds__(kDequantThreads) kbit_dequant_kernel(const DequantArgs a) {
  using O = kbit::OctetView<BITS>;
  constexpr int NP = O::kPlanes;
  const int k0 =
      (static_cast<int>(blockIdx.x) * kDequantThreads + static_cast<int>(threadIdx.x)) * 8;
  if (k0 >= a.K) return;
  const int e0 = k0 & 127;
  const int64_t block_off = static_cast<int64_t>(k0 >> 7) * (16 * BITS);
  const int g = k0 / a.group_size;
  for (int64_t n = blockIdx.y; n < a.N; n += gridDim.y) {
    const uint8_t* blk = a.codes + n * a.row_stride + block_off;
    uint32_t w[NP][8];
#pragma unroll
    for (int i = 0; i < NP; ++i) {
#pragma unroll
      for (int c = 0; c < O::chunks(i); ++c) {
        const uint4 u = load_u4(blk + O::chunk_offset(i, e0) + 16 * c, a.codes_aligned);
        w[i][4 * c] = u.x;
        w[i][4 * c + 1] = u.y;
        w[i][4 * c + 2] = u.z;
        w[i][4 * c + 3] = u.w;
      }
    }
    const float s = __ldg(a.scales + n * a.groups + g);
    const float z = a.zeros ? __ldg(a.zeros + n * a.groups + g) : a.zsym;
    float v[8];
#pragma unroll
    for (int t = 0; t < 8; ++t) v[t] = (kbit::small_uint_to_float(O::code(w, e0, t)) - z) * s;
    store_octet<DT>(a.out, n * a.K + k0, v, a.out_vec, a.K - k0);
  }
}

// ------------------------------------------------------------ launchers ----

template <int BITS, int MT>
void launch_gemv(const MatmulArgs& a, cudaStream_t stream) {
  using G = GemvShape<BITS, MT>;
  const int64_t m_tiles = (a.M + MT - 1) / MT;
  const int64_t n_tiles = (a.N + G::kRowsPerCta - 1) / G::kRowsPerCta;
  const dim3 grid(static_cast<unsigned>(m_tiles * n_tiles));
  kbit_gemv_kernel<BITS, MT><<<grid, G::kThreads, 0, stream>>>(a);
}

template <int BITS>
void launch_matmul(const MatmulArgs& a, cudaStream_t stream) {
  if (a.M > kGemvMaxM) {
    const int64_t m_tiles = (a.M + kGemmBM - 1) / kGemmBM;
    const int64_t n_tiles = (a.N + kGemmBN - 1) / kGemmBN;
    const dim3 grid(static_cast<unsigned>(m_tiles * n_tiles));
    kbit_gemm_kernel<BITS><<<grid, kGemmThreads, 0, stream>>>(a);
  } else if (a.M == 1) {
    launch_gemv<BITS, 1>(a, stream);
  } else if (a.M == 2) {
    launch_gemv<BITS, 2>(a, stream);
  } else if constexpr (kbit::LaneView<BITS>::kLanes == 2) {
    // 2- and 3-bit blocks span two lanes: 16 blocks per warp need a 2048-long
    // chunk, so MT = 8 would not fit the 48 KiB of static shared memory.
    launch_gemv<BITS, 4>(a, stream);
  } else if (a.M <= 4) {
    launch_gemv<BITS, 4>(a, stream);
  } else {
    launch_gemv<BITS, 8>(a, stream);
  }
}

template <int BITS>
void launch_dequant(const DequantArgs& a, DType dtype, cudaStream_t stream) {
  const int64_t octets = (a.K + 7) / 8;
  const dim3 grid(static_cast<unsigned>((octets + kDequantThreads - 1) / kDequantThreads),
                  static_cast<unsigned>(a.N < 65535 ? a.N : 65535));
  switch (dtype) {
    case DType::kBFloat16:
      kbit_dequant_kernel<BITS, DType::kBFloat16><<<grid, kDequantThreads, 0, stream>>>(a);
      break;
    case DType::kFloat16:
      kbit_dequant_kernel<BITS, DType::kFloat16><<<grid, kDequantThreads, 0, stream>>>(a);
      break;
    default:
      kbit_dequant_kernel<BITS, DType::kFloat32><<<grid, kDequantThreads, 0, stream>>>(a);
      break;
  }
}

}  // namespace

int kbit_matmul_cuda(const void* x, int64_t M, int64_t ldx, DType dtype, const KbitWeight& w,
                     const void* bias, void* y, int64_t ldy, void* stream) {
  if (M <= 0 || w.N <= 0) return static_cast<int>(cudaSuccess);
  if (w.K <= 0 || w.K >= kMaxK || w.bits < 2 || w.bits > 8 || w.group_size <= 0 ||
      w.K % w.group_size != 0)
    return static_cast<int>(cudaErrorInvalidValue);
  // 1-D grids: at most 16 m-tiles x N/16 row tiles (GEMV) or M/64 x N/64 tiles.
  const int64_t ctas = M > kGemvMaxM
                           ? ((M + kGemmBM - 1) / kGemmBM) * ((w.N + kGemmBN - 1) / kGemmBN)
                           : 16 * ((w.N + 15) / 16);
  if (ctas >= (int64_t{1} << 31)) return static_cast<int>(cudaErrorInvalidConfiguration);

  const int64_t esize = dtype == DType::kFloat32 ? 4 : 2;
  MatmulArgs a;
  a.x = x;
  a.y = y;
  a.bias = bias;
  a.codes = w.codes;
  a.scales = w.scales;
  a.zeros = w.zeros;
  a.M = M;
  a.ldx = ldx;
  a.ldy = ldy;
  a.N = w.N;
  a.row_stride = w.row_stride;
  a.K = static_cast<int>(w.K);
  a.group_size = static_cast<int>(w.group_size);
  a.groups = static_cast<int>(w.K / w.group_size);
  a.zsym = kbit::symmetric_zero(w.bits, w.ternary);
  a.dtype = dtype;
  a.codes_aligned = reinterpret_cast<uintptr_t>(w.codes) % 16 == 0 && w.row_stride % 16 == 0;
  a.x_vec4 = reinterpret_cast<uintptr_t>(x) % (4 * esize) == 0 && ldx % 4 == 0;

  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (w.bits) {
    case 2:
      launch_matmul<2>(a, s);
      break;
    case 3:
      launch_matmul<3>(a, s);
      break;
    case 4:
      launch_matmul<4>(a, s);
      break;
    case 5:
      launch_matmul<5>(a, s);
      break;
    case 6:
      launch_matmul<6>(a, s);
      break;
    case 7:
      launch_matmul<7>(a, s);
      break;
    default:
      launch_matmul<8>(a, s);
      break;
  }
  return static_cast<int>(cudaGetLastError());
}

int kbit_dequantize_cuda(const KbitWeight& w, void* out, DType dtype, void* stream) {
  if (w.N <= 0) return static_cast<int>(cudaSuccess);
  if (w.K <= 0 || w.K >= kMaxK || w.bits < 2 || w.bits > 8 || w.group_size <= 0 ||
      w.K % w.group_size != 0)
    return static_cast<int>(cudaErrorInvalidValue);
  DequantArgs a;
  a.codes = w.codes;
  a.scales = w.scales;
  a.zeros = w.zeros;
  a.out = out;
  a.N = w.N;
  a.row_stride = w.row_stride;
  a.K = static_cast<int>(w.K);
  a.group_size = static_cast<int>(w.group_size);
  a.groups = static_cast<int>(w.K / w.group_size);
  a.zsym = kbit::symmetric_zero(w.bits, w.ternary);
  a.codes_aligned = reinterpret_cast<uintptr_t>(w.codes) % 16 == 0 && w.row_stride % 16 == 0;
  // A row's octets start 16-byte aligned when the row length in bytes is a multiple of 16.
  const int64_t esize = dtype == DType::kFloat32 ? 4 : 2;
  a.out_vec = reinterpret_cast<uintptr_t>(out) % 16 == 0 && (w.K * esize) % 16 == 0;

  cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (w.bits) {
    case 2:
      launch_dequant<2>(a, dtype, s);
      break;
    case 3:
      launch_dequant<3>(a, dtype, s);
      break;
    case 4:
      launch_dequant<4>(a, dtype, s);
      break;
    case 5:
      launch_dequant<5>(a, dtype, s);
      break;
    case 6:
      launch_dequant<6>(a, dtype, s);
      break;
    case 7:
      launch_dequant<7>(a, dtype, s);
      break;
    default:
      launch_dequant<8>(a, dtype, s);
      break;
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace fusenas
