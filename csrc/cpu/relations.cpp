// The four relation CSRs (docs/DESIGN.md: the four relations) built in C++ (graph.py's _relations is the Python twin):
// for mask edges sorted by (src, dst) and deduplicated, row r*N + i lists, sorted, the
// children (r=0), parents (r=1), siblings (r=2) or co-parents (r=3) of i, plus i itself.
// Two parallel passes over rows (count, then fill) with a per-task marker array, so no
// (N, N) intermediate and no global sort.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../checks.h"
#include "../common.h"

namespace nnff {
namespace cpu {
namespace {

struct Csr {
  std::vector<int64_t> rowptr, col;
};

Csr make_csr(const int64_t* rows, const int64_t* cols, int64_t e, int64_t n) {
  Csr c;
  c.rowptr.assign(n + 1, 0);
  for (int64_t k = 0; k < e; ++k) c.rowptr[rows[k] + 1]++;
  for (int64_t i = 0; i < n; ++i) c.rowptr[i + 1] += c.rowptr[i];
  c.col.resize(e);
  std::vector<int64_t> fill(c.rowptr.begin(), c.rowptr.end() - 1);
  for (int64_t k = 0; k < e; ++k) c.col[fill[rows[k]]++] = cols[k];
  for (int64_t i = 0; i < n; ++i) std::sort(c.col.begin() + c.rowptr[i], c.col.begin() + c.rowptr[i + 1]);
  return c;
}

// Row i of relation r into `out` (sorted, unique); `mark` is a per-task stamp array.
void relation_row(int r, int64_t i, const Csr& ch, const Csr& pa, std::vector<int64_t>& mark,
                  int64_t stamp, std::vector<int64_t>& out) {
  out.clear();
  auto push = [&](int64_t j) {
    if (mark[j] != stamp) {
      mark[j] = stamp;
      out.push_back(j);
    }
  };
  push(i);
  if (r == 0) {
    for (int64_t e = ch.rowptr[i]; e < ch.rowptr[i + 1]; ++e) push(ch.col[e]);
  } else if (r == 1) {
    for (int64_t e = pa.rowptr[i]; e < pa.rowptr[i + 1]; ++e) push(pa.col[e]);
  } else {
    const Csr& up = r == 2 ? pa : ch;    // sib: via parents; cop: via children
    const Csr& down = r == 2 ? ch : pa;  // then back down to their children / parents
    for (int64_t e = up.rowptr[i]; e < up.rowptr[i + 1]; ++e) {
      const int64_t p = up.col[e];
      for (int64_t f = down.rowptr[p]; f < down.rowptr[p + 1]; ++f) push(down.col[f]);
    }
  }
  std::sort(out.begin(), out.end());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> build_relations_cpu(
    const at::Tensor& src_in, const at::Tensor& dst_in, int64_t n) {
  const char* op = "nnformer_fast::build_relations";
  TORCH_CHECK(n >= 0, op, ": num_nodes must be >= 0, got ", n);
  check_index(src_in, op, "src", -1, src_in.device());
  check_index(dst_in, op, "dst", src_in.numel(), src_in.device());
  TORCH_CHECK(src_in.is_cpu(), op, ": runs on CPU tensors");
  check_range(src_in, n, op, "src");
  check_range(dst_in, n, op, "dst");
  const int64_t e = src_in.numel();
  const int64_t* src = src_in.data_ptr<int64_t>();
  const int64_t* dst = dst_in.data_ptr<int64_t>();
  const Csr ch = make_csr(src, dst, e, n), pa = make_csr(dst, src, e, n);
  const int64_t rows = 4 * n;
  auto rowptr_t = at::empty({rows + 1}, src_in.options());
  int64_t* rowptr = rowptr_t.data_ptr<int64_t>();
  rowptr[0] = 0;
  const int64_t grain = 256;
  at::parallel_for(0, rows, grain, [&](int64_t b, int64_t end) {
    std::vector<int64_t> mark(n, -1), out;
    for (int64_t row = b; row < end; ++row) {
      relation_row(static_cast<int>(row / n), row % n, ch, pa, mark, row, out);
      rowptr[row + 1] = static_cast<int64_t>(out.size());
    }
  });
  for (int64_t row = 0; row < rows; ++row) rowptr[row + 1] += rowptr[row];
  const int64_t total = rowptr[rows];
  auto col_t = at::empty({total}, src_in.options());
  auto row_t = at::empty({total}, src_in.options());
  auto tperm_t = at::empty({total}, src_in.options());
  int64_t* col = col_t.data_ptr<int64_t>();
  int64_t* rowid = row_t.data_ptr<int64_t>();
  at::parallel_for(0, rows, grain, [&](int64_t b, int64_t end) {
    std::vector<int64_t> mark(n, -1), out;
    for (int64_t row = b; row < end; ++row) {
      relation_row(static_cast<int>(row / n), row % n, ch, pa, mark, row, out);
      std::copy(out.begin(), out.end(), col + rowptr[row]);
      std::fill(rowid + rowptr[row], rowid + rowptr[row + 1], row % n);
    }
  });
  int64_t* tperm = tperm_t.data_ptr<int64_t>();
  at::parallel_for(0, rows, grain, [&](int64_t b, int64_t end) {
    for (int64_t row = b; row < end; ++row) {
      const int64_t r = row / n, i = row % n;
      const int64_t tbase = transposed_relation(static_cast<int>(r)) * n;
      for (int64_t k = rowptr[row]; k < rowptr[row + 1]; ++k) {
        const int64_t j = col[k];
        const int64_t* lo = col + rowptr[tbase + j];
        const int64_t* hi = col + rowptr[tbase + j + 1];
        const int64_t* it = std::lower_bound(lo, hi, i);
        TORCH_CHECK(it != hi && *it == i, op, ": relation ", r, " is not closed under transpose");
        tperm[k] = it - col;
      }
    }
  });
  auto offsets = at::empty({5}, src_in.options());
  for (int64_t r = 0; r <= 4; ++r) offsets.data_ptr<int64_t>()[r] = rowptr[r * n];
  return {rowptr_t, col_t, row_t, tperm_t, offsets};
}

}  // namespace
}  // namespace cpu
}  // namespace nnff

TORCH_LIBRARY_IMPL(nnformer_fast, CPU, m) {
  m.impl("build_relations", &nnff::cpu::build_relations_cpu);
}
