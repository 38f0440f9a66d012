"""The Triton backend against the reference (float64 oracle), on the CPU interpreter in CI.

Runs with ``TRITON_INTERPRET=1`` set before ``nnformer_fast`` is imported (tests/conftest.py
does it when there is no GPU), or on CUDA. The interpreter is slow (its cost is per program
and per op), so shapes are small: Dh 8-12, 4 or 8 heads. The whole file stays under a minute
on two cores.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():
    # only effective when nothing imported nnformer_fast before (conftest normally sets it)
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import nnformer_fast.ops as ops  # noqa: E402
import nnformer_fast.triton as tbackend  # noqa: E402
from nnformer_fast.ops import reference  # noqa: E402
from nnformer_fast.ops.backends import _REGISTRY, ENV_VAR, select  # noqa: E402
from nnformer_fast.testing import (assert_close, family_batch,  # noqa: E402
                                   )

if not tbackend.available:
    pytest.skip(f"triton backend unavailable: {tbackend.load_error}", allow_module_level=True)
if not tbackend.INTERPRET and not torch.cuda.is_available():
    pytest.skip("no GPU and TRITON_INTERPRET=1 was not set before nnformer_fast was imported",
                allow_module_level=True)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from nnformer_fast.triton import bigin as tbigin  # noqa: E402
from nnformer_fast.triton._common import _dropout_keep, dropout_threshold, seed_salt  # noqa: E402
from nnformer_fast.triton import dag_attention as tattn  # noqa: E402

DEVICE = "cpu" if tbackend.INTERPRET else "cuda"


def _graph(name):
    return family_batch(name).to(DEVICE)


def _qkv(n, h, dh, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, h, dh, generator=gen, dtype=torch.float64).to(DEVICE, dtype).requires_grad_()
            for _ in range(3)]


def _hg(n, m, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, m, generator=gen, dtype=torch.float64).to(DEVICE, dtype).requires_grad_()
            for _ in range(2)]


# ------------------------------------------------------------------------------- dropout hash
@triton.jit
def _keep_kernel(ENTRY, OUT, n, head, num_heads, salt, threshold, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    e = tl.load(ENTRY + offs, mask=offs < n, other=0)
    tl.store(OUT + offs, _dropout_keep(e, head, num_heads, salt, threshold).to(tl.int8), mask=offs < n)


def test_dropout_hash_bit_exact():
    """The kernel-side hash equals ``reference.dropout_keep_mask`` on entries past 2**32 / H
    (where ``entry * H + h`` wraps) and on seeds whose salt has the top bit set."""
    entries = torch.tensor([0, 1, 2, 1000, 2**30 + 3, 2**32 // 8 + 1, 2**33 + 17, 2**40 + 12345], device=DEVICE)
    for seed in (0, 123, 2**31 + 1, -1):
        for p in (0.1, 0.5, 0.9):
            for head in (0, 5):
                out = torch.empty(entries.numel(), dtype=torch.int8, device=DEVICE)
                _keep_kernel[(1,)](entries, out, entries.numel(), head, 8, seed_salt(seed), dropout_threshold(p),
                                   BLOCK=8)
                ref = reference.dropout_keep_mask(seed, entries[:, None], torch.tensor([[head]], device=DEVICE), 8, p)
                assert torch.equal(out.bool(), ref[:, 0]), (seed, p, head)


# ------------------------------------------------------------------------------- registration
def test_forced_backend_and_public_ops(monkeypatch):
    graph = _graph("diamond")
    q, k, v = _qkv(graph.num_nodes, 4, 8, torch.float32)
    h, g = _hg(graph.num_nodes, 8, torch.float32)
    monkeypatch.setenv(ENV_VAR, "triton")
    assert select("dag_attention", q, k, v).name == "triton"
    assert select("bigin", h, g).name == "triton"
    assert_close(ops.dag_attention(q, k, v, graph), reference.dag_attention(q, k, v, graph), atol=2e-5, rtol=2e-5)
    assert_close(ops.bigin(h, g, graph), reference.bigin(h, g, graph), atol=2e-5, rtol=2e-5)
    # too large a head dim: the forced backend refuses with its reason
    big = torch.zeros(graph.num_nodes, 4, 300, device=DEVICE)
    with pytest.raises(RuntimeError, match="head dim 300"):
        ops.dag_attention(big, big, big, graph)


def test_never_chosen_automatically_on_cpu(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    x = torch.zeros(3, 4, 8)
    assert select("dag_attention", x, x, x).name != "triton"
    monkeypatch.setattr(tbackend, "INTERPRET", False)
    assert any("TRITON_INTERPRET" in r for r in _REGISTRY["triton"].reasons("dag_attention", x, x, x))


def test_opcheck_and_compile():
    """``torch.library.opcheck`` on every op (schema, fake, autograd registration) and a
    ``torch.compile(fullgraph=True)`` trace through both ops (aot_eager: no graph breaks)."""
    graph = _graph("diamond")
    q, k, v = _qkv(graph.num_nodes, 4, 8, torch.float32)
    h, g = _hg(graph.num_nodes, 8, torch.float32)
    tests = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(tattn.dag_attention_fwd,
                          (q, k, v, graph.rel_rowptr, graph.rel_col, graph.rel_tperm, 0.0, 0.35, 0),
                          test_utils=tests)
    torch.library.opcheck(tbigin.bigin_fwd, (h, g, graph.adj_rowptr, graph.adj_col, graph.adjt_rowptr,
                                             graph.adjt_col, "gelu"), test_utils=tests)

    def block(q, k, v, h, g):
        a = tattn.dag_attention(q, k, v, graph)
        return a.sum() + tbigin.bigin(h, g, graph, act="relu").sum()

    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    loss = compiled(q, k, v, h, g)
    loss.backward()
    assert q.grad is not None and g.grad is not None
    assert torch.allclose(loss, block(q, k, v, h, g), atol=1e-5)


def test_imports_without_triton():
    """With triton unimportable the package still imports and the backend says why."""
    code = ("import sys; sys.modules['triton'] = None\n"
            "import nnformer_fast.ops as o\n"
            "print(o.backends()['triton'])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert res.returncode == 0, res.stderr
    assert "triton is not installed" in res.stdout
