"""nnformer_fast.baselines: ridge against scikit-learn's, the features, the GBDT wrapper and
its missing-extra message."""
import itertools

import numpy as np
import pytest

from nnformer_fast import baselines as B
from nnformer_fast.data import nb201_latency_set
from nnformer_fast.data.cells import NB201_OPS, parse_nb201_arch
from nnformer_fast.data.latency import NB201_NOT_LIVE

ARCHS = ["|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*ops)
         for ops in itertools.islice(itertools.product(NB201_OPS[1:6], repeat=6), 3, 3 + 7 * 300, 7)]


def _cost(arch: str) -> float:
    cost = {"nor_conv_1x1": 0.4, "nor_conv_3x3": 1.0, "avg_pool_3x3": 0.2, "skip_connect": 0.02, "none": 0.0}
    return 1.0 + sum(cost[o] for o in parse_nb201_arch(arch))


def test_ridge_matches_sklearn_at_a_fixed_alpha():
    linear = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 6)) * [1, 10, 0.1, 3, 1, 1]
    X[:, 5] = 2.0  # a constant column is dropped
    y = X[:, :5] @ [1, -0.2, 5, 0.3, 0] + rng.normal(0, 0.1, 80)
    for alpha in (0.1, 10.0):
        mine = B.Ridge(alphas=[alpha]).fit(X, y)
        Z = (X[:, :5] - X[:, :5].mean(0)) / X[:, :5].std(0)
        ref = linear.Ridge(alpha=alpha).fit(Z, y)
        np.testing.assert_allclose(mine.coef, ref.coef_, rtol=1e-9)
        np.testing.assert_allclose(mine.predict(X), ref.predict(Z), rtol=1e-9)


def test_ridge_cross_validation_picks_a_small_penalty_for_clean_data():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 4))
    y = X @ [3.0, -1.0, 0.5, 2.0] + 7.0
    model = B.Ridge().fit(X, y)
    assert model.alpha == min(B.RIDGE_ALPHAS)
    np.testing.assert_allclose(model.predict(X), y, atol=0.05)


def test_nb201_edge_features():
    X = B.nb201_edge_features(ARCHS[:50])
    assert X.shape == (50, 30) and (X.sum(1) == 6).all()
    for row, arch in zip(X, ARCHS):
        ops = [NB201_OPS[1:6][i] for i in row.reshape(6, 5).argmax(1)]
        assert ops == parse_nb201_arch(arch)


def test_latency_features_of_nb201_cells():
    ds = nb201_latency_set(ARCHS[:20], [_cost(a) for a in ARCHS[:20]], batch_size=4)
    X = B.latency_features(ds, 8)
    from nnformer_fast.data.onnx_features import NUM_OPS

    assert X.shape == (20, 8 * NUM_OPS + 5)
    ops = X[:, :8 * NUM_OPS].reshape(20, 8, NUM_OPS)
    assert (ops.sum(2) == 1).all()  # one op per node position
    edge_ops = ops[:, 1:7, 1:6].copy()
    for op, code in NB201_NOT_LIVE.items():  # an op whose result reaches no output: its own column
        if op < 6:
            edge_ops[:, :, op - 1] += ops[:, 1:7, code]
    np.testing.assert_array_equal(edge_ops.reshape(20, 30), B.nb201_edge_features(ARCHS[:20]))
    sc = np.asarray(ds.store["scalars"])
    np.testing.assert_allclose(X[:, -5:], np.c_[np.log1p(sc[:, 1:]), np.log(sc[:, 0]), np.full(20, 8)])
    with pytest.raises(ValueError, match="more than num_nodes=4"):
        B.graph_op_features(ds, 4)


@pytest.mark.parametrize("name", B.BASELINES)
def test_latency_baselines_learn_an_additive_cost(name):
    if name == "gbdt":
        pytest.importorskip("sklearn")
    lat = [_cost(a) for a in ARCHS]
    ds = nb201_latency_set(ARCHS, lat)
    train, test = ds.subset(np.arange(200)), ds.subset(np.arange(200, 300))
    pred = B.latency_baselines(train, test, names=[name])[name]
    rel = np.abs(pred - test.latencies) / test.latencies
    assert pred.shape == (100,) and rel.mean() < 0.05  # a log-linear fit of an additive cost: a few %


def test_latency_baselines_see_which_ops_reach_the_output():
    """A runtime that drops dead code (as raspi4's and pixel3's nearly do): an op whose result
    never reaches the output costs nothing, and a cell cut off from its input runs in
    microseconds. Log latency is then linear in the features only if they say which ops are
    live; with them ridge fits it exactly."""
    from nnformer_fast.data.cells import nb201_cell

    archs = ["|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*ops)
             for ops in itertools.islice(itertools.product(NB201_OPS[1:6], repeat=6), 0, 15625, 5)]
    log_cost = {1: 0.4, 2: 1.0, 3: 0.2, 4: 0.05}  # conv1x1, conv3x3, avgpool, skip
    live_ops = [nb201_cell(a).ops[1:-1] for a in archs]  # pruning keeps exactly the live ops
    lat = [np.exp(sum(log_cost[int(o)] for o in ops)) if len(ops) else 1e-3 for ops in live_ops]
    ds = nb201_latency_set(archs, lat)
    train, test = ds.subset(np.arange(0, len(ds), 2)), ds.subset(np.arange(1, len(ds), 2))
    pred = B.latency_baselines(train, test, names=["ridge"])["ridge"]
    assert np.max(np.abs(pred - test.latencies) / test.latencies) < 0.01


def test_cell_features_of_padded_cells():
    from nnformer_fast.data.cells import nb101_cell
    from nnformer_fast.train.tasks import CellArrays

    chain = np.triu(np.ones((3, 3), int), 1)
    cells = CellArrays([nb101_cell(chain, [0, 2, 4], 0.9), nb101_cell(np.eye(2, k=1, dtype=int), [0, 4], 0.5)])
    X = B.cell_features(cells, 4)
    assert X.shape == (2, 4 * 32 + 6)
    onehot = X[:, :128].reshape(2, 4, 32)
    assert onehot[0].argmax(1)[:3].tolist() == [0, 2, 4] and onehot[0, 3].sum() == 0
    assert onehot[1].argmax(1)[:2].tolist() == [0, 4] and onehot[1, 2:].sum() == 0
    assert X[0, 128:].tolist() == [1, 1, 0, 1, 0, 0] and X[1, 128:].tolist() == [1, 0, 0, 0, 0, 0]


def test_bad_inputs():
    with pytest.raises(ValueError, match="unknown baseline 'svm'"):
        B.make_regressor("svm")
    with pytest.raises(ValueError, match="need X"):
        B.fit_predict("ridge", np.zeros((3, 2)), np.zeros(2), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="finite"):
        B.fit_predict("ridge", [[0.0], [np.nan]], [1.0, 2.0], [[0.0]])


def test_missing_sklearn_names_the_extra(hide_packages):
    hide_packages("sklearn")
    with pytest.raises(ModuleNotFoundError, match=r"scikit-learn: pip install 'nnformer_fast\[baselines\]'"):
        B.make_regressor("gbdt")
    assert isinstance(B.make_regressor("ridge"), B.Ridge)  # numpy only
