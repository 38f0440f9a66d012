"""Token-budget bucketing batch samplers.

Each epoch the dataset order is shuffled (``numpy.random.default_rng([seed, epoch])``), cut
into pools of about ``pool_batches`` batches, each pool sorted by graph size and packed
greedily into batches of at most ``max_nodes`` nodes (and ``max_graphs`` graphs); the batch
order is then shuffled. Graphs of similar size share a batch, so a padded layout would waste
little and packed kernels see even work per graph. A graph larger than the budget gets a
batch of its own. The sequence of batches depends only on ``(sizes, settings, seed, epoch)``.

Position within the epoch: ``state_dict()`` / ``load_state_dict()`` hold ``epoch`` and
``position`` (batches already taken this epoch); iterating starts at ``position``. A
DataLoader with workers draws batches ahead of the training step, so a training loop should
save ``state_dict(consumed=<batches it finished>)``.
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["TokenBudgetBatchSampler", "DistributedTokenBudgetBatchSampler", "pack_sorted"]


def pack_sorted(sizes: np.ndarray, max_nodes: int, max_graphs: Optional[int] = None) -> np.ndarray:
    """Greedy cut points of a run of graphs (in the given order) into batches of at most
    ``max_nodes`` nodes and ``max_graphs`` graphs. Returns (K+1,) int64 offsets ``[0, ..., n]``.
    Loops over batches, not graphs (cumsum + searchsorted)."""
    n = len(sizes)
    csum = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    cuts = [0]
    start = 0
    while start < n:
        end = int(np.searchsorted(csum, csum[start] + max_nodes, side="right")) - 1
        end = max(end, start + 1)  # an oversize graph goes alone
        if max_graphs is not None:
            end = min(end, start + max_graphs)
        cuts.append(end)
        start = end
    return np.asarray(cuts, dtype=np.int64)


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices packed to a node budget.

    Args:
        sizes: node count of each dataset item.
        max_nodes: node budget of one batch (a larger graph gets a batch of its own).
        max_graphs: optional cap on graphs per batch.
        shuffle: shuffle items (in pools) and batch order each epoch; False keeps the
            dataset order, packed in runs (deterministic evaluation batches).
        seed: base seed; epoch ``e`` uses ``default_rng([seed, e])``.
        pool_batches: pool size in batches; larger pools pack more similar sizes but mix
            less. ``None`` sorts the whole dataset at once.
    """

    def __init__(self, sizes: Sequence[int], max_nodes: int, *, max_graphs: Optional[int] = None,
                 shuffle: bool = True, seed: int = 0, pool_batches: Optional[int] = 16):
        sizes = np.asarray(sizes, dtype=np.int64).reshape(-1)
        if sizes.size == 0:
            raise ValueError("TokenBudgetBatchSampler: empty dataset (no sizes)")
        if (sizes < 1).any():
            raise ValueError(f"TokenBudgetBatchSampler: item {int(np.argmax(sizes < 1))} has "
                             f"{int(sizes[sizes < 1][0])} nodes; sizes must be >= 1")
        if max_nodes < 1 or (max_graphs is not None and max_graphs < 1):
            raise ValueError(f"TokenBudgetBatchSampler: need max_nodes >= 1 and max_graphs >= 1, got "
                             f"{max_nodes}, {max_graphs}")
        self.sizes, self.max_nodes, self.max_graphs = sizes, int(max_nodes), max_graphs
        self.shuffle, self.seed, self.pool_batches = shuffle, int(seed), pool_batches
        self.epoch, self.position = 0, 0
        self._cache: tuple[int, list[np.ndarray]] | None = None

    # ------------------------------------------------------------------ batches
    def _global_batches(self, epoch: int) -> list[np.ndarray]:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        n = len(self.sizes)
        if not self.shuffle:
            order = np.arange(n)
            batches = self._pack(order)
        else:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(n)
            per_batch = max(1, self.max_nodes // max(1, int(np.mean(self.sizes))))
            if self.max_graphs is not None:
                per_batch = min(per_batch, self.max_graphs)
            pool = n if self.pool_batches is None else max(1, self.pool_batches * per_batch)
            batches = []
            for s in range(0, n, pool):
                chunk = order[s:s + pool]
                # stable sort by size; the shuffled order breaks ties randomly
                chunk = chunk[np.argsort(self.sizes[chunk], kind="stable")]
                batches += self._pack(chunk)
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._cache = (epoch, batches)
        return batches

    def _pack(self, order: np.ndarray) -> list[np.ndarray]:
        cuts = pack_sorted(self.sizes[order], self.max_nodes, self.max_graphs)
        return [order[a:b] for a, b in zip(cuts[:-1], cuts[1:])]

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The batches this sampler yields in ``epoch`` (per rank for the distributed one)."""
        return self._global_batches(epoch)

    def __len__(self) -> int:
        return len(self._epoch_batches(self.epoch))

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._epoch_batches(self.epoch)
        for i in range(self.position, len(batches)):
            self.position = i + 1
            yield batches[i].tolist()
        self.position = 0

    # ------------------------------------------------------------------ state
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch; a different epoch than the current one starts at position 0."""
        if epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def state_dict(self, consumed: Optional[int] = None) -> dict:
        """``{"epoch", "position", "seed", "max_nodes", "max_graphs", "num_items"}``; ``consumed``
        overrides the position (batches the caller has finished, when a DataLoader prefetches).
        ``max_graphs`` is -1 when there is no cap (every field a plain int)."""
        return {"epoch": self.epoch, "position": int(self.position if consumed is None else consumed),
                "seed": self.seed, "max_nodes": self.max_nodes,
                "max_graphs": -1 if self.max_graphs is None else int(self.max_graphs),
                "num_items": int(len(self.sizes))}

    def load_state_dict(self, state: dict) -> None:
        """Continue a saved position; refuses a state saved with other settings (another seed,
        budget, graph cap or dataset size would give other batches). ``max_graphs`` is checked
        only when the state holds it (states written before it was saved)."""
        mine_state = self.state_dict()
        for key in ("seed", "max_nodes", "max_graphs", "num_items"):
            mine = mine_state[key]
            if key in state and int(state[key]) != mine:
                saved = int(state[key])
                if key == "max_graphs":  # -1 stands for None
                    saved, mine = (None if v == -1 else v for v in (saved, mine))
                raise ValueError(f"sampler state was saved with {key}={saved}, this sampler has {key}={mine}; "
                                 "resuming would not continue the same epoch")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    # ------------------------------------------------------------------ statistics
    def stats(self, epoch: Optional[int] = None) -> dict:
        """Packing statistics of an epoch: batches, mean graphs per batch, ``fill`` (nodes /
        budget) and ``padding`` (the fraction of a padded (B, L_max) layout that would be
        padding)."""
        batches = self._global_batches(self.epoch if epoch is None else epoch)
        nodes = np.array([self.sizes[b].sum() for b in batches])
        padded = np.array([len(b) * self.sizes[b].max() for b in batches])
        return {"batches": len(batches), "graphs_per_batch": float(np.mean([len(b) for b in batches])),
                "fill": float(nodes.mean() / self.max_nodes), "padding": float(1 - nodes.sum() / padded.sum())}


class DistributedTokenBudgetBatchSampler(TokenBudgetBatchSampler):
    """The batches of :class:`TokenBudgetBatchSampler`, each global batch split across
    ``num_replicas`` ranks: rank ``r`` takes graphs ``r, r + R, r + 2R, ...`` of the
    size-sorted batch (so ranks get similar node counts). Every rank sees the same number of
    steps. A global batch with fewer graphs than ranks repeats its graphs so that no rank is
    empty (the only case where the union differs from the single-process batch).
    """

    def __init__(self, sizes: Sequence[int], max_nodes: int, *, num_replicas: Optional[int] = None,
                 rank: Optional[int] = None, **kw):
        if num_replicas is None or rank is None:
            import torch.distributed as dist

            if not dist.is_available() or not dist.is_initialized():
                raise RuntimeError("DistributedTokenBudgetBatchSampler: pass num_replicas and rank, or "
                                   "initialise torch.distributed first")
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        super().__init__(sizes, max_nodes, **kw)
        self.num_replicas, self.rank = int(num_replicas), int(rank)

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        out = []
        for b in self._global_batches(epoch):
            b = b[np.argsort(self.sizes[b], kind="stable")]
            if len(b) < self.num_replicas:
                b = np.resize(b, self.num_replicas)
            out.append(b[self.rank::self.num_replicas])
        return out

    def state_dict(self, consumed: Optional[int] = None) -> dict:
        state = super().state_dict(consumed)
        state["num_replicas"] = self.num_replicas
        return state
