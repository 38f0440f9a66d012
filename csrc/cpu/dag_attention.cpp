// DAG-masked attention on CPU (SPEC §2): forward keeps the row log-sum-exp, backward follows
// the flash-attention recipe and gathers dk / dv over the transposed relation (no atomics,
// bit-identical results run to run). Parallel over nodes with at::parallel_for; the loops
// over the head dimension are vectorised (vec.h).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "../checks.h"
#include "../common.h"
#include "vec.h"

namespace nnff {
namespace cpu {
namespace {

// Nodes per parallel task: enough work to amortise a task for tiny graphs.
int64_t node_grain(int64_t heads, int64_t dh, int64_t avg_row) {
  const int64_t work = std::max<int64_t>(1, heads * dh * std::max<int64_t>(1, avg_row));
  return std::max<int64_t>(1, (1 << 15) / work);
}

// q, k, v (and dq, dk, dv) rows are qs elements apart: H * Dh for separate tensors, 3 * H * Dh
// for the thirds of one packed qkv (N, 3, H, Dh). out, dout and lse are (N, H, ...) contiguous.
template <typename T>
void fwd_kernel(const T* q, const T* k, const T* v, int64_t qs, const int64_t* rowptr,
                const int64_t* col, T* out, typename AccType<T>::type* lse, int64_t n,
                int64_t heads, int64_t dh, double scale, const Dropout& drop, double p) {
  using acc_t = typename AccType<T>::type;
  const acc_t sc = static_cast<acc_t>(scale);
  const acc_t keep_scale = static_cast<acc_t>(1.0 / (1.0 - p));
  const int64_t avg = n > 0 ? rowptr[4 * n] / (4 * n) : 1;
  at::parallel_for(0, n, node_grain(heads, dh, avg), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> qf(dh), of(dh), s;
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t row = (h & 3) * n + i;
        const int64_t e0 = rowptr[row], e1 = rowptr[row + 1];
        const int64_t base = (i * heads + h) * dh;
        T* o = out + base;
        if (e1 == e0) {  // only reachable with a relation CSR lacking self loops
          for (int64_t d = 0; d < dh; ++d) o[d] = T(0);
          lse[i * heads + h] = -std::numeric_limits<acc_t>::infinity();
          continue;
        }
        load(qf.data(), q + i * qs + h * dh, dh);
        if (static_cast<int64_t>(s.size()) < e1 - e0) s.resize(e1 - e0);
        acc_t m = -std::numeric_limits<acc_t>::infinity();
        for (int64_t e = e0; e < e1; ++e) {
          const acc_t x = dot(qf.data(), k + col[e] * qs + h * dh, dh) * sc;
          s[e - e0] = x;
          m = std::max(m, x);
        }
        for (int64_t e = 0; e < e1 - e0; ++e) s[e] -= m;
        exp_inplace(s.data(), e1 - e0);
        acc_t sum = 0;
        for (int64_t e = 0; e < e1 - e0; ++e) sum += s[e];
        const acc_t inv = acc_t(1) / sum;
        zero(of.data(), dh);
        for (int64_t e = e0; e < e1; ++e) {
          acc_t w = s[e - e0] * inv;
          if (drop.active) {
            if (!drop.keep(e, h)) continue;
            w *= keep_scale;
          }
          axpy(of.data(), w, v + col[e] * qs + h * dh, dh);
        }
        store(o, of.data(), dh);
        lse[i * heads + h] = m + std::log(sum);
      }
    }
  });
}

