// The GEMM kernels of lowrank_conv_kernels.h, written once over a vector
// type V and included by one translation unit per ISA (each compiled with its
// own -m flags). Everything here has internal linkage so the per-ISA copies
// never merge at link time.
//
// V provides: reg, kWidth, zero(), loadu(p), storeu(p, v), bcast(p),
// fmadd(a, b, c) = a*b + c, add(a, b), sub(a, b) = a - b, max(a, b).
// Register blocking: a RowGemm micro-tile is MR rows x NV vectors of pixels
// held in registers for the whole K loop (the B row is loaded once per k and
// reused MR times, the A value broadcast once and reused NV times). The
// weight gradients are RowGemms too (pixels as K, transposed operands): dot
// products over a tile's pixels with horizontal sums were slower.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>

#include "cpu/lowrank_conv_kernels.h"

#define LR_INLINE inline __attribute__((always_inline))

namespace fusenas {
namespace cpu {
namespace lowrank {
namespace {

// K is processed in blocks of this many rows so the A panel block (mr x KC)
// and the B rows of a micro-tile stay in L1/L2 across the pixel loop.
constexpr int64_t kKBlock = 128;

// The steps every micro-tile shares: acc[m][v] += a(m) * b[v W .. v W + W)
// (the b vectors loaded once and reused MR times, each a(m) a broadcast reused
// NV times), and the store of the tile.
template <class V, int MR, int NV, class A>
LR_INLINE void rank1_update(typename V::reg (&acc)[MR][NV], const float* b, A a_at) {
  constexpr int W = V::kWidth;
  typename V::reg bv[NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) bv[v] = V::loadu(b + v * W);
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
    const typename V::reg av = V::bcast(a_at(m));
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[m][v] = V::fmadd(av, bv[v], acc[m][v]);
  }
}

template <class V, int MR, int NV>
LR_INLINE void store_tile(const typename V::reg (&acc)[MR][NV], float* c, int64_t ldc) {
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) V::storeu(c + m * ldc + v * V::kWidth, acc[m][v]);
}

template <class V, int MR, int NV>
LR_INLINE void row_micro(const float* a, int64_t ak_stride, int64_t am_stride, const float* B,
                         const int64_t* boff, int64_t kc, float* c, int64_t ldc, bool load_c,
                         const float* bias) {
  using R = typename V::reg;
  constexpr int W = V::kWidth;
  R acc[MR][NV];
#pragma GCC unroll 8
  for (int m = 0; m < MR; ++m) {
    const R init = bias ? V::bcast(bias + m) : V::zero();
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[m][v] = load_c ? V::loadu(c + m * ldc + v * W) : init;
  }
  for (int64_t k = 0; k < kc; ++k) {
    const float* ak = a + k * ak_stride;
    rank1_update<V, MR, NV>(acc, B + boff[k], [&](int m) { return ak + m * am_stride; });
  }
  store_tile<V, MR, NV>(acc, c, ldc);
}

using RowMicroFn = void (*)(const float*, int64_t, int64_t, const float*, const int64_t*, int64_t,
                            float*, int64_t, bool, const float*);

template <class V, int MR, int NV>
void row_micro_fn(const float* a, int64_t ak_stride, int64_t am_stride, const float* B,
                  const int64_t* boff, int64_t kc, float* c, int64_t ldc, bool load_c,
                  const float* bias) {
  row_micro<V, MR, NV>(a, ak_stride, am_stride, B, boff, kc, c, ldc, load_c, bias);
}

// Every micro-kernel instance of one kind, table[rows - 1][nv - 1] for
// rows <= MAXR and nv <= MAXNV: Maker::get<R, N>() is the instance's address.
template <class Fn, class Maker, int MAXR, int MAXNV>
struct MicroTable {
  Fn fn[MAXR][MAXNV];
  template <int R, int... Ns>
  void fill_row(std::integer_sequence<int, Ns...>) {
    ((fn[R - 1][Ns] = Maker::template get<R, Ns + 1>()), ...);
  }
  template <int... Rs>
  void fill(std::integer_sequence<int, Rs...>) {
    (fill_row<Rs + 1>(std::make_integer_sequence<int, MAXNV>{}), ...);
  }
  MicroTable() { fill(std::make_integer_sequence<int, MAXR>{}); }
};

template <class V>
struct RowMaker {
  template <int R, int N>
  static RowMicroFn get() {
    return &row_micro_fn<V, R, N>;
  }
};

// Splits n items into the fewest chunks of at most `most`, of near-equal size
// (5 vectors at most 4 per chunk: 3 + 2, not 4 + 1): a 1-vector or 1-row
// micro-tile does one FMA per load or broadcast and runs load-bound.
template <class Fn>
LR_INLINE void balanced_chunks(int64_t n, int64_t most, Fn&& fn) {
  const int64_t chunks = (n + most - 1) / most;
  int64_t start = 0;
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t size = (n - start + (chunks - c) - 1) / (chunks - c);
    fn(start, static_cast<int>(size));
    start += size;
  }
}

// fn(v0, nv) for each column panel of an IndGemm / BlockGemm B operand (its
// vectors [v0, v0 + nv)), in order: the chunks pack_factor laid out.
template <class Fn>
LR_INLINE void for_each_panel(int64_t vecs, int64_t most, Fn&& fn) {
  for (int64_t c = 0, n = panel_count(vecs, most); c < n; ++c) {
    const int64_t v0 = panel_start(vecs, most, c);
    fn(v0, static_cast<int>(panel_start(vecs, most, c + 1) - v0));
  }
}

// Cfg: kMR (panel rows), nv_for(rows) (vectors for a short panel: fewer accumulator rows leave
// registers for more pixels, so a 2-row tail panel still has 16 FMAs per k).
template <class V, class Cfg>
void row_gemm(const RowGemm& g) {
  static const MicroTable<RowMicroFn, RowMaker<V>, Cfg::kMR, Cfg::kNVMax> table;
  constexpr int W = V::kWidth;
  constexpr int MR = Cfg::kMR;
  const int64_t vecs = g.P / W;
  // Runs `count` row tiles of `rows` rows from row m_start over all pixels, pixel
  // chunks outer so a chunk's B rows stay in L1 across the row tiles. Packed A:
  // row m, column k of panel p at (p K + k) MR + m (tiles are whole panels);
  // row-major: m lda + k.
  auto run = [&](int64_t m_start, int64_t count, int rows, int64_t k0, int64_t kc, bool load_c,
                 const float* bias) {
    balanced_chunks(vecs, Cfg::nv_for(rows), [&](int64_t v0, int nv) {
      for (int64_t i = 0; i < count; ++i) {
        const int64_t m0 = m_start + i * rows;
        const float* a = g.lda ? g.A + m0 * g.lda + k0 : g.A + ((m0 / MR) * g.K + k0) * MR;
        table.fn[rows - 1][nv - 1](a, g.lda ? 1 : MR, g.lda ? g.lda : 1, g.B + v0 * W, g.boff + k0,
                                   kc, g.C + m0 * g.ldc + v0 * W, g.ldc, load_c,
                                   bias ? bias + m0 : nullptr);
      }
    });
  };
  for (int64_t k0 = 0; k0 < g.K; k0 += kKBlock) {
    const int64_t kc = std::min(kKBlock, g.K - k0);
    const bool load_c = g.accumulate || k0 > 0;
    const float* bias = (g.accumulate || k0 > 0) ? nullptr : g.bias;
    if (g.lda) {
      // Row-major A allows any row split: tiles of near-equal height (7 rows:
      // 4 + 3, not 6 + 1), `big` rows for the first `nbig`, one fewer after.
      const int64_t tiles = (g.M + MR - 1) / MR, big = (g.M + tiles - 1) / tiles;
      const int64_t nbig = g.M - (big - 1) * tiles;
      run(0, nbig, static_cast<int>(big), k0, kc, load_c, bias);
      if (big > 1 && tiles > nbig)
        run(nbig * big, tiles - nbig, static_cast<int>(big - 1), k0, kc, load_c, bias);
    } else {  // packed panels of MR rows, the last one partial
      const int64_t full = g.M / MR;
      const int tail = static_cast<int>(g.M % MR);
      if (full > 0) run(0, full, MR, k0, kc, load_c, bias);
      if (tail > 0) run(full * MR, 1, tail, k0, kc, load_c, bias);
    }
  }
}

// IndGemm micro-tile: MR pixels x NV vectors of output channels held in
// registers over B rows [r0, r1) (row r = tap r / K, k = r % K; load_c: add to
// the partial sums already in C); the B row is loaded once per k and reused
// MR times, each pixel value is a broadcast. Pixel m's C row is c + m ldc, or
// c + crow[m] ldc; a tap whose MR pointers are all `zero` (padding) is skipped.
template <class V, int MR, int NV>
void ind_micro_fn(const float* const* ind, int64_t ind_stride, int64_t r0, int64_t r1, int64_t K,
                  const float* B, int64_t ldb, const float* bias, float* c, int64_t ldc,
                  const int64_t* crow, const float* zero, bool load_c) {
  using R = typename V::reg;
  constexpr int W = V::kWidth;
  // Only outside the k loop: the hot loop keeps its MR pixel pointers in registers.
  auto c_row = [&](int m) { return c + (crow ? crow[m] : m) * ldc; };
  R acc[MR][NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    const R init = bias ? V::loadu(bias + v * W) : V::zero();
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) acc[m][v] = load_c ? V::loadu(c_row(m) + v * W) : init;
  }
  for (int64_t r = r0; r < r1;) {
    const int64_t t = r / K, k0 = r % K, k1 = std::min(K, k0 + (r1 - r));
    const float* a[MR];
    bool padding = zero != nullptr;
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      a[m] = ind[t * ind_stride + m];
      padding = padding && a[m] == zero;
    }
    if (!padding) {
      const float* bt = B + (r - k0) * ldb;
      for (int64_t k = k0; k < k1; ++k)
        rank1_update<V, MR, NV>(acc, bt + k * ldb, [&](int m) { return a[m] + k; });
    }
    r += k1 - k0;
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) {
    float* cm = c_row(m);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) V::storeu(cm + v * W, acc[m][v]);
  }
}

