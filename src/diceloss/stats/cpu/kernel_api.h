// What the torch-facing library (library.cpp) hands to the kernel of one instruction-set level
// (fused_stats.cpp, compiled once per level): plain pointers and sizes, no torch types, so the kernel's
// translation units include no torch header and share no inline code with each other or with the library.
#pragma once

#include <cstdint>

namespace diceloss_cpu {

// dtype codes of the logits and of a dense target
enum DType : int32_t { FLOAT32 = 0, FLOAT64 = 1, FLOAT16 = 2, BFLOAT16 = 3, INT64 = 4 };

// at::parallel_for (torch's intra-op thread pool) as the library passes it: calls body(begin, end, ctx) on
// sub-ranges of [0, n) of at least grain items.
using ParallelBody = void (*)(int64_t begin, int64_t end, void* ctx);
using ParallelFor = void (*)(int64_t n, int64_t grain, ParallelBody body, void* ctx);

struct Problem {
  int64_t B, C, N;             // logits (B, C, N), contiguous
  int32_t dtype;               // of the logits (FLOAT32 .. BFLOAT16); the gradient has it too
  int32_t target_dtype;        // INT64 for class indices (B, N); else a dense target (B, C, N)
  const void* x;
  const void* target;
  const bool* mask;            // (B, N) or null
  const void* coef;            // backward: (B, C, NUM_STATS) in the accumulation dtype (float64 for
                               // float64 logits, else float32)
  void* out;                   // forward: (B, C, NUM_STATS) in the accumulation dtype; backward: (B, C, N)
  int32_t activation;          // DICELOSS_ACT_SOFTMAX or DICELOSS_ACT_SIGMOID
  bool has_ignore;
  int64_t ignore_index;
  bool squared;
  bool cross_entropy;
  double label_smoothing;
  ParallelFor parallel_for;
};

}  // namespace diceloss_cpu

// The levels a build may carry; each is defined in its own translation unit (fused_stats.cpp compiled with
// DICELOSS_ISA_NS set to the level's name), and the library knows which through DICELOSS_HAVE_<LEVEL>.
#define DICELOSS_DECLARE_LEVEL(ns)                       \
  namespace diceloss_cpu {                               \
  namespace ns {                                         \
  void stats_forward(const ::diceloss_cpu::Problem& p);  \
  void stats_backward(const ::diceloss_cpu::Problem& p); \
  int32_t float_lanes();                                 \
  const char* isa_name();                                \
  }                                                      \
  }
