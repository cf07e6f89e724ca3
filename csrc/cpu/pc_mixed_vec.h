// Minimal float SIMD vectors for the pc_mixed plane kernels: the same template
// code (pc_mixed_planes.h) is instantiated once per ISA translation unit with
// one of these. Everything sits in an anonymous namespace: each TU keeps its own
// copy, compiled with its own -m flags, so the linker can never hand an AVX-512
// body to the scalar path.
//
// load_n / store_n touch only the first n lanes, n in [0, W] (masked: planes
// are rarely a multiple of the vector width, and masked loads never fault past
// the end). load_range_or(p, first, n, f) loads lanes [first, n) and keeps f's
// other lanes, so a row's edges need no padded copy. load_even_odd / store_interleaved move 2n
// floats between memory and two vectors of the even and odd elements (stride-2 columns).
// permute(v, idx) gives lane j the lane idx[j] of v, idx = index(f): the lanes
// of a float vector truncated to int32 (from_index converts back).
#pragma once

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstdint>

namespace fusenas {
namespace cpu {
namespace {

struct VecScalar {
  using R = float;
  using I = int32_t;
  static R permute(R v, I) { return v; }
  static I index(R v) { return static_cast<int32_t>(v); }
  static R from_index(I i) { return static_cast<float>(i); }
  static constexpr int W = 1;
  static R set1(float a) { return a; }
  static R loadu(const float* p) { return *p; }
  static void storeu(float* p, R v) { *p = v; }
  static R load_n(const float* p, int) { return *p; }
  static R load_range_or(const float* p, int first, int n, R fallback) {
    return first <= 0 && n > 0 ? *p : fallback;
  }
  static void store_n(float* p, R v, int) { *p = v; }
  static R keep_n(R v, int) { return v; }
  static R add(R a, R b) { return a + b; }
  static R sub(R a, R b) { return a - b; }
  static R mul(R a, R b) { return a * b; }
  static R fmadd(R a, R b, R c) { return a * b + c; }
  static R max(R a, R b) { return b > a ? b : a; }
  static R min(R a, R b) { return b < a ? b : a; }
  static R select_gt(R a, R b, R x, R y) { return a > b ? x : y; }  // a > b ? x : y per lane
  static R select_eq(R a, R b, R x, R y) { return a == b ? x : y; }
  static R iota() { return 0.0f; }
  static float hsum(R v) { return v; }
  // p[0..2n): even elements into ev, odd ones into od (stride-2 columns).
  static void load_even_odd(const float* p, int, R& ev, R& od) {
    ev = p[0];
    od = p[1];
  }
  // Inverse: p[2i] = ev[i], p[2i + 1] = od[i] for i < n.
  static void store_interleaved(float* p, int, R ev, R od) {
    p[0] = ev;
    p[1] = od;
  }
};

#if defined(__AVX2__)
struct VecAvx2 {
  using R = __m256;
  using I = __m256i;
  static R permute(R v, I idx) { return _mm256_permutevar8x32_ps(v, idx); }
  static I index(R v) { return _mm256_cvttps_epi32(v); }
  static R from_index(I i) { return _mm256_cvtepi32_ps(i); }
  static constexpr int W = 8;
  static __m256i mask(int n) {
    alignas(32) static const int32_t kTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1,
                                                   0,  0,  0,  0,  0,  0,  0,  0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTable + 8 - n));
  }
  static R set1(float a) { return _mm256_set1_ps(a); }
  static R loadu(const float* p) { return _mm256_loadu_ps(p); }
  static void storeu(float* p, R v) { _mm256_storeu_ps(p, v); }
  static R load_n(const float* p, int n) {  // n in [0, W]
    return n == W ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, mask(n));
  }
  static R load_range_or(const float* p, int first, int n, R fallback) {
    const __m256i m = _mm256_andnot_si256(mask(first), mask(n));
    return _mm256_blendv_ps(fallback, _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  static void store_n(float* p, R v, int n) {
    if (n == W)
      _mm256_storeu_ps(p, v);
    else if (n > 0)
      _mm256_maskstore_ps(p, mask(n), v);
  }
  static R keep_n(R v, int n) {
    return n == W ? v : _mm256_and_ps(v, _mm256_castsi256_ps(mask(n)));
  }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R max(R a, R b) { return _mm256_max_ps(a, b); }
  static R min(R a, R b) { return _mm256_min_ps(a, b); }
  static R select_gt(R a, R b, R x, R y) {
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_GT_OQ));
  }
  static R select_eq(R a, R b, R x, R y) {
    return _mm256_blendv_ps(y, x, _mm256_cmp_ps(a, b, _CMP_EQ_OQ));
  }
  static R iota() { return _mm256_setr_ps(0, 1, 2, 3, 4, 5, 6, 7); }
  static void load_even_odd(const float* p, int n, R& ev, R& od) {
    const R lo = load_n(p, std::min(2 * n, W)), hi = load_n(p + W, std::max(2 * n - W, 0));
    // shuffle picks within 128-bit lanes; permute4x64 puts the halves in order
    ev = _mm256_castpd_ps(_mm256_permute4x64_pd(
        _mm256_castps_pd(_mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0))), 0xD8));
    od = _mm256_castpd_ps(_mm256_permute4x64_pd(
        _mm256_castps_pd(_mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(3, 1, 3, 1))), 0xD8));
  }
  static void store_interleaved(float* p, int n, R ev, R od) {
    const R t0 = _mm256_unpacklo_ps(ev, od), t1 = _mm256_unpackhi_ps(ev, od);
    store_n(p, _mm256_permute2f128_ps(t0, t1, 0x20), std::min(2 * n, W));
    store_n(p + W, _mm256_permute2f128_ps(t0, t1, 0x31), std::max(2 * n - W, 0));
  }
  static float hsum(R v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};
