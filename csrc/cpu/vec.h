// Row primitives of the CPU kernels, compiled once per capability (kernels.h) into namespace
// nnff::cpu::NNFF_CPU_LEVEL. Vectors are 16 lanes of the accumulation type (GCC vector
// extensions: one zmm register with AVX-512, two ymm with AVX2, four xmm at the baseline), and
// every sum has one fixed order whatever the vector width: a dot product keeps 16 lanes (lane l
// sums the products at d = l mod 16, in order) and then a fixed tree; a weighted row sum adds
// its rows in order, element by element. The kernels are compiled with -ffp-contract=off (no
// -ffast-math): a fused multiply-add is only where fma() below asks for one, never where the
// compiler's vectorisation of a loop happens to contract (its vector body and scalar tail
// could differ, and so would two vector widths). So every capability with FMA (avx2 and up)
// gives the same bits; the baseline, without FMA, rounds products separately.
//
// float16 / bfloat16 rows convert on load and store: bfloat16 rounds with the integer
// rounding-bias trick plus a select for NaN (bit-exact with c10's round_to_nearest_even);
// float16 uses F16C (bit-exact with c10, which uses the same instructions when it can) and, at
// the baseline, c10's own conversion.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>

#if defined(__F16C__)
#include <immintrin.h>
#else
#include <c10/util/Half.h>  // baseline only: compiled for the ISA of the bindings themselves
#endif

#include "kernels.h"

#ifndef NNFF_CPU_LEVEL
#error "the CPU kernels are compiled with -DNNFF_CPU_LEVEL=<capability> (CMakeLists.txt)"
#endif

// The row primitives below are forced inline: with two or four native parts per 16-lane vector
// (AVX2, baseline) GCC's heuristics left weighted_sum, lane_sum and exp_inplace as calls in the
// attention loops (a quarter of the AVX2 backward), and a call passes the vectors through memory.
#define NNFF_INLINE inline __attribute__((always_inline))
// the same, for the lambdas of for_blocks
#define NNFF_INLINE_LAMBDA __attribute__((always_inline))

