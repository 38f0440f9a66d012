// The extension module nnformer_fast._C: op schemas (declared once, here) and build info.
// Kernels register their implementations per device in cpu/*.cpp and cuda_ops.cpp.
#include <pybind11/pybind11.h>
#include <torch/csrc/utils/pybind.h>
#include <pybind11/stl.h>
#include <torch/library.h>

#include "autograd.h"
#include "checks.h"
#include "cpu/dispatch.h"

#ifndef NNFF_TORCH_VERSION
#define NNFF_TORCH_VERSION "unknown"
#endif
#ifndef NNFF_CUDA_VERSION
#define NNFF_CUDA_VERSION ""
#endif

TORCH_LIBRARY(nnformer_fast, m) {
  // q, k, v: (N, H, Dh) contiguous, H % 4 == 0, Dh <= 256; head h reads rows (h % 4) * N + i
  // of the relation CSR. out: like q; lse: (N, H) float32 (float64 for float64 inputs); p: the
  // normalised weights before dropout, entry e of head h at p[e * (H / 4) + h / 4], in lse's
  // dtype, which the CPU backward reads instead of recomputing them ((0,) on CUDA, whose
  // backward recomputes them from lse). rel_tperm is not read by the forward pass; it is an
  // input so that the autograd formula (autograd.cpp) can hand it to the backward op.
  m.def("dag_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor rel_rowptr, Tensor rel_col, "
        "Tensor rel_tperm, float scale, float dropout_p, SymInt seed) -> (Tensor, Tensor, Tensor)");
  m.def("dag_attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor p, "
        "Tensor rel_rowptr, Tensor rel_col, Tensor rel_tperm, float scale, float dropout_p, "
        "SymInt seed) -> (Tensor, Tensor, Tensor)");
  // The same on the packed output of the qkv Linear: qkv (N, 3, H, Dh) contiguous, read in
  // place (no copies of q, k, v); the backward returns dqkv like qkv.
  m.def("dag_attention_qkv_fwd(Tensor qkv, Tensor rel_rowptr, Tensor rel_col, Tensor rel_tperm, "
        "float scale, float dropout_p, SymInt seed) -> (Tensor, Tensor, Tensor)");
  m.def("dag_attention_qkv_bwd(Tensor dout, Tensor qkv, Tensor out, Tensor lse, Tensor p, Tensor rel_rowptr, "
        "Tensor rel_col, Tensor rel_tperm, float scale, float dropout_p, SymInt seed) -> Tensor");
  // h, g: (N, M) contiguous, M even; act in {relu, leaky_relu, gelu, square_relu}. bias_h,
  // bias_g: optional (M,) biases of fc1 and gcn in float32 (float64 for float64 h), folded in
  // as h + bias_h and g + bias_g (CPU only: the CUDA kernels refuse them and the Python
  // adapter adds them first). bigin_bwd returns (dh, dg, dbias_h, dbias_g); a bias gradient
  // is (0,) when its bias is absent. It recomputes the pre-activation from h, g and the
  // biases or, for relu and leaky_relu (CPU only), takes its sign from the forward output
  // `out` instead, with h and g then None.
  m.def("bigin_fwd(Tensor h, Tensor g, Tensor adj_rowptr, Tensor adj_col, Tensor adjt_rowptr, "
        "Tensor adjt_col, str act, Tensor? bias_h=None, Tensor? bias_g=None) -> Tensor");
  m.def("bigin_bwd(Tensor dy, Tensor? h, Tensor? g, Tensor adj_rowptr, Tensor adj_col, "
        "Tensor adjt_rowptr, Tensor adjt_col, str act, Tensor? bias_h=None, Tensor? bias_g=None, "
        "Tensor? out=None) -> (Tensor, Tensor, Tensor, Tensor)");
  // The same with dh written over dy (CPU), returning (dg, dbias_h, dbias_g): the autograd node
  // calls it when it holds the only reference to its incoming gradient (autograd.cpp), which
  // saves a fresh (N, M) buffer.
  m.def("bigin_bwd_donated(Tensor(a!) dy, Tensor? h, Tensor? g, Tensor adj_rowptr, Tensor adj_col, "
        "Tensor adjt_rowptr, Tensor adjt_col, str act, Tensor? bias_h=None, Tensor? bias_g=None, "
        "Tensor? out=None) -> (Tensor, Tensor, Tensor)");
  // Counter-based elementwise dropout (specified by ops/reference.py::dropout): element e of the
  // contiguous x is kept when hash32(e ^ hash32(seed)) >> 8 >= int(p * 2^24) and scaled by
  // 1 / (1 - p). Its backward is the same op applied to the gradient.
  m.def("dropout_fwd(Tensor x, float p, SymInt seed) -> Tensor");
  // Residual add fused with LayerNorm over the last dim (CPU): s = x + y * scale, out =
  // layer_norm(s, weight, bias, eps) in out_dtype, with the row mean and rstd. Dtypes: T = y's
  // (without y, out_dtype's) and A its accumulation type (float32; float64 for float64): y in T,
  // x in T or A (A without y), out_dtype T or A, s, mean, rstd, scale, weight, bias in A. s is
  // (0,) without y (s is then x). The backward takes the gradients of s (None: none reached it)
  // and out, and s (x without y); it returns (dx in x_dtype, dy, dscale, dweight, dbias), dy and
  // dscale (0,) without y.
  m.def("add_layer_norm_fwd(Tensor x, Tensor? y, Tensor? scale, Tensor weight, Tensor bias, float eps, "
        "ScalarType out_dtype) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("add_layer_norm_bwd(Tensor? ds, Tensor dout, Tensor s, Tensor? y, Tensor? scale, Tensor weight, "
        "Tensor mean, Tensor rstd, ScalarType x_dtype) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The same with dx written over ds, which must then be of x_dtype, returning (dy, dscale,
  // dweight, dbias) (as bigin_bwd_donated).
  m.def("add_layer_norm_bwd_donated(Tensor(a!) ds, Tensor dout, Tensor s, Tensor? y, Tensor? scale, Tensor weight, "
        "Tensor mean, Tensor rstd, ScalarType x_dtype) -> (Tensor, Tensor, Tensor, Tensor)");
  // Relation CSR builder (cpu/relations.cpp): mask edges sorted by (src, dst), deduplicated.
  m.def("build_relations(Tensor src, Tensor dst, int num_nodes) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

namespace py = pybind11;

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "nnformer_fast native kernels (ops live in torch.ops.nnformer_fast)";
  mod.def("torch_version", [] { return std::string(NNFF_TORCH_VERSION); },
          "torch version the extension was built against");
  mod.def("cuda_version", [] { return std::string(NNFF_CUDA_VERSION); },
          "CUDA toolkit version of the CUDA kernels ('' when built without CUDA)");
  mod.def("with_cuda", [] {
#ifdef NNFF_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  mod.def("cpu_capability", &nnff::cpu::cpu_capability,
          "instruction set of the CPU kernels that run (chosen at load time; NNFF_CPU_CAPABILITY forces one)");
  mod.def("cpu_flags", &nnff::cpu::cpu_capability_flags, "compile flags of those kernels");
  mod.def("cpu_capabilities", &nnff::cpu::cpu_capabilities,
          "the CPU kernels' instruction sets compiled in that this CPU runs, lowest first");
  mod.def("openmp", [] { return NNFF_OPENMP != 0; },
          "whether the CPU kernels run on torch's intra-op threads (compiled with OpenMP)");
  mod.def(
      "check_csr",
      [](const at::Tensor& rowptr, const at::Tensor& col, int64_t rows, int64_t cols) {
        nnff::check_csr(rowptr, col, rows, cols, "check_csr", "csr", rowptr.device());
      },
      "the kernels' check of a CSR (offsets, ids in [0, cols)) on its own, for benchmarks: raises "
      "RuntimeError on a malformed one");
  mod.def("donated_grads", [] { return nnff::donated_grads().load(); },
          "gradient buffers that backward ops have written their result over so far (autograd.cpp)");
  mod.def("index_scans", [] { return nnff::index_scans().load(); },
          "value scans of index tensors with a host-side result so far (every CPU check; a CUDA tensor "
          "that passed unchanged is checked on the device instead)");
}
