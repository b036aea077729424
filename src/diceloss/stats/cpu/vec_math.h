// ISA-specific vector maths of the fused statistics kernel (fused_stats.cpp): the at::vec
// specialisation to target, vectorised log / exp / sigmoid parts, lane masks, shift max, log1p and
// streaming stores. Included once, first, by fused_stats.cpp (a single translation unit); the build
// cache key hashes this file with the source.
#pragma once

// Select the widest specialisation of at::vec the compiler targets (-march=native): AVX-512, else AVX2,
// else at::vec's portable default.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__) && \
    !defined(CPU_CAPABILITY_AVX512) && !defined(DICELOSS_NO_AVX512)
#define CPU_CAPABILITY_AVX512
#define CPU_CAPABILITY AVX512
#elif defined(__AVX2__) && defined(__FMA__) && !defined(CPU_CAPABILITY_AVX2)
#define CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY AVX2
#endif

#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <type_traits>

namespace {

template <typename acc_t>
using Vec = at::vec::Vectorized<acc_t>;

template <typename acc_t>
inline acc_t hsum(const Vec<acc_t>& v) {
  alignas(64) acc_t buf[Vec<acc_t>::size()];
  v.store(buf);
  acc_t s = 0;
  for (int i = 0; i < Vec<acc_t>::size(); ++i) s += buf[i];
  return s;
}

// Natural logarithm of positive, finite values. SLEEF's vectorised log in libtorch is slow on this
// target (about 9 ns a value), so float under AVX2 uses the Cephes single-precision polynomial
// (as in sse_mathfun; about 1 ulp); other types keep at::vec's log.
template <typename acc_t>
inline Vec<acc_t> fast_log(const Vec<acc_t>& v) {
  return v.log();
}

#if defined(CPU_CAPABILITY_AVX2)
template <>
inline Vec<float> fast_log<float>(const Vec<float>& v) {
  const __m256 one = _mm256_set1_ps(1.0f);
  __m256 x = v;
  __m256i emm0 = _mm256_srli_epi32(_mm256_castps_si256(x), 23);
  x = _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(~0x7f800000)));
  x = _mm256_or_ps(x, _mm256_set1_ps(0.5f));
  emm0 = _mm256_sub_epi32(emm0, _mm256_set1_epi32(0x7f));
  __m256 e = _mm256_add_ps(_mm256_cvtepi32_ps(emm0), one);
  const __m256 mask = _mm256_cmp_ps(x, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OS);
  const __m256 tmp = _mm256_and_ps(x, mask);
  x = _mm256_sub_ps(x, one);
  e = _mm256_sub_ps(e, _mm256_and_ps(one, mask));
  x = _mm256_add_ps(x, tmp);
  const __m256 z = _mm256_mul_ps(x, x);
  __m256 y = _mm256_set1_ps(7.0376836292E-2f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.1514610310E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.1676998740E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.2420140846E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.4249322787E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-1.6668057665E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(2.0000714765E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(-2.4999993993E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(3.3333331174E-1f));
  y = _mm256_mul_ps(_mm256_mul_ps(y, x), z);
  y = _mm256_fmadd_ps(e, _mm256_set1_ps(-2.12194440e-4f), y);
  y = _mm256_fnmadd_ps(z, _mm256_set1_ps(0.5f), y);
  x = _mm256_add_ps(x, y);
  return _mm256_fmadd_ps(e, _mm256_set1_ps(0.693359375f), x);
}
#endif

#if defined(CPU_CAPABILITY_AVX512)
template <>
inline Vec<float> fast_log<float>(const Vec<float>& v) {
  const __m512 one = _mm512_set1_ps(1.0f);
  __m512 x = v;
  __m512i emm0 = _mm512_srli_epi32(_mm512_castps_si512(x), 23);
  x = _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(~0x7f800000)));
  x = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(x), _mm512_castps_si512(_mm512_set1_ps(0.5f))));
  emm0 = _mm512_sub_epi32(emm0, _mm512_set1_epi32(0x7f));
  __m512 e = _mm512_add_ps(_mm512_cvtepi32_ps(emm0), one);
  const __mmask16 mask = _mm512_cmp_ps_mask(x, _mm512_set1_ps(0.707106781186547524f), _CMP_LT_OS);
  const __m512 tmp = _mm512_maskz_mov_ps(mask, x);
  x = _mm512_sub_ps(x, one);
  e = _mm512_mask_sub_ps(e, mask, e, one);
  x = _mm512_add_ps(x, tmp);
  const __m512 z = _mm512_mul_ps(x, x);
  __m512 y = _mm512_set1_ps(7.0376836292E-2f);
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(-1.1514610310E-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.1676998740E-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(-1.2420140846E-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(1.4249322787E-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(-1.6668057665E-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(2.0000714765E-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(-2.4999993993E-1f));
  y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(3.3333331174E-1f));
  y = _mm512_mul_ps(_mm512_mul_ps(y, x), z);
  y = _mm512_fmadd_ps(e, _mm512_set1_ps(-2.12194440e-4f), y);
  y = _mm512_fnmadd_ps(z, _mm512_set1_ps(0.5f), y);
  x = _mm512_add_ps(x, y);
  return _mm512_fmadd_ps(e, _mm512_set1_ps(0.693359375f), x);
}
#endif

// exp: for float the inlined polynomial of at::vec (20 ulp, about 2.4e-6 relative, flushes results
// below FLT_MIN to 0), about twice the throughput of the SLEEF call; float64 keeps the 1-ulp exp.
template <typename acc_t>
inline Vec<acc_t> fast_exp(const Vec<acc_t>& v) {
  return v.exp();
}

template <>
inline Vec<float> fast_exp<float>(const Vec<float>& v) {
  return v.exp_u20();
}

// exp(v) for v <= 0 (softmax's x - max): the same polynomial as exp_u20 (about 2.4e-6 relative), with
// AVX-512's roundscale and scalef in place of the clamps, conversions and exponent-bit arithmetic:
// 10 instructions instead of 15. Inputs below -104 (and -inf) give 0; NaN stays NaN.
template <typename acc_t>
inline Vec<acc_t> exp_nonpos(const Vec<acc_t>& v) {
  return fast_exp(v);
}

#if defined(CPU_CAPABILITY_AVX512)
template <>
inline Vec<float> exp_nonpos<float>(const Vec<float>& v) {
  const __m512 x = _mm512_max_ps(v, _mm512_set1_ps(-104.0f));  // NaN passes (second operand is v)
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // x - n ln2, in two parts
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(0.00828929059f), _mm512_set1_ps(0.0418978221f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.166676521f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.499991506f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.999999701f));
  p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}
#endif

// The sigmoid through e = exp(-|x|), which never overflows: r = 1 / (1 + e), p = r for x >= 0 and
// e r below; p (1 - p) = e r^2 on both sides, and log(1 + e) is the softplus tail of the BCE.
template <typename acc_t>
struct Sigmoid {
  Vec<acc_t> e, r, p;
};

template <typename acc_t>
inline Sigmoid<acc_t> sigmoid_parts(const Vec<acc_t>& x) {
  const Vec<acc_t> one(acc_t(1));
  const Vec<acc_t> e = exp_nonpos(x.abs().neg());
  const Vec<acc_t> r = one / (one + e);
  return {e, r, Vec<acc_t>::blendv(e * r, r, x >= Vec<acc_t>(acc_t(0)))};
}

// Lanes where the class index t equals c, and acc + val on those lanes only. On AVX-512 the comparison
// writes a mask register that the add takes directly (two instructions instead of four).
template <typename acc_t>
struct Hit {
#if defined(CPU_CAPABILITY_AVX512)
  std::conditional_t<std::is_same_v<acc_t, float>, __mmask16, __mmask8> k;
#else
  Vec<acc_t> k;
#endif
};

template <typename acc_t>
inline Hit<acc_t> hit_lanes(const Vec<acc_t>& t, const Vec<acc_t>& c) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<acc_t, float>) return {_mm512_cmp_ps_mask(t, c, _CMP_EQ_OQ)};
  else return {_mm512_cmp_pd_mask(t, c, _CMP_EQ_OQ)};
