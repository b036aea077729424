// Fused Dice-family statistics on the CPU: one pass for the statistics, one for the gradient.
//
// Layout (see DESIGN.md, "The fused backward"): x is (B, C, N) contiguous logits; the target is
// (B, N) int64 class indices or (B, C, N) dense probabilities in x's dtype (or float32 with float16 /
// bfloat16 logits); mask is (B, N) bool or absent. The statistics come back as (B, C, 6) in the
// accumulation dtype, columns [I, P, G, M, E, F] (F, the focal term, is not computed here and stays 0).
//
// Work is split into tasks of a fixed number of positions (independent of the thread count); each
// task writes its own partial sums and the partials are reduced in task order, so results are
// bitwise reproducible whatever the number of threads. Inside a task, positions go through tiles of
// TILE positions staged in small buffers (converted to float for half/bfloat16), so exp and log are
// vectorised along the positions.
//
// This file is compiled once per instruction-set level (setup.py; benchmarks/README.md, "Instruction-set
// levels"): DICELOSS_ISA_AVX512 (-mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma), DICELOSS_ISA_AVX2
// (-mavx2 -mfma), DICELOSS_ISA_BASELINE (x86-64: SSE2; or any other target), DICELOSS_ISA_NEON (aarch64), or
// DICELOSS_ISA_NATIVE (the just-in-time build with -march=native: the widest of those the compiler targets).
// Everything lives in the namespace diceloss_cpu::<DICELOSS_ISA_NS>; the library (library.cpp) picks one
// level at load time from what the CPU reports. No torch header is included: the kernel sees plain pointers
// (kernel_api.h), so one library serves every torch version of the LibTorch stable ABI.

#if defined(DICELOSS_ISA_NATIVE)
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__) && \
    defined(__FMA__)
#define DICELOSS_ISA_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define DICELOSS_ISA_AVX2
#elif defined(__aarch64__)
#define DICELOSS_ISA_NEON
#else
#define DICELOSS_ISA_BASELINE
#endif
#endif

#if defined(__x86_64__) || defined(__i386__)
#define DICELOSS_X86
#endif

#if defined(DICELOSS_ISA_AVX512)
#if !(defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__) && \
      defined(__FMA__))
#error "the AVX-512 level needs -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma"
#endif
#define DICELOSS_VBYTES 64
#define DICELOSS_ISA_NAME "AVX-512"
#elif defined(DICELOSS_ISA_AVX2)
#if !(defined(__AVX2__) && defined(__FMA__))
#error "the AVX2 level needs -mavx2 -mfma"
#endif
#define DICELOSS_VBYTES 32
#define DICELOSS_ISA_NAME "AVX2"
#elif defined(DICELOSS_ISA_NEON)
#if !defined(__aarch64__)
#error "the NEON level is aarch64's"
#endif
#define DICELOSS_VBYTES 16
#define DICELOSS_ISA_NAME "NEON"
#elif defined(DICELOSS_ISA_BASELINE)
#define DICELOSS_VBYTES 16
#if defined(DICELOSS_X86)
#define DICELOSS_ISA_NAME "SSE2"
#else
#define DICELOSS_ISA_NAME "generic 128-bit"
#endif
#else
#error "define one of DICELOSS_ISA_AVX512, _AVX2, _BASELINE, _NEON or _NATIVE (setup.py and the loader do)"
#endif

#if !defined(DICELOSS_ISA_NS)
#error "define DICELOSS_ISA_NS, the namespace of this level's code"
#endif

// The statistic columns and the activation codes come from diceloss.stats.types, defined by the build.
#if !defined(DICELOSS_NUM_STATS) || !defined(DICELOSS_ACT_SOFTMAX) || !defined(DICELOSS_ACT_SIGMOID)
#error "build through setup.py or diceloss.stats.cpu, which define DICELOSS_NUM_STATS and DICELOSS_ACT_*"
#endif

#include "kernel_api.h"

#if defined(DICELOSS_X86)
#include <immintrin.h>
#endif
#if defined(DICELOSS_ISA_NEON)
#include <arm_neon.h>
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>

