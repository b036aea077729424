// Fused Dice-family statistics on the CPU: one pass for the statistics, one for the gradient.
//
// Layout (see DESIGN.md, "The fused backward"): x is (B, C, N) contiguous logits; the target is
// (B, N) int64 class indices or (B, C, N) dense probabilities in x's dtype; mask is (B, N) bool or
// undefined. The statistics come back as (B, C, 6) in the accumulation dtype, columns
// [I, P, G, M, E, F] (F, the focal term, is not computed here and stays 0).
//
// Work is split into tasks of a fixed number of positions (independent of the thread count); each
// task writes its own partial sums and the partials are reduced in task order, so results are
// bitwise reproducible whatever the number of threads. Inside a task, positions go through tiles of
// TILE positions staged in small buffers (converted to float for half/bfloat16), so exp and log are
// vectorised (at::vec::Vectorized, SLEEF) along the positions.

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

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#include <algorithm>
#include <type_traits>
#include <cmath>
#include <vector>

namespace {

constexpr int64_t TILE = 64;          // positions per tile (a multiple of every vector width)
constexpr int64_t TASK = 4096;        // positions per task: partial sums, load balance
constexpr int NSTAT = 6;              // I, P, G, M, E, F

enum Activation { SOFTMAX = 0, SIGMOID = 1 };

// Small inputs run on the calling thread: waking a thread pool costs more than the work.
constexpr int64_t SERIAL_ELEMENTS = 1 << 16;

template <typename F>
inline void run_tasks(int64_t ntask, int64_t elements, const F& f) {
  if (elements < SERIAL_ELEMENTS) {
    f(int64_t(0), ntask);
  } else {
    at::parallel_for(0, ntask, 1, f);
  }
}

struct Options {
  int64_t activation;
  bool index_target;
  bool has_ignore;
  int64_t ignore_index;
  bool squared;
  bool cross_entropy;
  double label_smoothing;
};

template <typename acc_t>
using Vec = at::vec::Vectorized<acc_t>;

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

// log(1 + e) for e in [0, 1], accurate for small e: log(u) * e / (u - 1) with u = 1 + e (Goldberg).
template <typename acc_t>
inline Vec<acc_t> log1p_small(const Vec<acc_t>& e) {
  const Vec<acc_t> one(acc_t(1));
  const Vec<acc_t> u = one + e;
  const Vec<acc_t> d = u - one;
  const Vec<acc_t> r = fast_log(u) * (e / d);
  return Vec<acc_t>::blendv(r, e, d == Vec<acc_t>(acc_t(0)));
}

// Rows of a tile: either straight into the tensor (full tile, no conversion) or a staged copy.
template <typename scalar_t, typename acc_t>
struct Rows {
  const acc_t* ptr;
  int64_t stride;
};

template <typename scalar_t, typename acc_t>
inline Rows<scalar_t, acc_t> tile_rows(const scalar_t* base, int64_t N, int64_t C, int64_t cnt, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (cnt == TILE) return {base, N};
  }
  for (int64_t c = 0; c < C; ++c) stage(base + c * N, cnt, buf + c * TILE);
  return {buf, TILE};
}

// Softmax over the classes of a tile: e (C x TILE, unnormalised exp(x - max)), r = 1 / sum_c e per
// position, and, when lse is not null, the log-sum-exp per position (for the cross-entropy).
template <typename acc_t>
inline void softmax_tile(const acc_t* x, int64_t xs, int64_t C, acc_t* e, acc_t* r, acc_t* lse) {
  constexpr int W = Vec<acc_t>::size();
  for (int64_t v = 0; v < TILE; v += W) {
    Vec<acc_t> mx = Vec<acc_t>::loadu(x + v);
    for (int64_t c = 1; c < C; ++c) mx = at::vec::maximum(mx, Vec<acc_t>::loadu(x + c * xs + v));
    Vec<acc_t> s(acc_t(0));
    for (int64_t c = 0; c < C; ++c) {
      const Vec<acc_t> ev = fast_exp(Vec<acc_t>::loadu(x + c * xs + v) - mx);
      ev.store(e + c * TILE + v);
      s = s + ev;
    }
    (Vec<acc_t>(acc_t(1)) / s).store(r + v);
    if (lse) (mx + fast_log(s)).store(lse + v);
  }
}

