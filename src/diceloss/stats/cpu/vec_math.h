// Vector maths of the fused statistics kernel (fused_stats.cpp) for one instruction-set level: exp of
// non-positive arguments, log, the sigmoid's parts, lane masks, the softmax shift, log1p, streaming stores
// and prefetches. Included, after simd.h, inside the level's namespace; float is written once with GCC
// vector operations (the compiler emits the level's instructions), with AVX-512 forms where that level has
// a shorter sequence; float64 keeps the C library's exp and log per lane (correctly rounded to about 1 ulp,
// as the float64 tests against the reference need; its speed is not a target).

// ------------------------------------------------------------------------------------------------
// log of positive, finite values

// Float: the Cephes single-precision polynomial (about 1 ulp on [0.5, 1) times a power of two): split v
// into m 2^e with m in [sqrt(1/2), sqrt(2)), then log(m) by a degree-9 polynomial in m - 1.
template <typename acc_t>
inline Vec<acc_t> fast_log(const Vec<acc_t>& v) {
  if constexpr (std::is_same_v<acc_t, float>) {
    using V = Vec<float>::V;
    using IV = Vec<float>::IV;
    const IV bits = (IV)v.v;
    const IV e_raw = ((bits >> 23) & 0xff) - 0x7f;
    V x = (V)((bits & int32_t(~0x7f800000)) | (IV)(V{} + 0.5f));  // mantissa in [0.5, 1)
    V e = __builtin_convertvector(e_raw, V) + 1.0f;
    const IV small = x < 0.707106781186547524f;  // all-ones lanes
    const V tmp = (V)((IV)x & small);
    x = x - 1.0f;
    e = e - (V)((IV)(V{} + 1.0f) & small);
    x = x + tmp;
    const Vec<float> xv = x, z = x * x;
    Vec<float> y = 7.0376836292E-2f;
    y = fmadd(y, xv, Vec<float>(-1.1514610310E-1f));
    y = fmadd(y, xv, Vec<float>(1.1676998740E-1f));
    y = fmadd(y, xv, Vec<float>(-1.2420140846E-1f));
    y = fmadd(y, xv, Vec<float>(1.4249322787E-1f));
    y = fmadd(y, xv, Vec<float>(-1.6668057665E-1f));
    y = fmadd(y, xv, Vec<float>(2.0000714765E-1f));
    y = fmadd(y, xv, Vec<float>(-2.4999993993E-1f));
    y = fmadd(y, xv, Vec<float>(3.3333331174E-1f));
    y = y * xv * z;
    const Vec<float> ev = e;
    y = fmadd(ev, Vec<float>(-2.12194440e-4f), y);
    y = fmadd(z, Vec<float>(-0.5f), y);
    return fmadd(ev, Vec<float>(0.693359375f), xv + y);
  } else {
    Vec<acc_t> r;
    for (int i = 0; i < Vec<acc_t>::N; ++i) r.v[i] = std::log(v.v[i]);
    return r;
  }
}

// ------------------------------------------------------------------------------------------------
// exp(v) for v <= 0 (softmax's x - max, the sigmoid's -|x|)

// max(v, lo) that keeps a NaN v (x86's max returns its second operand when either is NaN): one instruction
inline Vec<float> clamp_below(const Vec<float>& v, float lo) {
#if defined(DICELOSS_ISA_AVX512)
  return _mm512_max_ps(_mm512_set1_ps(lo), v.v);
#elif defined(DICELOSS_ISA_AVX2)
  return _mm256_max_ps(_mm256_set1_ps(lo), v.v);
#elif defined(DICELOSS_X86)
  return _mm_max_ps(_mm_set1_ps(lo), v.v);
#else
  return v.v < lo ? Vec<float>(lo).v : v.v;
#endif
}

