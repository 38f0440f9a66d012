"""Bad training inputs fail early with one clear ``ValueError`` (CLI: one line, exit 2): options
out of range, model options of the wrong type, unknown devices, an unusable ``--out``, bad
accuracy JSON, test fractions outside (0, 1). Also: ``evaluate`` / ``predict`` pick their
device with ``resolve_device`` (``auto`` = the GPU when there is one), progress bars of the
evaluation and of ``predict``, scipy among the main dependencies."""
import json
import os
import tomllib
from pathlib import Path

import pytest
import torch

from nnformer_fast.cli import main
from nnformer_fast.train import TrainConfig, fit
from nnformer_fast.train import loop as L
from nnformer_fast.train import tasks as T
from nnformer_fast.train.synthetic import synthetic_cells, synthetic_latency_set

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(dim=32, n_layers=1, dropout=0.0)
ONNX = Path(os.environ.get("NNFORMER_FAST_DATA", "/work/shared/data")) / "nnlqp_resnet18_noweight.onnx"


def _cfg(**kw):
    base = dict(model=TINY, epochs=1, max_nodes=300, warmup=1, progress=False, precision="fp32", threads=1)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A latency set on disk and a checkpoint trained on it for one step."""
    d = tmp_path_factory.mktemp("run")
    synthetic_latency_set(40, seed=1).save(d / "set.npz")
    r = fit(_cfg(data=str(d / "set.npz"), out=str(d / "out"), max_steps=1))
    return d / "set.npz", Path(r.checkpoint)


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if a batch is built: the error must come before any training."""
    def refuse(self, idx):
        raise AssertionError("training started")

    monkeypatch.setattr(T.LatencyBatchBuilder, "__getitem__", refuse)
    monkeypatch.setattr(T.CellBatchBuilder, "__getitem__", refuse)


# ---------------------------------------------------------------------------- --out
def test_out_that_is_a_file_fails_before_training(tmp_path, no_training):
    train = synthetic_latency_set(24, seed=0)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        fit(_cfg(out=str(tmp_path / "afile")), train_set=train, test_set=None)
    with pytest.raises(ValueError, match="cannot write there"):
        fit(_cfg(out=str(tmp_path / "afile" / "sub")), train_set=train, test_set=None)


def test_out_folder_is_created_at_the_start(tmp_path):
    out = tmp_path / "a" / "b"
    r = fit(_cfg(out=str(out), max_steps=0), train_set=synthetic_latency_set(24, seed=0), test_set=None)
    assert out.is_dir() and Path(r.checkpoint) == out / "last.pt" and r.step == 0