namespace diceloss_cpu {
namespace DICELOSS_ISA_NS {
namespace {

#include "simd.h"
#include "vec_math.h"

inline int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

// A heap array of n zeros, 64-byte aligned (a tile's rows then start on cache lines: the backward of C = 21
// classes was 6 % slower without), freed at scope exit: this level's own type (std::vector's out-of-line code
// would be shared with the other levels' by name).
template <typename T>
struct Buffer {
  T* ptr;
  explicit Buffer(int64_t n) : ptr(nullptr) {
    if (n > 0) {
      ptr = static_cast<T*>(::operator new[](size_t(n) * sizeof(T), std::align_val_t(64)));
      for (int64_t i = 0; i < n; ++i) new (ptr + i) T();
    }
  }
  ~Buffer() {
    if (ptr) ::operator delete[](ptr, std::align_val_t(64));
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  T* data() const { return ptr; }
  T& operator[](int64_t i) const { return ptr[i]; }
};

// float16 and bfloat16 as stored (bit patterns), converted to and from float with round-to-nearest-even
// (as torch converts), in software: the same bits on every level.
struct Half {
  uint16_t bits;
  Half() = default;
  explicit Half(float f) : bits(from_float(f)) {}
  explicit operator float() const { return to_float(bits); }
  static float to_float(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    if (exp == 0) {  // zero or subnormal: mant * 2^-24, exact in float
      const float f = float(mant) * 5.9604644775390625e-08f;
      return sign ? -f : f;
    }
    const uint32_t u = exp == 31 ? sign | 0x7f800000u | (mant << 13) : sign | ((exp + 112) << 23) | (mant << 13);
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static uint16_t from_float(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint16_t sign = uint16_t((u >> 16) & 0x8000);
    u &= 0x7fffffffu;
    if (u >= 0x7f800000u) return sign | (u > 0x7f800000u ? 0x7e00 : 0x7c00);  // NaN, inf
    if (u >= 0x477ff000u) return sign | 0x7c00;  // 65520 and above round to inf
    if (u < 0x38800000u) {  // below 2^-14: a subnormal half, round(|f| * 2^24) to even (1.5 * 2^23 trick)
      float a;
      std::memcpy(&a, &u, 4);
      const float big = a * 16777216.0f + 12582912.0f;
      return sign | uint16_t(uint32_t(big - 12582912.0f));
    }
    u += 0xfffu + ((u >> 13) & 1u);  // round to nearest even at bit 13
    return sign | uint16_t((u - (112u << 23)) >> 13);
  }
};

struct BFloat16 {
  uint16_t bits;
  BFloat16() = default;
  explicit BFloat16(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if (f != f) {
      bits = 0x7fc0;
    } else {
      bits = uint16_t((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
  }
  explicit operator float() const {
    const uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

constexpr int64_t TILE = 256;         // positions per tile (a multiple of every vector width)
constexpr int64_t TASK = 4096;        // positions per task: partial sums, load balance
// The statistic columns and the activation codes come from diceloss.stats.types, defined by the loader.
#if !defined(DICELOSS_NUM_STATS) || !defined(DICELOSS_ACT_SOFTMAX) || !defined(DICELOSS_ACT_SIGMOID)
#error "build through diceloss.stats.cpu, which defines DICELOSS_NUM_STATS and DICELOSS_ACT_*"
#endif
constexpr int NSTAT = DICELOSS_NUM_STATS;  // I, P, G, M, E, F

enum Activation { SOFTMAX = DICELOSS_ACT_SOFTMAX, SIGMOID = DICELOSS_ACT_SIGMOID };

// Small inputs run on the calling thread: waking a thread pool costs more than the work.
constexpr int64_t SERIAL_ELEMENTS = 1 << 16;

template <typename F>
void run_range(int64_t begin, int64_t end, void* ctx) {
  (*static_cast<const F*>(ctx))(begin, end);
}

template <typename F>
inline void run_tasks(const Problem& pr, int64_t ntask, int64_t elements, const F& f) {
  if (elements < SERIAL_ELEMENTS || pr.parallel_for == nullptr) {
    f(int64_t(0), ntask);
  } else {
    pr.parallel_for(ntask, 1, &run_range<F>, const_cast<void*>(static_cast<const void*>(&f)));
  }
}

// f(a, b, c) with the three flags as compile-time constants (std::bool_constant): an element loop then carries
// no branch on the options and no factor that they make 1 (eight instantiations of it)
template <typename F>
inline void with_flags(bool a, bool b, bool c, const F& f) {
  const auto third = [&](auto x, auto y) {
    if (c) f(x, y, std::true_type());
    else f(x, y, std::false_type());
  };
  const auto second = [&](auto x) {
    if (b) third(x, std::true_type());
    else third(x, std::false_type());
  };
  if (a) second(std::true_type());
  else second(std::false_type());
}

struct Options {
  int32_t activation;
  bool index_target;
  bool has_ignore;
  int64_t ignore_index;
  bool squared;
  bool cross_entropy;
  double label_smoothing;
};

// Copy `count` values of src (any floating dtype) to dst as acc_t, zero-padded to TILE.
template <typename scalar_t, typename acc_t>
inline void stage(const scalar_t* src, int64_t count, acc_t* dst) {
  for (int64_t j = 0; j < count; ++j) dst[j] = static_cast<acc_t>(src[j]);
  for (int64_t j = count; j < TILE; ++j) dst[j] = acc_t(0);
}

template <typename scalar_t, typename acc_t>
inline void unstage(const acc_t* src, int64_t count, scalar_t* dst) {
  for (int64_t j = 0; j < count; ++j) dst[j] = static_cast<scalar_t>(src[j]);
}

// Software prefetch of the tile PREFETCH positions ahead, every row of it: a tile reads C rows (and
// the backward writes C more) N elements apart, more concurrent streams than the hardware prefetchers
// follow, and without this the first pass over a tile waits on memory.
constexpr int64_t PREFETCH = 2 * TILE;

template <typename T>
inline void prefetch_rows(const T* base, int64_t stride, int64_t rows, int64_t pos, int64_t end) {
  if (pos >= end) return;
  const int64_t n = imin(TILE, end - pos);
  for (int64_t c = 0; c < rows; ++c) {
    const char* p = reinterpret_cast<const char*>(base + c * stride + pos);
    for (int64_t k = 0; k < n * int64_t(sizeof(T)); k += 64) prefetch_line(p + k);
  }
}

// Rows of a tile: either straight into the tensor (full tile, no conversion, few rows) or a staged copy.
// The rows of a tile lie N elements apart, usually a multiple of 4 KiB, so they all fall in the same
// sets of the L1 cache (indexed by the address bits below 4 KiB; 8 to 12 ways): with more rows than
// ways every pass over the tile would miss L1 again. Above DIRECT_ROWS rows the tile is copied once.
constexpr int64_t DIRECT_ROWS = 8;
template <typename scalar_t, typename acc_t>
struct Rows {
  const acc_t* ptr;
  int64_t stride;
};

template <typename scalar_t, typename acc_t>
inline Rows<scalar_t, acc_t> tile_rows(const scalar_t* base, int64_t N, int64_t C, int64_t cnt, acc_t* buf,
                                       int64_t left = 0) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (cnt == TILE && C <= DIRECT_ROWS) {
      prefetch_rows(base, N, C, PREFETCH, left);
      return {base, N};
    }
  }
  // each row's prefetch goes out with its copy, spread over the tile rather than in one burst
  for (int64_t c = 0; c < C; ++c) {
    stage(base + c * N, cnt, buf + c * TILE);
    prefetch_rows(base + c * N, N, 1, PREFETCH, left);
  }
  return {buf, TILE};
}

// Outputs at least this large are written with non-temporal stores (they would not stay in cache).
constexpr int64_t STREAM_BYTES = 8 << 20;

// Vectors handled together in the class loops: U independent dependency chains (the running max, the
// sum of exp, the accumulators) keep the FP pipes busy where one chain per class would wait on latency.
constexpr int U = 4;

// Softmax over the classes of a tile: e (C x TILE, unnormalised exp(x - max)), r = 1 / sum_c e per
// position, and, when lse is not null, the log-sum-exp per position (for the cross-entropy). When wc
// is not null, also ws = r * sum_c wc[c] p_c (SQ: r^2 * sum_c wc[c] e_c^2 = sum_c wc[c] p_c^2), the
// weighted sum that the backward needs, accumulated while the exps are made.
// Classes are the outer loop, U vectors of positions the inner one.
template <typename acc_t, bool SQ = false>
inline void softmax_tile(const acc_t* x, int64_t xs, int64_t C, acc_t* e, acc_t* r, acc_t* lse,
                         const acc_t* wc = nullptr, acc_t* ws = nullptr) {
  constexpr int W = Vec<acc_t>::size();
  static_assert(TILE % (U * W) == 0, "a tile holds whole groups of U vectors");
  for (int64_t v0 = 0; v0 < TILE; v0 += U * W) {
    Vec<acc_t> mx[U], s[U], w[U];
    for (int u = 0; u < U; ++u) mx[u] = Vec<acc_t>::loadu(x + v0 + u * W);
    for (int64_t c = 1; c < C; ++c) {
      for (int u = 0; u < U; ++u) mx[u] = shift_max(mx[u], Vec<acc_t>::loadu(x + c * xs + v0 + u * W));
    }
    for (int u = 0; u < U; ++u) s[u] = w[u] = Vec<acc_t>(acc_t(0));
    for (int64_t c = 0; c < C; ++c) {
      const Vec<acc_t> k = wc ? Vec<acc_t>(wc[c]) : Vec<acc_t>(acc_t(0));
      for (int u = 0; u < U; ++u) {
        const Vec<acc_t> ev = exp_nonpos(Vec<acc_t>::loadu(x + c * xs + v0 + u * W) - mx[u]);
        ev.store(e + c * TILE + v0 + u * W);
        s[u] = s[u] + ev;
        if (wc) w[u] = fmadd(k, SQ ? ev * ev : ev, w[u]);
      }
    }
    for (int u = 0; u < U; ++u) {
      const Vec<acc_t> ru = Vec<acc_t>(acc_t(1)) / s[u];
      ru.store(r + v0 + u * W);
      if (lse) (mx[u] + fast_log(s[u])).store(lse + v0 + u * W);
      if (wc) (SQ ? w[u] * ru * ru : w[u] * ru).store(ws + v0 + u * W);
    }
  }
}

// The class index of each position of a tile as acc_t (tb) and int (ti), -1 where the position is not
// valid (masked, ignore_index, padding, or an index out of range), and the validity as 0/1 (vb).
template <typename acc_t>
inline void index_positions(const int64_t* T, const bool* M, int64_t j0, int64_t cnt, int64_t C, const Options& o,
                            acc_t* tb, acc_t* vb, int32_t* ti) {
  for (int64_t j = j0; j < TILE; ++j) {
    const int64_t t = j < cnt ? T[j] : -1;
    const bool valid = j < cnt && (!M || M[j]) && !(o.has_ignore && t == o.ignore_index) && t >= 0 && t < C;
    tb[j] = valid ? static_cast<acc_t>(t) : acc_t(-1);
    vb[j] = valid ? acc_t(1) : acc_t(0);
    if (ti) ti[j] = valid ? static_cast<int32_t>(t) : -1;
  }
}

template <typename acc_t>
inline void index_tile(const int64_t* T, const bool* M, int64_t cnt, int64_t C, const Options& o, acc_t* tb,
                       acc_t* vb, int32_t* ti = nullptr) {
  index_positions(T, M, 0, cnt, C, o, tb, vb, ti);
}

#if defined(DICELOSS_ISA_AVX512)
// AVX-512, float: 16 positions at a time (the scalar loop above costs as much as the class loops when C
// is small). The validity is a mask register; indices are narrowed to int32 (valid ones lie in [0, C)).
template <>
inline void index_tile<float>(const int64_t* T, const bool* M, int64_t cnt, int64_t C, const Options& o, float* tb,
                              float* vb, int32_t* ti) {
  const __m512i zero = _mm512_setzero_si512(), classes = _mm512_set1_epi64(C);
  const __m512i ignore = _mm512_set1_epi64(o.ignore_index);
  int64_t j = 0;
  for (; j + 16 <= cnt; j += 16) {
    const __m512i lo = _mm512_loadu_si512(T + j), hi = _mm512_loadu_si512(T + j + 8);
    __mmask8 klo = _mm512_cmpge_epi64_mask(lo, zero) & _mm512_cmplt_epi64_mask(lo, classes);
    __mmask8 khi = _mm512_cmpge_epi64_mask(hi, zero) & _mm512_cmplt_epi64_mask(hi, classes);
    if (o.has_ignore) {
      klo &= _mm512_cmpneq_epi64_mask(lo, ignore);
      khi &= _mm512_cmpneq_epi64_mask(hi, ignore);
    }
    __mmask16 k = _mm512_kunpackb(khi, klo);
    if (M) k &= _mm_cmpneq_epi8_mask(_mm_loadu_si128(reinterpret_cast<const __m128i*>(M + j)), _mm_setzero_si128());
    const __m512i t32 =
        _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(lo)), _mm512_cvtepi64_epi32(hi), 1);
    const __m512i t = _mm512_mask_mov_epi32(_mm512_set1_epi32(-1), k, t32);
    _mm512_storeu_ps(tb + j, _mm512_cvtepi32_ps(t));
    _mm512_storeu_ps(vb + j, _mm512_maskz_mov_ps(k, _mm512_set1_ps(1.0f)));
    if (ti) _mm512_storeu_si512(ti + j, t);
  }
  index_positions(T, M, j, cnt, C, o, tb, vb, ti);  // the partial group and the padding
}
#endif

#if defined(DICELOSS_ISA_AVX2)
// AVX2, float: 8 positions at a time, as the AVX-512 version above; the validity is an all-ones lane mask, and the
// int64 indices are narrowed by taking the low half of each (valid ones lie in [0, C)).
template <>
inline void index_tile<float>(const int64_t* T, const bool* M, int64_t cnt, int64_t C, const Options& o, float* tb,
                              float* vb, int32_t* ti) {
  const __m256i classes = _mm256_set1_epi64x(C), minus1 = _mm256_set1_epi64x(-1);
  const __m256i ignore = _mm256_set1_epi64x(o.ignore_index);
  const __m256i low_halves = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t j = 0;
  for (; j + 8 <= cnt; j += 8) {
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(T + j));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(T + j + 4));
    // 0 <= t < C: t > -1 and C > t
    __m256i klo = _mm256_and_si256(_mm256_cmpgt_epi64(lo, minus1), _mm256_cmpgt_epi64(classes, lo));
    __m256i khi = _mm256_and_si256(_mm256_cmpgt_epi64(hi, minus1), _mm256_cmpgt_epi64(classes, hi));
    if (o.has_ignore) {
      klo = _mm256_andnot_si256(_mm256_cmpeq_epi64(lo, ignore), klo);
      khi = _mm256_andnot_si256(_mm256_cmpeq_epi64(hi, ignore), khi);
    }
    // the low 32 bits of each index and of each mask lane, 8 in order
    const __m256i t32 = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm256_castsi256_si128(_mm256_permutevar8x32_epi32(lo, low_halves))),
        _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(hi, low_halves)), 1);
    __m256i k = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm256_castsi256_si128(_mm256_permutevar8x32_epi32(klo, low_halves))),
        _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(khi, low_halves)), 1);
    if (M) {
      const __m256i m = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(M + j)));
      k = _mm256_andnot_si256(_mm256_cmpeq_epi32(m, _mm256_setzero_si256()), k);
    }
    const __m256i t = _mm256_blendv_epi8(_mm256_set1_epi32(-1), t32, k);
    _mm256_storeu_ps(tb + j, _mm256_cvtepi32_ps(t));
    _mm256_storeu_ps(vb + j, _mm256_and_ps(_mm256_castsi256_ps(k), one));
    if (ti) _mm256_storeu_si256(reinterpret_cast<__m256i*>(ti + j), t);
  }
  index_positions(T, M, j, cnt, C, o, tb, vb, ti);  // the partial group and the padding
}
#endif

