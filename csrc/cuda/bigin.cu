// Fused bidirectional GIN aggregation on CUDA (SPEC §3): one thread per output element
// (adjacent threads read adjacent channels of a neighbour row: coalesced gathers); backward
// recomputes the pre-activation and gathers over the CSRs, without atomics.
#include <cmath>

#include "common.cuh"

namespace nnff {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename acc_t>
__device__ __forceinline__ acc_t act_fwd(int a, acc_t x) {
  switch (a) {
    case 0: return x > acc_t(0) ? x : acc_t(0);
    case 1: return x > acc_t(0) ? x : x * acc_t(0.01);
    case 2: return x * acc_t(0.5) * (acc_t(1) + erf(x * acc_t(0.70710678118654752440)));
    default: return x > acc_t(0) ? x * x : acc_t(0);
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t act_grad(int a, acc_t x) {
  switch (a) {
    case 0: return x > acc_t(0) ? acc_t(1) : acc_t(0);
    case 1: return x > acc_t(0) ? acc_t(1) : acc_t(0.01);
    case 2: {
      const acc_t cdf = acc_t(0.5) * (acc_t(1) + erf(x * acc_t(0.70710678118654752440)));
      const acc_t pdf = exp(acc_t(-0.5) * x * x) * acc_t(0.39894228040143267794);
      return cdf + x * pdf;
    }
    default: return x > acc_t(0) ? acc_t(2) * x : acc_t(0);
  }
}

template <typename T>
__device__ __forceinline__ typename Acc<T>::type preact(const T* __restrict__ h,
                                                        const T* __restrict__ g,
                                                        const int64_t* __restrict__ rp,
                                                        const int64_t* __restrict__ cl,
                                                        const int64_t* __restrict__ rpt,
                                                        const int64_t* __restrict__ clt,
                                                        int64_t i, int64_t c, int64_t m) {
  using acc_t = typename Acc<T>::type;
  acc_t z = to_acc(h[i * m + c]);
  if (c < m / 2) {
    for (int64_t e = rp[i]; e < rp[i + 1]; ++e) z += to_acc(g[cl[e] * m + c]);
  } else {
    for (int64_t e = rpt[i]; e < rpt[i + 1]; ++e) z += to_acc(g[clt[e] * m + c]);
  }
  return z;
}

template <typename T>
__global__ void bigin_fwd_kernel(const T* __restrict__ h, const T* __restrict__ g,
                                 const int64_t* __restrict__ rp, const int64_t* __restrict__ cl,
                                 const int64_t* __restrict__ rpt, const int64_t* __restrict__ clt,
                                 T* __restrict__ y, int64_t n, int64_t m, int act) {
  const int64_t total = n * m;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / m, c = idx % m;
    y[idx] = from_acc<T>(act_fwd(act, preact(h, g, rp, cl, rpt, clt, i, c, m)));
  }
}

template <typename T>
__global__ void bigin_bwd_dz_kernel(const T* __restrict__ dy, const T* __restrict__ h,
                                    const T* __restrict__ g, const int64_t* __restrict__ rp,
                                    const int64_t* __restrict__ cl,
                                    const int64_t* __restrict__ rpt,
                                    const int64_t* __restrict__ clt, T* __restrict__ dh,
                                    typename Acc<T>::type* __restrict__ dz, int64_t n, int64_t m,
                                    int act) {
  const int64_t total = n * m;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / m, c = idx % m;
    const auto d = to_acc(dy[idx]) * act_grad(act, preact(h, g, rp, cl, rpt, clt, i, c, m));
    dz[idx] = d;
    dh[idx] = from_acc<T>(d);
  }
}

// dg_j = [sum of dz1 over the parents of j, sum of dz2 over the children of j]
template <typename T>
__global__ void bigin_bwd_dg_kernel(const typename Acc<T>::type* __restrict__ dz,
                                    const int64_t* __restrict__ rp, const int64_t* __restrict__ cl,
                                    const int64_t* __restrict__ rpt,
                                    const int64_t* __restrict__ clt, T* __restrict__ dg, int64_t n,
                                    int64_t m) {
  using acc_t = typename Acc<T>::type;
  const int64_t total = n * m;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = idx / m, c = idx % m;
    acc_t s = acc_t(0);
    if (c < m / 2) {
      for (int64_t e = rpt[j]; e < rpt[j + 1]; ++e) s += dz[clt[e] * m + c];
    } else {
      for (int64_t e = rp[j]; e < rp[j + 1]; ++e) s += dz[cl[e] * m + c];
    }
    dg[idx] = from_acc<T>(s);
  }
}

unsigned int grid_for(int64_t total) {
  const int64_t b = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(b < 1 ? 1 : (b > 65535LL * 32 ? 65535LL * 32 : b));
}

}  // namespace

cudaError_t bigin_fwd(DType dtype, const void* h, const void* g, const int64_t* adj_rowptr,
                      const int64_t* adj_col, const int64_t* adjt_rowptr, const int64_t* adjt_col,
                      void* y, int64_t n, int64_t m, int act, cudaStream_t stream) {
  if (n * m == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    NNFF_LAUNCH(grid_for(n * m), kThreads, stream, bigin_fwd_kernel<T>)(
        static_cast<const T*>(h), static_cast<const T*>(g), adj_rowptr, adj_col, adjt_rowptr,
        adjt_col, static_cast<T*>(y), n, m, act);
    return cudaGetLastError();
  });
}

cudaError_t bigin_bwd(DType dtype, const void* dy, const void* h, const void* g,
                      const int64_t* adj_rowptr, const int64_t* adj_col,
                      const int64_t* adjt_rowptr, const int64_t* adjt_col, void* dh, void* dg,
                      void* workspace, int64_t n, int64_t m, int act, cudaStream_t stream) {
  if (n * m == 0) return cudaSuccess;
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    using acc_t = typename Acc<T>::type;
    acc_t* dz = static_cast<acc_t*>(workspace);
    NNFF_LAUNCH(grid_for(n * m), kThreads, stream, bigin_bwd_dz_kernel<T>)(
        static_cast<const T*>(dy), static_cast<const T*>(h), static_cast<const T*>(g), adj_rowptr,
        adj_col, adjt_rowptr, adjt_col, static_cast<T*>(dh), dz, n, m, act);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    NNFF_LAUNCH(grid_for(n * m), kThreads, stream, bigin_bwd_dg_kernel<T>)(
        dz, adj_rowptr, adj_col, adjt_rowptr, adjt_col, static_cast<T*>(dg), n, m);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace nnff
