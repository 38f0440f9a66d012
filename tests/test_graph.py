"""GraphBatch: construction, relations against dense products, movement, bad input."""
import subprocess
import sys
import textwrap

import pytest
import torch

from nnformer_fast import GraphBatch
from nnformer_fast.graph import NUM_RELATIONS, TRANSPOSED_RELATION
from nnformer_fast.testing import FAMILIES, random_batch


def dense_relations_of(graph: GraphBatch) -> torch.Tensor:
    """(4, N, N) relations straight from SPEC §1, from the batch's mask edges (small N only)."""
    n = graph.num_nodes
    m = torch.zeros(n, n)
    edges = graph.mask_edge_index if graph.mask_edge_index is not None else graph.edge_index
    m[edges[0], edges[1]] = 1
    eye = torch.eye(n)
    return torch.stack([m + eye, m.T + eye, m.T @ m + eye, m @ m.T + eye]) > 0


def relations_from_csr(graph: GraphBatch) -> torch.Tensor:
    n = graph.num_nodes
    out = torch.zeros(4, n, n, dtype=torch.bool)
    for r in range(4):
        rows, cols = graph.relation(r)
        out[r, rows, cols] = True
        # the CSR row pointers agree with the entry lists
        ptr = graph.rel_rowptr[r * n: (r + 1) * n + 1]
        assert torch.equal(torch.repeat_interleave(torch.arange(n), ptr.diff()), rows)
    return out


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_relations_match_dense_products(family):
    graph = FAMILIES[family]()
    assert torch.equal(relations_from_csr(graph), dense_relations_of(graph))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_transposed_entry_permutation(family):
    graph = FAMILIES[family]()
    for r in range(4):
        s, e = graph.rel_offsets[r], graph.rel_offsets[r + 1]
        t = graph.rel_tperm[s:e]
        rt = TRANSPOSED_RELATION[r]
        assert bool(((t >= graph.rel_offsets[rt]) & (t < graph.rel_offsets[rt + 1])).all())
        assert torch.equal(graph.rel_row[t], graph.rel_col[s:e])
        assert torch.equal(graph.rel_col[t], graph.rel_row[s:e])


def test_adjacency_csr_and_transpose():
    edges = torch.tensor([[0, 0, 1, 2, 4], [1, 2, 3, 3, 5]])
    graph = GraphBatch.from_edge_index(edges, [4, 2])
    assert graph.ptr.tolist() == [0, 4, 6]
    assert graph.batch.tolist() == [0, 0, 0, 0, 1, 1]
    assert graph.adj_rowptr.tolist() == [0, 2, 3, 4, 4, 5, 5]
    assert graph.adj_col.tolist() == [1, 2, 3, 3, 5]
    assert graph.adjt_rowptr.tolist() == [0, 0, 1, 2, 4, 4, 5]
    assert graph.adjt_col.tolist() == [0, 0, 1, 2, 4]
    assert graph.out_degree().tolist() == [2, 1, 1, 0, 1, 0]


def test_from_dense_drops_padding_and_matches_edge_index():
    adj = torch.zeros(2, 4, 4)
    adj[0, 0, 1] = adj[0, 1, 2] = adj[0, 2, 3] = 1
    adj[1, 0, 1] = 1
    adj[1, 2, 3] = 1  # beyond num_vertices of graph 1: padding, must vanish
    dense = GraphBatch.from_dense(adj, num_vertices=torch.tensor([4, 2]))
    packed = GraphBatch.from_edge_index(torch.tensor([[0, 1, 2, 4], [1, 2, 3, 5]]), [4, 2])
    for field in ("ptr", "adj_rowptr", "adj_col", "rel_rowptr", "rel_col", "rel_tperm"):
        assert torch.equal(getattr(dense, field), getattr(packed, field)), field


def test_duplicate_edges_count_once():
    graph = GraphBatch.from_edge_index(torch.tensor([[0, 0, 1], [1, 1, 2]]), [3])
    assert graph.adj_col.tolist() == [1, 2]