// The backward's terms at each position's target class t (valid positions; 0 elsewhere):
//   R += A_t p_t - kt,  fix = A_t p_t - (1 - eps) K_t,  kt = (1 - eps) K_t + eps/C sum K (CE only),
// with p_t = e[t][j] r[j] read by index from the tile's exp buffer.
template <typename acc_t>
inline void target_terms(const int32_t* ti, const acc_t* eb, const acc_t* rb, const acc_t* cA, const acc_t* cK,
                         bool ce, acc_t eps, acc_t eps_sumK, acc_t* ws, acc_t* fix) {
  int64_t j = 0;
#if defined(DICELOSS_ISA_AVX512)
  if constexpr (std::is_same_v<acc_t, float>) {
    const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512 zero = _mm512_setzero_ps(), one_eps = _mm512_set1_ps(1.0f - eps), esk = _mm512_set1_ps(eps_sumK);
    for (; j < TILE; j += 16) {
      const __m512i t = _mm512_loadu_si512(ti + j);
      const __mmask16 k = _mm512_cmpge_epi32_mask(t, _mm512_setzero_si512());
      const __m512i at_e = _mm512_add_epi32(_mm512_mullo_epi32(t, _mm512_set1_epi32(int32_t(TILE))),
                                            _mm512_add_epi32(iota, _mm512_set1_epi32(int32_t(j))));
      const __m512 pe = _mm512_mask_i32gather_ps(zero, k, at_e, eb, 4);
      const __m512 a = _mm512_mask_i32gather_ps(zero, k, t, cA, 4);
      const __m512 at = _mm512_maskz_mul_ps(k, _mm512_mul_ps(a, pe), _mm512_loadu_ps(rb + j));
      __m512 kk = zero, kt = zero;
      if (ce) {
        kk = _mm512_mask_i32gather_ps(zero, k, t, cK, 4);
        kt = _mm512_maskz_mov_ps(k, _mm512_fmadd_ps(kk, one_eps, esk));
      }
      _mm512_storeu_ps(ws + j, _mm512_add_ps(_mm512_loadu_ps(ws + j), _mm512_sub_ps(at, kt)));
      _mm512_storeu_ps(fix + j, _mm512_fnmadd_ps(kk, one_eps, at));  // 0 where not valid: at = kk = 0
    }
  }
#elif defined(DICELOSS_ISA_AVX2)
  if constexpr (std::is_same_v<acc_t, float>) {
    // gathers with the validity as lane mask: no branch on the ignored positions, which are random
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), minus1 = _mm256_set1_epi32(-1);
    const __m256 zero = _mm256_setzero_ps(), one_eps = _mm256_set1_ps(1.0f - eps), esk = _mm256_set1_ps(eps_sumK);
    static_assert(TILE == 256, "the tile's row offset is t << 8");
    for (; j < TILE; j += 8) {
      const __m256i t = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ti + j));
      const __m256 k = _mm256_castsi256_ps(_mm256_cmpgt_epi32(t, minus1));
      const __m256i at_e =
          _mm256_add_epi32(_mm256_slli_epi32(t, 8), _mm256_add_epi32(iota, _mm256_set1_epi32(int32_t(j))));
      const __m256 pe = _mm256_mask_i32gather_ps(zero, eb, at_e, k, 4);
      const __m256 a = _mm256_mask_i32gather_ps(zero, cA, t, k, 4);
      const __m256 at = _mm256_and_ps(k, _mm256_mul_ps(_mm256_mul_ps(a, pe), _mm256_loadu_ps(rb + j)));
      __m256 kk = zero, kt = zero;
      if (ce) {
        kk = _mm256_mask_i32gather_ps(zero, cK, t, k, 4);
        kt = _mm256_and_ps(k, _mm256_fmadd_ps(kk, one_eps, esk));
      }
      _mm256_storeu_ps(ws + j, _mm256_add_ps(_mm256_loadu_ps(ws + j), _mm256_sub_ps(at, kt)));
      _mm256_storeu_ps(fix + j, _mm256_fnmadd_ps(kk, one_eps, at));
    }
  }
