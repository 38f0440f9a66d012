// Small inner loops over a head / channel row, written so the compiler vectorises them
// without -ffast-math: 16 independent accumulator lanes (no reassociation needed), then a
// fixed-order reduction, so results are deterministic run to run.
//
// Conversions of float16 / bfloat16 rows go through the helpers below instead of c10's
// scalar constructors: bfloat16 rounds with the integer rounding-bias trick plus a select
// for NaN (bit-exact with c10::detail::round_to_nearest_even, and GCC vectorises it);
// float16 uses F16C (_mm256_cvtps_ph / _mm256_cvtph_ps, bit-exact with c10, which itself
// uses _cvtss_sh / _cvtsh_ss when __F16C__ is defined) and falls back to c10 without it.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__F16C__) && defined(__AVX__)
#include <immintrin.h>
#define NNFF_F16C 1
#endif

namespace nnff {
namespace cpu {

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

constexpr int kLanes = 16;

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
inline float bf16_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

// Element -> accumulation type, and back (scalar).
template <typename acc_t> inline acc_t to_acc(float x) { return static_cast<acc_t>(x); }
template <typename acc_t> inline acc_t to_acc(double x) { return static_cast<acc_t>(x); }
template <typename acc_t> inline acc_t to_acc(c10::BFloat16 x) { return bf16_float(x.x); }
template <typename acc_t> inline acc_t to_acc(c10::Half x) { return static_cast<float>(x); }

template <typename T, typename acc_t> inline T from_acc(acc_t x) { return static_cast<T>(x); }
template <> inline c10::BFloat16 from_acc<c10::BFloat16, float>(float x) {
  return c10::BFloat16(bf16_bits(x), c10::BFloat16::from_bits());
}

// ------------------------------------------------------------------ row conversions
// y[d] = x[d] in the accumulation type.
template <typename acc_t, typename T>
inline void load(acc_t* __restrict y, const T* __restrict x, int64_t n) {
  if constexpr (std::is_same_v<T, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    const uint16_t* xb = reinterpret_cast<const uint16_t*>(x);
    for (int64_t d = 0; d < n; ++d) y[d] = bf16_float(xb[d]);
  } else if constexpr (std::is_same_v<T, c10::Half> && std::is_same_v<acc_t, float>) {
    int64_t d = 0;
#ifdef NNFF_F16C
    for (; d + 8 <= n; d += 8)
      _mm256_storeu_ps(y + d, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + d))));
#endif
    for (; d < n; ++d) y[d] = static_cast<float>(x[d]);
  } else {
    for (int64_t d = 0; d < n; ++d) y[d] = static_cast<acc_t>(x[d]);
  }
}

// y[d] = x[d] rounded to T (round to nearest even, as c10).
template <typename T, typename acc_t>
inline void store(T* __restrict y, const acc_t* __restrict x, int64_t n) {
  if constexpr (std::is_same_v<T, c10::BFloat16> && std::is_same_v<acc_t, float>) {
    uint16_t* yb = reinterpret_cast<uint16_t*>(y);
    for (int64_t d = 0; d < n; ++d) yb[d] = bf16_bits(x[d]);
  } else if constexpr (std::is_same_v<T, c10::Half> && std::is_same_v<acc_t, float>) {
    int64_t d = 0;
#ifdef NNFF_F16C
    for (; d + 8 <= n; d += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(y + d),
                       _mm256_cvtps_ph(_mm256_loadu_ps(x + d), _MM_FROUND_TO_NEAREST_INT));
#endif
    for (; d < n; ++d) y[d] = static_cast<c10::Half>(x[d]);
  } else {
    for (int64_t d = 0; d < n; ++d) y[d] = static_cast<T>(x[d]);
  }
}

// Converts a row in chunks of kChunk through a stack buffer and calls f(buf, offset, len).
constexpr int kChunk = 64;
template <typename acc_t, typename T, typename F>
inline void chunked(const T* __restrict x, int64_t n, F&& f) {
  acc_t buf[kChunk];
  for (int64_t d = 0; d < n; d += kChunk) {
    const int64_t len = n - d < kChunk ? n - d : kChunk;
    load(buf, x + d, len);
    f(buf, d, len);
  }
}

