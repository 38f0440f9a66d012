"""NAS-Bench-201 latency cells as the network executes them, built from arch strings
(``nb201_latency_set``) or a user's CSV file (``load_nb201_latency_csv``)."""
import itertools
from pathlib import Path

import numpy as np
import pytest

from nnformer_fast.data import LatencyDataset, load_nb201_latency_csv, nb201_latency_set
from nnformer_fast.data.cells import NB201_OPS, nb201_cell, nb201_live_nodes
from nnformer_fast.data.latency import NB201_NOT_LIVE, nb201_cell_descriptor

EDGE_OPS = NB201_OPS[1:6]
EXAMPLE_CSV = Path(__file__).parent / "data" / "my_device.csv"
# the fixed 8-node graph: input 0, edges e1..e6 = nodes 1..6, output 7
FIXED_EDGES = [(0, 1), (0, 2), (0, 4), (1, 3), (1, 5), (2, 6), (3, 6), (4, 7), (5, 7), (6, 7)]
# the same cell as NAS-Bench-201 draws it: edge k of the arch string joins feature nodes CELL_EDGES[k]
CELL_EDGES = [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]


def _arch(ops) -> str:
    return "|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*ops)


def _live_edges(ops) -> list[bool]:
    """Oracle on the 4-node drawing: an edge is live when it is not ``none``, its start is
    reached from feature node 0 and its end reaches node 3, both along edges that are not ``none``."""
    real = [e for e, op in zip(CELL_EDGES, ops) if op != "none"]

    def reaches(a: int, b: int) -> bool:
        seen = {a}
        for _ in range(3):
            seen |= {t for s, t in real if s in seen}
        return b in seen

    return [op != "none" and reaches(0, s) and reaches(t, 3) for (s, t), op in zip(CELL_EDGES, ops)]


ALL_ARCHS = [_arch(ops) for ops in itertools.product(EDGE_OPS, repeat=6)]


@pytest.fixture(scope="module")
def every_cell():
    """All 15625 NAS-Bench-201 cells as one latency set (latency = row + 1 ms)."""
    return nb201_latency_set(ALL_ARCHS, np.arange(1, len(ALL_ARCHS) + 1), batch_size=1)


def test_every_executed_op_is_a_node(every_cell):
    s = every_cell.store
    op_ids = np.asarray(s["op_ids"]).reshape(len(ALL_ARCHS), 8)
    op_of = {code: op for op, code in NB201_NOT_LIVE.items()}
    op_ids = np.vectorize(lambda c: op_of.get(c, c))(op_ids)  # live or not, the op that runs
    codes = np.array([[NB201_OPS.index(o) for o in ops] for ops in itertools.product(EDGE_OPS, repeat=6)])
    assert (op_ids[:, 0] == 0).all() and (op_ids[:, 7] == NB201_OPS.index("output")).all()
    np.testing.assert_array_equal(op_ids[:, 1:7], codes)  # cut-off edges and none included
    edges = np.asarray(s["edges"]).reshape(2, len(ALL_ARCHS), len(FIXED_EDGES))
    assert (edges == np.array(FIXED_EDGES).T[:, None, :]).all()
    assert list(every_cell.records["graph"]) == ALL_ARCHS


def test_ops_whose_result_reaches_no_output_are_marked(every_cell):
    """An op that runs but whose result does not depend on the input or never reaches the
    output (what pruning removes) has its own one-hot position; so has the output of a cell cut
    off from its input (341 cells). On raspi4 and pixel3 such ops cost far less than live ones
    and most cut-off cells run in microseconds; elsewhere they cost the same (docs/DATA.md)."""
    op_ids = np.asarray(every_cell.store["op_ids"]).reshape(len(ALL_ARCHS), 8)
    output, not_live_output = NB201_OPS.index("output"), NB201_NOT_LIVE[NB201_OPS.index("output")]
    cut_off = 0
    for ops, codes in zip(itertools.product(EDGE_OPS, repeat=6), op_ids):
        live = _live_edges(ops)
        expected = [NB201_OPS.index(op) if ok or op == "none" else NB201_NOT_LIVE[NB201_OPS.index(op)]
                    for op, ok in zip(ops, live)]
        assert codes[1:7].tolist() == expected, ops
        assert codes[0] == 0 and codes[7] == (output if any(live) else not_live_output), ops
        cut_off += not any(live)
    assert cut_off == 341
    with pytest.raises(ValueError, match="8 op codes of the unpruned cell"):
        nb201_live_nodes(nb201_cell(_arch(EDGE_OPS[:1] * 6)).ops[:7])
    assert len(set(NB201_NOT_LIVE.values()) | set(range(len(NB201_OPS)))) == len(NB201_OPS) + len(NB201_NOT_LIVE)


def test_static_counts_add_up_over_edges(every_cell):
    """Each edge's op adds its own FLOPs, params and MACs, whether or not its output reaches
    the cell's output: the count of a cell is the all-skip cell's plus each edge's share
    measured alone. A count that dropped unreachable ops would break this for the 341 cut-off
    cells and many more."""
    sc = np.asarray(every_cell.store["scalars"])[:, 1:]  # FLOPs, params, MACs
    index = {a: i for i, a in enumerate(ALL_ARCHS)}
    base = sc[index[_arch(["skip_connect"] * 6)]]
    share = {(e, op): sc[index[_arch(["skip_connect"] * e + [op] + ["skip_connect"] * (5 - e))]] - base
             for e in range(6) for op in EDGE_OPS}
    expected = np.array([base + sum(share[e, op] for e, op in enumerate(ops))
                         for ops in itertools.product(EDGE_OPS, repeat=6)])
    np.testing.assert_allclose(sc, expected, rtol=1e-12)
    assert (share[0, "nor_conv_3x3"] > share[0, "nor_conv_1x1"]).all() and (share[0, "none"][[0, 2]] > 0).all()


