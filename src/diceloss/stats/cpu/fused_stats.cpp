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

// The ISA-specific vector maths (and the choice of the at::vec specialisation) live in vec_math.h.
#include "vec_math.h"

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/extension.h>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <algorithm>
#include <type_traits>
#include <cmath>
#include <vector>

namespace {

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

// GCC deletes a loop whose body is only __builtin_prefetch (no side effects, C++ forward progress),
// so on x86 the prefetch is an asm statement.
inline void prefetch_line(const char* p) {
#if defined(__x86_64__) || defined(__i386__)
  asm volatile("prefetcht0 %0" : : "m"(*p));
#else
  __builtin_prefetch(p, 0, 3);
#endif
}

template <typename T>
inline void prefetch_rows(const T* base, int64_t stride, int64_t rows, int64_t pos, int64_t end) {
  if (pos >= end) return;
  const int64_t n = std::min(TILE, end - pos);
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
        if (wc) w[u] = at::vec::fmadd(k, SQ ? ev * ev : ev, w[u]);
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

#if defined(CPU_CAPABILITY_AVX512)
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
    const __m512i t32 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(lo)), _mm512_cvtepi64_epi32(hi), 1);
    const __m512i t = _mm512_mask_mov_epi32(_mm512_set1_epi32(-1), k, t32);
    _mm512_storeu_ps(tb + j, _mm512_cvtepi32_ps(t));
    _mm512_storeu_ps(vb + j, _mm512_maskz_mov_ps(k, _mm512_set1_ps(1.0f)));
    if (ti) _mm512_storeu_si512(ti + j, t);
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
#if defined(CPU_CAPABILITY_AVX512)
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
void softmax_forward(const at::Tensor& x, const at::Tensor& target, const at::Tensor& mask, const Options& o,
                     at::Tensor& out) {
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2);
  const int64_t nblk = (N + TASK - 1) / TASK, ntask = B * nblk;
  const scalar_t* X = x.data_ptr<scalar_t>();
  const int64_t* T = o.index_target ? target.data_ptr<int64_t>() : nullptr;
  const target_t* G = o.index_target ? nullptr : target.data_ptr<target_t>();
  const bool* M = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  const acc_t eps = static_cast<acc_t>(o.label_smoothing);
  std::vector<double> partial(static_cast<size_t>(ntask) * C * NSTAT, 0.0);
  constexpr int W = Vec<acc_t>::size();

  run_tasks(ntask, x.numel(), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> xbuf(C * TILE), eb(C * TILE), gbuf(o.index_target ? 0 : C * TILE);
    alignas(64) acc_t lse[TILE] = {}, rb[TILE], vb[TILE], tb[TILE] = {};
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
        for (int64_t v0 = 0; v0 < TILE; v0 += U * W) {
          Vec<acc_t> m[U], mr[U], rr[U], l[U], tv[U];
          for (int u = 0; u < U; ++u) {
            const int64_t v = v0 + u * W;
            m[u] = Vec<acc_t>::loadu(vb + v);
            rr[u] = Vec<acc_t>::loadu(rb + v);
            mr[u] = m[u] * rr[u];  // mask / sum of exp
            l[u] = Vec<acc_t>::loadu(lse + v);
            tv[u] = Vec<acc_t>::loadu(tb + v);
            accM = accM + m[u];
          }
          for (int64_t c = 0; c < C; ++c) {
            Vec<acc_t> aI = accI[c], aP = accP[c], aG = accG[c], aE = accE[c], aT = accT[c];
            const Vec<acc_t> cv(static_cast<acc_t>(c));
            for (int u = 0; u < U; ++u) {
              const int64_t v = v0 + u * W;
              const Vec<acc_t> e = Vec<acc_t>::loadu(eb.data() + c * TILE + v);
              const Vec<acc_t> mp = e * mr[u];  // m * p
              aP = o.squared ? at::vec::fmadd(mp, e * rr[u], aP) : aP + mp;
              if (o.index_target) {
                const Hit<acc_t> hit = hit_lanes(tv[u], cv);  // lanes where t == c (valid positions only)
                aI = add_on(aI, hit, mp);
                aG = add_on(aG, hit, Vec<acc_t>(acc_t(1)));
                if (o.cross_entropy) {
                  const Vec<acc_t> nll = l[u] - Vec<acc_t>::loadu(xr.ptr + c * xr.stride + v);  // -log p
                  aT = add_on(aT, hit, nll);
                  if (eps != acc_t(0)) aE = at::vec::fmadd(m[u], nll, aE);
                }
              } else {
                const Vec<acc_t> g = Vec<acc_t>::loadu(gr.ptr + c * gr.stride + v);
                const Vec<acc_t> mg = m[u] * g;
                aI = at::vec::fmadd(mp, g, aI);
                aG = o.squared ? at::vec::fmadd(mg, g, aG) : aG + mg;
                if (o.cross_entropy) {
                  const Vec<acc_t> nll = l[u] - Vec<acc_t>::loadu(xr.ptr + c * xr.stride + v);
                  aE = at::vec::fmadd(m[u] * at::vec::fmadd(g, one_eps, eps_c), nll, aE);
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

template <typename scalar_t, typename acc_t, typename target_t>
void softmax_backward(const at::Tensor& coef, const at::Tensor& x, const at::Tensor& target, const at::Tensor& mask,
                      const Options& o, at::Tensor& grad) {
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2);
  const int64_t nblk = (N + TASK - 1) / TASK, ntask = B * nblk;
  const scalar_t* X = x.data_ptr<scalar_t>();
  scalar_t* D = grad.data_ptr<scalar_t>();
  const int64_t* T = o.index_target ? target.data_ptr<int64_t>() : nullptr;
  const target_t* G = o.index_target ? nullptr : target.data_ptr<target_t>();
  const bool* M = mask.defined() ? mask.data_ptr<bool>() : nullptr;
  const acc_t* K = coef.data_ptr<acc_t>();  // (B, C, 6): dL/dI, dL/dP, -, -, dL/dE, -
  const acc_t eps = static_cast<acc_t>(o.label_smoothing);
  constexpr int W = Vec<acc_t>::size();

  // rows stay 64-byte aligned when N * sizeof is a multiple of 64
  const bool stream_out = x.numel() * int64_t(sizeof(scalar_t)) >= STREAM_BYTES && (N * int64_t(sizeof(scalar_t))) % 64 == 0;
  run_tasks(ntask, x.numel(), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> xbuf(C * TILE), eb(C * TILE), gbuf(o.index_target ? 0 : C * TILE), db(C * TILE);
    std::vector<acc_t> cA(C), cB(C), cK(C), cEK(C);
    alignas(64) acc_t rb[TILE], vb[TILE], tb[TILE], ws[TILE], fix[TILE];
    int32_t ti[TILE];
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
      const acc_t eps_sumK = eps / acc_t(C) * sumK;
      for (int64_t t0 = n0; t0 < n1; t0 += TILE) {
        const int64_t cnt = std::min(TILE, n1 - t0);
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
                const Vec<acc_t> ub = o.squared ? bq * p : bq;
                Vec<acc_t> d = p * (ub - R[u]);
                if (o.cross_entropy) d = d - ek;
                // m * d, plus the target class's term (fix is 0 where the position is not valid)
                store_vec(add_on(m[u] * d, hit_lanes(tv[u], cv), F[u]), dst + c * ds + v, stream);
              }
            }
          }
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
void sigmoid_forward(const at::Tensor& x, const at::Tensor& target, const at::Tensor& mask, const Options& o,
                     at::Tensor& out) {
  const int64_t B = x.size(0), C = x.size(1), N = x.size(2);
  const int64_t nblk = (N + TASK - 1) / TASK, ntask = B * C * nblk;
  const scalar_t* X = x.data_ptr<scalar_t>();
  const target_t* G = target.data_ptr<target_t>();
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
          const Sigmoid<acc_t> sg = sigmoid_parts(xv);
          const Vec<acc_t> p = sg.p;
          const Vec<acc_t> mp = m * p, mg = m * g;
          aI = at::vec::fmadd(mp, g, aI);
          aP = o.squared ? at::vec::fmadd(mp, p, aP) : aP + mp;
          aG = o.squared ? at::vec::fmadd(mg, g, aG) : aG + mg;
          aM = aM + m;
          if (o.cross_entropy) {
            // BCE with logits: max(x, 0) - x g~ + log(1 + exp(-|x|))
            const Vec<acc_t> gs = at::vec::fmadd(g, one_eps, half_eps);
            const Vec<acc_t> bce = at::vec::maximum(xv, zero) - xv * gs + log1p_small(sg.e);
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

template <typename scalar_t, typename acc_t, typename target_t>
void sigmoid_backward(const at::Tensor& coef, const at::Tensor& x, const at::Tensor& target, const at::Tensor& mask,
                      const Options& o, at::Tensor& grad) {
  const int64_t C = x.size(1), N = x.size(2);
  const int64_t nblk = (N + TASK - 1) / TASK, ntask = x.size(0) * C * nblk;
  const scalar_t* X = x.data_ptr<scalar_t>();
  scalar_t* D = grad.data_ptr<scalar_t>();
  const target_t* G = target.data_ptr<target_t>();
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
          const Sigmoid<acc_t> sg = sigmoid_parts(xv);
          const Vec<acc_t> p = sg.p;
          const Vec<acc_t> ub = o.squared ? Bq * p : Bq;
          Vec<acc_t> d = at::vec::fmadd(A, g, ub) * (sg.e * sg.r * sg.r);  // p (1 - p)
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

// A gradient of 32 MiB or more is a fresh mapping on every call (glibc serves such sizes with mmap and
// returns them to the system on free), so the kernel's first write takes one page fault per 4 KiB:
// 28672 faults, about 30 ms, for a 112 MiB gradient, three times the kernel's own work. Transparent huge
// pages, where the system leaves them to madvise, make that 56 faults. Only whole 2 MiB pages inside the
// buffer are advised, so nothing outside it changes; a failure is harmless.
// set_huge_pages(False) (DICELOSS_NO_HUGEPAGES=1) turns this off, e.g. where THP compaction stalls.
constexpr size_t HUGE_PAGE_MIN_BYTES = size_t(32) << 20;
bool huge_pages_on = true;

bool set_huge_pages(bool on) {
  const bool previous = huge_pages_on;
  huge_pages_on = on;
  return previous;
}

void advise_huge_pages(void* ptr, size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t HUGE = uintptr_t(2) << 20;
  if (!huge_pages_on || nbytes < HUGE_PAGE_MIN_BYTES) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(ptr) + HUGE - 1) & ~(HUGE - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(ptr) + nbytes) & ~(HUGE - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)nbytes;
#endif
}

// The op's argument list (diceloss.stats.types.OpOptions, after x, target, mask) as the kernel's options: the
// Python side passes it as it is. Whether the target holds class indices follows from its dtype.
Options make_options(const at::Tensor& target, const std::string& mode, const std::string& activation,
                     c10::optional<int64_t> ignore_index, bool squared, bool soft_label, bool cross_entropy,
                     double label_smoothing, c10::optional<double> focal_gamma) {
  TORCH_CHECK(activation == "softmax" || activation == "sigmoid",
              "diceloss kernel: activation must be 'softmax' or 'sigmoid', got '", activation, "'");
  TORCH_CHECK(mode == "binary" || mode == "multiclass" || mode == "multilabel", "diceloss kernel: unknown mode '",
              mode, "'");
  TORCH_CHECK(!soft_label || squared, "diceloss kernel: soft_label without squared is not covered");
  TORCH_CHECK(!focal_gamma.has_value(), "diceloss kernel: the focal term is not covered");
  const bool index_target = !at::isFloatingType(target.scalar_type());
  const int64_t act = activation == "softmax" ? SOFTMAX : SIGMOID;
  TORCH_CHECK(!(act == SIGMOID && index_target), "diceloss kernel: sigmoid needs dense targets");
  return Options{act, index_target, ignore_index.has_value(), ignore_index.value_or(0), squared, cross_entropy,
                 label_smoothing};
}

// A float32 dense target with float16 / bfloat16 logits is read as it is: rounding it to the logits' dtype
// would move soft labels by up to 4e-5 and turn an ignore_index such as 257 (bf16) into another value.
bool wide_target(const at::Tensor& x, const at::Tensor& target) {
  return (x.scalar_type() == at::kHalf || x.scalar_type() == at::kBFloat16) && target.scalar_type() == at::kFloat;
}

// f(scalar_t, acc_t, target_t) for the logits' dtype and the target's (its own, or float32 with half logits)
template <typename F>
void dispatch(const at::Tensor& x, const at::Tensor& target, const Options& o, F f) {
  const bool wide = !o.index_target && wide_target(x, target);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "diceloss_stats", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      f(scalar_t(), acc_t(), scalar_t());
    } else {
      if (wide) f(scalar_t(), acc_t(), float());
      else f(scalar_t(), acc_t(), scalar_t());
    }
  });
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
    TORCH_CHECK((target.scalar_type() == x.scalar_type() || wide_target(x, target)) && target.sizes() == x.sizes() &&
                    target.is_contiguous(),
                "diceloss kernel: dense target must be contiguous, of x's shape, and of x's dtype (or float32 for "
                "float16 / bfloat16 x)");
  }
  if (mask.has_value() && mask->defined()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool && mask->is_contiguous() && mask->dim() == 2 &&
                    mask->size(0) == x.size(0) && mask->size(1) == x.size(2),
                "diceloss kernel: mask must be (B, N) contiguous bool");
  }
}

at::Tensor stats_forward(const at::Tensor& x, const at::Tensor& target, const c10::optional<at::Tensor>& mask_opt,
                         const std::string& mode, const std::string& activation, c10::optional<int64_t> ignore_index,
                         bool squared, bool soft_label, bool cross_entropy, double label_smoothing,
                         c10::optional<double> focal_gamma) {
  const Options o = make_options(target, mode, activation, ignore_index, squared, soft_label, cross_entropy,
                                 label_smoothing, focal_gamma);
  check_inputs(x, target, mask_opt, o);
  const at::Tensor mask = mask_opt.has_value() ? *mask_opt : at::Tensor();
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor out = at::zeros({x.size(0), x.size(1), NSTAT}, x.options().dtype(acc));
  dispatch(x, target, o, [&](auto s, auto a, auto t) {
    using scalar_t = decltype(s);
    using acc_t = decltype(a);
    using target_t = decltype(t);
    if (o.activation == SOFTMAX) softmax_forward<scalar_t, acc_t, target_t>(x, target, mask, o, out);
    else sigmoid_forward<scalar_t, acc_t, target_t>(x, target, mask, o, out);
  });
  return out;
}

at::Tensor stats_backward(const at::Tensor& coef, const at::Tensor& x, const at::Tensor& target,
                          const c10::optional<at::Tensor>& mask_opt, const std::string& mode,
                          const std::string& activation, c10::optional<int64_t> ignore_index, bool squared,
                          bool soft_label, bool cross_entropy, double label_smoothing,
                          c10::optional<double> focal_gamma) {
  const Options o = make_options(target, mode, activation, ignore_index, squared, soft_label, cross_entropy,
                                 label_smoothing, focal_gamma);
  check_inputs(x, target, mask_opt, o);
  const at::Tensor mask = mask_opt.has_value() ? *mask_opt : at::Tensor();
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor k = coef.to(acc).contiguous();
  TORCH_CHECK(k.dim() == 3 && k.size(0) == x.size(0) && k.size(1) == x.size(1) && k.size(2) == NSTAT,
              "diceloss kernel: coefficients must be (B, C, 6)");
  at::Tensor grad = at::empty_like(x);
  advise_huge_pages(grad.data_ptr(), grad.nbytes());
  dispatch(x, target, o, [&](auto s, auto a, auto t) {
    using scalar_t = decltype(s);
    using acc_t = decltype(a);
    using target_t = decltype(t);
    if (o.activation == SOFTMAX) softmax_backward<scalar_t, acc_t, target_t>(k, x, target, mask, o, grad);
    else sigmoid_backward<scalar_t, acc_t, target_t>(k, x, target, mask, o, grad);
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
  m.def("set_huge_pages", &set_huge_pages, "advise huge pages for gradients of 32 MiB and more; returns the previous setting");
}
