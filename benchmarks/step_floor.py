"""The latency model's training step against its GEMM floor, in alternating rounds.

``python benchmarks/step_floor.py [--size demo|default] [--threads N] [--rounds R] [--precision bf16|fp32]``

The same step, floor and inputs as ``benchmarks/test_models.py`` (16 graphs of ~200 nodes,
fused AdamW, flush-to-zero and glibc's heap kept for reuse as ``fit`` sets them), timed round by round: the eager step, the step
through ``torch.compile`` as ``fit(compile=True)`` and the demo run it, and the floor (the
model's Linear layers alone, forward and backward, on the shapes and dtypes one step gives
them). On a shared machine the load drifts within a run; a ratio taken within each round, then
the median over rounds, follows it. Prints the machine, the median times and those ratios.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from conftest import machine_lines
from nnformer_fast.train.host_memory import keep_freed_memory
from test_models import (LATENCY_GRAPHS, LATENCY_NODES, _compiled, _latency_inputs, _step_floor, _step_model,
                         _training_step)

SIZES = {"demo": "demo dim 128", "default": "dim 512"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=sorted(SIZES), default="demo")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as fit does by default
    keep_freed_memory()  # as fit does on the CPU
    from nnformer_fast import GraphBatch

    dtype = torch.bfloat16 if args.precision == "bf16" else None
    x, edge_index, sizes, static, _ = _latency_inputs(LATENCY_GRAPHS, LATENCY_NODES)
    graph = GraphBatch.from_edge_index(edge_index, sizes)
    y = torch.rand(len(sizes)) + 0.5
    eager, eager_optimizer = _step_model(SIZES[args.size])
    model, optimizer = _step_model(SIZES[args.size])
    compiled = _compiled(model)
    steps = {"eager": lambda: _training_step(eager, eager_optimizer, x, graph, static, y, dtype),
             "compiled": lambda: _training_step(compiled, optimizer, x, graph, static, y, dtype),
             "floor": _step_floor(eager, x, graph, static, dtype)}
    for step in steps.values():  # warm-up; the compiled step compiles here
        for _ in range(3):
            step()

    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)

    print("\n".join(machine_lines()))
    print(f"latency model training step, {SIZES[args.size]}, {args.precision}, {args.rounds} rounds")
    for name, ts in times.items():
        ratio = "" if name == "floor" else (
            f"  {statistics.median(a / b for a, b in zip(ts, times['floor'])):.2f}x the floor")
        print(f"  {name:9s} {statistics.median(ts) * 1e3:7.1f} ms{ratio}")


if __name__ == "__main__":
    main()