def test_collate_equals_building_at_once():
    a = random_batch([5, 9], seed=1)
    b = random_batch([3], seed=2, global_token=True)
    both = GraphBatch.collate([a, b])
    assert both.num_graphs == 3 and both.num_nodes == 17
    assert torch.equal(relations_from_csr(both), dense_relations_of(both))
    assert both.ptr.tolist() == [0, 5, 14, 17]


def test_global_token_makes_sibling_relations_dense_only_in_its_graph():
    graph = random_batch([6, 5], global_token=True)
    rel = relations_from_csr(graph)
    assert bool(rel[2, :6, :6].all()) and bool(rel[3, :6, :6].all())
    assert not bool(rel[2, :6, 6:].any())


def test_linear_size_without_global_tokens():
    # a long chain: every relation has at most 3 entries per row
    n = 20_000
    graph = GraphBatch.from_edge_index(torch.stack([torch.arange(n - 1), torch.arange(1, n)]), [n])
    assert graph.rel_col.numel() <= 4 * 3 * n


def test_to_and_pin_memory_keep_content():
    graph = random_batch([4, 6])
    moved = graph.to("cpu")
    assert torch.equal(moved.rel_col, graph.rel_col) and moved.rel_offsets == graph.rel_offsets
    if torch.cuda.is_available():
        assert graph.pin_memory().ptr.is_pinned()


@pytest.mark.parametrize("edges, sizes, message", [
    (torch.tensor([[0, 1, 2], [1, 2, 0]]), [3], "graph 0 has a cycle"),
    (torch.tensor([[0, 3, 4], [1, 4, 3]]), [2, 3], "graph 1 has a cycle"),
    (torch.tensor([[1], [1]]), [3], "self loop on node 1"),
    (torch.tensor([[0], [7]]), [3], "outside"),
    (torch.tensor([[-1], [0]]), [3], "outside"),
    (torch.tensor([[0], [3]]), [2, 2], "joins graph 0 and graph 1"),
    (torch.zeros(2, 0, dtype=torch.int64), [2, 0], "graph 1 has 0 nodes"),
    (torch.zeros(2, 0, dtype=torch.int64), [], "empty batch"),
    (torch.zeros(3, 1, dtype=torch.int64), [2], r"shape \(2, E\)"),
])
def test_bad_edge_index_raises(edges, sizes, message):
    with pytest.raises(ValueError, match=message):
        GraphBatch.from_edge_index(edges, sizes)


def test_bad_dense_input_raises():
    adj = torch.zeros(2, 3, 3)
    with pytest.raises(ValueError, match=r"\(B, L, L\)"):
        GraphBatch.from_dense(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="empty batch"):
        GraphBatch.from_dense(torch.zeros(0, 3, 3))
    with pytest.raises(ValueError, match="mask must have the shape"):
        GraphBatch.from_dense(adj, mask=torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="graph 1 has num_vertices=0"):
        GraphBatch.from_dense(adj, num_vertices=torch.tensor([3, 0]))
    with pytest.raises(ValueError, match="num_vertices=4"):
        GraphBatch.from_dense(adj, num_vertices=torch.tensor([3, 4]))
    bad = adj.clone()
    bad[1, 0, 1] = float("nan")
    with pytest.raises(ValueError, match="adj of graph 1 holds NaN"):
        GraphBatch.from_dense(bad)
    cyc = adj.clone()
    cyc[1, 0, 1] = cyc[1, 1, 0] = 1
    with pytest.raises(ValueError, match="graph 1 has a cycle"):
        GraphBatch.from_dense(cyc)


def test_mask_may_hold_cycles_and_self_loops():
    adj = torch.zeros(1, 3, 3)
    adj[0, 1, 2] = 1
    mask = adj.clone()
    mask[0, 0, :] = mask[0, :, 0] = 1  # a global token: self loop and cycles through node 0
    graph = GraphBatch.from_dense(adj, mask=mask)
    assert torch.equal(relations_from_csr(graph), dense_relations_of(graph))


