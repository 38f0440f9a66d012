// Fused bidirectional GIN aggregation on CPU (docs/DESIGN.md: bigin), the op bindings: y = act(h + [A·g1,
// Aᵀ·g2]) with the optional biases of fc1 and gcn folded in. They check the inputs, allocate
// the outputs and split the rows on torch's intra-op threads; the kernels of the CPU capability
// chosen at load time (dispatch.h, bigin_kernels.cpp) run each range. The bias gradients are
// summed over fixed blocks of rows and then in block order, so results are deterministic
// whatever the thread count. The backward pass recomputes the pre-activation, or for relu and
// leaky_relu reads its sign off the forward output.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "dispatch.h"
#include "row_blocks.h"

namespace nnff {
namespace cpu {
namespace {

// The kernels' arguments over the graph's CSRs, for (N, M) rows like `like`.
BiginArgs bigin_args(const at::Tensor& like, const at::Tensor& adj_rowptr, const at::Tensor& adj_col,
                     const at::Tensor& adjt_rowptr, const at::Tensor& adjt_col, Act act,
                     const c10::optional<at::Tensor>& bias_h, const c10::optional<at::Tensor>& bias_g) {
  BiginArgs a{};
  a.dtype = kernel_dtype(like.scalar_type());
  a.rp = adj_rowptr.data_ptr<int64_t>();
  a.cl = adj_col.data_ptr<int64_t>();
  a.rpt = adjt_rowptr.data_ptr<int64_t>();
  a.clt = adjt_col.data_ptr<int64_t>();
  a.bias_h = bias_h ? bias_h->data_ptr() : nullptr;
  a.bias_g = bias_g ? bias_g->data_ptr() : nullptr;
  a.n = like.size(0);
  a.m = like.size(1);
  a.act = act;
  return a;
}

at::Tensor bigin_fwd_cpu(const at::Tensor& h, const at::Tensor& g, const at::Tensor& adj_rowptr,
                         const at::Tensor& adj_col, const at::Tensor& adjt_rowptr,
                         const at::Tensor& adjt_col, c10::string_view act,
                         const c10::optional<at::Tensor>& bias_h,
                         const c10::optional<at::Tensor>& bias_g) {
  const char* op = "nnformer_fast::bigin_fwd";
  check_bigin_inputs(op, h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, bias_h, bias_g);
  const CpuKernels& kernels = cpu_kernels();
  auto y = at::empty_like(h);
  BiginArgs a = bigin_args(h, adj_rowptr, adj_col, adjt_rowptr, adjt_col, parse_act(std::string(act), op),
                           bias_h, bias_g);
  a.h = h.data_ptr();
  a.g = g.data_ptr();
  a.y = y.data_ptr();
  at::parallel_for(0, a.n, row_grain(a.m), [&](int64_t begin, int64_t end) { kernels.bigin_fwd(a, begin, end); });
  return y;
}

// The backward into dh: a fresh (N, M) buffer, or dy itself (bigin_bwd_donated). Each element
// of dy is read before its dh is written, and the second pass reads only dh.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bigin_bwd_into(
    at::Tensor dh, const at::Tensor& dy, const c10::optional<at::Tensor>& h, const c10::optional<at::Tensor>& g,
    const at::Tensor& adj_rowptr, const at::Tensor& adj_col, const at::Tensor& adjt_rowptr,
    const at::Tensor& adjt_col, c10::string_view act, const c10::optional<at::Tensor>& bias_h,
    const c10::optional<at::Tensor>& bias_g, const c10::optional<at::Tensor>& out) {
  const char* op = "nnformer_fast::bigin_bwd";
  const Act a = parse_act(std::string(act), op);
  check_float(dy, op, "dy", 2, dy);
  if (out.has_value()) {
    TORCH_CHECK(a == Act::kRelu || a == Act::kLeakyRelu, op,
                ": out stands in for the pre-activation only for relu and leaky_relu");
    check_float(*out, op, "out", 2, dy);
    check_same_shape(dy, *out, op, "dy", "out");
    check_bigin_graph(op, dy, adj_rowptr, adj_col, adjt_rowptr, adjt_col, bias_h, bias_g);
  } else {
    TORCH_CHECK(h.has_value() && g.has_value(), op, ": pass h and g (or out, for relu and leaky_relu)");
    check_bigin_inputs(op, *h, *g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, bias_h, bias_g);
    check_same_shape(*h, dy, op, "h", "dy");
    check_float(dy, op, "dy", 2, *h);
  }
  const CpuKernels& kernels = cpu_kernels();
  if (!dh.defined()) dh = at::empty_like(dy);
  auto dg = at::empty_like(dy);
  auto dbias_h = bias_grad_like(bias_h, dy), dbias_g = bias_grad_like(bias_g, dy);
  BiginArgs b = bigin_args(dy, adj_rowptr, adj_col, adjt_rowptr, adjt_col, a, bias_h, bias_g);
  const int64_t n = b.n, m = b.m;
  b.block_rows = sum_block_rows(n);
  const int64_t blocks = (n + b.block_rows - 1) / b.block_rows;
  // per block: the partial sums of d bias_h (M) and d bias_g (M)
  auto partial = at::empty({bias_h || bias_g ? blocks : 0, 2, m}, dy.options().dtype(acc_dtype(dy.scalar_type())));
  b.dy = dy.data_ptr();
  b.h = h ? h->data_ptr() : nullptr;
  b.g = g ? g->data_ptr() : nullptr;
  b.out = out ? out->data_ptr() : nullptr;
  b.dh = dh.data_ptr();
  b.dg = dg.data_ptr();
  b.partial = partial.numel() > 0 ? partial.data_ptr() : nullptr;
  at::parallel_for(0, blocks, std::max<int64_t>(1, row_grain(m) / b.block_rows),
                   [&](int64_t begin, int64_t end) { kernels.bigin_bwd_dz(b, begin, end); });
  if (b.partial != nullptr) {
    const at::Tensor total = sum_blocks(partial);
    if (bias_h) dbias_h.copy_(total[0]);
    if (bias_g) dbias_g.copy_(total[1]);
  }
  at::parallel_for(0, n, row_grain(m), [&](int64_t begin, int64_t end) { kernels.bigin_bwd_dg(b, begin, end); });
  return {dh, dg, dbias_h, dbias_g};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bigin_bwd_cpu(
    const at::Tensor& dy, const c10::optional<at::Tensor>& h, const c10::optional<at::Tensor>& g,
    const at::Tensor& adj_rowptr, const at::Tensor& adj_col, const at::Tensor& adjt_rowptr,
    const at::Tensor& adjt_col, c10::string_view act, const c10::optional<at::Tensor>& bias_h,
    const c10::optional<at::Tensor>& bias_g, const c10::optional<at::Tensor>& out) {
  return bigin_bwd_into(at::Tensor(), dy, h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, act, bias_h, bias_g, out);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bigin_bwd_donated_cpu(
    at::Tensor& dy, const c10::optional<at::Tensor>& h, const c10::optional<at::Tensor>& g,
    const at::Tensor& adj_rowptr, const at::Tensor& adj_col, const at::Tensor& adjt_rowptr,
    const at::Tensor& adjt_col, c10::string_view act, const c10::optional<at::Tensor>& bias_h,
    const c10::optional<at::Tensor>& bias_g, const c10::optional<at::Tensor>& out) {
  auto [dh, dg, dbias_h, dbias_g] =
      bigin_bwd_into(dy, dy, h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, act, bias_h, bias_g, out);
  return {dg, dbias_h, dbias_g};
}

}  // namespace
}  // namespace cpu
}  // namespace nnff

TORCH_LIBRARY_IMPL(nnformer_fast, CPU, m) {
  m.impl("bigin_fwd", &nnff::cpu::bigin_fwd_cpu);
  m.impl("bigin_bwd", &nnff::cpu::bigin_bwd_cpu);
  m.impl("bigin_bwd_donated", &nnff::cpu::bigin_bwd_donated_cpu);
}
