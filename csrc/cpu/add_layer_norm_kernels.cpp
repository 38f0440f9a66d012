// Residual add fused with LayerNorm on CPU (docs/DESIGN.md: add_layer_norm), the hot loops
// (compiled once per capability: vec.h). One row at a time: s = x + y * scale, its mean and
// variance (two passes over the row, which stays in L1), the normalised row in the output
// dtype; the backward pass recomputes the normalised row from s, mean and rstd.
#include <cmath>

#include "vec.h"

namespace nnff {
namespace cpu {
namespace NNFF_CPU_LEVEL {
namespace {

// Fixed-order sum over one row of f(block, c, len), a 16-lane vector per 16 elements; in a
// partial last block only the first len lanes count.
template <typename A, typename F> NNFF_INLINE A row_sum(int64_t d, F&& f) {
  vec<A> acc{};
  for_blocks(d, [&](auto b, int64_t c, int64_t len) NNFF_INLINE_LAMBDA {
    using B = decltype(b);
    for (int j = 0; j < B::vecs; ++j) {
      vec<A> v = f(b, c + j * kLanes, len);
      if constexpr (!B::full) {
        A lanes[kLanes];
        std::memcpy(lanes, &v, sizeof(lanes));
        for (int64_t l = len; l < kLanes; ++l) lanes[l] = A(0);
        std::memcpy(&v, lanes, sizeof(v));
      }
      acc += v;
    }
  });
  return lane_sum<A>(acc);
}

// Row i of out = layer_norm(si) (si in A, or without y x's own type), its mean and rstd.
template <typename S, typename O>
NNFF_INLINE void norm_row(const S* si, const AddNormArgs& a, int64_t i, O* out, acc_t<S>* mean, acc_t<S>* rstd) {
  using A = acc_t<S>;
  const A *w = static_cast<const A*>(a.weight), *bias = static_cast<const A*>(a.bias);
  const int64_t d = a.d;
  const A mu = row_sum<A>(d, [&](auto b, int64_t e, int64_t len) NNFF_INLINE_LAMBDA {
                 return load_block<decltype(b)>(si + e, len);
               }) / A(d);
  const A var = row_sum<A>(d, [&](auto b, int64_t e, int64_t len) NNFF_INLINE_LAMBDA {
                  return load_block<decltype(b)>(si + e, len).map([mu](auto z) { return (z - mu) * (z - mu); });
                }) / A(d);
  const A r = A(1) / std::sqrt(var + static_cast<A>(a.eps));
  O* oi = out + i * d;
  for_blocks(d, [&](auto b, int64_t c, int64_t len) NNFF_INLINE_LAMBDA {
    using B = decltype(b);
    for (int j = 0; j < B::vecs; ++j) {
      const int64_t e = c + j * kLanes;
      const vec<A> t = load_block<B>(si + e, len).map([mu, r](auto z) { return (z - mu) * r; });
      store_block<B>(oi + e, fma(t, load_block<B>(w + e, len), load_block<B>(bias + e, len)), len);
    }
  });
  mean[i] = mu;
  rstd[i] = r;
}

template <typename T, typename X, typename O>
void fwd(const AddNormArgs& a, int64_t begin, int64_t end) {
  using A = acc_t<T>;
  const X* x = static_cast<const X*>(a.x);
  const T* y = static_cast<const T*>(a.y);
  const A* scale = static_cast<const A*>(a.scale);
  O* out = static_cast<O*>(a.out);
  A *mean = static_cast<A*>(a.mean), *rstd = static_cast<A*>(a.rstd);
  const int64_t d = a.d;
  for (int64_t i = begin; i < end; ++i) {
    if (y != nullptr) {
      A* s = static_cast<A*>(a.s) + i * d;
      const X* xi = x + i * d;
      const T* yi = y + i * d;
      for_blocks(d, [&](auto b, int64_t c, int64_t len) NNFF_INLINE_LAMBDA {
        using B = decltype(b);
        for (int j = 0; j < B::vecs; ++j) {
          const int64_t e = c + j * kLanes;
          store_block<B>(s + e, fma(load_block<B>(yi + e, len), load_block<B>(scale + e, len), load_block<B>(xi + e, len)),
                         len);
        }
      });
      norm_row(static_cast<const A*>(s), a, i, out, mean, rstd);
    } else {
      norm_row(x + i * d, a, i, out, mean, rstd);  // s is x itself
    }
  }
}

// Per block of block_rows rows: d s = ds + rstd (g w - mean(g w) - xhat mean(g w xhat)) with
// g = dout and xhat = (s - mean) rstd; dx = d s, dy = d s * scale; the block's partial sums of
// g xhat (d weight), g (d bias) and d s * y (d scale).
template <typename T, typename X, typename O>
void bwd(const AddNormArgs& a, int64_t block_begin, int64_t block_end) {
  using A = acc_t<T>;
  const T* y = static_cast<const T*>(a.y);
  const A* ds = static_cast<const A*>(a.ds);
  const O* dout = static_cast<const O*>(a.dout);
  const A *scale = static_cast<const A*>(a.scale), *w = static_cast<const A*>(a.weight);
  const A *mean = static_cast<const A*>(a.mean), *rstd = static_cast<const A*>(a.rstd);
  X* dx = static_cast<X*>(a.dx);
  T* dy = static_cast<T*>(a.dy);
  const int64_t d = a.d;
  for (int64_t blk = block_begin; blk < block_end; ++blk) {
    A* sums = static_cast<A*>(a.partial) + blk * 3 * d;  // d weight, d bias, d scale
    for (int64_t c = 0; c < 3 * d; ++c) sums[c] = A(0);
    const int64_t stop = (blk + 1) * a.block_rows < a.n ? (blk + 1) * a.block_rows : a.n;
    // row i of s: in A, or without y x itself in X
    const auto row = [&](const auto* si, int64_t i) NNFF_INLINE_LAMBDA {
      const A mu = mean[i], r = rstd[i];
      const O* gi = dout + i * d;
      // xhat of elements [e, e + 16)
      auto xhat = [&](auto b, int64_t e, int64_t len) NNFF_INLINE_LAMBDA {
        return load_block<decltype(b)>(si + e, len).map([mu, r](auto z) { return (z - mu) * r; });
      };
      const A c_gw = row_sum<A>(d, [&](auto b, int64_t e, int64_t len) NNFF_INLINE_LAMBDA {
                       using B = decltype(b);
                       vec<A> gw = load_block<B>(gi + e, len);
                       const vec<A> wv = load_block<B>(w + e, len);
                       for (int p = 0; p < vec<A>::kParts; ++p) gw.p[p] *= wv.p[p];
                       return gw;
                     }) / A(d);
      const A c_gwx = row_sum<A>(d, [&](auto b, int64_t e, int64_t len) NNFF_INLINE_LAMBDA {
                        using B = decltype(b);
                        vec<A> t = xhat(b, e, len);
                        const vec<A> g = load_block<B>(gi + e, len), wv = load_block<B>(w + e, len);
                        for (int p = 0; p < vec<A>::kParts; ++p) t.p[p] *= g.p[p] * wv.p[p];
                        return t;
                      }) / A(d);
      for_blocks(d, [&](auto b, int64_t c, int64_t len) NNFF_INLINE_LAMBDA {
        using B = decltype(b);
        for (int j = 0; j < B::vecs; ++j) {
          const int64_t e = c + j * kLanes;
          const vec<A> xh = xhat(b, e, len), g = load_block<B>(gi + e, len), wv = load_block<B>(w + e, len);
          vec<A> dsum = ds != nullptr ? load_block<B>(ds + i * d + e, len) : vec<A>{};
          for (int p = 0; p < vec<A>::kParts; ++p)
            dsum.p[p] += r * ((g.p[p] * wv.p[p] - c_gw) - xh.p[p] * c_gwx);
          store_block<B>(dx + i * d + e, dsum, len);
          vec<A> dw = load_block<B>(sums + e, len), db = load_block<B>(sums + d + e, len);
          dw = fma(g, xh, dw);
          db += g;
          store_block<B>(sums + e, dw, len);
          store_block<B>(sums + d + e, db, len);
          if (y == nullptr) continue;
          const vec<A> sc = load_block<B>(scale + e, len);
          vec<A> dyv = dsum;
          for (int p = 0; p < vec<A>::kParts; ++p) dyv.p[p] *= sc.p[p];
          store_block<B>(dy + i * d + e, dyv, len);
          store_block<B>(sums + 2 * d + e, fma(dsum, load_block<B>(y + i * d + e, len), load_block<B>(sums + 2 * d + e, len)),
                         len);
        }
      });
    };
    for (int64_t i = blk * a.block_rows; i < stop; ++i) {
      if (y != nullptr)
        row(static_cast<const A*>(a.s) + i * d, i);
      else
        row(static_cast<const X*>(a.s) + i * d, i);
    }
  }
}

// f(T{}, X{}, O{}) with x and the output each in T or in its accumulation type.
template <typename T, typename F> void with_io(const AddNormArgs& a, F&& f) {
  using A = acc_t<T>;
  if constexpr (std::is_same_v<T, A>) {
    f(T{}, T{}, T{});
  } else if (a.x_low) {
    a.out_low ? f(T{}, T{}, T{}) : f(T{}, T{}, A{});
  } else {
    a.out_low ? f(T{}, A{}, T{}) : f(T{}, A{}, A{});
  }
}

}  // namespace

void add_norm_fwd(const AddNormArgs& a, int64_t begin, int64_t end) {
  with_dtype(a.low, [&](auto t) {
    with_io<decltype(t)>(a, [&](auto, auto xt, auto ot) { fwd<decltype(t), decltype(xt), decltype(ot)>(a, begin, end); });
  });
}
void add_norm_bwd(const AddNormArgs& a, int64_t block_begin, int64_t block_end) {
  with_dtype(a.low, [&](auto t) {
    with_io<decltype(t)>(a, [&](auto, auto xt, auto ot) {
      bwd<decltype(t), decltype(xt), decltype(ot)>(a, block_begin, block_end);
    });
  });
}

}  // namespace NNFF_CPU_LEVEL
}  // namespace cpu
}  // namespace nnff
