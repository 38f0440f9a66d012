"""Test helpers shared by every backend's tests and the benchmarks: graph families, random
DAGs, dtype tolerances and a comparison that reports the worst elements."""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .graph import GraphBatch

__all__ = ["random_dag_edges", "random_batch", "latency_inputs", "random_cells", "FAMILIES", "family_batch",
           "assert_close", "TOLERANCES", "low_precision_error_ok"]


def random_dag_edges(n: int, avg_degree: float, generator: torch.Generator, *, max_span: int | None = None) -> Tensor:
    """(2, E) int64 local edges of a random DAG on ``n`` nodes numbered topologically.

    Each node draws about ``avg_degree`` parents among the ``max_span`` nodes before it
    (all earlier nodes when ``None``): a short span gives chain-like, CNN-like graphs.
    """
    if n < 2:
        return torch.zeros(2, 0, dtype=torch.int64)
    span = n if max_span is None else max_span
    dst = torch.arange(1, n).repeat_interleave(max(1, round(avg_degree)))
    back = torch.randint(1, span + 1, (dst.numel(),), generator=generator)
    src = dst - torch.minimum(back, dst)
    key = torch.unique(src * n + dst)
    return torch.stack([key // n, key % n])


def random_batch(sizes: list[int], avg_degree: float = 2.0, seed: int = 0, *, max_span: int | None = None,
                 global_token: bool = False) -> GraphBatch:
    """A packed batch of random DAGs; with ``global_token`` node 0 of each graph has a full
    mask row and column (but no GIN edges), as the accuracy model's class token."""
    g = torch.Generator().manual_seed(seed)
    edges, masks, offset = [], [], 0
    for n in sizes:
        e = random_dag_edges(n, avg_degree, g, max_span=max_span) + offset
        if global_token:
            e = e[:, e[0] != offset]  # the token keeps no GIN edge of its own
            nodes = torch.arange(offset, offset + n)
            glob = torch.full_like(nodes, offset)
            masks.append(torch.cat([e, torch.stack([glob, nodes]), torch.stack([nodes, glob])], 1))
        edges.append(e)
        offset += n
    mask = torch.cat(masks, 1) if global_token else None
    return GraphBatch.from_edge_index(torch.cat(edges, 1), sizes, mask_edge_index=mask)


def latency_inputs(sizes: list[int], seed: int = 0) -> tuple[Tensor, GraphBatch, Tensor]:
    """``NNFormerLatency`` inputs at its default widths for random DAGs of ``sizes`` nodes:
    node features (N, 192), the packed graph, static features (B, 40), float32."""
    gen = torch.Generator().manual_seed(seed)
    graph = random_batch(sizes, avg_degree=2.0, seed=seed, max_span=5)
    return torch.randn(graph.num_nodes, 192, generator=gen), graph, torch.randn(len(sizes), 40, generator=gen)


def random_cells(cells: int, tokens: int, channels: int = 32, seed: int = 0) -> dict:
    """The accuracy model's padded dict (docs/DESIGN.md: the models) for random cells: code (B, L, C) and
    code_depth (B, 1, C) float32, a random upper-triangular adjacency (B, L, L) as code_adj
    and, as integers, code_rel_pos."""
    gen = torch.Generator().manual_seed(seed)
    adj = torch.triu((torch.rand(cells, tokens, tokens, generator=gen) < 0.4).float(), 1)
    return dict(code=torch.randn(cells, tokens, channels, generator=gen),
                code_depth=torch.randn(cells, 1, channels, generator=gen), code_rel_pos=adj.long(), code_adj=adj)


def _star(fan_out: bool) -> GraphBatch:
    n = 9
    hub = torch.zeros(n - 1, dtype=torch.int64)
    leaves = torch.arange(1, n)
    edges = torch.stack([hub, leaves]) if fan_out else torch.stack([leaves - 1, torch.full_like(hub, n - 1)])
    return GraphBatch.from_edge_index(edges, [n])


#: Graph families every op test runs over (STYLE.md): name -> builder of a GraphBatch.
FAMILIES: dict[str, Callable[[], GraphBatch]] = {
    "single_node": lambda: GraphBatch.from_edge_index(torch.zeros(2, 0, dtype=torch.int64), [1]),
    "chain": lambda: GraphBatch.from_edge_index(torch.stack([torch.arange(6), torch.arange(1, 7)]), [7]),
    "diamond": lambda: GraphBatch.from_edge_index(torch.tensor([[0, 0, 1, 2], [1, 2, 3, 3]]), [4]),
    "star_out": lambda: _star(True),
    "star_in": lambda: _star(False),
    "no_edges": lambda: GraphBatch.from_edge_index(torch.zeros(2, 0, dtype=torch.int64), [5]),
    "odd_sizes": lambda: random_batch([3, 17, 1, 33, 5], avg_degree=2.0, seed=1),
    "one_big": lambda: random_batch([257], avg_degree=3.0, seed=2, max_span=12),
    "many_tiny": lambda: random_batch([2, 3, 1, 4] * 16, avg_degree=1.5, seed=3),
    "global_tokens": lambda: random_batch([9, 7, 12], avg_degree=2.0, seed=4, global_token=True),
}


def family_batch(name: str) -> GraphBatch:
    return FAMILIES[name]()


#: (atol, rtol) of an op's output against the float64 reference, per input dtype.
TOLERANCES = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (2e-5, 2e-5),
    torch.bfloat16: (3e-2, 3e-2),
    torch.float16: (4e-3, 4e-3),
}


def assert_close(actual: Tensor, expected: Tensor, *, atol: float, rtol: float, name: str = "") -> None:
    """``torch.testing.assert_close`` that also prints the five worst elements."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    excess = (actual - expected).abs() - (atol + rtol * expected.abs())
    if actual.numel() and bool((excess > 0).any()) or bool(torch.isnan(actual).any() != torch.isnan(expected).any()):
        worst = excess.flatten().topk(min(5, excess.numel())).indices
        lines = [f"  at {[int(j) for j in torch.unravel_index(torch.tensor(i), actual.shape)]}: got {actual.flatten()[i]:.6g}, "
                 f"expected {expected.flatten()[i]:.6g}" for i in worst.tolist()]
        raise AssertionError(f"{name}: {int((excess > 0).sum())} of {actual.numel()} elements exceed "
                             f"atol={atol}, rtol={rtol}; worst:\n" + "\n".join(lines))


def low_precision_error_ok(kernel: Tensor, plain: Tensor, exact: Tensor, *, factor: float = 2.0,
                           floor: float = 1e-6) -> None:
    """Flash-attention's rule: the kernel's max error against the exact (fp64) result must be
    at most ``factor`` times the error of plain PyTorch in the same low precision."""
    exact = exact.detach().double().cpu()
    err_kernel = (kernel.detach().double().cpu() - exact).abs().max().item()
    err_plain = (plain.detach().double().cpu() - exact).abs().max().item()
    if err_kernel > factor * err_plain + floor:
        raise AssertionError(f"kernel error {err_kernel:.3g} > {factor} x plain-PyTorch error {err_plain:.3g}")