// The class index of each position of a tile as acc_t, -1 where the position is not valid (masked,
// ignore_index, padding, or an index out of range), and the validity as 0/1.
template <typename acc_t>
inline void index_tile(const int64_t* T, const bool* M, int64_t cnt, int64_t C, const Options& o, acc_t* tb,
                       acc_t* vb) {
  for (int64_t j = 0; j < TILE; ++j) {
    const int64_t t = j < cnt ? T[j] : -1;
    const bool valid = j < cnt && (!M || M[j]) && !(o.has_ignore && t == o.ignore_index) && t >= 0 && t < C;
    tb[j] = valid ? static_cast<acc_t>(t) : acc_t(-1);
    vb[j] = valid ? acc_t(1) : acc_t(0);
  }
}

// ------------------------------------------------------------------------------------------------
// softmax (multiclass): index or dense targets

template <typename scalar_t, typename acc_t>
void softmax_forward(const at::Tensor& x, const at::Tensor& target, const at::Tensor& mask, const Options& o,
                     at::Tensor& out) {
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2);
  const int64_t nblk = (N + TASK - 1) / TASK, ntask = B * nblk;
  const scalar_t* X = x.data_ptr<scalar_t>();
  const int64_t* T = o.index_target ? target.data_ptr<int64_t>() : nullptr;
  const scalar_t* G = o.index_target ? nullptr : target.data_ptr<scalar_t>();
  const bool* M = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  const acc_t eps = static_cast<acc_t>(o.label_smoothing);
  std::vector<double> partial(static_cast<size_t>(ntask) * C * NSTAT, 0.0);
  constexpr int W = Vec<acc_t>::size();

  run_tasks(ntask, x.numel(), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> xbuf(C * TILE), eb(C * TILE), gbuf(o.index_target ? 0 : C * TILE);
    alignas(64) acc_t lse[TILE] = {}, rb[TILE], vb[TILE], tb[TILE];
    // per class: I, P, G, E (E: the whole CE for dense targets; for index targets the part at the
    // target class in accT and the smoothing part in accE)
    std::vector<Vec<acc_t>> accI(C), accP(C), accG(C), accE(C), accT(C);
    const Vec<acc_t> one_eps(acc_t(1) - eps), eps_c(eps / acc_t(C));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nblk, n0 = (task % nblk) * TASK, n1 = std::min(N, n0 + TASK);
      for (int64_t c = 0; c < C; ++c) accI[c] = accP[c] = accG[c] = accE[c] = accT[c] = Vec<acc_t>(acc_t(0));
      Vec<acc_t> accM(acc_t(0));
      for (int64_t t0 = n0; t0 < n1; t0 += TILE) {
        const int64_t cnt = std::min(TILE, n1 - t0);
        const auto xr = tile_rows(X + b * C * N + t0, N, C, cnt, xbuf.data());
        softmax_tile(xr.ptr, xr.stride, C, eb.data(), rb, o.cross_entropy ? lse : nullptr);
        Rows<scalar_t, acc_t> gr{nullptr, 0};
        if (o.index_target) {
          index_tile(T + b * N + t0, M ? M + b * N + t0 : nullptr, cnt, C, o, tb, vb);
        } else {
          gr = tile_rows(G + b * C * N + t0, N, C, cnt, gbuf.data());
          for (int64_t j = 0; j < TILE; ++j) vb[j] = (j < cnt && (!M || M[b * N + t0 + j])) ? acc_t(1) : acc_t(0);
        }
        for (int64_t v = 0; v < TILE; v += W) {
          const Vec<acc_t> m = Vec<acc_t>::loadu(vb + v);
          const Vec<acc_t> mr = m * Vec<acc_t>::loadu(rb + v);  // mask / sum of exp
          const Vec<acc_t> l = Vec<acc_t>::loadu(lse + v);
          const Vec<acc_t> tv = Vec<acc_t>::loadu(tb + v);
          accM = accM + m;
          for (int64_t c = 0; c < C; ++c) {
            const Vec<acc_t> e = Vec<acc_t>::loadu(eb.data() + c * TILE + v);
            const Vec<acc_t> mp = e * mr;  // m * p
            if (o.squared) {
              accP[c] = at::vec::fmadd(mp, e * Vec<acc_t>::loadu(rb + v), accP[c]);
            } else {
              accP[c] = accP[c] + mp;
            }
            if (o.index_target) {
              const Vec<acc_t> hit = tv == Vec<acc_t>(acc_t(c));  // all-ones lanes where t == c (valid only)
              accI[c] = accI[c] + (mp & hit);
              accG[c] = accG[c] + (Vec<acc_t>(acc_t(1)) & hit);
              if (o.cross_entropy) {
                const Vec<acc_t> nll = l - Vec<acc_t>::loadu(xr.ptr + c * xr.stride + v);  // -log p
                accT[c] = accT[c] + (nll & hit);
                if (eps != acc_t(0)) accE[c] = at::vec::fmadd(m, nll, accE[c]);
              }
            } else {
              const Vec<acc_t> g = Vec<acc_t>::loadu(gr.ptr + c * gr.stride + v);
              const Vec<acc_t> mg = m * g;
              accI[c] = at::vec::fmadd(mp, g, accI[c]);
              accG[c] = o.squared ? at::vec::fmadd(mg, g, accG[c]) : accG[c] + mg;
              if (o.cross_entropy) {
                const Vec<acc_t> nll = l - Vec<acc_t>::loadu(xr.ptr + c * xr.stride + v);
                accE[c] = at::vec::fmadd(m * at::vec::fmadd(g, one_eps, eps_c), nll, accE[c]);
              }
            }
          }
        }
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
  acc_t* O = out.data_ptr<acc_t>();
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

template <typename scalar_t, typename acc_t>
void softmax_backward(const at::Tensor& coef, const at::Tensor& x, const at::Tensor& target, const at::Tensor& mask,
                      const Options& o, at::Tensor& grad) {
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2);
  const int64_t nblk = (N + TASK - 1) / TASK, ntask = B * nblk;
  const scalar_t* X = x.data_ptr<scalar_t>();
  scalar_t* D = grad.data_ptr<scalar_t>();
  const int64_t* T = o.index_target ? target.data_ptr<int64_t>() : nullptr;
  const scalar_t* G = o.index_target ? nullptr : target.data_ptr<scalar_t>();
  const bool* M = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  const acc_t* K = coef.data_ptr<acc_t>();  // (B, C, 6): dL/dI, dL/dP, -, -, dL/dE, -
  const acc_t eps = static_cast<acc_t>(o.label_smoothing);
  constexpr int W = Vec<acc_t>::size();

  run_tasks(ntask, x.numel(), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> xbuf(C * TILE), eb(C * TILE), gbuf(o.index_target ? 0 : C * TILE), db(C * TILE);
    std::vector<acc_t> cA(C), cB(C), cK(C), cEK(C);
    alignas(64) acc_t rb[TILE], vb[TILE], tb[TILE];
    const Vec<acc_t> one_eps(acc_t(1) - eps), eps_c(eps / acc_t(C));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nblk, n0 = (task % nblk) * TASK, n1 = std::min(N, n0 + TASK);
      acc_t sumK = 0;
      for (int64_t c = 0; c < C; ++c) {
        const acc_t* k = K + (b * C + c) * NSTAT;
        cA[c] = k[0];
        cB[c] = o.squared ? acc_t(2) * k[1] : k[1];
        cK[c] = o.cross_entropy ? k[4] : acc_t(0);
        cEK[c] = eps / acc_t(C) * cK[c];
        sumK += cK[c];
      }
      const Vec<acc_t> eps_sumK(eps / acc_t(C) * sumK);
      for (int64_t t0 = n0; t0 < n1; t0 += TILE) {
        const int64_t cnt = std::min(TILE, n1 - t0);
        const auto xr = tile_rows(X + b * C * N + t0, N, C, cnt, xbuf.data());
        softmax_tile<acc_t>(xr.ptr, xr.stride, C, eb.data(), rb, nullptr);
        // direct output rows when no conversion and a full tile
        scalar_t* drow = D + b * C * N + t0;
        acc_t* dst = db.data();
        int64_t ds = TILE;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          if (cnt == TILE) {
            dst = drow;
            ds = N;
          }
        }
        if (o.index_target) {
          index_tile(T + b * N + t0, M ? M + b * N + t0 : nullptr, cnt, C, o, tb, vb);
          for (int64_t v = 0; v < TILE; v += W) {
            const Vec<acc_t> m = Vec<acc_t>::loadu(vb + v), r = Vec<acc_t>::loadu(rb + v);
            const Vec<acc_t> tv = Vec<acc_t>::loadu(tb + v);
            // r_n = sum_c p ub_c;  at = A_t p_t;  kt = (1 - eps) K_t + eps/C sum K
            Vec<acc_t> rsum(acc_t(0)), at(acc_t(0)), kt(acc_t(0));
            for (int64_t c = 0; c < C; ++c) {
              const Vec<acc_t> p = Vec<acc_t>::loadu(eb.data() + c * TILE + v) * r;
              const Vec<acc_t> ub = o.squared ? Vec<acc_t>(cB[c]) * p : Vec<acc_t>(cB[c]);
              rsum = at::vec::fmadd(p, ub, rsum);
              const Vec<acc_t> hit = tv == Vec<acc_t>(acc_t(c));
              at = at + ((Vec<acc_t>(cA[c]) * p) & hit);
              if (o.cross_entropy) kt = kt + (Vec<acc_t>(cK[c]) & hit);
            }
            if (o.cross_entropy) kt = at::vec::fmadd(kt, one_eps, eps_sumK) & (m == Vec<acc_t>(acc_t(1)));
            const Vec<acc_t> R = rsum + at - kt;
            for (int64_t c = 0; c < C; ++c) {
              const Vec<acc_t> p = Vec<acc_t>::loadu(eb.data() + c * TILE + v) * r;
              const Vec<acc_t> ub = o.squared ? Vec<acc_t>(cB[c]) * p : Vec<acc_t>(cB[c]);
              Vec<acc_t> d = p * (ub - R) - Vec<acc_t>(cEK[c]);
              const Vec<acc_t> hit = tv == Vec<acc_t>(acc_t(c));
              d = d + ((at - Vec<acc_t>((acc_t(1) - eps) * cK[c])) & hit);
              (m * d).store(dst + c * ds + v);
            }
          }
        } else {
          const auto gr = tile_rows(G + b * C * N + t0, N, C, cnt, gbuf.data());
          for (int64_t j = 0; j < TILE; ++j) vb[j] = (j < cnt && (!M || M[b * N + t0 + j])) ? acc_t(1) : acc_t(0);
          for (int64_t v = 0; v < TILE; v += W) {
            const Vec<acc_t> m = Vec<acc_t>::loadu(vb + v), r = Vec<acc_t>::loadu(rb + v);
            Vec<acc_t> rsum(acc_t(0)), kt(acc_t(0));
            for (int64_t c = 0; c < C; ++c) {
              const Vec<acc_t> p = Vec<acc_t>::loadu(eb.data() + c * TILE + v) * r;
              const Vec<acc_t> g = Vec<acc_t>::loadu(gr.ptr + c * gr.stride + v);
              const Vec<acc_t> ub = o.squared ? Vec<acc_t>(cB[c]) * p : Vec<acc_t>(cB[c]);
              rsum = at::vec::fmadd(p, at::vec::fmadd(Vec<acc_t>(cA[c]), g, ub), rsum);
              if (o.cross_entropy) kt = at::vec::fmadd(Vec<acc_t>(cK[c]), at::vec::fmadd(g, one_eps, eps_c), kt);
            }
            const Vec<acc_t> R = rsum - kt;
            for (int64_t c = 0; c < C; ++c) {
              const Vec<acc_t> p = Vec<acc_t>::loadu(eb.data() + c * TILE + v) * r;
              const Vec<acc_t> g = Vec<acc_t>::loadu(gr.ptr + c * gr.stride + v);
              const Vec<acc_t> ub = o.squared ? Vec<acc_t>(cB[c]) * p : Vec<acc_t>(cB[c]);
              Vec<acc_t> d = p * (at::vec::fmadd(Vec<acc_t>(cA[c]), g, ub) - R);
              if (o.cross_entropy) d = d - Vec<acc_t>(cK[c]) * at::vec::fmadd(g, one_eps, eps_c);
              (m * d).store(dst + c * ds + v);
            }
          }
        }
        if (dst == db.data()) {
          for (int64_t c = 0; c < C; ++c) unstage(db.data() + c * TILE, cnt, drow + c * N);
        }
      }
    }
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

template <typename scalar_t, typename acc_t>
inline SigmoidTile<scalar_t, acc_t> sigmoid_tile(const scalar_t* Xr, const scalar_t* Gr, const bool* Mr,
                                                  int64_t cnt, acc_t* xb, acc_t* gb, acc_t* vb) {
  SigmoidTile<scalar_t, acc_t> t{xb, gb, Mr != nullptr || cnt < TILE};
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
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

template <typename scalar_t, typename acc_t>
void sigmoid_forward(const at::Tensor& x, const at::Tensor& target, const at::Tensor& mask, const Options& o,
                     at::Tensor& out) {
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2);
  const int64_t nblk = (N + TASK - 1) / TASK, ntask = B * C * nblk;
  const scalar_t* X = x.data_ptr<scalar_t>();
  const scalar_t* G = target.data_ptr<scalar_t>();
  const bool* M = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  const acc_t eps = static_cast<acc_t>(o.label_smoothing);
  std::vector<double> partial(static_cast<size_t>(ntask) * NSTAT, 0.0);
  constexpr int W = Vec<acc_t>::size();

  run_tasks(ntask, x.numel(), [&](int64_t begin, int64_t end) {
    alignas(64) acc_t xb[TILE], gb[TILE], vb[TILE];
    const Vec<acc_t> one(acc_t(1)), zero(acc_t(0)), one_eps(acc_t(1) - eps), half_eps(eps / acc_t(2));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bc = task / nblk, b = bc / C, n0 = (task % nblk) * TASK, n1 = std::min(N, n0 + TASK);
      Vec<acc_t> aI(acc_t(0)), aP(acc_t(0)), aG(acc_t(0)), aM(acc_t(0)), aE(acc_t(0));
      for (int64_t t0 = n0; t0 < n1; t0 += TILE) {
        const int64_t cnt = std::min(TILE, n1 - t0);
        const auto tile = sigmoid_tile(X + bc * N + t0, G + bc * N + t0, M ? M + b * N + t0 : nullptr, cnt, xb, gb,
                                       vb);
        for (int64_t v = 0; v < TILE; v += W) {
          const Vec<acc_t> xv = Vec<acc_t>::loadu(tile.x + v);
          Vec<acc_t> g = Vec<acc_t>::loadu(tile.g + v);
          Vec<acc_t> m = tile.use_vb ? Vec<acc_t>::loadu(vb + v) : one;
          valid_target(o, m, g);
          const Vec<acc_t> e = fast_exp(xv.neg());
          const Vec<acc_t> p = one / (one + e);
          const Vec<acc_t> mp = m * p, mg = m * g;
          aI = at::vec::fmadd(mp, g, aI);
          aP = o.squared ? at::vec::fmadd(mp, p, aP) : aP + mp;
          aG = o.squared ? at::vec::fmadd(mg, g, aG) : aG + mg;
          aM = aM + m;
          if (o.cross_entropy) {
            // BCE with logits: max(x, 0) - x g~ + log(1 + exp(-|x|))
            const Vec<acc_t> gs = at::vec::fmadd(g, one_eps, half_eps);
            const Vec<acc_t> bce = at::vec::maximum(xv, zero) - xv * gs + log1p_small(at::vec::minimum(e, one / e));
            aE = at::vec::fmadd(m, bce, aE);
          }
        }
      }
      double* s = partial.data() + task * NSTAT;
      s[0] = hsum(aI);
      s[1] = hsum(aP);
      s[2] = hsum(aG);
      s[3] = hsum(aM);
      s[4] = o.cross_entropy ? double(hsum(aE)) : 0.0;
    }
  });
  acc_t* O = out.data_ptr<acc_t>();
  for (int64_t bc = 0; bc < B * C; ++bc) {
    for (int k = 0; k < NSTAT; ++k) {
      double s = 0;
      for (int64_t blk = 0; blk < nblk; ++blk) s += partial[(bc * nblk + blk) * NSTAT + k];
      O[bc * NSTAT + k] = static_cast<acc_t>(s);
    }
  }
}