#endif
  for (; j < TILE; ++j) {
    const int32_t t = ti[j];
    if (t < 0) {
      fix[j] = acc_t(0);
      continue;
    }
    const acc_t at = cA[t] * eb[t * TILE + j] * rb[j];
    const acc_t kt = ce ? (acc_t(1) - eps) * cK[t] + eps_sumK : acc_t(0);
    ws[j] += at - kt;
    fix[j] = at - (acc_t(1) - eps) * cK[t];
  }
}

// ------------------------------------------------------------------------------------------------
// softmax (multiclass): index or dense targets

template <typename scalar_t, typename acc_t, typename target_t>
void softmax_forward(const Problem& pr, const Options& o) {
  const int64_t B = pr.B, C = pr.C, N = pr.N;
  const int64_t nblk = (N + TASK - 1) / TASK, ntask = B * nblk;
  const scalar_t* X = static_cast<const scalar_t*>(pr.x);
  const int64_t* T = o.index_target ? static_cast<const int64_t*>(pr.target) : nullptr;
  const target_t* G = o.index_target ? nullptr : static_cast<const target_t*>(pr.target);
  const bool* M = pr.mask;
  const acc_t eps = static_cast<acc_t>(o.label_smoothing);
  Buffer<double> partial(ntask * C * NSTAT);
  constexpr int W = Vec<acc_t>::size();

  run_tasks(pr, ntask, B * C * N, [&](int64_t begin, int64_t end) {
    Buffer<acc_t> xbuf(C * TILE), eb(C * TILE), gbuf(o.index_target ? 0 : C * TILE);
    alignas(64) acc_t lse[TILE] = {}, rb[TILE], vb[TILE], tb[TILE] = {};
    // per class: I, P, G, E (E: the whole CE for dense targets; for index targets the part at the
    // target class in accT and the smoothing part in accE)
    Buffer<Vec<acc_t>> accI(C), accP(C), accG(C), accE(C), accT(C);
    const Vec<acc_t> one_eps(acc_t(1) - eps), eps_c(eps / acc_t(C));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nblk, n0 = (task % nblk) * TASK, n1 = imin(N, n0 + TASK);
      for (int64_t c = 0; c < C; ++c) accI[c] = accP[c] = accG[c] = accE[c] = accT[c] = Vec<acc_t>(acc_t(0));
      Vec<acc_t> accM(acc_t(0));
      for (int64_t t0 = n0; t0 < n1; t0 += TILE) {
        const int64_t cnt = imin(TILE, n1 - t0);
        if (o.index_target) prefetch_rows(T + b * N, N, 1, t0 + PREFETCH, N);
        const auto xr = tile_rows(X + b * C * N + t0, N, C, cnt, xbuf.data(), N - t0);
        softmax_tile(xr.ptr, xr.stride, C, eb.data(), rb, o.cross_entropy ? lse : nullptr);
        Rows<target_t, acc_t> gr{nullptr, 0};
        if (o.index_target) {
          index_tile(T + b * N + t0, M ? M + b * N + t0 : nullptr, cnt, C, o, tb, vb);
        } else {
          gr = tile_rows(G + b * C * N + t0, N, C, cnt, gbuf.data(), N - t0);
          for (int64_t j = 0; j < TILE; ++j) vb[j] = (j < cnt && (!M || M[b * N + t0 + j])) ? acc_t(1) : acc_t(0);
        }
        // the class loops with the options as compile-time constants (no branch inside)
        with_flags(o.index_target, o.squared, o.cross_entropy, [&](auto index, auto squared, auto ce) {
        for (int64_t v0 = 0; v0 < TILE; v0 += U * W) {
          Vec<acc_t> m[U], mr[U], rr[U], l[U], tv[U];
          for (int u = 0; u < U; ++u) {
            const int64_t v = v0 + u * W;
            m[u] = Vec<acc_t>::loadu(vb + v);
            rr[u] = Vec<acc_t>::loadu(rb + v);
            mr[u] = m[u] * rr[u];  // mask / sum of exp
            if constexpr (ce) l[u] = Vec<acc_t>::loadu(lse + v);
            if constexpr (index) tv[u] = Vec<acc_t>::loadu(tb + v);
            accM = accM + m[u];
          }
          for (int64_t c = 0; c < C; ++c) {
            Vec<acc_t> aI = accI[c], aP = accP[c], aG = accG[c], aE = accE[c], aT = accT[c];
            const Vec<acc_t> cv(static_cast<acc_t>(c));
            for (int u = 0; u < U; ++u) {
              const int64_t v = v0 + u * W;
              const Vec<acc_t> e = Vec<acc_t>::loadu(eb.data() + c * TILE + v);
              const Vec<acc_t> mp = e * mr[u];  // m * p
              aP = squared ? fmadd(mp, e * rr[u], aP) : aP + mp;
              if constexpr (index) {
                const Hit<acc_t> hit = hit_lanes(tv[u], cv);  // lanes where t == c (valid positions only)
                aI = add_on(aI, hit, mp);
                aG = add_on(aG, hit, Vec<acc_t>(acc_t(1)));
                if constexpr (ce) {
                  const Vec<acc_t> nll = l[u] - Vec<acc_t>::loadu(xr.ptr + c * xr.stride + v);  // -log p
                  aT = add_on(aT, hit, nll);
                  if (eps != acc_t(0)) aE = fmadd(m[u], nll, aE);
                }
              } else {
                const Vec<acc_t> g = Vec<acc_t>::loadu(gr.ptr + c * gr.stride + v);
                const Vec<acc_t> mg = m[u] * g;
                aI = fmadd(mp, g, aI);
                aG = squared ? fmadd(mg, g, aG) : aG + mg;
                if constexpr (ce) {
                  const Vec<acc_t> nll = l[u] - Vec<acc_t>::loadu(xr.ptr + c * xr.stride + v);
                  aE = fmadd(m[u] * fmadd(g, one_eps, eps_c), nll, aE);
                }
              }
            }
            accI[c] = aI;
            accP[c] = aP;
            accG[c] = aG;
            accE[c] = aE;
            accT[c] = aT;
          }
        }
        });
      }
      double* out_t = partial.data() + task * C * NSTAT;
      const double count = hsum(accM);
      for (int64_t c = 0; c < C; ++c) {
        double* s = out_t + c * NSTAT;
        s[0] = hsum(accI[c]);
        s[1] = hsum(accP[c]);
        s[2] = hsum(accG[c]);
        s[3] = count;
        if (!o.cross_entropy) {
          s[4] = 0.0;
        } else if (o.index_target) {
          s[4] = double(acc_t(1) - eps) * double(hsum(accT[c])) + double(eps) / C * double(hsum(accE[c]));
        } else {
          s[4] = hsum(accE[c]);
        }
      }
    }
  });
  // deterministic reduction in task order
  acc_t* O = static_cast<acc_t*>(pr.out);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c = 0; c < C; ++c) {
      for (int k = 0; k < NSTAT; ++k) {
        double s = 0;
        for (int64_t blk = 0; blk < nblk; ++blk) s += partial[((b * nblk + blk) * C + c) * NSTAT + k];
        O[(b * C + c) * NSTAT + k] = static_cast<acc_t>(s);
      }
    }
  }
}

