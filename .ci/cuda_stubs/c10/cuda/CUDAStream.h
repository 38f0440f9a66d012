// Stand-in for c10/cuda/CUDAStream.h, which the CPU torch wheel lacks: only what
// csrc/cuda_ops.cpp uses, so that CI can compile the CUDA binding without a CUDA torch.
#pragma once
#include <cuda_runtime.h>

namespace c10 {
namespace cuda {
struct CUDAStream {
  cudaStream_t stream() const { return nullptr; }
};
inline CUDAStream getCurrentCUDAStream() { return {}; }
}  // namespace cuda
}  // namespace c10
