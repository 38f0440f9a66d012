"""Command-line input handling: bad values are one-line usage errors (exit 2), Ctrl-C ends in
one line and exit 130, a missing optional dependency is named, the demo's options and help,
and the Makefile's rebuild of the extension after a C++ edit."""
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
