// C entry points of the CUDA launchers (csrc/cuda/kernels.h) for ctypes, in the emulator build.
#include "cuda/kernels.h"

using nnff::cuda::DType;

extern "C" {

long nnff_emu_errors() { return nnff_emu::errors.load(); }

int nnff_emu_dag_attention_fwd(int dtype, const void* q, const void* k, const void* v, int64_t ld,
                               const int64_t* rel_rowptr, const int64_t* rel_col, void* out,
                               void* lse, int64_t n, int64_t heads, int64_t dh, double scale,
                               double dropout_p, int64_t seed) {
  return nnff::cuda::dag_attention_fwd(DType(dtype), q, k, v, ld, rel_rowptr, rel_col, out, lse, n,
                                       heads, dh, scale, dropout_p, seed, nullptr);
}

int nnff_emu_dag_attention_bwd(int dtype, const void* dout, const void* q, const void* k,
                               const void* v, int64_t ld, const void* lse,
                               const int64_t* rel_rowptr, const int64_t* rel_col,
                               const int64_t* rel_tperm, int64_t nnz, void* dq, void* dk, void* dv,
                               void* workspace, int64_t n, int64_t heads, int64_t dh, double scale,
                               double dropout_p, int64_t seed) {
  return nnff::cuda::dag_attention_bwd(DType(dtype), dout, q, k, v, ld, lse, rel_rowptr, rel_col,
                                       rel_tperm, nnz, dq, dk, dv, workspace, n, heads, dh, scale,
                                       dropout_p, seed, nullptr);
}

int nnff_emu_bigin_fwd(int dtype, const void* h, const void* g, const int64_t* adj_rowptr,
                       const int64_t* adj_col, const int64_t* adjt_rowptr, const int64_t* adjt_col,
                       void* y, int64_t n, int64_t m, int act) {
  return nnff::cuda::bigin_fwd(DType(dtype), h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col, y, n,
                               m, act, nullptr);
}

int nnff_emu_bigin_bwd(int dtype, const void* dy, const void* h, const void* g,
                       const int64_t* adj_rowptr, const int64_t* adj_col, const int64_t* adjt_rowptr,
                       const int64_t* adjt_col, void* dh, void* dg, int64_t n, int64_t m,
                       int act) {
  return nnff::cuda::bigin_bwd(DType(dtype), dy, h, g, adj_rowptr, adj_col, adjt_rowptr, adjt_col,
                               dh, dg, n, m, act, nullptr);
}

int nnff_emu_dropout_fwd(int dtype, const void* x, void* y, int64_t n, double p, int64_t seed) {
  return nnff::cuda::dropout_fwd(DType(dtype), x, y, n, p, seed, nullptr);
}

}  // extern "C"