using IndMicroFn = void (*)(const float* const*, int64_t, int64_t, int64_t, int64_t, const float*,
                            int64_t, const float*, float*, int64_t, const int64_t*, const float*,
                            bool);

template <class V>
struct IndMaker {
  template <int R, int N>
  static IndMicroFn get() {
    return &ind_micro_fn<V, R, N>;
  }
};

// B rows (taps x K) are taken in blocks of at most this many bytes per column
// panel, the partial sums going through C between blocks, so a panel larger
// than L2 (512 channels x 9 taps x 4 vectors of 16: 1.2 MB) is not streamed
// from L3 by every pixel micro-tile. Smaller blocks cost more than they save:
// each block re-reads every pixel's input rows, which adjacent micro-tiles
// otherwise share in L1 (AVX2, 1 thread: 12 KB blocks 19-25 ms against 17 ms
// at 128 ch @28, rank 19; 192 KB and no blocking the same at 128-512 ch).
constexpr int64_t kIndBlockBytes = 192 * 1024;

// Cfg: kIndNV (most vectors per micro-tile), ind_mr(nv) (pixels for nv vectors,
// at most kIndMR). Channel chunks outer, then blocks of B rows, pixels inner.
template <class V, class Cfg>
void ind_gemm(const IndGemm& g) {
  static const MicroTable<IndMicroFn, IndMaker<V>, Cfg::kIndMR, Cfg::kIndNV> table;
  constexpr int W = V::kWidth;
  const int64_t rows = g.taps * g.K, vecs = g.N / W;
  for_each_panel(vecs, Cfg::kIndNV, [&](int64_t v0, int nv) {
    const float* panel = g.B + rows * v0 * W;
    const int64_t most = std::max<int64_t>(W, kIndBlockBytes / (nv * W * 4));
    balanced_chunks(rows, most, [&](int64_t r0, int64_t nr) {
      for (int64_t grp = 0; grp < std::max<int64_t>(1, g.groups); ++grp) {
        const int64_t a = g.groups ? g.splits[grp] : 0, b = g.groups ? g.splits[grp + 1] : g.P;
        balanced_chunks(b - a, Cfg::ind_mr(nv), [&](int64_t p0, int mr) {
          const int64_t p = a + p0;
          table.fn[mr - 1][nv - 1](g.ind + p, g.P, r0, r0 + nr, g.K, panel, nv * W,
                                   g.bias && r0 == 0 ? g.bias + v0 * W : nullptr,
                                   g.C + (g.crow ? 0 : p * g.ldc) + v0 * W, g.ldc,
                                   g.crow ? g.crow + p : nullptr, g.zero, r0 > 0);
        });
      }
    });
  });
}

