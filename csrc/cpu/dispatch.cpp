// CPU capability detection and choice (dispatch.h).
#include "dispatch.h"

#include <c10/util/Exception.h>

#include <cstdlib>
#include <stdexcept>

namespace nnff {
namespace cpu {

NNFF_DECLARE_CPU_KERNELS(base)
#ifdef NNFF_CPU_AVX2
NNFF_DECLARE_CPU_KERNELS(avx2)
#endif
#ifdef NNFF_CPU_AVX512
NNFF_DECLARE_CPU_KERNELS(avx512)
#endif

namespace {

struct Capability {
  const char* name;
  const char* flags;  // compile flags of its kernels
  bool (*supported)();
  const CpuKernels& (*kernels)();
};

#if defined(__x86_64__) || defined(__i386__)
bool has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}
bool has_avx512() {
  return has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#endif

// Lowest first.
const Capability kCapabilities[] = {
    {"default", "", [] { return true; }, &base::kernels},
#ifdef NNFF_CPU_AVX2
    {"avx2", NNFF_CPU_AVX2, has_avx2, &avx2::kernels},
#endif
#ifdef NNFF_CPU_AVX512
    {"avx512", NNFF_CPU_AVX512, has_avx512, &avx512::kernels},
#endif
};

std::string names(bool supported_only) {
  std::string s;
  for (const Capability& c : kCapabilities) {
    if (supported_only && !c.supported()) continue;
    s += (s.empty() ? "" : ", ") + std::string(c.name);
  }
  return s;
}

// The capability chosen once, at load time, or why the environment's choice cannot run.
struct Choice {
  const Capability* capability = nullptr;
  std::string error;
};

Choice choose() {
  Choice choice;
  const char* env = std::getenv(kCapabilityEnvVar);
  const std::string want = env != nullptr ? env : "";
  for (const Capability& c : kCapabilities) {
    if (want.empty() ? c.supported() : want == c.name) choice.capability = &c;
  }
  if (want.empty()) return choice;
  const std::string head = std::string(kCapabilityEnvVar) + "=" + want + ": ";
  if (choice.capability == nullptr) {
    choice.error = head + "not a CPU capability of this build (" + names(false) + ")";
  } else if (!choice.capability->supported()) {
    choice.error = head + "this CPU does not support it (it runs " + names(true) + ")";
    choice.capability = nullptr;
  }
  return choice;
}

const Choice& choice() {
  static const Choice c = choose();
  return c;
}

// (a std::runtime_error: one line in Python, from an op or from the module's functions)
const Capability& chosen() {
  if (choice().capability == nullptr) throw std::runtime_error("nnformer_fast CPU kernels: " + choice().error);
  return *choice().capability;
}

// Chooses at load time, so a bad NNFF_CPU_CAPABILITY is known before the first op.
[[maybe_unused]] const bool kChosenAtLoad = (choice(), true);

}  // namespace

const CpuKernels& cpu_kernels() { return chosen().kernels(); }
std::string cpu_capability() { return chosen().name; }
std::string cpu_capability_flags() { return chosen().flags; }

std::vector<std::string> cpu_capabilities() {
  std::vector<std::string> out;
  for (const Capability& c : kCapabilities)
    if (c.supported()) out.emplace_back(c.name);
  return out;
}

Dtype kernel_dtype(c10::ScalarType t) {
  switch (t) {
    case c10::ScalarType::Double: return Dtype::kDouble;
    case c10::ScalarType::Half: return Dtype::kHalf;
    case c10::ScalarType::BFloat16: return Dtype::kBFloat16;
    case c10::ScalarType::Float: return Dtype::kFloat;
    default: TORCH_CHECK(false, "nnformer_fast CPU kernels: no kernel for dtype ", t);
  }
}

}  // namespace cpu
}  // namespace nnff
