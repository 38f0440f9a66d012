// Autograd of the forward ops, registered at the Autograd dispatch key for every device: each
// forward op runs its kernel below autograd and records a node whose backward calls the
// matching backward op. In C++ rather than through torch.library.register_autograd, whose
// Python path (argument filling, an autograd.Function, a redispatch) made a forward+backward on
// a tiny graph 74 / 67 / 82 us (attention / bigin / add_layer_norm) against 41 / 30 / 50 us here.
// torch.compile traces these kernels as it traces any op's: the Fake kernels (ops/native.py)
// stand in for the device ones.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "autograd.h"
#include "checks.h"

namespace nnff {

std::atomic<int64_t>& donated_grads() {
  static std::atomic<int64_t> count{0};
  return count;
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = c10::optional<at::Tensor>;

// The typed handle of nnformer_fast::<name>, looked up once per call site.
template <typename Sig> c10::TypedOperatorHandle<Sig> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// Calls an op on the kernels below autograd (the device's or, while tracing, the Fake one).
template <typename Sig, typename... Args> auto below_autograd(const c10::TypedOperatorHandle<Sig>& op, Args&&... args) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return op.call(std::forward<Args>(args)...);
}

OptTensor present(const at::Tensor& t) { return t.defined() ? OptTensor(t) : c10::nullopt; }
at::Tensor contiguous(const at::Tensor& t) { return t.defined() ? t.contiguous() : t; }

// Whether a backward writes its result over `grad`, an incoming gradient (the "_donated" ops;
// counted in donated_grads): a contiguous CPU tensor of `dtype` that owns its whole storage
// and that nothing else holds. torch's CppNode passes backward a copy of the engine's gradient
// list, so that list and this call's hold the only two references; a hook that keeps the
// gradient, a tensor the caller passed to backward(), a view, or create_graph (the gradient
// then belongs to a graph) leave it intact, and so does a torch.compile trace (fake and
// functional tensors), whose graphs call the plain ops. Saves the first touch of a fresh
// buffer: about 1.5 % of a demo-size bf16 step (docs/DESIGN.md: Kernels).
bool donate(const at::Tensor& grad, at::ScalarType dtype) {
  constexpr c10::DispatchKeySet kTraced({c10::DispatchKey::Python, c10::DispatchKey::Functionalize,
                                         c10::DispatchKey::PythonTLSSnapshot});
  const bool ok = grad.defined() && grad.device().is_cpu() && grad.scalar_type() == dtype && grad.is_contiguous() &&
                  !at::GradMode::is_enabled() && !grad.key_set().has_any(kTraced) && grad.use_count() == 2 &&
                  grad.storage().use_count() == 1 && grad.storage_offset() == 0 &&
                  grad.storage().nbytes() == grad.nbytes();
  if (ok) ++donated_grads();
  return ok;
}

// The backward ops have no derivative of their own. With create_graph=True the gradients they
// return hang off this node, which raises when a second backward reaches it (a gradient
// penalty) instead of returning zero second-order terms. `sources` (what the backward op read)
// are only its inputs: they make the returned gradients require grad where they should.
struct NoDoubleBackward : torch::autograd::Function<NoDoubleBackward> {
  static variable_list forward(AutogradContext* ctx, const std::string& op, const variable_list& grads,
                               at::TensorList sources) {
    ctx->saved_data["op"] = op;
    return grads;
  }
  static variable_list backward(AutogradContext* ctx, variable_list) {
    TORCH_CHECK(false, "nnformer_fast: the native ", ctx->saved_data["op"].toStringRef(),
                " has no second derivative (double backward, e.g. through torch.autograd.grad(..., "
                "create_graph=True)); the torch backend has one: NNFORMER_FAST_BACKEND=torch");
  }
};

// grads of a backward op that read `sources`: as they are, or under create_graph attached to a
// NoDoubleBackward node (undefined gradients stay undefined).
variable_list first_order(const char* op, variable_list grads, const variable_list& sources) {
  if (!at::GradMode::is_enabled()) return grads;
  variable_list defined, inputs;
  for (const at::Tensor& g : grads)
    if (g.defined()) defined.push_back(g);
  for (const at::Tensor& t : sources)
    if (t.defined()) inputs.push_back(t);
  variable_list attached = NoDoubleBackward::apply(std::string(op), defined, at::TensorList(inputs));
  for (size_t i = 0, j = 0; i < grads.size(); ++i)
    if (grads[i].defined()) grads[i] = attached[j++];
  return grads;
}

// ---------------------------------------------------------------------- dag_attention
using AttnFwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                               const at::Tensor&, const at::Tensor&,
                                                               const at::Tensor&, const at::Tensor&, double, double,
                                                               c10::SymInt);
using AttnBwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double, double, c10::SymInt);

// Keeps what an attention backward op reads besides dout: `inputs` (q, k, v or qkv), the forward's
// out, lse and p, the relation CSR and the scalars. Returns the forward's outputs, of which lse
// and p are not differentiable.
variable_list save_attention(AutogradContext* ctx, variable_list inputs,
                             const std::tuple<at::Tensor, at::Tensor, at::Tensor>& outputs,
                             const at::Tensor& rel_rowptr, const at::Tensor& rel_col, const at::Tensor& rel_tperm,
                             double scale, double dropout_p, const c10::SymInt& seed) {
  const auto& [out, lse, p] = outputs;
  for (const at::Tensor& t : {out, lse, p, rel_rowptr, rel_col, rel_tperm}) inputs.push_back(t);
  ctx->save_for_backward(inputs);
  ctx->saved_data["scale"] = scale;
  ctx->saved_data["dropout_p"] = dropout_p;
  ctx->saved_data["seed"] = seed;
  ctx->mark_non_differentiable({lse, p});
  return {out, lse, p};
}
// (scale, dropout_p, seed) as save_attention kept them.
std::tuple<double, double, c10::SymInt> attention_scalars(AutogradContext* ctx) {
  return {ctx->saved_data["scale"].toDouble(), ctx->saved_data["dropout_p"].toDouble(),
          ctx->saved_data["seed"].toSymInt()};
}

struct DagAttention : torch::autograd::Function<DagAttention> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                               const at::Tensor& rel_rowptr, const at::Tensor& rel_col, const at::Tensor& rel_tperm,
                               double scale, double dropout_p, c10::SymInt seed) {
    static const auto op = op_handle<AttnFwd>("nnformer_fast::dag_attention_fwd");
    return save_attention(ctx, {q, k, v},
                          below_autograd(op, q, k, v, rel_rowptr, rel_col, rel_tperm, scale, dropout_p, seed),
                          rel_rowptr, rel_col, rel_tperm, scale, dropout_p, seed);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<AttnBwd>("nnformer_fast::dag_attention_bwd");
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor dout = grads[0].contiguous();
    auto [scale, dropout_p, seed] = attention_scalars(ctx);
    auto [dq, dk, dv] =
        below_autograd(op, dout, s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7], s[8], scale, dropout_p, seed);
    variable_list d = first_order("dag_attention", {dq, dk, dv}, {dout, s[0], s[1], s[2]});
    return {d[0], d[1], d[2], {}, {}, {}, {}, {}, {}};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> dag_attention_fwd_autograd(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& rel_rowptr,
    const at::Tensor& rel_col, const at::Tensor& rel_tperm, double scale, double dropout_p, c10::SymInt seed) {
  variable_list r = DagAttention::apply(q, k, v, rel_rowptr, rel_col, rel_tperm, scale, dropout_p, std::move(seed));
  return {r[0], r[1], r[2]};
}

using AttnQkvFwd = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                  const at::Tensor&, const at::Tensor&, double,
                                                                  double, c10::SymInt);
using AttnQkvBwd = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                              double, c10::SymInt);

struct DagAttentionQkv : torch::autograd::Function<DagAttentionQkv> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& qkv, const at::Tensor& rel_rowptr,
                               const at::Tensor& rel_col, const at::Tensor& rel_tperm, double scale, double dropout_p,
                               c10::SymInt seed) {
    static const auto op = op_handle<AttnQkvFwd>("nnformer_fast::dag_attention_qkv_fwd");
    return save_attention(ctx, {qkv}, below_autograd(op, qkv, rel_rowptr, rel_col, rel_tperm, scale, dropout_p, seed),
                          rel_rowptr, rel_col, rel_tperm, scale, dropout_p, seed);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<AttnQkvBwd>("nnformer_fast::dag_attention_qkv_bwd");
    const variable_list s = ctx->get_saved_variables();
    const at::Tensor dout = grads[0].contiguous();
    auto [scale, dropout_p, seed] = attention_scalars(ctx);
    at::Tensor dqkv = below_autograd(op, dout, s[0], s[1], s[2], s[3], s[4], s[5], s[6], scale, dropout_p, seed);
    return {first_order("dag_attention", {dqkv}, {dout, s[0]})[0], {}, {}, {}, {}, {}, {}};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> dag_attention_qkv_fwd_autograd(
    const at::Tensor& qkv, const at::Tensor& rel_rowptr, const at::Tensor& rel_col, const at::Tensor& rel_tperm,
    double scale, double dropout_p, c10::SymInt seed) {
  variable_list r = DagAttentionQkv::apply(qkv, rel_rowptr, rel_col, rel_tperm, scale, dropout_p, std::move(seed));
  return {r[0], r[1], r[2]};
}

// ---------------------------------------------------------------------- bigin
using BiginFwd = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                            const at::Tensor&, const at::Tensor&, c10::string_view, const OptTensor&,
                            const OptTensor&);
using BiginBwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const OptTensor&, const OptTensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, c10::string_view, const OptTensor&, const OptTensor&, const OptTensor&);

using BiginBwdDonated = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    at::Tensor&, const OptTensor&, const OptTensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    const at::Tensor&, c10::string_view, const OptTensor&, const OptTensor&, const OptTensor&);

struct Bigin : torch::autograd::Function<Bigin> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& h, const at::Tensor& g,
                               const at::Tensor& adj_rowptr, const at::Tensor& adj_col,
                               const at::Tensor& adjt_rowptr, const at::Tensor& adjt_col, c10::string_view act,
                               const OptTensor& bias_h, const OptTensor& bias_g) {
    static const auto op = op_handle<BiginFwd>("nnformer_fast::bigin_fwd");
    at::Tensor y = below_autograd(op, h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, act, bias_h, bias_g);
    // relu / leaky_relu on the CPU: the output's sign is the pre-activation's, so the backward
    // keeps the output (which fc2 keeps anyway) instead of h and g. Not in fp16: a positive
    // (fp32) pre-activation below 6e-8 rounds to an output of 0 there, which would read as the
    // negative side; bf16 has fp32's exponent range.
    const Act a = parse_act(std::string(act), "nnformer_fast::bigin_fwd");
    const bool from_out = (a == Act::kRelu || a == Act::kLeakyRelu) && h.device().is_cpu() &&
                          h.scalar_type() != at::kHalf;
    ctx->save_for_backward({from_out ? at::Tensor() : h, from_out ? at::Tensor() : g, from_out ? y : at::Tensor(),
                            adj_rowptr, adj_col, adjt_rowptr, adjt_col, bias_h.value_or(at::Tensor()),
                            bias_g.value_or(at::Tensor())});
    ctx->saved_data["act"] = std::string(act);
    return {y};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<BiginBwd>("nnformer_fast::bigin_bwd");
    static const auto over_dy = op_handle<BiginBwdDonated>("nnformer_fast::bigin_bwd_donated");
    const variable_list s = ctx->get_saved_variables();
    const std::string& act = ctx->saved_data["act"].toStringRef();
    const bool in_place = donate(grads[0], grads[0].scalar_type());
    at::Tensor dy = in_place ? grads[0] : grads[0].contiguous();
    at::Tensor dh = dy, dg, dbias_h, dbias_g;
    if (in_place)
      std::tie(dg, dbias_h, dbias_g) = below_autograd(over_dy, dy, present(s[0]), present(s[1]), s[3], s[4], s[5],
                                                      s[6], act, present(s[7]), present(s[8]), present(s[2]));
    else
      std::tie(dh, dg, dbias_h, dbias_g) = below_autograd(op, dy, present(s[0]), present(s[1]), s[3], s[4], s[5],
                                                          s[6], act, present(s[7]), present(s[8]), present(s[2]));
    if (!s[7].defined()) dbias_h = at::Tensor();
    if (!s[8].defined()) dbias_g = at::Tensor();
    variable_list d = first_order("bigin", {dh, dg, dbias_h, dbias_g}, {dy, s[0], s[1], s[2], s[7], s[8]});
    return {d[0], d[1], {}, {}, {}, {}, {}, d[2], d[3]};
  }
};

at::Tensor bigin_fwd_autograd(const at::Tensor& h, const at::Tensor& g, const at::Tensor& adj_rowptr,
                              const at::Tensor& adj_col, const at::Tensor& adjt_rowptr, const at::Tensor& adjt_col,
                              c10::string_view act, const OptTensor& bias_h, const OptTensor& bias_g) {
  return Bigin::apply(h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, act, bias_h, bias_g)[0];
}

// ---------------------------------------------------------------------- add_layer_norm
using AddNormFwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const OptTensor&, const OptTensor&, const at::Tensor&, const at::Tensor&, double,
    at::ScalarType);
