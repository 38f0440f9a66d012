// Fused bidirectional GIN aggregation on CUDA (docs/DESIGN.md: bigin). Each node's row is handled by a
// power-of-two run of threads (up to the whole block) that split its channels in 16-byte
// vectors when M and the pointers allow, so neighbour rows are gathered in coalesced wide
// loads and the CSR row bounds are read once per row. Backward recomputes the
// pre-activation and gathers over the CSRs, without atomics.
#include <cmath>

#include "common.cuh"

namespace nnff {
namespace cuda {
namespace {

constexpr int kShiftMax = 8;
constexpr int kThreads = 1 << kShiftMax;

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

// Calls f(i, c) for this thread's share of the (n, m) rows: the 2^shift threads of row `row`
// of a block work on node i = blockIdx.x * (kThreads >> shift) + row, and thread `lane` of
// them on every (2^shift)-th VEC-channel vector c of it.
template <int VEC, typename F>
__device__ __forceinline__ void for_row_vectors(int64_t n, int64_t m, int shift, F&& f) {
  const int64_t i =
      (static_cast<int64_t>(blockIdx.x) << (kShiftMax - shift)) + (threadIdx.x >> shift);
  if (i >= n) return;
  const int64_t lane = threadIdx.x & ((1 << shift) - 1), stride = (int64_t{1} << shift) * VEC;
  for (int64_t c = lane * VEC; c < m; c += stride) f(i, c);
}

template <typename T, int VEC, typename acc_t>
__device__ __forceinline__ void add_vec(const T* __restrict__ src, acc_t (&z)[VEC]) {
  acc_t x[VEC];
  load_vec<T, VEC>(src, x);
#pragma unroll
  for (int w = 0; w < VEC; ++w) z[w] += x[w];
}

// z[w] += src[col[e], c + w] over the entries e of CSR row i.
template <typename T, int VEC, typename acc_t>
__device__ __forceinline__ void gather_sum(const T* __restrict__ src,
                                           const int64_t* __restrict__ rowptr,
                                           const int64_t* __restrict__ col, int64_t i, int64_t c,
                                           int64_t m, acc_t (&z)[VEC]) {
  for (int64_t e = rowptr[i]; e < rowptr[i + 1]; ++e) add_vec<T, VEC>(src + col[e] * m + c, z);
}

// z = h[i, c:c+VEC] + the sum of g over i's children (adjacency row i) in the first half of
// the channels, over its parents (transposed row i) in the second.
template <typename T, int VEC, typename acc_t>
__device__ __forceinline__ void preact(const T* __restrict__ h, const T* __restrict__ g,
                                       const int64_t* __restrict__ rp,
                                       const int64_t* __restrict__ cl,
                                       const int64_t* __restrict__ rpt,
                                       const int64_t* __restrict__ clt, int64_t i, int64_t c,
                                       int64_t m, acc_t (&z)[VEC]) {
  load_vec<T, VEC>(h + i * m + c, z);
  if (c < m / 2) {
    gather_sum<T, VEC>(g, rp, cl, i, c, m, z);
  } else {
    gather_sum<T, VEC>(g, rpt, clt, i, c, m, z);
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
bigin_fwd_kernel(const T* __restrict__ h, const T* __restrict__ g, const int64_t* __restrict__ rp,
                 const int64_t* __restrict__ cl, const int64_t* __restrict__ rpt,
                 const int64_t* __restrict__ clt, T* __restrict__ y, int64_t n, int64_t m, int act,
                 int shift) {
  using acc_t = typename Acc<T>::type;
  for_row_vectors<VEC>(n, m, shift, [&](int64_t i, int64_t c) {
    acc_t z[VEC];
    preact<T, VEC>(h, g, rp, cl, rpt, clt, i, c, m, z);
#pragma unroll
    for (int w = 0; w < VEC; ++w) z[w] = act_fwd(act, z[w]);
    store_vec<T, VEC>(y + i * m + c, z);
  });
}

// dh = dz = dy * act'(z), rounded to T.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
bigin_bwd_dh_kernel(const T* __restrict__ dy, const T* __restrict__ h, const T* __restrict__ g,
                    const int64_t* __restrict__ rp, const int64_t* __restrict__ cl,
                    const int64_t* __restrict__ rpt, const int64_t* __restrict__ clt,
                    T* __restrict__ dh, int64_t n, int64_t m, int act, int shift) {
  using acc_t = typename Acc<T>::type;
  for_row_vectors<VEC>(n, m, shift, [&](int64_t i, int64_t c) {
    acc_t z[VEC], d[VEC];
    preact<T, VEC>(h, g, rp, cl, rpt, clt, i, c, m, z);
    load_vec<T, VEC>(dy + i * m + c, d);
#pragma unroll
    for (int w = 0; w < VEC; ++w) d[w] *= act_grad(act, z[w]);
    store_vec<T, VEC>(dh + i * m + c, d);
  });
}

// dg_j = [sum of dz1 over the parents of j, sum of dz2 over the children of j], dz read back
// from dh: for fp16 / bf16 the rounded dz, as the CPU and Triton kernels (and a plain
// low-precision backward) use, at half the traffic of a float32 copy.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
bigin_bwd_dg_kernel(const T* __restrict__ dz, const int64_t* __restrict__ rp,
                    const int64_t* __restrict__ cl, const int64_t* __restrict__ rpt,
                    const int64_t* __restrict__ clt, T* __restrict__ dg, int64_t n, int64_t m,
                    int shift) {
  using acc_t = typename Acc<T>::type;
  for_row_vectors<VEC>(n, m, shift, [&](int64_t j, int64_t c) {
    acc_t s[VEC];
#pragma unroll
    for (int w = 0; w < VEC; ++w) s[w] = acc_t(0);
    if (c < m / 2) {
      gather_sum<T, VEC>(dz, rpt, clt, j, c, m, s);
    } else {
      gather_sum<T, VEC>(dz, rp, cl, j, c, m, s);
    }
    store_vec<T, VEC>(dg + j * m + c, s);
  });
}

// Launch shape for n rows of m channels in VEC-wide vectors: log2 of the threads per row (the
// fewest that cover the row's vectors, at most a block) and the blocks.
struct RowLaunch {
  int shift = 0;
  unsigned int blocks;

  RowLaunch(int64_t n, int64_t m, int vec) {
    while (shift < kShiftMax && (int64_t{1} << shift) * vec < m) ++shift;
    blocks = blocks_for(n, int64_t{kThreads} >> shift);
  }
};

}  // namespace

// Wide (16-byte) vectors need each half of a row to be whole vectors: (m / 2) % VEC == 0.
cudaError_t bigin_fwd(DType dtype, const void* h, const void* g, const int64_t* adj_rowptr,
                      const int64_t* adj_col, const int64_t* adjt_rowptr, const int64_t* adjt_col,
                      void* y, int64_t n, int64_t m, int act, cudaStream_t stream) {
  if (n * m == 0) return cudaSuccess;
  return dispatch_vec(dtype, {m / 2}, {h, g, y}, [&](auto tag, auto vec) -> cudaError_t {
    using T = decltype(tag);
    constexpr int VEC = decltype(vec)::value;
    const RowLaunch l(n, m, VEC);
    NNFF_LAUNCH(l.blocks, kThreads, stream, bigin_fwd_kernel<T, VEC>)(
        static_cast<const T*>(h), static_cast<const T*>(g), adj_rowptr, adj_col, adjt_rowptr,
        adjt_col, static_cast<T*>(y), n, m, act, l.shift);
    return cudaGetLastError();
  });
}

cudaError_t bigin_bwd(DType dtype, const void* dy, const void* h, const void* g,
                      const int64_t* adj_rowptr, const int64_t* adj_col,
                      const int64_t* adjt_rowptr, const int64_t* adjt_col, void* dh, void* dg,
                      int64_t n, int64_t m, int act, cudaStream_t stream) {
  if (n * m == 0) return cudaSuccess;
  return dispatch_vec(dtype, {m / 2}, {dy, h, g, dh, dg}, [&](auto tag, auto vec) -> cudaError_t {
    using T = decltype(tag);
    constexpr int VEC = decltype(vec)::value;
    const RowLaunch l(n, m, VEC);
    NNFF_LAUNCH(l.blocks, kThreads, stream, bigin_bwd_dh_kernel<T, VEC>)(
        static_cast<const T*>(dy), static_cast<const T*>(h), static_cast<const T*>(g), adj_rowptr,
        adj_col, adjt_rowptr, adjt_col, static_cast<T*>(dh), n, m, act, l.shift);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    NNFF_LAUNCH(l.blocks, kThreads, stream, bigin_bwd_dg_kernel<T, VEC>)(
        static_cast<const T*>(dh), adj_rowptr, adj_col, adjt_rowptr, adjt_col,
        static_cast<T*>(dg), n, m, l.shift);
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace nnff
