// DAG-masked attention on CPU (docs/DESIGN.md: dag_attention), the hot loops (compiled once per capability: vec.h).
// Forward keeps the row log-sum-exp and the normalised weights P (one value per relation entry and
// head group: a few per node, unlike a dense L x L matrix); backward reads P instead of
// recomputing it, follows the flash-attention recipe otherwise, and gathers dk / dv over the
// transposed relation (no atomics, bit-identical results run to run). Each
// (node, head) row computes its scores four keys at a time and its weighted sums of value /
// key / query rows in register blocks of the head dimension.
#include <cmath>
#include <limits>

#include "vec.h"

namespace nnff {
namespace cpu {
namespace NNFF_CPU_LEVEL {
namespace {

constexpr int kMaxHeadDim = 256;  // the ops' schema (checks.h)
// Rows of the relation CSR ahead whose gathered k / v (dq) or q / dout (dk, dv) rows are
// prefetched: the (N, H, Dh) tensors are larger than the L2 cache.
constexpr int64_t kAhead = 2;

// Per-task scratch: a row's scores and weights, its gathered row pointers.
template <typename T> struct RowScratch {
  Scratch<acc_t<T>> s, w;
  Scratch<const T*> rows, rows2;
};

// Entries of one node's rows over all heads, rounded up to whole 16-lane vectors: the
// softmax exponentials of a node run as one vector pass (most rows hold 1-3 entries).
inline int64_t node_entries(const AttentionArgs& a, int64_t i) {
  int64_t total = 0;
  for (int64_t r = 0; r < 4; ++r) total += a.rowptr[r * a.n + i + 1] - a.rowptr[r * a.n + i];
  return (a.heads / 4 * total + kLanes - 1) / kLanes * kLanes;
}

template <typename T>
void fwd(const AttentionArgs& a, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const T *q = static_cast<const T*>(a.q), *k = static_cast<const T*>(a.k), *v = static_cast<const T*>(a.v);
  T* out = static_cast<T*>(a.out);
  A *lse = static_cast<A*>(a.lse), *p = static_cast<A*>(a.p);
  const A sc = static_cast<A>(a.scale), keep_scale = static_cast<A>(1.0 / (1.0 - a.dropout_p));
  const int64_t n = a.n, heads = a.heads, dh = a.dh, qs = a.qs, groups = heads / 4;
  RowScratch<T> scratch;
  Scratch<A> max_of;
  alignas(64) A qf[kMaxHeadDim];
  for (int64_t i = begin; i < end; ++i) {
    // scores of every head's row, scaled and shifted by the row max, side by side in s
    const int64_t padded = node_entries(a, i);
    A* s = scratch.s.get(padded);
    A* m = max_of.get(heads);
    int64_t off = 0;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t row = (h & 3) * n + i;
      const int64_t e0 = a.rowptr[row], len = a.rowptr[row + 1] - e0;
      const int64_t* col = a.col + e0;
      if (i + kAhead < a.n) {
        const int64_t f0 = a.rowptr[row + kAhead], flen = a.rowptr[row + kAhead + 1] - f0;
        prefetch_rows(k + h * dh, a.col + f0, flen, qs, dh * sizeof(T));
        prefetch_rows(v + h * dh, a.col + f0, flen, qs, dh * sizeof(T));
      }
      const A* qi = acc_row(qf, q + i * qs + h * dh, dh);
      const T** rows = scratch.rows.get(len);
      for (int64_t e = 0; e < len; ++e) rows[e] = k + col[e] * qs + h * dh;
      A* sh = s + off;
      dots(qi, rows, len, dh, sh);
      A mh = -std::numeric_limits<A>::infinity();
      for (int64_t e = 0; e < len; ++e) {
        sh[e] *= sc;
        mh = sh[e] > mh ? sh[e] : mh;
      }
      for (int64_t e = 0; e < len; ++e) sh[e] -= mh;
      m[h] = mh;
      off += len;
    }
    for (int64_t e = off; e < padded; ++e) s[e] = A(0);
    exp_inplace(s, padded);
    off = 0;
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t row = (h & 3) * n + i;
      const int64_t e0 = a.rowptr[row], len = a.rowptr[row + 1] - e0;
      const int64_t* col = a.col + e0;
      T* o = out + (i * heads + h) * dh;
      if (len == 0) {  // only reachable with a relation CSR lacking self loops
        weighted_sum(o, static_cast<const A*>(nullptr), static_cast<const T* const*>(nullptr), 0, dh);
        lse[i * heads + h] = -std::numeric_limits<A>::infinity();
        continue;
      }
      const A* sh = s + off;
      off += len;
      A sum = 0;
      for (int64_t e = 0; e < len; ++e) sum += sh[e];
      const A inv = A(1) / sum;
      A* w = scratch.w.get(len);
      const T** rows = scratch.rows.get(len);
      int64_t kept = 0;  // dropped entries are skipped, not added as zeros
      for (int64_t e = 0; e < len; ++e) {
        const A pe = sh[e] * inv;
        p[(e0 + e) * groups + (h >> 2)] = pe;
        if (a.drop.active && !a.drop.keep(e0 + e, h)) continue;
        w[kept] = a.drop.active ? pe * keep_scale : pe;
        rows[kept++] = v + col[e] * qs + h * dh;
      }
      weighted_sum(o, w, rows, kept, dh);
      lse[i * heads + h] = m[h] + std::log(sum);
    }
  }
}

// dq over relation rows, from the forward's P: dP = dO.v per entry, D = sum P dP (= dO . O, but
// from fp32 values rather than the rounded low-precision O), dS = P (dP - D), dq = scale * sum dS
// k; stores dS per (forward entry, head group) for the gather pass below.
template <typename T>
void bwd_dq(const AttentionArgs& a, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const T *k = static_cast<const T*>(a.k), *v = static_cast<const T*>(a.v);
  const T* dout = static_cast<const T*>(a.dout);
  const A* p = static_cast<const A*>(a.p);
  A* buf_ds = static_cast<A*>(a.buf_ds);
  T* dq = static_cast<T*>(a.dq);
  const A sc = static_cast<A>(a.scale), keep_scale = static_cast<A>(1.0 / (1.0 - a.dropout_p));
  const int64_t n = a.n, heads = a.heads, dh = a.dh, qs = a.qs, groups = heads / 4;
  RowScratch<T> scratch;
  alignas(64) A dof[kMaxHeadDim];
  for (int64_t i = begin; i < end; ++i) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t row = (h & 3) * n + i, g = h >> 2;
      const int64_t e0 = a.rowptr[row], len = a.rowptr[row + 1] - e0;
      const int64_t* col = a.col + e0;
      if (i + kAhead < a.n) {
        const int64_t f0 = a.rowptr[row + kAhead], flen = a.rowptr[row + kAhead + 1] - f0;
        prefetch_rows(k + h * dh, a.col + f0, flen, qs, dh * sizeof(T));
        prefetch_rows(v + h * dh, a.col + f0, flen, qs, dh * sizeof(T));
      }
      const A* doi = acc_row(dof, dout + (i * heads + h) * dh, dh);
      const T **krows = scratch.rows.get(len), **vrows = scratch.rows2.get(len);
      for (int64_t e = 0; e < len; ++e) {
        krows[e] = k + col[e] * qs + h * dh;
        vrows[e] = v + col[e] * qs + h * dh;
      }
      A* dP = scratch.w.get(len);
      dots(doi, vrows, len, dh, dP);
      A D = 0;
      for (int64_t e = 0; e < len; ++e) {
        if (a.drop.active) dP[e] *= a.drop.keep(e0 + e, h) ? keep_scale : A(0);
        D += p[(e0 + e) * groups + g] * dP[e];
      }
      for (int64_t e = 0; e < len; ++e) {
        const A ds = p[(e0 + e) * groups + g] * (dP[e] - D);
        buf_ds[(e0 + e) * groups + g] = ds;
        dP[e] = ds * sc;
      }
      weighted_sum(dq + i * qs + h * dh, dP, krows, len, dh);
    }
  }
}