namespace nnff {
namespace cpu {
namespace NNFF_CPU_LEVEL {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

constexpr int kLanes = 16;
// The widest vector registers of this capability; a 16-lane vector is 1 (AVX-512), 2 (AVX2) or
// 4 (baseline) of them for float. (A 64-byte GCC vector on AVX2 would be lowered through memory.)
#if defined(__AVX512F__)
constexpr int kNativeBytes = 64;
#elif defined(__AVX__)
constexpr int kNativeBytes = 32;
#else
constexpr int kNativeBytes = 16;
#endif
template <typename X> struct Native;
template <> struct Native<float> { typedef float type __attribute__((vector_size(kNativeBytes))); };
template <> struct Native<double> { typedef double type __attribute__((vector_size(kNativeBytes))); };
template <> struct Native<uint32_t> { typedef uint32_t type __attribute__((vector_size(kNativeBytes))); };
template <> struct Native<uint16_t> { typedef uint16_t type __attribute__((vector_size(kNativeBytes / 2))); };

// a * b + c on native vectors: one rounding with FMA, two at the baseline.
template <typename N> NNFF_INLINE N fma_part(N a, N b, N c) {
  constexpr bool is_float = std::is_same_v<std::remove_reference_t<decltype(a[0])>, float>;
#if defined(__AVX512F__)
  if constexpr (is_float) return (N)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
  else return (N)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#elif defined(__FMA__)
  if constexpr (is_float) return (N)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
  else return (N)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#else
  (void)is_float;
  return a * b + c;
#endif
}

// 16 lanes of the accumulation type A, in registers of the native width.
template <typename A> struct vec {
  using native = typename Native<A>::type;
  static constexpr int kParts = kLanes * static_cast<int>(sizeof(A)) / kNativeBytes;
  static constexpr int kPartLanes = kLanes / kParts;
  native p[kParts];

  vec& operator+=(const vec& b) {
    for (int i = 0; i < kParts; ++i) p[i] += b.p[i];
    return *this;
  }
  // a * b + c, rounded once where the capability has FMA
  friend vec fma(const vec& a, const vec& b, vec c) {
    for (int i = 0; i < kParts; ++i) c.p[i] = fma_part(a.p[i], b.p[i], c.p[i]);
    return c;
  }
  friend vec fma(A s, const vec& b, vec c) {
    const native sv = native{} + s;
    for (int i = 0; i < kParts; ++i) c.p[i] = fma_part(sv, b.p[i], c.p[i]);
    return c;
  }
  // f applied to each native part (lanes unchanged in place)
  template <typename F> vec map(F&& f) const {
    vec r;
    for (int i = 0; i < kParts; ++i) r.p[i] = f(p[i]);
    return r;
  }
};
// Vectors per block of a weighted row sum: independent accumulators that hide the add latency
// within the register file (32 zmm / 16 ymm).
#if defined(__AVX512F__)
constexpr int kBlockVecs = 8;
#else
constexpr int kBlockVecs = 4;
#endif

// ------------------------------------------------------------------ scalar conversions
inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}
// float -> bfloat16 bits: round to nearest even, NaN -> 0x7FC0 (as c10).
inline uint16_t bf16_bits(float f) {
  const uint32_t u = float_bits(f);
  const uint16_t r = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return f != f ? uint16_t(0x7FC0) : r;
}

template <typename A> inline A to_acc(float x) { return x; }
template <typename A> inline A to_acc(double x) { return x; }
template <typename A> inline A to_acc(BFloat16 x) { return bits_float(static_cast<uint32_t>(x.x) << 16); }
template <typename A> inline A to_acc(Half x) {
#if defined(__F16C__)
  return _cvtsh_ss(x.x);
#else
  return c10::detail::fp16_ieee_to_fp32_value(x.x);
#endif
}

template <typename T, typename A> inline T from_acc(A x) { return static_cast<T>(x); }
template <> inline BFloat16 from_acc<BFloat16, float>(float x) { return {bf16_bits(x)}; }
template <> inline Half from_acc<Half, float>(float x) {
#if defined(__F16C__)
  return {static_cast<uint16_t>(_cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT))};
#else
  return {c10::detail::fp16_ieee_from_fp32_value(x)};
#endif
}

// ------------------------------------------------------------------ 16-lane loads / stores
// 16 elements of T at p in the accumulation type.
template <typename T> NNFF_INLINE vec<acc_t<T>> load16(const T* p) {
  using V = vec<acc_t<T>>;
  constexpr int L = V::kPartLanes;
  V r;
  for (int i = 0; i < V::kParts; ++i) {
    if constexpr (std::is_same_v<T, BFloat16>) {
      // bf16 bits << 16 are the float's; one widening load (GCC split the generic conversion
      // into halves, five instructions at avx512)
#if defined(__AVX512F__)
      r.p[i] = (typename V::native)_mm512_slli_epi32(
          _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i * L))), 16);
#elif defined(__AVX2__)
      r.p[i] = (typename V::native)_mm256_slli_epi32(
          _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i * L))), 16);
#else
      typename Native<uint16_t>::type b;
      std::memcpy(&b, p + i * L, sizeof(b));
      const auto w = __builtin_convertvector(b, typename Native<uint32_t>::type) << 16;
      std::memcpy(&r.p[i], &w, sizeof(w));
#endif
    } else if constexpr (std::is_same_v<T, Half>) {
#if defined(__AVX512F__)
      r.p[i] = (typename V::native)_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i * L)));
#elif defined(__F16C__)
      r.p[i] = (typename V::native)_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i * L)));
#else
      for (int l = 0; l < L; ++l) r.p[i][l] = to_acc<float>(p[i * L + l]);
#endif
    } else {
      std::memcpy(&r.p[i], p + i * L, sizeof(r.p[i]));
    }
  }
  return r;
}