template <typename scalar_t, typename acc_t>
void sigmoid_backward(const at::Tensor& coef, const at::Tensor& x, const at::Tensor& target, const at::Tensor& mask,
                      const Options& o, at::Tensor& grad) {
  const int64_t C = x.size(1), N = x.size(2);
  const int64_t nblk = (N + TASK - 1) / TASK, ntask = x.size(0) * C * nblk;
  const scalar_t* X = x.data_ptr<scalar_t>();
  scalar_t* D = grad.data_ptr<scalar_t>();
  const scalar_t* G = target.data_ptr<scalar_t>();
  const bool* M = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  const acc_t* K = coef.data_ptr<acc_t>();
  const acc_t eps = static_cast<acc_t>(o.label_smoothing);
  constexpr int W = Vec<acc_t>::size();

  run_tasks(ntask, x.numel(), [&](int64_t begin, int64_t end) {
    alignas(64) acc_t xb[TILE], gb[TILE], vb[TILE], db[TILE];
    const Vec<acc_t> one(acc_t(1)), one_eps(acc_t(1) - eps), half_eps(eps / acc_t(2));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bc = task / nblk, b = bc / C, n0 = (task % nblk) * TASK, n1 = std::min(N, n0 + TASK);
      const acc_t* k = K + bc * NSTAT;
      const Vec<acc_t> A(k[0]), Bq(o.squared ? acc_t(2) * k[1] : k[1]), KE(o.cross_entropy ? k[4] : acc_t(0));
      for (int64_t t0 = n0; t0 < n1; t0 += TILE) {
        const int64_t cnt = std::min(TILE, n1 - t0);
        const auto tile = sigmoid_tile(X + bc * N + t0, G + bc * N + t0, M ? M + b * N + t0 : nullptr, cnt, xb, gb,
                                       vb);
        scalar_t* drow = D + bc * N + t0;
        acc_t* dst = db;
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          if (cnt == TILE) dst = drow;
        }
        for (int64_t v = 0; v < TILE; v += W) {
          const Vec<acc_t> xv = Vec<acc_t>::loadu(tile.x + v);
          Vec<acc_t> g = Vec<acc_t>::loadu(tile.g + v);
          Vec<acc_t> m = tile.use_vb ? Vec<acc_t>::loadu(vb + v) : one;
          valid_target(o, m, g);
          const Vec<acc_t> p = one / (one + fast_exp(xv.neg()));
          const Vec<acc_t> ub = o.squared ? Bq * p : Bq;
          Vec<acc_t> d = at::vec::fmadd(A, g, ub) * (p * (one - p));
          if (o.cross_entropy) d = at::vec::fmadd(KE, p - at::vec::fmadd(g, one_eps, half_eps), d);
          (m * d).store(dst + v);
        }
        if (dst == db) unstage(db, cnt, drow);
      }
    }
  });
}