// BlockGemm micro-tile: MR pixels of one row x NV vectors of output channels
// in registers over every tap and k. Pixel m's value of channel k sits at
// a + m * 16 + k % 16 within the block, so every broadcast is a fixed offset
// from the block's pointer: no per-pixel pointers, and 16 pixels fit the
// registers at one vector (16 accumulators).
template <class V, int MR, int NV>
void block_micro_fn(const float* const* base, int64_t Q, int64_t taps, int64_t K, int64_t kbs,
                    int64_t o0, const float* B, int64_t ldb, const float* bias, float* c,
                    int64_t co, int64_t cb, int64_t j0, const float* r, bool relu) {
  using R = typename V::reg;
  constexpr int W = V::kWidth;
  constexpr int64_t CB = kChannelBlock;
  R acc[MR][NV];
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    const R init = bias ? V::loadu(bias + v * W) : V::zero();
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) acc[m][v] = init;
  }
  for (int64_t t = 0; t < taps; ++t) {
    const float* a = base[t * Q] + o0 * CB;
    const float* bt = B + t * K * ldb;
    for (int64_t k0 = 0; k0 < K; k0 += CB, a += kbs) {
      const int64_t kn = std::min(CB, K - k0);
      for (int64_t kk = 0; kk < kn; ++kk)
        rank1_update<V, MR, NV>(acc, bt + (k0 + kk) * ldb, [&](int m) { return a + m * CB + kk; });
    }
  }
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    const int64_t j = j0 + v * W, off = (j / CB) * cb + j % CB;
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      R out = acc[m][v];
      if (r) out = V::add(out, V::loadu(r + m * co + off));
      // max(0, x): x86 max returns its second operand when either is NaN, so
      // NaN stays NaN (as torch.relu and add_relu give).
      if (relu) out = V::max(V::zero(), out);
      V::storeu(c + m * co + off, out);
    }
  }
}

