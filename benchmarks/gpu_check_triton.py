"""GPU check of the Triton kernels: correctness against the reference, then timings against
the other backends (native CUDA C++, PyTorch) and the dense formulation, and the achieved
memory bandwidth of ``bigin`` beside a device-to-device copy measured in the same run.

``benchmarks/gpu_check.py`` imports :func:`triton_rows` and appends its rows to its table;
run alone (``python benchmarks/gpu_check_triton.py``) it prints the table and the card.
Needs CUDA and triton; takes well under 5 minutes on an H100 (first-call autotuning included).

Issue 4 targets (16 graphs x 600 nodes, H=4, Dh=128, bf16): dag_attention forward+backward
>= 10x the PyTorch backend and >= 20x the dense formulation; bigin >= 50% of copy bandwidth.
"""
from __future__ import annotations

import sys
from typing import Callable

import torch

ATTN_SHAPE = dict(graphs=16, nodes=600, heads=4, head_dim=128)
BIGIN_WIDTH = 768  # M = mlp_ratio 4 x dim 192


def _bench(fn: Callable[[], object]) -> float:
    """Median milliseconds of ``fn`` (triton.testing.do_bench, L2 flushed between runs)."""
    from triton.testing import do_bench
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def _copy_bandwidth(device) -> float:
    """GB/s of a 256 MiB device-to-device copy (bytes read + bytes written)."""
    src = torch.empty(64 * 2**20, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = _bench(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / ms / 1e6


# ------------------------------------------------------------------------------- correctness
def _correctness_rows(device) -> list[dict]:
    from nnformer_fast.ops import reference
    from nnformer_fast.testing import FAMILIES, TOLERANCES, family_batch, low_precision_error_ok
    from nnformer_fast.triton import bigin as tbigin
    from nnformer_fast.triton import dag_attention as tattn

    rows = []
    for family in sorted(FAMILIES):
        graph = family_batch(family).to(device)
        n = graph.num_nodes
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            for op in ("dag_attention", "bigin"):
                gen = torch.Generator().manual_seed(0)
                shape = (n, 8, 59) if op == "dag_attention" else (n, 2 * 97)  # odd sizes
                ins = [torch.randn(shape, generator=gen, dtype=torch.float64).to(device, dtype).requires_grad_()
                       for _ in range(3 if op == "dag_attention" else 2)]
                exact_ins = [t.detach().double().requires_grad_() for t in ins]
                go = torch.randn(shape, generator=gen, dtype=torch.float64).to(device)
                kw = dict(dropout_p=0.2, seed=11) if op == "dag_attention" else dict(act="gelu")
                kern = getattr(tattn if op == "dag_attention" else tbigin, op)
                ref = getattr(reference, op)

                def run(fn, xs, grad):
                    out = fn(*xs, graph, **kw)
                    return [out, *torch.autograd.grad(out, xs, grad.to(out.dtype))]

                got, exact = run(kern, ins, go), run(ref, exact_ins, go)
                ok, worst = True, 0.0
                try:
                    if dtype in (torch.float32, torch.float64):
                        atol, rtol = TOLERANCES[dtype]
                        for a, b in zip(got, exact):
                            err = ((a.double() - b).abs() - rtol * b.abs()).max().item()
                            worst = max(worst, (a.double() - b).abs().max().item())
                            ok &= err <= atol
                    else:
                        plain = run(ref, ins, go)
                        for a, p, b in zip(got, plain, exact):
                            worst = max(worst, (a.double() - b).abs().max().item())
                            low_precision_error_ok(a, p, b, floor=TOLERANCES[dtype][0] / 4)
                except AssertionError:
                    ok = False
                rows.append(dict(section="triton correctness", name=f"{op} {family}", dtype=str(dtype)[6:],
                                 ms=None, ratio=None, gbps=None, ok=bool(ok), note=f"max err {worst:.2e}"))
    return rows


# ------------------------------------------------------------------------------- timings
def _attention_rows(device, dtype=torch.bfloat16) -> list[dict]:
    from nnformer_fast.dense import dense_dag_attention
    from nnformer_fast.ops.backends import _REGISTRY
    from nnformer_fast.testing import random_batch

    b, l, h, dh = ATTN_SHAPE["graphs"], ATTN_SHAPE["nodes"], ATTN_SHAPE["heads"], ATTN_SHAPE["head_dim"]
    rows = []
    for label, global_token in (("CNN-like DAGs", False), ("with global tokens", True)):
        graph = random_batch([l] * b, avg_degree=2.0, seed=0, max_span=12, global_token=global_token).to(device)
        n = graph.num_nodes
        gen = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(n, h, dh, generator=gen).to(device, dtype).requires_grad_() for _ in range(3))
        go = torch.randn(n, h, dh, generator=gen).to(device, dtype)
        src = graph.mask_edge_index if graph.mask_edge_index is not None else graph.edge_index
        mask = torch.zeros(b, l, l, device=device)
        mask.view(-1)[(src[0] // l) * l * l + (src[0] % l) * l + src[1] % l] = 1.0

        def fwd_bwd(fn):
            def step():
                out = fn()
                torch.autograd.grad(out, (q, k, v), go)
            return step

        cases = {}
        for name in ("triton", "native", "torch"):
            backend = _REGISTRY.get(name)
            if backend is None or backend.reasons("dag_attention", q, k, v):
                continue
            op = backend.ops["dag_attention"]
            cases[name] = fwd_bwd(lambda op=op: op(q, k, v, graph, dropout_p=0.0, scale=None, seed=0))
        cases["dense"] = fwd_bwd(lambda: dense_dag_attention(q.view(b, l, h, dh), k.view(b, l, h, dh),
                                                             v.view(b, l, h, dh), mask).reshape(n, h, dh))
        times = {name: _bench(fn) for name, fn in cases.items()}
        base = times.get("triton")
        for name, ms in times.items():
            rows.append(dict(section="dag_attention fwd+bwd", name=f"{name} ({label})", dtype=str(dtype)[6:], ms=ms,
                             ratio=(ms / base) if base else None, gbps=None, ok=None,
                             note=f"{b}x{l} nodes, H={h}, Dh={dh}, {graph.rel_col.numel()} relation entries"
                                  + ("; target >= 10x torch, >= 20x dense" if name == "triton" and not global_token
                                     else "")))
    return rows


def _bigin_rows(device, copy_gbps: float, dtype=torch.bfloat16) -> list[dict]:
    from nnformer_fast.dense import dense_bigin
    from nnformer_fast.ops.backends import _REGISTRY
    from nnformer_fast.testing import random_batch

    b, l = ATTN_SHAPE["graphs"], ATTN_SHAPE["nodes"]
    graph = random_batch([l] * b, avg_degree=2.0, seed=0, max_span=12).to(device)
    n, m = graph.num_nodes, BIGIN_WIDTH
    gen = torch.Generator().manual_seed(2)
    hx, g = (torch.randn(n, m, generator=gen).to(device, dtype).requires_grad_() for _ in range(2))
    dy = torch.randn(n, m, generator=gen).to(device, dtype)
    adj = torch.zeros(b, l, l, device=device, dtype=dtype)
    src, dst = graph.edge_index
    adj.view(-1)[(src // l) * l * l + (src % l) * l + dst % l] = 1.0
    elt = hx.element_size()
    idx_bytes = 2 * 8 * (graph.num_edges + n + 1)
    # ideal traffic: forward reads h, g and writes y; backward reads dy, h, g, writes dh, then
    # reads dh and writes dg (neighbour rows re-read from cache count once)
    bytes_fwd = 3 * n * m * elt + idx_bytes
    bytes_bwd = 6 * n * m * elt + 2 * idx_bytes

    rows = []
    for name in ("triton", "native", "torch", "dense"):
        if name == "dense":
            def fn(): return dense_bigin(hx.view(b, l, m), g.view(b, l, m), adj, act="relu").view(n, m)
        else:
            backend = _REGISTRY.get(name)
            if backend is None or backend.reasons("bigin", hx, g):
                continue
            op = backend.ops["bigin"]
            def fn(op=op): return op(hx, g, graph, act="relu")
        with torch.no_grad():
            ms_f = _bench(fn)
        y = fn()
        ms_b = _bench(lambda: torch.autograd.grad(y, (hx, g), dy, retain_graph=True))
        for what, ms, nbytes in (("fwd", ms_f, bytes_fwd), ("bwd", ms_b, bytes_bwd)):
            gbps = nbytes / ms / 1e6
            rows.append(dict(section=f"bigin {what}", name=name, dtype=str(dtype)[6:], ms=ms, ratio=None, gbps=gbps,
                             ok=None, note=f"N={n}, M={m}; {100 * gbps / copy_gbps:.0f}% of copy ({copy_gbps:.0f} GB/s)"
                                           + ("; target >= 50%" if name == "triton" else "")))
    return rows


def triton_rows(device: str = "cuda", *, correctness: bool = True) -> list[dict]:
    """Rows for gpu_check.py's table: dicts with section, name, dtype, ms, ratio (time /
    triton time), gbps, ok (correctness), note. Raises RuntimeError without CUDA or Triton."""
    if not torch.cuda.is_available():
        raise RuntimeError("gpu_check_triton needs a CUDA device")
    import nnformer_fast.triton as tbackend
    if not tbackend.available:
        raise RuntimeError(f"triton backend unavailable: {tbackend.load_error}")
    torch.backends.cuda.matmul.allow_tf32 = False
    copy_gbps = _copy_bandwidth(device)
    rows = [dict(section="copy", name="device-to-device copy", dtype="float32", ms=None, ratio=None, gbps=copy_gbps,
                 ok=None, note="256 MiB, read + write")]
    if correctness:
        rows += _correctness_rows(device)
    rows += _attention_rows(device)
    rows += _bigin_rows(device, copy_gbps)
    return rows


def format_rows(rows: list[dict]) -> str:
    """Markdown table of ``rows``."""
    def f(x, spec):
        return "" if x is None else format(x, spec)
    lines = ["| section | name | dtype | ms | x triton | GB/s | ok | note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "**NO**")
        lines.append(f"| {r['section']} | {r['name']} | {r['dtype']} | {f(r['ms'], '.3f')} | {f(r['ratio'], '.1f')} "
                     f"| {f(r['gbps'], '.0f')} | {ok} | {r['note']} |")
    return "\n".join(lines)


def main() -> int:
    rows = triton_rows()
    print(f"card: {torch.cuda.get_device_name()}  torch {torch.__version__}")
    print(format_rows(rows))
    failed = [r for r in rows if r["ok"] is False]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