// ------------------------------------------------------------------ row arithmetic
// sum_d a[d] * b[d]; a already in the accumulation type.
template <typename acc_t, typename T>
inline acc_t dot(const acc_t* __restrict a, const T* __restrict b, int64_t n) {
  acc_t lane[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) {
    if constexpr (std::is_same_v<T, c10::Half>) {
      acc_t bb[kLanes];
      load(bb, b + d, kLanes);
#pragma GCC unroll 16
      for (int l = 0; l < kLanes; ++l) lane[l] += a[d + l] * bb[l];
    } else {
#pragma GCC unroll 16
      for (int l = 0; l < kLanes; ++l) lane[l] += a[d + l] * to_acc<acc_t>(b[d + l]);
    }
  }
  if (d + kLanes / 2 <= n) {  // head dims like 40 or 72: one 8-wide step instead of a scalar tail
    if constexpr (std::is_same_v<T, c10::Half>) {
      acc_t bb[kLanes / 2];
      load(bb, b + d, kLanes / 2);
#pragma GCC unroll 8
      for (int l = 0; l < kLanes / 2; ++l) lane[l] += a[d + l] * bb[l];
    } else {
#pragma GCC unroll 8
      for (int l = 0; l < kLanes / 2; ++l) lane[l] += a[d + l] * to_acc<acc_t>(b[d + l]);
    }
    d += kLanes / 2;
  }
  acc_t tail = 0;
  for (; d < n; ++d) tail += a[d] * to_acc<acc_t>(b[d]);
#pragma GCC unroll 8
  for (int l = 0; l < kLanes / 2; ++l) lane[l] += lane[l + kLanes / 2];
#pragma GCC unroll 4
  for (int l = 0; l < kLanes / 4; ++l) lane[l] += lane[l + kLanes / 4];
  return ((lane[0] + lane[2]) + (lane[1] + lane[3])) + tail;
}

// y[d] += a * x[d]
template <typename acc_t, typename T>
inline void axpy(acc_t* __restrict y, acc_t a, const T* __restrict x, int64_t n) {
  if constexpr (std::is_same_v<T, c10::Half>) {
    chunked<acc_t>(x, n, [&](const acc_t* buf, int64_t d0, int64_t len) {
      for (int64_t d = 0; d < len; ++d) y[d0 + d] += a * buf[d];
    });
  } else {
    for (int64_t d = 0; d < n; ++d) y[d] += a * to_acc<acc_t>(x[d]);
  }
}

// y[d] += x[d]
template <typename acc_t, typename T>
inline void add(acc_t* __restrict y, const T* __restrict x, int64_t n) {
  if constexpr (std::is_same_v<T, c10::Half>) {
    chunked<acc_t>(x, n, [&](const acc_t* buf, int64_t d0, int64_t len) {
      for (int64_t d = 0; d < len; ++d) y[d0 + d] += buf[d];
    });
  } else {
    for (int64_t d = 0; d < n; ++d) y[d] += to_acc<acc_t>(x[d]);
  }
}

// x[i] = exp(x[i]) in place for softmax arguments (x <= 0 up to rounding). The float version
// is a Cephes-style range reduction and degree-6 polynomial (within 2 ulp of expf; 0 below
// -87.3, the float underflow) that the compiler vectorises, unlike a libm call per entry.
inline void exp_inplace(float* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i] < -87.3f ? -87.3f : (x[i] > 88.3f ? 88.3f : x[i]);
    const float fn = std::floor(v * 1.44269504088896341f + 0.5f);
    const float r = (v - fn * 0.693359375f) - fn * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    const float y = (p * r) * r + r + 1.0f;
    const float two_n = bits_float(static_cast<uint32_t>(static_cast<int32_t>(fn) + 127) << 23);
    x[i] = x[i] < -87.3f ? 0.0f : (x[i] != x[i] ? x[i] : y * two_n);
  }
}
inline void exp_inplace(double* __restrict x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

template <typename acc_t>
inline void zero(acc_t* __restrict y, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] = acc_t(0);
}

}  // namespace cpu
}  // namespace nnff