using BlockMicroFn = void (*)(const float* const*, int64_t, int64_t, int64_t, int64_t, int64_t,
                              const float*, int64_t, const float*, float*, int64_t, int64_t,
                              int64_t, const float*, bool);

template <class V>
struct BlockMaker {
  template <int R, int N>
  static BlockMicroFn get() {
    return &block_micro_fn<V, R, N>;
  }
};

// Cfg::block_mr(nv) pixels (at most kBlockMR) x nv vectors (at most kIndNV);
// channel chunks outer, then rows, then the row's pixels in near-equal
// chunks (a micro-tile never spans two rows: their taps' pointers differ).
template <class V, class Cfg>
void block_gemm(const BlockGemm& g) {
  static const MicroTable<BlockMicroFn, BlockMaker<V>, Cfg::kBlockMR, Cfg::kIndNV> table;
  constexpr int W = V::kWidth;
  const int64_t vecs = g.N / W;
  for_each_panel(vecs, Cfg::kIndNV, [&](int64_t v0, int nv) {
    const float* panel = g.B + g.taps * g.K * v0 * W;
    for (int64_t q = 0; q < g.Q; ++q)
      balanced_chunks(g.width, Cfg::block_mr(nv), [&](int64_t o0, int rows) {
        const int64_t at = q * g.cq + o0 * g.co;
        table.fn[rows - 1][nv - 1](g.base + q, g.Q, g.taps, g.K, g.kbs, o0, panel, nv * W,
                                   g.bias ? g.bias + v0 * W : nullptr, g.C + at, g.co, g.cb, v0 * W,
                                   g.residual ? g.residual + at : nullptr, g.relu);
      });
  });
}

// PairGemm micro-tile: MR rows of C (a broadcast from each pair's a row) x NV
// vectors (loaded from its b row), accumulated in registers over every pair.
template <class V, int MR, int NV>
void pair_micro_fn(const float* const* a, const float* const* b, int64_t P, int64_t m0, int64_t j0,
                   float* c, int64_t ldc) {
  using R = typename V::reg;
  constexpr int W = V::kWidth;
  R acc[MR][NV];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) acc[m][v] = V::loadu(c + m * ldc + v * W);
  for (int64_t p = 0; p < P; ++p) {
    const float* ap = a[p] + m0;
    rank1_update<V, MR, NV>(acc, b[p] + j0, [&](int m) { return ap + m; });
  }
  store_tile<V, MR, NV>(acc, c, ldc);
}

