// Counter-based elementwise dropout on CPU (ops/reference.py::dropout), the hot loop (compiled
// once per capability: vec.h): the mask is a hash of the flat element index and the seed, so
// the backward pass (the same op applied to the gradient) recomputes it instead of storing it.
#include <type_traits>

#include "vec.h"

namespace nnff {
namespace cpu {
namespace NNFF_CPU_LEVEL {
namespace {

constexpr int64_t kBlock = 512;

template <typename T>
void dropout_range(const DropoutArgs& a, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  using bits_t = std::conditional_t<sizeof(A) == 8, uint64_t, uint32_t>;
  const T* x = static_cast<const T*>(a.x);
  T* y = static_cast<T*>(a.y);
  const A scale = static_cast<A>(a.scale);
  alignas(64) A buf[kBlock];
  for (int64_t b = begin; b < end; b += kBlock) {
    const int len = static_cast<int>(end - b < kBlock ? end - b : kBlock);
    convert_row(buf, x + b, len);
    const uint32_t base = static_cast<uint32_t>(static_cast<uint64_t>(b) & 0xFFFFFFFFull);
    // uint32 hash, then kept ? x * scale : +0 as a bit mask (a float select would not
    // if-convert without -ffast-math; the mask keeps the loop branch-free and vectorised)
    for (int j = 0; j < len; ++j) {
      const uint32_t h = hash32((base + static_cast<uint32_t>(j)) ^ a.salt);
      const bits_t keep = bits_t(0) - static_cast<bits_t>(static_cast<int32_t>(h >> 8) >= a.threshold);
      const A v = buf[j] * scale;
      bits_t u;
      std::memcpy(&u, &v, sizeof(u));
      u &= keep;
      std::memcpy(&buf[j], &u, sizeof(u));
    }
    convert_row(y + b, buf, len);
  }
}

}  // namespace

void dropout(const DropoutArgs& a, int64_t begin, int64_t end) {
  with_dtype(a.dtype, [&](auto t) { dropout_range<decltype(t)>(a, begin, end); });
}

}  // namespace NNFF_CPU_LEVEL
}  // namespace cpu
}  // namespace nnff