using AddNormBwd = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const OptTensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, at::ScalarType);

using AddNormBwdDonated = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&, const OptTensor&, const at::Tensor&,
    const at::Tensor&, const at::Tensor&, at::ScalarType);

struct AddLayerNorm : torch::autograd::Function<AddLayerNorm> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptTensor& y, const OptTensor& scale,
                               const at::Tensor& weight, const at::Tensor& bias, double eps, at::ScalarType out_dtype) {
    static const auto op = op_handle<AddNormFwd>("nnformer_fast::add_layer_norm_fwd");
    auto [s, out, mean, rstd] = below_autograd(op, x, y, scale, weight, bias, eps, out_dtype);
    const bool add = y.has_value() && y->defined();
    ctx->save_for_backward({add ? s : x, y.value_or(at::Tensor()), scale.value_or(at::Tensor()), weight, mean, rstd});
    ctx->saved_data["x_dtype"] = x.scalar_type();
    ctx->mark_non_differentiable({mean, rstd});
    ctx->set_materialize_grads(false);  // a gradient that reaches s or out only
    return {s, out, mean, rstd};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<AddNormBwd>("nnformer_fast::add_layer_norm_bwd");
    static const auto over_ds = op_handle<AddNormBwdDonated>("nnformer_fast::add_layer_norm_bwd_donated");
    const variable_list v = ctx->get_saved_variables();
    const at::Tensor &s = v[0], &y = v[1];
    const at::ScalarType x_dtype = ctx->saved_data["x_dtype"].toScalarType();
    const bool in_place = y.defined() && donate(grads[0], x_dtype);
    at::Tensor ds = in_place ? grads[0] : y.defined() ? contiguous(grads[0]) : at::Tensor();
    const at::Tensor dout = grads[1].defined() ? grads[1].contiguous() : at::zeros_like(s);
    at::Tensor dx = ds, dy, dscale, dweight, dbias;
    if (in_place)
      std::tie(dy, dscale, dweight, dbias) =
          below_autograd(over_ds, ds, dout, s, present(y), present(v[2]), v[3], v[4], v[5], x_dtype);
    else
      std::tie(dx, dy, dscale, dweight, dbias) =
          below_autograd(op, present(ds), dout, s, present(y), present(v[2]), v[3], v[4], v[5], x_dtype);
    if (!y.defined()) dy = dscale = at::Tensor();
    variable_list d = first_order("add_layer_norm", {dx, dy, dscale, dweight, dbias}, {ds, dout, s, y, v[2], v[3]});
    return {d[0], d[1], d[2], d[3], d[4], {}, {}};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_layer_norm_fwd_autograd(
    const at::Tensor& x, const OptTensor& y, const OptTensor& scale, const at::Tensor& weight, const at::Tensor& bias,
    double eps, at::ScalarType out_dtype) {
  variable_list r = AddLayerNorm::apply(x, y, scale, weight, bias, eps, out_dtype);
  return {r[0], r[1], r[2], r[3]};
}

// ---------------------------------------------------------------------- dropout
using DropoutFwd = at::Tensor(const at::Tensor&, double, c10::SymInt);

// The backward is the same op (same mask, same scale) on the gradient, itself differentiable.
struct Dropout : torch::autograd::Function<Dropout> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, double p, c10::SymInt seed) {
    static const auto op = op_handle<DropoutFwd>("nnformer_fast::dropout_fwd");
    ctx->saved_data["p"] = p;
    ctx->saved_data["seed"] = seed;
    return {below_autograd(op, x, p, seed)};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = op_handle<DropoutFwd>("nnformer_fast::dropout_fwd");
    return {op.call(grads[0].contiguous(), ctx->saved_data["p"].toDouble(), ctx->saved_data["seed"].toSymInt()), {},
            {}};
  }
};

at::Tensor dropout_fwd_autograd(const at::Tensor& x, double p, c10::SymInt seed) {
  return Dropout::apply(x, p, std::move(seed))[0];
}

}  // namespace
}  // namespace nnff

TORCH_LIBRARY_IMPL(nnformer_fast, Autograd, m) {
  m.impl("dag_attention_fwd", &nnff::dag_attention_fwd_autograd);
  m.impl("dag_attention_qkv_fwd", &nnff::dag_attention_qkv_fwd_autograd);
  m.impl("bigin_fwd", &nnff::bigin_fwd_autograd);
  m.impl("add_layer_norm_fwd", &nnff::add_layer_norm_fwd_autograd);
  m.impl("dropout_fwd", &nnff::dropout_fwd_autograd);
}