// p[0, 16) = x rounded to T (round to nearest even, as c10).
template <typename T> NNFF_INLINE void store16(T* p, const vec<acc_t<T>>& x) {
  using V = vec<acc_t<T>>;
  constexpr int L = V::kPartLanes;
  for (int i = 0; i < V::kParts; ++i) {
    if constexpr (std::is_same_v<T, BFloat16>) {
      using U = typename Native<uint32_t>::type;
      U u;
      const auto part = x.p[i];  // a copy: memcpy from the array element kept it in memory
      std::memcpy(&u, &part, sizeof(u));
      U r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
      r = part != part ? U{} + 0x7FC0u : r;
      const auto b = __builtin_convertvector(r, typename Native<uint16_t>::type);
      std::memcpy(p + i * L, &b, sizeof(b));
    } else if constexpr (std::is_same_v<T, Half>) {
#if defined(__AVX512F__)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p + i * L), _mm512_cvtps_ph((__m512)x.p[i], _MM_FROUND_TO_NEAREST_INT));
#elif defined(__F16C__)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(p + i * L), _mm256_cvtps_ph((__m256)x.p[i], _MM_FROUND_TO_NEAREST_INT));
#else
      for (int l = 0; l < L; ++l) p[i * L + l] = from_acc<Half>(x.p[i][l]);
#endif
    } else {
      const auto part = x.p[i];
      std::memcpy(p + i * L, &part, sizeof(part));
    }
  }
}

// The first len (< 16) elements of p, zeros after.
template <typename T> NNFF_INLINE vec<acc_t<T>> load_part(const T* p, int64_t len) {
  acc_t<T> lanes[kLanes] = {};
  for (int64_t l = 0; l < len; ++l) lanes[l] = to_acc<acc_t<T>>(p[l]);
  vec<acc_t<T>> r;
  std::memcpy(&r, lanes, sizeof(r));
  return r;
}
template <typename T> NNFF_INLINE void store_part(T* p, const vec<acc_t<T>>& x, int64_t len) {
  acc_t<T> lanes[kLanes];
  std::memcpy(lanes, &x, sizeof(lanes));
  for (int64_t l = 0; l < len; ++l) p[l] = from_acc<T>(lanes[l]);
}

// Walks [0, n) in blocks: f(Block<vecs, full>{}, d, len) covers elements [d, d + len), vecs
// vectors of 16 (kBlockVecs, then 4, 2, 1 for the rest); only the last block may be partial
// (vecs = 1, len < 16, padded with zeros). The blocking never changes an element's sums.
template <int Vecs, bool Full> struct Block {
  static constexpr int vecs = Vecs;
  static constexpr bool full = Full;
};
template <typename F> NNFF_INLINE void for_blocks(int64_t n, F&& f) {
  int64_t d = 0;
  for (; d + kBlockVecs * kLanes <= n; d += kBlockVecs * kLanes) f(Block<kBlockVecs, true>{}, d, kBlockVecs * kLanes);
  // the rest in blocks of 4, 2, 1 vectors: a row of 32 (a head of 32) is one pass, not two
  if constexpr (kBlockVecs > 4) {
    if (d + 4 * kLanes <= n) {
      f(Block<4, true>{}, d, 4 * kLanes);
      d += 4 * kLanes;
    }
  }
  if (d + 2 * kLanes <= n) {
    f(Block<2, true>{}, d, 2 * kLanes);
    d += 2 * kLanes;
  }
  if (d + kLanes <= n) {
    f(Block<1, true>{}, d, kLanes);
    d += kLanes;
  }
  if (d < n) f(Block<1, false>{}, d, n - d);
}
template <typename B, typename T> NNFF_INLINE vec<acc_t<T>> load_block(const T* p, int64_t len) {
  if constexpr (B::full) return load16(p);
  else return load_part(p, len);
}
template <typename B, typename T> NNFF_INLINE void store_block(T* p, const vec<acc_t<T>>& x, int64_t len) {
  if constexpr (B::full) store16(p, x);
  else store_part(p, x, len);
}

// f(std::integral_constant<int, j>{}) for j = 0, ..., N - 1, expanded at compile time: an array
// of accumulators indexed by j stays in registers (GCC left such loops rolled and the arrays in
// memory, a store and a reload per step: eight AVX-512 accumulators of a weighted row sum, the
// R chains of a dot product).
template <typename F, int... j> NNFF_INLINE void unroll_each(F&& f, std::integer_sequence<int, j...>) {
  (f(std::integral_constant<int, j>{}), ...);
}
template <int N, typename F> NNFF_INLINE void unroll(F&& f) { unroll_each(f, std::make_integer_sequence<int, N>{}); }

