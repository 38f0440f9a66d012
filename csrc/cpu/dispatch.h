// Run-time choice of the CPU kernels' instruction set, in the manner of ATen's CPU_CAPABILITY:
// the hot loops are compiled once per capability (CMakeLists.txt) and one is chosen at load
// time, the best this CPU runs, or the one the environment variable NNFF_CPU_CAPABILITY names
// (default, avx2, avx512), so that every capability can be tested on a machine that has it.
#pragma once

#include <c10/core/ScalarType.h>

#include <string>
#include <vector>

#include "kernels.h"

namespace nnff {
namespace cpu {

constexpr const char* kCapabilityEnvVar = "NNFF_CPU_CAPABILITY";

// The chosen capability's kernels. Raises when NNFF_CPU_CAPABILITY names one that is unknown,
// not compiled in or not supported by this CPU (never a silent fallback).
const CpuKernels& cpu_kernels();
// The chosen capability's name and compile flags; raise like cpu_kernels().
std::string cpu_capability();
std::string cpu_capability_flags();
// The capabilities compiled in that this CPU runs, lowest first.
std::vector<std::string> cpu_capabilities();

// The kernels' dtype (kernels.h) of a floating scalar type (the bindings check it is one).
Dtype kernel_dtype(c10::ScalarType t);

}  // namespace cpu
}  // namespace nnff
