// Fused bidirectional GIN aggregation on CPU (SPEC §3): y = act(h + [A·g1, Aᵀ·g2]).
// Forward and backward are gathers over CSR rows (children via adj, parents via adjt), so
// results are deterministic; the activation is fused and recomputed in the backward pass.
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

// z = h[i] + [sum_{children} g1, sum_{parents} g2] in the accumulation type.
template <typename T, typename acc_t>
inline void preact(acc_t* z, const T* h, const T* g, const int64_t* rp, const int64_t* cl,
                   const int64_t* rpt, const int64_t* clt, int64_t i, int64_t m) {
  const int64_t half = m / 2;
  load(z, h + i * m, m);
  for (int64_t e = rp[i]; e < rp[i + 1]; ++e) add(z, g + cl[e] * m, half);
  for (int64_t e = rpt[i]; e < rpt[i + 1]; ++e) add(z + half, g + clt[e] * m + half, half);
}

template <typename T>
void fwd_kernel(const T* h, const T* g, const int64_t* rp, const int64_t* cl, const int64_t* rpt,
                const int64_t* clt, T* y, int64_t n, int64_t m, Act a) {
  using acc_t = typename AccType<T>::type;
  at::parallel_for(0, n, row_grain(m), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> z(m);
    for (int64_t i = begin; i < end; ++i) {
      preact(z.data(), h, g, rp, cl, rpt, clt, i, m);
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

// Pass 1: dh = dz = dy * act'(z), rounded to T (it is the output dh).
// Pass 2: dg_j = [sum of dz1 over the parents of j, sum of dz2 over the children of j], read
// back from dh: for fp16 / bf16 the rounded dz, as a plain low-precision backward would use,
// and half the traffic of an fp32 copy.
template <typename T>
void bwd_kernel(const T* dy, const T* h, const T* g, const int64_t* rp, const int64_t* cl,
                const int64_t* rpt, const int64_t* clt, T* dh, T* dg, int64_t n, int64_t m, Act a) {
  using acc_t = typename AccType<T>::type;
  const int64_t half = m / 2;
  at::parallel_for(0, n, row_grain(m), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> z(m), dz(m);
    for (int64_t i = begin; i < end; ++i) {
      preact(z.data(), h, g, rp, cl, rpt, clt, i, m);
      acc_t* dzi = dz.data();
      load(dzi, dy + i * m, m);  // dz = dy, then times act'(z)
      switch (a) {
        case Act::kRelu:
          for (int64_t c = 0; c < m; ++c) dzi[c] = z[c] > 0 ? dzi[c] : acc_t(0);
          break;
        case Act::kLeakyRelu:
          for (int64_t c = 0; c < m; ++c) dzi[c] = dzi[c] * (z[c] > 0 ? acc_t(1) : acc_t(0.01));
          break;
        case Act::kSquareRelu:
          for (int64_t c = 0; c < m; ++c) dzi[c] = z[c] > 0 ? dzi[c] * acc_t(2) * z[c] : acc_t(0);
          break;
        default:
          for (int64_t c = 0; c < m; ++c) dzi[c] = dzi[c] * act_grad(a, z[c]);
      }
      store(dh + i * m, dzi, m);
    }
  });
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

at::Tensor bigin_fwd_cpu(const at::Tensor& h, const at::Tensor& g, const at::Tensor& adj_rowptr,
                         const at::Tensor& adj_col, const at::Tensor& adjt_rowptr,
                         const at::Tensor& adjt_col, c10::string_view act) {
  const char* op = "nnformer_fast::bigin_fwd";
  check_bigin_inputs(op, h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col);
  const Act a = parse_act(std::string(act), op);
  auto y = at::empty_like(h);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "bigin_fwd", [&] {
    fwd_kernel<scalar_t>(h.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                         adj_rowptr.data_ptr<int64_t>(), adj_col.data_ptr<int64_t>(),
                         adjt_rowptr.data_ptr<int64_t>(), adjt_col.data_ptr<int64_t>(),
                         y.data_ptr<scalar_t>(), h.size(0), h.size(1), a);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> bigin_bwd_cpu(const at::Tensor& dy, const at::Tensor& h,
                                                 const at::Tensor& g, const at::Tensor& adj_rowptr,
                                                 const at::Tensor& adj_col,
                                                 const at::Tensor& adjt_rowptr,
                                                 const at::Tensor& adjt_col, c10::string_view act) {
  const char* op = "nnformer_fast::bigin_bwd";
  check_bigin_inputs(op, h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col);
  check_float(dy, op, "dy", 2, h);
  check_same_shape(h, dy, op, "h", "dy");
  const Act a = parse_act(std::string(act), op);
  auto dh = at::empty_like(h), dg = at::empty_like(g);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h.scalar_type(), "bigin_bwd", [&] {
    bwd_kernel<scalar_t>(dy.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
                         adj_rowptr.data_ptr<int64_t>(), adj_col.data_ptr<int64_t>(),
                         adjt_rowptr.data_ptr<int64_t>(), adjt_col.data_ptr<int64_t>(),
                         dh.data_ptr<scalar_t>(), dg.data_ptr<scalar_t>(), h.size(0), h.size(1), a);
  });
  return {dh, dg};
}

}  // namespace
}  // namespace cpu
}  // namespace nnff

TORCH_LIBRARY_IMPL(nnformer_fast, CPU, m) {
  m.impl("bigin_fwd", &nnff::cpu::bigin_fwd_cpu);
  m.impl("bigin_bwd", &nnff::cpu::bigin_bwd_cpu);
}
