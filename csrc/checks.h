// Input checks shared by every kernel binding (CPU and CUDA). Kernels assume what these
// guarantee: matching shapes/dtypes/devices, contiguous storage, CSR offsets that are
// monotone and end at the column count, and column / permutation ids in range. A malformed
// CSR therefore raises here instead of reading out of bounds, on every call: a write the
// version counter does not see (through .numpy(), .data or DLPack) is caught too.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <c10/util/intrusive_ptr.h>

#include <array>
#include <atomic>
#include <mutex>
#include <string>

#include "common.h"

namespace nnff {

// CUDA index tensors whose values passed a synchronous scan, remembered by identity: the same
// live tensor (its TensorImpl, held weakly: that keeps the address from going to a new tensor
// while remembered, and tells when it was freed) at the same version, with the same data
// pointer, size and bounds, is checked again without a device->host sync (an asynchronous
// device-side assert, see check_range), so one batch's CSRs cost one sync for all layers'
// ops, forward and backward. Inference tensors keep no version: scanned every time.
class CheckedIndices {
 public:
  bool contains(const at::Tensor& t, int64_t a, int64_t b) const {
    if (t.is_inference()) return false;
    const Entry key = entry_of(t, a, b);
    std::lock_guard<std::mutex> lock(mutex_);
    for (const Entry& e : entries_) {
      if (e.raw == key.raw && e.version == key.version && e.data == key.data && e.numel == key.numel &&
          e.a == a && e.b == b && e.impl.lock().get() == e.raw) {
        return true;
      }
    }
    return false;
  }

  void insert(const at::Tensor& t, int64_t a, int64_t b) {
    if (t.is_inference()) return;
    std::lock_guard<std::mutex> lock(mutex_);
    entries_[next_] = entry_of(t, a, b);
    next_ = (next_ + 1) % entries_.size();
  }

 private:
  struct Entry {
    c10::weak_intrusive_ptr<c10::TensorImpl> impl{c10::intrusive_ptr<c10::TensorImpl>()};
    const c10::TensorImpl* raw = nullptr;
    int64_t version = -1;
    const void* data = nullptr;
    int64_t numel = -1, a = 0, b = 0;
  };

  static Entry entry_of(const at::Tensor& t, int64_t a, int64_t b) {
    return Entry{c10::weak_intrusive_ptr<c10::TensorImpl>(t.getIntrusivePtr()), t.unsafeGetTensorImpl(),
                 static_cast<int64_t>(t._version()), t.data_ptr(), t.numel(), a, b};
  }

  mutable std::mutex mutex_;
  std::array<Entry, 64> entries_;  // a few batches' CSRs (7 index tensors a batch)
  size_t next_ = 0;
};

inline CheckedIndices& checked_indices() {
  static CheckedIndices cache;
  return cache;
}

// Value scans with a host-side result so far: every CPU check, and CUDA checks of tensors not
// remembered (tests read it through nnformer_fast._C.index_scans).
inline std::atomic<int64_t>& index_scans() {
  static std::atomic<int64_t> scans{0};
  return scans;
}

// The first i in [0, n) with bad(i), or n. Each chunk first tests all its elements without
// branching (a vectorisable OR), so a valid tensor costs one streaming read (about 0.3 ms per
// million ids on one core). Chunks of 2^20 ids run in parallel: below that, waking the
// threads costs more than the scan, and much more on a loaded machine.
template <typename Bad>
int64_t first_bad(int64_t n, const Bad& bad) {
  std::atomic<int64_t> first{n};
  at::parallel_for(0, n, int64_t{1} << 20, [&](int64_t b, int64_t e) {
    bool any = false;
    for (int64_t i = b; i < e; ++i) any |= bad(i);
    if (!any) return;
    int64_t i = b;
    while (!bad(i)) ++i;
    for (int64_t seen = first.load(); i < seen && !first.compare_exchange_weak(seen, i);) {
    }
  });
  return first.load();
}

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

// A float tensor of the op's main dtype/device, contiguous, with `dim` dimensions.
inline void check_float(const at::Tensor& t, const char* op, const char* name, int64_t dim,
                        const at::Tensor& like) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(is_supported_float(t.scalar_type()), op, ": ", name,
              " must be float16/bfloat16/float32/float64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == dim, op, ": ", name, " must have ", dim, " dimensions, got shape ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but expected ", like.scalar_type());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(),
              " but expected ", like.device());
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
}