def test_a_fresh_run_refuses_an_earlier_runs_checkpoint(tmp_path, capsys):
    data = tmp_path / "set.npz"
    synthetic_latency_set(24, seed=0).save(data)
    out = tmp_path / "o"
    train = ["train", "--data", str(data), "--out", str(out), "--quiet", "--epochs", "1", "--model",
             "dim=32,n_layers=1,dropout=0", "--precision", "fp32", "--threads", "1", "--max-steps", "1"]
    assert main(train) == 0
    first = (out / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(train) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{out / 'last.pt'} holds the checkpoint of an earlier run" in err, err
    assert (out / "last.pt").read_bytes() == first
    assert main([*train, "--overwrite", "--seed", "1"]) == 0
    assert (out / "last.pt").read_bytes() != first
    assert main([*train, "--seed", "1", "--resume", "--max-steps", "2"]) == 0


def test_resume_removes_what_a_killed_writer_left(tmp_path):
    """``kill -9`` during ``torch.save`` leaves ``.last.pt.tmp<PID>``; the next start of the
    run removes it (its writer is gone) and leaves temporaries of live processes alone."""
    import signal
    import subprocess
    import sys

    out = tmp_path / "o"
    r = fit(_cfg(out=str(out), max_steps=1), train_set=synthetic_latency_set(24, seed=0), test_set=None)
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        torn = out / f".last.pt.tmp{writer.pid}"
        torn.write_bytes(Path(r.checkpoint).read_bytes()[:1000])
        busy = out / f".last.pt.tmp{live.pid}"
        busy.write_bytes(b"being written")
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        fit(_cfg(out=str(out), max_steps=2, resume="auto"), train_set=synthetic_latency_set(24, seed=0),
            test_set=None)
        assert not torn.exists() and busy.exists()
    finally:
        live.kill()
        live.wait()


def test_cli_reports_os_errors_in_one_line(monkeypatch, capsys):
    import nnformer_fast.train.api as api

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied", "/somewhere/last.pt")

    monkeypatch.setattr(api, "evaluate", denied)
    assert main(["evaluate", "/somewhere/last.pt"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nnformer-fast evaluate: error:") and "Permission denied" in err and "\n" not in err


# ---------------------------------------------------------------------------- options
BAD_OPTIONS = [
    ("accuracy", ["--model", "depths=6"], "option depths=6 should be a list of integers; for one stage write depth=6"),
    ("accuracy", ["--model", "depth=1,dim=abc"], "option dim='abc' should be an integer"),
    ("accuracy", ["--model", "depth=abc"], "option depth='abc' should be an integer"),
    ("accuracy", ["--model", "depth=1,lambda_rank=x"], "option lambda_rank='x' should be a number"),
    ("latency", ["--model", "n_layers=1.5"], "option n_layers=1.5 should be an integer"),
    ("latency", ["--model", "degree_gating=1"], "option degree_gating=1 should be true or false"),
    ("latency", ["--device", "foo"], "unknown device 'foo'"),
    ("latency", ["--threads", "-1"], r"threads \(--threads\) must be >= 1, got -1"),
    ("latency", ["--ema", "1.5"], r"ema \(--ema\) must be in \[0, 1\)"),
    ("latency", ["--grad-clip", "-1"], r"grad_clip \(--grad-clip\) must be > 0"),
    ("latency", ["--warmup", "-3"], r"warmup \(--warmup\) must be >= 0"),
    ("latency", ["--epochs", "-2"], r"epochs \(--epochs\) must be >= 1"),
    ("latency", ["--epochs", "0"], r"epochs \(--epochs\) must be >= 1"),
    ("latency", ["--test-fraction", "1.5"], r"test_fraction \(--test-fraction\) must be in \(0, 1\)"),
    ("latency", ["--test-fraction", "0"], r"test_fraction \(--test-fraction\) must be in \(0, 1\)"),
    ("latency", ["--max-steps", "-1"], r"max_steps \(--max-steps\) must be >= 0"),
    ("latency", ["--workers", "-1"], r"num_workers \(--workers\) must be >= 0"),
]


@pytest.mark.parametrize("task, extra, message", BAD_OPTIONS, ids=[" ".join(e) for _, e, _ in BAD_OPTIONS])
def test_cli_refuses_bad_options_in_one_line(tmp_path, capsys, no_training, task, extra, message):
    import re

    cells = tmp_path / "cells.json"
    cells.write_text(json.dumps({"0": {"module_adjacency": [[0, 1], [0, 0]], "module_operations": [0, 1],
                                       "validation_accuracy": 0.5}}))
    data = str(cells) if task == "accuracy" else "default"
    rc = main(["train", "--task", task, "--data", data, "--epochs", "1", "--quiet", "--out", str(tmp_path / "o"),
               *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("nnformer-fast train: error:") and "\n" not in err, err
    assert re.search(message, err), err


def test_fit_refuses_out_of_range_settings(no_training):
    train = synthetic_latency_set(24, seed=0)
    for bad, match in [(dict(grad_clip=0.0), "grad_clip"), (dict(threads=0), "threads"), (dict(lr=-1.0), "lr"),
                       (dict(ema=-0.1), "ema"), (dict(ema=float("nan")), "ema"), (dict(min_lr_ratio=2.0), "min_lr"),
                       (dict(max_graphs=0), "max_graphs"), (dict(checkpoint_every=-1), "checkpoint_every"),
                       (dict(nb201_encoding="authors"), r"nb201_encoding \(--nb201-encoding\) must be one of")]:
        with pytest.raises(ValueError, match=match):
            fit(_cfg(**bad), train_set=train, test_set=None)


def test_resolve_device():
    with pytest.raises(ValueError, match="unknown device 'foo'"):
        L.resolve_device("foo")
    with pytest.raises(ValueError, match="unknown device 'meta'"):
        L.resolve_device("meta")
    assert L.resolve_device("cpu") == torch.device("cpu")
    assert L.resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="cuda:99"):
        L.resolve_device("cuda:99")


@pytest.mark.parametrize("fraction", [1.5, -0.3, 0.0, 1.0])
def test_split_refuses_fractions_outside_0_1_for_both_tasks(fraction):
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        T.split_dataset("accuracy", synthetic_cells(20, seed=0), test_fraction=fraction)
    with pytest.raises(ValueError, match="fraction"):
        T.split_dataset("latency", synthetic_latency_set(20, seed=0), test_fraction=fraction)


# ---------------------------------------------------------------------------- accuracy JSON
ADJ = [[0, 1, 0], [0, 0, 1], [0, 0, 0]]


@pytest.mark.parametrize("items, match", [
    ({"0": {"module_adjacency": ADJ, "module_operations": [0, 1, 4], "validation_accuracy": 0.9}, "1": 5},
     r"\[1\]: expected an object .* got int 5"),
    ({"0": {"module_adjacency": ADJ, "module_operations": [0, 99, 4], "validation_accuracy": 0.9}},
     r"cell 0: op code 99 outside \[0, 32\)"),
    ({"0": {"module_adjacency": ADJ, "module_operations": [0, 1, 4], "validation_accuracy": 0.9},
      "7": {"module_adjacency": ADJ, "module_operations": [0, -1, 4], "validation_accuracy": 0.9}},
     r"cell 7: op code -1 outside \[0, 32\)"),
    ({"0": {"module_adjacency": ADJ, "module_operations": [0, 1, 4], "validation_accuracy": "high"}},
     r"\[0\]: 'validation_accuracy' is 'high', not a number"),
    ({"0": {"module_adjacency": [[0, 1], [0]], "module_operations": [0, 1, 4], "validation_accuracy": 0.5}},
     r"\[0\]: bad module_adjacency"),
])
def test_bad_cell_json_names_file_and_key(tmp_path, items, match):
    path = tmp_path / "cells.json"
    path.write_text(json.dumps(items))
    with pytest.raises(ValueError, match=match) as e:
        T.load_dataset("accuracy", path)
    assert str(path) in str(e.value)


# NAS-Bench-201 in the authors' SPEC §7 JSON: the 8 unpruned nodes, the fixed adjacency, percent accuracies
# with *_avg twins.
NB201_ADJ = [[0, 1, 1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 0, 1, 0],
             [0, 0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0, 0, 1], [0] * 8]
NB201_RECORDS = {"0": [0, 2, 5, 3, 4, 5, 1, 6], "1": [0, 5, 5, 5, 5, 5, 5, 6], "2": [0, 2, 2, 2, 2, 2, 2, 6]}


def _authors_nb201_json(path, avg: bool = True):
    def record(i, ops):
        acc = {"test_accuracy": 80.0 + i, "validation_accuracy": 70.0 + i}
        if avg:
            acc.update(test_accuracy_avg=79.5 + i, validation_accuracy_avg=69.5 + i)
        return {"module_adjacency": NB201_ADJ, "module_operations": ops, **acc}

    path.write_text(json.dumps({k: record(int(k), ops) for k, ops in NB201_RECORDS.items()}))
    return path


def test_spec_json_in_the_authors_nb201_layout_gets_their_depth(tmp_path):
    cells = T.load_dataset("accuracy", _authors_nb201_json(tmp_path / "nb201.json"))
    assert cells.num_nodes.tolist() == [8, 8, 8]
    assert cells.depths.tolist() == [6, 2, 8]  # the ops other than none (5)
    assert cells.targets.tolist() == pytest.approx([0.70, 0.71, 0.72])
    assert cells.cells[0].extra["validation_accuracy_avg"] == pytest.approx(0.695)
    assert T.CellBatchBuilder(cells)[[0, 1, 2]].inputs[0]["code_depth"][:, 0].argmax(-1).tolist() == [6, 2, 8]
    # the same cells without *_avg are not marked as the authors' NB201 layout: depth = L
    plain = T.load_dataset("accuracy", _authors_nb201_json(tmp_path / "plain.json", avg=False))
    assert plain.depths.tolist() == [8, 8, 8]


def test_spec_json_without_avg_keeps_depth_L(tmp_path):
    path = tmp_path / "nb101.json"
    path.write_text(json.dumps({"0": {"module_adjacency": ADJ, "module_operations": [0, 1, 4],
                                      "validation_accuracy": 0.9, "test_accuracy": 0.89},
                                "1": {"module_adjacency": [[0, 1], [0, 0]], "module_operations": [0, 4],
                                      "validation_accuracy": 0.1, "test_accuracy": 0.1}}))
    cells = T.load_dataset("accuracy", path, nb201_encoding="reference")  # not a format it applies to
    assert cells.num_nodes.tolist() == [3, 2] and cells.depths.tolist() == [3, 2]


ARCHS = ["|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|",
         "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
         "|nor_conv_1x1~0|+|none~0|none~1|+|skip_connect~0|none~1|avg_pool_3x3~2|",
         "|avg_pool_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|nor_conv_3x3~0|skip_connect~1|avg_pool_3x3~2|",
         "|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|none~0|none~1|nor_conv_1x1~2|",
         "|skip_connect~0|+|none~0|nor_conv_1x1~1|+|avg_pool_3x3~0|none~1|none~2|"] * 2


def _nb201_csv(path):
    rows = [f"{a},{60 + i},{40 + i},{20 + i}" for i, a in enumerate(ARCHS)]
    path.write_text("ArchitectureString,CIFAR10TestAccuracy200Epochs,CIFAR100TestAccuracy200Epochs,"
                    "ImageNetTestAccuracy200Epochs\n" + "\n".join(rows) + "\n")
    return path


def test_nb201_encoding_of_the_csv_and_naslib_formats(tmp_path):
    csv = _nb201_csv(tmp_path / "nb201.csv")
    pruned, ref = (T.load_dataset("accuracy", csv, nb201_encoding=e) for e in ("pruned", "reference"))
    assert set(ref.num_nodes.tolist()) == {8} and ref.depths.tolist() == [6, 2, 5, 8, 6, 5] * 2
    assert pruned.num_nodes.tolist() == pruned.depths.tolist() == [6, 2, 3, 8, 6, 3] * 2
    naslib = tmp_path / "naslib.json"
    naslib.write_text(json.dumps({"cifar10": {"(2, 1, 0, 4, 1, 3)": {"val_accuracy": 88.0},
                                              "(1, 1, 1, 1, 1, 1)": {"val_accuracy": 10.0}}}))
    ref = T.load_dataset("accuracy", naslib, nb201_encoding="reference")
    assert ref.num_nodes.tolist() == [8, 8] and ref.depths.tolist() == [6, 2]
    assert T.load_dataset("accuracy", naslib).num_nodes.tolist() == [6, 2]
    with pytest.raises(ValueError, match="unknown NAS-Bench-201 encoding 'unpruned'"):
        T.load_dataset("accuracy", csv, nb201_encoding="unpruned")


def test_cli_nb201_encoding_reaches_the_loader_and_is_kept_on_resume(tmp_path, monkeypatch, capsys):
    from nnformer_fast.data import cells as C

    csv, out = _nb201_csv(tmp_path / "nb201.csv"), tmp_path / "run"
    seen = []
    real = C.load_nb201_csv
    monkeypatch.setattr(C, "load_nb201_csv", lambda *a, **k: seen.append(k.get("prune")) or real(*a, **k))
    train = ["train", "--task", "accuracy", "--data", str(csv), "--model", "depth=1,dim=32", "--epochs", "2",
             "--max-nodes", "64", "--out", str(out), "--quiet", "--precision", "fp32", "--threads", "1"]
    assert main([*train, "--nb201-encoding", "reference", "--max-steps", "1"]) == 0
    assert seen == [False]
    assert torch.load(out / "last.pt", weights_only=True)["train_config"]["nb201_encoding"] == "reference"
    assert main(["evaluate", str(out / "last.pt"), "--quiet", "--device", "cpu"]) == 0  # the run's own encoding
    assert seen == [False, False]
    capsys.readouterr()
    assert main([*train, "--resume"]) == 2  # default: pruned
    err = capsys.readouterr().err.strip()
    assert "saved for another training set" in err and "\n" not in err, err
    assert "saved with nb201_encoding='reference', this run has nb201_encoding='pruned'" in err, err
    assert main([*train, "--nb201-encoding", "reference", "--resume", "--max-steps", "2"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main([*train, "--nb201-encoding", "authors"])
    assert e.value.code == 2 and "invalid choice: 'authors'" in capsys.readouterr().err


# ---------------------------------------------------------------------------- evaluate / predict device
@pytest.fixture
def device_spy(monkeypatch):
    calls = []
    real = L.resolve_device

    def spy(name):
        calls.append(str(name))
        return real("cpu")  # where the test machine can run it

    monkeypatch.setattr(L, "resolve_device", spy)
    return calls


def test_cli_evaluate_and_predict_resolve_auto(run, device_spy, capsys):
    _, ckpt = run
    assert main(["evaluate", str(ckpt), "--quiet"]) == 0
    assert device_spy and device_spy[0] == "auto"  # was turned into "cpu" before resolving
    device_spy.clear()
    assert main(["predict", str(ckpt), str(ckpt.parent / "missing.onnx"), "--quiet"]) == 2  # no such file
    assert device_spy and device_spy[0] == "auto"
    device_spy.clear()
    assert main(["evaluate", str(ckpt), "--quiet", "--device", "cpu"]) == 0
    assert device_spy[0] == "cpu"


def test_evaluate_refuses_unknown_device(run):
    from nnformer_fast.train import evaluate

    _, ckpt = run
    with pytest.raises(ValueError, match="unknown device 'foo'"):
        evaluate(ckpt, device="foo")


# ---------------------------------------------------------------------------- damaged checkpoints
def test_damaged_checkpoint_is_refused_by_every_command(run, tmp_path, capsys):
    """A byte flipped inside a weight tensor (the zip's CRC-32 then disagrees) stops predict,
    evaluate and --resume in one line naming the file, instead of reading garbage numbers."""
    import zipfile

    data, ckpt = run
    bad = tmp_path / "last.pt"
    bad.write_bytes(ckpt.read_bytes())
    with zipfile.ZipFile(bad) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)  # a weight
    with open(bad, "r+b") as f:
        f.seek(info.header_offset + 26)
        skip = 30 + sum(int.from_bytes(f.read(2), "little") for _ in range(2))
        f.seek(info.header_offset + skip + info.file_size // 2)
        f.write(b"\x7f\x7f\x7f\x7f")
    for argv in (["predict", str(bad), str(ONNX), "--quiet", "--device", "cpu"],
                 ["evaluate", str(bad), "--quiet", "--device", "cpu"],
                 ["train", "--data", str(data), "--out", str(tmp_path), "--resume", "--quiet", "--model",
                  "dim=32,n_layers=1,dropout=0", "--epochs", "1", "--max-nodes", "300", "--precision", "fp32"]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"{bad}: not a readable checkpoint" in err and "CRC-32" in err, err


# ---------------------------------------------------------------------------- progress bars
def test_held_out_evaluation_shows_a_bar(capsys):
    train, test = synthetic_latency_set(40, seed=0).split_in_domain(test_fraction=0.25, seed=0)
    fit(_cfg(max_steps=1, progress=True), train_set=train, test_set=test)
    assert "evaluate held-out" in capsys.readouterr().err
    fit(_cfg(max_steps=1, progress=False), train_set=train, test_set=test)
    assert "evaluate held-out" not in capsys.readouterr().err


def test_evaluate_and_predict_show_bars_unless_quiet(run, capsys):
    _, ckpt = run
    assert main(["evaluate", str(ckpt), "--device", "cpu"]) == 0
    assert "evaluate test" in capsys.readouterr().err
    assert main(["evaluate", str(ckpt), "--device", "cpu", "--quiet"]) == 0
    assert "evaluate test" not in capsys.readouterr().err
    if not ONNX.is_file():
        pytest.skip(f"{ONNX} not present")
    assert main(["predict", str(ckpt), str(ONNX), "--device", "cpu"]) == 0
    assert "read ONNX" in capsys.readouterr().err
    assert main(["predict", str(ckpt), str(ONNX), "--device", "cpu", "--quiet"]) == 0
    assert "read ONNX" not in capsys.readouterr().err


# ---------------------------------------------------------------------------- packaging
def test_scipy_is_a_main_dependency():
    """Every evaluation computes Kendall's tau with scipy: a plain ``pip install`` must bring it."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.replace(" ", "").lower().startswith("scipy") for d in deps), deps


@pytest.mark.parametrize("rank, prints", [("0", True), ("1", False)])
def test_train_summary_is_printed_by_rank_0_only(monkeypatch, capsys, rank, prints):
    """Under torchrun every process runs the CLI: the summary comes once, from rank 0."""
    from types import SimpleNamespace

    from nnformer_fast.cli import main
    from nnformer_fast.train import loop

    result = SimpleNamespace(metrics={"tau": 0.5}, step=3, checkpoint="out/last.pt",
                             throughput={"steps": 3, "seconds": 1.0, "graphs_per_s": 9.0, "nodes_per_s": 90.0})
    monkeypatch.setattr(loop, "fit", lambda cfg: result)
    monkeypatch.setenv("RANK", rank)
    assert main(["train", "--task", "latency", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert ("trained 3 steps" in out and "held-out: tau=0.5000" in out) == prints
    assert out.strip() == "" or prints
