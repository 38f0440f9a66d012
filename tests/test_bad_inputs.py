"""Malformed inputs raise clear errors naming what is wrong and where (files, graphs, records),
and the valid inputs next to them still pass: saved latency sets, cell files, GraphBatch
builders, the accuracy model's sample, and the graph index tensors on the non-native backends."""
import csv
import dataclasses
import json
import re

import numpy as np
import pytest
import torch

from nnformer_fast import GraphBatch, NNFormer
from nnformer_fast.data import cells as C
from nnformer_fast.data.latency import LatencyDataset, parse_latency_file
from nnformer_fast.dense import dense_nnformer
from nnformer_fast.ops import bigin, dag_attention, dag_attention_qkv
from nnformer_fast.ops import checks as op_checks
from nnformer_fast.ops.backends import ENV_VAR, _REGISTRY
from nnformer_fast.testing import random_batch
from nnformer_fast.train import tasks as T


# ---------------------------------------------------------------------- saved latency sets
def _store():
    """Two graphs: 3 nodes with edges 0->1, 1->2; 2 nodes with edge 0->1."""
    return dict(op_ids=np.array([0, 1, 2, 0, 5], np.int16), attrs=np.zeros((5, 8), np.float32),
                shapes=np.zeros((5, 4), np.int32), node_ptr=np.array([0, 3, 5]),
                edges=np.array([[0, 1, 0], [1, 2, 1]], np.int32), edge_ptr=np.array([0, 2, 3]),
                scalars=np.ones((2, 4)))


def _records():
    return {"entry": np.array([0, 1, 1]), "latency": np.array([1.0, 2.0, 3.0], np.float32),
            "family": np.array(["a", "b", "b"])}


def _save(path, store, records):
    np.savez(path, **store, **{"rec_" + k: v for k, v in records.items()})
    return path


def test_valid_latency_set_loads(tmp_path):
    ds = LatencyDataset.load(_save(tmp_path / "ok.npz", _store(), _records()))
    assert len(ds) == 3 and ds.num_nodes.tolist() == [3, 2, 2]
    assert ds.graph_arrays(1)[1].tolist() == [[0], [1]]
    ds.save(tmp_path / "again.npz")
    assert LatencyDataset.load(tmp_path / "again.npz").num_nodes.tolist() == [3, 2, 2]


BAD_STORES = {
    # edge (1, 4) of graph 0 names node 1 of graph 1 once packed: two networks joined
    "edge past its graph": ({"edges": np.array([[0, 1, 0], [1, 4, 1]], np.int32)}, {}, r"graph 0 edge 1 = \(1, 4\)"),
    "edge back": ({"edges": np.array([[0, 2, 0], [1, 0, 1]], np.int32)}, {}, r"graph 0 edge 1 = \(2, 0\)"),
    "self loop": ({"edges": np.array([[0, 1, 1], [1, 2, 1]], np.int32)}, {}, r"graph 1 edge 0 = \(1, 1\)"),
    "negative id": ({"edges": np.array([[0, 1, -1], [1, 2, 1]], np.int32)}, {}, r"graph 1 edge 0 = \(-1, 1\)"),
    "float edges": ({"edges": np.array([[0, 1, 0], [1, 2, 1]], np.float32)}, {}, "edges must hold integers"),
    "node_ptr past the nodes": ({"node_ptr": np.array([0, 3, 7])}, {}, "node_ptr runs from 0 to 7"),
    "node_ptr not from 0": ({"node_ptr": np.array([1, 3, 5])}, {}, "node_ptr runs from 1 to 5"),
    "empty graph": ({"node_ptr": np.array([0, 0, 5])}, {}, r"graph 0: node_ptr\[0:2\] = \[0, 0\]"),
    "node_ptr and edge_ptr lengths": ({"edge_ptr": np.array([0, 3])}, {}, "must both be"),
    "edge_ptr short of the edges": ({"edge_ptr": np.array([0, 2, 2])}, {}, "edge_ptr runs from 0 to 2"),
    "edge_ptr decreasing": ({"edge_ptr": np.array([0, 4, 3])}, {}, r"graph 1: edge_ptr\[1:3\] = \[4, 3\]"),
    "attrs rows": ({"attrs": np.zeros((4, 8), np.float32)}, {}, r"attrs has shape \(4, 8\)"),
    "scalars rows": ({"scalars": np.ones((3, 4))}, {}, r"scalars has shape \(3, 4\)"),
    "op id": ({"op_ids": np.array([0, 1, 40, 0, 5], np.int16)}, {}, r"node 2 has op id 40 outside \[-1, 32\)"),
    "entry -1": ({}, {"entry": np.array([0, -1, 1])}, r"record 1 has entry -1 outside \[0, 2\)"),
    "entry past the graphs": ({}, {"entry": np.array([0, 1, 2])}, r"record 2 has entry 2 outside \[0, 2\)"),
    "latency rows": ({}, {"latency": np.array([1.0, 2.0], np.float32)}, "'latency' has"),
    "family rows": ({}, {"family": np.array(["a"])}, "'family' has"),
    "extra column rows": ({}, {"p25_ms": np.array([1.0])}, "'p25_ms' has"),
    "nan latency": ({}, {"latency": np.array([1.0, np.nan, 3.0], np.float32)}, "record 1 has latency nan"),
    "negative latency": ({}, {"latency": np.array([1.0, 2.0, -3.0], np.float32)}, "record 2 has latency -3.0"),
}


