// DAG-masked attention on CUDA (docs/DESIGN.md: dag_attention). One warp per (node, head), split into groups of
// LPR lanes (8, 16 or 32: the fewest that hold a head row at kSlots elements per lane, with
// 16-byte loads when Dh and the pointers allow). Each group takes every (32 / LPR)-th entry of
// the node's neighbour list, so a warp has that many rows in flight; scores are reduced with
// shuffles inside a group, the softmax is online per group, and the groups are merged at the
// end. Backward: flash-attention recipe; dq over relation rows (also storing the per-entry
// weights and dS), then dk / dv gathered over the transposed relation — no atomics, so the
// results are deterministic.
//
// q, k, v (and dq, dk, dv) rows may be `ld` elements apart per node (3 * H * Dh for the thirds
// of one packed qkv); out, dout and lse are contiguous (N, H, ...).
#include <cmath>
#include <type_traits>

#include "common.cuh"

namespace nnff {
namespace cuda {
namespace {

constexpr int kSlots = 8;  // elements per lane: 8 * 32 = 256 = max head dim
constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float fexp(float x) { return expf(x); }
__device__ __forceinline__ double fexp(double x) { return exp(x); }
__device__ __forceinline__ float flog(float x) { return logf(x); }
__device__ __forceinline__ double flog(double x) { return log(x); }

// Lane r of a group holds elements (s * LPR + r) * VEC + w, s < kSlots / VEC, w < VEC.
template <typename T, int VEC, int LPR, typename acc_t>
__device__ __forceinline__ void load_row(const T* __restrict__ row, int dh, int r,
                                         acc_t (&x)[kSlots]) {
#pragma unroll
  for (int s = 0; s < kSlots / VEC; ++s) {
    const int d = (s * LPR + r) * VEC;
    if (d < dh) {
      load_vec<T, VEC>(row + d, x + s * VEC);
    } else {
#pragma unroll
      for (int w = 0; w < VEC; ++w) x[s * VEC + w] = acc_t(0);
    }
  }
}

template <typename acc_t>
__device__ __forceinline__ void zero(acc_t (&x)[kSlots]) {
#pragma unroll
  for (int t = 0; t < kSlots; ++t) x[t] = acc_t(0);
}

template <typename T, int VEC, int LPR, typename acc_t>
__device__ __forceinline__ void store_row(T* __restrict__ row, int dh, int r,
                                          const acc_t (&x)[kSlots]) {
#pragma unroll
  for (int s = 0; s < kSlots / VEC; ++s) {
    const int d = (s * LPR + r) * VEC;
    if (d < dh) store_vec<T, VEC>(row + d, x + s * VEC);
  }
}

// across_groups_sum of every slot of a lane's row part.
template <int LPR, typename acc_t>
__device__ __forceinline__ void across_groups_sum_row(acc_t (&x)[kSlots]) {
#pragma unroll
  for (int t = 0; t < kSlots; ++t) x[t] = across_groups_sum<LPR>(x[t]);
}

template <int LPR, typename acc_t>
__device__ __forceinline__ acc_t dot(const acc_t (&a)[kSlots], const acc_t (&b)[kSlots]) {
  acc_t s = 0;
#pragma unroll
  for (int t = 0; t < kSlots; ++t) s += a[t] * b[t];
  return group_sum<LPR>(s);
}

// The k and v rows (head h) of entry e of a neighbour list ending at e1. A group past the end
// re-reads the list's last entry (a cache hit) instead of branching around the loads, which
// made ptxas spill.
template <typename T, int VEC, int LPR, typename acc_t>
__device__ __forceinline__ void load_kv(const T* __restrict__ k, const T* __restrict__ v,
                                        const int64_t* __restrict__ col, int64_t e, int64_t e1,
                                        int64_t ld, int h, int dh, int r, acc_t (&kf)[kSlots],
                                        acc_t (&vf)[kSlots]) {
  const int64_t base = col[e < e1 ? e : e1 - 1] * ld + h * dh;
  load_row<T, VEC, LPR>(k + base, dh, r, kf);
  load_row<T, VEC, LPR>(v + base, dh, r, vf);
}

// Where a warp works: (node, head) pair, its group and the lane's place in it. Pairs are
// below 2^32 (the launchers refuse more): 32-bit division, where a 64-bit one is a called
// subroutine that made ptxas spill around it.
template <int LPR>
struct WarpTask {
  static constexpr int kGroups = 32 / LPR;
  int64_t pair, node;
  int head, group, r;

