"""No backend reads out of bounds, whatever is written into a graph's index tensors.

A write through ``.numpy()`` or ``.data`` does not bump a tensor's version counter, so a check
remembered by identity and version would trust the changed values. Each case runs an op once
(any remembered check is made), writes an out-of-range value through such a view, runs the op
again and expects a RuntimeError. Each runs in a child process: a segfault fails the case
instead of ending pytest.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import sys
    import torch
    from nnformer_fast import ops, testing

    op, field, view, value, when = sys.argv[1:]
    graph = testing.random_batch([7, 5, 9], seed=1)
    n = graph.num_nodes
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(n, 4, 8, generator=gen, requires_grad=True) for _ in range(3))
    h, g = (torch.randn(n, 6, generator=gen, requires_grad=True) for _ in range(2))

    def run():
        if op == "dag_attention":
            return ops.dag_attention(q, k, v, graph)
        if op == "dag_attention_qkv":
            return ops.dag_attention_qkv(torch.stack([q, k, v], 1), graph)
        return ops.bigin(h, g, graph)

    def corrupt():
        t = getattr(graph, field)
        target = t.numpy() if view == "numpy" else t.data
        target[len(t) // 2] = int(value)

    out = run()
    corrupt()
    try:
        if when == "before backward":
            out.sum().backward()
        else:
            run()
    except RuntimeError as exc:
        print("RuntimeError:", exc)
        sys.exit(0)
    except Exception as exc:
        print(f"{type(exc).__name__}: {exc}")
        sys.exit(3)
    print("no error")
    sys.exit(4)
""")

BIG = str(10**9)
CASES = {  # op, field, written through, value, written before
    "rel_col via numpy": ("dag_attention", "rel_col", "numpy", BIG, "next call"),
    "rel_col via .data": ("dag_attention", "rel_col", "data", "-3", "next call"),
    "rel_rowptr via numpy": ("dag_attention", "rel_rowptr", "numpy", BIG, "next call"),
    "rel_col, packed qkv": ("dag_attention_qkv", "rel_col", "numpy", BIG, "next call"),
    "rel_col before backward": ("dag_attention", "rel_col", "numpy", BIG, "before backward"),
    "rel_tperm before backward": ("dag_attention", "rel_tperm", "numpy", BIG, "before backward"),
    "rel_col, packed qkv, before backward": ("dag_attention_qkv", "rel_col", "data", BIG, "before backward"),
    "adj_col via numpy": ("bigin", "adj_col", "numpy", BIG, "next call"),
    "adjt_col via .data": ("bigin", "adjt_col", "data", BIG, "next call"),
    "adj_rowptr via numpy": ("bigin", "adj_rowptr", "numpy", BIG, "next call"),
    "adjt_col before backward": ("bigin", "adjt_col", "numpy", BIG, "before backward"),
}


def _run_child(backend: str, case: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NNFORMER_FAST_BACKEND=backend)
    if backend == "triton":
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, "-c", CHILD, *CASES[case]], env=env, capture_output=True,
                          text=True, timeout=300)


def _assert_raised(proc: subprocess.CompletedProcess) -> None:
    said = (proc.stdout + proc.stderr).strip()[-2000:]
    if proc.returncode < 0:
        pytest.fail(f"the child died of signal {-proc.returncode}:\n{said}")
    if proc.returncode != 0:
        pytest.fail(f"expected a RuntimeError, got exit {proc.returncode}:\n{said}")


@pytest.mark.parametrize("case", CASES)
def test_native_kernels_refuse_indices_written_behind_the_version_counter(case):
    from nnformer_fast.ops import native

    if native.LOAD_ERROR is not None:
        pytest.skip(f"native backend unavailable: {native.LOAD_ERROR}")
    _assert_raised(_run_child("native", case))


@pytest.mark.parametrize("case", ["rel_col via numpy", "rel_rowptr via numpy", "adjt_col via .data"])
def test_torch_backend_refuses_indices_written_behind_the_version_counter(case):
    _assert_raised(_run_child("torch", case))


@pytest.mark.parametrize("case", ["rel_col via numpy", "rel_tperm before backward", "rel_col, packed qkv, before backward",
                                  "adjt_col before backward"])
def test_triton_backend_refuses_indices_written_behind_the_version_counter(case):
    pytest.importorskip("triton")
    _assert_raised(_run_child("triton", case))


@pytest.mark.parametrize("seed", range(6))
def test_device_side_check_agrees_with_the_scan(seed):
    """On a GPU a remembered index tensor is checked again by ``_valid_on_device`` (a
    device-side assert, no sync). Here, on the CPU, it must accept exactly what the host scan
    accepts, over random corruptions of each tensor kind."""
    import torch

    from nnformer_fast.ops import checks
    from nnformer_fast.testing import random_batch

    gen = torch.Generator().manual_seed(seed)
    graph = random_batch([6, 9, 1], seed=seed)
    n, nnz = graph.num_nodes, graph.rel_col.numel()
    for field in ("rel_rowptr", "rel_col", "rel_tperm"):
        t = getattr(graph, field).clone()
        i = int(torch.randint(0, t.numel(), (), generator=gen))
        t[i] = int(torch.randint(-2, nnz + 3, (), generator=gen))
        csr = {"rel_rowptr": graph.rel_rowptr, "rel_col": graph.rel_col, field: t}
        try:
            checks.check_csr_indices("op", t.device, n, [("rel", csr["rel_rowptr"], csr["rel_col"], None, 4 * n)],
                                     t if field == "rel_tperm" else graph.rel_tperm)
            scan_ok = True
        except RuntimeError:
            scan_ok = False
        kind, bound = {"rel_rowptr": ("rowptr", (4 * n, nnz)), "rel_col": ("range", n),
                       "rel_tperm": ("range", nnz)}[field]
        assert bool(checks._valid_on_device(kind, t, bound)) == scan_ok, (field, i, int(t[i]))
