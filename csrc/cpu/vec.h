// Small inner loops over a head / channel row, written so the compiler vectorises them
// without -ffast-math: 16 independent accumulator lanes (no reassociation needed), then a
// fixed-order reduction, so results are deterministic run to run.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace nnff {
namespace cpu {

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

constexpr int kLanes = 16;

// sum_d a[d] * b[d]; a already in the accumulation type.
template <typename acc_t, typename T>
inline acc_t dot(const acc_t* __restrict a, const T* __restrict b, int64_t n) {
  acc_t lane[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= n; d += kLanes) {
#pragma GCC unroll 16
    for (int l = 0; l < kLanes; ++l) lane[l] += a[d + l] * static_cast<acc_t>(b[d + l]);
  }
  acc_t tail = 0;
  for (; d < n; ++d) tail += a[d] * static_cast<acc_t>(b[d]);
#pragma GCC unroll 8
  for (int l = 0; l < kLanes / 2; ++l) lane[l] += lane[l + kLanes / 2];
#pragma GCC unroll 4
  for (int l = 0; l < kLanes / 4; ++l) lane[l] += lane[l + kLanes / 4];
  return ((lane[0] + lane[2]) + (lane[1] + lane[3])) + tail;
}

// y[d] += a * x[d]
template <typename acc_t, typename T>
inline void axpy(acc_t* __restrict y, acc_t a, const T* __restrict x, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += a * static_cast<acc_t>(x[d]);
}

// y[d] += x[d]
template <typename acc_t, typename T>
inline void add(acc_t* __restrict y, const T* __restrict x, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += static_cast<acc_t>(x[d]);
}

template <typename acc_t, typename T>
inline void load(acc_t* __restrict y, const T* __restrict x, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] = static_cast<acc_t>(x[d]);
}

template <typename T, typename acc_t>
inline void store(T* __restrict y, const acc_t* __restrict x, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] = static_cast<T>(x[d]);
}

template <typename acc_t>
inline void zero(acc_t* __restrict y, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] = acc_t(0);
}

}  // namespace cpu
}  // namespace nnff
