// Channel-mixer activations and their derivatives (SPEC §3), shared by CPU kernels.
#pragma once

#include <cmath>

#include "../checks.h"

namespace nnff {
namespace cpu {

template <typename acc_t>
inline acc_t act_fwd(Act a, acc_t x) {
  switch (a) {
    case Act::kRelu: return x > 0 ? x : acc_t(0);
    case Act::kLeakyRelu: return x > 0 ? x : x * acc_t(0.01);
    case Act::kGelu: return x * acc_t(0.5) * (acc_t(1) + std::erf(x * acc_t(M_SQRT1_2)));
    case Act::kSquareRelu: return x > 0 ? x * x : acc_t(0);
  }
  return x;
}

// d act / dx at x
template <typename acc_t>
inline acc_t act_grad(Act a, acc_t x) {
  switch (a) {
    case Act::kRelu: return x > 0 ? acc_t(1) : acc_t(0);
    case Act::kLeakyRelu: return x > 0 ? acc_t(1) : acc_t(0.01);
    case Act::kGelu: {
      const acc_t cdf = acc_t(0.5) * (acc_t(1) + std::erf(x * acc_t(M_SQRT1_2)));
      const acc_t pdf = std::exp(acc_t(-0.5) * x * x) * acc_t(0.3989422804014327);
      return cdf + x * pdf;
    }
    case Act::kSquareRelu: return x > 0 ? acc_t(2) * x : acc_t(0);
  }
  return acc_t(1);
}

}  // namespace cpu
}  // namespace nnff
