// Fused bidirectional GIN aggregation on CPU (docs/DESIGN.md: bigin), the hot loops (compiled once per
// capability: vec.h): y = act(h + [A·g1, Aᵀ·g2]) with the optional biases of fc1 and gcn folded
// in (h + bh, g + bg: node i adds its child count times bg1 and its parent count times bg2).
// Forward and backward are gathers over CSR rows (children via adj, parents via adjt), each
// half row summed in register blocks and activated before its one store.
#include "act.h"

namespace nnff {
namespace cpu {
namespace NNFF_CPU_LEVEL {
namespace {

template <typename T> struct BiginRows {
  Scratch<const T*> rows;
  Scratch<acc_t<T>> z;
};

// f(block, d, len, z) with z[] the pre-activation of row i's elements [d, d + len):
// (h[i] + bh) + sum over the children (first half) or parents (second half) of (g + bg).
template <typename T, typename F>
inline void preact_blocks(const BiginArgs& a, int64_t i, BiginRows<T>& scratch, F&& f) {
  using A = acc_t<T>;
  const T *h = static_cast<const T*>(a.h), *g = static_cast<const T*>(a.g);
  const A *bh = static_cast<const A*>(a.bias_h), *bg = static_cast<const A*>(a.bias_g);
  const int64_t m = a.m, half = m / 2;
  for (int side = 0; side < 2; ++side) {
    const int64_t* rp = side == 0 ? a.rp : a.rpt;
    const int64_t* cl = side == 0 ? a.cl : a.clt;
    const int64_t e0 = rp[i], count = rp[i + 1] - e0, off = side * half;
    const T** rows = scratch.rows.get(count);
    for (int64_t e = 0; e < count; ++e) rows[e] = g + cl[e0 + e] * m + off;
    const A cnt = static_cast<A>(count);
    for_blocks(half, [&](auto b, int64_t d, int64_t len) {
      using B = decltype(b);
      vec<A> z[B::vecs];
      for (int j = 0; j < B::vecs; ++j) z[j] = load_block<B>(h + i * m + off + d + j * kLanes, len);
      for (int64_t e = 0; e < count; ++e)
        for (int j = 0; j < B::vecs; ++j) z[j] += load_block<B>(rows[e] + d + j * kLanes, len);
      if (bh != nullptr)
        for (int j = 0; j < B::vecs; ++j) z[j] += load_block<B>(bh + off + d + j * kLanes, len);
      if (bg != nullptr)
        for (int j = 0; j < B::vecs; ++j) z[j] = fma(cnt, load_block<B>(bg + off + d + j * kLanes, len), z[j]);
      f(b, off + d, len, z);
    });
  }
}

// Prefetches the g rows that row i + kAhead gathers (g is larger than the L2 cache).
constexpr int64_t kAhead = 2;
template <typename T> inline void prefetch_g(const BiginArgs& a, int64_t i) {
  if (i + kAhead >= a.n) return;
  const T* g = static_cast<const T*>(a.g);
  const int64_t half = a.m / 2, r = i + kAhead, bytes = half * sizeof(T);
  prefetch_rows(g, a.cl + a.rp[r], a.rp[r + 1] - a.rp[r], a.m, bytes);
  prefetch_rows(g + half, a.clt + a.rpt[r], a.rpt[r + 1] - a.rpt[r], a.m, bytes);
}

// act(z) lane by lane: vector selects for relu, leaky_relu and square_relu, erf per lane for gelu.
template <Act kAct, typename A> inline vec<A> act_vec(const vec<A>& z) {
  if constexpr (kAct == Act::kGelu) {
    A lanes[kLanes];
    std::memcpy(lanes, &z, sizeof(lanes));
    for (int l = 0; l < kLanes; ++l) lanes[l] = act_fwd(Act::kGelu, lanes[l]);
    vec<A> r;
    std::memcpy(&r, lanes, sizeof(r));
    return r;
  } else {
    return z.map([](auto x) {
      using N = decltype(x);
      if constexpr (kAct == Act::kRelu) return x > 0 ? x : N{};
      else if constexpr (kAct == Act::kLeakyRelu) return x > 0 ? x : x * A(0.01);
      else return x > 0 ? x * x : N{};  // square_relu
    });
  }
}

template <typename T, Act kAct>
void fwd(const BiginArgs& a, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  T* y = static_cast<T*>(a.y);
  BiginRows<T> scratch;
  for (int64_t i = begin; i < end; ++i) {
    prefetch_g<T>(a, i);
    T* yi = y + i * a.m;
    preact_blocks<T>(a, i, scratch, [&](auto b, int64_t d, int64_t len, vec<A>* z) {
      using B = decltype(b);
      for (int j = 0; j < B::vecs; ++j) store_block<B>(yi + d + j * kLanes, act_vec<kAct>(z[j]), len);
    });
  }
}

// dy * act'(z) lane by lane, the products in the order of act_grad's scalar formulas.
template <Act kAct, typename A> NNFF_INLINE vec<A> act_grad_vec(const vec<A>& z, const vec<A>& dy) {
  vec<A> r;
  if constexpr (kAct == Act::kGelu) {
    A zl[kLanes], dl[kLanes];
    std::memcpy(zl, &z, sizeof(zl));
    std::memcpy(dl, &dy, sizeof(dl));
    for (int l = 0; l < kLanes; ++l) dl[l] = dl[l] * act_grad(Act::kGelu, zl[l]);
    std::memcpy(&r, dl, sizeof(r));
  } else {
    using N = typename vec<A>::native;
    for (int i = 0; i < vec<A>::kParts; ++i) {
      const N x = z.p[i], d = dy.p[i];
      if constexpr (kAct == Act::kRelu) r.p[i] = x > 0 ? d : N{};
      else if constexpr (kAct == Act::kLeakyRelu) r.p[i] = d * (x > 0 ? N{} + A(1) : N{} + A(0.01));
      else r.p[i] = x > 0 ? d * A(2) * x : N{};  // square_relu
    }
  }
  return r;
}

// Pass 1 of the backward, over blocks of block_rows rows: dh = dz = dy * act'(z), rounded to T
// (it is the output dh), with z recomputed from h, g and the biases, or (out != null: relu,
// leaky_relu) read as the forward output, whose sign is that of z; with biases, each block's
// partial sums of dz (d bh) and of the child / parent count times dz (d bg), accumulated in
// the same pass over the row.
template <typename T, Act kAct>
void bwd_dz(const BiginArgs& a, int64_t block_begin, int64_t block_end) {
  using A = acc_t<T>;
  const T *dy = static_cast<const T*>(a.dy), *out = static_cast<const T*>(a.out);
  T* dh = static_cast<T*>(a.dh);
  const int64_t m = a.m, half = m / 2;
  BiginRows<T> scratch;
  A* z = scratch.z.get(m);
  for (int64_t blk = block_begin; blk < block_end; ++blk) {
    A* sums = a.partial != nullptr ? static_cast<A*>(a.partial) + blk * 2 * m : nullptr;
    if (sums != nullptr)
      for (int64_t c = 0; c < 2 * m; ++c) sums[c] = A(0);
    const int64_t stop = (blk + 1) * a.block_rows < a.n ? (blk + 1) * a.block_rows : a.n;
    for (int64_t i = blk * a.block_rows; i < stop; ++i) {
      if (out == nullptr)
        preact_blocks<T>(a, i, scratch, [&](auto b, int64_t d, int64_t len, vec<A>* zb) {
          using B = decltype(b);
          for (int j = 0; j < B::vecs; ++j) store_block<B>(z + d + j * kLanes, zb[j], len);
        });
      for (int side = 0; side < 2; ++side) {
        const int64_t off = side * half;
        const int64_t* rp = side == 0 ? a.rp : a.rpt;
        const A cnt = static_cast<A>(rp[i + 1] - rp[i]);  // children (first half) or parents
        for_blocks(half, [&](auto b, int64_t d, int64_t len) NNFF_INLINE_LAMBDA {
          using B = decltype(b);
          const int64_t c0 = i * m + off + d;
          for (int j = 0; j < B::vecs; ++j) {
            const int64_t c = off + d + j * kLanes;
            const vec<A> zj = out != nullptr ? load_block<B>(out + i * m + c, len) : load_block<B>(z + c, len);
            const vec<A> dz = act_grad_vec<kAct>(zj, load_block<B>(dy + c0 + j * kLanes, len));
            store_block<B>(dh + c0 + j * kLanes, dz, len);
            if (sums == nullptr) continue;
            vec<A> s = load_block<B>(sums + c, len), sb = load_block<B>(sums + m + c, len);
            s += dz;
            sb += dz.map([cnt](auto x) { return x * cnt; });
            store_block<B>(sums + c, s, len);
            store_block<B>(sums + m + c, sb, len);
          }
        });
      }
    }
  }
}

// Pass 2: dg_j = [sum of dz1 over the parents of j, sum of dz2 over the children of j], read
// back from dh: for fp16 / bf16 the rounded dz, as a plain low-precision backward would use,
// and half the traffic of an fp32 copy.
template <typename T>
void bwd_dg(const BiginArgs& a, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const T* dh = static_cast<const T*>(a.dh);
  T* dg = static_cast<T*>(a.dg);
  const int64_t m = a.m, half = m / 2;
  BiginRows<T> scratch;
  for (int64_t j = begin; j < end; ++j) {
    if (j + kAhead < a.n) {  // the dh rows that row j + kAhead gathers
      const int64_t r = j + kAhead, bytes = half * sizeof(T);
      prefetch_rows(dh, a.clt + a.rpt[r], a.rpt[r + 1] - a.rpt[r], m, bytes);
      prefetch_rows(dh + half, a.cl + a.rp[r], a.rp[r + 1] - a.rp[r], m, bytes);
    }
    for (int side = 0; side < 2; ++side) {  // parents feed the first half, children the second
      const int64_t* rp = side == 0 ? a.rpt : a.rp;
      const int64_t* cl = side == 0 ? a.clt : a.cl;
      const int64_t e0 = rp[j], count = rp[j + 1] - e0, off = side * half;
      const T** rows = scratch.rows.get(count);
      for (int64_t e = 0; e < count; ++e) rows[e] = dh + cl[e0 + e] * m + off;
      weighted_sum(dg + j * m + off, static_cast<const A*>(nullptr), rows, count, half);
    }
  }
}

template <typename T> void fwd_act(const BiginArgs& a, int64_t begin, int64_t end) {
  switch (a.act) {
    case Act::kRelu: return fwd<T, Act::kRelu>(a, begin, end);
    case Act::kLeakyRelu: return fwd<T, Act::kLeakyRelu>(a, begin, end);
    case Act::kGelu: return fwd<T, Act::kGelu>(a, begin, end);
    case Act::kSquareRelu: return fwd<T, Act::kSquareRelu>(a, begin, end);
  }
}

}  // namespace

void bigin_fwd(const BiginArgs& a, int64_t begin, int64_t end) {
  with_dtype(a.dtype, [&](auto t) { fwd_act<decltype(t)>(a, begin, end); });
}
void bigin_bwd_dz(const BiginArgs& a, int64_t block_begin, int64_t block_end) {
  with_dtype(a.dtype, [&](auto t) {
    using T = decltype(t);
    switch (a.act) {  // one instance per activation so that each one vectorises
      case Act::kRelu: return bwd_dz<T, Act::kRelu>(a, block_begin, block_end);
      case Act::kLeakyRelu: return bwd_dz<T, Act::kLeakyRelu>(a, block_begin, block_end);
      case Act::kGelu: return bwd_dz<T, Act::kGelu>(a, block_begin, block_end);
      case Act::kSquareRelu: return bwd_dz<T, Act::kSquareRelu>(a, block_begin, block_end);
    }
  });
}
void bigin_bwd_dg(const BiginArgs& a, int64_t begin, int64_t end) {
  with_dtype(a.dtype, [&](auto t) { bwd_dg<decltype(t)>(a, begin, end); });
}

}  // namespace NNFF_CPU_LEVEL
}  // namespace cpu
}  // namespace nnff