// dq over relation rows; also stores, per (forward entry, head group), the dropped weight
// P·mask/(1-p) and dS = P (dP - D) for the gather pass below.
template <typename T>
void bwd_dq_kernel(const T* dout, const T* q, const T* k, const T* v, int64_t qs,
                   const typename AccType<T>::type* lse, const int64_t* rowptr, const int64_t* col,
                   T* dq, typename AccType<T>::type* buf_p, typename AccType<T>::type* buf_ds,
                   int64_t n, int64_t heads, int64_t dh, double scale, const Dropout& drop,
                   double p) {
  using acc_t = typename AccType<T>::type;
  const acc_t sc = static_cast<acc_t>(scale);
  const acc_t keep_scale = static_cast<acc_t>(1.0 / (1.0 - p));
  const int64_t groups = heads / 4;
  const int64_t avg = n > 0 ? rowptr[4 * n] / (4 * n) : 1;
  at::parallel_for(0, n, node_grain(heads, 2 * dh, avg), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> qf(dh), dof(dh), dqf(dh), P, dP;
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t row = (h & 3) * n + i, g = h >> 2;
        const int64_t e0 = rowptr[row], e1 = rowptr[row + 1];
        const int64_t qb = i * qs + h * dh;
        load(qf.data(), q + qb, dh);
        load(dof.data(), dout + (i * heads + h) * dh, dh);
        const acc_t l = lse[i * heads + h];
        if (static_cast<int64_t>(P.size()) < e1 - e0) P.resize(e1 - e0), dP.resize(e1 - e0);
        // Pass 1: P and dP per entry, and D = sum P dP (= dO . O, but from fp32 values
        // rather than the rounded low-precision O).
        for (int64_t e = e0; e < e1; ++e) {
          const int64_t kb = col[e] * qs + h * dh;
          P[e - e0] = dot(qf.data(), k + kb, dh) * sc - l;
          acc_t dp = dot(dof.data(), v + kb, dh);
          if (drop.active) dp *= drop.keep(e, h) ? keep_scale : acc_t(0);
          dP[e - e0] = dp;
        }
        exp_inplace(P.data(), e1 - e0);
        acc_t D = 0;
        for (int64_t e = 0; e < e1 - e0; ++e) D += P[e] * dP[e];
        // Pass 2: dS = P (dP - D), dq = scale * sum dS k; keep the dropped weight and dS.
        zero(dqf.data(), dh);
        for (int64_t e = e0; e < e1; ++e) {
          const acc_t Pe = P[e - e0];
          const acc_t ds = Pe * (dP[e - e0] - D);
          acc_t pd = Pe;
          if (drop.active) pd *= drop.keep(e, h) ? keep_scale : acc_t(0);
          buf_p[e * groups + g] = pd;
          buf_ds[e * groups + g] = ds;
          axpy(dqf.data(), ds * sc, k + col[e] * qs + h * dh, dh);
        }
        store(dq + qb, dqf.data(), dh);
      }
    }
  });
}

// dk, dv of node j gathered over the rows of the transposed relation: entry e' of row
// (T[r] * N + j) lists a node i with j in N_r(i); rel_tperm[e'] is that forward entry.
template <typename T>
void bwd_dkdv_kernel(const T* dout, const T* q, int64_t qs, const int64_t* rowptr, const int64_t* col,
                     const int64_t* tperm, const typename AccType<T>::type* buf_p,
                     const typename AccType<T>::type* buf_ds, T* dk, T* dv, int64_t n,
                     int64_t heads, int64_t dh, double scale) {
  using acc_t = typename AccType<T>::type;
  const acc_t sc = static_cast<acc_t>(scale);
  const int64_t groups = heads / 4;
  const int64_t avg = n > 0 ? rowptr[4 * n] / (4 * n) : 1;
  at::parallel_for(0, n, node_grain(heads, dh, avg), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> dkf(dh), dvf(dh);
    for (int64_t j = begin; j < end; ++j) {
      for (int64_t h = 0; h < heads; ++h) {
        const int64_t row = transposed_relation(static_cast<int>(h & 3)) * n + j, g = h >> 2;
        zero(dkf.data(), dh);
        zero(dvf.data(), dh);
        for (int64_t et = rowptr[row]; et < rowptr[row + 1]; ++et) {
          const int64_t e = tperm[et];
          axpy(dvf.data(), buf_p[e * groups + g], dout + (col[et] * heads + h) * dh, dh);
          axpy(dkf.data(), buf_ds[e * groups + g] * sc, q + col[et] * qs + h * dh, dh);
        }
        store(dk + j * qs + h * dh, dkf.data(), dh);
        store(dv + j * qs + h * dh, dvf.data(), dh);
      }
    }
  });
}

// out (N, H, Dh) and lse (N, H) of attention over q, k, v (N, H, Dh) whose rows are qs
// elements apart (separate tensors or thirds of one packed qkv).
std::tuple<at::Tensor, at::Tensor> run_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           int64_t qs, const at::Tensor& rel_rowptr,
                                           const at::Tensor& rel_col, double scale, double dropout_p,
                                           int64_t seed) {
  const int64_t n = q.size(0), heads = q.size(1), dh = q.size(2);
  auto out = at::empty({n, heads, dh}, q.options());
  auto lse = at::empty({n, heads}, q.options().dtype(acc_dtype(q.scalar_type())));
  const Dropout drop = Dropout::make(dropout_p, seed, heads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "dag_attention_fwd", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    fwd_kernel<scalar_t>(q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(), qs,
                         rel_rowptr.data_ptr<int64_t>(), rel_col.data_ptr<int64_t>(),
                         out.data_ptr<scalar_t>(), lse.data_ptr<acc_t>(), n, heads, dh, scale,
                         drop, dropout_p);
  });
  return {out, lse};
}