template <typename scalar_t, typename acc_t, typename target_t>
void softmax_backward(const Problem& pr, const Options& o) {
  const int64_t B = pr.B, C = pr.C, N = pr.N;
  const int64_t nblk = (N + TASK - 1) / TASK, ntask = B * nblk;
  const scalar_t* X = static_cast<const scalar_t*>(pr.x);
  scalar_t* D = static_cast<scalar_t*>(pr.out);
  const int64_t* T = o.index_target ? static_cast<const int64_t*>(pr.target) : nullptr;
  const target_t* G = o.index_target ? nullptr : static_cast<const target_t*>(pr.target);
  const bool* M = pr.mask;
  const acc_t* K = static_cast<const acc_t*>(pr.coef);  // (B, C, 6): dL/dI, dL/dP, -, -, dL/dE, -
  const acc_t eps = static_cast<acc_t>(o.label_smoothing);
  constexpr int W = Vec<acc_t>::size();

  // rows stay 64-byte aligned when N * sizeof is a multiple of 64
  const bool stream_out = B * C * N * int64_t(sizeof(scalar_t)) >= STREAM_BYTES &&
                          (N * int64_t(sizeof(scalar_t))) % VBYTES == 0;
  run_tasks(pr, ntask, B * C * N, [&](int64_t begin, int64_t end) {
    Buffer<acc_t> xbuf(C * TILE), eb(C * TILE), gbuf(o.index_target ? 0 : C * TILE), db(C * TILE);
    Buffer<acc_t> cA(C), cB(C), cK(C), cEK(C);
    alignas(64) acc_t rb[TILE], vb[TILE], tb[TILE], ws[TILE], fix[TILE];
    int32_t ti[TILE];
    const Vec<acc_t> one_eps(acc_t(1) - eps), eps_c(eps / acc_t(C));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nblk, n0 = (task % nblk) * TASK, n1 = imin(N, n0 + TASK);
      acc_t sumK = 0;
      for (int64_t c = 0; c < C; ++c) {
        const acc_t* k = K + (b * C + c) * NSTAT;
        cA[c] = k[0];
        cB[c] = o.squared ? acc_t(2) * k[1] : k[1];
        cK[c] = o.cross_entropy ? k[4] : acc_t(0);
        cEK[c] = eps / acc_t(C) * cK[c];
        sumK += cK[c];
      }
      const acc_t eps_sumK = eps / acc_t(C) * sumK;
      for (int64_t t0 = n0; t0 < n1; t0 += TILE) {
        const int64_t cnt = imin(TILE, n1 - t0);
        if (o.index_target) prefetch_rows(T + b * N, N, 1, t0 + PREFETCH, N);
        const auto xr = tile_rows(X + b * C * N + t0, N, C, cnt, xbuf.data(), N - t0);
        // direct output rows when no conversion and a full tile
        scalar_t* drow = D + b * C * N + t0;
        acc_t* dst = db.data();
        int64_t ds = TILE;
        bool stream = false;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          if (cnt == TILE) {
            dst = drow;
            ds = N;
            stream = stream_out && reinterpret_cast<uintptr_t>(drow) % 64 == 0;
          }
        }
        if (o.index_target) {
          // R_n = sum_c p_c ub_c + A_t p_t - kt, with ub_c = Bq_c (p_c Bq_c squared) and kt = (1 - eps) K_t +
          // eps/C sum K; d_c = m (p_c (ub_c - R) - eps/C K_c), plus m (A_t p_t - (1 - eps) K_t) at c = t.
          // The sum over the classes comes out of the exp pass (ws); the target class is read by its index.
          if (o.squared) {
            softmax_tile<acc_t, true>(xr.ptr, xr.stride, C, eb.data(), rb, nullptr, cB.data(), ws);
          } else {
            softmax_tile<acc_t, false>(xr.ptr, xr.stride, C, eb.data(), rb, nullptr, cB.data(), ws);
          }
          index_tile(T + b * N + t0, M ? M + b * N + t0 : nullptr, cnt, C, o, tb, vb, ti);
          target_terms(ti, eb.data(), rb, cA.data(), cK.data(), o.cross_entropy, eps, eps_sumK, ws, fix);  // R, fix
          with_flags(o.squared, o.cross_entropy, stream, [&](auto squared, auto ce, auto streamed) {
          for (int64_t v0 = 0; v0 < TILE; v0 += U * W) {
            Vec<acc_t> m[U], r[U], R[U], F[U], tv[U];
            for (int u = 0; u < U; ++u) {
              m[u] = Vec<acc_t>::loadu(vb + v0 + u * W);
              r[u] = Vec<acc_t>::loadu(rb + v0 + u * W);
              R[u] = Vec<acc_t>::loadu(ws + v0 + u * W);
              F[u] = Vec<acc_t>::loadu(fix + v0 + u * W);
              tv[u] = Vec<acc_t>::loadu(tb + v0 + u * W);
            }
            for (int64_t c = 0; c < C; ++c) {
              const Vec<acc_t> bq(cB[c]), ek(cEK[c]), cv(static_cast<acc_t>(c));
              for (int u = 0; u < U; ++u) {
                const int64_t v = v0 + u * W;
                const Vec<acc_t> p = Vec<acc_t>::loadu(eb.data() + c * TILE + v) * r[u];
                const Vec<acc_t> ub = squared ? bq * p : bq;
                Vec<acc_t> d = p * (ub - R[u]);
                if constexpr (ce) d = d - ek;
                // m * d, plus the target class's term (fix is 0 where the position is not valid)
                store_vec(add_on(m[u] * d, hit_lanes(tv[u], cv), F[u]), dst + c * ds + v, streamed);
              }
            }
          }
          });
        } else {
          softmax_tile<acc_t>(xr.ptr, xr.stride, C, eb.data(), rb, nullptr);
          const auto gr = tile_rows(G + b * C * N + t0, N, C, cnt, gbuf.data(), N - t0);
          for (int64_t j = 0; j < TILE; ++j) vb[j] = (j < cnt && (!M || M[b * N + t0 + j])) ? acc_t(1) : acc_t(0);
          for (int64_t v = 0; v < TILE; v += W) {
            const Vec<acc_t> m = Vec<acc_t>::loadu(vb + v), r = Vec<acc_t>::loadu(rb + v);
            Vec<acc_t> rsum(acc_t(0)), kt(acc_t(0));
            for (int64_t c = 0; c < C; ++c) {
              const Vec<acc_t> p = Vec<acc_t>::loadu(eb.data() + c * TILE + v) * r;
              const Vec<acc_t> g = Vec<acc_t>::loadu(gr.ptr + c * gr.stride + v);
              const Vec<acc_t> ub = o.squared ? Vec<acc_t>(cB[c]) * p : Vec<acc_t>(cB[c]);
              rsum = fmadd(p, fmadd(Vec<acc_t>(cA[c]), g, ub), rsum);
              if (o.cross_entropy) kt = fmadd(Vec<acc_t>(cK[c]), fmadd(g, one_eps, eps_c), kt);
            }
            const Vec<acc_t> R = rsum - kt;
            for (int64_t c = 0; c < C; ++c) {
              const Vec<acc_t> p = Vec<acc_t>::loadu(eb.data() + c * TILE + v) * r;
              const Vec<acc_t> g = Vec<acc_t>::loadu(gr.ptr + c * gr.stride + v);
              const Vec<acc_t> ub = o.squared ? Vec<acc_t>(cB[c]) * p : Vec<acc_t>(cB[c]);
              Vec<acc_t> d = p * (fmadd(Vec<acc_t>(cA[c]), g, ub) - R);
              if (o.cross_entropy) d = d - Vec<acc_t>(cK[c]) * fmadd(g, one_eps, eps_c);
              (m * d).store(dst + c * ds + v);
            }
          }
        }
        if (dst == db.data()) {
          for (int64_t c = 0; c < C; ++c) unstage(db.data() + c * TILE, cnt, drow + c * N);
        }
      }
    }
    if (stream_out) store_fence();  // non-temporal stores are visible before the task ends
  });
}