def test_collate_rejects_empty_and_mixed_devices():
    with pytest.raises(ValueError, match="empty list"):
        GraphBatch.collate([])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_native_and_torch_relation_builders_agree(family):
    from nnformer_fast.graph import _native_relation_builder, _relations_torch

    native = _native_relation_builder()
    if native is None:
        pytest.skip("native extension not built")
    graph = FAMILIES[family]()
    edges = graph.mask_edge_index if graph.mask_edge_index is not None else graph.edge_index
    ours = _relations_torch(edges[0], edges[1], graph.num_nodes)
    theirs = native(edges[0].contiguous(), edges[1].contiguous(), graph.num_nodes)
    for a, b in zip(ours[:4], theirs[:4]):
        assert torch.equal(a, b)
    assert ours[4] == theirs[4].tolist()


def test_pad_nodes_rejects_nodes_without_a_graph():
    with pytest.raises(ValueError, match="graphs >= 1 when k > 0"):
        FAMILIES["chain"]().pad_nodes(3, 0)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("k,graphs", [(0, 0), (0, 2), (1, 1), (6, 3)])
def test_pad_nodes_adds_graphs_of_unconnected_rows(family, k, graphs):
    graph = FAMILIES[family]()
    padded = graph.pad_nodes(k, graphs)
    if k == graphs == 0:
        assert padded is graph
        return
    n, b = graph.num_nodes, graph.num_graphs
    assert padded.num_nodes == n + k and padded.num_graphs == b + graphs
    assert padded.batch[n:].eq(b).all() and padded.ptr[b + 1:].eq(n + k).all()  # k nodes, then empty graphs
    for name in ("adj", "adjt"):  # same entries; the padding rows are empty
        rowptr = getattr(padded, f"{name}_rowptr")
        assert torch.equal(rowptr[:n + 1], getattr(graph, f"{name}_rowptr")) and rowptr[n:].eq(rowptr[n]).all()
    rel = padded.rel_rowptr.view(-1)[:-1].view(NUM_RELATIONS, n + k)
    old = graph.rel_rowptr[:-1].view(NUM_RELATIONS, n)
    assert torch.equal(rel[:, :n], old)
    assert torch.equal(rel[:, n:], torch.cat([old[1:, :1], graph.rel_rowptr[-1:].view(1, 1)]).expand(-1, k))
    for name in ("rel_col", "rel_row", "rel_tperm", "edge_index", "rel_offsets"):
        assert getattr(padded, name) is getattr(graph, name)


# ---------------------------------------------------------------------- acyclicity, any numbering
def _first_node_on_or_after_a_cycle(edges: torch.Tensor, n: int):
    """Dense oracle: the transitive closure by repeated squaring; a node lies on a cycle when it
    reaches itself, after one when a node on a cycle reaches it. The smallest such id, or None."""
    reach = torch.zeros(n, n, dtype=torch.bool)
    reach[edges[0], edges[1]] = True
    for _ in range(max(1, n).bit_length()):
        reach = reach | ((reach.float() @ reach.float()) > 0)
    on_cycle = reach.diagonal()
    stuck = on_cycle | (on_cycle.float() @ reach.float() > 0)
    return int(stuck.nonzero()[0]) if stuck.any() else None


@pytest.mark.parametrize("seed", range(40))
def test_cycle_check_matches_the_transitive_closure(seed):
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 30, (), generator=gen))
    e = int(torch.randint(1, 3 * n, (), generator=gen))
    edges = torch.randint(0, n, (2, e), generator=gen)
    if seed % 2:  # acyclic, numbered in random order
        lo, hi = edges.min(0).values, edges.max(0).values
        rank = torch.randperm(n, generator=gen)
        edges = rank[torch.stack([lo, hi])]
    edges = edges[:, edges[0] != edges[1]]
    expected = _first_node_on_or_after_a_cycle(edges, n)
    if expected is None:
        GraphBatch.from_edge_index(edges, [n])
    else:
        with pytest.raises(ValueError, match=rf"graph 0 has a cycle \(node {expected} lies on or after one\)"):
            GraphBatch.from_edge_index(edges, [n])


