// CUDA bindings: tensors -> raw pointers + the current stream, then the framework-free
// launchers of csrc/cuda/. Built only when NNFF_CUDA is on (needs a CUDA-enabled torch).
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "checks.h"
#include "cuda/kernels.h"

namespace nnff {
namespace {

cuda::DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return cuda::DType::kFloat32;
    case at::kHalf: return cuda::DType::kFloat16;
    case at::kBFloat16: return cuda::DType::kBFloat16;
    case at::kDouble: return cuda::DType::kFloat64;
    default: TORCH_CHECK(false, "nnformer_fast: unsupported dtype ", t);
  }
}

void check_cuda(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA error: ", cudaGetErrorString(err));
}

// The attention kernels index (node, head) pairs in 32 bits.
void check_pairs(const char* op, int64_t n, int64_t heads) {
  TORCH_CHECK(n * heads < (int64_t{1} << 32), op, ": at most 2^32 (node, head) pairs on CUDA, got ",
              n, " nodes x ", heads, " heads");
}

// The launchers on q, k, v (and dq, dk, dv) whose node rows are `ld` elements apart: separate
// contiguous tensors (ld = H * Dh) or the thirds of one packed qkv (ld = 3 * H * Dh).
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_fwd(const char* op, const at::Tensor& q, const at::Tensor& k,
                                                       const at::Tensor& v, int64_t ld, const at::Tensor& rel_rowptr,
                                                       const at::Tensor& rel_col, double scale, double dropout_p,
                                                       int64_t seed) {
  const int64_t n = q.size(0), heads = q.size(1), dh = q.size(2);
  check_pairs(op, n, heads);
  auto out = at::empty({n, heads, dh}, q.options());
  auto lse = at::empty({n, heads}, q.options().dtype(acc_dtype(q.scalar_type())));
  check_cuda(cuda::dag_attention_fwd(to_dtype(q.scalar_type()), q.data_ptr(), k.data_ptr(),
                                     v.data_ptr(), ld, rel_rowptr.data_ptr<int64_t>(),
                                     rel_col.data_ptr<int64_t>(), out.data_ptr(), lse.data_ptr(),
                                     n, heads, dh, scale, dropout_p, seed,
                                     c10::cuda::getCurrentCUDAStream().stream()),
             op);
  return {out, lse, at::empty({0}, lse.options())};  // p: the backward recomputes the weights
}

