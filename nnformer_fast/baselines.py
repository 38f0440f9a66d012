"""Simple predictors that every NN-Former result stands beside: ridge regression and
gradient-boosted trees on fixed features.

Features (float64 rows, one per network or cell):

* :func:`graph_op_features` — the op one-hot of every node position of small graphs
  (NAS-Bench-201 latency cells: positions 1..6 are the six edges, so this is the one-hot of
  the edge ops, an op whose result reaches no output in a column of its own:
  ``nnformer_fast.data.latency.NB201_NOT_LIVE``), optionally with the adjacency's upper triangle.
* :func:`network_features` — whole-network static features of a latency set: log FLOPs,
  log params, log MACs, log batch size and the node count.
* :func:`latency_features` — both of the above side by side (what ``reproduce`` uses).
* :func:`nb201_edge_features` — the (M, 30) one-hot of the six edge ops of NAS-Bench-201
  arch strings (for accuracy, whose cells are pruned).

Models (``fit(X, y)`` then ``predict(X)``):

* ``ridge`` — :class:`Ridge`, closed form in numpy: standardised features (constant
  columns dropped), unpenalised intercept, the penalty chosen by 5-fold cross-validation
  from ``RIDGE_ALPHAS``.
* ``gbdt`` — scikit-learn's ``HistGradientBoostingRegressor`` (the ``[baselines]`` extra):
  up to 1000 trees of at most 31 leaves, learning rate 0.1, stopped when 10 % held out of
  the training set has not improved for 20 iterations.

Latency baselines fit log latency and predict ``exp`` of it (latencies span orders of
magnitude; the log makes the error relative); accuracy baselines fit the accuracy itself.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np

__all__ = ["BASELINES", "RIDGE_ALPHAS", "Ridge", "make_regressor", "require_sklearn", "graph_op_features",
           "network_features", "latency_features", "nb201_edge_features", "cell_features",
           "fit_predict", "latency_baselines"]

#: the baseline models, in table order
BASELINES = ("ridge", "gbdt")
#: ridge penalties tried by cross-validation (features standardised to unit variance)
RIDGE_ALPHAS = tuple(10.0 ** k for k in np.arange(-3.0, 4.5, 0.5))
_SKLEARN_HINT = "pip install 'nnformer_fast[baselines]'"


# ---------------------------------------------------------------------------- models
class Ridge:
    """Ridge regression ``min ||y - b - X w||² + alpha ||w||²`` on standardised columns.

    ``fit(X (M, F), y (M,))`` picks ``alpha`` from ``alphas`` by ``folds``-fold
    cross-validation (a seeded shuffle; one SVD per fold serves every alpha), then refits
    on all rows. Columns constant on the training rows are dropped.
    """

    def __init__(self, alphas: Sequence[float] = RIDGE_ALPHAS, folds: int = 5, seed: int = 0):
        self.alphas = np.asarray(alphas, dtype=np.float64)
        self.folds, self.seed = int(folds), int(seed)

    def fit(self, X, y) -> "Ridge":
        X, y = _check_xy(X, y)
        self.keep = X.std(0) > 0
        self.mean = X[:, self.keep].mean(0)
        self.scale = X[:, self.keep].std(0)
        Z = (X[:, self.keep] - self.mean) / self.scale
        if len(y) >= 2 * self.folds and len(self.alphas) > 1:
            fold = np.random.default_rng(self.seed).permutation(len(y)) % self.folds
            err = np.zeros(len(self.alphas))
            for k in range(self.folds):
                tr, va = fold != k, fold == k
                for j, w_b in enumerate(_ridge_path(Z[tr], y[tr], self.alphas)):
                    w, b = w_b
                    err[j] += np.sum((Z[va] @ w + b - y[va]) ** 2)
            self.alpha = float(self.alphas[int(np.argmin(err))])
        else:
            self.alpha = float(self.alphas[len(self.alphas) // 2])
        (self.coef, self.intercept), = _ridge_path(Z, y, [self.alpha])
        return self

    def predict(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        return ((X[:, self.keep] - self.mean) / self.scale) @ self.coef + self.intercept


def _ridge_path(Z: np.ndarray, y: np.ndarray, alphas):
    """[(w, b)] of ridge on ``Z`` for each alpha, from one SVD of the centred ``Z``."""
    zm, ym = Z.mean(0), y.mean()
    u, s, vt = np.linalg.svd(Z - zm, full_matrices=False)
    uty = u.T @ (y - ym)
    out = []
    for a in alphas:
        w = vt.T @ (s / (s * s + a) * uty)
        out.append((w, ym - zm @ w))
    return out


def _check_xy(X, y) -> tuple[np.ndarray, np.ndarray]:
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[0] != y.shape[0] or X.shape[0] < 2:
        raise ValueError(f"baseline: need X (M, F) and y (M,) with M >= 2, got {X.shape} and {y.shape}")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise ValueError("baseline: features and targets must be finite")
    return X, y


def require_sklearn():
    """The ``sklearn.ensemble`` module; ModuleNotFoundError in one line naming the extra."""
    try:
        from sklearn import ensemble
    except ImportError:
        raise ModuleNotFoundError(f"the gbdt baseline needs scikit-learn: {_SKLEARN_HINT}") from None
    return ensemble


def make_regressor(name: str, seed: int = 0):
    """A fresh, unfitted baseline model ``name`` (one of ``BASELINES``)."""
    if name == "ridge":
        return Ridge(seed=seed)
    if name == "gbdt":
        return require_sklearn().HistGradientBoostingRegressor(
            max_iter=1000, learning_rate=0.1, max_leaf_nodes=31, early_stopping=True, validation_fraction=0.1,
            n_iter_no_change=20, random_state=seed)
    raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")


def fit_predict(name: str, X_train, y_train, X_test, seed: int = 0) -> np.ndarray:
    """Fit baseline ``name`` on ``(X_train (M, F), y_train (M,))``; its (K,) predictions of
    ``X_test (K, F)``. Runs on one thread: the fits take a second or two, and OpenMP / BLAS
    worker threads spin-waiting on a busy machine made them ten times slower."""
    X_train, y_train = _check_xy(X_train, y_train)
    model = make_regressor(name, seed)
    with _one_thread():
        model.fit(X_train, y_train)
        return np.asarray(model.predict(np.asarray(X_test, dtype=np.float64)), dtype=np.float64)


def _one_thread():
    try:
        from threadpoolctl import threadpool_limits  # installed with scikit-learn
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1)


# ---------------------------------------------------------------------------- features
def _one_hot_positions(ops: np.ndarray, num_ops: int) -> np.ndarray:
    """ops (M, L) int, -1 = no op / padding -> (M, L * num_ops) float64."""
    m, n = ops.shape
    out = np.zeros((m, n, num_ops))
    rows, cols = np.nonzero(ops >= 0)
    out[rows, cols, ops[rows, cols]] = 1.0
    return out.reshape(m, n * num_ops)


def graph_op_features(dataset, num_nodes: int, *, adjacency: bool = False) -> np.ndarray:
    """(M, num_nodes * NUM_OPS [+ num_nodes * (num_nodes - 1) / 2]) one-hot of the op at each
    node position of each record's graph of a :class:`~nnformer_fast.data.LatencyDataset`,
    for small graphs in a fixed node order (cells); ``adjacency`` appends the upper triangle
    of the adjacency. A graph with more than ``num_nodes`` nodes raises ValueError."""
    from .data.onnx_features import NUM_OPS

    s, entry = dataset.store, dataset.records["entry"]
    node_ptr, edge_ptr = np.asarray(s["node_ptr"]), np.asarray(s["edge_ptr"])
    sizes = node_ptr[entry + 1] - node_ptr[entry]
    if sizes.size and sizes.max() > num_nodes:
        raise ValueError(f"graph_op_features: a graph has {int(sizes.max())} nodes, more than num_nodes={num_nodes}")
    ops = np.full((len(entry), num_nodes), -1, dtype=np.int64)
    op_ids = np.asarray(s["op_ids"])
    for r, g in enumerate(entry):
        ops[r, :sizes[r]] = op_ids[node_ptr[g]:node_ptr[g + 1]]
    feats = [_one_hot_positions(ops, NUM_OPS)]
    if adjacency:
        adj = np.zeros((len(entry), num_nodes, num_nodes))
        edges = np.asarray(s["edges"])
        for r, g in enumerate(entry):
            e = edges[:, edge_ptr[g]:edge_ptr[g + 1]]
            adj[r, e[0], e[1]] = 1.0
        upper = np.triu_indices(num_nodes, 1)
        feats.append(adj[:, upper[0], upper[1]])
    return np.concatenate(feats, axis=1)


def network_features(dataset) -> np.ndarray:
    """(M, 5) whole-network static features of a latency set: log FLOPs, log params, log
    MACs (each ``log1p``), log batch size and the node count of each record's network."""
    sc = np.asarray(dataset.store["scalars"], dtype=np.float64)[dataset.records["entry"]]
    batch, flops, params, macs = sc.T
    return np.stack([np.log1p(flops), np.log1p(params), np.log1p(macs), np.log(batch),
                     np.asarray(dataset.num_nodes, dtype=np.float64)], axis=1)


