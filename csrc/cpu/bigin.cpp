// Fused bidirectional GIN aggregation on CPU (SPEC §3): y = act(h + [A·g1, Aᵀ·g2]), with the
// optional biases of fc1 and gcn folded in: h + bh, g + bg (so node i adds its child count
// times bg1 and its parent count times bg2). Forward and backward are gathers over CSR rows
// (children via adj, parents via adjt), and the bias gradients are summed over fixed blocks
// of rows and then in block order, so results are deterministic whatever the thread count.
// The activation is fused; the backward pass recomputes the pre-activation, or for relu and
// leaky_relu reads its sign off the forward output.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "act.h"
#include "vec.h"

namespace nnff {
namespace cpu {
namespace {

int64_t row_grain(int64_t m) { return std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(1, m)); }

// Rows per block of bias-gradient partial sums: at least 64, and at most 256 blocks (their
// partial sums stay small). A function of n alone, so the order of the sums does not depend on
// how at::parallel_for splits the blocks among threads.
int64_t bias_block_rows(int64_t n) { return std::max<int64_t>(64, (n + 255) / 256); }

// The (M,) biases of fc1 (h) and gcn (g) in the accumulation type; either may be null.
template <typename acc_t>
struct Biases {
  const acc_t* h;
  const acc_t* g;
  bool any() const { return h != nullptr || g != nullptr; }
};

// z = (h[i] + bh) + [sum_{children} (g1 + bg1), sum_{parents} (g2 + bg2)] in the accumulation type.
template <typename T, typename acc_t>
inline void preact(acc_t* z, const T* h, const T* g, Biases<acc_t> b, const int64_t* rp,
                   const int64_t* cl, const int64_t* rpt, const int64_t* clt, int64_t i, int64_t m) {
  const int64_t half = m / 2;
  load(z, h + i * m, m);
  for (int64_t e = rp[i]; e < rp[i + 1]; ++e) add(z, g + cl[e] * m, half);
  for (int64_t e = rpt[i]; e < rpt[i + 1]; ++e) add(z + half, g + clt[e] * m + half, half);
  if (b.h != nullptr) add(z, b.h, m);
  if (b.g != nullptr) {
    axpy(z, acc_t(rp[i + 1] - rp[i]), b.g, half);                 // child count * bg1
    axpy(z + half, acc_t(rpt[i + 1] - rpt[i]), b.g + half, half);  // parent count * bg2
  }
}

template <typename T, typename acc_t = typename AccType<T>::type>
void fwd_kernel(const T* h, const T* g, Biases<acc_t> b, const int64_t* rp, const int64_t* cl,
                const int64_t* rpt, const int64_t* clt, T* y, int64_t n, int64_t m, Act a) {
  at::parallel_for(0, n, row_grain(m), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> z(m);
    for (int64_t i = begin; i < end; ++i) {
      preact(z.data(), h, g, b, rp, cl, rpt, clt, i, m);
      acc_t* zi = z.data();
      switch (a) {  // one loop per activation so each one vectorises
        case Act::kRelu:
          for (int64_t c = 0; c < m; ++c) zi[c] = zi[c] > 0 ? zi[c] : acc_t(0);
          break;
        case Act::kLeakyRelu:
          for (int64_t c = 0; c < m; ++c) zi[c] = zi[c] > 0 ? zi[c] : zi[c] * acc_t(0.01);
          break;
        case Act::kSquareRelu:
          for (int64_t c = 0; c < m; ++c) zi[c] = zi[c] > 0 ? zi[c] * zi[c] : acc_t(0);
          break;
        default:
          for (int64_t c = 0; c < m; ++c) zi[c] = act_fwd(a, zi[c]);
      }
      store(y + i * m, zi, m);
    }
  });
}

// dz = dy[i] * act'(z) for one row (z: its pre-activation; for relu and leaky_relu only its sign
// matters, so the forward output can stand in for it).
template <typename T, typename acc_t>
inline void row_dz(acc_t* dz, const acc_t* z, const T* dy, int64_t m, Act a) {
  load(dz, dy, m);
  switch (a) {  // one loop per activation so each one vectorises
    case Act::kRelu:
      for (int64_t c = 0; c < m; ++c) dz[c] = z[c] > 0 ? dz[c] : acc_t(0);
      break;
    case Act::kLeakyRelu:
      for (int64_t c = 0; c < m; ++c) dz[c] = dz[c] * (z[c] > 0 ? acc_t(1) : acc_t(0.01));
      break;
    case Act::kSquareRelu:
      for (int64_t c = 0; c < m; ++c) dz[c] = z[c] > 0 ? dz[c] * acc_t(2) * z[c] : acc_t(0);
      break;
    default:
      for (int64_t c = 0; c < m; ++c) dz[c] = dz[c] * act_grad(a, z[c]);
  }
}

// Pass 1, over blocks of bias_block_rows(n) rows: dh = dz, rounded to T (it is the output dh),
// with z recomputed from h, g and the biases, or (out != null: relu, leaky_relu) read as the
// forward output, which saves the gather of g and lets autograd keep out instead of h and g; with
// biases, each block's partial sums of dz (d bh) and of the child / parent count times dz
// (d bg), then the blocks' sums in block order into dbias_h, dbias_g (M,; either may be null).
// Pass 2: dg_j = [sum of dz1 over the parents of j, sum of dz2 over the children of j], read
// back from dh: for fp16 / bf16 the rounded dz, as a plain low-precision backward would use,
// and half the traffic of an fp32 copy.
template <typename T, typename acc_t = typename AccType<T>::type>
void bwd_kernel(const T* dy, const T* h, const T* g, const T* out, Biases<acc_t> b, const int64_t* rp,
                const int64_t* cl, const int64_t* rpt, const int64_t* clt, T* dh, T* dg,
                acc_t* dbias_h, acc_t* dbias_g, int64_t n, int64_t m, Act a) {
  const int64_t half = m / 2;
  const int64_t rows = bias_block_rows(n), blocks = (n + rows - 1) / rows;
  std::vector<acc_t> partial(b.any() ? blocks * 2 * m : 0);  // per block: d bh (m), d bg (m)
  const int64_t block_grain = std::max<int64_t>(1, row_grain(m) / rows);
  at::parallel_for(0, blocks, block_grain, [&](int64_t block_begin, int64_t block_end) {
    std::vector<acc_t> z(m), dz(m);
    for (int64_t blk = block_begin; blk < block_end; ++blk) {
      acc_t* sums = b.any() ? partial.data() + blk * 2 * m : nullptr;
      if (sums != nullptr) zero(sums, 2 * m);
      for (int64_t i = blk * rows; i < std::min(n, (blk + 1) * rows); ++i) {
        if (out != nullptr)
          load(z.data(), out + i * m, m);
        else
          preact(z.data(), h, g, b, rp, cl, rpt, clt, i, m);
        row_dz(dz.data(), z.data(), dy + i * m, m, a);
        store(dh + i * m, dz.data(), m);
        if (sums == nullptr) continue;
        add(sums, dz.data(), m);
        axpy(sums + m, acc_t(rp[i + 1] - rp[i]), dz.data(), half);
        axpy(sums + m + half, acc_t(rpt[i + 1] - rpt[i]), dz.data() + half, half);
      }
    }
  });
  if (b.any()) {
    std::vector<acc_t> total(2 * m, acc_t(0));
    for (int64_t blk = 0; blk < blocks; ++blk)
      for (int64_t c = 0; c < 2 * m; ++c) total[c] += partial[blk * 2 * m + c];
    if (dbias_h != nullptr) std::copy(total.begin(), total.begin() + m, dbias_h);
    if (dbias_g != nullptr) std::copy(total.begin() + m, total.end(), dbias_g);
  }
  at::parallel_for(0, n, row_grain(m), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(m);
    for (int64_t j = begin; j < end; ++j) {
      zero(acc.data(), m);
      for (int64_t e = rpt[j]; e < rpt[j + 1]; ++e) add(acc.data(), dh + clt[e] * m, half);
      for (int64_t e = rp[j]; e < rp[j + 1]; ++e) add(acc.data() + half, dh + cl[e] * m + half, half);
      store(dg + j * m, acc.data(), m);
    }
  });
}

