// The torch-facing side of the fused CPU kernel: the ops torch.ops.<DICELOSS_OPS_NS>.stats_forward /
// stats_backward (checks, allocation, the thread pool) and the choice of the instruction-set level.
//
// Built two ways from this one file:
// * the LibTorch stable ABI (TORCH_TARGET_VERSION defined; setup.py, the prebuilt library of the wheel):
//   torch::stable::Tensor, STABLE_TORCH_LIBRARY and torch::stable::parallel_for only, so one binary loads
//   into every torch from 2.10 on;
// * the ordinary C++ API (DICELOSS_CLASSIC_ABI; the just-in-time fallback for a torch without the stable
//   ABI): at::Tensor, TORCH_LIBRARY, at::parallel_for.
// The kernel itself (fused_stats.cpp, once per level) includes no torch header either way.
//
// The levels this build carries are named by DICELOSS_HAVE_AVX512 / _AVX2 / _BASELINE / _NATIVE; at load the
// widest the CPU can run is taken (the way ATen's DispatchStub picks its kernels), and select_isa() changes
// it (diceloss.stats.cpu: DICELOSS_CPU_ISA).

#include "kernel_api.h"

#if defined(DICELOSS_CLASSIC_ABI)
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>
#else
#if !defined(TORCH_TARGET_VERSION)
#error "the stable build defines TORCH_TARGET_VERSION (setup.py); the classic one DICELOSS_CLASSIC_ABI"
#endif
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>
#endif

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#if !defined(DICELOSS_OPS_NS)
#define DICELOSS_OPS_NS diceloss_cpu
#endif

#if defined(DICELOSS_HAVE_AVX512)
DICELOSS_DECLARE_LEVEL(avx512)
#endif
#if defined(DICELOSS_HAVE_AVX2)
DICELOSS_DECLARE_LEVEL(avx2)
#endif
#if defined(DICELOSS_HAVE_BASELINE)
DICELOSS_DECLARE_LEVEL(baseline)
#endif
#if defined(DICELOSS_HAVE_NATIVE)
DICELOSS_DECLARE_LEVEL(native)
#endif

namespace diceloss_cpu {
namespace {

// ------------------------------------------------------------------------------------------------
// the two APIs, as this file uses them

#if defined(DICELOSS_CLASSIC_ABI)
using Tensor = at::Tensor;
using ScalarType = at::ScalarType;
#define DL_CHECK TORCH_CHECK

Tensor alloc(const Tensor& like, std::vector<int64_t> sizes, ScalarType dtype) {
  return at::empty(sizes, like.options().dtype(dtype));
}
Tensor alloc_like(const Tensor& t) { return at::empty_like(t); }
Tensor to_contiguous(const Tensor& t, ScalarType dtype) { return t.to(dtype).contiguous(); }
const void* data(const Tensor& t) { return t.data_ptr(); }
void* mutable_data(const Tensor& t) { return t.data_ptr(); }
bool same_sizes(const Tensor& a, const Tensor& b) { return a.sizes() == b.sizes(); }
void run_parallel(int64_t n, int64_t grain, ParallelBody body, void* ctx) {
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) { body(b, e, ctx); });
}
#else
using Tensor = torch::stable::Tensor;
using ScalarType = torch::headeronly::ScalarType;
#define DL_CHECK STD_TORCH_CHECK

Tensor alloc(const Tensor& like, std::vector<int64_t> sizes, ScalarType dtype) {
  return torch::stable::new_empty(like, sizes, dtype);
}
Tensor alloc_like(const Tensor& t) { return torch::stable::empty_like(t); }
Tensor to_contiguous(const Tensor& t, ScalarType dtype) {
  return torch::stable::contiguous(torch::stable::to(t, dtype));
}
const void* data(const Tensor& t) { return t.const_data_ptr(); }
void* mutable_data(const Tensor& t) { return t.mutable_data_ptr(); }
bool same_sizes(const Tensor& a, const Tensor& b) {
  if (a.dim() != b.dim()) return false;
  for (int64_t i = 0; i < a.dim(); ++i) {
    if (a.size(i) != b.size(i)) return false;
  }
  return true;
}
void run_parallel(int64_t n, int64_t grain, ParallelBody body, void* ctx) {
  torch::stable::parallel_for(0, n, grain, [&](int64_t b, int64_t e) { body(b, e, ctx); });
}
#endif

// ------------------------------------------------------------------------------------------------
// instruction-set levels

