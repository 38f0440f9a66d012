// What the autograd formulas (autograd.cpp) report to the Python module.
#pragma once

#include <atomic>
#include <cstdint>

namespace nnff {

// Incoming gradients that a backward op has written its result over, so far (tests read it
// through nnformer_fast._C.donated_grads).
std::atomic<int64_t>& donated_grads();

}  // namespace nnff