def test_cut_off_conv_still_counts():
    dead_conv = _arch(["nor_conv_3x3", "none", "none", "none", "none", "none"])  # e1's output reaches nothing
    bare = _arch(["none"] * 6)
    ds = nb201_latency_set([dead_conv, bare], [5.0, 1.0])
    flops = np.asarray(ds.store["scalars"])[:, 1]
    assert flops[0] > flops[1]
    assert ds.num_nodes.tolist() == [8, 8]


def test_pruned_cells_are_refused():
    arch = _arch(["nor_conv_1x1", "none", "none", "skip_connect", "none", "avg_pool_3x3"])
    with pytest.raises(ValueError, match="keeps every executed op"):
        nb201_cell_descriptor(nb201_cell(arch))
    unpruned = nb201_cell_descriptor(nb201_cell(arch, prune=False))
    for a, b in zip(unpruned[:4], nb201_cell_descriptor(arch)[:4]):
        np.testing.assert_array_equal(a, b)


def test_latency_set_from_python():
    archs = ALL_ARCHS[100:110]
    ds = nb201_latency_set(archs, np.linspace(1, 2, 10), batch_size=32, platform="mine")
    assert isinstance(ds, LatencyDataset) and len(ds) == 10
    np.testing.assert_allclose(ds.latencies, np.linspace(1, 2, 10), rtol=1e-6)
    assert (np.asarray(ds.store["scalars"])[:, 0] == 32).all() and set(ds.platforms) == {"mine"}
    x, edge_index, static, y = ds[3]
    assert x.shape == (8, 192) and static.shape == (40,) and float(y) == pytest.approx(1 + 3 / 9)


@pytest.mark.parametrize("archs, lats, kw, match", [
    (ALL_ARCHS[:2], [1.0], {}, "2 archs, 1 latencies"),
    (ALL_ARCHS[:2], [1.0, 0.0], {}, r"\[1\]: latency must be a positive"),
    (ALL_ARCHS[:2], [1.0, float("nan")], {}, r"\[1\]: latency must be a positive"),
    ([ALL_ARCHS[0], "|conv~0|+"], [1.0, 2.0], {}, r"\[1\]: malformed NAS-Bench-201 arch"),
    ([ALL_ARCHS[5], ALL_ARCHS[5]], [1.0, 2.0], {}, r"\[1\]: arch .* repeats \[0\]"),
    (ALL_ARCHS[:2], [1.0, 2.0], {"batch_size": 0}, "batch_size must be an integer >= 1"),
    ([], [], {}, "no latencies"),
])
def test_latency_set_bad_inputs(archs, lats, kw, match):
    with pytest.raises(ValueError, match=match):
        nb201_latency_set(archs, lats, **kw)


def test_example_csv():
    ds = load_nb201_latency_csv(EXAMPLE_CSV)
    rows = [line.split(",") for line in EXAMPLE_CSV.read_text().splitlines()[1:]]
    assert len(ds) == len(rows) == 60 and set(ds.platforms) == {"my_device"}
    np.testing.assert_allclose(ds.latencies, [float(r[1]) for r in rows], rtol=1e-6)
    assert list(ds.records["graph"]) == [r[0] for r in rows]
    assert (np.asarray(load_nb201_latency_csv(EXAMPLE_CSV, batch_size=8).store["scalars"])[:, 0] == 8).all()


@pytest.mark.parametrize("text, match", [
    ("arch,ms\n", r"x.csv:1: the header must be 'arch,latency_ms'"),
    ("", r"x.csv:1: the header must be"),
    ("arch,latency_ms\n", "no latency rows"),
    (f"arch,latency_ms\n{ALL_ARCHS[0]},1.5\n{ALL_ARCHS[1]},fast\n", r"x.csv:3: latency_ms must be a number, got 'fast'"),
    (f"arch,latency_ms\n{ALL_ARCHS[0]},1.5,2\n", r"x.csv:2: expected 'arch,latency_ms', got 3 fields"),
    (f"arch,latency_ms\n{ALL_ARCHS[0]},1.5\n\n|none~0|,2\n", r"x.csv \[line 4\]: malformed NAS-Bench-201 arch"),
    (f"arch,latency_ms\n{ALL_ARCHS[0]},-1\n", r"x.csv \[line 2\]: latency must be a positive"),
    (f"arch,latency_ms\n{ALL_ARCHS[0]},1\n{ALL_ARCHS[0]},2\n", r"x.csv \[line 3\]: arch .* repeats \[line 2\]"),
])
def test_csv_bad_rows(tmp_path, text, match):
    f = tmp_path / "x.csv"
    f.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_nb201_latency_csv(f)


def test_csv_missing_or_binary(tmp_path):
    with pytest.raises(FileNotFoundError, match="latency CSV not found"):
        load_nb201_latency_csv(tmp_path / "none.csv")
    f = tmp_path / "b.csv"
    f.write_bytes(b"arch,latency_ms\n\xff\xfe\n")
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        load_nb201_latency_csv(f)
