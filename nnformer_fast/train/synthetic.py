"""Small synthetic datasets with learnable targets (tests, examples, smoke runs)."""
from __future__ import annotations

import numpy as np

__all__ = ["synthetic_latency_set", "synthetic_cells"]


def synthetic_latency_set(n: int = 64, *, min_nodes: int = 4, max_nodes: int = 40, seed: int = 0,
                          families: int = 2):
    """A :class:`~nnformer_fast.data.latency.LatencyDataset` of ``n`` random CNN-like DAGs
    whose latency (ms) grows with their conv count and sizes: learnable, positive."""
    from ..data.latency import LatencyDataset

    rng = np.random.default_rng(seed)
    sizes = rng.integers(min_nodes, max_nodes + 1, n)
    op_ids, attrs, shapes, edges, lat, scal = [], [], [], [], [], []
    for k in sizes:
        ops = rng.integers(0, 6, k)
        a = np.zeros((k, 8), np.float32)
        a[:, 0] = np.where(ops == 0, rng.choice([1, 3, 5], k), 0)
        sh = np.stack([np.ones(k), rng.choice([16, 32, 64], k), rng.choice([8, 16, 32], k),
                       rng.choice([8, 16, 32], k)], 1).astype(np.int32)
        src = np.arange(k - 1)
        e = [np.stack([src, src + 1])]
        extra = rng.integers(0, k, (2, k // 3))
        extra = extra[:, extra[0] < extra[1]]
        e.append(extra)
        ei = np.unique(np.concatenate(e, 1), axis=1)
        conv_work = float(((ops == 0) * a[:, 0] ** 2 * sh[:, 1] * sh[:, 2] * sh[:, 3]).sum())
        op_ids.append(ops.astype(np.int16)); attrs.append(a); shapes.append(sh); edges.append(ei.astype(np.int32))
        scal.append((1.0, conv_work * 2, conv_work / 10, float(sh.sum())))
        lat.append(0.05 + conv_work / 2e5 + 0.01 * k)
    node_ptr = np.concatenate([[0], np.cumsum(sizes)])
    edge_ptr = np.concatenate([[0], np.cumsum([e.shape[1] for e in edges])])
    store = {"op_ids": np.concatenate(op_ids), "attrs": np.concatenate(attrs), "shapes": np.concatenate(shapes),
             "node_ptr": node_ptr.astype(np.int64), "edges": np.concatenate(edges, 1),
             "edge_ptr": edge_ptr.astype(np.int64), "scalars": np.array(scal, np.float64)}
    records = {"entry": np.arange(n), "latency": np.array(lat, np.float32),
               "family": np.array([f"fam{i % families}" for i in range(n)])}
    return LatencyDataset.from_arrays(store, records, "<synthetic>")


def synthetic_cells(n: int = 64, *, seed: int = 0):
    """``CellArrays`` of ``n`` random NAS-Bench-201 cells with an accuracy that depends on
    their ops (learnable)."""
    from ..data.cells import nb201_cell
    from .tasks import CellArrays

    rng = np.random.default_rng(seed)
    cells = []
    score = {1: 0.02, 2: 0.04, 3: 0.0, 4: 0.01, 5: -0.01}
    for _ in range(n):
        ops = rng.integers(1, 6, 6)
        if (ops == 5).all():
            ops[0] = 2
        acc = 0.6 + sum(score[int(o)] for o in ops) + rng.normal(0, 0.005)
        cells.append(nb201_cell([int(o) for o in ops], float(acc)))
    return CellArrays(cells)