#if defined(__x86_64__) || defined(__i386__)
bool cpu_avx512() {
  __builtin_cpu_init();  // libgcc's CPUID reading; the AVX-512 bits count only where the OS saves the state
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
}
bool cpu_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
bool cpu_avx512() { return false; }
bool cpu_avx2() { return false; }
#endif
bool cpu_any() { return true; }

struct Level {
  const char* name;
  void (*forward)(const Problem&);
  void (*backward)(const Problem&);
  int32_t (*float_lanes)();
  const char* (*isa_name)();
  bool (*runs)();
};

#define DICELOSS_LEVEL(ns, runs) \
  Level { #ns, ns::stats_forward, ns::stats_backward, ns::float_lanes, ns::isa_name, runs }

// widest first
const Level LEVELS[] = {
#if defined(DICELOSS_HAVE_AVX512)
    DICELOSS_LEVEL(avx512, cpu_avx512),
#endif
#if defined(DICELOSS_HAVE_AVX2)
    DICELOSS_LEVEL(avx2, cpu_avx2),
#endif
#if defined(DICELOSS_HAVE_BASELINE)
    DICELOSS_LEVEL(baseline, cpu_any),
#endif
#if defined(DICELOSS_HAVE_NATIVE)
    DICELOSS_LEVEL(native, cpu_any),
#endif
};
constexpr int NUM_LEVELS = int(sizeof(LEVELS) / sizeof(LEVELS[0]));

int best_level() {
  for (int i = 0; i < NUM_LEVELS; ++i) {
    if (LEVELS[i].runs()) return i;
  }
  return NUM_LEVELS - 1;
}

std::atomic<int> active_level{-1};

const Level& level() {
  int i = active_level.load(std::memory_order_relaxed);
  if (i < 0) {
    i = best_level();
    active_level.store(i, std::memory_order_relaxed);
  }
  return LEVELS[i];
}

// ------------------------------------------------------------------------------------------------
// huge pages for large gradients

// A gradient of 32 MiB or more is a fresh mapping on every call (glibc serves such sizes with mmap and
// returns them to the system on free), so the kernel's first write takes one page fault per 4 KiB:
// 28672 faults, about 30 ms, for a 112 MiB gradient, three times the kernel's own work. Transparent huge
// pages, where the system leaves them to madvise, make that 56 faults. Only whole 2 MiB pages inside the
// buffer are advised, so nothing outside it changes; a failure is harmless.
// set_huge_pages(False) (DICELOSS_NO_HUGEPAGES=1) turns this off, e.g. where THP compaction stalls.
constexpr size_t HUGE_PAGE_MIN_BYTES = size_t(32) << 20;
std::atomic<bool> huge_pages_on{true};

void advise_huge_pages(void* ptr, size_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t HUGE = uintptr_t(2) << 20;
  if (!huge_pages_on.load(std::memory_order_relaxed) || nbytes < HUGE_PAGE_MIN_BYTES) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(ptr) + HUGE - 1) & ~(HUGE - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(ptr) + nbytes) & ~(HUGE - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)ptr;
  (void)nbytes;
#endif
}

// ------------------------------------------------------------------------------------------------
// checks and the problem

int32_t dtype_code(ScalarType t) {
  switch (t) {
    case ScalarType::Float:
      return FLOAT32;
    case ScalarType::Double:
      return FLOAT64;
    case ScalarType::Half:
      return FLOAT16;
    case ScalarType::BFloat16:
      return BFLOAT16;
    case ScalarType::Long:
      return INT64;
    default:
      return -1;
  }
}

size_t element_size(int32_t code) { return code == FLOAT64 || code == INT64 ? 8 : code == FLOAT32 ? 4 : 2; }