// Float: exp(v) = 2^n exp(r), n = round(v / ln 2), r = v - n ln 2, exp(r) by a degree-5 polynomial (about
// 2.4e-6 relative, as at::vec's exp_u20). The rounding adds and removes 1.5 * 2^23, which leaves n in the low
// mantissa bits of the sum t: 2^n p is then p with t's bits shifted into its exponent, without a conversion
// or a multiplication (11 instructions).
template <typename acc_t>
inline Vec<acc_t> exp_nonpos(const Vec<acc_t>& v) {
  if constexpr (std::is_same_v<acc_t, float>) {
#if defined(DICELOSS_ISA_AVX512)
    // roundscale and scalef in place of the rounding trick and the exponent arithmetic: 10 instructions,
    // not 15; inputs below -104 (and -inf) give 0, results between that and FLT_MIN are subnormal
    const __m512 x = _mm512_max_ps(v.v, _mm512_set1_ps(-104.0f));  // NaN passes (second operand is v)
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(0.00828929059f), _mm512_set1_ps(0.0418978221f));
    p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.166676521f));
    p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.499991506f));
    p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(0.999999701f));
    p = _mm512_fmadd_ps(r, p, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
#else
    using IV = Vec<float>::IV;
    constexpr float magic = 12582912.0f;  // 1.5 * 2^23: its low 9 bits are 0, so (t's bits) << 23 is n << 23
    // max(-87, v): then n >= -126 and, where n = -126, r > 0.3, so 2^n p stays a normal number; exp of anything
    // lower (-inf too) is exp(-87) = 1.6e-38, not 0, which no sum of probabilities can tell apart. NaN passes.
    const Vec<float> x = clamp_below(v, -87.0f);
    const Vec<float> t = fmadd(x, Vec<float>(1.44269504088896341f), Vec<float>(magic));
    const Vec<float> n = t - Vec<float>(magic);
    // r = x - n ln 2 with ln 2 rounded to float: off by at most 126 * 2e-9, far below the polynomial's error
    const Vec<float> r = fmadd(n, Vec<float>(-0.693147182464599609375f), x);
    Vec<float> p = fmadd(r, Vec<float>(0.00828929059f), Vec<float>(0.0418978221f));
    p = fmadd(r, p, Vec<float>(0.166676521f));
    p = fmadd(r, p, Vec<float>(0.499991506f));
    p = fmadd(r, p, Vec<float>(0.999999701f));
    p = fmadd(r, p, Vec<float>(1.0f));
    // 2^n p: n added to p's exponent bits (p is in [0.7, 1.5], so the sum stays a normal number)
    return (typename Vec<float>::V)((IV)p.v + ((IV)t.v << 23));
#endif
  } else {
    Vec<acc_t> r;
    for (int i = 0; i < Vec<acc_t>::N; ++i) r.v[i] = std::exp(v.v[i]);
    return r;
  }
}

// ------------------------------------------------------------------------------------------------
// the sigmoid through e = exp(-|x|), which never overflows: r = 1 / (1 + e), p = r for x >= 0 and
// e r below; p (1 - p) = e r^2 on both sides, and log(1 + e) is the softplus tail of the BCE.

template <typename acc_t>
struct Sigmoid {
  Vec<acc_t> e, r, p;
};

template <typename acc_t>
inline Sigmoid<acc_t> sigmoid_parts(const Vec<acc_t>& x) {
  const Vec<acc_t> one(acc_t(1));
  const Vec<acc_t> e = exp_nonpos(x.neg_abs());
  const Vec<acc_t> r = one / (one + e);
  // the comparison feeds the blend directly (on AVX-512 a mask register)
  return {e, r, x.v >= acc_t(0) ? r.v : (e * r).v};
}

// ------------------------------------------------------------------------------------------------
// Lanes where the class index t equals c, and acc + val on those lanes only. On AVX-512 the comparison
// writes a mask register that the add takes directly (two instructions instead of four).

template <typename acc_t>
struct Hit {
#if defined(DICELOSS_ISA_AVX512)
  std::conditional_t<std::is_same_v<acc_t, float>, __mmask16, __mmask8> k;
#else
  Vec<acc_t> k;
#endif
};

template <typename acc_t>
inline Hit<acc_t> hit_lanes(const Vec<acc_t>& t, const Vec<acc_t>& c) {
#if defined(DICELOSS_ISA_AVX512)
  if constexpr (std::is_same_v<acc_t, float>) return {_mm512_cmp_ps_mask(t.v, c.v, _CMP_EQ_OQ)};
  else return {_mm512_cmp_pd_mask(t.v, c.v, _CMP_EQ_OQ)};
#else
  return {t == c};
#endif
}