void run_bwd(const char* op, const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
             const at::Tensor& v, int64_t ld, const at::Tensor& lse, const at::Tensor& rel_rowptr,
             const at::Tensor& rel_col, const at::Tensor& rel_tperm, double scale, double dropout_p,
             int64_t seed, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  const int64_t n = q.size(0), heads = q.size(1), dh = q.size(2);
  check_pairs(op, n, heads);
  auto ws = at::empty({2 * rel_col.numel() * (heads / 4)}, lse.options());
  check_cuda(cuda::dag_attention_bwd(to_dtype(q.scalar_type()), dout.data_ptr(), q.data_ptr(),
                                     k.data_ptr(), v.data_ptr(), ld, lse.data_ptr(),
                                     rel_rowptr.data_ptr<int64_t>(), rel_col.data_ptr<int64_t>(),
                                     rel_tperm.data_ptr<int64_t>(), rel_col.numel(),
                                     dq.data_ptr(), dk.data_ptr(), dv.data_ptr(), ws.data_ptr(),
                                     n, heads, dh, scale, dropout_p, seed,
                                     c10::cuda::getCurrentCUDAStream().stream()),
             op);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dag_attention_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rel_rowptr,
    const at::Tensor& rel_col, const at::Tensor& rel_tperm, double scale, double dropout_p,
    int64_t seed) {
  const char* op = "nnformer_fast::dag_attention_fwd";
  TORCH_CHECK(q.is_cuda(), op, ": q must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(q.device());
  check_attention_fwd_inputs(op, q, k, v, rel_rowptr, rel_col, rel_tperm, dropout_p);
  return run_fwd(op, q, k, v, q.stride(0), rel_rowptr, rel_col, scale, dropout_p, seed);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dag_attention_bwd_cuda(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& /*p: recomputed*/,
    const at::Tensor& rel_rowptr, const at::Tensor& rel_col, const at::Tensor& rel_tperm, double scale,
    double dropout_p, int64_t seed) {
  const char* op = "nnformer_fast::dag_attention_bwd";
  TORCH_CHECK(q.is_cuda(), op, ": q must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(q.device());
  check_attention_bwd_inputs(op, dout, q, k, v, out, lse, rel_rowptr, rel_col, rel_tperm,
                             dropout_p);
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  run_bwd(op, dout, q, k, v, q.stride(0), lse, rel_rowptr, rel_col, rel_tperm, scale, dropout_p,
          seed, dq, dk, dv);
  return {dq, dk, dv};
}

// The packed ops: q, k, v are the thirds qkv[:, 0], qkv[:, 1], qkv[:, 2] of the qkv Linear's
// output, read in place; the backward writes dq, dk, dv into one dqkv like qkv.
std::tuple<at::Tensor, at::Tensor, at::Tensor> dag_attention_qkv_fwd_cuda(
    const at::Tensor& qkv, const at::Tensor& rel_rowptr, const at::Tensor& rel_col,
    const at::Tensor& rel_tperm, double scale, double dropout_p, int64_t seed) {
  const char* op = "nnformer_fast::dag_attention_qkv_fwd";
  TORCH_CHECK(qkv.is_cuda(), op, ": qkv must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(qkv.device());
  check_attention_qkv_fwd_inputs(op, qkv, rel_rowptr, rel_col, rel_tperm, dropout_p);
  return run_fwd(op, qkv.select(1, 0), qkv.select(1, 1), qkv.select(1, 2), qkv.stride(0),
                 rel_rowptr, rel_col, scale, dropout_p, seed);
}

at::Tensor dag_attention_qkv_bwd_cuda(const at::Tensor& dout, const at::Tensor& qkv,
                                      const at::Tensor& out, const at::Tensor& lse,
                                      const at::Tensor& /*p: recomputed*/, const at::Tensor& rel_rowptr,
                                      const at::Tensor& rel_col, const at::Tensor& rel_tperm, double scale,
                                      double dropout_p, int64_t seed) {
  const char* op = "nnformer_fast::dag_attention_qkv_bwd";
  TORCH_CHECK(qkv.is_cuda(), op, ": qkv must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(qkv.device());
  check_attention_qkv_bwd_inputs(op, dout, qkv, out, lse, rel_rowptr, rel_col, rel_tperm,
                                 dropout_p);
  auto dqkv = at::empty_like(qkv);
  at::Tensor dq = dqkv.select(1, 0), dk = dqkv.select(1, 1), dv = dqkv.select(1, 2);
  run_bwd(op, dout, qkv.select(1, 0), qkv.select(1, 1), qkv.select(1, 2), qkv.stride(0), lse,
          rel_rowptr, rel_col, rel_tperm, scale, dropout_p, seed, dq, dk, dv);
  return dqkv;
}

// The CUDA kernels do not fold the fc1 / gcn biases in: nnformer_fast.ops adds them first.
void check_no_bias(const char* op, const c10::optional<at::Tensor>& bias_h,
                   const c10::optional<at::Tensor>& bias_g) {
  TORCH_CHECK(!bias_h.has_value() && !bias_g.has_value(), op,
              ": the CUDA kernels take no bias_h / bias_g (add them to h and g first)");
}

at::Tensor bigin_fwd_cuda(const at::Tensor& h, const at::Tensor& g, const at::Tensor& adj_rowptr,
                          const at::Tensor& adj_col, const at::Tensor& adjt_rowptr,
                          const at::Tensor& adjt_col, c10::string_view act,
                          const c10::optional<at::Tensor>& bias_h,
                          const c10::optional<at::Tensor>& bias_g) {
  const char* op = "nnformer_fast::bigin_fwd";
  TORCH_CHECK(h.is_cuda(), op, ": h must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(h.device());
  check_no_bias(op, bias_h, bias_g);
  check_bigin_inputs(op, h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, bias_h, bias_g);
  const Act a = parse_act(std::string(act), op);
  auto y = at::empty_like(h);
  check_cuda(cuda::bigin_fwd(to_dtype(h.scalar_type()), h.data_ptr(), g.data_ptr(),
                             adj_rowptr.data_ptr<int64_t>(), adj_col.data_ptr<int64_t>(),
                             adjt_rowptr.data_ptr<int64_t>(), adjt_col.data_ptr<int64_t>(),
                             y.data_ptr(), h.size(0), h.size(1), static_cast<int>(a),
                             c10::cuda::getCurrentCUDAStream().stream()),
             op);
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bigin_bwd_cuda(
    const at::Tensor& dy, const c10::optional<at::Tensor>& h_opt, const c10::optional<at::Tensor>& g_opt,
    const at::Tensor& adj_rowptr, const at::Tensor& adj_col, const at::Tensor& adjt_rowptr,
    const at::Tensor& adjt_col, c10::string_view act, const c10::optional<at::Tensor>& bias_h,
    const c10::optional<at::Tensor>& bias_g, const c10::optional<at::Tensor>& out) {
  const char* op = "nnformer_fast::bigin_bwd";
  TORCH_CHECK(h_opt.has_value() && g_opt.has_value() && !out.has_value(), op,
              ": the CUDA backward recomputes the pre-activation: pass h and g, not out");
  const at::Tensor& h = *h_opt;
  const at::Tensor& g = *g_opt;
  TORCH_CHECK(h.is_cuda(), op, ": h must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(h.device());
  check_no_bias(op, bias_h, bias_g);
  check_bigin_inputs(op, h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, bias_h, bias_g);
  check_float(dy, op, "dy", 2, h);
  check_same_shape(h, dy, op, "h", "dy");
  const Act a = parse_act(std::string(act), op);
  auto dh = at::empty_like(h), dg = at::empty_like(g);
  check_cuda(cuda::bigin_bwd(to_dtype(h.scalar_type()), dy.data_ptr(), h.data_ptr(), g.data_ptr(),
                             adj_rowptr.data_ptr<int64_t>(), adj_col.data_ptr<int64_t>(),
                             adjt_rowptr.data_ptr<int64_t>(), adjt_col.data_ptr<int64_t>(),
                             dh.data_ptr(), dg.data_ptr(), h.size(0), h.size(1),
                             static_cast<int>(a), c10::cuda::getCurrentCUDAStream().stream()),
             op);
  return {dh, dg, bias_grad_like(bias_h, h), bias_grad_like(bias_g, h)};
}

at::Tensor dropout_fwd_cuda(const at::Tensor& x, double p, int64_t seed) {
  const char* op = "nnformer_fast::dropout_fwd";
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  check_dropout_inputs(op, x, p);
  auto y = at::empty_like(x);
  check_cuda(cuda::dropout_fwd(to_dtype(x.scalar_type()), x.data_ptr(), y.data_ptr(), x.numel(), p,
                               seed, c10::cuda::getCurrentCUDAStream().stream()),
             op);
  return y;
}

}  // namespace
}  // namespace nnff

TORCH_LIBRARY_IMPL(nnformer_fast, CUDA, m) {
  m.impl("dag_attention_fwd", &nnff::dag_attention_fwd_cuda);
  m.impl("dag_attention_bwd", &nnff::dag_attention_bwd_cuda);
  m.impl("dag_attention_qkv_fwd", &nnff::dag_attention_qkv_fwd_cuda);
  m.impl("dag_attention_qkv_bwd", &nnff::dag_attention_qkv_bwd_cuda);
  m.impl("bigin_fwd", &nnff::bigin_fwd_cuda);
  m.impl("bigin_bwd", &nnff::bigin_bwd_cuda);
  m.impl("dropout_fwd", &nnff::dropout_fwd_cuda);
}
