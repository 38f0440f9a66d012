// Counter-based elementwise dropout on CPU (ops/reference.py::dropout), the op binding: the
// kernel of the CPU capability chosen at load time (dispatch.h, dropout_kernels.cpp) runs
// each range of elements on torch's intra-op threads.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../checks.h"
#include "../common.h"
#include "dispatch.h"

namespace nnff {
namespace cpu {
namespace {

at::Tensor dropout_fwd_cpu(const at::Tensor& x, double p, int64_t seed) {
  const char* op = "nnformer_fast::dropout_fwd";
  check_dropout_inputs(op, x, p);
  const Dropout d = Dropout::make(p, seed, 1);
  const CpuKernels& kernels = cpu_kernels();
  auto y = at::empty_like(x);
  DropoutArgs a{};
  a.dtype = kernel_dtype(x.scalar_type());
  a.x = x.data_ptr();
  a.y = y.data_ptr();
  a.salt = d.salt;
  a.threshold = static_cast<int32_t>(d.threshold);
  a.scale = 1.0 / (1.0 - p);
  at::parallel_for(0, x.numel(), 1 << 15, [&](int64_t begin, int64_t end) { kernels.dropout(a, begin, end); });
  return y;
}

}  // namespace
}  // namespace cpu
}  // namespace nnff

TORCH_LIBRARY_IMPL(nnformer_fast, CPU, m) { m.impl("dropout_fwd", &nnff::cpu::dropout_fwd_cpu); }