template <typename acc_t>
inline Vec<acc_t> add_on(const Vec<acc_t>& acc, const Hit<acc_t>& h, const Vec<acc_t>& val) {
#if defined(DICELOSS_ISA_AVX512)
  if constexpr (std::is_same_v<acc_t, float>) return _mm512_mask_add_ps(acc.v, h.k, acc.v, val.v);
  else return _mm512_mask_add_pd(acc.v, h.k, acc.v, val.v);
#else
  return acc + (val & h.k);
#endif
}

// max(x, 0) for the BCE: a NaN x gives 0 here, but the loss still NaN through its - x g term
template <typename acc_t>
inline Vec<acc_t> positive_part(const Vec<acc_t>& x) {
  return x.v > acc_t(0) ? x.v : typename Vec<acc_t>::V{};
}

// max for the softmax shift: no NaN bookkeeping (a NaN logit makes its exp NaN, and with it the whole
// position, whichever the shift), one instruction.
template <typename acc_t>
inline Vec<acc_t> shift_max(const Vec<acc_t>& a, const Vec<acc_t>& b) {
  return a.v > b.v ? a.v : b.v;
}

// ------------------------------------------------------------------------------------------------
// log(1 + e) for e in [0, 1]

// float64: accurate for small e through log(u) * e / (u - 1) with u = 1 + e (Goldberg).
template <typename acc_t>
inline Vec<acc_t> log1p_small(const Vec<acc_t>& e) {
  if constexpr (std::is_same_v<acc_t, float>) {
    // float: e q(e) with q a degree-9 polynomial fitted to log1p(e)/e on [0, 1] (Chebyshev least squares;
    // 1.6e-7 relative in float32 Horner, exact for tiny e): 10 instructions, no log, no division.
    constexpr float k[] = {1.000000000e+00f, -4.999985099e-01f, 3.332909942e-01f, -2.494780868e-01f,
                           1.965148896e-01f, -1.525144577e-01f, 1.053322032e-01f, -5.643497035e-02f,
                           1.964914240e-02f, -3.214032156e-03f};
    Vec<float> q(k[9]);
    for (int i = 8; i >= 0; --i) q = fmadd(q, e, Vec<float>(k[i]));
    return e * q;
  } else {
    const Vec<acc_t> one(acc_t(1));
    const Vec<acc_t> u = one + e;
    const Vec<acc_t> d = u - one;
    const Vec<acc_t> r = fast_log(u) * (e / d);
    return Vec<acc_t>::blendv(r, e, d == Vec<acc_t>(acc_t(0)));
  }
}

// ------------------------------------------------------------------------------------------------
// memory

// Store one vector; with stream, a non-temporal store (aligned addresses only): the gradient of a large
// input is written once and not read back here, so it skips the read-for-ownership of the line, a third of
// the backward's memory traffic.
template <typename acc_t>
inline void store_vec(const Vec<acc_t>& v, acc_t* dst, bool stream) {
#if defined(DICELOSS_ISA_AVX512)
  if (stream) {
    if constexpr (std::is_same_v<acc_t, float>) return _mm512_stream_ps(dst, v.v);
    else return _mm512_stream_pd(dst, v.v);
  }
#elif defined(DICELOSS_ISA_AVX2)
  if (stream) {
    if constexpr (std::is_same_v<acc_t, float>) return _mm256_stream_ps(dst, v.v);
    else return _mm256_stream_pd(dst, v.v);
  }
#elif defined(DICELOSS_X86)
  if (stream) {
    if constexpr (std::is_same_v<acc_t, float>) return _mm_stream_ps(dst, v.v);
    else return _mm_stream_pd(dst, v.v);
  }
#endif
  v.store(dst);
}

// non-temporal stores are visible to other threads after this
inline void store_fence() {
#if defined(DICELOSS_X86)
  _mm_sfence();
#endif
}

// GCC deletes a loop whose body is only __builtin_prefetch (no side effects, C++ forward progress), so on
// x86 the prefetch is an asm statement.
inline void prefetch_line(const char* p) {
#if defined(DICELOSS_X86)
  asm volatile("prefetcht0 %0" : : "m"(*p));
#else
  __builtin_prefetch(p, 0, 3);
#endif
}