// dk, dv of node j gathered over the rows of the transposed relation: entry e' of row
// (T[r] * N + j) lists a node i with j in N_r(i); rel_tperm[e'] is that forward entry.
template <typename T>
void bwd_dkdv(const AttentionArgs& a, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const T *q = static_cast<const T*>(a.q), *dout = static_cast<const T*>(a.dout);
  const A *p = static_cast<const A*>(a.p), *buf_ds = static_cast<const A*>(a.buf_ds);
  T *dk = static_cast<T*>(a.dk), *dv = static_cast<T*>(a.dv);
  const A sc = static_cast<A>(a.scale), keep_scale = static_cast<A>(1.0 / (1.0 - a.dropout_p));
  const int64_t n = a.n, heads = a.heads, dh = a.dh, qs = a.qs, groups = heads / 4;
  RowScratch<T> scratch;
  for (int64_t j = begin; j < end; ++j) {
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t row = transposed_relation(static_cast<int>(h & 3)) * n + j, g = h >> 2;
      const int64_t e0 = a.rowptr[row], len = a.rowptr[row + 1] - e0;
      if (j + kAhead < a.n) {
        const int64_t f0 = a.rowptr[row + kAhead], flen = a.rowptr[row + kAhead + 1] - f0;
        prefetch_rows(dout + h * dh, a.col + f0, flen, heads * dh, dh * sizeof(T));
        prefetch_rows(q + h * dh, a.col + f0, flen, qs, dh * sizeof(T));
      }
      A *wp = scratch.s.get(len), *wds = scratch.w.get(len);
      const T **drows = scratch.rows.get(len), **qrows = scratch.rows2.get(len);
      for (int64_t t = 0; t < len; ++t) {
        const int64_t e = a.tperm[e0 + t], i = a.col[e0 + t];
        wp[t] = p[e * groups + g];  // the dropped weight P mask / (1 - p)
        if (a.drop.active) wp[t] *= a.drop.keep(e, h) ? keep_scale : A(0);
        wds[t] = buf_ds[e * groups + g] * sc;
        drows[t] = dout + (i * heads + h) * dh;
        qrows[t] = q + i * qs + h * dh;
      }
      weighted_sum(dv + j * qs + h * dh, wp, drows, len, dh);
      weighted_sum(dk + j * qs + h * dh, wds, qrows, len, dh);
    }
  }
}

}  // namespace

void attention_fwd(const AttentionArgs& a, int64_t begin, int64_t end) {
  with_dtype(a.dtype, [&](auto t) { fwd<decltype(t)>(a, begin, end); });
}
void attention_bwd_dq(const AttentionArgs& a, int64_t begin, int64_t end) {
  with_dtype(a.dtype, [&](auto t) { bwd_dq<decltype(t)>(a, begin, end); });
}
void attention_bwd_dkdv(const AttentionArgs& a, int64_t begin, int64_t end) {
  with_dtype(a.dtype, [&](auto t) { bwd_dkdv<decltype(t)>(a, begin, end); });
}

}  // namespace NNFF_CPU_LEVEL
}  // namespace cpu
}  // namespace nnff
