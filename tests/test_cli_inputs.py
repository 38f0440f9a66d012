"""Command-line input handling: bad values are one-line usage errors (exit 2), Ctrl-C ends in
one line and exit 130, a missing optional dependency is named, the demo's options and help,
the Makefile's rebuild of the extension after a C++ edit, and ``predict`` over many files
(each unreadable one reported in one line, the rest predicted; warnings for physically
impossible shapes and batch sizes)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nnformer_fast.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_keyboard_interrupt_is_one_line(tmp_path, monkeypatch, capsys):
    import nnformer_fast.data.builder as builder
    import nnformer_fast.train.reproduce as reproduce

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(builder, "require_onnx", lambda: None)
    monkeypatch.setattr(builder, "build_latency_set", interrupted)
    assert main(["build-latency-set", str(tmp_path / "o"), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "nnformer-fast build-latency-set: interrupted; rerun the same command to resume"
    monkeypatch.setattr(reproduce, "reproduce", interrupted)
    assert main(["reproduce", "nb101-accuracy", "--threads", "1", "--no-doc", "--out", str(tmp_path / "r")]) == 130
    assert capsys.readouterr().err.strip() == "nnformer-fast reproduce: interrupted"


def test_train_interrupt_keeps_its_message(tmp_path, monkeypatch, capsys):
    import nnformer_fast.train.loop as loop

    def fit(*a, **k):  # what fit does on Ctrl-C: report the checkpoint, then re-raise
        print("interrupted at step 3; checkpoint written to x", file=sys.stderr)
        raise KeyboardInterrupt("interrupted at step 3")

    monkeypatch.setattr(loop, "fit", fit)
    assert main(["train", "--epochs", "1", "--quiet"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted at step 3; checkpoint written to x"


def test_build_latency_set_without_onnxruntime(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the [data] extra were not installed
    assert main(["build-latency-set", str(tmp_path / "o"), "--tiny", "--count", "1", "--families", "resnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith('build-latency-set needs onnx and onnxruntime: pip install "nnformer_fast[data]"')
    assert "\n" not in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("opt", [["--remeasure-repeats", "0"], ["--remeasure-repeats", "-1"]])
def test_build_latency_set_bad_options(tmp_path, opt, capsys):
    with pytest.raises(SystemExit) as e:
        main(["build-latency-set", str(tmp_path / "o"), "--remeasure-above", "0.1", *opt])
    assert e.value.code == 2 and "must be >= 1" in capsys.readouterr().err


def test_demo_bad_options(tmp_path, capsys):
    from nnformer_fast import demo

    with pytest.raises(SystemExit) as e:
        demo.main(["--threads", "-1", "--out", str(tmp_path)])
    assert e.value.code == 2 and "--threads: must be >= 0, got -1" in capsys.readouterr().err
    threads = torch.get_num_threads()
    try:
        assert demo.main(["--threads", "1", "--data", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err.strip()
    assert err.startswith("nnformer_fast.demo: error: ") and "missing" in err and "\n" not in err


def test_demo_help_is_the_whole_first_paragraph(capsys):
    from nnformer_fast import demo

    with pytest.raises(SystemExit):
        demo.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "both timed in alternating rounds after training)." in text


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_makefile_rebuilds_after_a_csrc_edit(tmp_path):
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".stamp").touch()
    future = time.time() + 3600  # newer than every source, so only -W makes a prerequisite newer
    os.utime(venv / ".stamp", (future, future))
    run = lambda *a: subprocess.run(["make", "-n", f"VENV={venv}", *a, "test"], cwd=ROOT, capture_output=True,
                                    text=True, check=True).stdout
    assert "pip install" not in run()
    source = next(p for p in sorted((ROOT / "csrc").rglob("*")) if p.is_file())
    assert "pip install --no-build-isolation" in run("-W", str(source.relative_to(ROOT)))


# ---------------------------------------------------------------------------- predict over many files
def _onnx_bytes(dims=(1, 3, 8, 8), weight_dims=(4, 3, 3, 3)) -> bytes:
    """A Conv -> Relu -> GlobalAveragePool network with input ``dims``."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    w = onnx.TensorProto(name="w", data_type=TensorProto.FLOAT, dims=list(weight_dims))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph).SerializeToString()


@pytest.fixture(scope="module")
def latency_checkpoint(tmp_path_factory):
    from nnformer_fast.train import TrainConfig, fit
    from nnformer_fast.train.synthetic import synthetic_latency_set

    out = tmp_path_factory.mktemp("ckpt")
    r = fit(TrainConfig(model=dict(dim=32, n_layers=1, dropout=0.0), epochs=1, max_nodes=300, max_steps=0,
                        progress=False, precision="fp32", threads=1, out=str(out)),
            train_set=synthetic_latency_set(24, seed=0), test_set=None)
    return r.checkpoint


def test_predict_reports_each_unreadable_file_and_predicts_the_rest(tmp_path, latency_checkpoint, capsys):
    (tmp_path / "sub").mkdir()
    good = [tmp_path / "a.onnx", tmp_path / "sub" / "d.onnx"]
    for f in good:
        f.write_bytes(_onnx_bytes())
    bad = [tmp_path / "b.onnx", tmp_path / "c.onnx"]
    bad[0].write_bytes(b"\x00garbage" * 100)
    bad[1].write_bytes(b"")
    assert main(["predict", latency_checkpoint, str(tmp_path), "--quiet", "--device", "cpu"]) == 2
    out, err = capsys.readouterr()
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(f) for f in good]
    lines = err.strip().splitlines()
    assert len(lines) == 3 and lines[-1] == "nnformer-fast predict: 2 of 4 ONNX files could not be read", err
    for f, line in zip(bad, lines):
        assert line.startswith(f"nnformer-fast predict: error: {f}: ") and len(line) <= 300, line


def test_predict_warns_on_impossible_shapes_and_batch_sizes(tmp_path, latency_checkpoint, capsys):
    huge, negative, fine = tmp_path / "huge.onnx", tmp_path / "negative.onnx", tmp_path / "fine.onnx"
    huge.write_bytes(_onnx_bytes(dims=(1, 3, 2 ** 40, 2 ** 40)))
    negative.write_bytes(_onnx_bytes(weight_dims=(4, 3, -3, 3)))
    fine.write_bytes(_onnx_bytes())
    assert main(["predict", latency_checkpoint, str(huge), str(negative), str(fine), "--quiet", "--device",
                 "cpu"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3
    warned = err.strip().splitlines()
    assert len(warned) == 2 and all(w.startswith("nnformer-fast predict: warning: ") for w in warned), err
    assert str(huge) in warned[0] and str(negative) in warned[1] and "physically impossible" in err

    assert main(["predict", latency_checkpoint, str(fine), "--quiet", "--device", "cpu", "--batch-size",
                 str(10 ** 13)]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1 and f"--batch-size {10 ** 13} is far beyond" in err
    assert "physically impossible" in err  # 10**13 * 3 * 8 * 8 elements > 2**48
    with pytest.raises(SystemExit) as e:
        main(["predict", latency_checkpoint, str(fine), "--batch-size", str(2 ** 63)])
    assert e.value.code == 2 and "ONNX dims are int64" in capsys.readouterr().err


def test_ambiguous_latency_folder_message_speaks_cli(tmp_path, capsys):
    """The refusal says what to do on the command line, not which Python parameter to pass."""
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("s0 x.onnx 1 1.0 resnet cpu\n")
    assert main(["train", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "file=" not in err and "give the text file itself" in err and str(tmp_path) in err, err
