// Framework-free helpers shared by the CPU and CUDA kernels (no torch headers).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define NNFF_HD __host__ __device__ __forceinline__
#else
#define NNFF_HD inline
#endif

namespace nnff {

// Activations of the channel mixer (docs/DESIGN.md: bigin).
enum class Act : int { kRelu = 0, kLeakyRelu = 1, kGelu = 2, kSquareRelu = 3 };

// Relation index of the transpose of relation r: fwd <-> bwd, sib and cop symmetric.
NNFF_HD int transposed_relation(int r) { return r == 0 ? 1 : (r == 1 ? 0 : r); }

// lowbias32 integer hash (must match ops/reference.py::_hash32).
NNFF_HD uint32_t hash32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7FEB352Du;
  x ^= x >> 15;
  x *= 0x846CA68Bu;
  x ^= x >> 16;
  return x;
}

// Counter-based attention dropout (ops/reference.py::dropout_keep_mask): the weight of
// relation entry `entry` and head `head` is kept when
// hash32((entry * H + head) ^ hash32(seed)) >> 8 >= threshold, threshold = int(p * 2^24).
struct Dropout {
  uint32_t salt;       // hash32(seed mod 2^32)
  uint32_t threshold;  // int(p * 2^24)
  int64_t heads;
  bool active;

  static Dropout make(double p, int64_t seed, int64_t heads) {
    Dropout d;
    d.salt = hash32(static_cast<uint32_t>(static_cast<uint64_t>(seed) & 0xFFFFFFFFull));
    d.threshold = static_cast<uint32_t>(p * 16777216.0);
    d.heads = heads;
    d.active = p > 0.0;
    return d;
  }
  NNFF_HD bool keep(int64_t entry, int64_t head) const {
    uint32_t x = static_cast<uint32_t>(static_cast<uint64_t>(entry * heads + head) & 0xFFFFFFFFull);
    return (hash32(x ^ salt) >> 8) >= threshold;
  }
};

}  // namespace nnff
