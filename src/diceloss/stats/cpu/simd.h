// The vector type of the fused statistics kernel, for one instruction-set level.
//
// fused_stats.cpp is compiled once per level (setup.py: AVX-512, AVX2, a baseline x86-64 build; on
// aarch64 one NEON build), each time with its own -m flags and with DICELOSS_ISA_NS naming the namespace
// that the level's code lives in. This header is included inside that namespace, so every type and
// inline function here is the level's own: nothing compiled with AVX-512 flags can be merged by the
// linker with a copy compiled for another level (the reason the kernel uses neither at::vec nor the
// standard containers: their out-of-line copies are shared by name across translation units).
//
// Vec<T> is a GCC vector of T, VBYTES wide (64 / 32 / 16 bytes), with the operations the kernel uses:
// arithmetic, comparisons that return all-ones lanes, bitwise and, blend, fused multiply-add where the
// level has it. The system headers it needs are included by fused_stats.cpp
// before the namespace opens.

#if !defined(DICELOSS_VBYTES)
#error "include through fused_stats.cpp, which defines DICELOSS_VBYTES for the instruction-set level"
#endif

constexpr int VBYTES = DICELOSS_VBYTES;

// the GCC vector types (named per element type: an attribute on a dependent typedef would be dropped)
template <typename T>
struct VecTypes;
template <>
struct VecTypes<float> {
  typedef float V __attribute__((vector_size(VBYTES)));
  typedef int32_t IV __attribute__((vector_size(VBYTES)));
  using I = int32_t;
};
template <>
struct VecTypes<double> {
  typedef double V __attribute__((vector_size(VBYTES)));
  typedef int64_t IV __attribute__((vector_size(VBYTES)));
  using I = int64_t;
};

template <typename T>
struct Vec {
  using V = typename VecTypes<T>::V;
  using IV = typename VecTypes<T>::IV;
  using I = typename VecTypes<T>::I;
  static constexpr int N = VBYTES / int(sizeof(T));

  V v;

  Vec() = default;
  Vec(V x) : v(x) {}
  Vec(T s) : v(V{} + s) {}  // broadcast
  static constexpr int size() { return N; }
  static Vec loadu(const T* p) {
    V r;
    __builtin_memcpy(&r, p, sizeof(V));
    return r;
  }
  void store(T* p) const { __builtin_memcpy(p, &v, sizeof(V)); }
  operator V() const { return v; }

  Vec abs() const { return V((IV)v & ~sign_bits()); }
  Vec neg() const { return -v; }
  Vec neg_abs() const { return V((IV)v | sign_bits()); }  // -|v|, one instruction
  static IV sign_bits() { return IV{} + (I(1) << (8 * sizeof(I) - 1)); }
  // b where mask (all-ones lanes) is set, else a
  static Vec blendv(const Vec& a, const Vec& b, const Vec& mask) { return (IV)mask.v < 0 ? b.v : a.v; }
};

template <typename T>
inline Vec<T> operator+(const Vec<T>& a, const Vec<T>& b) {
  return a.v + b.v;
}
template <typename T>
inline Vec<T> operator-(const Vec<T>& a, const Vec<T>& b) {
  return a.v - b.v;
}
template <typename T>
inline Vec<T> operator*(const Vec<T>& a, const Vec<T>& b) {
  return a.v * b.v;
}
template <typename T>
inline Vec<T> operator/(const Vec<T>& a, const Vec<T>& b) {
  return a.v / b.v;
}
template <typename T>
inline Vec<T> operator&(const Vec<T>& a, const Vec<T>& b) {
  using IV = typename Vec<T>::IV;
  using V = typename Vec<T>::V;
  return V((IV)a.v & (IV)b.v);
}
// comparisons: all-ones lanes where true (a mask in the vector's own type, as at::vec gives)
template <typename T>
inline Vec<T> operator==(const Vec<T>& a, const Vec<T>& b) {
  return typename Vec<T>::V(a.v == b.v);
}
template <typename T>
inline Vec<T> operator!=(const Vec<T>& a, const Vec<T>& b) {
  return typename Vec<T>::V(a.v != b.v);
}
template <typename T>
inline Vec<T> operator>=(const Vec<T>& a, const Vec<T>& b) {
  return typename Vec<T>::V(a.v >= b.v);
}

// a * b + c, one rounding where the level has FMA (AVX2 and AVX-512 are built with -mfma; every aarch64 has
// it); two roundings on the baseline x86-64 level, which has none.
template <typename T>
inline Vec<T> fmadd(const Vec<T>& a, const Vec<T>& b, const Vec<T>& c) {
#if defined(DICELOSS_ISA_AVX512)
  if constexpr (std::is_same_v<T, float>) return _mm512_fmadd_ps(a.v, b.v, c.v);
  else return _mm512_fmadd_pd(a.v, b.v, c.v);
#elif defined(DICELOSS_ISA_AVX2)
  if constexpr (std::is_same_v<T, float>) return _mm256_fmadd_ps(a.v, b.v, c.v);
  else return _mm256_fmadd_pd(a.v, b.v, c.v);
#elif defined(DICELOSS_ISA_NEON)
  if constexpr (std::is_same_v<T, float>) return vfmaq_f32(c.v, a.v, b.v);
  else return vfmaq_f64(c.v, a.v, b.v);
#else
  return a.v * b.v + c.v;
#endif
}

template <typename T>
inline T hsum(const Vec<T>& v) {
  T s = 0;
  for (int i = 0; i < Vec<T>::N; ++i) s += v.v[i];
  return s;
}