// ------------------------------------------------------------------------------------------------
// entry points

Options make_options(int64_t activation, bool index_target, bool has_ignore, int64_t ignore_index, bool squared,
                     bool cross_entropy, double label_smoothing) {
  TORCH_CHECK(activation == SOFTMAX || activation == SIGMOID, "diceloss kernel: activation must be 0 or 1");
  TORCH_CHECK(!(activation == SIGMOID && index_target), "diceloss kernel: sigmoid needs dense targets");
  return Options{activation, index_target, has_ignore, ignore_index, squared, cross_entropy, label_smoothing};
}

void check_inputs(const at::Tensor& x, const at::Tensor& target, const c10::optional<at::Tensor>& mask,
                  const Options& o) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous() && x.device().is_cpu(), "diceloss kernel: x must be (B, C, N) "
              "contiguous on the CPU");
  if (o.index_target) {
    TORCH_CHECK(target.scalar_type() == at::kLong && target.dim() == 2 && target.is_contiguous() &&
                    target.size(0) == x.size(0) && target.size(1) == x.size(2),
                "diceloss kernel: index target must be (B, N) contiguous int64");
  } else {
    TORCH_CHECK(target.scalar_type() == x.scalar_type() && target.sizes() == x.sizes() && target.is_contiguous(),
                "diceloss kernel: dense target must be contiguous, of x's shape and dtype");
  }
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->is_contiguous() && mask->dim() == 2 &&
                    mask->size(0) == x.size(0) && mask->size(1) == x.size(2),
                "diceloss kernel: mask must be (B, N) contiguous bool");
  }
}