@pytest.mark.parametrize("case", list(BAD_STORES))
def test_malformed_latency_set_raises(tmp_path, case):
    store_changes, record_changes, match = BAD_STORES[case]
    path = _save(tmp_path / "bad.npz", dict(_store(), **store_changes), dict(_records(), **record_changes))
    with pytest.raises(ValueError, match=match) as info:
        LatencyDataset.load(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match=match):  # the same check for arrays handed over directly
        LatencyDataset.from_arrays(dict(_store(), **store_changes), dict(_records(), **record_changes), "mine")


def test_latency_set_missing_columns():
    with pytest.raises(ValueError, match=r"missing \['latency'\]"):
        LatencyDataset.from_arrays(_store(), {"entry": np.array([0])}, "mine")


def test_latency_text_file_with_a_byte_order_mark(tmp_path):
    """A UTF-8 byte-order mark (Windows editors write one) is not part of the first speed_id."""
    path = tmp_path / "gt.txt"
    path.write_bytes("\ufeffs0 onnx/a.onnx 1 2.5 resnet cpu\ns1 onnx/b.onnx 8 7.0 vgg cpu\n".encode("utf-8"))
    assert [r.speed_id for r in parse_latency_file(path)] == ["s0", "s1"]


def test_latency_text_file_that_is_not_text(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_bytes(b"s0 onnx/a.onnx 1 2.5 resnet cpu\n\xff\xfe\x00\x80 binary\n")
    with pytest.raises(ValueError, match=r"gt.txt: not a UTF-8 text file"):
        parse_latency_file(path)


def test_default_latency_set_passes_the_checks():
    from nnformer_fast.data import load_default_latency_set

    assert len(load_default_latency_set()) > 0


# ---------------------------------------------------------------------- cell files
NB101 = {"module_adjacency": [[0, 1], [0, 0]], "module_operations": [0, 4], "validation_accuracy": 0.9}
NB101_BAD = {
    "missing field": ({"0": {k: v for k, v in NB101.items() if k != "module_adjacency"}},
                      r"\[0\]: missing field 'module_adjacency'"),
    "non-integer key": ({"a": NB101}, r"\[a\]: keys must be integers"),
    "list root": ([NB101], "root must be an object"),
    "record not an object": ({"0": [1, 2]}, r"\[0\]: expected an object"),
    "accuracy a string": ({"0": dict(NB101, validation_accuracy="high")}, r"\[0\]: validation_accuracy must be a"),
    "ragged adjacency": ({"0": dict(NB101, module_adjacency=[[0, 1], [0]])}, r"\[0\]: .*ragged"),
    "bool op codes": ({"0": dict(NB101, module_operations=[False, True, 4],
                                 module_adjacency=[[0, 1, 0], [0, 0, 1], [0, 0, 0]])},
                      r"\[0\]: unknown NAS-Bench-101 op code False"),
    "no records": ({}, "no records"),
}


@pytest.mark.parametrize("case", list(NB101_BAD))
def test_malformed_nb101_json_raises(tmp_path, case):
    data, match = NB101_BAD[case]
    path = tmp_path / "nb101.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=match) as info:
        C.load_nb101_json(path)
    assert str(path) in str(info.value)


def test_nb101_json_not_json(tmp_path):
    path = tmp_path / "nb101.json"
    path.write_text("{'0': ")
    with pytest.raises(ValueError, match="not a JSON file"):
        C.load_nb101_json(path)


SPEC_JSON = json.dumps({"0": NB101}).encode()
UNREADABLE_DATA = {  # file name -> bytes: each must give one line naming the file, never a traceback
    "null.json": b"null",
    "number.json": b"3",
    "nested.json": b"[" * 200_000 + b"]" * 200_000,
    "empty.json": b"",
    "blank.json": b"  \n\n",
    "truncated.json": SPEC_JSON[:-7],
    "binary.json": bytes(range(256)) * 40,
    "utf16.json": SPEC_JSON.decode().encode("utf-16"),
    "utf16-no-bom.json": SPEC_JSON.decode().encode("utf-16-le"),
    "long-value.json": json.dumps({"0": dict(NB101, validation_accuracy="x" * 300_000)}).encode(),
    "long-key.json": json.dumps({"9" * 300_000: {"module_operations": [0, 4]}}).encode(),
    "binary.csv": bytes(range(256)) * 40,
    "utf16.csv": "ArchitectureString,CIFAR10TestAccuracy200Epochs\n".encode("utf-16"),
    "nul.csv": b"ArchitectureString,CIFAR10TestAccuracy200Epochs\x00\n",
    "empty.csv": b"",
    "one-line.txt": b" ".join([b"field"] * 60_000),
    "binary.txt": bytes(range(256)) * 40,
}


@pytest.mark.parametrize("name", list(UNREADABLE_DATA))
def test_unreadable_data_files_give_one_short_line(tmp_path, capsys, name):
    """Empty, truncated, binary, UTF-16, ``null``, deeply nested and huge one-line files:
    exit 2 and one line (at most 300 characters) naming the file, never the file's content."""
    from nnformer_fast.cli import main

    path = tmp_path / name
    path.write_bytes(UNREADABLE_DATA[name])
    task = "latency" if name.endswith(".txt") else "accuracy"
    assert main(["train", "--task", task, "--data", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and len(lines[0]) <= 300, err[:500]
    with pytest.raises(ValueError) as info:  # the loaders' own messages are short too (Python API)
        T.load_dataset(task, path)
    assert str(path) in str(info.value) and len(str(info.value)) <= 200 + len(str(path)), str(info.value)[:500]


def test_bool_op_codes_are_not_op_codes():
    with pytest.raises(ValueError, match="unknown NAS-Bench-101 op code True"):
        C.nb101_cell([[0, 1, 0], [0, 0, 1], [0, 0, 0]], [0, True, 4])
    with pytest.raises(ValueError, match="unknown NAS-Bench-201 edge op True"):
        C.nb201_cell([True, 1, 1, 1, 1, 1])
    assert C.nb101_cell([[0, 1, 0], [0, 0, 1], [0, 0, 0]], [0, np.int64(1), 4]).ops.tolist() == [0, 1, 4]
    assert C.nb201_cell([2, 2, 2, 2, 2, 2]).num_nodes == 8


NB201_HEADER = ["CIFAR10TestAccuracy200Epochs", "CIFAR100TestAccuracy200Epochs", "ImageNetTestAccuracy200Epochs",
                "ArchitectureString", "UniqueString"]
ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|nor_conv_3x3~2|"
HEADER_LINE = ",".join(NB201_HEADER) + "\n"
NB201_CSV_BAD = {
    "empty file": ("", "empty file"),
    "header only": (HEADER_LINE, "no records"),
    "missing column": ("CIFAR10TestAccuracy200Epochs,ArchitectureString\n93.1," + ARCH + "\n",
                       r"lacks the columns \['CIFAR100TestAccuracy200Epochs'"),
    "empty accuracy": (HEADER_LINE + f"93.1,70.0,40.0,{ARCH},x\n,70.0,40.0,{ARCH},y\n",
                       r"\[line 3\]: CIFAR10TestAccuracy200Epochs must be a number, got ''"),
    "short row": (HEADER_LINE + "93.1\n", r"\[line 2\]: row has fewer fields than the header \(5\)"),
    "long row": (HEADER_LINE + f"93.1,70.0,40.0,{ARCH},x,extra\n", r"\[line 2\]: row has more fields"),
    "bad arch": (HEADER_LINE + "93.1,70.0,40.0,|conv~0|,x\n", r"\[line 2\]: malformed NAS-Bench-201 arch"),
    "percent out of range": (HEADER_LINE + f"193.1,70.0,40.0,{ARCH},x\n", r"\[line 2\]: accuracy 193.1 is not"),
}


@pytest.mark.parametrize("case", list(NB201_CSV_BAD))
def test_malformed_nb201_csv_raises(tmp_path, case):
    text, match = NB201_CSV_BAD[case]
    path = tmp_path / "nb201.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        C.load_nb201_csv(path)
    assert str(path) in str(info.value)


def test_valid_nb201_csv_with_bom(tmp_path):
    path = tmp_path / "nb201.csv"
    with open(path, "w", newline="", encoding="utf-8-sig") as f:
        csv.writer(f).writerows([NB201_HEADER, ["93.1", "70.0", "40.0", ARCH, "x"]])
    (cell,) = C.load_nb201_csv(path, dataset="cifar100")
    assert cell.accuracy == pytest.approx(0.7) and cell.key == ARCH


@pytest.mark.parametrize("key", ["(-1, 0, 0, 0, 0, 0)", "(0, 0, 0, 0, 0, 5)", "(0, 0, 0, 0, 0, 17)"])
def test_naslib_nb201_op_ids_in_range(tmp_path, key):
    path = tmp_path / "nb201_naslib.json"
    path.write_text(json.dumps({"cifar10": {key: {"val_accuracy": 80.0}}}))
    bad = [int(v) for v in key.strip("()").split(",") if not 0 <= int(v) < 5][0]
    with pytest.raises(ValueError, match=re.escape(f"[{key}]: NASLib NAS-Bench-201 op id {bad} outside [0, 5)")):
        C.load_nb201_naslib(path)
    path.write_text(json.dumps({"cifar10": {"(4, 3, 2, 1, 0, 2)": {"val_accuracy": 80.0}}}))
    assert C.load_nb201_naslib(path)[0].accuracy == pytest.approx(0.8)


@pytest.mark.parametrize("ops", [(-5, -4), (0, 5)])
def test_naslib_nb101_op_ids_in_range(tmp_path, ops):
    path = tmp_path / "nb101_naslib.json"
    key = "(" + ", ".join(map(str, [0, 1, 0, 0, *ops])) + ")"
    path.write_text(json.dumps({"nasbench101": {"cifar10": {key: {"val_accuracy": 90.0}}}}))
    bad = [v for v in ops if not 0 <= v < 5][0]
    with pytest.raises(ValueError, match=rf"{path.name} \[.*\]: NASLib NAS-Bench-101 op id {bad} outside \[0, 5\)"):
        C.load_nb101_naslib(path)
    path.write_text(json.dumps({"nasbench101": {"cifar10": {"(0, 1, 0, 0, 0, 1)": {"val_accuracy": 90.0}}}}))
    assert C.load_nb101_naslib(path)[0].ops.tolist() == [0, 4]


def test_naslib_malformed_record(tmp_path):
    path = tmp_path / "nb201_naslib.json"
    path.write_text(json.dumps({"cifar10": {"(0, 0, 0, 0, 0, 0)": {"acc": 80.0}}}))
    with pytest.raises(ValueError, match=r"\[\(0, 0, 0, 0, 0, 0\)\]: missing field 'val_accuracy'"):
        C.load_nb201_naslib(path)
    path.write_text(json.dumps({"cifar10": {"(0, x)": {"val_accuracy": 80.0}}}))
    with pytest.raises(ValueError, match="is not a tuple of integers"):
        C.load_nb201_naslib(path)
    path.write_text(json.dumps({"cifar10": {}}))
    with pytest.raises(ValueError, match="no records"):
        C.load_nb201_naslib(path)


# ---------------------------------------------------------------------- GraphBatch builders
def test_from_dense_rejects_zero_nodes():
    with pytest.raises(ValueError, match="graph 0 has 0 nodes; every graph needs at least one node"):
        GraphBatch.from_dense(torch.zeros(2, 0, 0))
    with pytest.raises(ValueError, match="graph 0 has 0 nodes; every graph needs at least one node"):
        GraphBatch.from_edge_index(torch.zeros(2, 0, dtype=torch.int64), [0])


@pytest.mark.parametrize("edges, sizes, name", [
    (torch.tensor([[0.0, 1.9], [1.9, 2.7]]), [3], "edge_index"),
    (torch.tensor([[0, 1], [1, 2]]), torch.tensor([3.9]), "num_nodes"),
    ([[0.0, 1.0], [1.0, 2.0]], [3], "edge_index"),  # integral floats too: no silent cast
    (torch.tensor([[True], [False]]), [2], "edge_index"),
    (torch.tensor([[0], [1]]), [True, True], "num_nodes"),
    (torch.tensor([[0], [1]]), [2.0], "num_nodes"),
])
def test_from_edge_index_rejects_non_integer_ids(edges, sizes, name):
    with pytest.raises(ValueError, match=f"GraphBatch: {name} must hold integers"):
        GraphBatch.from_edge_index(edges, sizes)


def test_from_edge_index_mask_rejects_non_integer_ids():
    with pytest.raises(ValueError, match="mask_edge_index must hold integers"):
        GraphBatch.from_edge_index(torch.tensor([[0], [1]]), [2], mask_edge_index=torch.tensor([[0.5], [1.0]]))


def test_integer_ids_of_any_width_still_pass():
    g = GraphBatch.from_edge_index(torch.tensor([[0, 1], [1, 2]], dtype=torch.int32), np.array([3], np.int16))
    assert g.edge_index.dtype == torch.int64 and g.edge_index.tolist() == [[0, 1], [1, 2]]
    assert GraphBatch.from_edge_index([[0, 1], [1, 2]], [3]).num_edges == 2
    assert GraphBatch.from_edge_index(torch.zeros(2, 0), [2]).num_edges == 0  # empty float: nothing to cast


@pytest.mark.parametrize("num_vertices", [torch.tensor([1.9, 2.0]), torch.tensor([True, True]), [2.0, 3.0]])
def test_from_dense_rejects_non_integer_num_vertices(num_vertices):
    with pytest.raises(ValueError, match="num_vertices must hold integers"):
        GraphBatch.from_dense(torch.zeros(2, 3, 3), num_vertices=num_vertices)
    assert GraphBatch.from_dense(torch.zeros(2, 3, 3), num_vertices=[2, 3]).num_nodes == 5


# ---------------------------------------------------------------------- NNFormer samples
def _cell_sample(b=2, l=5, c=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    adj = torch.triu((torch.rand(b, l, l, generator=g) < 0.5).float(), 1)
    return {"code": torch.randn(b, l, c, generator=g), "code_depth": torch.randn(b, 1, c, generator=g),
            "code_rel_pos": adj.long(), "code_adj": adj}


@pytest.mark.parametrize("avg_tokens", [False, True])
@pytest.mark.parametrize("num_vertices, match", [
    ([5, 6], r"sample 1 has num_vertices=6, outside \[1, 5\]"),  # the depth token would fall off
    ([5, 0], r"sample 1 has num_vertices=0, outside \[1, 5\]"),
    ([-1, 5], r"sample 0 has num_vertices=-1, outside \[1, 5\]"),  # would overwrite the class token
    ([[5], [5]], r"num_vertices must have shape \(2,\)"),
    ([5], r"num_vertices must have shape \(2,\)"),
    ([5.0, 4.0], "num_vertices must hold integers"),
    ([True, True], "num_vertices must hold integers"),
])
def test_nnformer_rejects_bad_num_vertices(avg_tokens, num_vertices, match):
    model = NNFormer(depths=(1,), dim=16, n_head=4, avg_tokens=avg_tokens).eval()
    sample = dict(_cell_sample(), num_vertices=torch.tensor(num_vertices))
    with pytest.raises(ValueError, match=match):
        model(sample)


@pytest.mark.parametrize("avg_tokens", [False, True])
def test_nnformer_num_vertices_at_the_bounds(avg_tokens):
    model = NNFormer(depths=(1,), dim=16, n_head=4, avg_tokens=avg_tokens).double().eval()
    sample = {k: v.double() if v.is_floating_point() else v for k, v in _cell_sample().items()}
    sample["num_vertices"] = torch.tensor([5, 1])
    with torch.no_grad():
        out = model(sample)
    ref = dense_nnformer(model.state_dict(), sample, depth=1, n_head=4, avg_tokens=avg_tokens)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref)


def test_nnformer_rejects_empty_cells():
    sample = _cell_sample(l=0)
    with pytest.raises(ValueError, match="L = 0"):
        NNFormer(depths=(1,), dim=16, n_head=4).eval()(sample)


@pytest.mark.parametrize("key", ["code_adj", "code_rel_pos"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nnformer_rejects_non_finite_adjacency(key, value):
    sample = _cell_sample()
    sample["code_rel_pos"] = sample["code_rel_pos"].float()  # some pipelines hand it over as float
    sample[key][1, 0, 3] = value
    with pytest.raises(ValueError, match=f"NNFormer: {key} of sample 1 holds NaN or inf"):
        NNFormer(depths=(1,), dim=16, n_head=4).eval()(sample)


# ---------------------------------------------------------------------- graph index tensors, non-native backends
@pytest.fixture(params=[name for name in ("torch", "triton") if _REGISTRY.get(name) and
                        _REGISTRY[name].load_error is None])
def python_backend(request, monkeypatch):
    monkeypatch.setenv(ENV_VAR, request.param)
    return request.param


def _corrupt(graph, field, index, value):
    return dataclasses.replace(graph, **{field: getattr(graph, field).clone().index_fill_(0, torch.tensor([index]),
                                                                                          value)})


def _run(op, graph):
    n = graph.num_nodes
    if op == "bigin":
        h = torch.randn(n, 8)
        return bigin(h, h, graph)
    q = torch.randn(n, 4, 8)
    return dag_attention(q, q, q, graph)


GRAPH = random_batch([5, 3], seed=2)
N, R = GRAPH.num_nodes, GRAPH.rel_col.numel()
BAD_INDICES = {
    "rel_col": ("dag_attention", "rel_col", 0, N + 3, rf"dag_attention: rel_col\[0\] = {N + 3} lies outside \[0, {N}\)"),
    "rel_row": ("dag_attention", "rel_row", 2, -1, rf"rel_row\[2\] = -1 lies outside \[0, {N}\)"),
    "rel_tperm": ("dag_attention", "rel_tperm", 1, R, rf"rel_tperm\[1\] = {R} lies outside \[0, {R}\)"),
    "rel_rowptr first": ("dag_attention", "rel_rowptr", 0, 1, r"rel_rowptr\[0\] must be 0, got 1"),
    "rel_rowptr order": ("dag_attention", "rel_rowptr", 2, 10**6, r"rel_rowptr must be non-decreasing, but "
                         r"rel_rowptr\[3\] = \d+ < rel_rowptr\[2\] = 1000000"),
    "rel_rowptr last": ("dag_attention", "rel_rowptr", 4 * N, R + 1, rf"rel_rowptr\[-1\] = {R + 1} but rel_col has"),
    "adj_col": ("bigin", "adj_col", 0, N, rf"bigin: adj_col\[0\] = {N} lies outside \[0, {N}\)"),
    "adj_row": ("bigin", "adj_row", 0, -2, r"bigin: adj_row\[0\] = -2 lies outside"),
    "adjt_col": ("bigin", "adjt_col", 1, 99, r"bigin: adjt_col\[1\] = 99 lies outside"),
    "adjt_rowptr": ("bigin", "adjt_rowptr", 1, 10**6, "adjt_rowptr must be non-decreasing"),
}


@pytest.mark.parametrize("case", list(BAD_INDICES))
def test_malformed_graph_indices_raise_on_python_backends(python_backend, case):
    op, field, index, value, match = BAD_INDICES[case]
    with pytest.raises(RuntimeError, match=match):
        _run(op, _corrupt(GRAPH, field, index, value))


def test_malformed_graph_metadata_raises(python_backend):
    with pytest.raises(RuntimeError, match="rel_offsets"):
        _run("dag_attention", dataclasses.replace(GRAPH, rel_offsets=(0, 3, 2, 5, R)))
    with pytest.raises(RuntimeError, match="rel_col must be a 1-D int64 tensor, got torch.int32"):
        _run("dag_attention", dataclasses.replace(GRAPH, rel_col=GRAPH.rel_col.int()))
    with pytest.raises(RuntimeError, match=f"adj_row must have {GRAPH.num_edges} elements"):
        _run("bigin", dataclasses.replace(GRAPH, adj_row=GRAPH.adj_row[:-1]))
    qkv = torch.randn(N, 3, 4, 8)
    with pytest.raises(RuntimeError, match="rel_col"):
        dag_attention_qkv(qkv, _corrupt(GRAPH, "rel_col", 0, -1))


def test_cpu_graph_indices_are_scanned_on_every_call(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "torch")
    graph = random_batch([6, 4], seed=3)
    before = op_checks.index_scans()
    for _ in range(3):
        _run("dag_attention", graph)
        _run("bigin", graph)
    assert op_checks.index_scans() - before == 3 * (4 + 6)  # rel: rowptr, col, row, tperm; adj and adjt: 3 each
    graph.rel_col.numpy()[0] = graph.num_nodes + 1  # bumps no version counter: caught all the same
    with pytest.raises(RuntimeError, match="rel_col"):
        _run("dag_attention", graph)


def test_padded_graphs_pass_the_index_checks(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "torch")
    graph = random_batch([4, 3], seed=4).pad_nodes(5, graphs=2)
    assert _run("dag_attention", graph).shape == (12, 4, 8)
    assert _run("bigin", graph).shape == (12, 8)


# ---------------------------------------------------------------------- op and model arguments
@pytest.mark.parametrize("shape, match", [((N, 0, 8), "positive multiple of 4, got 0"),
                                          ((N, 4, 0), "head dim Dh must be at least 1")])
def test_attention_rejects_empty_heads(shape, match):
    q = torch.randn(shape)
    with pytest.raises(ValueError, match=match):
        dag_attention(q, q, q, GRAPH)


@pytest.mark.parametrize("backend", [name for name in ("native", "torch") if _REGISTRY[name].load_error is None])
def test_seeds_past_2_63_drop_as_their_low_32_bits(monkeypatch, backend):
    """Seeds are hashed by their low 32 bits on every backend; seeds of 2**63 and more (like
    torch.initial_seed()'s) reach the kernels too."""
    from nnformer_fast.ops import dropout

    monkeypatch.setenv(ENV_VAR, backend)
    q = torch.randn(N, 4, 8)
    x = torch.randn(64)
    big = 2**64 - 12345
    assert torch.equal(dag_attention(q, q, q, GRAPH, dropout_p=0.5, seed=big),
                       dag_attention(q, q, q, GRAPH, dropout_p=0.5, seed=big & 0xFFFFFFFF))
    assert torch.equal(dropout(x, 0.5, seed=big), dropout(x, 0.5, seed=big & 0xFFFFFFFF))
    assert torch.equal(dropout(x, 0.5, seed=-1), dropout(x, 0.5, seed=0xFFFFFFFF))
    assert torch.equal(dropout(x, 0.5, seed=np.int64(7)), dropout(x, 0.5, seed=7))
    for bad in (1.5, True, "7"):
        with pytest.raises(TypeError, match="seed must be an integer"):
            dropout(x, 0.5, seed=bad)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_head=0), "positive multiple of 4"),
    (dict(n_head=6, dim=24), "positive multiple of 4"),
    (dict(n_head=8, dim=36), "divisible"),
    (dict(depths=[]), "depths must start"),
    (dict(act_layer="tanh"), "unknown activation 'tanh'"),
    (dict(class_token=False), "readout needs class_token=True or avg_tokens=True"),
])
def test_nnformer_rejects_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NNFormer(**{"depths": (1,), "dim": 16, **kwargs})


# ---------------------------------------------------------------------- NAS-Bench-201 latency files
ARCH = "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|none~1|avg_pool_3x3~2|"
NB201_BAD = {
    "latencies not numbers": (["fast", "slow"], {ARCH: 0}, "pixel3.pt", "expected a list of latencies"),
    "index not a dict": ([1.0, 2.0], [ARCH], "str_arch2idx.pt", "expected a dict"),
    "negative index": ([1.0, 2.0], {ARCH: -1}, "str_arch2idx.pt", "an int >= 0"),
    "index a float": ([1.0, 2.0], {ARCH: 1.0}, "str_arch2idx.pt", "an int >= 0"),
    "not a torch file": (None, {ARCH: 0}, "pixel3.pt", "not a complete zip archive"),
}


@pytest.mark.parametrize("case", list(NB201_BAD))
def test_malformed_nb201_latency_files_are_named(tmp_path, case):
    """A negative index would silently read another cell's latency (Python wraps it)."""
    from nnformer_fast.data.latency import load_nb201_latency

    latencies, index, culprit, match = NB201_BAD[case]
    if latencies is None:
        (tmp_path / "pixel3.pt").write_bytes(b"1.0 2.0\n")
    else:
        torch.save(latencies, tmp_path / "pixel3.pt")
    torch.save(index, tmp_path / "str_arch2idx.pt")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / culprit)) + ".*" + match):
        load_nb201_latency("pixel3", tmp_path)


# ---------------------------------------------------------------------- packed latency sets
def test_truncated_or_foreign_npz_is_named(tmp_path):
    good = _save(tmp_path / "good.npz", _store(), _records())
    for name, data in (("torn.npz", good.read_bytes()[:200]), ("text.npz", b"not an archive"),
                       ("array.npz", None)):
        path = tmp_path / name
        if data is None:
            np.save(path.with_suffix(".npy"), np.zeros(3))
            path.with_suffix(".npy").rename(path)
        else:
            path.write_bytes(data)
        with pytest.raises(ValueError, match=re.escape(str(path)) + ": not a latency set"):
            LatencyDataset.load(path)


def test_pack_names_a_malformed_spread_file(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from nnformer_fast.data.latency import pack_latency_set

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph), tmp_path / "a.onnx")
    (tmp_path / "latency.txt").write_text("s0 a.onnx 1 2.0 fam cpu\n")
    (tmp_path / "latency_spread.tsv").write_text("speed_id\tx\ty\tp25_ms\tp75_ms\ns0\t.\t.\tfast\t2.1\n")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "latency_spread.tsv")) + ":2: p25_ms"):
        pack_latency_set(tmp_path, tmp_path / "set.npz", workers=0, progress=False)
