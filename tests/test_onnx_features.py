"""ONNX -> graph features (SPEC section 7): the real NNLQP ResNet-18 and generated graphs."""
import warnings
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from nnformer_fast.data.onnx_features import (  # noqa: E402
    NODE_FEATURES, OP_TYPES, STATIC_FEATURES, NodeFeatureTable, describe_onnx, embed_scalar, load_onnx_graph,
    node_features)

RESNET18 = Path(__file__).resolve().parents[2] / "shared" / "data" / "nnlqp_resnet18_noweight.onnx"


def _model(nodes, inputs, outputs, inits=()):
    g = helper.make_graph(nodes, "t", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _check_graph(g):
    n = g.num_nodes
    assert g.x.shape == (n, NODE_FEATURES) and g.x.dtype == np.float32
    assert g.static.shape == (STATIC_FEATURES,) and g.static.dtype == np.float32
    assert g.edge_index.dtype == np.int64 and g.edge_index.shape[0] == 2
    assert (g.edge_index[0] < g.edge_index[1]).all()
    assert len(g.op_types) == n
    onehot = g.x[:, :32]
    for i, t in enumerate(g.op_types):
        if t in OP_TYPES:
            assert onehot[i].argmax() == OP_TYPES.index(t) and onehot[i].sum() == 1
        else:
            assert onehot[i].sum() == 0


@pytest.mark.skipif(not RESNET18.is_file(), reason="shared data absent")
def test_real_resnet18():
    g = load_onnx_graph(RESNET18)
    assert g.num_nodes == 69
    _check_graph(g)
    assert g.op_types.count("Conv") == 20 and g.op_types.count("BatchNormalization") == 20
    assert g.op_types[0] == "Conv" and g.op_types[-1] == "Gemm"
    assert abs(g.params - 11.69e6) < 0.05e6  # ResNet-18's parameter count (weights stripped, dims kept)
    assert abs(g.flops / 2 - 1.82e9) < 0.05e9  # 1.8 G multiply-adds
    assert g.shapes[0].tolist() == [1, 64, 112, 112]
    assert g.attrs[0, :5].tolist() == [7, 2, 3, 1, 1]  # kernel, stride, pad, dilation, group
    assert len(g.edge_index[0]) == 76  # 68 chain edges + 8 residual edges
    g8 = load_onnx_graph(RESNET18, batch_size=8)
    assert g8.shapes[:, 0].tolist() == [8] * 69
    assert np.allclose(g8.flops, 8 * g.flops, rtol=1e-3)
    assert np.allclose(g8.static[:10], embed_scalar(8.0, 5))


def test_embed_scalar_formula():
    x = 3.7
    e = embed_scalar(x, 5)
    f = 10000.0 ** (-np.arange(5) / 5)
    assert np.allclose(e[0::2], np.sin(x * f)) and np.allclose(e[1::2], np.cos(x * f))
    assert embed_scalar(np.zeros((3, 2)), 10).shape == (3, 2, 20)


def test_node_features_layout():
    x = node_features([0, -1], np.arange(16).reshape(2, 8), [[1, 2, 3, 4], [0, 0, 0, 0]])
    assert x.shape == (2, 192)
    assert x[0, 0] == 1 and x[1, :32].sum() == 0
    assert np.allclose(x[1, 32:42], embed_scalar(8.0, 5))
    assert np.allclose(x[0, 112 + 20:112 + 40], embed_scalar(2.0, 10))


def test_node_feature_table_equals_per_node_features():
    rng = np.random.default_rng(0)
    distinct = 7
    op_ids = rng.integers(-1, 40, distinct)  # unknown ids (-1, >= 32) included
    attrs = rng.integers(0, 5, (distinct, 8)).astype(np.float32)
    shapes = rng.integers(1, 300, (distinct, 4)).astype(np.int32)
    attrs[0, 0] = -0.0  # same features as 0.0: may take its own row, must give the same values
    pick = rng.integers(0, distinct, 200)  # every row repeated
    table = NodeFeatureTable(op_ids[pick], attrs[pick], shapes[pick])
    assert table.num_distinct <= distinct
    nodes = rng.permutation(200)[:50]
    want = node_features(op_ids[pick][nodes], attrs[pick][nodes], shapes[pick][nodes])
    np.testing.assert_array_equal(table[nodes], want)


def test_topological_order_constant_folding_and_unknown_op(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [  # file order is NOT topological: the Add comes first
        helper.make_node("Add", ["r", "c"], ["a"], name="add"),
        helper.make_node("Conv", ["x", "w"], ["y"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Constant", [], ["c"], name="const",
                         value=numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32))),
        helper.make_node("Erf", ["y"], ["r"], name="erf"),
        helper.make_node("Transpose", ["a"], ["out"], name="tr", perm=[0, 2, 3, 1]),
    ]
    m = _model(nodes, [_vi("x", ["N", 3, 8, 8])], [_vi("out", None)], [w])
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        g = load_onnx_graph(path, batch_size=2)
    assert g.op_types == ["Conv", "Erf", "Add", "Transpose"]  # Constant folded away
    assert g.edge_index.tolist() == [[0, 1, 2], [1, 2, 3]]
    assert len(rec) == 1 and "Erf" in str(rec[0].message) and "1 nodes" in str(rec[0].message)
    _check_graph(g)
    assert g.shapes[3].tolist() == [2, 8, 8, 4]
    assert g.attrs[3, 6] == 231  # perm digits
    assert g.params == 4 * 3 * 9
    assert g.flops == 2 * 2 * 4 * 64 * 27 + 2 * 2 * 4 * 64  # conv + Erf + Add


def test_cyclic_model_raises_naming_file(tmp_path):
    nodes = [helper.make_node("Relu", ["b"], ["a"], name="r1"), helper.make_node("Relu", ["a"], ["b"], name="r2"),
             helper.make_node("Add", ["x", "a"], ["out"], name="add")]
    path = tmp_path / "cyclic.onnx"
    onnx.save(_model(nodes, [_vi("x", [1, 4])], [_vi("out", [1, 4])]), path)
    with pytest.raises(ValueError, match=r"cyclic\.onnx.*cyclic"):
        load_onnx_graph(path)


def test_self_loop_raises(tmp_path):
    nodes = [helper.make_node("Add", ["x", "a"], ["a"], name="self")]
    path = tmp_path / "loop.onnx"
    onnx.save(_model(nodes, [_vi("x", [1, 4])], [_vi("a", [1, 4])]), path)
    with pytest.raises(ValueError, match="loop.onnx.*cyclic"):
        load_onnx_graph(path)


def test_malformed_models_raise(tmp_path):
    bad = tmp_path / "garbage.onnx"
    bad.write_bytes(b"\x00\x01not a protobuf at all" * 10)
    with pytest.raises(ValueError, match="garbage.onnx"):
        load_onnx_graph(bad)
    undefined = tmp_path / "undef.onnx"
    onnx.save(_model([helper.make_node("Relu", ["nope"], ["out"])], [_vi("x", [1])], [_vi("out", [1])]), undefined)
    with pytest.raises(ValueError, match="undef.onnx.*undefined tensor 'nope'"):
        load_onnx_graph(undefined)
    empty = tmp_path / "empty.onnx"
    onnx.save(_model([], [_vi("x", [1])], [_vi("x", [1])]), empty)
    with pytest.raises(ValueError, match="empty.onnx.*no nodes"):
        load_onnx_graph(empty)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        load_onnx_graph(tmp_path / "missing.onnx")
    with pytest.raises(ValueError, match="batch_size"):
        describe_onnx(_model([helper.make_node("Relu", ["x"], ["out"])], [_vi("x", [1])], [_vi("out", [1])]), 0)


def test_generated_graphs_parse():
    from nnformer_fast.data.builder import generate, strip_weights

    for fam in ("resnet", "googlenet", "efficientnet"):
        m = generate(fam, np.random.default_rng(0), tiny=True)
        g, gs = describe_onnx(m, 2), describe_onnx(strip_weights(m), 2)
        _check_graph(g)
        assert g.num_nodes == len(m.graph.node)
        assert np.array_equal(g.x, gs.x) and g.params == gs.params and g.flops == gs.flops
        assert (g.shapes[:, 0] == 2).all()