def latency_features(dataset, num_nodes: int) -> np.ndarray:
    """``[graph_op_features(dataset, num_nodes), network_features(dataset)]``."""
    return np.concatenate([graph_op_features(dataset, num_nodes), network_features(dataset)], axis=1)


def nb201_edge_features(archs: Sequence[str]) -> np.ndarray:
    """(M, 30) one-hot of the six edge ops (arch-string order; ops ``NB201_OPS[1:6]``) of
    NAS-Bench-201 arch strings."""
    from .data.cells import NB201_OPS, parse_nb201_arch

    ops = np.array([[NB201_OPS.index(o) - 1 for o in parse_nb201_arch(a)] for a in archs], dtype=np.int64)
    return _one_hot_positions(ops.reshape(-1, 6), 5)


def cell_features(cells, num_nodes: int) -> np.ndarray:
    """(M, num_nodes * in_chans + num_nodes * (num_nodes - 1) / 2) op one-hot of each node
    position and upper-triangular adjacency of :class:`~nnformer_fast.train.tasks.CellArrays`
    (cells padded to ``num_nodes``; a larger cell raises ValueError)."""
    if cells.ops.shape[1] > num_nodes:
        raise ValueError(f"cell_features: cells have up to {cells.ops.shape[1]} nodes, more than num_nodes={num_nodes}")
    m, n = cells.ops.shape
    ops = np.full((m, num_nodes), -1, dtype=np.int64)
    valid = np.arange(n)[None, :] < cells.num_nodes[:, None]
    ops[:, :n] = np.where(valid, cells.ops, -1)
    adj = np.zeros((m, num_nodes, num_nodes))
    adj[:, :n, :n] = cells.adj
    upper = np.triu_indices(num_nodes, 1)
    return np.concatenate([_one_hot_positions(ops, cells.in_chans), adj[:, upper[0], upper[1]]], axis=1)


# ---------------------------------------------------------------------------- latency
def latency_baselines(train, test, *, seed: int = 0, names: Sequence[str] = BASELINES,
                      cells: bool = True) -> dict[str, np.ndarray]:
    """Fit each baseline of ``names`` to log latency of the ``train`` latency set over
    :func:`latency_features` (``cells``: small graphs in a fixed node order) or
    :func:`network_features` alone (networks of any size); ``{name: (len(test),) predicted
    latency in ms}``."""
    if cells:
        num_nodes = int(max(np.max(train.num_nodes), np.max(test.num_nodes)))
        X_train, X_test = latency_features(train, num_nodes), latency_features(test, num_nodes)
    else:
        X_train, X_test = network_features(train), network_features(test)
    y = np.log(np.asarray(train.latencies, dtype=np.float64))
    return {name: np.exp(fit_predict(name, X_train, y, X_test, seed)) for name in names}
