"""Packed batches of DAGs and the sparse relation structures every kernel reads.

A :class:`GraphBatch` holds ``B`` graphs of different sizes as one set of ``N`` nodes, the
graph boundaries in ``ptr`` (like flash-attention's ``cu_seqlens``). It is built once per
batch and shared by every layer:

* the GIN adjacency ``A`` as CSR (row ``i`` lists the children of ``i``) and its transpose
  (row ``i`` lists the parents of ``i``), used by ``bigin``;
* the four attention relations (docs/DESIGN.md), built from a mask adjacency ``M`` (default ``A``),
  each with self loops, as one relation-major CSR: row ``r * N + i`` lists ``N_r(i)``. Head
  ``h`` reads relation ``h % 4``. ``rel_tperm[e]`` is the entry of the transposed pair of
  entry ``e`` in the transposed relation, so a backward pass gathers instead of scattering.

All index tensors are int64. Building costs a sort of the relation entries, no (N, N) or
(B, L, L) intermediate. The sibling and co-parent relations grow with the square of a node's
out- and in-degree (a 20,000-wide fan-out alone has 4·10⁸ sibling entries, about 10 GB), so
the builders refuse a graph whose relations could exceed ``MAX_RELATION_ENTRIES`` entries
before allocating them.
"""
from __future__ import annotations

import dataclasses
import numbers
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

__all__ = ["GraphBatch", "NUM_RELATIONS", "TRANSPOSED_RELATION", "MAX_RELATION_ENTRIES", "MAX_RELATION_ENTRIES_ENV"]

NUM_RELATIONS = 4
#: relation index of the transpose of each relation: fwd <-> bwd, sib and cop are symmetric.
TRANSPOSED_RELATION = (1, 0, 2, 3)
#: default bound on one graph's relation entries (all four relations, self loops included);
#: each entry costs 24 bytes of index tensors (``rel_col``, ``rel_row``, ``rel_tperm``), so
#: about 1.2 GB, before the attention's buffers. Override per call (``max_relation_entries=``)
#: or with the environment variable ``MAX_RELATION_ENTRIES_ENV``.
MAX_RELATION_ENTRIES = 50_000_000
MAX_RELATION_ENTRIES_ENV = "NNFORMER_FAST_MAX_RELATION_ENTRIES"