#endif

#if defined(__AVX512F__)
struct VecAvx512 {
  using R = __m512;
  using I = __m512i;
  static R permute(R v, I idx) { return _mm512_permutexvar_ps(idx, v); }
  static I index(R v) { return _mm512_cvttps_epi32(v); }
  static R from_index(I i) { return _mm512_cvtepi32_ps(i); }
  static constexpr int W = 16;
  static __mmask16 mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
  static R set1(float a) { return _mm512_set1_ps(a); }
  static R loadu(const float* p) { return _mm512_loadu_ps(p); }
  static void storeu(float* p, R v) { _mm512_storeu_ps(p, v); }
  static R load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(mask(n), p); }
  static R load_range_or(const float* p, int first, int n, R fallback) {
    return _mm512_mask_loadu_ps(fallback, static_cast<__mmask16>(mask(n) & ~mask(first)), p);
  }
  static void store_n(float* p, R v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static R keep_n(R v, int n) { return _mm512_maskz_mov_ps(mask(n), v); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R fmadd(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R max(R a, R b) { return _mm512_max_ps(a, b); }
  static R min(R a, R b) { return _mm512_min_ps(a, b); }
  static R select_gt(R a, R b, R x, R y) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_GT_OQ), y, x);
  }
  static R select_eq(R a, R b, R x, R y) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ), y, x);
  }
  static void load_even_odd(const float* p, int n, R& ev, R& od) {
    const R lo = load_n(p, std::min(2 * n, W)), hi = load_n(p + W, std::max(2 * n - W, 0));
    const __m512i even =
        _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    ev = _mm512_permutex2var_ps(lo, even, hi);
    od = _mm512_permutex2var_ps(lo, _mm512_add_epi32(even, _mm512_set1_epi32(1)), hi);
  }
  static void store_interleaved(float* p, int n, R ev, R od) {
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_add_epi32(lo, _mm512_set1_epi32(8));
    store_n(p, _mm512_permutex2var_ps(ev, lo, od), std::min(2 * n, W));
    store_n(p + W, _mm512_permutex2var_ps(ev, hi, od), std::max(2 * n - W, 0));
  }
  static R iota() { return _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
  static float hsum(R v) { return _mm512_reduce_add_ps(v); }
};
#endif

}  // namespace
}  // namespace cpu
}  // namespace fusenas
