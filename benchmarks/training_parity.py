"""Packed + bf16 training against the reference design's loop, for the same number of epochs.

    python benchmarks/training_parity.py [--epochs 3] [--threads 1] [--compile]

Both loops train the demo's latency model (``nnformer_fast.demo.MODEL``) on the embedded
default set with the same split, learning rate, warm-up and cosine schedule, for the same
number of epochs:

* reference: one graph at a time, fp32, the dense formulation, 16 graphs per step;
* ours: token-budget batches of ``demo.MAX_NODES`` nodes, bf16 autocast, the native kernels
  (``--compile``: through torch.compile, whose one-off compilation the first epoch holds).

Prints the training throughput of each (graphs/s over all epochs, and ours after its first
epoch) and the held-out MAPE, Acc(10%) and Kendall tau of each, then the throughput ratio.
Takes ~5 minutes at 3 epochs on one core (the reference loop is most of it).
"""
from __future__ import annotations

import argparse
import sys

import torch

from nnformer_fast.data.default import load_default_latency_set
from nnformer_fast.demo import LR, MAX_NODES, MODEL
from nnformer_fast.train import TrainConfig, fit
from nnformer_fast.train.baseline import baseline_fit

WARMUP = 0.05


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="train ours through torch.compile")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    train_set, test_set = load_default_latency_set().split_in_domain(test_fraction=0.2, seed=0)
    print(f"{len(train_set)} training / {len(test_set)} held-out networks, {args.epochs} epochs, "
          f"{args.threads} thread(s), model {MODEL}", flush=True)

    steps = args.epochs * -(-len(train_set) // 16)
    ref = baseline_fit(train_set, model_config=MODEL, epochs=args.epochs, batch_size=16, lr=LR,
                       warmup_steps=int(WARMUP * steps), impl="dense", test_set=test_set)
    ours = fit(TrainConfig(model=MODEL, epochs=args.epochs, max_nodes=MAX_NODES, precision="bf16", lr=LR,
                           warmup=WARMUP, seed=0, compile=args.compile, progress=sys.stderr.isatty()),
               train_set=train_set, test_set=test_set)
    warm = ours.throughput["warm_graphs_per_s"]
    rows = [("reference: one graph at a time, fp32, dense", ref.graphs_per_s, None, ref.metrics),
            ("packed + bf16, native kernels" + (", torch.compile" if args.compile else ""),
             ours.throughput["graphs_per_s"], warm, ours.metrics)]
    print("| loop | graphs/s | after the first epoch | MAPE | Acc(10%) | Kendall tau |\n|---|---:|---:|---:|---:|---:|")
    for name, speed, after_first, m in rows:
        print(f"| {name} | {speed:.1f} | {'' if after_first is None else f'{after_first:.1f}'} | "
              f"{100 * m['mape']:.1f} % | {100 * m['acc@10']:.1f} % | {m['tau']:.3f} |")
    print(f"throughput ratio: {ours.throughput['graphs_per_s'] / ref.graphs_per_s:.1f}x over all epochs"
          + (f", {warm / ref.graphs_per_s:.1f}x after our first epoch" if warm else "")
          + f"; tau {ours.metrics['tau']:.3f} (ours) vs {ref.metrics['tau']:.3f} (reference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
