// DAG-masked attention on CPU (docs/DESIGN.md: dag_attention): the op bindings. They check the inputs, allocate the
// outputs and split the nodes on torch's intra-op threads; the kernels of the CPU capability
// chosen at load time (dispatch.h, attention_kernels.cpp) run each range of nodes.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <tuple>

#include "../checks.h"
#include "dispatch.h"

namespace nnff {
namespace cpu {
namespace {

// Nodes per parallel task: enough work to amortise a task for tiny graphs.
int64_t node_grain(int64_t heads, int64_t dh, int64_t avg_row) {
  const int64_t work = std::max<int64_t>(1, heads * dh * std::max<int64_t>(1, avg_row));
  return std::max<int64_t>(1, (1 << 15) / work);
}

// The kernels' arguments for q, k, v (N, H, Dh) with rows qs elements apart.
AttentionArgs attention_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t qs,
                             const at::Tensor& rel_rowptr, const at::Tensor& rel_col, double scale,
                             double dropout_p, int64_t seed) {
  AttentionArgs a{};
  a.dtype = kernel_dtype(q.scalar_type());
  a.q = q.data_ptr();
  a.k = k.data_ptr();
  a.v = v.data_ptr();
  a.qs = qs;
  a.rowptr = rel_rowptr.data_ptr<int64_t>();
  a.col = rel_col.data_ptr<int64_t>();
  a.n = q.size(0);
  a.heads = q.size(1);
  a.dh = q.size(2);
  a.scale = scale;
  a.dropout_p = dropout_p;
  a.drop = Dropout::make(dropout_p, seed, a.heads);
  return a;
}

// Runs kernel over the nodes in parallel tasks.
void over_nodes(const AttentionArgs& a, int64_t dh_work, void (*kernel)(const AttentionArgs&, int64_t, int64_t)) {
  const int64_t avg = a.n > 0 ? a.rowptr[4 * a.n] / (4 * a.n) : 1;
  at::parallel_for(0, a.n, node_grain(a.heads, dh_work, avg),
                   [&](int64_t begin, int64_t end) { kernel(a, begin, end); });
}

// out (N, H, Dh), lse (N, H) and the weights p (entries * H / 4) of attention over q, k, v
// (N, H, Dh) whose rows are qs elements apart (separate tensors or thirds of one packed qkv).
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_fwd(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                       int64_t qs, const at::Tensor& rel_rowptr,
                                                       const at::Tensor& rel_col, double scale, double dropout_p,
                                                       int64_t seed) {
  const int64_t n = q.size(0), heads = q.size(1), dh = q.size(2);
  auto out = at::empty({n, heads, dh}, q.options());
  auto lse = at::empty({n, heads}, q.options().dtype(acc_dtype(q.scalar_type())));
  auto p = at::empty({rel_col.numel() * (heads / 4)}, lse.options());
  const CpuKernels& kernels = cpu_kernels();
  AttentionArgs a = attention_args(q, k, v, qs, rel_rowptr, rel_col, scale, dropout_p, seed);
  a.out = out.data_ptr();
  a.lse = lse.data_ptr();
  a.p = p.data_ptr();
  over_nodes(a, dh, kernels.attention_fwd);
  return {out, lse, p};
}

// p: the forward's weights, one per relation entry and head group, in lse's dtype.
void check_weights(const char* op, const at::Tensor& p, const at::Tensor& lse, const at::Tensor& rel_col) {
  check_vector(p, op, "p", rel_col.numel() * (lse.size(1) / 4), lse.scalar_type(), lse.device());
}

// dq, dk, dv written into rows qs elements apart, like those of q, k, v.
void run_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
             int64_t qs, const at::Tensor& p, const at::Tensor& rel_rowptr, const at::Tensor& rel_col,
             const at::Tensor& rel_tperm, double scale, double dropout_p, int64_t seed, at::Tensor& dq,
             at::Tensor& dk, at::Tensor& dv) {
  const int64_t dh = q.size(2);
  const CpuKernels& kernels = cpu_kernels();
  auto buf_ds = at::empty_like(p);
  AttentionArgs a = attention_args(q, k, v, qs, rel_rowptr, rel_col, scale, dropout_p, seed);
  a.dout = dout.data_ptr();
  a.p = const_cast<void*>(p.const_data_ptr());
  a.tperm = rel_tperm.data_ptr<int64_t>();
  a.dq = dq.data_ptr();
  a.dk = dk.data_ptr();
  a.dv = dv.data_ptr();
  a.buf_ds = buf_ds.data_ptr();
  over_nodes(a, 2 * dh, kernels.attention_bwd_dq);
  over_nodes(a, dh, kernels.attention_bwd_dkdv);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dag_attention_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rel_rowptr,
    const at::Tensor& rel_col, const at::Tensor& rel_tperm, double scale, double dropout_p,
    int64_t seed) {
  check_attention_fwd_inputs("nnformer_fast::dag_attention_fwd", q, k, v, rel_rowptr, rel_col, rel_tperm,
                             dropout_p);
  return run_fwd(q, k, v, q.size(1) * q.size(2), rel_rowptr, rel_col, scale, dropout_p, seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dag_attention_bwd_cpu(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& p, const at::Tensor& rel_rowptr,
    const at::Tensor& rel_col, const at::Tensor& rel_tperm, double scale, double dropout_p,
    int64_t seed) {
  const char* op = "nnformer_fast::dag_attention_bwd";
  check_attention_bwd_inputs(op, dout, q, k, v, out, lse, rel_rowptr, rel_col, rel_tperm, dropout_p);
  check_weights(op, p, lse, rel_col);
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  run_bwd(dout, q, k, v, q.size(1) * q.size(2), p, rel_rowptr, rel_col, rel_tperm, scale, dropout_p,
          seed, dq, dk, dv);
  return {dq, dk, dv};
}

// The packed ops: q, k, v are the thirds qkv[:, 0], qkv[:, 1], qkv[:, 2] of the qkv Linear's
// output, read in place; the backward writes dq, dk, dv into one dqkv like qkv.
std::tuple<at::Tensor, at::Tensor, at::Tensor> dag_attention_qkv_fwd_cpu(
    const at::Tensor& qkv, const at::Tensor& rel_rowptr, const at::Tensor& rel_col,
    const at::Tensor& rel_tperm, double scale, double dropout_p, int64_t seed) {
  const char* op = "nnformer_fast::dag_attention_qkv_fwd";
  check_attention_qkv_fwd_inputs(op, qkv, rel_rowptr, rel_col, rel_tperm, dropout_p);
  return run_fwd(qkv.select(1, 0), qkv.select(1, 1), qkv.select(1, 2), qkv.stride(0), rel_rowptr,
                 rel_col, scale, dropout_p, seed);
}

at::Tensor dag_attention_qkv_bwd_cpu(const at::Tensor& dout, const at::Tensor& qkv,
                                     const at::Tensor& out, const at::Tensor& lse, const at::Tensor& p,
                                     const at::Tensor& rel_rowptr, const at::Tensor& rel_col,
                                     const at::Tensor& rel_tperm, double scale, double dropout_p,
                                     int64_t seed) {
  const char* op = "nnformer_fast::dag_attention_qkv_bwd";
  check_attention_qkv_bwd_inputs(op, dout, qkv, out, lse, rel_rowptr, rel_col, rel_tperm,
                                 dropout_p);
  check_weights(op, p, lse, rel_col);
  auto dqkv = at::empty_like(qkv);
  at::Tensor dq = dqkv.select(1, 0), dk = dqkv.select(1, 1), dv = dqkv.select(1, 2);
  run_bwd(dout, qkv.select(1, 0), qkv.select(1, 1), qkv.select(1, 2), qkv.stride(0), p, rel_rowptr,
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