@dataclass
class GraphBatch:
    """``B`` DAGs packed into ``N`` nodes. Build with :meth:`from_dense`,
    :meth:`from_edge_index` or :meth:`collate`; move with :meth:`to`.

    Tensor fields (all int64, on one device):
        ptr: (B+1,) node offsets of the graphs.
        batch: (N,) graph id of each node.
        adj_rowptr, adj_col: CSR of ``A`` (children); adj_row: (E,) row of each entry.
        adjt_rowptr, adjt_col, adjt_row: CSR of ``Aᵀ`` (parents).
        rel_rowptr: (4N+1,) row offsets of the relation CSR (row ``r*N + i``).
        rel_col: (R,) neighbour ids; rel_row: (R,) node id of the row of each entry.
        rel_tperm: (R,) index of the transposed entry in the transposed relation.
        edge_index: (2, E) the edges of ``A`` (sorted); mask_edge_index: (2, E_M) the edges
            of the mask adjacency, or ``None`` when the mask is ``A``.
    Host fields: ``rel_offsets`` (5 ints: entries of relation r are
    ``rel_offsets[r]:rel_offsets[r+1]``) and ``max_nodes``.
    """

    ptr: Tensor
    batch: Tensor
    adj_rowptr: Tensor
    adj_col: Tensor
    adj_row: Tensor
    adjt_rowptr: Tensor
    adjt_col: Tensor
    adjt_row: Tensor
    rel_rowptr: Tensor
    rel_col: Tensor
    rel_row: Tensor
    rel_tperm: Tensor
    edge_index: Tensor
    mask_edge_index: Optional[Tensor]
    rel_offsets: tuple
    max_nodes: int

    # ------------------------------------------------------------------ properties
    @property
    def num_graphs(self) -> int:
        return self.ptr.numel() - 1

    @property
    def num_nodes(self) -> int:
        return self.batch.numel()

    @property
    def num_edges(self) -> int:
        return self.adj_col.numel()

    @property
    def device(self) -> torch.device:
        return self.ptr.device

    @property
    def num_nodes_per_graph(self) -> Tensor:
        """(B,) int64 node count of each graph."""
        return self.ptr[1:] - self.ptr[:-1]

    def out_degree(self) -> Tensor:
        """(N,) int64 number of children of each node in ``A``."""
        return self.adj_rowptr[1:] - self.adj_rowptr[:-1]

    def relation(self, r: int) -> tuple[Tensor, Tensor]:
        """(rows, cols) of relation ``r``: two (R_r,) int64 tensors sorted by (row, col)."""
        s, e = self.rel_offsets[r], self.rel_offsets[r + 1]
        return self.rel_row[s:e], self.rel_col[s:e]

    # ------------------------------------------------------------------ movement
    def _map_tensors(self, fn) -> "GraphBatch":
        changes = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                changes[f.name] = fn(value)
        return dataclasses.replace(self, **changes)

    def to(self, device, non_blocking: bool = False) -> "GraphBatch":
        """A copy on ``device`` (all index tensors moved together)."""
        return self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "GraphBatch":
        """A copy in pinned host memory, for ``to(cuda, non_blocking=True)``."""
        return self._map_tensors(lambda t: t.pin_memory())

    def pad_nodes(self, k: int, graphs: int = 1) -> "GraphBatch":
        """This batch plus ``k`` padding nodes (ids ``N ... N+k-1``) in ``graphs`` extra graphs:
        the first holds the k nodes, any others are empty.

        Padding nodes have no edges and empty relation rows (not even themselves): they see
        no node and no node sees them, so every op leaves the real nodes' results unchanged
        and gives the padding rows ``dag_attention`` output 0. Entry indices (and so the
        attention-dropout masks) of the real nodes do not move. O(N) copies, no rebuild.
        Models use it to round the node and graph counts up to a few repeated sizes
        (:mod:`nnformer_fast.models.buckets`).
        """
        if not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in (k, graphs)):
            raise TypeError(f"pad_nodes: k and graphs must be integers, got {k!r} and {graphs!r}")
        if k < 0 or graphs < 0 or (k > 0 and graphs == 0):
            raise ValueError(f"pad_nodes: k ({k}) and graphs ({graphs}) must be >= 0, graphs >= 1 when k > 0")
        if k == 0 and graphs == 0:
            return self
        n, dev = self.num_nodes, self.device

        def empty_rows(rowptr: Tensor, blocks: int) -> Tensor:  # k empty rows after each block of n
            pieces = []
            for b in range(1, blocks + 1):  # a block's rows, then k copies of the offset it ends at
                pieces += [rowptr[(b - 1) * n:b * n], rowptr[b * n:b * n + 1].expand(k)]
            return torch.cat(pieces + [rowptr[blocks * n:]])

        return dataclasses.replace(
            self,
            ptr=torch.cat([self.ptr, self.ptr.new_full((graphs,), n + k)]),
            batch=torch.cat([self.batch, torch.full((k,), self.num_graphs, device=dev)]),
            adj_rowptr=empty_rows(self.adj_rowptr, 1), adjt_rowptr=empty_rows(self.adjt_rowptr, 1),
            rel_rowptr=empty_rows(self.rel_rowptr, NUM_RELATIONS), max_nodes=max(self.max_nodes, k),
        )

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_edge_index(
        cls,
        edge_index: Tensor,
        num_nodes: Sequence[int] | Tensor,
        *,
        mask_edge_index: Optional[Tensor] = None,
        validate: bool = True,
        max_relation_entries: Optional[int] = None,
    ) -> "GraphBatch":
        """Build from packed edge lists (PyG convention).

        Args:
            edge_index: (2, E) int64, global node ids; ``edge_index[:, e] = (i, j)`` is the
                edge i -> j of the GIN adjacency ``A``. Duplicate edges count once.
            num_nodes: (B,) node count of each graph; graph ``b`` owns the ids
                ``sum(num_nodes[:b]) ... sum(num_nodes[:b+1]) - 1``.
            mask_edge_index: (2, E_M) int64 edges of the attention mask adjacency (may hold
                self loops and cycles, e.g. global tokens); default ``A``.
            validate: check ids, graph membership, self loops and cycles of ``A``.
            max_relation_entries: refuse (ValueError) a graph whose relations could hold more
                entries; default ``$NNFORMER_FAST_MAX_RELATION_ENTRIES`` or
                ``MAX_RELATION_ENTRIES``. Checked whatever ``validate`` says.
        """
        num_nodes = _as_ints(num_nodes, "num_nodes")
        device = edge_index.device if isinstance(edge_index, Tensor) else torch.device("cpu")
        edge_index = _as_ints(edge_index, "edge_index").to(device)
        if num_nodes.dim() != 1:
            got = f"the number {int(num_nodes)}" if num_nodes.dim() == 0 else f"shape {tuple(num_nodes.shape)}"
            raise ValueError(f"GraphBatch: num_nodes must list the node count of each graph (1-D), got {got}")
        if num_nodes.numel() == 0:
            raise ValueError("GraphBatch: empty batch (num_nodes must list at least one graph)")
        empty = (num_nodes <= 0).nonzero().flatten()
        if empty.numel():
            raise ValueError(f"GraphBatch: graph {int(empty[0])} has {int(num_nodes[empty[0]])} nodes; "
                             "every graph needs at least one node")
        num_nodes = num_nodes.to(device)
        ptr = torch.zeros(num_nodes.numel() + 1, dtype=torch.int64, device=device)
        torch.cumsum(num_nodes, 0, out=ptr[1:])
        n = int(ptr[-1])
        batch = torch.repeat_interleave(torch.arange(num_nodes.numel(), device=device), num_nodes)
        if mask_edge_index is not None:
            if not isinstance(mask_edge_index, Tensor) or mask_edge_index.device != device:
                raise ValueError("GraphBatch: edge_index and mask_edge_index must be tensors on one device")
            mask_edge_index = _as_ints(mask_edge_index, "mask_edge_index")
        if validate:
            _check_edges(edge_index, n, batch, "edge_index")
            _check_no_self_loops(edge_index, batch)
            _check_acyclic(edge_index, n, batch)
            if mask_edge_index is not None:
                _check_edges(mask_edge_index, n, batch, "mask_edge_index")
        return cls._build(ptr, batch, edge_index, mask_edge_index, _relation_limit(max_relation_entries))

    @classmethod
    def from_dense(
        cls,
        adj: Tensor,
        mask: Optional[Tensor] = None,
        num_vertices: Optional[Tensor] = None,
        *,
        validate: bool = True,
        max_relation_entries: Optional[int] = None,
    ) -> "GraphBatch":
        """Build from padded dense adjacencies.

        Args:
            adj: (B, L, L) any dtype, nonzero = edge i -> j of the GIN adjacency ``A``.
            mask: (B, L, L) attention mask adjacency (default ``adj``); may hold self loops
                and cycles (global tokens).
            num_vertices: (B,) ints; nodes ``>= num_vertices[b]`` are padding and dropped
                together with their edges. Default: every node is real.
            validate, max_relation_entries: as for :meth:`from_edge_index`.
        """
        if not isinstance(adj, Tensor) or adj.dim() != 3 or adj.shape[1] != adj.shape[2]:
            raise ValueError(f"GraphBatch.from_dense: adj must be a (B, L, L) tensor, got "
                             f"{tuple(adj.shape) if isinstance(adj, Tensor) else type(adj).__name__}")
        _refuse_meta(adj, "adj", "GraphBatch.from_dense")
        b, l, _ = adj.shape
        if b == 0:
            raise ValueError("GraphBatch.from_dense: empty batch (B = 0)")
        if l == 0:
            raise ValueError("GraphBatch: graph 0 has 0 nodes; every graph needs at least one node")
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.shape != adj.shape:
                raise ValueError(f"GraphBatch.from_dense: mask must have the shape of adj {tuple(adj.shape)}, "
                                 f"got {tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
            if mask.device != adj.device:
                raise ValueError(f"GraphBatch.from_dense: adj is on {adj.device} but mask on {mask.device}")
        if num_vertices is None:
            num_vertices = torch.full((b,), l, dtype=torch.int64, device=adj.device)
        else:
            num_vertices = _as_ints(num_vertices, "num_vertices").to(adj.device)
            if num_vertices.shape != (b,):
                raise ValueError(f"GraphBatch.from_dense: num_vertices must have shape ({b},), "
                                 f"got {tuple(num_vertices.shape)}")
            bad = ((num_vertices < 1) | (num_vertices > l)).nonzero().flatten()
            if bad.numel():
                g = int(bad[0])
                raise ValueError(f"GraphBatch.from_dense: graph {g} has num_vertices={int(num_vertices[g])}, "
                                 f"outside [1, {l}]")
        for name, t in (("adj", adj), ("mask", mask)):
            if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                g = int((~torch.isfinite(t)).flatten(1).any(1).nonzero()[0])
                raise ValueError(f"GraphBatch.from_dense: {name} of graph {g} holds NaN or inf")
        offsets = torch.cumsum(num_vertices, 0) - num_vertices
        edge_index = _dense_to_edges(adj, num_vertices, offsets)
        mask_edge_index = None if mask is None else _dense_to_edges(mask, num_vertices, offsets)
        ptr = torch.cat([offsets, offsets[-1:] + num_vertices[-1:]])
        batch = torch.repeat_interleave(torch.arange(b, device=adj.device), num_vertices)
        if validate:
            _check_no_self_loops(edge_index, batch)
            _check_acyclic(edge_index, int(ptr[-1]), batch)
        return cls._build(ptr, batch, edge_index, mask_edge_index, _relation_limit(max_relation_entries))

    @classmethod
    def collate(cls, graphs: Sequence["GraphBatch"]) -> "GraphBatch":
        """Concatenate batches (already validated and within their relation bound) into one;
        graph order is kept."""
        if len(graphs) == 0:
            raise ValueError("GraphBatch.collate: empty list of graphs")
        strays = [i for i, g in enumerate(graphs) if not isinstance(g, GraphBatch)]
        if strays:
            raise TypeError(f"GraphBatch.collate: item {strays[0]} is a {type(graphs[strays[0]]).__name__}, "
                            "not a GraphBatch")
        devices = {g.device for g in graphs}
        if len(devices) > 1:
            raise ValueError(f"GraphBatch.collate: graphs on different devices {sorted(map(str, devices))}")
        node_offsets = torch.tensor([0] + [g.num_nodes for g in graphs]).cumsum(0).tolist()
        edges = torch.cat([g.edge_index + o for g, o in zip(graphs, node_offsets)], 1)
        has_mask = [g.mask_edge_index is not None for g in graphs]
        mask_edges = None
        if any(has_mask):
            mask_edges = torch.cat([(g.mask_edge_index if g.mask_edge_index is not None else g.edge_index) + o
                                    for g, o in zip(graphs, node_offsets)], 1)
        sizes = torch.cat([g.num_nodes_per_graph for g in graphs])
        ptr = torch.zeros(sizes.numel() + 1, dtype=torch.int64, device=sizes.device)
        torch.cumsum(sizes, 0, out=ptr[1:])
        batch = torch.repeat_interleave(torch.arange(sizes.numel(), device=sizes.device), sizes)
        return cls._build(ptr, batch, edges, mask_edges, max_relation_entries=None)

    @classmethod
    def _build(cls, ptr: Tensor, batch: Tensor, edge_index: Tensor, mask_edge_index: Optional[Tensor],
               max_relation_entries: Optional[int]) -> "GraphBatch":
        """The batch from its edges; ``max_relation_entries`` None skips the relation bound."""
        n = batch.numel()
        src, dst = _unique_edges(edge_index[0], edge_index[1], n)
        edge_index = torch.stack([src, dst])
        adj_rowptr = _rowptr(src, n)
        dst_t, src_t = _unique_edges(dst, src, n)
        adjt_rowptr = _rowptr(dst_t, n)
        if mask_edge_index is None:
            m_src, m_dst = src, dst
        else:
            m_src, m_dst = _unique_edges(mask_edge_index[0], mask_edge_index[1], n)
            mask_edge_index = torch.stack([m_src, m_dst])
        if max_relation_entries is not None:
            _check_relation_size(m_src, m_dst, batch, ptr.numel() - 1, max_relation_entries)
        rel_rowptr, rel_col, rel_row, rel_tperm, offsets = _relations(m_src, m_dst, n)
        sizes = ptr[1:] - ptr[:-1]
        return cls(
            ptr=ptr, batch=batch,
            adj_rowptr=adj_rowptr, adj_col=dst, adj_row=src,
            adjt_rowptr=adjt_rowptr, adjt_col=src_t, adjt_row=dst_t,
            rel_rowptr=rel_rowptr, rel_col=rel_col, rel_row=rel_row,
            rel_tperm=rel_tperm, edge_index=edge_index, mask_edge_index=mask_edge_index,
            rel_offsets=tuple(offsets), max_nodes=int(sizes.max()),
        )


# ---------------------------------------------------------------------- building blocks
def _rowptr(sorted_rows: Tensor, n: int) -> Tensor:
    """(n+1,) CSR row offsets of row ids sorted ascending."""
    return torch.searchsorted(sorted_rows, torch.arange(n + 1, device=sorted_rows.device))


def _unique_edges(src: Tensor, dst: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """Deduplicated edges sorted by (src, dst)."""
    key = torch.unique(src * n + dst)
    return key // n, key % n


def _expand_pairs(src: Tensor, dst: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """All pairs (a, b) of children of a common node, for edges sorted by ``src``.

    Returns the boolean product ``MᵀM`` as an entry list with duplicates; its size is
    ``sum(out_degree²)``, linear in the relation entries it produces up to duplicates.
    """
    rowptr = _rowptr(src, n)
    deg = rowptr[1:] - rowptr[:-1]
    counts = deg[src]  # each edge (p, a) pairs with every child b of p
    edge_of = torch.repeat_interleave(torch.arange(src.numel(), device=src.device), counts)
    start = torch.cumsum(counts, 0) - counts
    within = torch.arange(edge_of.numel(), device=src.device) - start[edge_of]
    a = dst[edge_of]
    b = dst[rowptr[src[edge_of]] + within]
    return a, b


def _relations(src: Tensor, dst: Tensor, n: int):
    """The relation CSR (docs/DESIGN.md: the four relations; with self loops) from mask edges sorted by (src, dst).

    Returns (rel_rowptr, rel_col, rel_row, rel_tperm, offsets). On the CPU the compiled
    builder of the native extension does this when it is loaded (same output, several times
    faster on 10⁵-node batches); otherwise :func:`_relations_torch`.
    """
    native = _native_relation_builder()
    if native is not None and src.device.type == "cpu":
        rowptr, col, row, tperm, offsets = native(src.contiguous(), dst.contiguous(), n)
        return rowptr, col, row, tperm, offsets.tolist()
    return _relations_torch(src, dst, n)


def _native_relation_builder():
    try:
        return torch.ops.nnformer_fast.build_relations
    except (AttributeError, RuntimeError):  # extension not built or not loaded
        return None


def _relations_torch(src: Tensor, dst: Tensor, n: int):
    """Vectorised torch version of :func:`_relations` (any device)."""
    loops = torch.arange(n, device=src.device)
    dst_sorted_src, dst_sorted_dst = _unique_edges(dst, src, n)  # Mᵀ, sorted by its rows
    candidates = [
        (src, dst),
        (dst_sorted_src, dst_sorted_dst),
        _expand_pairs(src, dst, n),
        _expand_pairs(dst_sorted_src, dst_sorted_dst, n),
    ]
    keys = [torch.unique(torch.cat([a * n + b, loops * n + loops])) for a, b in candidates]
    offsets = [0]
    for k in keys:
        offsets.append(offsets[-1] + k.numel())
    tperm = []
    for r, k in enumerate(keys):
        rt = TRANSPOSED_RELATION[r]
        transposed_key = (k % n) * n + k // n
        tperm.append(torch.searchsorted(keys[rt], transposed_key) + offsets[rt])
    rows = torch.cat([k // n for k in keys])
    cols = torch.cat([k % n for k in keys])
    rel_rowptr = _rowptr(torch.cat([k // n + r * n for r, k in enumerate(keys)]), NUM_RELATIONS * n)
    return rel_rowptr, cols, rows, torch.cat(tperm), offsets


def _dense_to_edges(adj: Tensor, num_vertices: Tensor, offsets: Tensor) -> Tensor:
    """(2, E) global edge ids of the nonzero entries of (B, L, L) ``adj`` inside each graph."""
    g, i, j = (adj != 0).nonzero(as_tuple=True)
    keep = (i < num_vertices[g]) & (j < num_vertices[g])
    g, i, j = g[keep], i[keep], j[keep]
    return torch.stack([offsets[g] + i, offsets[g] + j])


# ---------------------------------------------------------------------- validation
def _relation_limit(value: Optional[int]) -> int:
    """The relation bound: ``value``, else ``$NNFORMER_FAST_MAX_RELATION_ENTRIES``, else the default."""
    if value is None:
        text = os.environ.get(MAX_RELATION_ENTRIES_ENV, "").strip()
        if not text:
            return MAX_RELATION_ENTRIES
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"GraphBatch: {MAX_RELATION_ENTRIES_ENV}={text!r} must be a positive integer")
        return int(text)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"GraphBatch: max_relation_entries must be a positive integer, got {value!r}")
    return int(value)


def _check_relation_size(src: Tensor, dst: Tensor, batch: Tensor, num_graphs: int, limit: int) -> None:
    """Refuse a graph whose relations could exceed ``limit`` entries, before building them.

    For mask edges ``src -> dst`` (deduplicated) the four relations of a graph hold at most
    ``4·N + 2·E + Σ out_degree² + Σ in_degree²`` entries (self loops; children and parents;
    siblings through each parent; co-parents through each child), an O(N + E) count that the
    builders' work also follows."""
    n = batch.numel()
    out_deg = torch.bincount(src, minlength=n)
    in_deg = torch.bincount(dst, minlength=n)
    per_node = 4 + out_deg + in_deg + out_deg * out_deg + in_deg * in_deg
    per_graph = torch.zeros(num_graphs, dtype=torch.int64, device=batch.device).index_add_(0, batch, per_node)
    over = (per_graph > limit).nonzero().flatten()
    if not over.numel():
        return
    g = int(over[0])
    widest = torch.maximum(out_deg, in_deg).masked_fill(batch != g, -1)
    node = int(widest.argmax())
    out_d, in_d = int(out_deg[node]), int(in_deg[node])
    side = f"{out_d:,} children" if out_d >= in_d else f"{in_d:,} parents"
    raise ValueError(
        f"GraphBatch: graph {g} could have {int(per_graph[g]):,} relation entries (about "
        f"{24 * int(per_graph[g]) / 1e9:.1f} GB of index tensors), over the limit of {limit:,}: its widest node "
        f"{node} has {side}, {max(out_d, in_d) ** 2:,} sibling or co-parent pairs; raise the limit with "
        f"max_relation_entries= or {MAX_RELATION_ENTRIES_ENV} if the memory is there")


def _refuse_meta(t: Tensor, name: str, owner: str) -> None:
    if t.device.type == "meta":
        raise ValueError(f"{owner}: {name} is a meta tensor, which holds no values; build the graph from real "
                         "tensors (then graph.to('meta') if needed)")


def _as_ints(x, name: str, owner: str = "GraphBatch") -> Tensor:
    """``x`` (tensor, array or nested list) as int64, refusing float, complex and bool values
    (a cast would truncate 1.9 to 1 and read True as 1). Empty inputs of any dtype pass:
    ``torch.zeros(2, 0)`` is a common way to write "no edges"."""
    if isinstance(x, Tensor):
        _refuse_meta(x, name, owner)
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"{owner}: {name} must be integers (a tensor, array or list), got {type(x).__name__}") \
            from None
    if t.numel() and (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool):
        raise ValueError(f"{owner}: {name} must hold integers, got dtype {t.dtype}")
    return t.to(torch.int64)


def _check_edges(edge_index: Tensor, n: int, batch: Tensor, name: str) -> None:
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"GraphBatch: {name} must have shape (2, E), got {tuple(edge_index.shape)}")
    if edge_index.numel() == 0:
        return
    bad = ((edge_index < 0) | (edge_index >= n)).any(0).nonzero().flatten()
    if bad.numel():
        e = int(bad[0])
        raise ValueError(f"GraphBatch: {name} edge {e} = {edge_index[:, e].tolist()} has a node id "
                         f"outside [0, {n})")
    cross = (batch[edge_index[0]] != batch[edge_index[1]]).nonzero().flatten()
    if cross.numel():
        e = int(cross[0])
        i, j = edge_index[:, e].tolist()
        raise ValueError(f"GraphBatch: {name} edge {e} = ({i}, {j}) joins graph {int(batch[i])} "
                         f"and graph {int(batch[j])}")


def _check_no_self_loops(edge_index: Tensor, batch: Tensor) -> None:
    loops = (edge_index[0] == edge_index[1]).nonzero().flatten()
    if loops.numel():
        i = int(edge_index[0, loops[0]])
        raise ValueError(f"GraphBatch: graph {int(batch[i])} has a self loop on node {i} in its "
                         "adjacency (A must be a DAG)")


def _check_acyclic(edge_index: Tensor, n: int, batch: Tensor) -> None:
    """Raise on a cycle. Edges from lower to higher ids (topological numbering) are acyclic by
    construction; otherwise Kahn's algorithm peels nodes without a remaining parent, each node
    and edge once: O(N + E) whatever the numbering."""
    src, dst = edge_index[0].cpu(), edge_index[1].cpu()
    if bool((src < dst).all()):
        return
    order = torch.argsort(src, stable=True)
    children, start = dst[order].tolist(), _rowptr(src[order], n).tolist()
    parents_left = torch.bincount(dst, minlength=n).tolist()
    ready = [i for i, d in enumerate(parents_left) if d == 0]
    while ready:
        i = ready.pop()
        for j in children[start[i]:start[i + 1]]:
            parents_left[j] -= 1
            if parents_left[j] == 0:
                ready.append(j)
    stuck = next((i for i, d in enumerate(parents_left) if d), None)  # on a cycle or after one
    if stuck is not None:
        raise ValueError(f"GraphBatch: graph {int(batch[stuck])} has a cycle (node {stuck} lies on or "
                         "after one); the adjacency must be a DAG")