def test_cycle_check_is_linear_in_any_numbering():
    """A 10^6-node chain numbered backwards (every edge from a higher to a lower id) and a cycle
    at its end. Peeling the sources level by level, as before, costs a pass over all E edges per
    level, N levels: 10^12 steps, hours. Kahn's algorithm visits each node and edge once (about a
    second). Not a timing: the child only has to finish within a generous limit."""
    code = textwrap.dedent("""
        import torch
        from nnformer_fast import GraphBatch
        n = 1_000_000
        chain = torch.stack([torch.arange(1, n), torch.arange(0, n - 1)])
        graph = GraphBatch.from_edge_index(chain, [n])
        assert graph.num_edges == n - 1
        try:
            GraphBatch.from_edge_index(torch.cat([chain, torch.tensor([[0], [5]])], 1), [n])
        except ValueError as exc:
            assert "node 0 lies on or after one" in str(exc), exc
        else:
            raise AssertionError("no cycle found")
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=600)


# ---------------------------------------------------------------------- relation-size bound
def _fan_out_batch_edges(width: int):
    """Graph 0: a 3-node chain; graph 1: node 3 with ``width`` children."""
    chain = torch.tensor([[0, 1], [1, 2]])
    fan = torch.stack([torch.full((width,), 3), torch.arange(4, 4 + width)])
    return torch.cat([chain, fan], 1), [3, width + 1]


def test_wide_fan_out_is_refused_before_its_relations_are_allocated():
    """A 20,000-wide fan-out has 4·10⁸ sibling entries (10 GB). Under a 3 GB address-space limit
    the child gets the refusal, naming graph and node, not a MemoryError after minutes."""
    code = textwrap.dedent("""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        import torch
        from nnformer_fast import GraphBatch
        chain = torch.tensor([[0, 1], [1, 2]])
        width = 20_000
        fan = torch.stack([torch.full((width,), 3), torch.arange(4, 4 + width)])
        try:
            GraphBatch.from_edge_index(torch.cat([chain, fan], 1), [3, width + 1])
        except ValueError as exc:
            print(exc)
        else:
            print("built")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    said = res.stdout.strip() or res.stderr[-2000:]
    assert res.returncode == 0 and "over the limit of 50,000,000" in said, said
    assert "graph 1 could have 400," in said and "widest node 3 has 20,000 children" in said, said


@pytest.mark.parametrize("seed", range(8))
def test_relation_bound_refuses_every_graph_over_the_limit(seed):
    """Whatever the limit, a graph whose built relations hold more entries is refused (the count
    is an upper bound), and the limit that the bound itself meets passes."""
    graph = random_batch([5, 12, 30], avg_degree=3.0, seed=seed, global_token=bool(seed % 2))
    per_graph = torch.zeros(graph.num_graphs, dtype=torch.int64).index_add_(
        0, graph.batch[graph.rel_row], torch.ones_like(graph.rel_row))
    widest = int(per_graph.argmax())
    edges = graph.edge_index
    mask = graph.mask_edge_index
    with pytest.raises(ValueError, match=rf"graph {widest} could have [\d,]+ relation entries"):
        GraphBatch.from_edge_index(edges, graph.num_nodes_per_graph, mask_edge_index=mask,
                                   max_relation_entries=int(per_graph.max()) - 1)
    bound = _relation_bound(mask if mask is not None else edges, graph.batch, graph.num_graphs)
    assert bool((bound >= per_graph).all())
    again = GraphBatch.from_edge_index(edges, graph.num_nodes_per_graph, mask_edge_index=mask,
                                       max_relation_entries=int(bound.max()))
    assert torch.equal(again.rel_col, graph.rel_col)


def _relation_bound(edges, batch, num_graphs):
    """4·N + 2·E + Σ out² + Σ in² per graph, from a dense adjacency (independent of graph.py)."""
    n = batch.numel()
    adj = torch.zeros(n, n, dtype=torch.int64)
    adj[edges[0], edges[1]] = 1
    out_deg, in_deg = adj.sum(1), adj.sum(0)
    per_node = 4 + out_deg + in_deg + out_deg ** 2 + in_deg ** 2
    return torch.zeros(num_graphs, dtype=torch.int64).index_add_(0, batch, per_node)


def test_relation_bound_from_the_environment(monkeypatch):
    edges, sizes = _fan_out_batch_edges(100)  # graph 1: 4·101 + 2·100 + 100² + 100 = 10,704 at most
    GraphBatch.from_edge_index(edges, sizes)
    monkeypatch.setenv("NNFORMER_FAST_MAX_RELATION_ENTRIES", "10000")
    with pytest.raises(ValueError, match="graph 1 could have 10,704 relation entries .* over the limit of "
                                         "10,000: its widest node 3 has 100 children"):
        GraphBatch.from_edge_index(edges, sizes)
    GraphBatch.from_edge_index(edges, sizes, max_relation_entries=10_704)  # the argument wins
    dense = torch.zeros(1, 40, 40)
    dense[0, 0, 1:] = 1
    monkeypatch.setenv("NNFORMER_FAST_MAX_RELATION_ENTRIES", "1000")
    with pytest.raises(ValueError, match="graph 0 .* widest node 0 has 39 children"):
        GraphBatch.from_dense(dense)
    monkeypatch.setenv("NNFORMER_FAST_MAX_RELATION_ENTRIES", "1e9")
    with pytest.raises(ValueError, match=r"NNFORMER_FAST_MAX_RELATION_ENTRIES='1e9' must be a positive integer"):
        GraphBatch.from_dense(dense)
    with pytest.raises(ValueError, match="max_relation_entries must be a positive integer, got 0"):
        GraphBatch.from_dense(dense, max_relation_entries=0)


# ---------------------------------------------------------------------- argument types and devices
@pytest.mark.parametrize("call, error, message", [
    (lambda e: GraphBatch.from_edge_index(e, 3), ValueError,
     r"num_nodes must list the node count of each graph \(1-D\), got the number 3"),
    (lambda e: GraphBatch.from_edge_index(e, [[3]]), ValueError, r"got shape \(1, 1\)"),
    (lambda e: GraphBatch.from_edge_index(e, None), ValueError, "num_nodes must be integers .* got NoneType"),
    (lambda e: GraphBatch.from_edge_index("ab", [3]), ValueError, "edge_index must be integers .* got str"),
    (lambda e: GraphBatch.from_edge_index(e.to("meta"), [3]), ValueError, "edge_index is a meta tensor"),
    (lambda e: GraphBatch.from_edge_index(e, torch.tensor([3], device="meta")), ValueError,
     "num_nodes is a meta tensor"),
    (lambda e: GraphBatch.from_dense(torch.zeros(1, 3, 3, device="meta")), ValueError, "adj is a meta tensor"),
    (lambda e: GraphBatch.from_dense(torch.zeros(1, 3, 3), num_vertices=torch.tensor([3], device="meta")),
     ValueError, "num_vertices is a meta tensor"),
    (lambda e: GraphBatch.collate([GraphBatch.from_edge_index(e, [3]), None]), TypeError,
     "collate: item 1 is a NoneType, not a GraphBatch"),
    (lambda e: GraphBatch.from_edge_index(e, [3]).pad_nodes(1.5), TypeError, "k and graphs must be integers"),
])
def test_bad_argument_types_and_meta_tensors_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call(torch.tensor([[0, 1], [1, 2]]))