// The op's argument list (diceloss.stats.types.OpOptions, after x, target, mask) as the kernel's problem: the
// Python side passes it as it is. Whether the target holds class indices follows from its dtype.
Problem make_problem(const Tensor& x, const Tensor& target, const std::optional<Tensor>& mask, const std::string& mode,
                     const std::string& activation, std::optional<int64_t> ignore_index, bool squared,
                     bool soft_label, bool cross_entropy, double label_smoothing, std::optional<double> focal_gamma) {
  DL_CHECK(activation == "softmax" || activation == "sigmoid",
           "diceloss kernel: activation must be 'softmax' or 'sigmoid', got '", activation, "'");
  DL_CHECK(mode == "binary" || mode == "multiclass" || mode == "multilabel", "diceloss kernel: unknown mode '", mode,
           "'");
  DL_CHECK(!soft_label || squared, "diceloss kernel: soft_label without squared is not covered");
  DL_CHECK(!focal_gamma.has_value(), "diceloss kernel: the focal term is not covered");
  DL_CHECK(x.dim() == 3 && x.is_contiguous() && x.is_cpu(),
           "diceloss kernel: x must be (B, C, N) contiguous on the CPU");
  const int32_t xt = dtype_code(x.scalar_type()), tt = dtype_code(target.scalar_type());
  DL_CHECK(xt >= 0 && xt != INT64, "diceloss kernel: x must be float32, float64, float16 or bfloat16");
  const bool index_target = tt == INT64;
  const int32_t act = activation == "softmax" ? DICELOSS_ACT_SOFTMAX : DICELOSS_ACT_SIGMOID;
  DL_CHECK(!(act == DICELOSS_ACT_SIGMOID && index_target), "diceloss kernel: sigmoid needs dense targets");
  if (index_target) {
    DL_CHECK(target.dim() == 2 && target.is_contiguous() && target.size(0) == x.size(0) && target.size(1) == x.size(2),
             "diceloss kernel: index target must be (B, N) contiguous int64");
  } else {
    const bool wide = (xt == FLOAT16 || xt == BFLOAT16) && tt == FLOAT32;
    DL_CHECK((tt == xt || wide) && same_sizes(target, x) && target.is_contiguous(),
             "diceloss kernel: dense target must be contiguous, of x's shape, and of x's dtype (or float32 for "
             "float16 / bfloat16 x)");
  }
  const bool has_mask = mask.has_value() && mask->defined();
  if (has_mask) {
    DL_CHECK(mask->scalar_type() == ScalarType::Bool && mask->is_contiguous() && mask->dim() == 2 &&
                 mask->size(0) == x.size(0) && mask->size(1) == x.size(2),
             "diceloss kernel: mask must be (B, N) contiguous bool");
  }
  Problem p{};
  p.B = x.size(0);
  p.C = x.size(1);
  p.N = x.size(2);
  p.dtype = xt;
  p.target_dtype = tt;
  p.x = data(x);
  p.target = data(target);
  p.mask = has_mask ? static_cast<const bool*>(data(*mask)) : nullptr;
  p.activation = act;
  p.has_ignore = ignore_index.has_value();
  p.ignore_index = ignore_index.value_or(0);
  p.squared = squared;
  p.cross_entropy = cross_entropy;
  p.label_smoothing = label_smoothing;
  p.parallel_for = &run_parallel;
  return p;
}

ScalarType acc_type(const Tensor& x) {
  return x.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
}

// ------------------------------------------------------------------------------------------------
// the ops

Tensor stats_forward(const Tensor& x, const Tensor& target, const std::optional<Tensor>& mask, const std::string& mode,
                     const std::string& activation, std::optional<int64_t> ignore_index, bool squared, bool soft_label,
                     bool cross_entropy, double label_smoothing, std::optional<double> focal_gamma) {
  Problem p = make_problem(x, target, mask, mode, activation, ignore_index, squared, soft_label, cross_entropy,
                           label_smoothing, focal_gamma);
  Tensor out = alloc(x, {p.B, p.C, DICELOSS_NUM_STATS}, acc_type(x));  // every entry is written
  p.out = mutable_data(out);
  level().forward(p);
  return out;
}

Tensor stats_backward(const Tensor& coef, const Tensor& x, const Tensor& target, const std::optional<Tensor>& mask,
                      const std::string& mode, const std::string& activation, std::optional<int64_t> ignore_index,
                      bool squared, bool soft_label, bool cross_entropy, double label_smoothing,
                      std::optional<double> focal_gamma) {
  Problem p = make_problem(x, target, mask, mode, activation, ignore_index, squared, soft_label, cross_entropy,
                           label_smoothing, focal_gamma);
  const Tensor k = to_contiguous(coef, acc_type(x));
  DL_CHECK(k.dim() == 3 && k.size(0) == p.B && k.size(1) == p.C && k.size(2) == DICELOSS_NUM_STATS,
           "diceloss kernel: coefficients must be (B, C, ", DICELOSS_NUM_STATS, ")");
  Tensor grad = alloc_like(x);
  p.coef = data(k);
  p.out = mutable_data(grad);
  advise_huge_pages(p.out, size_t(p.B * p.C * p.N) * element_size(p.dtype));
  level().backward(p);
  return grad;
}

