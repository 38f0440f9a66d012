// Residual add fused with LayerNorm on CPU (docs/DESIGN.md: add_layer_norm), the op bindings:
// s = x + y * scale and out = layer_norm(s) in the output dtype, in one pass over each row;
// the backward pass in one more. They check the inputs, allocate the outputs and split the rows
// on torch's intra-op threads; the kernels of the CPU capability chosen at load time
// (dispatch.h, add_layer_norm_kernels.cpp) run each range. The gradients of weight, bias and
// scale are summed over fixed blocks of rows and then in block order (row_blocks.h).
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "dispatch.h"
#include "row_blocks.h"

namespace nnff {
namespace cpu {
namespace {

constexpr const char* kFwd = "nnformer_fast::add_layer_norm_fwd";
constexpr const char* kBwd = "nnformer_fast::add_layer_norm_bwd";

// A contiguous (N, D) float tensor on the CPU in dtype `want`.
void check_rows(const at::Tensor& t, const char* op, const char* name, const at::Tensor& like, at::ScalarType want) {
  TORCH_CHECK(t.defined() && t.device().is_cpu() && t.dim() == 2 && t.sizes() == like.sizes() && t.is_contiguous(),
              op, ": ", name, " must be a contiguous (N, D) CPU tensor like x ", like.sizes(), ", got ",
              t.defined() ? t.sizes() : at::IntArrayRef{});
  TORCH_CHECK(t.scalar_type() == want, op, ": ", name, " must be ", want, ", got ", t.scalar_type());
}

// The low dtype T of a call (y's, else the output's), its accumulation type, and the checks
// that x and the output are each T or that type.
struct Dtypes {
  at::ScalarType low, acc;
};
Dtypes call_dtypes(const char* op, at::ScalarType x, const c10::optional<at::Tensor>& y, at::ScalarType out) {
  const at::ScalarType low = y ? y->scalar_type() : out;
  TORCH_CHECK(is_supported_float(low), op, ": ", y ? "y" : "out_dtype", " must be float16/bfloat16/float32/float64, got ",
              low);
  const at::ScalarType acc = acc_dtype(low);
  TORCH_CHECK(x == low || x == acc, op, ": x must be ", low, " or ", acc, ", got ", x);
  TORCH_CHECK(out == low || out == acc, op, ": the output dtype must be ", low, " or ", acc, ", got ", out);
  return {low, acc};
}

AddNormArgs norm_args(const Dtypes& t, at::ScalarType x, at::ScalarType out, const at::Tensor& rows, double eps) {
  AddNormArgs a{};
  a.low = kernel_dtype(t.low);
  a.x_low = x != t.acc;
  a.out_low = out != t.acc;
  a.n = rows.size(0);
  a.d = rows.size(1);
  a.eps = eps;
  return a;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_fwd_cpu(
    const at::Tensor& x, const c10::optional<at::Tensor>& y, const c10::optional<at::Tensor>& scale,
    const at::Tensor& weight, const at::Tensor& bias, double eps, at::ScalarType out_dtype) {
  TORCH_CHECK(x.defined() && x.dim() == 2, kFwd, ": x must be (N, D), got ", x.defined() ? x.sizes() : at::IntArrayRef{});
  const Dtypes t = call_dtypes(kFwd, x.scalar_type(), y, out_dtype);
  check_rows(x, kFwd, "x", x, x.scalar_type());
  TORCH_CHECK(y.has_value() == scale.has_value(), kFwd, ": pass y and scale together");
  const int64_t d = x.size(1);
  if (y) {
    check_rows(*y, kFwd, "y", x, t.low);
    check_vector(*scale, kFwd, "scale", d, t.acc, at::kCPU);
  }
  check_vector(weight, kFwd, "weight", d, t.acc, at::kCPU);
  check_vector(bias, kFwd, "bias", d, t.acc, at::kCPU);
  TORCH_CHECK(eps >= 0.0, kFwd, ": eps must be >= 0, got ", eps);
  auto s = y ? at::empty_like(x, x.options().dtype(t.acc)) : at::empty({0}, x.options().dtype(t.acc));
  auto out = at::empty_like(x, x.options().dtype(out_dtype));
  auto mean = at::empty({x.size(0)}, x.options().dtype(t.acc)), rstd = at::empty_like(mean);
  AddNormArgs a = norm_args(t, x.scalar_type(), out_dtype, x, eps);
  a.x = x.data_ptr();
  a.y = y ? y->data_ptr() : nullptr;
  a.scale = scale ? scale->data_ptr() : nullptr;
  a.weight = weight.data_ptr();
  a.bias = bias.data_ptr();
  a.s = y ? s.data_ptr() : nullptr;
  a.out = out.data_ptr();
  a.mean = mean.data_ptr();
  a.rstd = rstd.data_ptr();
  const CpuKernels& kernels = cpu_kernels();
  at::parallel_for(0, a.n, row_grain(d), [&](int64_t begin, int64_t end) { kernels.add_norm_fwd(a, begin, end); });
  return {s, out, mean, rstd};
}

// The backward into dx: a fresh buffer, or ds itself (add_layer_norm_bwd_donated). Each element
// of ds is read before its dx is written.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_bwd_into(
    at::Tensor dx, const c10::optional<at::Tensor>& ds, const at::Tensor& dout, const at::Tensor& s,
    const c10::optional<at::Tensor>& y, const c10::optional<at::Tensor>& scale, const at::Tensor& weight,
    const at::Tensor& mean, const at::Tensor& rstd, at::ScalarType x_dtype) {
  TORCH_CHECK(s.defined() && s.dim() == 2, kBwd, ": s must be (N, D), got ", s.defined() ? s.sizes() : at::IntArrayRef{});
  TORCH_CHECK(dout.defined(), kBwd, ": dout is undefined");
  const Dtypes t = call_dtypes(kBwd, x_dtype, y, dout.scalar_type());
  check_rows(s, kBwd, "s", s, y ? t.acc : x_dtype);  // without y, s is x
  check_rows(dout, kBwd, "dout", s, dout.scalar_type());
  if (ds) check_rows(*ds, kBwd, "ds", s, t.acc);
  TORCH_CHECK(y.has_value() == scale.has_value(), kBwd, ": pass y and scale together");
  const int64_t n = s.size(0), d = s.size(1);
  if (y) {
    check_rows(*y, kBwd, "y", s, t.low);
    check_vector(*scale, kBwd, "scale", d, t.acc, at::kCPU);
  }
  check_vector(weight, kBwd, "weight", d, t.acc, at::kCPU);
  check_vector(mean, kBwd, "mean", n, t.acc, at::kCPU);
  check_vector(rstd, kBwd, "rstd", n, t.acc, at::kCPU);
  if (!dx.defined()) dx = at::empty_like(s, s.options().dtype(x_dtype));
  auto dy = y ? at::empty_like(*y) : at::empty({0}, s.options().dtype(t.low));
  AddNormArgs a = norm_args(t, x_dtype, dout.scalar_type(), s, 0.0);
  a.block_rows = sum_block_rows(n);
  const int64_t blocks = (n + a.block_rows - 1) / a.block_rows;
  auto partial = at::empty({blocks, 3, d}, s.options().dtype(t.acc));  // d weight, d bias, d scale
  a.ds = ds ? ds->data_ptr() : nullptr;
  a.dout = dout.data_ptr();
  a.s = s.data_ptr();
  a.y = y ? y->data_ptr() : nullptr;
  a.scale = scale ? scale->data_ptr() : nullptr;
  a.weight = weight.data_ptr();
  a.mean = mean.data_ptr();
  a.rstd = rstd.data_ptr();
  a.dx = dx.data_ptr();
  a.dy = y ? dy.data_ptr() : nullptr;
  a.partial = partial.data_ptr();
  const CpuKernels& kernels = cpu_kernels();
  at::parallel_for(0, blocks, std::max<int64_t>(1, row_grain(d) / a.block_rows),
                   [&](int64_t begin, int64_t end) { kernels.add_norm_bwd(a, begin, end); });
  const at::Tensor total = sum_blocks(partial);
  auto dscale = y ? total[2].clone() : at::empty({0}, s.options().dtype(t.acc));
  return {dx, dy, dscale, total[0].clone(), total[1].clone()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_bwd_cpu(
    const c10::optional<at::Tensor>& ds, const at::Tensor& dout, const at::Tensor& s,
    const c10::optional<at::Tensor>& y, const c10::optional<at::Tensor>& scale, const at::Tensor& weight,
    const at::Tensor& mean, const at::Tensor& rstd, at::ScalarType x_dtype) {
  return add_layer_norm_bwd_into(at::Tensor(), ds, dout, s, y, scale, weight, mean, rstd, x_dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_bwd_donated_cpu(
    at::Tensor& ds, const at::Tensor& dout, const at::Tensor& s, const c10::optional<at::Tensor>& y,
    const c10::optional<at::Tensor>& scale, const at::Tensor& weight, const at::Tensor& mean,
    const at::Tensor& rstd, at::ScalarType x_dtype) {
  TORCH_CHECK(ds.scalar_type() == x_dtype, "nnformer_fast::add_layer_norm_bwd_donated: ds (", ds.scalar_type(),
              ") must have x's dtype, ", x_dtype, ", to take dx");
  auto [dx, dy, dscale, dweight, dbias] = add_layer_norm_bwd_into(ds, ds, dout, s, y, scale, weight, mean, rstd, x_dtype);
  return {dy, dscale, dweight, dbias};
}

}  // namespace
}  // namespace cpu
}  // namespace nnff

TORCH_LIBRARY_IMPL(nnformer_fast, CPU, m) {
  m.impl("add_layer_norm_fwd", &nnff::cpu::add_layer_norm_fwd_cpu);
  m.impl("add_layer_norm_bwd", &nnff::cpu::add_layer_norm_bwd_cpu);
  m.impl("add_layer_norm_bwd_donated", &nnff::cpu::add_layer_norm_bwd_donated_cpu);
}
