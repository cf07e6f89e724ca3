// Forward of the fused low-rank conv on CPU. Per tile (one image, R output
// rows; tiles spread over OpenMP threads):
//   1. the input rows the tile needs -> phase planes (float32, zero-padded;
//      from NCHW or channels_last, float32 or bfloat16: the only layout
//      conversion, and it is per tile, in cache);
//   2. first factor: T (r x P) = GEMM over the planes (kh x kw or kh x 1 taps);
//   3. second factor: Y = GEMM over T (+ bias), 64 output channels at a time,
//      each block's valid columns -> y in its own layout and dtype.
// T stays in the thread's cache-sized buffer; only when the caller keeps it
// for the backward are its valid columns also written out (float32).
// channels_last float32 calls take the pixel-major path instead where it
// applies (lowrank_conv_nhwc.cpp).
#include <stdexcept>
#include <vector>

#include "cpu/lowrank_conv_nhwc.h"
#include "cpu/lowrank_conv_tiles.h"
#include "fusenas/lowrank.h"

namespace fusenas {

using namespace lowrank_detail;  // NOLINT: the shared tile helpers

namespace {

// Target grid pixels per forward tile: T (r x P) and the Y tile stay within
// L2 for the ResNet shapes.
constexpr int64_t kForwardTilePixels = 512;
// Output channels per second-factor GEMM: the Y tile holds this many rows and
// is written out before the next block, so at 256-512 channels it stays a
// fraction of the output tile (its size counts toward peak memory, and a
// smaller one stays in L1/L2 until it is stored).
constexpr int64_t kOutBlock = 64;

// Writes the valid columns of the tile's output grid for output channels
// [o0, o0 + nout) to image n of y.
template <class T>
void store_output(const cpu::lowrank::Kernels& kern, const float* yt, int64_t ldy, int64_t rows,
                  int64_t n, int64_t oh0, const Geometry& g, T* y, const Strides4& ys, int64_t o0,
                  int64_t nout) {
  T* yn = y + n * ys.n + o0 * ys.c;
  if constexpr (std::is_same_v<T, float>) {
    if (ys.w == 1) {
      for (int64_t o = 0; o < nout; ++o)
        kern.copy_pad_rows(yt + o * ldy, g.Wq, rows, 0, g.Wo, g.Wo, yn + o * ys.c + oh0 * ys.h,
                           ys.h);
      return;
    }
  }
  if (ys.w == 1) {
    for (int64_t o = 0; o < nout; ++o)
      for (int64_t i = 0; i < rows; ++i)
        store_row(yt + o * ldy + i * g.Wq, g.Wo, yn + o * ys.c + (oh0 + i) * ys.h);
    return;
  }
  if (ys.c == 1) {
    for (int64_t i = 0; i < rows; ++i)
      planes_to_pixels(kern, yt + i * g.Wq, ldy, g.Wo, nout, yn + (oh0 + i) * ys.h, ys.w);
    return;
  }
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      T* dst = yn + (oh0 + i) * ys.h + ow * ys.w;
      const float* src = yt + i * g.Wq + ow;
      for (int64_t o = 0; o < nout; ++o) dst[o * ys.c] = from_f32<T>(src[o * ldy]);
    }
}

// The fused epilogue on the tile's output rows just written to y (still in
// cache): y = relu?(y + residual), residual laid out as y.
void epilogue_output(const cpu::lowrank::Kernels& kern, float* y, const float* res,
                     const Strides4& ys, int64_t rows, int64_t n, int64_t oh0, const Geometry& g,
                     bool relu) {
  const int64_t nout = g.s.Nout;
  const auto run = [&](int64_t off, int64_t len) {
    kern.add_relu(y + off, res ? res + off : nullptr, len, relu);
  };
  const int64_t base = n * ys.n + oh0 * ys.h;
  if (ys.w == 1) {
    for (int64_t o = 0; o < nout; ++o)
      for (int64_t i = 0; i < rows; ++i) run(base + o * ys.c + i * ys.h, g.Wo);
  } else if (ys.c == 1 && ys.w == nout) {  // channels_last: a row's pixels are contiguous
    for (int64_t i = 0; i < rows; ++i) run(base + i * ys.h, g.Wo * nout);
  } else {
    for (int64_t o = 0; o < nout; ++o)
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t ow = 0; ow < g.Wo; ++ow) run(base + o * ys.c + i * ys.h + ow * ys.w, 1);
  }
}

// Sizes of the forward's per-thread buffers.
struct ForwardLayout {
  int64_t tplane;    // floats per intermediate plane (with the second factor's read slack)
  int64_t t_planes;  // rank planes (spatial: per column phase)
  explicit ForwardLayout(const Geometry& g)
      : tplane(g.Pmax + round_up(g.qw_max, kPixelAlign) + kPixelAlign),
        t_planes(g.channel ? g.s.rank : g.s.sw * g.s.rank) {}
  int64_t thread_floats(const Geometry& g) const {
    return g.planes_x() * g.plane + t_planes * tplane + std::min(g.s.Nout, kOutBlock) * g.Pmax;
  }
};