at::Tensor stats_forward(const at::Tensor& x, const at::Tensor& target, const c10::optional<at::Tensor>& mask_opt,
                         int64_t activation, bool index_target, bool has_ignore, int64_t ignore_index, bool squared,
                         bool cross_entropy, double label_smoothing) {
  const Options o = make_options(activation, index_target, has_ignore, ignore_index, squared, cross_entropy,
                                 label_smoothing);
  check_inputs(x, target, mask_opt, o);
  const at::Tensor mask = mask_opt.has_value() ? *mask_opt : at::Tensor();
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::zeros({x.size(0), x.size(1), NSTAT}, x.options().dtype(acc));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "diceloss_stats_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (activation == SOFTMAX) softmax_forward<scalar_t, acc_t>(x, target, mask, o, out);
    else sigmoid_forward<scalar_t, acc_t>(x, target, mask, o, out);
  });
  return out;
}

at::Tensor stats_backward(const at::Tensor& coef, const at::Tensor& x, const at::Tensor& target,
                          const c10::optional<at::Tensor>& mask_opt, int64_t activation, bool index_target,
                          bool has_ignore, int64_t ignore_index, bool squared, bool cross_entropy,
                          double label_smoothing) {
  const Options o = make_options(activation, index_target, has_ignore, ignore_index, squared, cross_entropy,
                                 label_smoothing);
  check_inputs(x, target, mask_opt, o);
  const at::Tensor mask = mask_opt.has_value() ? *mask_opt : at::Tensor();
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor k = coef.to(acc).contiguous();
  TORCH_CHECK(k.dim() == 3 && k.size(0) == x.size(0) && k.size(1) == x.size(1) && k.size(2) == NSTAT,
              "diceloss kernel: coefficients must be (B, C, 6)");
  at::Tensor grad = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "diceloss_stats_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (activation == SOFTMAX) softmax_backward<scalar_t, acc_t>(k, x, target, mask, o, grad);
    else sigmoid_backward<scalar_t, acc_t>(k, x, target, mask, o, grad);
  });
  return grad;
}

std::string build_info() {
  std::string s = "vector width " + std::to_string(Vec<float>::size()) + " floats";
#if defined(CPU_CAPABILITY_AVX512)
  s += " (AVX-512)";
#elif defined(CPU_CAPABILITY_AVX2)
  s += " (AVX2)";
#endif
#if defined(_OPENMP)
  s += ", OpenMP";
#endif
  return s;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("stats_forward", &stats_forward, "fused Dice-family statistics (B, C, 6)");
  m.def("stats_backward", &stats_backward, "gradient of the fused statistics with respect to x");
  m.def("build_info", &build_info, "how the kernel was built");
}
