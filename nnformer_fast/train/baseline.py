"""The reference design's training loop, for throughput and accuracy comparisons.

The reference NN-Former/NNLQP code trains the latency model one graph at a time: a Python
loop over the graphs of a mini-batch, each run alone in fp32 with its dense (L, L)
adjacency, predictions stacked, relative MSE, AdamW step. :func:`baseline_fit` reproduces
that loop on the same parameters layout (docs/DESIGN.md: the models), with either

* ``impl="dense"`` — the dense formulation of :mod:`nnformer_fast.dense` (the reference's
  math; no dropout, as in that formulation), or
* ``impl="packed"`` — :class:`NNFormerLatency` called on one-graph batches (isolates the
  effect of batching from that of the kernels).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from ..graph import GraphBatch
from .losses import relative_mse

__all__ = ["BaselineResult", "baseline_fit"]


@dataclass
class BaselineResult:
    model: torch.nn.Module
    losses: list
    graphs_per_s: float
    nodes_per_s: float
    steps: int
    seconds: float
    metrics: dict = field(default_factory=dict)


def baseline_fit(train_set, *, model_config: Optional[dict] = None, epochs: int = 1, batch_size: int = 16,
                 lr: float = 1e-3, weight_decay: float = 0.01, seed: int = 0, max_steps: Optional[int] = None,
                 impl: str = "dense", test_set=None, warmup_steps: int = 0, device="cpu") -> BaselineResult:
    """Train :class:`NNFormerLatency` the reference way (one graph at a time, fp32) on a
    latency dataset; returns losses, throughput (graphs/s over the timed steps; the first
    step is a warm-up and not timed) and, with ``test_set``, held-out metrics. On a GPU
    ``device``, each graph is copied there in the loop, as the reference code does (every
    step ends with ``loss.item()``, so the clock sees finished work)."""
    from ..dense import dense_nnformer_latency
    from .loop import evaluate_model
    from .tasks import LatencyTask

    if impl not in ("dense", "packed"):
        raise ValueError(f"impl must be 'dense' or 'packed', got {impl!r}")
    task = LatencyTask(**(model_config or {}))
    task.check_dataset(train_set, "training set")
    device = torch.device(device)
    torch.manual_seed(seed)
    model = task.build_model().to(device)
    model.train()
    cfg = task.model_config
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * math.ceil(len(train_set) / batch_size)
    if max_steps is not None:
        total = min(total, max_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warmup_steps if s < warmup_steps else
        0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup_steps) / max(1, total - warmup_steps)))))
    rng = np.random.default_rng(seed)
    losses, step = [], 0
    graphs = nodes = 0
    t0 = None
    for _ in range(epochs):
        order = rng.permutation(len(train_set))
        for s in range(0, len(order), batch_size):
            if step == 1:
                t0 = time.perf_counter()  # step 0 is a warm-up
            preds, ys = [], []
            for i in order[s:s + batch_size]:  # the reference's per-graph loop
                x, edge_index, static, y = train_set[int(i)]
                x, static, y = x.to(device), static.to(device), y.to(device)
                n = x.shape[0]
                if impl == "dense":
                    adj = torch.zeros(n, n, device=device)
                    adj[edge_index[0].to(device), edge_index[1].to(device)] = 1.0
                    params = dict(model.named_parameters())
                    p = dense_nnformer_latency(params, x, adj, static, n_layers=cfg["n_layers"],
                                               n_head=cfg["n_head"], act=cfg["act"],
                                               degree_gating=cfg["degree_gating"])
                else:
                    graph = GraphBatch.from_edge_index(edge_index, [n]).to(device)
                    p = model(x, graph, static[None])
                preds.append(p.reshape(1))
                ys.append(y.reshape(1))
                if step >= 1:
                    graphs += 1
                    nodes += n
            loss = relative_mse(torch.cat(preds), torch.cat(ys))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            step += 1
            if step >= total:
                break
        if step >= total:
            break
    seconds = time.perf_counter() - t0 if t0 is not None else float("nan")
    result = BaselineResult(model.eval(), losses, graphs / seconds if graphs else float("nan"),
                            nodes / seconds if graphs else float("nan"), step, seconds)
    if test_set is not None:
        result.metrics = evaluate_model(model, task, test_set)[2]
    return result