// Elementwise dropout input: any shape, contiguous, a supported float dtype; p in [0, 1).
inline void check_dropout_inputs(const char* op, const at::Tensor& x, double p) {
  TORCH_CHECK(x.defined(), op, ": x is undefined");
  TORCH_CHECK(is_supported_float(x.scalar_type()), op,
              ": x must be float16/bfloat16/float32/float64, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), op, ": x must be contiguous");
  TORCH_CHECK(p >= 0.0 && p < 1.0, op, ": p must lie in [0, 1), got ", p);
}

inline void check_same_shape(const at::Tensor& a, const at::Tensor& b, const char* op,
                             const char* name_a, const char* name_b) {
  TORCH_CHECK(a.sizes() == b.sizes(), op, ": ", name_a, " ", a.sizes(), " and ", name_b, " ",
              b.sizes(), " must have one shape");
}

// A 1-D contiguous int64 index tensor on `device` with `size` elements (size < 0: any).
inline void check_index(const at::Tensor& t, const char* op, const char* name, int64_t size,
                        const at::Device& device) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined");
  TORCH_CHECK(t.scalar_type() == at::kLong, op, ": ", name, " must be int64, got ",
              t.scalar_type());
  TORCH_CHECK(t.dim() == 1, op, ": ", name, " must be 1-D, got shape ", t.sizes());
  TORCH_CHECK(t.device() == device, op, ": ", name, " is on ", t.device(), " but the data on ",
              device);
  TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  if (size >= 0) {
    TORCH_CHECK(t.numel() == size, op, ": ", name, " must have ", size, " elements, got ",
                t.numel());
  }
}

// Values of `t` lie in [0, hi). A CPU tensor is scanned on every call (a parallel read of its
// int64 values, small next to any kernel that reads them). A CUDA tensor is scanned with one
// device->host sync, or, when it passed before unchanged (CheckedIndices), checked on the
// device without a sync: a write the version counter missed then trips a device-side assert
// before the kernel, queued behind it on the stream, can run.
inline void check_range(const at::Tensor& t, int64_t hi, const char* op, const char* name) {
  if (t.numel() == 0) return;
  if (t.is_cpu()) {
    ++index_scans();
    const int64_t* p = t.data_ptr<int64_t>();
    const auto bound = static_cast<uint64_t>(hi);  // one unsigned compare also catches negative ids
    const int64_t i = first_bad(t.numel(), [=](int64_t i) { return static_cast<uint64_t>(p[i]) >= bound; });
    TORCH_CHECK(i == t.numel(), op, ": ", name, "[", i, "] = ", p[i], " lies outside [0, ", hi, ")");
    return;
  }
  if (checked_indices().contains(t, hi, -1)) {
    at::_assert_async(at::logical_and(t >= 0, t < hi).all());
    return;
  }
  ++index_scans();
  auto bad = at::logical_or(t < 0, t >= hi).any().item<bool>();
  TORCH_CHECK(!bad, op, ": ", name, " holds ids outside [0, ", hi, ")");
  checked_indices().insert(t, hi, -1);
}

