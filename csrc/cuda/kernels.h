// Launchers of the CUDA kernels: raw pointers + a stream, no torch headers (flashinfer
// style), so the .cu files compile and can be tested on their own. All index arrays int64.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace nnff {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

// q, k, v: n rows of (heads, dh) elements of `dtype`, `ld` elements apart (heads * dh for
// separate tensors, 3 * heads * dh for the thirds of one packed qkv); out: (n, heads, dh)
// contiguous; lse: (n, heads) float32 (float64 for kFloat64). n * heads < 2^32, else
// cudaErrorInvalidValue (also for the backward).
cudaError_t dag_attention_fwd(DType dtype, const void* q, const void* k, const void* v, int64_t ld,
                              const int64_t* rel_rowptr, const int64_t* rel_col, void* out,
                              void* lse, int64_t n, int64_t heads, int64_t dh, double scale,
                              double dropout_p, int64_t seed, cudaStream_t stream);

// dq, dk, dv laid out like q, k, v (rows `ld` apart); dout like out. Workspace:
// 2 * nnz * heads / 4 elements of the lse type (float32, float64 for kFloat64).
cudaError_t dag_attention_bwd(DType dtype, const void* dout, const void* q, const void* k,
                              const void* v, int64_t ld, const void* lse,
                              const int64_t* rel_rowptr, const int64_t* rel_col,
                              const int64_t* rel_tperm, int64_t nnz, void* dq, void* dk, void* dv,
                              void* workspace, int64_t n, int64_t heads, int64_t dh, double scale,
                              double dropout_p, int64_t seed, cudaStream_t stream);

// act: 0 relu, 1 leaky_relu, 2 gelu, 3 square_relu (nnff::Act).
cudaError_t bigin_fwd(DType dtype, const void* h, const void* g, const int64_t* adj_rowptr,
                      const int64_t* adj_col, const int64_t* adjt_rowptr, const int64_t* adjt_col,
                      void* y, int64_t n, int64_t m, int act, cudaStream_t stream);

// dh = dz = dy * act'(z); dg gathers dz back from dh (for fp16 / bf16 the rounded dz).
cudaError_t bigin_bwd(DType dtype, const void* dy, const void* h, const void* g,
                      const int64_t* adj_rowptr, const int64_t* adj_col,
                      const int64_t* adjt_rowptr, const int64_t* adjt_col, void* dh, void* dg,
                      int64_t n, int64_t m, int act, cudaStream_t stream);

// Elementwise counter-based dropout of n contiguous elements of `dtype` into y (not x itself);
// p in [0, 1). Element e is kept when hash32(e ^ hash32(seed)) >> 8 >= int(p * 2^24).
cudaError_t dropout_fwd(DType dtype, const void* x, void* y, int64_t n, double p, int64_t seed,
                        cudaStream_t stream);

}  // namespace cuda
}  // namespace nnff