// ------------------------------------------------------------------------------------------------
// sigmoid (binary, multilabel): dense targets, every element independent

// One tile of one (sample, class) row: pointers to x and g (straight into the tensors for a full tile
// without conversion, else staged), and whether the validity must be read from vb (a mask, or padding).
// ignore_index is applied in the vector loop (valid_target).
template <typename scalar_t, typename acc_t>
struct SigmoidTile {
  const acc_t* x;
  const acc_t* g;
  bool use_vb;
};

template <typename scalar_t, typename target_t, typename acc_t>
inline SigmoidTile<scalar_t, acc_t> sigmoid_tile(const scalar_t* Xr, const target_t* Gr, const bool* Mr,
                                                  int64_t cnt, acc_t* xb, acc_t* gb, acc_t* vb) {
  SigmoidTile<scalar_t, acc_t> t{xb, gb, Mr != nullptr || cnt < TILE};
  if constexpr (std::is_same_v<scalar_t, acc_t> && std::is_same_v<target_t, acc_t>) {
    if (cnt == TILE) {
      t.x = Xr;
      t.g = Gr;
    }
  }
  if (t.x == xb) {
    stage(Xr, cnt, xb);
    stage(Gr, cnt, gb);
  }
  if (t.use_vb) {
    for (int64_t j = 0; j < TILE; ++j) vb[j] = (j < cnt && (!Mr || Mr[j])) ? acc_t(1) : acc_t(0);
  }
  return t;
}