template <typename acc_t>
Biases<acc_t> biases(const c10::optional<at::Tensor>& bias_h, const c10::optional<at::Tensor>& bias_g) {
  return {bias_h ? bias_h->data_ptr<acc_t>() : nullptr, bias_g ? bias_g->data_ptr<acc_t>() : nullptr};
}

at::Tensor bigin_fwd_cpu(const at::Tensor& h, const at::Tensor& g, const at::Tensor& adj_rowptr,
                         const at::Tensor& adj_col, const at::Tensor& adjt_rowptr,
                         const at::Tensor& adjt_col, c10::string_view act,
                         const c10::optional<at::Tensor>& bias_h,
                         const c10::optional<at::Tensor>& bias_g) {
  const char* op = "nnformer_fast::bigin_fwd";
  check_bigin_inputs(op, h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, bias_h, bias_g);
  const Act a = parse_act(std::string(act), op);
  auto y = at::empty_like(h);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "bigin_fwd", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    fwd_kernel<scalar_t>(h.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), biases<acc_t>(bias_h, bias_g),
                         adj_rowptr.data_ptr<int64_t>(), adj_col.data_ptr<int64_t>(),
                         adjt_rowptr.data_ptr<int64_t>(), adjt_col.data_ptr<int64_t>(),
                         y.data_ptr<scalar_t>(), h.size(0), h.size(1), a);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bigin_bwd_cpu(
    const at::Tensor& dy, const c10::optional<at::Tensor>& h, const c10::optional<at::Tensor>& g,
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
  auto dh = at::empty_like(dy), dg = at::empty_like(dy);
  auto dbias_h = bias_grad_like(bias_h, dy), dbias_g = bias_grad_like(bias_g, dy);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dy.scalar_type(), "bigin_bwd", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    auto ptr = [](const c10::optional<at::Tensor>& t) { return t ? t->data_ptr<scalar_t>() : nullptr; };
    bwd_kernel<scalar_t>(dy.data_ptr<scalar_t>(), ptr(h), ptr(g), ptr(out), biases<acc_t>(bias_h, bias_g),
                         adj_rowptr.data_ptr<int64_t>(), adj_col.data_ptr<int64_t>(),
                         adjt_rowptr.data_ptr<int64_t>(), adjt_col.data_ptr<int64_t>(),
                         dh.data_ptr<scalar_t>(), dg.data_ptr<scalar_t>(),
                         bias_h ? dbias_h.data_ptr<acc_t>() : nullptr,
                         bias_g ? dbias_g.data_ptr<acc_t>() : nullptr, dy.size(0), dy.size(1), a);
  });
  return {dh, dg, dbias_h, dbias_g};
}

}  // namespace
}  // namespace cpu
}  // namespace nnff

TORCH_LIBRARY_IMPL(nnformer_fast, CPU, m) {
  m.impl("bigin_fwd", &nnff::cpu::bigin_fwd_cpu);
  m.impl("bigin_bwd", &nnff::cpu::bigin_bwd_cpu);
}