// CSR offsets of `rows` rows and `nnz` entries: rowptr[0] == 0, monotone, rowptr[rows] == nnz
// (so every offset lies in [0, nnz]). Checked like check_range's values.
inline void check_csr_offsets(const at::Tensor& rowptr, int64_t rows, int64_t nnz, const char* op,
                              const std::string& rp, const std::string& cl) {
  if (rowptr.is_cpu()) {
    ++index_scans();
    const int64_t* p = rowptr.data_ptr<int64_t>();
    TORCH_CHECK(p[0] == 0, op, ": ", rp, "[0] must be 0, got ", p[0]);
    const int64_t i = first_bad(rows, [=](int64_t i) { return p[i + 1] < p[i]; });
    TORCH_CHECK(i == rows, op, ": ", rp, " must be non-decreasing, but ", rp, "[", i + 1, "] = ",
                p[i + 1], " < ", rp, "[", i, "] = ", p[i]);
    TORCH_CHECK(p[rows] == nnz, op, ": ", rp, "[-1] = ", p[rows], " but ", cl, " has ", nnz,
                " entries");
    return;
  }
  const auto first = rowptr.select(0, 0), last = rowptr.select(0, rows);
  const auto min_step = rows > 0 ? (rowptr.narrow(0, 1, rows) - rowptr.narrow(0, 0, rows)).min()
                                 : at::zeros({}, rowptr.options());
  if (checked_indices().contains(rowptr, rows, nnz)) {
    at::_assert_async(first.eq(0).logical_and(last.eq(nnz)).logical_and(min_step.ge(0)));
    return;
  }
  ++index_scans();
  const auto stats = at::stack({first, last, min_step}).cpu();
  const int64_t* s = stats.data_ptr<int64_t>();
  TORCH_CHECK(s[0] == 0, op, ": ", rp, "[0] must be 0, got ", s[0]);
  TORCH_CHECK(s[2] >= 0, op, ": ", rp, " must be non-decreasing");
  TORCH_CHECK(s[1] == nnz, op, ": ", rp, "[-1] = ", s[1], " but ", cl, " has ", nnz,
              " entries");
  checked_indices().insert(rowptr, rows, nnz);
}

// CSR with `rows` rows over columns [0, cols): rowptr (rows+1,), valid offsets (above), every
// column id in range.
inline void check_csr(const at::Tensor& rowptr, const at::Tensor& col, int64_t rows, int64_t cols,
                      const char* op, const char* name, const at::Device& device) {
  std::string rp = std::string(name) + "_rowptr", cl = std::string(name) + "_col";
  check_index(rowptr, op, rp.c_str(), rows + 1, device);
  check_index(col, op, cl.c_str(), -1, device);
  check_csr_offsets(rowptr, rows, col.numel(), op, rp, cl);
  check_range(col, cols, op, cl.c_str());
}

// Attention shapes: H % 4 == 0, 1 <= Dh <= 256; the relation CSR has 4N rows over N nodes.
inline void check_heads_and_relation(const char* op, int64_t n, int64_t h, int64_t dh,
                                     const at::Tensor& rel_rowptr, const at::Tensor& rel_col,
                                     const at::Device& device) {
  TORCH_CHECK(h > 0 && h % 4 == 0, op, ": the head count must be a positive multiple of 4, got ",
              h);
  TORCH_CHECK(dh >= 1 && dh <= 256, op, ": the head dim must lie in [1, 256], got ", dh);
  check_csr(rel_rowptr, rel_col, 4 * n, n, op, "rel", device);
}

// Attention inputs: q, k, v (N, H, Dh) of one dtype/device, contiguous.
inline void check_attention_inputs(const char* op, const at::Tensor& q, const at::Tensor& k,
                                   const at::Tensor& v, const at::Tensor& rel_rowptr,
                                   const at::Tensor& rel_col) {
  check_float(q, op, "q", 3, q);
  check_float(k, op, "k", 3, q);
  check_float(v, op, "v", 3, q);
  check_same_shape(q, k, op, "q", "k");
  check_same_shape(q, v, op, "q", "v");
  check_heads_and_relation(op, q.size(0), q.size(1), q.size(2), rel_rowptr, rel_col, q.device());
}