// m and g of one vector: elements whose target equals ignore_index are invalid and their g is 0.
template <typename acc_t>
inline void valid_target(const Options& o, Vec<acc_t>& m, Vec<acc_t>& g) {
  if (o.has_ignore) {
    const Vec<acc_t> keep = g != Vec<acc_t>(static_cast<acc_t>(o.ignore_index));
    m = m & keep;
    g = g & keep;
  }
}

template <typename scalar_t, typename acc_t, typename target_t>
void sigmoid_forward(const Problem& pr, const Options& o) {
  const int64_t B = pr.B, C = pr.C, N = pr.N;
  const int64_t nblk = (N + TASK - 1) / TASK, ntask = B * C * nblk;
  const scalar_t* X = static_cast<const scalar_t*>(pr.x);
  const target_t* G = static_cast<const target_t*>(pr.target);
  const bool* M = pr.mask;
  const acc_t eps = static_cast<acc_t>(o.label_smoothing);
  Buffer<double> partial(ntask * NSTAT);
  constexpr int W = Vec<acc_t>::size();

  run_tasks(pr, ntask, B * C * N, [&](int64_t begin, int64_t end) {
    alignas(64) acc_t xb[TILE], gb[TILE], vb[TILE];
    const Vec<acc_t> one(acc_t(1)), one_eps(acc_t(1) - eps), half_eps(eps / acc_t(2));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bc = task / nblk, b = bc / C, n0 = (task % nblk) * TASK, n1 = imin(N, n0 + TASK);
      Vec<acc_t> aI(acc_t(0)), aP(acc_t(0)), aG(acc_t(0)), aM(acc_t(0)), aE(acc_t(0));
      int64_t whole = 0;  // elements of the unmasked tiles (aM counts the others)
      for (int64_t t0 = n0; t0 < n1; t0 += TILE) {
        const int64_t cnt = imin(TILE, n1 - t0);
        const auto tile = sigmoid_tile(X + bc * N + t0, G + bc * N + t0, M ? M + b * N + t0 : nullptr, cnt, xb, gb,
                                       vb);
        // every element counts (no mask, no ignore_index, a full tile): no validity factor to apply
        const auto body = [&](auto masked, auto squared, auto ce) {
          for (int64_t v = 0; v < TILE; v += W) {
            const Vec<acc_t> xv = Vec<acc_t>::loadu(tile.x + v);
            Vec<acc_t> g = Vec<acc_t>::loadu(tile.g + v);
            Vec<acc_t> m = one;
            if constexpr (masked) {
              m = tile.use_vb ? Vec<acc_t>::loadu(vb + v) : one;
              valid_target(o, m, g);
            }
            const Sigmoid<acc_t> sg = sigmoid_parts(xv);
            const Vec<acc_t> p = sg.p;
            const Vec<acc_t> mp = masked ? m * p : p, mg = masked ? m * g : g;
            aI = fmadd(mp, g, aI);
            aP = squared ? fmadd(mp, p, aP) : aP + mp;
            aG = squared ? fmadd(mg, g, aG) : aG + mg;
            if constexpr (masked) aM = aM + m;
            if constexpr (ce) {
              // BCE with logits: max(x, 0) - x g~ + log(1 + exp(-|x|))
              const Vec<acc_t> gs = fmadd(g, one_eps, half_eps);
              const Vec<acc_t> bce = positive_part(xv) - xv * gs + log1p_small(sg.e);
              aE = masked ? fmadd(m, bce, aE) : aE + bce;
            }
          }
        };
        const bool masked = tile.use_vb || o.has_ignore;
        with_flags(masked, o.squared, o.cross_entropy, body);
        if (!masked) whole += TILE;
      }
      double* s = partial.data() + task * NSTAT;
      s[0] = hsum(aI);
      s[1] = hsum(aP);
      s[2] = hsum(aG);
      s[3] = double(hsum(aM)) + double(whole);
      s[4] = o.cross_entropy ? double(hsum(aE)) : 0.0;
    }
  });
  acc_t* O = static_cast<acc_t*>(pr.out);
  for (int64_t bc = 0; bc < B * C; ++bc) {
    for (int k = 0; k < NSTAT; ++k) {
      double s = 0;
      for (int64_t blk = 0; blk < nblk; ++blk) s += partial[(bc * nblk + blk) * NSTAT + k];
      O[bc * NSTAT + k] = static_cast<acc_t>(s);
    }
  }
}

