// Counter-based elementwise dropout on CPU (ops/reference.py::dropout): the mask is a hash
// of the flat element index and the seed, so the backward pass (the same op applied to the
// gradient) recomputes it instead of storing it, and every backend drops the same elements.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "../checks.h"
#include "../common.h"
#include "vec.h"

namespace nnff {
namespace cpu {
namespace {

constexpr int64_t kBlock = 512;

template <typename T>
void dropout_kernel(const T* x, T* y, int64_t n, uint32_t salt, int32_t threshold,
                    typename AccType<T>::type scale) {
  using acc_t = typename AccType<T>::type;
  using bits_t = std::conditional_t<sizeof(acc_t) == 8, uint64_t, uint32_t>;
  static_assert(sizeof(bits_t) == sizeof(acc_t), "float / double accumulation types only");
  at::parallel_for(0, n, 1 << 15, [&](int64_t begin, int64_t end) {
    acc_t buf[kBlock];
    for (int64_t b = begin; b < end; b += kBlock) {
      const int len = static_cast<int>(std::min<int64_t>(kBlock, end - b));
      load(buf, x + b, len);
      const uint32_t base = static_cast<uint32_t>(static_cast<uint64_t>(b) & 0xFFFFFFFFull);
      // uint32 hash, then kept ? x * scale : +0 as a bit mask (a float select would not
      // if-convert without -ffast-math; the mask keeps the loop branch-free and vectorised)
      for (int j = 0; j < len; ++j) {
        uint32_t h = (base + static_cast<uint32_t>(j)) ^ salt;
        h ^= h >> 16;
        h *= 0x7FEB352Du;
        h ^= h >> 15;
        h *= 0x846CA68Bu;
        h ^= h >> 16;  // hash32, inlined (common.h)
        const bits_t keep = bits_t(0) - static_cast<bits_t>(static_cast<int32_t>(h >> 8) >= threshold);
        const acc_t v = buf[j] * scale;
        bits_t u;
        std::memcpy(&u, &v, sizeof(u));
        u &= keep;
        std::memcpy(&buf[j], &u, sizeof(u));
      }
      store(y + b, buf, len);
    }
  });
}

at::Tensor dropout_fwd_cpu(const at::Tensor& x, double p, int64_t seed) {
  const char* op = "nnformer_fast::dropout_fwd";
  check_dropout_inputs(op, x, p);
  const Dropout d = Dropout::make(p, seed, 1);
  auto y = at::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dropout_fwd", [&] {
    using acc_t = typename AccType<scalar_t>::type;
    dropout_kernel<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x.numel(), d.salt,
                             static_cast<int32_t>(d.threshold),
                             static_cast<acc_t>(1.0 / (1.0 - p)));
  });
  return y;
}

}  // namespace
}  // namespace cpu
}  // namespace nnff

TORCH_LIBRARY_IMPL(nnformer_fast, CPU, m) { m.impl("dropout_fwd", &nnff::cpu::dropout_fwd_cpu); }
