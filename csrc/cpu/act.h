// Channel-mixer activations and their derivatives (docs/DESIGN.md: bigin), per element, for the bigin
// kernels (compiled once per capability, like vec.h).
#pragma once

#include <cmath>

#include "vec.h"

namespace nnff {
namespace cpu {
namespace NNFF_CPU_LEVEL {

template <typename A>
inline A act_fwd(Act a, A x) {
  switch (a) {
    case Act::kRelu: return x > 0 ? x : A(0);
    case Act::kLeakyRelu: return x > 0 ? x : x * A(0.01);
    case Act::kGelu: return x * A(0.5) * (A(1) + std::erf(x * A(M_SQRT1_2)));
    case Act::kSquareRelu: return x > 0 ? x * x : A(0);
  }
  return x;
}

// d act / dx at x
template <typename A>
inline A act_grad(Act a, A x) {
  switch (a) {
    case Act::kRelu: return x > 0 ? A(1) : A(0);
    case Act::kLeakyRelu: return x > 0 ? A(1) : A(0.01);
    case Act::kGelu: {
      const A cdf = A(0.5) * (A(1) + std::erf(x * A(M_SQRT1_2)));
      const A pdf = std::exp(A(-0.5) * x * x) * A(0.3989422804014327);
      return cdf + x * pdf;
    }
    case Act::kSquareRelu: return x > 0 ? A(2) * x : A(0);
  }
  return A(1);
}

}  // namespace NNFF_CPU_LEVEL
}  // namespace cpu
}  // namespace nnff