template <typename scalar_t, typename acc_t, typename target_t>
void sigmoid_backward(const Problem& pr, const Options& o) {
  const int64_t C = pr.C, N = pr.N;
  const int64_t nblk = (N + TASK - 1) / TASK, ntask = pr.B * C * nblk;
  const scalar_t* X = static_cast<const scalar_t*>(pr.x);
  scalar_t* D = static_cast<scalar_t*>(pr.out);
  const target_t* G = static_cast<const target_t*>(pr.target);
  const bool* M = pr.mask;
  const acc_t* K = static_cast<const acc_t*>(pr.coef);
  const acc_t eps = static_cast<acc_t>(o.label_smoothing);
  constexpr int W = Vec<acc_t>::size();

  run_tasks(pr, ntask, pr.B * C * N, [&](int64_t begin, int64_t end) {
    alignas(64) acc_t xb[TILE], gb[TILE], vb[TILE], db[TILE];
    const Vec<acc_t> one(acc_t(1)), one_eps(acc_t(1) - eps), half_eps(eps / acc_t(2));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bc = task / nblk, b = bc / C, n0 = (task % nblk) * TASK, n1 = imin(N, n0 + TASK);
      const acc_t* k = K + bc * NSTAT;
      const Vec<acc_t> A(k[0]), Bq(o.squared ? acc_t(2) * k[1] : k[1]), KE(o.cross_entropy ? k[4] : acc_t(0));
      for (int64_t t0 = n0; t0 < n1; t0 += TILE) {
        const int64_t cnt = imin(TILE, n1 - t0);
        const auto tile = sigmoid_tile(X + bc * N + t0, G + bc * N + t0, M ? M + b * N + t0 : nullptr, cnt, xb, gb,
                                       vb);
        scalar_t* drow = D + bc * N + t0;
        acc_t* dst = db;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          if (cnt == TILE) dst = drow;
        }
        const auto body = [&](auto masked, auto squared, auto ce) {
          for (int64_t v = 0; v < TILE; v += W) {
            const Vec<acc_t> xv = Vec<acc_t>::loadu(tile.x + v);
            Vec<acc_t> g = Vec<acc_t>::loadu(tile.g + v);
            Vec<acc_t> m = one;
            if constexpr (masked) {
              m = tile.use_vb ? Vec<acc_t>::loadu(vb + v) : one;
              valid_target(o, m, g);
            }
            const Sigmoid<acc_t> sg = sigmoid_parts(xv);
            Vec<acc_t> ub = Bq;
            if constexpr (squared) ub = Bq * sg.p;
            Vec<acc_t> d = fmadd(A, g, ub) * (sg.e * sg.r * sg.r);  // p (1 - p)
            if constexpr (ce) d = fmadd(KE, sg.p - fmadd(g, one_eps, half_eps), d);
            (masked ? m * d : d).store(dst + v);
          }
        };
        with_flags(tile.use_vb || o.has_ignore, o.squared, o.cross_entropy, body);
        if (dst == db) unstage(db, cnt, drow);
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// entry points

Options make_options(const Problem& pr) {
  return Options{pr.activation, pr.target_dtype == INT64, pr.has_ignore, pr.ignore_index, pr.squared,
                 pr.cross_entropy, pr.label_smoothing};
}

// f(scalar_t, acc_t, target_t) for the logits' dtype and the target's (its own, or float32 with half logits);
// the library has checked the combination
template <typename F>
void dispatch(const Problem& pr, F f) {
  const bool wide = pr.target_dtype == FLOAT32 && (pr.dtype == FLOAT16 || pr.dtype == BFLOAT16);
  switch (pr.dtype) {
    case FLOAT32:
      f(float(), float(), float());
      break;
    case FLOAT64:
      f(double(), double(), double());
      break;
    case FLOAT16:
      if (wide) f(Half(), float(), float());
      else f(Half(), float(), Half());
      break;
    case BFLOAT16:
      if (wide) f(BFloat16(), float(), float());
      else f(BFloat16(), float(), BFloat16());
      break;
    default:
      break;
  }
}

}  // namespace

void stats_forward(const Problem& pr) {
  const Options o = make_options(pr);
  dispatch(pr, [&](auto s, auto a, auto t) {
    using scalar_t = decltype(s);
    using acc_t = decltype(a);
    using target_t = decltype(t);
    if (o.activation == SOFTMAX) softmax_forward<scalar_t, acc_t, target_t>(pr, o);
    else sigmoid_forward<scalar_t, acc_t, target_t>(pr, o);
  });
}

void stats_backward(const Problem& pr) {
  const Options o = make_options(pr);
  dispatch(pr, [&](auto s, auto a, auto t) {
    using scalar_t = decltype(s);
    using acc_t = decltype(a);
    using target_t = decltype(t);
    if (o.activation == SOFTMAX) softmax_backward<scalar_t, acc_t, target_t>(pr, o);
    else sigmoid_backward<scalar_t, acc_t, target_t>(pr, o);
  });
}

int32_t float_lanes() { return Vec<float>::size(); }

const char* isa_name() { return DICELOSS_ISA_NAME; }

}  // namespace DICELOSS_ISA_NS
}  // namespace diceloss_cpu