// Accumulation dtype of the float32 side outputs (lse, workspaces): float64 for float64 inputs.
inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// A contiguous (d,) tensor in dtype `want` on `device` (a bias, a LayerNorm weight, row
// statistics, the attention weights).
inline void check_vector(const at::Tensor& t, const char* op, const char* name, int64_t d, at::ScalarType want,
                         const at::Device& device) {
  TORCH_CHECK(t.defined() && t.scalar_type() == want && t.dim() == 1 && t.size(0) == d && t.is_contiguous() &&
                  t.device() == device,
              op, ": ", name, " must be a contiguous (", d, ",) ", want, " tensor on ", device, ", got ",
              t.defined() ? t.scalar_type() : at::kFloat, " of shape ", t.defined() ? t.sizes() : at::IntArrayRef{},
              " on ", t.defined() ? t.device() : device);
}

// The transposed-entry permutation (one index per relation entry) and dropout_p in [0, 1).
inline void check_tperm_and_dropout(const char* op, const at::Tensor& rel_tperm,
                                    const at::Tensor& rel_col, double dropout_p) {
  check_index(rel_tperm, op, "rel_tperm", rel_col.numel(), rel_col.device());
  TORCH_CHECK(dropout_p >= 0.0 && dropout_p < 1.0, op, ": dropout_p must lie in [0, 1), got ",
              dropout_p);
}

// dag_attention_fwd: the attention inputs, the transposed-entry permutation and dropout_p.
inline void check_attention_fwd_inputs(const char* op, const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& rel_rowptr,
                                       const at::Tensor& rel_col, const at::Tensor& rel_tperm,
                                       double dropout_p) {
  check_attention_inputs(op, q, k, v, rel_rowptr, rel_col);
  check_tperm_and_dropout(op, rel_tperm, rel_col, dropout_p);
}

// The backward's extra inputs: dout, out (N, H, Dh) like `like` (q, or a third of qkv) and
// lse (N, H) of the accumulation dtype; rel_tperm entries must index rel_col (the backward
// follows them).
inline void check_attention_bwd_extras(const char* op, const at::Tensor& like, const at::Tensor& dout,
                                       const at::Tensor& out, const at::Tensor& lse,
                                       const at::Tensor& rel_col, const at::Tensor& rel_tperm) {
  check_float(dout, op, "dout", 3, like);
  check_float(out, op, "out", 3, like);
  TORCH_CHECK(dout.sizes() == like.sizes(), op, ": dout must have shape ", like.sizes(), ", got ",
              dout.sizes());
  TORCH_CHECK(out.sizes() == like.sizes(), op, ": out must have shape ", like.sizes(), ", got ",
              out.sizes());
  const int64_t n = like.size(0), heads = like.size(1);
  const at::ScalarType want = acc_dtype(like.scalar_type());
  TORCH_CHECK(lse.scalar_type() == want && lse.dim() == 2 && lse.size(0) == n &&
                  lse.size(1) == heads && lse.is_contiguous() && lse.device() == like.device(),
              op, ": lse must be a contiguous (", n, ", ", heads, ") ", want, " tensor on ",
              like.device(), ", got ", lse.scalar_type(), " ", lse.sizes());
  check_range(rel_tperm, rel_col.numel(), op, "rel_tperm");
}

// dag_attention_qkv_fwd: qkv (N, 3, H, Dh) contiguous (the qkv Linear's output, viewed), the
// transposed-entry permutation and dropout_p.
inline void check_attention_qkv_fwd_inputs(const char* op, const at::Tensor& qkv,
                                           const at::Tensor& rel_rowptr, const at::Tensor& rel_col,
                                           const at::Tensor& rel_tperm, double dropout_p) {
  check_float(qkv, op, "qkv", 4, qkv);
  TORCH_CHECK(qkv.size(1) == 3, op, ": qkv must have shape (N, 3, H, Dh), got ", qkv.sizes());
  check_heads_and_relation(op, qkv.size(0), qkv.size(2), qkv.size(3), rel_rowptr, rel_col,
                           qkv.device());
  check_tperm_and_dropout(op, rel_tperm, rel_col, dropout_p);
}