  __device__ __forceinline__ WarpTask(int heads) {
    const int lane = threadIdx.x & 31;
    pair = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
    node = static_cast<uint32_t>(pair) / static_cast<uint32_t>(heads);
    head = static_cast<int>(static_cast<uint32_t>(pair) % static_cast<uint32_t>(heads));
    group = lane / LPR;
    r = lane % LPR;
  }
};

template <typename T, int VEC, int LPR>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
attn_fwd_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                int64_t ld, const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                T* __restrict__ out, typename Acc<T>::type* __restrict__ lse, int64_t n,
                int heads, int dh, typename Acc<T>::type scale, Dropout drop,
                typename Acc<T>::type keep_scale) {
  using acc_t = typename Acc<T>::type;
  const WarpTask<LPR> w(heads);
  if (w.pair >= n * heads) return;  // whole warp leaves together
  const int h = w.head;
  const int64_t row = static_cast<int64_t>(h & 3) * n + w.node;
  const int64_t e0 = rowptr[row], e1 = rowptr[row + 1];
  acc_t qf[kSlots], kf[kSlots], vf[kSlots], o[kSlots];
  load_row<T, VEC, LPR>(q + w.node * ld + h * dh, dh, w.r, qf);
  zero(o);
  acc_t m = -INFINITY, l = acc_t(0);
  // The trip count is the same for every group (shuffles need the whole warp): a group past
  // the end of the list skips the update.
  for (int64_t first = e0; first < e1; first += w.kGroups) {
    const int64_t e = first + w.group;
    load_kv<T, VEC, LPR>(k, v, col, e, e1, ld, h, dh, w.r, kf, vf);
    const acc_t x = dot<LPR>(qf, kf) * scale;
    if (e >= e1) continue;
    const acc_t m_new = x > m ? x : m;
    const acc_t corr = fexp(m - m_new);
    const acc_t pe = fexp(x - m_new);
    l = l * corr + pe;
    acc_t wt = pe;
    if (drop.active) wt = drop.keep(e, h) ? pe * keep_scale : acc_t(0);
#pragma unroll
    for (int t = 0; t < kSlots; ++t) o[t] = o[t] * corr + wt * vf[t];
    m = m_new;
  }
  // Merge the groups' partial softmaxes (a group that saw no entry has m = -inf, l = 0).
  const acc_t m_all = across_groups_max<LPR>(m);
  const acc_t c = m == acc_t(-INFINITY) ? acc_t(0) : fexp(m - m_all);
  l = across_groups_sum<LPR>(l * c);
#pragma unroll
  for (int t = 0; t < kSlots; ++t) o[t] *= c;
  across_groups_sum_row<LPR>(o);
  if (w.group != 0) return;
  const acc_t inv = l > acc_t(0) ? acc_t(1) / l : acc_t(0);
#pragma unroll
  for (int t = 0; t < kSlots; ++t) o[t] *= inv;
  store_row<T, VEC, LPR>(out + w.pair * dh, dh, w.r, o);
  if (w.r == 0) lse[w.pair] = l > acc_t(0) ? m_all + flog(l) : acc_t(-INFINITY);
}

template <typename T, int VEC, int LPR>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
attn_bwd_dq_kernel(const T* __restrict__ dout, const T* __restrict__ q, const T* __restrict__ k,
                   const T* __restrict__ v, int64_t ld,
                   const typename Acc<T>::type* __restrict__ lse,
                   const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                   T* __restrict__ dq, typename Acc<T>::type* __restrict__ buf_p,
                   typename Acc<T>::type* __restrict__ buf_ds, int64_t n, int heads, int dh,
                   typename Acc<T>::type scale, Dropout drop, typename Acc<T>::type keep_scale) {
  using acc_t = typename Acc<T>::type;
  const WarpTask<LPR> w(heads);
  if (w.pair >= n * heads) return;
  const int h = w.head;
  const int groups = heads / 4, g = h >> 2;
  const int64_t row = static_cast<int64_t>(h & 3) * n + w.node;
  const int64_t e0 = rowptr[row], e1 = rowptr[row + 1];
  acc_t qf[kSlots], dof[kSlots], kf[kSlots], vf[kSlots], acc[kSlots];
  load_row<T, VEC, LPR>(q + w.node * ld + h * dh, dh, w.r, qf);
  load_row<T, VEC, LPR>(dout + w.pair * dh, dh, w.r, dof);
  const acc_t lrow = lse[w.pair];
  // Pass 1: P and dP per entry (the group's lane 0 parks them in the workspace) and
  // D = sum P dP (= dO . O, from fp32 values instead of the rounded low-precision O).
  acc_t D = acc_t(0);
  for (int64_t first = e0; first < e1; first += w.kGroups) {
    const int64_t e = first + w.group;
    load_kv<T, VEC, LPR>(k, v, col, e, e1, ld, h, dh, w.r, kf, vf);
    const acc_t s = dot<LPR>(qf, kf);
    acc_t dp = dot<LPR>(dof, vf);
    if (e >= e1) continue;
    const acc_t P = fexp(s * scale - lrow);
    if (drop.active) dp *= drop.keep(e, h) ? keep_scale : acc_t(0);
    if (w.r == 0) {
      buf_p[e * groups + g] = P;
      buf_ds[e * groups + g] = dp;
    }
    D += P * dp;
  }
  D = across_groups_sum<LPR>(D);
  __syncwarp();
  // Pass 2: dS = P (dP - D); dq = scale * sum dS k; the workspace keeps P·mask and dS. Each
  // entry is read and rewritten by the group that wrote it in pass 1.
  zero(acc);
  for (int64_t first = e0; first < e1; first += w.kGroups) {
    const int64_t e = first + w.group;
    const bool valid = e < e1;
    acc_t ds = acc_t(0), pd = acc_t(0);
    if (valid) {
      const acc_t P = buf_p[e * groups + g];
      ds = P * (buf_ds[e * groups + g] - D);
      pd = P;
      if (drop.active) pd *= drop.keep(e, h) ? keep_scale : acc_t(0);
    }
    __syncwarp();  // every lane has read the entry before its group's lane 0 overwrites it
    if (!valid) continue;
    if (w.r == 0) {
      buf_p[e * groups + g] = pd;
      buf_ds[e * groups + g] = ds;
    }
    load_row<T, VEC, LPR>(k + col[e] * ld + h * dh, dh, w.r, kf);
    const acc_t c = ds * scale;
#pragma unroll
    for (int t = 0; t < kSlots; ++t) acc[t] += c * kf[t];
  }
  across_groups_sum_row<LPR>(acc);
  if (w.group == 0) store_row<T, VEC, LPR>(dq + w.node * ld + h * dh, dh, w.r, acc);
}

template <typename T, int VEC, int LPR>
__global__ void __launch_bounds__(kWarpsPerBlock * 32)
attn_bwd_dkdv_kernel(const T* __restrict__ dout, const T* __restrict__ q, int64_t ld,
                     const int64_t* __restrict__ rowptr, const int64_t* __restrict__ col,
                     const int64_t* __restrict__ tperm,
                     const typename Acc<T>::type* __restrict__ buf_p,
                     const typename Acc<T>::type* __restrict__ buf_ds, T* __restrict__ dk,
                     T* __restrict__ dv, int64_t n, int heads, int dh,
                     typename Acc<T>::type scale) {
  using acc_t = typename Acc<T>::type;
  const WarpTask<LPR> w(heads);
  if (w.pair >= n * heads) return;
  const int h = w.head;
  const int groups = heads / 4, g = h >> 2;
  const int64_t row = static_cast<int64_t>(transposed_relation(h & 3)) * n + w.node;
  acc_t x[kSlots], dkf[kSlots], dvf[kSlots];
  zero(dkf);
  zero(dvf);
  const int64_t e1 = rowptr[row + 1];
  for (int64_t et = rowptr[row] + w.group; et < e1; et += w.kGroups) {
    const int64_t e = tperm[et], i = col[et];
    const acc_t pd = buf_p[e * groups + g];
    const acc_t ds = buf_ds[e * groups + g] * scale;
    load_row<T, VEC, LPR>(dout + (i * heads + h) * dh, dh, w.r, x);
#pragma unroll
    for (int t = 0; t < kSlots; ++t) dvf[t] += pd * x[t];
    load_row<T, VEC, LPR>(q + i * ld + h * dh, dh, w.r, x);
#pragma unroll
    for (int t = 0; t < kSlots; ++t) dkf[t] += ds * x[t];
  }
  across_groups_sum_row<LPR>(dkf);
  across_groups_sum_row<LPR>(dvf);
  if (w.group != 0) return;
  store_row<T, VEC, LPR>(dk + w.node * ld + h * dh, dh, w.r, dkf);
  store_row<T, VEC, LPR>(dv + w.node * ld + h * dh, dh, w.r, dvf);
}

constexpr int64_t kMaxPairs = int64_t{1} << 32;

// Calls f(T{}, VEC, LPR) (integral constants) for the dtype, the vector width the row
// starts allow and, with 16-byte vectors, the fewest lanes per row (8, 16 or 32) that hold dh
// at kSlots per lane. The scalar fallback (odd head dims, misaligned rows) keeps whole warps:
// three fewer instantiations per dtype and kernel for a path that is not meant to be fast.
template <typename F>
cudaError_t dispatch_rows(DType dtype, int64_t dh, int64_t ld,
                          std::initializer_list<const void*> ptrs, F&& f) {
  const int64_t lanes = (dh + kSlots - 1) / kSlots;
  return dispatch_vec(dtype, {dh, ld}, ptrs, [&](auto tag, auto vec) -> cudaError_t {
    if constexpr (decltype(vec)::value > 1) {
      if (lanes <= 8) return f(tag, vec, std::integral_constant<int, 8>{});
      if (lanes <= 16) return f(tag, vec, std::integral_constant<int, 16>{});
    }
    return f(tag, vec, std::integral_constant<int, 32>{});
  });
}

}  // namespace

cudaError_t dag_attention_fwd(DType dtype, const void* q, const void* k, const void* v, int64_t ld,
                              const int64_t* rel_rowptr, const int64_t* rel_col, void* out,
                              void* lse, int64_t n, int64_t heads, int64_t dh, double scale,
                              double dropout_p, int64_t seed, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (n * heads >= kMaxPairs) return cudaErrorInvalidValue;
  const Dropout drop = Dropout::make(dropout_p, seed, heads);
  const unsigned int blocks = blocks_for(n * heads, kWarpsPerBlock);
  return dispatch_rows(dtype, dh, ld, {q, k, v, out}, [&](auto tag, auto vec, auto lpr) {
    using T = decltype(tag);
    using acc_t = typename Acc<T>::type;
    constexpr int VEC = decltype(vec)::value, LPR = decltype(lpr)::value;
    NNFF_LAUNCH(blocks, kWarpsPerBlock * 32, stream, attn_fwd_kernel<T, VEC, LPR>)(
        static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), ld,
        rel_rowptr, rel_col, static_cast<T*>(out), static_cast<acc_t*>(lse), n,
        static_cast<int>(heads), static_cast<int>(dh), static_cast<acc_t>(scale), drop,
        static_cast<acc_t>(1.0 / (1.0 - dropout_p)));
    return cudaGetLastError();
  });
}