template <class T>
void forward(const T* x, const Strides4& xs, const T* w1, const T* w2, const T* bias, T* y,
             const Strides4& ys, const LowRankConvShape& s, int num_threads, const float* residual,
             bool relu, float* t_out, bool t_cl) {
  const auto& kern = pick_kernels();
  const int threads = resolve_threads(num_threads);
  const Geometry g = make_geometry(s, threads, kForwardTilePixels);
  const ForwardLayout lay(g);
  const int64_t tplane = lay.tplane, t_planes = lay.t_planes;
  // The GEMMs read the weights row-major in place (float32) or from one
  // float32 copy (bfloat16): no packed duplicate of a large w1 in memory.
  std::vector<float> w1_store, w2_store;
  const float* a1 = as_f32(w1, s.rank * g.K1, w1_store);
  const float* a2 = as_f32(w2, s.Nout * g.K2, w2_store);
  std::vector<float> bias_f;
  if (bias) {
    bias_f.resize(static_cast<size_t>(s.Nout));
    for (int64_t o = 0; o < s.Nout; ++o) bias_f[static_cast<size_t>(o)] = to_f32(bias[o]);
  }
  const std::vector<int64_t> off1 = stage1_offsets(g), off2 = stage2_offsets(g, tplane);
  struct State {
    Buffer xp, t, yt;
  };
  parallel_items(
      s.N * g.ntiles, threads,
      [&] {
        return State{Buffer(g.planes_x() * g.plane), Buffer(t_planes * tplane),
                     Buffer(std::min(s.Nout, kOutBlock) * g.Pmax)};
      },
      [&](State& st, int64_t item) {
        const int64_t n = item / g.ntiles, oh0 = (item % g.ntiles) * g.R;
        const int64_t rows = std::min(g.R, g.Ho - oh0);
        const int64_t P = round_up(rows * g.Wq, kPixelAlign);
        // Rows past R + qh_max only feed discarded grid columns.
        pack_input(kern, x, xs, n, oh0, rows + g.qh_max, g, st.xp.get());
        const int64_t phases = g.channel ? 1 : s.sw;
        for (int64_t b = 0; b < phases; ++b) {
          const cpu::lowrank::RowGemm g1{s.rank,      g.K1,    P,
                                         a1,          g.K1,    st.xp.get() + b * s.C * g.plane,
                                         off1.data(), nullptr, st.t.get() + b * s.rank * tplane,
                                         tplane,      false};
          kern.row_gemm(g1);
        }
        if (t_out) store_intermediate(kern, st.t.get(), tplane, rows, n, oh0, g, t_out, t_cl);
        for (int64_t o0 = 0; o0 < s.Nout; o0 += kOutBlock) {
          const int64_t m = std::min(kOutBlock, s.Nout - o0);
          const cpu::lowrank::RowGemm g2{
              m,           g.K2,       P,           a2 + o0 * g.K2,
              g.K2,        st.t.get(), off2.data(), bias ? bias_f.data() + o0 : nullptr,
              st.yt.get(), g.Pmax,     false};
          kern.row_gemm(g2);
          store_output(kern, st.yt.get(), g.Pmax, rows, n, oh0, g, y, ys, o0, m);
        }
        if constexpr (std::is_same_v<T, float>) {
          if (residual || relu) epilogue_output(kern, y, residual, ys, rows, n, oh0, g, relu);
        }
      });
}

}  // namespace

void lowrank_conv2d_cpu(const void* x, const Strides4& xs, const void* w1, const void* w2,
                        const void* bias, void* y, const Strides4& ys, const LowRankConvShape& s,
                        DType dtype, int num_threads, const void* residual, bool relu,
                        float* intermediate, bool intermediate_channels_last) {
  if (dtype == DType::kBFloat16) {
    if (residual || relu) throw std::invalid_argument("lowrank_conv2d_cpu: epilogue is float32");
    forward(static_cast<const uint16_t*>(x), xs, static_cast<const uint16_t*>(w1),
            static_cast<const uint16_t*>(w2), static_cast<const uint16_t*>(bias),
            static_cast<uint16_t*>(y), ys, s, num_threads, nullptr, false, intermediate,
            intermediate_channels_last);
  } else if (nhwc_applies(s, xs, ys, num_threads)) {
    forward_nhwc(static_cast<const float*>(x), static_cast<const float*>(w1),
                 static_cast<const float*>(w2), static_cast<const float*>(bias),
                 static_cast<float*>(y), s, num_threads, static_cast<const float*>(residual), relu,
                 intermediate, intermediate_channels_last);
  } else {
    forward(static_cast<const float*>(x), xs, static_cast<const float*>(w1),
            static_cast<const float*>(w2), static_cast<const float*>(bias), static_cast<float*>(y),
            ys, s, num_threads, static_cast<const float*>(residual), relu, intermediate,
            intermediate_channels_last);
  }
}

int64_t lowrank_conv2d_workspace_bytes(const LowRankConvShape& s, DType dtype, int num_threads,
                                       bool channels_last) {
  if (channels_last && dtype == DType::kFloat32) {
    if (nhwc_applies(s, channels_last_strides(s.C, s.H, s.W),
                     channels_last_strides(s.Nout, output_height(s), output_width(s)), num_threads))
      return nhwc_workspace_bytes(s, num_threads);
  }
  const int threads = resolve_threads(num_threads);
  const Geometry g = make_geometry(s, threads, kForwardTilePixels);
  const int64_t used = std::max<int64_t>(1, std::min<int64_t>(threads, s.N * g.ntiles));
  const int64_t weights = s.Nout + (dtype == DType::kBFloat16 ? s.rank * g.K1 + s.Nout * g.K2 : 0);
  const int64_t offsets = 2 * (g.K1 + g.K2);  // int64 = 2 floats
  return 4 * (used * ForwardLayout(g).thread_floats(g) + weights + offsets);
}

const char* lowrank_cpu_isa() { return pick_kernels().name; }

}  // namespace fusenas
