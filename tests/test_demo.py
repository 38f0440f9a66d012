"""The demo's yardstick (baselines on the same split) and the checkpoint it hands to predict."""
import numpy as np
import pytest
import torch

from nnformer_fast import demo
from nnformer_fast.baselines import network_features
from nnformer_fast.data.latency import LatencyDataset
from nnformer_fast.train.synthetic import synthetic_latency_set


def _log_linear_set(n: int = 120) -> LatencyDataset:
    """A synthetic set whose latency is exactly exp(linear) of the static network features."""
    ds = synthetic_latency_set(n, seed=1)
    X = network_features(ds)
    records = dict(ds.records, latency=np.exp(0.5 * X[:, 0] - 0.2 * X[:, 1] + 0.05 * X[:, 4] - 3.0).astype(np.float32))
    return LatencyDataset.from_arrays(ds.store, records)


def test_yardstick_fits_on_the_training_side_only():
    ds = _log_linear_set()
    train, test = ds.split_in_domain(test_fraction=0.25, seed=0)
    got = demo.yardstick(train, test)
    assert set(got) == {"ridge", "gbdt"}
    assert got["ridge"]["n"] == len(test)
    assert got["ridge"]["mape"] < 0.01 and got["ridge"]["tau"] > 0.98  # the exact model class: ridge recovers it
    assert got["gbdt"]["tau"] > 0.7
    # training targets scrambled: the baselines learn nothing about the untouched test side
    rng = np.random.default_rng(0)
    scrambled = LatencyDataset.from_arrays(train.store, dict(train.records,
                                                              latency=rng.permutation(train.records["latency"])))
    assert demo.yardstick(scrambled, test)["ridge"]["mape"] > 10 * got["ridge"]["mape"]


def test_yardstick_names_a_missing_scikit_learn(monkeypatch):
    import nnformer_fast.baselines as baselines

    def missing():
        raise ModuleNotFoundError("the gbdt baseline needs scikit-learn: pip install 'nnformer_fast[baselines]'")

    monkeypatch.setattr(baselines, "require_sklearn", missing)
    train, test = _log_linear_set().split_in_domain(test_fraction=0.25, seed=0)
    got = demo.yardstick(train, test)
    assert isinstance(got["ridge"], dict) and "[baselines]" in got["gbdt"]
    assert "not run" in demo._metrics_line("gbdt", got["gbdt"])


def test_demo_prints_the_yardstick_and_a_working_predict_command(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    from nnformer_fast.cli import main as cli
    from nnformer_fast.data.builder import generate

    path = tmp_path / "lat.npz"
    synthetic_latency_set(48).save(path)
    threads = torch.get_num_threads()
    try:
        assert demo.main(["--data", str(path), "--epochs", "1", "--out", str(tmp_path / "out"), "--threads", "1",
                          "--no-compile"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out.splitlines()
    table = [line.split()[0] for line in out if line.startswith("  ") and "MAPE" in line]
    assert table == ["NN-Former", "ridge", "gbdt"]
    command = next(line for line in out if line.startswith("checkpoint: ")).split("predict with: ")[1].split()
    assert command[:2] == ["nnformer-fast", "predict"] and command[3] == "MODEL.onnx"
    model = tmp_path / "net.onnx"
    onnx.save(generate("resnet", np.random.default_rng(0), tiny=True), model)
    assert cli(["predict", command[2], str(model), "--quiet"]) == 0
    ms = float(capsys.readouterr().out.split("\t")[1].split()[0])
    assert np.isfinite(ms) and ms > 0
