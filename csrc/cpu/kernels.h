// The CPU kernels' interface between the op bindings (compiled for the baseline ISA, with torch)
// and the hot loops, which are compiled once per CPU capability (dispatch.h) into their own
// namespace nnff::cpu::<level>, framework-free: no torch or c10 header, so no inline function
// compiled with AVX-512 can stand in for the baseline copy another file uses. Every entry point
// runs one range [begin, end) of its parallel loop; the bindings split the loop on torch's
// intra-op threads (at::parallel_for).
#pragma once

#include <cstdint>

#include "../common.h"

namespace nnff {
namespace cpu {

// Element types of the kernels' tensors; float16 / bfloat16 travel as their bits.
enum class Dtype : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3 };
struct Half { uint16_t x; };
struct BFloat16 { uint16_t x; };

// Attention (dag_attention.cpp): q, k, v, dq, dk, dv rows are qs elements apart; out, dout:
// (N, H, Dh); lse: (N, H), and p (the forward's normalised weights, before dropout) and the
// backward's buffer buf_ds: (entries, H / 4), in the accumulation type (double for kDouble, else
// float). The forward writes p, the backward reads it. Relation CSR rowptr (4N + 1), col, tperm.
struct AttentionArgs {
  Dtype dtype;
  const void *q, *k, *v, *dout;
  int64_t qs;
  const int64_t *rowptr, *col, *tperm;
  void *out, *lse, *p, *dq, *dk, *dv, *buf_ds;
  int64_t n, heads, dh;
  double scale, dropout_p;
  Dropout drop;
};

// BiGIN (bigin.cpp): h, g, y, dy, out, dh, dg: (N, M); bias_h, bias_g: (M,) in the accumulation
// type or null; partial: per block of block_rows rows, (2, M) partial sums of the bias gradients
// (null without biases). adj (rp, cl): children; adjt (rpt, clt): parents.
struct BiginArgs {
  Dtype dtype;
  const void *h, *g, *bias_h, *bias_g, *dy, *out;
  const int64_t *rp, *cl, *rpt, *clt;
  void *y, *dh, *dg, *partial;
  int64_t n, m, block_rows;
  Act act;
};

// Elementwise dropout (dropout.cpp): y = keep(e) ? x * scale : 0 over flat element ids.
struct DropoutArgs {
  Dtype dtype;
  const void* x;
  void* y;
  uint32_t salt;
  int32_t threshold;
  double scale;
};

// Residual add + LayerNorm (add_layer_norm.cpp), rows of d elements. T = low: the dtype of y
// and of dy; A = acc_t<T>; x, dx in T (x_low) or A; out, dout in T (out_low) or A. s = x +
// y * scale in A (y null: s is x itself, then in A); mean, rstd: (N,) in A; scale, weight,
// bias: (d,) in A. Backward: ds (A) may be null (no gradient reached s); partial: per block of
// block_rows rows, (3, d) partial sums of d weight, d bias and d scale.
struct AddNormArgs {
  Dtype low;
  bool x_low, out_low;
  const void *x, *y, *scale, *weight, *bias, *ds, *dout;
  void *s, *out, *mean, *rstd, *dx, *dy, *partial;
  int64_t n, d, block_rows;
  double eps;
};

// One capability's entry points (ranges over nodes, rows, bias blocks or elements).
struct CpuKernels {
  void (*attention_fwd)(const AttentionArgs&, int64_t begin, int64_t end);
  void (*attention_bwd_dq)(const AttentionArgs&, int64_t begin, int64_t end);
  void (*attention_bwd_dkdv)(const AttentionArgs&, int64_t begin, int64_t end);
  void (*bigin_fwd)(const BiginArgs&, int64_t begin, int64_t end);
  void (*bigin_bwd_dz)(const BiginArgs&, int64_t block_begin, int64_t block_end);
  void (*bigin_bwd_dg)(const BiginArgs&, int64_t begin, int64_t end);
  void (*dropout)(const DropoutArgs&, int64_t begin, int64_t end);
  void (*add_norm_fwd)(const AddNormArgs&, int64_t begin, int64_t end);
  void (*add_norm_bwd)(const AddNormArgs&, int64_t block_begin, int64_t block_end);
};

// Each capability's kernels.cpp defines its table (declared per level in dispatch.cpp).
#define NNFF_DECLARE_CPU_KERNELS(level) \
  namespace level {                     \
  const CpuKernels& kernels();          \
  }

}  // namespace cpu
}  // namespace nnff