// dag_attention_bwd: the forward's inputs plus dout, out and lse.
inline void check_attention_bwd_inputs(const char* op, const at::Tensor& dout, const at::Tensor& q,
                                       const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor& out, const at::Tensor& lse,
                                       const at::Tensor& rel_rowptr, const at::Tensor& rel_col,
                                       const at::Tensor& rel_tperm, double dropout_p) {
  check_attention_fwd_inputs(op, q, k, v, rel_rowptr, rel_col, rel_tperm, dropout_p);
  check_attention_bwd_extras(op, q, dout, out, lse, rel_col, rel_tperm);
}

// dag_attention_qkv_bwd: the forward's inputs plus dout, out and lse, shaped like one third of qkv.
inline void check_attention_qkv_bwd_inputs(const char* op, const at::Tensor& dout,
                                           const at::Tensor& qkv, const at::Tensor& out,
                                           const at::Tensor& lse,
                                           const at::Tensor& rel_rowptr, const at::Tensor& rel_col,
                                           const at::Tensor& rel_tperm, double dropout_p) {
  check_attention_qkv_fwd_inputs(op, qkv, rel_rowptr, rel_col, rel_tperm, dropout_p);
  check_attention_bwd_extras(op, qkv.select(1, 0), dout, out, lse, rel_col, rel_tperm);
}

// The adjacency CSRs and the optional (M,) biases of a bigin op whose node rows are like
// ``rows`` (N, M), M even.
inline void check_bigin_graph(const char* op, const at::Tensor& rows, const at::Tensor& adj_rowptr,
                              const at::Tensor& adj_col, const at::Tensor& adjt_rowptr,
                              const at::Tensor& adjt_col, const c10::optional<at::Tensor>& bias_h,
                              const c10::optional<at::Tensor>& bias_g) {
  TORCH_CHECK(rows.size(1) % 2 == 0, op, ": the width M must be even, got ", rows.size(1));
  const int64_t n = rows.size(0);
  check_csr(adj_rowptr, adj_col, n, n, op, "adj", rows.device());
  check_csr(adjt_rowptr, adjt_col, n, n, op, "adjt", rows.device());
  const at::ScalarType acc = acc_dtype(rows.scalar_type());
  if (bias_h) check_vector(*bias_h, op, "bias_h", rows.size(1), acc, rows.device());
  if (bias_g) check_vector(*bias_g, op, "bias_g", rows.size(1), acc, rows.device());
}

inline void check_bigin_inputs(const char* op, const at::Tensor& h, const at::Tensor& g,
                               const at::Tensor& adj_rowptr, const at::Tensor& adj_col,
                               const at::Tensor& adjt_rowptr, const at::Tensor& adjt_col,
                               const c10::optional<at::Tensor>& bias_h,
                               const c10::optional<at::Tensor>& bias_g) {
  check_float(h, op, "h", 2, h);
  check_float(g, op, "g", 2, h);
  check_same_shape(h, g, op, "h", "g");
  check_bigin_graph(op, h, adj_rowptr, adj_col, adjt_rowptr, adjt_col, bias_h, bias_g);
}

// The gradient of an optional (M,) bias: (M,) in the accumulation type of h, or (0,) without one.
inline at::Tensor bias_grad_like(const c10::optional<at::Tensor>& bias, const at::Tensor& h) {
  return at::empty({bias ? h.size(1) : 0}, h.options().dtype(acc_dtype(h.scalar_type())));
}

inline Act parse_act(const std::string& s, const char* op) {
  if (s == "relu") return Act::kRelu;
  if (s == "leaky_relu") return Act::kLeakyRelu;
  if (s == "gelu") return Act::kGelu;
  if (s == "square_relu") return Act::kSquareRelu;
  TORCH_CHECK(false, op, ": unknown activation '", s,
              "'; expected relu, leaky_relu, gelu or square_relu");
}

}  // namespace nnff
