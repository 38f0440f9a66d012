"""Scaling study: time and peak memory of the sparse path vs the dense formulation on one
graph of 64 → 65,536 nodes (chain-like and branchy CNN-like DAGs).

Each (method, family, size) runs in a fresh subprocess, so its peak resident memory
(``ru_maxrss``, reported above the process's baseline after imports and set-up) is its own; a run past ``--timeout`` seconds or over ``--max-dense-gb`` of
estimated dense memory is recorded as skipped. Writes a markdown table and a log-log PNG.

    python benchmarks/scaling.py --out benchmarks/scaling   # → scaling.md, scaling.png
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

FAMILIES = {"chain": dict(avg_degree=1.0, max_span=1), "branchy": dict(avg_degree=2.0, max_span=8)}
DIM, HEADS = 128, 4


def _measure(method: str, family: str, n: int) -> dict:
    """Runs in the child: one forward+backward of a 1-layer latency model on one graph."""
    import resource
    import time

    import torch

    from nnformer_fast import GraphBatch, NNFormerLatency
    from nnformer_fast.dense import dense_nnformer_latency
    from nnformer_fast.testing import random_dag_edges

    torch.manual_seed(0)
    edges = random_dag_edges(n, generator=torch.Generator().manual_seed(0), **FAMILIES[family])
    model = NNFormerLatency(dim=DIM, n_head=HEADS, n_layers=1).eval()
    x, static = torch.randn(n, 192), torch.randn(1, 40)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def step():
        if method == "sparse":
            out = model(x, GraphBatch.from_edge_index(edges, [n]), static)
        else:
            adj = torch.zeros(n, n)
            adj[edges[0], edges[1]] = 1
            out = dense_nnformer_latency(dict(model.named_parameters()), x, adj, static[0], n_layers=1, n_head=HEADS)
        out.sum().backward()

    step()  # warm-up
    times = []
    for _ in range(3):  # the machine is shared: keep the best of three
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    seconds = min(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": seconds, "peak_mb": peak / 1024, "model_mb": (peak - base) / 1024}


def _dense_gb(n: int) -> float:
    # a handful of live (L, L) float32 matrices: relations, scores, softmax, grads
    return 12 * n * n * 4 / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--min-log2", type=int, default=6)
    parser.add_argument("--max-log2", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--max-dense-gb", type=float, default=12.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/scaling"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        method, family, n = args.child
        print(json.dumps(_measure(method, family, int(n))))
        return

    rows = []
    for family in FAMILIES:
        for method in ("sparse", "dense"):
            stopped = None
            for log2 in range(args.min_log2, args.max_log2 + 1):
                n = 2**log2
                row = {"family": family, "method": method, "nodes": n}
                if stopped:
                    row["skipped"] = stopped
                elif method == "dense" and _dense_gb(n) > args.max_dense_gb:
                    stopped = row["skipped"] = f"needs ~{_dense_gb(n):.0f} GB"
                else:
                    try:
                        done = subprocess.run([sys.executable, __file__, "--child", method, family, str(n)],
                                              capture_output=True, text=True, timeout=args.timeout, check=True)
                        row.update(json.loads(done.stdout.strip().splitlines()[-1]))
                    except subprocess.TimeoutExpired:
                        stopped = row["skipped"] = f"> {args.timeout:.0f} s"
                    except subprocess.CalledProcessError as err:
                        stopped = row["skipped"] = "failed: " + (err.stderr.strip().splitlines() or ["?"])[-1][:60]
                rows.append(row)
                print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(_table(rows))
    _plot(rows, args.out.with_suffix(".png"))


def _table(rows: list) -> str:
    lines = ["| family | nodes | sparse s | sparse MB | dense s | dense MB | dense / sparse time |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    by_key = {(r["family"], r["method"], r["nodes"]): r for r in rows}
    for family in FAMILIES:
        for n in sorted({r["nodes"] for r in rows}):
            s, d = by_key.get((family, "sparse", n), {}), by_key.get((family, "dense", n), {})

            def cell(r, key, fmt):
                return fmt.format(r[key]) if key in r else r.get("skipped", "–")

            ratio = f"{d['seconds'] / s['seconds']:.1f}x" if "seconds" in s and "seconds" in d else "–"
            lines.append(f"| {family} | {n} | {cell(s, 'seconds', '{:.3f}')} | {cell(s, 'model_mb', '{:.0f}')} | "
                         f"{cell(d, 'seconds', '{:.3f}')} | {cell(d, 'model_mb', '{:.0f}')} | {ratio} |")
    return "\n".join(lines) + "\n"


def _plot(rows: list, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for family, style in zip(FAMILIES, ("-", "--")):
        for method, color in (("sparse", "tab:blue"), ("dense", "tab:red")):
            pts = [(r["nodes"], r["seconds"], r["model_mb"]) for r in rows
                   if r["family"] == family and r["method"] == method and "seconds" in r]
            if not pts:
                continue
            n, t, m = zip(*pts)
            axes[0].plot(n, t, style, marker="o", color=color, label=f"{method}, {family}")
            axes[1].plot(n, m, style, marker="o", color=color, label=f"{method}, {family}")
    for ax, label in zip(axes, ("seconds (forward + backward)", "peak memory above the process baseline (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("nodes in the graph")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"1-layer latency model, dim {DIM}, {HEADS} heads: sparse vs dense")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