#else
  return {t == c};
#endif
}

template <typename acc_t>
inline Vec<acc_t> add_on(const Vec<acc_t>& acc, const Hit<acc_t>& h, const Vec<acc_t>& val) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<acc_t, float>) return _mm512_mask_add_ps(acc, h.k, acc, val);
  else return _mm512_mask_add_pd(acc, h.k, acc, val);
#else
  return acc + (val & h.k);
#endif
}

// max for the softmax shift: no NaN bookkeeping (a NaN logit makes its exp NaN, and with it the whole
// position, whichever the shift), one instruction instead of three.
template <typename acc_t>
inline Vec<acc_t> shift_max(const Vec<acc_t>& a, const Vec<acc_t>& b) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<acc_t, float>) return _mm512_max_ps(a, b);
  if constexpr (std::is_same_v<acc_t, double>) return _mm512_max_pd(a, b);
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<acc_t, float>) return _mm256_max_ps(a, b);
  if constexpr (std::is_same_v<acc_t, double>) return _mm256_max_pd(a, b);
#endif
  return at::vec::maximum(a, b);
}

// log(1 + e) for e in [0, 1], accurate for small e: log(u) * e / (u - 1) with u = 1 + e (Goldberg).
template <typename acc_t>
inline Vec<acc_t> log1p_small(const Vec<acc_t>& e) {
  const Vec<acc_t> one(acc_t(1));
  const Vec<acc_t> u = one + e;
  const Vec<acc_t> d = u - one;
  const Vec<acc_t> r = fast_log(u) * (e / d);
  return Vec<acc_t>::blendv(r, e, d == Vec<acc_t>(acc_t(0)));
}

