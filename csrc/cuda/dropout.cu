// Counter-based elementwise dropout on CUDA (ops/reference.py::dropout): one thread per
// element in a grid-stride loop; the mask is hash32(e ^ hash32(seed)) >> 8 >= threshold, so
// it matches the CPU kernel and the torch reference bit for bit.
#include "common.cuh"

namespace nnff {
namespace cuda {
namespace {

constexpr int kDropoutThreads = 256;

template <typename T>
__global__ void dropout_kernel(const T* __restrict__ x, T* __restrict__ y, int64_t n,
                               uint32_t salt, uint32_t threshold,
                               typename Acc<T>::type scale) {
  using acc_t = typename Acc<T>::type;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint32_t h = hash32(static_cast<uint32_t>(static_cast<uint64_t>(i) & 0xFFFFFFFFull) ^ salt);
    y[i] = (h >> 8) >= threshold ? from_acc<T>(to_acc(x[i]) * scale) : from_acc<T>(acc_t(0));
  }
}

}  // namespace

cudaError_t dropout_fwd(DType dtype, const void* x, void* y, int64_t n, double p, int64_t seed,
                        cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const Dropout d = Dropout::make(p, seed, 1);
  unsigned int blocks = blocks_for(n, kDropoutThreads);
  if (blocks > 65536u * 16u) blocks = 65536u * 16u;  // grid-stride beyond ~268M elements
  return dispatch(dtype, [&](auto tag) -> cudaError_t {
    using T = decltype(tag);
    using acc_t = typename Acc<T>::type;
    NNFF_LAUNCH(blocks, kDropoutThreads, stream, dropout_kernel<T>)(
        static_cast<const T*>(x), static_cast<T*>(y), n, d.salt, d.threshold,
        static_cast<acc_t>(1.0 / (1.0 - p)));
    return cudaGetLastError();
  });
}

}  // namespace cuda
}  // namespace nnff
