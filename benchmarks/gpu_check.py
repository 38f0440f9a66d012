"""GPU check of the native CUDA ops, in one run (< 5 minutes on one GPU).

    python benchmarks/gpu_check.py [--no-build]

1. builds the extension with the CUDA kernels (``NNFF_CUDA=1 pip install --no-build-isolation
   -e .``) unless ``nnformer_fast.build_info()`` already reports CUDA kernels;
2. checks dag_attention / bigin (forward + backward, fp32 / bf16 / fp16, dropout) and dropout
   (bit-exact) against the reference on the GPU;
3. times forward+backward of native vs the torch backend vs the dense formulation
   (``nnformer_fast.dense``) on the latency and accuracy shapes and prints a table.
Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_if_needed(skip: bool) -> None:
    import nnformer_fast
    info = nnformer_fast.build_info()
    if info["cuda"] or skip:
        return
    print("building the CUDA extension ...", flush=True)
    env = dict(os.environ, NNFF_CUDA="1", NNFF_CUDA_ARCHS=os.environ.get("NNFF_CUDA_ARCHS", "90"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-build-isolation", "-e", str(ROOT), "-q"],
                   check=True, env=env)
    # a fresh interpreter picks up the new extension
    os.execv(sys.executable, [sys.executable, __file__, "--no-build"])


def bench(fn, reps: int = 20) -> float:
    import torch
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    build_if_needed(args.no_build)

    import torch
    import nnformer_fast
    from nnformer_fast import testing
    from nnformer_fast.ops import native, reference

    info = nnformer_fast.build_info()
    print("build:", info)
    if not torch.cuda.is_available() or not info["cuda"]:
        print("no CUDA device or no CUDA kernels: nothing to check")
        return 1
    dev = torch.device("cuda")
    print("device:", torch.cuda.get_device_name(0))
    failures = []

    # ------------------------------------------------------------------ correctness
    for fam in sorted(testing.FAMILIES):
        graph = testing.FAMILIES[fam]().to(dev)
        n = graph.num_nodes
        for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
            for dh in (59, 64):
                for p in (0.0, 0.3):
                    q, k, v = [torch.randn(n, 8, dh, device=dev).to(dtype).requires_grad_() for _ in range(3)]
                    dout = torch.randn(n, 8, dh, device=dev).to(dtype)
                    o = native.dag_attention(q, k, v, graph, dropout_p=p, seed=5)
                    res = (o, *torch.autograd.grad(o, (q, k, v), dout))
                    ex = [t.detach().double().requires_grad_() for t in (q, k, v)]
                    oe = reference.dag_attention(*ex, graph, dropout_p=p, seed=5)
                    exact = (oe, *torch.autograd.grad(oe, ex, dout.double()))
                    try:
                        if dtype in (torch.float16, torch.bfloat16):
                            pl = [t.detach().clone().requires_grad_() for t in (q, k, v)]
                            op = reference.dag_attention(*pl, graph, dropout_p=p, seed=5)
                            plain = (op, *torch.autograd.grad(op, pl, dout))
                            for a, b, c in zip(res, plain, exact):
                                testing.low_precision_error_ok(a, b, c, floor=1e-3)
                        else:
                            atol, rtol = testing.TOLERANCES[dtype]
                            for a, c in zip(res, exact):
                                testing.assert_close(a, c, atol=atol * 5, rtol=rtol * 5, name="attn")
                    except AssertionError as exc:
                        failures.append(f"attention {fam} {dtype} dh={dh} p={p}: {exc}")
            for act in reference.ACTIVATIONS:
                h, g = [torch.randn(n, 46, device=dev).to(dtype).requires_grad_() for _ in range(2)]
                dy = torch.randn(n, 46, device=dev).to(dtype)
                y = native.bigin(h, g, graph, act=act)
                res = (y, *torch.autograd.grad(y, (h, g), dy))
                ex = [t.detach().double().requires_grad_() for t in (h, g)]
                ye = reference.bigin(*ex, graph, act=act)
                exact = (ye, *torch.autograd.grad(ye, ex, dy.double()))
                try:
                    tol = 5e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-4
                    for a, c in zip(res, exact):
                        testing.assert_close(a, c, atol=tol, rtol=tol, name="bigin")
                except AssertionError as exc:
                    failures.append(f"bigin {fam} {dtype} {act}: {exc}")
    # counter-based elementwise dropout: bit-exact with the reference, gradient included
    # (finite normal inputs: --use_fast_math flushes subnormal products to zero on the GPU)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        for p in (0.1, 0.5, 0.9):
            for seed in (12345, -7, 2**40 + 3):
                x = torch.randn(1000, 37, device=dev).to(dtype).requires_grad_()
                dy = torch.randn(1000, 37, device=dev).to(dtype)
                y = native.dropout(x, p, seed=seed)
                res = (y, *torch.autograd.grad(y, x, dy))
                xr = x.detach().requires_grad_()
                yr = reference.dropout(xr, p, seed=seed)
                exp = (yr, *torch.autograd.grad(yr, xr, dy))
                if not all(torch.equal(a, b) for a, b in zip(res, exp)):
                    failures.append(f"dropout {dtype} p={p} seed={seed}: not bit-exact with the reference")
    print(f"correctness: {'OK' if not failures else f'{len(failures)} FAILURES'}")
    for f in failures[:10]:
        print("  ", f)

    # ------------------------------------------------------------------ timing
    try:
        from nnformer_fast import dense
    except Exception as exc:  # the dense module is optional for this script
        dense = None
        print("dense formulation unavailable:", exc)
    gen = torch.Generator().manual_seed(0)
    shapes = {
        "latency 16x600 H4 Dh128": ([600] * 16, dict(avg_degree=2.5, max_span=10), 4, 128),
        "latency 16x200-600 H4 Dh128": (torch.randint(200, 601, (16,), generator=gen).tolist(),
                                         dict(avg_degree=2.5, max_span=10), 4, 128),
        "accuracy 1024x9 H4 Dh40": ([9] * 1024, dict(avg_degree=2.0, global_token=True), 4, 40),
    }
    rows = []
    for name, (sizes, kw, heads, dh) in shapes.items():
        graph = testing.random_batch(sizes, seed=1, **kw).to(dev)
        n = graph.num_nodes
        q, k, v = [torch.randn(n, heads, dh, device=dev, requires_grad=True) for _ in range(3)]
        dout = torch.randn(n, heads, dh, device=dev)
        times = {}
        for bname, mod in (("native", native), ("torch", reference)):
            def step(mod=mod):
                o = mod.dag_attention(q, k, v, graph)
                torch.autograd.grad(o, (q, k, v), dout)
            times[bname] = bench(step)
        if dense is not None:
            b, l = len(sizes), max(sizes)
            qd, kd, vd = [torch.randn(b, l, heads, dh, device=dev, requires_grad=True) for _ in range(3)]
            mask = torch.zeros(b, l, l, device=dev)
            src, dst = (graph.mask_edge_index if graph.mask_edge_index is not None else graph.edge_index)
            gid = graph.batch[src]
            mask[gid, src - graph.ptr[gid], dst - graph.ptr[gid]] = 1
            dd = torch.randn(b, l, heads, dh, device=dev)

            def dstep():
                o = dense.dense_dag_attention(qd, kd, vd, mask)
                torch.autograd.grad(o, (qd, kd, vd), dd)
            try:
                times["dense"] = bench(dstep)
            except Exception as exc:
                print("dense attention failed:", exc)
        rows.append(("dag_attention fwd+bwd", name, times))

        m = 4 * heads * dh
        h, g = [torch.randn(n, m, device=dev, requires_grad=True) for _ in range(2)]
        dy = torch.randn(n, m, device=dev)
        times = {}
        for bname, mod in (("native", native), ("torch", reference)):
            def bstep(mod=mod):
                y = mod.bigin(h, g, graph, act="relu")
                torch.autograd.grad(y, (h, g), dy)
            times[bname] = bench(bstep)
        rows.append((f"bigin fwd+bwd M={m}", name, times))

    print("\n| op | shape | native ms | torch ms | dense ms | torch/native | dense/native |")
    print("|---|---|---|---|---|---|---|")
    for op, shape, t in rows:
        nat, dn = t["native"], t.get("dense")
        dense_ms = "-" if dn is None else f"{dn:.3f}"
        dense_ratio = "-" if dn is None else f"{dn / nat:.1f}x"
        print(f"| {op} | {shape} | {nat:.3f} | {t['torch']:.3f} | {dense_ms} | {t['torch'] / nat:.1f}x | "
              f"{dense_ratio} |")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