// float: log(1 + e) = e q(e) with q a degree-9 polynomial fitted to log1p(e)/e on [0, 1] (Chebyshev
// least squares; 1.6e-7 relative in float32 Horner, exact for tiny e): 10 instructions, no log, no division.
template <>
inline Vec<float> log1p_small<float>(const Vec<float>& e) {
  static constexpr float k[] = {1.000000000e+00f, -4.999985099e-01f, 3.332909942e-01f, -2.494780868e-01f,
                                1.965148896e-01f, -1.525144577e-01f, 1.053322032e-01f, -5.643497035e-02f,
                                1.964914240e-02f, -3.214032156e-03f};
  Vec<float> q(k[9]);
  for (int i = 8; i >= 0; --i) q = at::vec::fmadd(q, e, Vec<float>(k[i]));
  return e * q;
}

// Store one vector; with stream, a non-temporal store (64-byte aligned addresses only): the gradient of a
// large input is written once and not read back here, so it skips the read-for-ownership of the line,
// a third of the backward's memory traffic.
template <typename acc_t>
inline void store_vec(const Vec<acc_t>& v, acc_t* dst, bool stream) {
#if defined(CPU_CAPABILITY_AVX512)
  if (stream) {
    if constexpr (std::is_same_v<acc_t, float>) return _mm512_stream_ps(dst, v);
    if constexpr (std::is_same_v<acc_t, double>) return _mm512_stream_pd(dst, v);
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if (stream) {
    if constexpr (std::is_same_v<acc_t, float>) return _mm256_stream_ps(dst, v);
    if constexpr (std::is_same_v<acc_t, double>) return _mm256_stream_pd(dst, v);
  }
#endif
  v.store(dst);
}

inline void store_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

}  // namespace