// "name:float lanes:runs here:instruction set" for each level this build carries, comma-separated, widest
// first, then ";" and the active level's name
std::string isa_levels() {
  std::string s;
  for (int i = 0; i < NUM_LEVELS; ++i) {
    if (i) s += ",";
    s += std::string(LEVELS[i].name) + ":" + std::to_string(LEVELS[i].float_lanes()) + ":" +
         (LEVELS[i].runs() ? "1" : "0") + ":" + LEVELS[i].isa_name();
  }
  return s + ";" + level().name;
}

// Make `name` the active level ("" for the widest this CPU runs); returns the previous one. A level this
// build does not carry, or that the CPU cannot run, is refused.
std::string select_isa(const std::string& name) {
  const std::string previous = level().name;
  if (name.empty()) {
    active_level.store(best_level());
    return previous;
  }
  for (int i = 0; i < NUM_LEVELS; ++i) {
    if (name == LEVELS[i].name) {
      DL_CHECK(LEVELS[i].runs(), "diceloss kernel: this CPU cannot run the ", name, " level");
      active_level.store(i);
      return previous;
    }
  }
  DL_CHECK(false, "diceloss kernel: no level '", name, "' in this build");
  return previous;
}

// advise gradients of 32 MiB and more to huge pages (or not); returns the previous setting
bool set_huge_pages(bool on) { return huge_pages_on.exchange(on); }

#if !defined(DICELOSS_SOURCE_HASH)
#define DICELOSS_SOURCE_HASH "unknown"
#endif

// "<hash of the sources>;<the torch API>": the loader compares the hash with the sources beside it
std::string build_info() {
#if defined(DICELOSS_CLASSIC_ABI)
  return std::string(DICELOSS_SOURCE_HASH) + ";torch C++ API (built for this torch only)";
#else
  return std::string(DICELOSS_SOURCE_HASH) + ";LibTorch stable ABI (torch >= 2.10)";
#endif
}

}  // namespace
}  // namespace diceloss_cpu

#define DICELOSS_STATS_ARGS                                                                                     \
  "Tensor x, Tensor target, Tensor? mask, str mode, str activation, int? ignore_index, bool squared, bool " \
  "soft_label, bool cross_entropy, float label_smoothing, float? focal_gamma"

#if defined(DICELOSS_CLASSIC_ABI)
TORCH_LIBRARY(DICELOSS_OPS_NS, m) {
  m.def("stats_forward(" DICELOSS_STATS_ARGS ") -> Tensor");
  m.def("stats_backward(Tensor coef, " DICELOSS_STATS_ARGS ") -> Tensor");
  m.def("isa_levels() -> str", &diceloss_cpu::isa_levels);
  m.def("select_isa(str name) -> str", &diceloss_cpu::select_isa);
  m.def("set_huge_pages(bool on) -> bool", &diceloss_cpu::set_huge_pages);
  m.def("build_info() -> str", &diceloss_cpu::build_info);
}

TORCH_LIBRARY_IMPL(DICELOSS_OPS_NS, CPU, m) {
  m.impl("stats_forward", &diceloss_cpu::stats_forward);
  m.impl("stats_backward", &diceloss_cpu::stats_backward);
}
#else
STABLE_TORCH_LIBRARY(DICELOSS_OPS_NS, m) {
  m.def("stats_forward(" DICELOSS_STATS_ARGS ") -> Tensor");
  m.def("stats_backward(Tensor coef, " DICELOSS_STATS_ARGS ") -> Tensor");
  m.def("isa_levels() -> str");
  m.def("select_isa(str name) -> str");
  m.def("set_huge_pages(bool on) -> bool");
  m.def("build_info() -> str");
}

STABLE_TORCH_LIBRARY_IMPL(DICELOSS_OPS_NS, CPU, m) {
  m.impl("stats_forward", TORCH_BOX(&diceloss_cpu::stats_forward));
  m.impl("stats_backward", TORCH_BOX(&diceloss_cpu::stats_backward));
}

// no tensor argument: nothing to dispatch on, so one kernel for every backend
STABLE_TORCH_LIBRARY_IMPL(DICELOSS_OPS_NS, CompositeExplicitAutograd, m) {
  m.impl("isa_levels", TORCH_BOX(&diceloss_cpu::isa_levels));
  m.impl("select_isa", TORCH_BOX(&diceloss_cpu::select_isa));
  m.impl("set_huge_pages", TORCH_BOX(&diceloss_cpu::set_huge_pages));
  m.impl("build_info", TORCH_BOX(&diceloss_cpu::build_info));
}
#endif