using PairMicroFn = void (*)(const float* const*, const float* const*, int64_t, int64_t, int64_t,
                             float*, int64_t);

template <class V>
struct PairMaker {
  template <int R, int N>
  static PairMicroFn get() {
    return &pair_micro_fn<V, R, N>;
  }
};

// Pairs are taken in blocks whose b columns (a chunk's nv vectors) and a
// rows (the cache line each row tile reads) fit in this many bytes of L1, so
// the row tiles after the first read them from L1; unblocked, every row tile
// re-read all pairs from L2, about 2.5 lines per 12 FMAs, and ran at L2
// bandwidth (AVX2, 1 thread, grad_w1 alone: 512 ch @7 59-62 -> 50 ms, 128 ch
// @28 22.5 -> 20.3 ms, 64 ch @56 51 -> 46 ms).
constexpr int64_t kPairBlockBytes = 20 * 1024;

// Cfg::pair_mr(nv) rows (at most kPairMR) x nv vectors (at most kIndNV);
// column chunks outer, then blocks of pairs, row tiles inner.
template <class V, class Cfg>
void pair_gemm(const PairGemm& g) {
  static const MicroTable<PairMicroFn, PairMaker<V>, Cfg::kPairMR, Cfg::kIndNV> table;
  constexpr int W = V::kWidth;
  if (g.P == 0) return;
  balanced_chunks(g.N / W, Cfg::kIndNV, [&](int64_t v0, int nv) {
    const int64_t most = std::max<int64_t>(16, kPairBlockBytes / (nv * W * 4 + 64));
    balanced_chunks(g.P, most, [&](int64_t p0, int64_t np) {
      balanced_chunks(g.M, Cfg::pair_mr(nv), [&](int64_t m0, int rows) {
        table.fn[rows - 1][nv - 1](g.a + p0, g.b + p0, np, m0, v0 * W, g.C + m0 * g.ldc + v0 * W,
                                   g.ldc);
      });
    });
  });
}

// Each ISA file defines transpose16 (register shuffles differ per ISA) and
// copy_pad_rows (AVX-512 has masked loads and stores for the row edges; the
// others are plain loops the compiler vectorises for their -m flags).
void transpose16(const float* src, int64_t lds, float* dst, int64_t ldd);
void copy_pad_rows(const float* src, int64_t lds, int64_t rows, int64_t lo, int64_t n,
                   int64_t width, float* dst, int64_t ldd);

// copy_pad_rows as loops (the ISAs without masked stores).
LR_INLINE void copy_pad_rows_loops(const float* __restrict src, int64_t lds, int64_t rows,
                                   int64_t lo, int64_t n, int64_t width, float* __restrict dst,
                                   int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = src + r * lds;
    float* d = dst + r * ldd;
    for (int64_t j = 0; j < lo; ++j) d[j] = 0.f;
    for (int64_t j = 0; j < n; ++j) d[lo + j] = s[j];
    for (int64_t j = lo + n; j < width; ++j) d[j] = 0.f;
  }
}

// Plain loops: -O3 and each file's -m flags vectorise them.
void add_relu(float* __restrict y, const float* __restrict r, int64_t n, bool relu) {
  if (r && relu) {
    for (int64_t i = 0; i < n; ++i) y[i] = std::max(y[i] + r[i], 0.f);
  } else if (r) {
    for (int64_t i = 0; i < n; ++i) y[i] += r[i];
  } else if (relu) {
    for (int64_t i = 0; i < n; ++i) y[i] = std::max(y[i], 0.f);
  }
}