// ------------------------------------------------------------------ rows
// y[d] = x[d] converted: a row of T into the accumulation type, or back, rounded to T.
template <typename Y, typename X> NNFF_INLINE void convert_row(Y* __restrict y, const X* __restrict x, int64_t n) {
  for_blocks(n, [&](auto b, int64_t d, int64_t len) NNFF_INLINE_LAMBDA {
    using B = decltype(b);
    for (int j = 0; j < B::vecs; ++j) store_block<B>(y + d + j * kLanes, load_block<B>(x + d + j * kLanes, len), len);
  });
}

// A row of T in the accumulation type A: the row itself when T is A, else converted into buf.
template <typename A, typename T> NNFF_INLINE const A* acc_row(A* __restrict buf, const T* row, int64_t n) {
  if constexpr (std::is_same_v<A, T>) {
    return row;
  } else {
    convert_row(buf, row, n);
    return buf;
  }
}

// Fixed-order sum of the 16 lanes: l += l + 8, l += l + 4, then (0 + 2) + (1 + 3). For float
// in vector registers (the same additions, so the same bits as the scalar order for double).
template <typename A> NNFF_INLINE A lane_sum(const vec<A>& v) {
  if constexpr (std::is_same_v<A, float>) {
    typedef float f8 __attribute__((vector_size(32)));
    typedef float f4 __attribute__((vector_size(16)));
    typedef float f2 __attribute__((vector_size(8)));
    f4 q;  // lanes l + (l + 8) + (l + 4) + (l + 12) for l < 4, each pair added as above
    if constexpr (vec<A>::kParts == 1) {
      const auto& x = v.p[0];
      const f8 h = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) +
                   __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
      q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
    } else if constexpr (vec<A>::kParts == 2) {
      const f8 h = v.p[0] + v.p[1];
      q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
    } else {
      q = (v.p[0] + v.p[2]) + (v.p[1] + v.p[3]);
    }
    const f2 t = __builtin_shufflevector(q, q, 0, 1) + __builtin_shufflevector(q, q, 2, 3);
    return t[0] + t[1];
  } else {
    A t[kLanes];
    std::memcpy(t, &v, sizeof(t));
    for (int l = 0; l < 8; ++l) t[l] += t[l + 8];
    for (int l = 0; l < 4; ++l) t[l] += t[l + 4];
    return (t[0] + t[2]) + (t[1] + t[3]);
  }
}

// out[r] = sum_d a[d] * rows[r][d] for the count rows, R at a time (independent chains; the
// grouping does not change any row's order of sums). R is 1, 2 or 4.
template <int R, typename A, typename T>
NNFF_INLINE void dot_rows(const A* __restrict a, const T* const* rows, int64_t n, A* __restrict out) {
  static_assert(R == 1 || R == 2 || R == 4, "dot_rows: 1, 2 or 4 rows");
  vec<A> acc[R] = {};
  auto step = [&](const vec<A>& x, auto load) NNFF_INLINE_LAMBDA {
    unroll<R>([&](auto r) NNFF_INLINE_LAMBDA { acc[r] = fma(x, load(rows[r]), acc[r]); });
  };
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) step(load16(a + d), [d](const T* row) NNFF_INLINE_LAMBDA { return load16(row + d); });
  if (d < n) {
    const int64_t len = n - d;
    step(load_part(a + d, len), [d, len](const T* row) NNFF_INLINE_LAMBDA { return load_part(row + d, len); });
  }
  unroll<R>([&](auto r) NNFF_INLINE_LAMBDA { out[r] = lane_sum<A>(acc[r]); });
}
template <typename A, typename T>
NNFF_INLINE void dots(const A* __restrict a, const T* const* rows, int64_t count, int64_t n, A* __restrict out) {
  int64_t r = 0;
  for (; r + 4 <= count; r += 4) dot_rows<4>(a, rows + r, n, out + r);
  for (; r + 2 <= count; r += 2) dot_rows<2>(a, rows + r, n, out + r);
  for (; r < count; ++r) dot_rows<1>(a, rows + r, n, out + r);
}

