// Device helpers shared by the CUDA kernels: dtype traits, conversions, vector accesses.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "../common.h"
#include "kernels.h"

// Kernel launch with no dynamic shared memory: NNFF_LAUNCH(grid, block, stream, kernel)(args).
// tests/cuda_emulator defines it first, to run the kernels on the CPU.
#ifndef NNFF_LAUNCH
#define NNFF_LAUNCH(grid, block, stream, ...) __VA_ARGS__<<<grid, block, 0, stream>>>
#endif

namespace nnff {
namespace cuda {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_acc(float x);
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <typename T> __device__ __forceinline__ T from_acc(double x);
template <> __device__ __forceinline__ double from_acc<double>(double x) { return x; }

// Shuffle reductions over the warp's groups of LPR consecutive lanes (LPR a power of two):
// within each group, and across the groups (lanes r, r + LPR, r + 2 LPR, …). Every lane of the
// warp must call them (full-mask shuffles); group_sum<32> is a warp sum.
template <int LPR, typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t x) {
#pragma unroll
  for (int o = LPR / 2; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <int LPR, typename acc_t>
__device__ __forceinline__ acc_t across_groups_sum(acc_t x) {
#pragma unroll
  for (int o = LPR; o < 32; o <<= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

template <int LPR, typename acc_t>
__device__ __forceinline__ acc_t across_groups_max(acc_t x) {
#pragma unroll
  for (int o = LPR; o < 32; o <<= 1) {
    const acc_t y = __shfl_xor_sync(0xffffffffu, x, o);
    x = y > x ? y : x;
  }
  return x;
}

// Calls f.template operator()<T>() for the runtime dtype.
template <typename F>
cudaError_t dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat16: return f(__half{});
    case DType::kBFloat16: return f(__nv_bfloat16{});
    case DType::kFloat64: return f(double{});
  }
  return cudaErrorInvalidValue;
}

// VEC elements of T loaded or stored as one access (two for 32 bytes: 16-byte alignment suffices).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC > 16 ? 16 : sizeof(T) * VEC) Pack {
  T v[VEC];
};

// x[w] = src[w] in the accumulation type, w < VEC: one access of VEC * sizeof(T) bytes.
template <typename T, int VEC, typename acc_t>
__device__ __forceinline__ void load_vec(const T* __restrict__ src, acc_t* x) {
  const Pack<T, VEC> p = *reinterpret_cast<const Pack<T, VEC>*>(src);
#pragma unroll
  for (int w = 0; w < VEC; ++w) x[w] = to_acc(p.v[w]);
}

// dst[w] = x[w] rounded to T, w < VEC: one access.
template <typename T, int VEC, typename acc_t>
__device__ __forceinline__ void store_vec(T* __restrict__ dst, const acc_t* x) {
  Pack<T, VEC> p;
#pragma unroll
  for (int w = 0; w < VEC; ++w) p.v[w] = from_acc<T>(x[w]);
  *reinterpret_cast<Pack<T, VEC>*>(dst) = p;
}

// Calls f(T{}, std::integral_constant<int, VEC>{}) for the element type of dtype, with
// VEC = 16 / sizeof(T) (16-byte accesses) when every count in `multiples` is a multiple of
// it and every pointer in `ptrs` is 16-byte aligned, else VEC = 1.
template <typename F>
cudaError_t dispatch_vec(DType dtype, std::initializer_list<int64_t> multiples,
                         std::initializer_list<const void*> ptrs, F&& f) {
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    constexpr int kVec = 16 / sizeof(T);
    bool wide = true;
    for (int64_t x : multiples) wide = wide && x % kVec == 0;
    for (const void* p : ptrs) wide = wide && (reinterpret_cast<uintptr_t>(p) & 15u) == 0;
    if (wide) return f(tag, std::integral_constant<int, kVec>{});
    return f(tag, std::integral_constant<int, 1>{});
  });
}

inline unsigned int blocks_for(int64_t work, int64_t per_block) {
  int64_t b = (work + per_block - 1) / per_block;
  if (b < 1) b = 1;
  if (b > 2147483647LL) b = 2147483647LL;
  return static_cast<unsigned int>(b);
}

}  // namespace cuda
}  // namespace nnff
