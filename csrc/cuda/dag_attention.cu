// DAG-masked attention on CUDA (SPEC §2). One warp per (node, head): the lanes split the
// head dimension (16-byte vector loads when Dh and the pointers allow), scores are reduced
// with warp shuffles, and the softmax is computed online over the node's neighbour list.
// Backward: flash-attention recipe; dq over relation rows (also storing the per-entry
// weights and dS), then dk / dv gathered over the transposed relation — no atomics, so the
// results are deterministic.
#include <cmath>
#include <initializer_list>
#include <type_traits>

#include "common.cuh"

namespace nnff {
namespace cuda {
namespace {

constexpr int kSlots = 8;         // elements per lane: 8 * 32 = 256 = max head dim
constexpr int kWarpsPerBlock = 8;

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

__device__ __forceinline__ float fexp(float x) { return expf(x); }
__device__ __forceinline__ double fexp(double x) { return exp(x); }
__device__ __forceinline__ float flog(float x) { return logf(x); }
__device__ __forceinline__ double flog(double x) { return log(x); }

// Lane `lane` holds elements (s * 32 + lane) * VEC + w, s < kSlots / VEC, w < VEC.
template <typename T, int VEC, typename acc_t>
__device__ __forceinline__ void load_row(const T* __restrict__ row, int dh, int lane,
                                         acc_t (&x)[kSlots]) {
#pragma unroll
  for (int s = 0; s < kSlots / VEC; ++s) {
    const int d = (s * 32 + lane) * VEC;
    if (d < dh) {
      const Pack<T, VEC> p = *reinterpret_cast<const Pack<T, VEC>*>(row + d);
#pragma unroll
      for (int w = 0; w < VEC; ++w) x[s * VEC + w] = to_acc(p.v[w]);
    } else {
#pragma unroll
      for (int w = 0; w < VEC; ++w) x[s * VEC + w] = acc_t(0);
    }
  }
}

template <typename T, int VEC, typename acc_t>
__device__ __forceinline__ void store_row(T* __restrict__ row, int dh, int lane,
                                          const acc_t (&x)[kSlots]) {
#pragma unroll
  for (int s = 0; s < kSlots / VEC; ++s) {
    const int d = (s * 32 + lane) * VEC;
    if (d < dh) {
      Pack<T, VEC> p;
#pragma unroll
      for (int w = 0; w < VEC; ++w) p.v[w] = from_acc<T>(x[s * VEC + w]);
      *reinterpret_cast<Pack<T, VEC>*>(row + d) = p;
    }
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t dot_slots(const acc_t (&a)[kSlots], const acc_t (&b)[kSlots]) {
  acc_t s = 0;
#pragma unroll
  for (int t = 0; t < kSlots; ++t) s += a[t] * b[t];
  return warp_sum(s);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
attn_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                T* __restrict__ out, typename Acc<T>::type* __restrict__ lse, int64_t n,
                int heads, int dh, typename Acc<T>::type scale, Dropout drop,
                typename Acc<T>::type keep_scale) {
  using acc_t = typename Acc<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (pair >= n * heads) return;  // whole warp leaves together
  const int64_t i = pair / heads;
  const int h = static_cast<int>(pair % heads);
  const int64_t row = static_cast<int64_t>(h & 3) * n + i;
  const int64_t e0 = rowptr[row], e1 = rowptr[row + 1];
  acc_t qf[kSlots], kf[kSlots], vf[kSlots], o[kSlots];
  load_row<T, VEC>(q + pair * dh, dh, lane, qf);
#pragma unroll
  for (int t = 0; t < kSlots; ++t) o[t] = acc_t(0);
  acc_t m = -INFINITY, l = acc_t(0);
  for (int64_t e = e0; e < e1; ++e) {
    const int64_t base = (col[e] * heads + h) * dh;
    load_row<T, VEC>(k + base, dh, lane, kf);
    load_row<T, VEC>(v + base, dh, lane, vf);
    const acc_t x = dot_slots(qf, kf) * scale;
    const acc_t m_new = x > m ? x : m;
    const acc_t corr = fexp(m - m_new);
    const acc_t pe = fexp(x - m_new);
    l = l * corr + pe;
    acc_t w = pe;
    if (drop.active) w = drop.keep(e, h) ? pe * keep_scale : acc_t(0);
#pragma unroll
    for (int t = 0; t < kSlots; ++t) o[t] = o[t] * corr + w * vf[t];
    m = m_new;
  }
  const acc_t inv = l > acc_t(0) ? acc_t(1) / l : acc_t(0);
#pragma unroll
  for (int t = 0; t < kSlots; ++t) o[t] *= inv;
  store_row<T, VEC>(out + pair * dh, dh, lane, o);
  if (lane == 0) lse[pair] = l > acc_t(0) ? m + flog(l) : acc_t(-INFINITY);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
attn_bwd_dq_kernel(const T* __restrict__ dout, const T* __restrict__ q, const T* __restrict__ k,
                   const T* __restrict__ v, const T* __restrict__ out,
                   const typename Acc<T>::type* __restrict__ lse,
                   const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                   T* __restrict__ dq, typename Acc<T>::type* __restrict__ buf_p,
                   typename Acc<T>::type* __restrict__ buf_ds, int64_t n, int heads, int dh,
                   typename Acc<T>::type scale, Dropout drop, typename Acc<T>::type keep_scale) {
  using acc_t = typename Acc<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (pair >= n * heads) return;
  const int64_t i = pair / heads;
  const int h = static_cast<int>(pair % heads);
  const int groups = heads / 4, g = h >> 2;
  const int64_t row = static_cast<int64_t>(h & 3) * n + i;
  const int64_t e0 = rowptr[row], e1 = rowptr[row + 1];
  acc_t qf[kSlots], dof[kSlots], kf[kSlots], vf[kSlots], acc[kSlots];
  (void)out;  // D comes from P and dP (see pass 1); out stays an input of the API
  load_row<T, VEC>(q + pair * dh, dh, lane, qf);
  load_row<T, VEC>(dout + pair * dh, dh, lane, dof);
  const acc_t lrow = lse[pair];
  // Pass 1: P and dP per entry (lane 0 parks them in the workspace) and D = sum P dP
  // (= dO . O, from fp32 values instead of the rounded low-precision O).
  acc_t D = acc_t(0);
  for (int64_t e = e0; e < e1; ++e) {
    const int64_t base = (col[e] * heads + h) * dh;
    load_row<T, VEC>(k + base, dh, lane, kf);
    load_row<T, VEC>(v + base, dh, lane, vf);
    const acc_t P = fexp(dot_slots(qf, kf) * scale - lrow);
    acc_t dp = dot_slots(dof, vf);
    if (drop.active) dp *= drop.keep(e, h) ? keep_scale : acc_t(0);
    if (lane == 0) {
      buf_p[e * groups + g] = P;
      buf_ds[e * groups + g] = dp;
    }
    D += P * dp;
  }
  __syncwarp();
  // Pass 2: dS = P (dP - D); dq = scale * sum dS k; the workspace keeps P·mask and dS.
#pragma unroll
  for (int t = 0; t < kSlots; ++t) acc[t] = acc_t(0);
  for (int64_t e = e0; e < e1; ++e) {
    const acc_t P = buf_p[e * groups + g];
    const acc_t ds = P * (buf_ds[e * groups + g] - D);
    acc_t pd = P;
    if (drop.active) pd *= drop.keep(e, h) ? keep_scale : acc_t(0);
    __syncwarp();  // every lane has read the entry before lane 0 overwrites it
    if (lane == 0) {
      buf_p[e * groups + g] = pd;
      buf_ds[e * groups + g] = ds;
    }
    load_row<T, VEC>(k + (col[e] * heads + h) * dh, dh, lane, kf);
    const acc_t c = ds * scale;
#pragma unroll
    for (int t = 0; t < kSlots; ++t) acc[t] += c * kf[t];
  }
  store_row<T, VEC>(dq + pair * dh, dh, lane, acc);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
attn_bwd_dkdv_kernel(const T* __restrict__ dout, const T* __restrict__ q,
                     const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                     const int64_t* __restrict__ tperm,
                     const typename Acc<T>::type* __restrict__ buf_p,
                     const typename Acc<T>::type* __restrict__ buf_ds, T* __restrict__ dk,
                     T* __restrict__ dv, int64_t n, int heads, int dh,
                     typename Acc<T>::type scale) {
  using acc_t = typename Acc<T>::type;
  const int lane = threadIdx.x & 31;
  const int64_t pair = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (pair >= n * heads) return;
  const int64_t j = pair / heads;
  const int h = static_cast<int>(pair % heads);
  const int groups = heads / 4, g = h >> 2;
  const int64_t row = static_cast<int64_t>(transposed_relation(h & 3)) * n + j;
  acc_t x[kSlots], dkf[kSlots], dvf[kSlots];
#pragma unroll
  for (int t = 0; t < kSlots; ++t) dkf[t] = dvf[t] = acc_t(0);
  for (int64_t et = rowptr[row]; et < rowptr[row + 1]; ++et) {
    const int64_t e = tperm[et];
    const int64_t base = (col[et] * heads + h) * dh;
    const acc_t pd = buf_p[e * groups + g];
    const acc_t ds = buf_ds[e * groups + g] * scale;
    load_row<T, VEC>(dout + base, dh, lane, x);
#pragma unroll
    for (int t = 0; t < kSlots; ++t) dvf[t] += pd * x[t];
    load_row<T, VEC>(q + base, dh, lane, x);
#pragma unroll
    for (int t = 0; t < kSlots; ++t) dkf[t] += ds * x[t];
  }
  store_row<T, VEC>(dk + pair * dh, dh, lane, dkf);
  store_row<T, VEC>(dv + pair * dh, dh, lane, dvf);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// 16-byte vectors when every row start is 16-byte aligned, else scalar (still coalesced).
template <typename T>
int pick_vec(int dh, std::initializer_list<const void*> ptrs) {
  constexpr int kVec = 16 / sizeof(T);
  if (dh % kVec) return 1;
  for (const void* p : ptrs)
    if (!aligned16(p)) return 1;
  return kVec;
}

template <typename F>
cudaError_t with_vec(int vec, F&& f) {
  switch (vec) {
    case 2: return f(std::integral_constant<int, 2>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 8: return f(std::integral_constant<int, 8>{});
    default: return f(std::integral_constant<int, 1>{});
  }
}

// Calls f(T{}, integral_constant<VEC>) for the element type of dtype and the widest vector
// width every row pointer in ptrs allows (widths over 16 bytes are never instantiated).
template <typename F>
cudaError_t dispatch_vec(DType dtype, int64_t dh, std::initializer_list<const void*> ptrs, F&& f) {
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    return with_vec(pick_vec<T>(static_cast<int>(dh), ptrs), [&](auto vc) -> cudaError_t {
      if constexpr (decltype(vc)::value * sizeof(T) > 16) {
        return cudaErrorInvalidValue;
      } else {
        return f(tag, vc);
      }
    });
  });
}

}  // namespace

cudaError_t dag_attention_fwd(DType dtype, const void* q, const void* k, const void* v,
                              const int64_t* rel_rowptr, const int64_t* rel_col, void* out,
                              void* lse, int64_t n, int64_t heads, int64_t dh, double scale,
                              double dropout_p, int64_t seed, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const Dropout drop = Dropout::make(dropout_p, seed, heads);
  const unsigned int blocks = blocks_for(n * heads, kWarpsPerBlock);
  return dispatch_vec(dtype, dh, {q, k, v, out}, [&](auto tag, auto vc) -> cudaError_t {
    using T = decltype(tag);
    using acc_t = typename Acc<T>::type;
    constexpr int VEC = decltype(vc)::value;
    NNFF_LAUNCH(blocks, kWarpsPerBlock * 32, stream, attn_fwd_kernel<T, VEC>)(
        static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), rel_rowptr,
        rel_col, static_cast<T*>(out), static_cast<acc_t*>(lse), n, static_cast<int>(heads),
        static_cast<int>(dh), static_cast<acc_t>(scale), drop,
        static_cast<acc_t>(1.0 / (1.0 - dropout_p)));
    return cudaGetLastError();
  });
}

cudaError_t dag_attention_bwd(DType dtype, const void* dout, const void* q, const void* k,
                              const void* v, const void* out, const void* lse,
                              const int64_t* rel_rowptr, const int64_t* rel_col,
                              const int64_t* rel_tperm, int64_t nnz, void* dq, void* dk, void* dv,
                              void* workspace, int64_t n, int64_t heads, int64_t dh, double scale,
                              double dropout_p, int64_t seed, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const Dropout drop = Dropout::make(dropout_p, seed, heads);
  const unsigned int blocks = blocks_for(n * heads, kWarpsPerBlock);
  return dispatch_vec(dtype, dh, {dout, q, k, v, out, dq, dk, dv}, [&](auto tag, auto vc) -> cudaError_t {
    using T = decltype(tag);
    using acc_t = typename Acc<T>::type;
    constexpr int VEC = decltype(vc)::value;
    acc_t* buf_p = static_cast<acc_t*>(workspace);
    acc_t* buf_ds = buf_p + nnz * (heads / 4);
    const acc_t sc = static_cast<acc_t>(scale);
    NNFF_LAUNCH(blocks, kWarpsPerBlock * 32, stream, attn_bwd_dq_kernel<T, VEC>)(
        static_cast<const T*>(dout), static_cast<const T*>(q), static_cast<const T*>(k),
        static_cast<const T*>(v), static_cast<const T*>(out), static_cast<const acc_t*>(lse),
        rel_rowptr, rel_col, static_cast<T*>(dq), buf_p, buf_ds, n, static_cast<int>(heads),
        static_cast<int>(dh), sc, drop, static_cast<acc_t>(1.0 / (1.0 - dropout_p)));
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    NNFF_LAUNCH(blocks, kWarpsPerBlock * 32, stream, attn_bwd_dkdv_kernel<T, VEC>)(
        static_cast<const T*>(dout), static_cast<const T*>(q), rel_rowptr, rel_col, rel_tperm, buf_p,
        buf_ds, static_cast<T*>(dk), static_cast<T*>(dv), n, static_cast<int>(heads),
        static_cast<int>(dh), sc);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace nnff