cudaError_t dag_attention_bwd(DType dtype, const void* dout, const void* q, const void* k,
                              const void* v, int64_t ld, const void* lse,
                              const int64_t* rel_rowptr, const int64_t* rel_col,
                              const int64_t* rel_tperm, int64_t nnz, void* dq, void* dk, void* dv,
                              void* workspace, int64_t n, int64_t heads, int64_t dh, double scale,
                              double dropout_p, int64_t seed, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  if (n * heads >= kMaxPairs) return cudaErrorInvalidValue;
  const Dropout drop = Dropout::make(dropout_p, seed, heads);
  const unsigned int blocks = blocks_for(n * heads, kWarpsPerBlock);
  const auto launch = [&](auto tag, auto vec, auto lpr) {
    using T = decltype(tag);
    using acc_t = typename Acc<T>::type;
    constexpr int VEC = decltype(vec)::value, LPR = decltype(lpr)::value;
    acc_t* buf_p = static_cast<acc_t*>(workspace);
    acc_t* buf_ds = buf_p + nnz * (heads / 4);
    const acc_t sc = static_cast<acc_t>(scale);
    NNFF_LAUNCH(blocks, kWarpsPerBlock * 32, stream, attn_bwd_dq_kernel<T, VEC, LPR>)(
        static_cast<const T*>(dout), static_cast<const T*>(q), static_cast<const T*>(k),
        static_cast<const T*>(v), ld, static_cast<const acc_t*>(lse), rel_rowptr, rel_col,
        static_cast<T*>(dq), buf_p, buf_ds, n, static_cast<int>(heads), static_cast<int>(dh), sc,
        drop, static_cast<acc_t>(1.0 / (1.0 - dropout_p)));
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    NNFF_LAUNCH(blocks, kWarpsPerBlock * 32, stream, attn_bwd_dkdv_kernel<T, VEC, LPR>)(
        static_cast<const T*>(dout), static_cast<const T*>(q), ld, rel_rowptr, rel_col, rel_tperm,
        buf_p, buf_ds, static_cast<T*>(dk), static_cast<T*>(dv), n, static_cast<int>(heads),
        static_cast<int>(dh), sc);
    return cudaGetLastError();
  };
  return dispatch_rows(dtype, dh, ld, {dout, q, k, v, dq, dk, dv}, launch);
}

}  // namespace cuda
}  // namespace nnff