// y[d] = sum_e w[e] * rows[e][d] over the count rows in order (w null: weights 1, a plain sum),
// rounded to T; zeros when count is 0.
template <typename T, typename A, typename S>
NNFF_INLINE void weighted_sum(T* __restrict y, const A* w, const S* const* rows, int64_t count, int64_t n) {
  for_blocks(n, [&](auto b, int64_t d, int64_t len) NNFF_INLINE_LAMBDA {
    using B = decltype(b);
    vec<A> acc[B::vecs] = {};
    for (int64_t e = 0; e < count; ++e) {
      if (w != nullptr) {
        const A we = w[e];
        unroll<B::vecs>([&](auto j) NNFF_INLINE_LAMBDA {
          acc[j] = fma(we, load_block<B>(rows[e] + d + j * kLanes, len), acc[j]);
        });
      } else {
        unroll<B::vecs>([&](auto j) NNFF_INLINE_LAMBDA { acc[j] += load_block<B>(rows[e] + d + j * kLanes, len); });
      }
    }
    unroll<B::vecs>([&](auto j) NNFF_INLINE_LAMBDA { store_block<B>(y + d + j * kLanes, acc[j], len); });
  });
}

// Asks for the cache lines of count rows base + cols[e] * stride (bytes of each) ahead of use:
// the rows a gather reads are scattered over tensors larger than the L2 cache.
template <typename T>
NNFF_INLINE void prefetch_rows(const T* base, const int64_t* cols, int64_t count, int64_t stride, int64_t bytes) {
  for (int64_t e = 0; e < count; ++e) {
    const char* row = reinterpret_cast<const char*>(base + cols[e] * stride);
    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b);
  }
}

// exp of one native vector of softmax arguments (x <= 0 up to rounding): a Cephes-style range
// reduction and degree-6 polynomial (within 2 ulp of expf; 0 below -87.3, the float underflow),
// lane by lane in the same operations at every width (floor from a truncation: |t| < 2^7).
template <typename N> NNFF_INLINE N exp_part(N x) {
  typedef int32_t I __attribute__((vector_size(sizeof(N))));
  const N v = x < -87.3f ? N{} - 87.3f : (x > 88.3f ? N{} + 88.3f : x);
  const N t = v * 1.44269504088896341f + 0.5f;
  const N trunc = __builtin_convertvector(__builtin_convertvector(t, I), N);
  const N fn = trunc > t ? trunc - 1.0f : trunc;
  const N r = (v - fn * 0.693359375f) - fn * -2.12194440e-4f;
  N p = N{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const N y = (p * r) * r + r + 1.0f;
  const I bits = (__builtin_convertvector(fn, I) + 127) << 23;
  N two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return x < -87.3f ? N{} : (x != x ? x : y * two_n);
}

// x[i] = exp(x[i]) in place for softmax arguments, 16 at a time (the last, partial vector
// through a zero-padded copy; a caller whose buffer holds whole vectors passes n rounded up).
NNFF_INLINE void exp_inplace(float* __restrict x, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store16(x + i, load16(x + i).map([](auto p) { return exp_part(p); }));
  if (i < n) store_part(x + i, load_part(x + i, n - i).map([](auto p) { return exp_part(p); }), n - i);
}
inline void exp_inplace(double* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

// A growing heap buffer for per-row scratch (softmax rows, row pointers), one per task.
template <typename X> class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() { std::free(p_); }
  X* get(int64_t n) {
    if (n > cap_) {
      std::free(p_);
      cap_ = n > 2 * cap_ ? n : 2 * cap_;
      p_ = static_cast<X*>(std::malloc(static_cast<size_t>(cap_) * sizeof(X)));
      if (p_ == nullptr) throw std::bad_alloc();
    }
    return p_;
  }

 private:
  X* p_ = nullptr;
  int64_t cap_ = 0;
};

// Calls f(T{}) with the element type of dtype.
template <typename F> inline void with_dtype(Dtype dtype, F&& f) {
  switch (dtype) {
    case Dtype::kFloat: return f(float{});
    case Dtype::kDouble: return f(double{});
    case Dtype::kHalf: return f(Half{});
    case Dtype::kBFloat16: return f(BFloat16{});
  }
}

}  // namespace NNFF_CPU_LEVEL
}  // namespace cpu
}  // namespace nnff
