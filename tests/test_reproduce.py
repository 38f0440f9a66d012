"""``nnformer-fast reproduce``: end to end on tiny synthetic benchmark files (the formats of
../shared/data/README.md), the generated markdown section, bad inputs, and one quick real-data
run that skips when the shared data folder is absent."""
from __future__ import annotations

import csv
import itertools
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nnformer_fast.cli import main
from nnformer_fast.train.reproduce import EXPERIMENTS, section_markers, update_markdown

NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
FAST = ["--quick", "--epochs", "1", "--threads", "1", "--jobs", "1"]
try:
    import matplotlib  # noqa: F401

    HAVE_MPL = True
except ImportError:  # optional: runs then write metrics without plots
    HAVE_MPL = False


def _arch(ops) -> str:
    return "|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*ops)


def _make_data(root: Path, n201: int = 60, n101: int = 40) -> Path:
    """Fake nb201_accuracy.csv, nb101_naslib_500.json and nb201_latency/ under ``root``."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    archs = [_arch(ops) for ops in itertools.islice(itertools.product(NB201_OPS, repeat=6), 7, 7 + 9 * n201, 9)]
    convs = np.array([a.count("conv") for a in archs])
    with open(root / "nb201_accuracy.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["CIFAR10TestAccuracy200Epochs", "CIFAR100TestAccuracy200Epochs", "ImageNetTestAccuracy200Epochs",
                    "ArchitectureString", "UniqueString"])
        for i, a in enumerate(archs):
            acc = 80 + 2.5 * convs[i] + rng.normal(0, 0.5)
            w.writerow([f"{acc:.3f}", f"{acc - 20:.3f}", f"{acc - 40:.3f}", a, f"u{i}"])
    # NB101 (NASLib): 49 adjacency entries + 7 op ids [input, output, maxpool3x3, conv1x1, conv3x3]
    cells = {}
    while len(cells) < n101:
        adj = np.triu(rng.random((7, 7)) < 0.3, 1).astype(int)
        adj[np.arange(6), np.arange(1, 7)] = 1  # a chain keeps every node on a path
        ops = [0] + list(rng.integers(2, 5, 5)) + [1]
        key = "(" + ", ".join(map(str, list(adj.reshape(-1)) + ops)) + ")"
        cells[key] = {"val_accuracy": float(85 + 2 * ops.count(4) + rng.normal(0, 0.3)), "flops": 1.0, "params": 2.0}
    (root / "nb101_naslib_500.json").write_text(json.dumps({"nasbench101": {"cifar10": cells}}))
    lat = root / "nb201_latency"
    lat.mkdir(exist_ok=True)
    torch.save({a: i for i, a in enumerate(archs)}, lat / "str_arch2idx.pt")
    torch.save([0, 1, 2], lat / "hardware_embedding_index.pt")  # not a device: ignored
    for dev, scale in (("pixel3", 1.0), ("gold_6226", 3.0)):
        torch.save([float(scale * (1 + c + rng.random())) for c in convs], lat / f"{dev}.pt")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _make_data(tmp_path_factory.mktemp("data"))


def test_cli_end_to_end_synthetic(data, tmp_path, capsys):
    out, doc = tmp_path / "runs", tmp_path / "docs" / "REPRODUCTION.md"
    rc = main(["reproduce", "all", "--data-dir", str(data), "--out", str(out), "--doc", str(doc),
               "--fractions", "0.1,50%", "--nb101-train", "10", *FAST])
    assert rc == 0, capsys.readouterr().err
    for run in ("nb201-accuracy/train-10pct/split-0", "nb201-accuracy/train-50pct/split-0",
                "nb101-accuracy/train-10/split-0", "nb201-latency/pixel3/split-0", "nb201-latency/gold_6226/split-0"):
        rec = json.loads((out / run / "metrics.json").read_text())
        assert (out / run / "scatter.png").is_file() == HAVE_MPL
        assert rec["scatter"] == (str(out / run / "scatter.png") if HAVE_MPL else None)
        assert rec["n_train"] > 0 and rec["n_test"] > 0 and np.isfinite(rec["metrics"]["tau"])
        assert rec["epochs"] == 1 and rec["wall_seconds"] > 0
    lat = json.loads((out / "nb201-latency" / "pixel3" / "split-0" / "metrics.json").read_text())
    assert lat["n_train"] == 6 and lat["n_test"] == 54 and {"mape", "acc@1", "acc@5", "acc@10"} <= set(lat["metrics"])
    assert set(lat["baselines"]) == {"ridge", "gbdt"} and "mape" in lat["baselines"]["ridge"]
    assert lat["loss"] == {"loss": "log_mse_mape"} and isinstance(lat["diverged"], list)
    acc = json.loads((out / "nb201-accuracy" / "train-10pct" / "split-0" / "metrics.json").read_text())
    assert acc["n_train"] == 6 and set(acc["baselines"]) == {"ridge", "gbdt"} and "mape" not in acc["baselines"]["ridge"]
    nb101 = json.loads((out / "nb101-accuracy" / "train-10" / "split-0" / "metrics.json").read_text())
    assert nb101["baselines"]["ridge"]["n"] == nb101["n_test"]
    summary = json.loads((out / "nb201-latency" / "summary.json").read_text())
    assert [r["device"] for r in summary["runs"]] == ["gold_6226", "pixel3"]  # hardware_embedding_index skipped
    assert summary["hardware"]["cpu"] and summary["hardware"]["torch_threads"] == 1
    text = doc.read_text()
    for e in EXPERIMENTS:
        begin, end = section_markers(e)
        assert text.count(begin) == 1 and text.count(end) == 1
    assert "0.877" in text and "0.89" in text and "1.11" in text and "Quick profile" in text
    assert "| pixel3 " in text and "| 10 % |" in text and "| 50 % |" in text
    assert text.count("| τ NN-Former | τ ridge | τ GBDT |") == 3  # every table shows the baselines
    for e in EXPERIMENTS:
        assert (doc.parent / "reproduction" / f"{e}.png").is_file() == HAVE_MPL
        assert (f"(reproduction/{e}.png)" in text) == HAVE_MPL


def test_rerun_replaces_section(data, tmp_path):
    doc = tmp_path / "R.md"
    doc.write_text("# Mine\n\nhand-written notes stay.\n")
    args = ["reproduce", "nb201-latency", "--data-dir", str(data), "--out", str(tmp_path / "o"), "--doc", str(doc),
            *FAST]
    assert main([*args, "--devices", "pixel3"]) == 0
    assert main([*args, "--devices", "gold_6226"]) == 0
    text = doc.read_text()
    begin, end = section_markers("nb201-latency")
    assert text.startswith("# Mine\n\nhand-written notes stay.\n")
    assert text.count(begin) == 1 and text.count(end) == 1
    assert "| gold_6226 " in text and "| pixel3 " not in text


def test_update_markdown_keeps_surroundings(tmp_path):
    doc = tmp_path / "d.md"
    update_markdown(doc, "nb101-accuracy", "first")
    update_markdown(doc, "nb101-accuracy", "second")
    text = doc.read_text()
    assert "second" in text and "first" not in text
    assert text.count(section_markers("nb101-accuracy")[0]) == 1
    assert text.count(section_markers("nb201-accuracy")[0]) == 1  # the template's placeholders
    begin, _ = section_markers("nb101-accuracy")
    doc.write_text(f"head\n{begin}\nno end marker\n")
    with pytest.raises(ValueError, match="end marker"):
        update_markdown(doc, "nb101-accuracy", "x")


def test_bad_inputs(data, tmp_path, capsys):
    common = ["--out", str(tmp_path / "o"), "--no-doc", *FAST]
    assert main(["reproduce", "nb101-accuracy", "--data-dir", str(tmp_path / "missing"), *common]) == 2
    assert "data folder not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["reproduce", "nb201-accuracy", "--data-dir", str(empty), *common]) == 2
    assert "nb201_accuracy.csv" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "nb999-accuracy", "--data-dir", str(data), *common])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert main(["reproduce", "nb201-latency", "--devices", "pixel3,tpu_v9", "--data-dir", str(data), *common]) == 2
    err = capsys.readouterr().err
    assert "unknown device(s) tpu_v9" in err and "pixel3" in err
    assert main(["reproduce", "nb101-accuracy", "--devices", "pixel3", "--data-dir", str(data), *common]) == 2
    assert "--devices applies to nb201-latency" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["reproduce", "nb201-accuracy", "--fractions", "1.5", "--data-dir", str(data), *common])
    assert "(0, 1)" in capsys.readouterr().err
    assert main(["reproduce", "nb101-accuracy", "--nb101-train", "500", "--data-dir", str(data), *common]) == 2
    assert "need more than" in capsys.readouterr().err


def test_missing_default_data_dir(tmp_path, monkeypatch, capsys):
    import nnformer_fast.data.cells as cells

    monkeypatch.setattr(cells, "default_data_dir", lambda: None)
    assert main(["reproduce", "nb101-accuracy", "--out", str(tmp_path), "--no-doc", *FAST]) == 2
    assert "NNFORMER_FAST_DATA" in capsys.readouterr().err


def test_quick_nb101_on_real_data(tmp_path):
    from nnformer_fast.data.cells import default_data_dir

    root = default_data_dir()
    if root is None or not (Path(root) / "nb101_naslib_500.json").is_file():
        pytest.skip("shared benchmark data not available (set NNFORMER_FAST_DATA)")
    t = time.perf_counter()
    assert main(["reproduce", "nb101-accuracy", "--data-dir", str(root), "--out", str(tmp_path), "--no-doc",
                 *FAST]) == 0
    rec = json.loads((tmp_path / "nb101-accuracy" / "train-100" / "split-0" / "metrics.json").read_text())
    assert rec["n_train"] == 100 and rec["n_test"] == 400 and np.isfinite(rec["metrics"]["tau"])
    assert time.perf_counter() - t < 15


@pytest.mark.skipif(not HAVE_MPL, reason="matplotlib not installed")
def test_scatter_plot(tmp_path, hide_packages):
    from nnformer_fast.train.plots import scatter_plot

    y = np.linspace(1, 10, 50)
    assert scatter_plot(y, y * 1.1, tmp_path / "a" / "s.png", log=True, title="t", max_points=20)
    assert (tmp_path / "a" / "s.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="predictions"):
        scatter_plot(y, y[:3], tmp_path / "b.png")
    hide_packages("matplotlib")
    assert scatter_plot(y, y, tmp_path / "c.png") is False and not (tmp_path / "c.png").exists()


def test_depths_option_replaces_the_profile_depth(data, tmp_path, capsys):
    from nnformer_fast.train.reproduce import merge_model_options

    assert merge_model_options({"depth": 4, "dim": 128}, {"depths": [1, 1]}) == {"dim": 128, "depths": [1, 1]}
    assert merge_model_options({"depths": [2], "dim": 8}, {"depth": 3}) == {"dim": 8, "depth": 3}
    out = tmp_path / "o"
    assert main(["reproduce", "nb101-accuracy", "--data-dir", str(data), "--out", str(out), "--no-doc",
                 "--nb101-train", "10", "--accuracy-model", "depths=1:1,dim=16", "--quiet", *FAST]) == 0
    rec = json.loads((out / "nb101-accuracy" / "train-10" / "split-0" / "metrics.json").read_text())
    assert rec["model"]["depths"] == [1, 1] and rec["model"]["dim"] == 16


@pytest.mark.parametrize("opt", [["--nb101-train", "-5"], ["--nb101-train", "0"], ["--max-test", "0"],
                                 ["--max-test", "-3"], ["--threads", "0"], ["--threads", "-2"], ["--epochs", "0"],
                                 ["--accuracy-model", "depth"], ["--latency-model", "dim"]])
def test_option_ranges_are_usage_errors(data, tmp_path, opt, capsys):
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "nb101-accuracy", "--data-dir", str(data), "--out", str(tmp_path / "o"), "--no-doc",
              "--quick", *opt])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {opt[0]}:" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_settings_check_before_training(data, tmp_path, monkeypatch):
    import nnformer_fast.train.reproduce as rp

    monkeypatch.setattr(rp, "run_experiment", lambda *a, **k: pytest.fail("trained with bad settings"))
    for bad in (dict(nb101_train=0), dict(max_test=0), dict(threads=-1), dict(fractions=(0.1, 1.0))):
        with pytest.raises(ValueError, match="must"):
            rp.reproduce(["nb101-accuracy"], data_dir=data, out=tmp_path / "o", settings=rp.Settings(**bad))


def test_repeated_fractions_train_once(data, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["reproduce", "nb201-accuracy", "--data-dir", str(data), "--out", str(out), "--no-doc", "--quiet",
                 "--fractions", "0.1,10%,0.1", "--accuracy-model", "depth=1,dim=16", *FAST]) == 0
    assert capsys.readouterr().out.count("nb201-accuracy train-") == 1
    assert len(json.loads((out / "nb201-accuracy" / "summary.json").read_text())["runs"]) == 1


def test_bad_out_and_doc_fail_before_training(data, tmp_path, monkeypatch, capsys):
    import nnformer_fast.train.reproduce as rp

    monkeypatch.setattr(rp, "run_experiment", lambda *a, **k: pytest.fail("trained before checking --out/--doc"))
    common = ["reproduce", "nb101-accuracy", "--data-dir", str(data), *FAST]
    afile = tmp_path / "afile"
    afile.touch()
    assert main([*common, "--out", str(afile), "--no-doc"]) == 2
    assert "is a file" in capsys.readouterr().err
    assert main([*common, "--out", str(afile / "x"), "--no-doc"]) == 2
    assert "cannot write" in capsys.readouterr().err
    assert main([*common, "--out", str(tmp_path / "o"), "--doc", str(tmp_path)]) == 2
    assert "not a file" in capsys.readouterr().err
    broken = tmp_path / "broken.md"
    broken.write_text(section_markers("nb101-accuracy")[0] + "\nold\n")
    assert main([*common, "--out", str(tmp_path / "o"), "--doc", str(broken)]) == 2
    assert "no end marker" in capsys.readouterr().err


def test_progress_bars_and_quiet(data, tmp_path, capsys):
    args = ["reproduce", "nb101-accuracy", "--data-dir", str(data), "--out", str(tmp_path / "o"), "--no-doc",
            "--nb101-train", "10", "--accuracy-model", "depth=1,dim=16", *FAST]
    assert main(args) == 0
    assert "epoch 1/1" in capsys.readouterr().err
    assert main([*args, "--quiet"]) == 0
    assert "epoch 1/1" not in capsys.readouterr().err


EXAMPLE_CSV = Path(__file__).parent / "data" / "my_device.csv"


def test_latency_csv_run_with_split_seeds(tmp_path, capsys):
    """A user's CSV file needs no benchmark data folder: one run per split seed named after
    the file, the baselines beside NN-Former, the table with median (range) per device."""
    out, doc = tmp_path / "runs", tmp_path / "R.md"
    assert main(["reproduce", "nb201-latency", "--latency-csv", str(EXAMPLE_CSV), "--split-seeds", "0,1",
                 "--data-dir", str(tmp_path / "nowhere"), "--out", str(out), "--doc", str(doc), "--quiet",
                 *FAST]) == 2  # an explicit --data-dir must exist
    assert "data folder not found" in capsys.readouterr().err
    assert main(["reproduce", "nb201-latency", "--latency-csv", str(EXAMPLE_CSV), "--split-seeds", "0,1",
                 "--out", str(out), "--doc", str(doc), "--quiet", *FAST]) == 0
    stdout = capsys.readouterr().out
    recs = [json.loads((out / "nb201-latency" / "my_device" / f"split-{k}" / "metrics.json").read_text())
            for k in (0, 1)]
    assert [r["split_seed"] for r in recs] == [0, 1] and all(r["device"] == "my_device" for r in recs)
    assert all(r["n_train"] == 6 and r["n_test"] == 54 and r["data"] == str(EXAMPLE_CSV) for r in recs)
    for r in recs:
        assert set(r["baselines"]) == {"ridge", "gbdt"}
        assert r["baselines"]["ridge"]["n"] == r["metrics"]["n"] == 54
    preds = np.load(out / "nb201-latency" / "my_device" / "split-1" / "predictions.npz")
    assert set(preds.files) == {"measured", "predicted", "predicted_ridge", "predicted_gbdt"}
    assert stdout.count("nb201-latency my_device/split-") == 2
    text = doc.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| my_device"))
    tau = recs[0]["metrics"]["tau"], recs[1]["metrics"]["tau"]
    assert f"{np.median(tau):.3f} ({min(tau):.3f}–{max(tau):.3f})" in row
    assert "τ NN-Former | τ ridge | τ GBDT" in text and "split seeds 0, 1" in text and "my_device.csv" in text


def test_diverged_runs_are_marked(data, tmp_path, capsys):
    """One epoch of a small model leaves near-constant predictions: a warning line, the
    reasons in metrics.json, a mark in the table."""
    out, doc = tmp_path / "runs", tmp_path / "R.md"
    assert main(["reproduce", "nb201-latency", "--devices", "pixel3", "--data-dir", str(data), "--out", str(out),
                 "--doc", str(doc), "--quiet", *FAST]) == 0
    rec = json.loads((out / "nb201-latency" / "pixel3" / "split-0" / "metrics.json").read_text())
    assert rec["diverged"] and rec["diverged"][0].startswith("held-out predictions nearly constant")
    assert "warning: pixel3/split-0 looks diverged: held-out predictions nearly constant" in capsys.readouterr().out
    text = doc.read_text()
    assert "| pixel3 ⚠ 1 of 1 runs diverged |" in text and "Diverged runs: pixel3/split-0 (held-out" in text


@pytest.mark.parametrize("args, match", [
    (["--latency-csv", "bad.csv"], r"bad.csv:3: latency_ms must be a number, got 'slow'"),
    (["--latency-csv", "missing.csv"], "--latency-csv: file not found"),
    (["--split-seed", "1", "--split-seeds", "0,1"], "give --split-seed .* or --split-seeds .*, not both"),
    (["--latency-csv", "gold_6226.csv", "--devices", "gold_6226"], "two runs would be named gold_6226"),
])
def test_latency_option_errors(data, tmp_path, monkeypatch, capsys, args, match):
    import nnformer_fast.train.reproduce as rp

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.csv").write_text(f"arch,latency_ms\n{_arch(['none'] * 6)},1\n{_arch(['skip_connect'] * 6)},slow\n")
    (tmp_path / "gold_6226.csv").write_text(f"arch,latency_ms\n{_arch(['none'] * 6)},1\n{_arch(['none'] * 5 + ['skip_connect'])},2\n")
    monkeypatch.setattr(rp, "_train_and_score", lambda *a, **k: pytest.fail("trained before checking the inputs"))
    assert main(["reproduce", "nb201-latency", *args, "--data-dir", str(data), "--out", str(tmp_path / "o"),
                 "--no-doc", *FAST]) == 2
    err = capsys.readouterr().err
    assert re.search(match, err) and len(err.strip().splitlines()) == 1, err


def test_latency_csv_only_with_nb201_latency(data, tmp_path, capsys):
    assert main(["reproduce", "nb101-accuracy", "--latency-csv", str(EXAMPLE_CSV), "--data-dir", str(data),
                 "--out", str(tmp_path / "o"), "--no-doc", *FAST]) == 2
    assert "--latency-csv applies to nb201-latency only" in capsys.readouterr().err


def test_missing_scikit_learn_is_one_line(data, tmp_path, hide_packages, capsys):
    hide_packages("sklearn")
    assert main(["reproduce", "nb201-latency", "--data-dir", str(data), "--out", str(tmp_path / "o"), "--no-doc",
                 *FAST]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("nnformer-fast reproduce: error: the gbdt baseline needs scikit-learn: "
                           "pip install 'nnformer_fast[baselines]'")
    assert not (tmp_path / "o" / "nb201-latency").exists()


def test_latency_model_option_picks_the_loss(data, tmp_path):
    out = tmp_path / "o"
    assert main(["reproduce", "nb201-latency", "--devices", "pixel3", "--latency-model", "loss=relative_mse",
                 "--data-dir", str(data), "--out", str(out), "--no-doc", "--quiet", *FAST]) == 0
    rec = json.loads((out / "nb201-latency" / "pixel3" / "split-0" / "metrics.json").read_text())
    assert rec["loss"] == {"loss": "relative_mse"} and "loss" not in rec["model"]


def test_accuracy_split_seeds_and_encodings(data, tmp_path, capsys):
    """Accuracy experiments run once per split seed (the same training cells in both
    NAS-Bench-201 encodings), and the table shows median (range) beside the baselines and
    the top-k metrics."""
    out, doc = tmp_path / "runs", tmp_path / "R.md"
    assert main(["reproduce", "nb201-accuracy", "nb101-accuracy", "--data-dir", str(data), "--out", str(out),
                 "--doc", str(doc), "--fractions", "10%,50%", "--reference-fractions", "10%", "--split-seeds", "0,1",
                 "--nb101-train", "10", "--accuracy-model", "depth=1,dim=16", "--accuracy-ema", "0.9", "--quiet",
                 *FAST]) == 0
    root = out / "nb201-accuracy"
    recs = {(g, k): json.loads((root / g / f"split-{k}" / "metrics.json").read_text())
            for g in ("train-10pct", "train-50pct", "train-10pct-reference") for k in (0, 1)}
    for (g, k), r in recs.items():
        assert r["split_seed"] == k and r["group"] == g and r["ema"] == 0.9 and r["consistency"] is False
        assert r["encoding"] == ("reference" if g.endswith("reference") else "pruned")
        for m in (r["metrics"], r["baselines"]["ridge"], r["baselines"]["gbdt"]):
            assert {"tau", "rho", "best_rank", "prec@top1%"} <= set(m)
    for k in (0, 1):  # same split, other encoding: same test cells, same baselines
        a = np.load(root / "train-10pct" / f"split-{k}" / "predictions.npz")
        b = np.load(root / "train-10pct-reference" / f"split-{k}" / "predictions.npz")
        assert np.array_equal(a["measured"], b["measured"])
        assert np.array_equal(a["predicted_ridge"], b["predicted_ridge"])
    a0, a1 = (np.load(root / "train-10pct" / f"split-{k}" / "predictions.npz")["measured"] for k in (0, 1))
    assert not np.array_equal(a0, a1)  # another split seed, other test cells
    nb101 = [json.loads((out / "nb101-accuracy" / "train-10" / f"split-{k}" / "metrics.json").read_text())
             for k in (0, 1)]
    assert [r["split_seed"] for r in nb101] == [0, 1]
    text = doc.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| 10 % | authors' 8-node |"))
    tau = sorted(recs[("train-10pct-reference", k)]["metrics"]["tau"] for k in (0, 1))
    assert f"{np.median(tau):.3f} ({tau[0]:.3f}–{tau[1]:.3f})" in row and "0.89 ¹" in row
    assert any(line.startswith("| 50 % | pruned |") for line in text.splitlines())
    assert text.count("best cell's true rank ⁵ (NN-Former / ridge / GBDT)") == 2
    assert "split seeds 0, 1" in text and "EMA of the weights (decay 0.9)" in text
    log = capsys.readouterr().out
    assert log.count("nb201-accuracy train-") == 6 and "nb201-accuracy train-10pct-reference/split-1:" in log


def test_accuracy_defaults_are_the_documented_ones():
    """The profile docs/REPRODUCTION.md documents is the one Settings() runs."""
    from nnformer_fast.train.reproduce import Settings, _accuracy_epochs

    s = Settings()
    m, sm = s.accuracy_model, s.small_accuracy_model
    assert (m["depth"], m["dim"], m["n_head"], m["dropout"]) == (6, 192, 4, 0.1)
    assert (sm["depth"], sm["dim"], s.small_train_cells) == (4, 128, 500)
    assert s.accuracy_split_seeds == s.latency_split_seeds == (0, 1, 2) and s.reference_fractions == (0.10,)
    assert [_accuracy_epochs(s, n) for n in (156, 781, 1562, 7812)] == [600, 260, 130, 26]
    doc = (Path(__file__).parents[1] / "docs" / "REPRODUCTION.md").read_text()
    line = (f"| **default** | depth {m['depth']}, dim {m['dim']}, {m['n_head']} heads, dropout {m['dropout']:g}; "
            f"under {s.small_train_cells} training cells depth {sm['depth']}, dim {sm['dim']}, {sm['n_head']} heads, "
            f"dropout {sm['dropout']:g} | "
            f"{s.accuracy_lr:g} | {s.accuracy_ema:g} | {'on' if s.accuracy_consistency else 'off'} | "
            f"clip(⌈{s.accuracy_samples} / train cells⌉, {s.accuracy_min_epochs}, {s.accuracy_max_epochs}) |")
    assert line in doc, line


@pytest.mark.parametrize("opt", [["--accuracy-ema", "1"], ["--accuracy-ema", "-0.5"], ["--accuracy-lr", "0"],
                                 ["--accuracy-lr", "x"], ["--reference-fractions", "150%"]])
def test_accuracy_option_ranges_are_usage_errors(data, tmp_path, opt, capsys):
    with pytest.raises(SystemExit) as e:
        main(["reproduce", "nb201-accuracy", "--data-dir", str(data), "--out", str(tmp_path / "o"), "--no-doc", *opt])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {opt[0]}:" in err and "Traceback" not in err


def test_small_training_sets_train_the_small_profile(data, tmp_path):
    import nnformer_fast.train.reproduce as rp

    s = rp.Settings.quick_profile(accuracy_model=dict(depth=1, dim=16, n_head=4, dropout=0.1),
                                  small_accuracy_model=dict(depth=2, dim=8, n_head=4, dropout=0.1),
                                  small_train_cells=20, fractions=(0.1, 0.5), epochs=1, threads=1, jobs=1,
                                  progress=False)
    doc = tmp_path / "R.md"
    rp.reproduce(["nb201-accuracy"], data_dir=data, out=tmp_path / "o", doc=str(doc), settings=s)
    root = tmp_path / "o" / "nb201-accuracy"
    small, large = (json.loads((root / g / "split-0" / "metrics.json").read_text())
                    for g in ("train-10pct", "train-50pct"))
    assert (small["n_train"], small["model"]["depths"], small["model"]["dim"]) == (6, [2], 8)
    assert (large["n_train"], large["model"]["depths"], large["model"]["dim"]) == (30, [1], 16)
    assert ("NNFormer depth 2, dim 8, 4 heads, dropout 0.1 (train-10pct); NNFormer depth 1, dim 16, 4 heads, "
            "dropout 0.1 (train-50pct)") in doc.read_text()


def test_parallel_runs_give_the_records_of_sequential_ones(data, tmp_path, capsys):
    """--jobs 2 trains the accuracy runs in two worker processes, longest first, and returns
    (and tabulates) exactly what one run after another gives."""
    common = ["reproduce", "nb201-accuracy", "--data-dir", str(data), "--fractions", "10%,50%",
              "--reference-fractions", "none", "--split-seeds", "0,1", "--accuracy-model", "depth=1,dim=16",
              "--quiet", "--quick", "--epochs", "2", "--threads", "1"]
    recs = {}
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}"
        assert main([*common, "--jobs", jobs, "--out", str(out), "--doc", str(tmp_path / f"R{jobs}.md")]) == 0
        summary = json.loads((out / "nb201-accuracy" / "summary.json").read_text())
        recs[jobs] = [(r["run"], r["metrics"]["tau"], r["baselines"]["gbdt"]["tau"]) for r in summary["runs"]]
        assert summary["settings"]["jobs"] == int(jobs)
    assert recs["1"] == recs["2"]
    assert [r[0] for r in recs["2"]] == [f"train-{f}pct/split-{k}" for f in (10, 50) for k in (0, 1)]
    log = capsys.readouterr().out
    assert "accuracy runs 2 at a time, 1 thread(s) each" in log
    assert "2 runs at a time, 1 torch thread(s) each" in (tmp_path / "R2.md").read_text()


def test_run_calls_order_and_errors():
    from nnformer_fast.train.parallel_runs import run_calls

    calls = [(divmod, (n, 3), {}) for n in (7, 8, 9)]
    # started longest first, returned in the order given
    assert run_calls(calls, jobs=2, threads=1, costs=[1, 3, 2]) == [(2, 1), (2, 2), (3, 0)]
    assert run_calls(calls, jobs=1, threads=1) == [(2, 1), (2, 2), (3, 0)]
    with pytest.raises(ZeroDivisionError):
        run_calls([(divmod, (1, 0), {}), (divmod, (1, 1), {})], jobs=2, threads=1)
