"""``nnformer-fast reproduce embedded-latency``: in-domain and out-of-domain runs on a small
packed set cut from the embedded default set, the baselines beside NN-Former, the table."""
from __future__ import annotations

import json

import numpy as np
import pytest

from nnformer_fast.cli import main

pytest.importorskip("sklearn")
FAMILIES = ("alexnet", "squeezenet", "vgg")
FAST = ["--quick", "--epochs", "1", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """6 networks of each of FAMILIES at batch sizes 1 and 4 (36 records), packed."""
    from nnformer_fast.data.default import load_default_latency_set

    ds = load_default_latency_set(families=list(FAMILIES))
    index = np.array([int(sid.split("_")[1]) for sid in ds.records["speed_id"]])
    path = tmp_path_factory.mktemp("set") / "small.npz"
    ds.subset(np.nonzero(index < 6)[0]).save(path)
    return path


def _latencies(path, family):
    from nnformer_fast.data.latency import LatencyDataset

    return np.sort(LatencyDataset.load(path, families=[family]).latencies)


def test_in_and_out_of_domain_runs_beside_the_baselines(small_set, tmp_path, monkeypatch, capsys):
    from nnformer_fast.train.metrics import regression_metrics

    monkeypatch.setenv("NNFORMER_FAST_DATA", str(tmp_path / "nowhere"))  # needs no benchmark data folder
    out, doc = tmp_path / "runs", tmp_path / "R.md"
    assert main(["reproduce", "embedded-latency", "--embedded-set", str(small_set), "--out", str(out),
                 "--doc", str(doc), *FAST]) == 0
    root = out / "embedded-latency"
    runs = ["in-domain/split-0"] + [f"out-of-domain/{f}" for f in FAMILIES]
    recs = {run: json.loads((root / run / "metrics.json").read_text()) for run in runs}
    assert sorted(p.relative_to(root).parent.as_posix() for p in root.glob("*/*/metrics.json")) == sorted(runs)
    for fam in FAMILIES:  # the held-out family is the whole test set, and absent from training
        rec, preds = recs[f"out-of-domain/{fam}"], np.load(root / "out-of-domain" / fam / "predictions.npz")
        assert rec["n_test"] == 12 and rec["n_train"] == 24 and fam not in rec["families_train"]
        np.testing.assert_allclose(np.sort(preds["measured"]), _latencies(small_set, fam))
    assert {r["precision"] for r in recs.values()} == {"bf16"}  # the demo's recipe unless --precision is given
    assert {r["loss"]["loss"] for r in recs.values()} == {"log_mse_mape"}
    ind = recs["in-domain/split-0"]
    assert ind["families_train"] == list(FAMILIES) and ind["n_test"] == 6 and ind["n_train"] == 30
    for run, rec in recs.items():  # the baselines' scores are of their own saved predictions
        preds = np.load(root / run / "predictions.npz")
        for name in ("ridge", "gbdt"):
            want = regression_metrics(preds[f"predicted_{name}"], preds["measured"])
            assert rec["baselines"][name]["mape"] == pytest.approx(want["mape"])
    assert capsys.readouterr().out.count("embedded-latency out-of-domain/") == 3
    text = doc.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| out-of-domain: vgg"))
    m = recs["out-of-domain/vgg"]["metrics"]
    assert f"{100 * m['mape']:.2f}" in row and f"{m['tau']:.3f}" in row and "| 24 / 12 |" in row
    assert "| in-domain" in text and "**mean, out of domain (3)**" in text
    assert "MAPE % NN-Former | MAPE % ridge | MAPE % GBDT" in text and "log FLOPs" in text


def test_embedded_set_errors(small_set, tmp_path, capsys):
    assert main(["reproduce", "nb201-latency", "--embedded-set", str(small_set), "--out", str(tmp_path / "o"),
                 "--no-doc", *FAST]) == 2
    assert "--embedded-set applies to embedded-latency only" in capsys.readouterr().err
    assert main(["reproduce", "embedded-latency", "--embedded-set", str(tmp_path / "no.npz"),
                 "--out", str(tmp_path / "o"), "--no-doc", *FAST]) == 2
    err = capsys.readouterr().err
    assert "--embedded-set: file not found" in err and len(err.strip().splitlines()) == 1