// dq, dk, dv written into rows qs elements apart, like those of q, k, v.
void run_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             int64_t qs, const at::Tensor& lse, const at::Tensor& rel_rowptr, const at::Tensor& rel_col,
             const at::Tensor& rel_tperm, double scale, double dropout_p, int64_t seed, at::Tensor& dq,
             at::Tensor& dk, at::Tensor& dv) {
  const int64_t n = q.size(0), heads = q.size(1), dh = q.size(2);
  const int64_t groups = heads / 4;
  auto buf = at::empty({2, rel_col.numel() * groups}, lse.options());
  const Dropout drop = Dropout::make(dropout_p, seed, heads);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "dag_attention_bwd", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    acc_t* bp = buf.data_ptr<acc_t>();
    acc_t* bds = bp + rel_col.numel() * groups;
    bwd_dq_kernel<scalar_t>(dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                            v.data_ptr<scalar_t>(), qs, lse.data_ptr<acc_t>(),
                            rel_rowptr.data_ptr<int64_t>(), rel_col.data_ptr<int64_t>(),
                            dq.data_ptr<scalar_t>(), bp, bds, n, heads, dh, scale, drop, dropout_p);
    bwd_dkdv_kernel<scalar_t>(dout.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), qs,
                              rel_rowptr.data_ptr<int64_t>(), rel_col.data_ptr<int64_t>(),
                              rel_tperm.data_ptr<int64_t>(), bp, bds, dk.data_ptr<scalar_t>(),
                              dv.data_ptr<scalar_t>(), n, heads, dh, scale);
  });
}

std::tuple<at::Tensor, at::Tensor> dag_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rel_rowptr,
    const at::Tensor& rel_col, const at::Tensor& rel_tperm, double scale, double dropout_p,
    int64_t seed) {
  check_attention_fwd_inputs("nnformer_fast::dag_attention_fwd", q, k, v, rel_rowptr, rel_col, rel_tperm,
                             dropout_p);
  return run_fwd(q, k, v, q.size(1) * q.size(2), rel_rowptr, rel_col, scale, dropout_p, seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dag_attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& rel_rowptr,
    const at::Tensor& rel_col, const at::Tensor& rel_tperm, double scale, double dropout_p,
    int64_t seed) {
  check_attention_bwd_inputs("nnformer_fast::dag_attention_bwd", dout, q, k, v, out, lse, rel_rowptr,
                             rel_col, rel_tperm, dropout_p);
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  run_bwd(dout, q, k, v, q.size(1) * q.size(2), lse, rel_rowptr, rel_col, rel_tperm, scale, dropout_p,
          seed, dq, dk, dv);
  return {dq, dk, dv};
}

// The packed ops: q, k, v are the thirds qkv[:, 0], qkv[:, 1], qkv[:, 2] of the qkv Linear's
// output, read in place; the backward writes dq, dk, dv into one dqkv like qkv.
std::tuple<at::Tensor, at::Tensor> dag_attention_qkv_fwd_cpu(
    const at::Tensor& qkv, const at::Tensor& rel_rowptr, const at::Tensor& rel_col,
    const at::Tensor& rel_tperm, double scale, double dropout_p, int64_t seed) {
  const char* op = "nnformer_fast::dag_attention_qkv_fwd";
  check_attention_qkv_fwd_inputs(op, qkv, rel_rowptr, rel_col, rel_tperm, dropout_p);
  return run_fwd(qkv.select(1, 0), qkv.select(1, 1), qkv.select(1, 2), qkv.stride(0), rel_rowptr,
                 rel_col, scale, dropout_p, seed);
}

at::Tensor dag_attention_qkv_bwd_cpu(const at::Tensor& dout, const at::Tensor& qkv,
                                     const at::Tensor& out, const at::Tensor& lse,
                                     const at::Tensor& rel_rowptr, const at::Tensor& rel_col,
                                     const at::Tensor& rel_tperm, double scale, double dropout_p,
                                     int64_t seed) {
  const char* op = "nnformer_fast::dag_attention_qkv_bwd";
  check_attention_qkv_bwd_inputs(op, dout, qkv, out, lse, rel_rowptr, rel_col, rel_tperm,
                                 dropout_p);
  auto dqkv = at::empty_like(qkv);
  at::Tensor dq = dqkv.select(1, 0), dk = dqkv.select(1, 1), dv = dqkv.select(1, 2);
  run_bwd(dout, qkv.select(1, 0), qkv.select(1, 1), qkv.select(1, 2), qkv.stride(0), lse, rel_rowptr,
          rel_col, rel_tperm, scale, dropout_p, seed, dq, dk, dv);
  return dqkv;
}

}  // namespace
}  // namespace cpu
}  // namespace nnff

TORCH_LIBRARY_IMPL(nnformer_fast, CPU, m) {
  m.impl("dag_attention_fwd", &nnff::cpu::dag_attention_fwd_cpu);
  m.impl("dag_attention_bwd", &nnff::cpu::dag_attention_bwd_cpu);
  m.impl("dag_attention_qkv_fwd", &nnff::cpu::dag_attention_qkv_fwd_cpu);
  m.impl("dag_attention_qkv_bwd", &nnff::cpu::dag_attention_qkv_bwd_cpu);
}
