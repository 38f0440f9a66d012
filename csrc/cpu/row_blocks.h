// How the CPU op bindings split rows among torch's intra-op threads, and column sums (bias
// gradients) that come out the same whatever the thread count: partial sums per fixed block of
// rows, then added in block order.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>

namespace nnff {
namespace cpu {

// Rows per at::parallel_for grain for rows of `width` elements: about 16K elements per task.
inline int64_t row_grain(int64_t width) { return std::max<int64_t>(1, (1 << 14) / std::max<int64_t>(1, width)); }

// Rows per block of column partial sums: at least 64, and at most 256 blocks (their partial
// sums stay small). A function of n alone, so the order of the sums does not depend on how
// at::parallel_for splits the blocks among threads.
inline int64_t sum_block_rows(int64_t n) { return std::max<int64_t>(64, (n + 255) / 256); }

// partial (blocks, k, m) -> (k, m): the blocks' partial sums added in block order.
inline at::Tensor sum_blocks(const at::Tensor& partial) {
  auto total = at::zeros(partial.sizes().slice(1), partial.options());
  AT_DISPATCH_FLOATING_TYPES(partial.scalar_type(), "sum_blocks", [&] {
    const int64_t blocks = partial.size(0), width = total.numel();
    const scalar_t* p = partial.data_ptr<scalar_t>();
    scalar_t* t = total.data_ptr<scalar_t>();
    for (int64_t blk = 0; blk < blocks; ++blk)
      for (int64_t c = 0; c < width; ++c) t[c] += p[blk * width + c];
  });
  return total;
}

}  // namespace cpu
}  // namespace nnff