// Winograd F(4, 3) transforms (lowrank_conv_kernels.h), one vector of
// channels at a time: a handful of adds and FMAs per value, against the
// 6 x K multiply-adds per group of the GEMMs between them.
template <class V>
void winograd_in(const WinogradIn& a) {
  using R = typename V::reg;
  constexpr int W = V::kWidth;
  static const float k2 = 2.f, km2 = -2.f, k4 = 4.f, km4 = -4.f, km5 = -5.f;
  const R c2 = V::bcast(&k2), cm2 = V::bcast(&km2), c4 = V::bcast(&k4), cm4 = V::bcast(&km4),
          cm5 = V::bcast(&km5);
  const int64_t xs = a.xs;
  for (int64_t g = 0; g < a.groups; ++g) {
    const float* const* d = a.pix + g * a.pstep;
    const int64_t shift = g * a.gstride;
    float* ug = a.u + g * a.ldu;
    for (int64_t c = 0; c < a.K; c += W) {
      const int64_t off = shift + (c / kChannelBlock) * a.cblock + c % kChannelBlock;
      const R d0 = V::loadu(d[0] + off), d1 = V::loadu(d[1] + off), d2 = V::loadu(d[2] + off);
      const R d3 = V::loadu(d[3] + off), d4 = V::loadu(d[4] + off), d5 = V::loadu(d[5] + off);
      const R d31 = V::sub(d3, d1), d42 = V::sub(d4, d2);
      V::storeu(ug + c, V::fmadd(cm5, d2, V::fmadd(c4, d0, d4)));
      V::storeu(ug + xs + c, V::fmadd(cm4, V::add(d1, d2), V::add(d3, d4)));
      V::storeu(ug + 2 * xs + c, V::fmadd(c4, V::sub(d1, d2), V::sub(d4, d3)));
      V::storeu(ug + 3 * xs + c, V::fmadd(c2, d31, d42));
      V::storeu(ug + 4 * xs + c, V::fmadd(cm2, d31, d42));
      V::storeu(ug + 5 * xs + c, V::fmadd(cm5, d3, V::fmadd(c4, d1, d5)));
    }
  }
}

template <class V>
void winograd_out(const WinogradOut& a) {
  using R = typename V::reg;
  constexpr int W = V::kWidth;
  static const float k2 = 2.f, k4 = 4.f, k8 = 8.f;
  const R c2 = V::bcast(&k2), c4 = V::bcast(&k4), c8 = V::bcast(&k8);
  const int64_t xs = a.xs;
  for (int64_t g = 0; g < a.groups; ++g) {
    const float* mg = a.m + g * a.ldm;
    const int64_t n = std::min<int64_t>(4, a.outputs - g * a.ostep);
    float* yg = a.y + g * a.ygs;
    const float* rg = a.r ? a.r + g * a.ygs : nullptr;
    for (int64_t j = 0; j < a.N; j += W) {
      const R m0 = V::loadu(mg + j), m1 = V::loadu(mg + xs + j), m2 = V::loadu(mg + 2 * xs + j);
      const R m3 = V::loadu(mg + 3 * xs + j), m4 = V::loadu(mg + 4 * xs + j);
      const R m5 = V::loadu(mg + 5 * xs + j);
      const R s12 = V::add(m1, m2), d12 = V::sub(m1, m2), s34 = V::add(m3, m4);
      const R d34 = V::sub(m3, m4);
      const R bj = a.bias ? V::loadu(a.bias + j) : V::zero();
      const R out[4] = {V::add(V::add(m0, bj), V::add(s12, s34)),
                        V::add(V::fmadd(c2, d34, d12), bj), V::add(V::fmadd(c4, s34, s12), bj),
                        V::add(V::fmadd(c8, d34, d12), V::add(m5, bj))};
      const int64_t off = (j / kChannelBlock) * a.cblock + j % kChannelBlock;
      for (int64_t i = 0; i < n; ++i) {
        R v = out[i];
        if (rg) v = V::add(v, V::loadu(rg + i * a.ldy + off));
        if (a.relu) v = V::max(V::zero(), v);  // NaN stays NaN, as in block_micro_fn
        V::storeu(yg + i * a.ldy + off, v);
      }
    }
  }
}

template <class V, class Cfg>
const Kernels& make_kernels(const char* name) {
  static const Kernels k{Cfg::kMR,
                         &row_gemm<V, Cfg>,
                         &ind_gemm<V, Cfg>,
                         &block_gemm<V, Cfg>,
                         &pair_gemm<V, Cfg>,
                         V::kWidth,
                         Cfg::kIndNV,
                         &transpose16,
                         &copy_pad_rows,
                         &add_relu,
                         &winograd_in<V>,
                         &winograd_out<V>,
                         name};
  return k;
}

}  // namespace
}  // namespace lowrank
}  // namespace cpu
}  // namespace fusenas
