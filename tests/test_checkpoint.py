"""Atomic, code-free checkpoints; corrupt and mismatched ones are refused."""
import os
import random

import numpy as np
import pytest
import torch

from nnformer_fast.train import checkpoint as ck
from nnformer_fast.train.checkpoint import (CheckpointError, gather_rng_states, load_checkpoint, restore_rng_state,
                                            save_checkpoint)


def _state(v=1.0):
    return {"task": "latency", "model_config": {"dim": 32, "n_layers": 1}, "model": {"w": torch.full((3,), v)},
            "step": 7, "losses": torch.tensor([1.0, 0.5], dtype=torch.float64)}


def test_roundtrip(tmp_path):
    p = save_checkpoint(tmp_path / "c.pt", _state())
    st = load_checkpoint(p, task="latency", model_config={"dim": 32, "n_layers": 1})
    assert st["step"] == 7 and torch.equal(st["model"]["w"], torch.ones(3))
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]  # no temporary left behind


def test_crash_mid_write_keeps_previous(tmp_path, monkeypatch):
    p = save_checkpoint(tmp_path / "c.pt", _state(1.0))
    before = p.read_bytes()
    real_save = torch.save

    def torn_save(obj, f):  # write half a checkpoint, then die
        import io

        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError("simulated crash (disk full / power loss)")

    monkeypatch.setattr(ck.torch, "save", torn_save)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(p, _state(2.0))
    monkeypatch.setattr(ck.torch, "save", real_save)
    assert p.read_bytes() == before
    assert torch.equal(load_checkpoint(p)["model"]["w"], torch.ones(3))
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]


def test_corrupt_and_foreign_files_refused(tmp_path):
    p = save_checkpoint(tmp_path / "c.pt", _state())
    data = p.read_bytes()
    (tmp_path / "torn.pt").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "torn.pt")
    (tmp_path / "junk.pt").write_bytes(b"hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"w": torch.ones(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(tmp_path / "plain.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_code_cannot_run(tmp_path):
    torch.save({"format": ck.FORMAT, "x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_mismatch_refused(tmp_path):
    p = save_checkpoint(tmp_path / "c.pt", _state())
    with pytest.raises(CheckpointError, match="accuracy"):
        load_checkpoint(p, task="accuracy")
    with pytest.raises(CheckpointError, match="dim: checkpoint 32 vs requested 64"):
        load_checkpoint(p, task="latency", model_config={"dim": 64, "n_layers": 1})


def test_rng_roundtrip(tmp_path):
    g = torch.Generator().manual_seed(4)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    p = save_checkpoint(tmp_path / "r.pt", {"rng": gather_rng_states(g)})  # one process: [its state]
    want = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=g))
    torch.manual_seed(9), np.random.seed(9), random.seed(9), g.manual_seed(9)
    (state,) = load_checkpoint(p)["rng"]
    restore_rng_state(state, g)
    got = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=g))
    assert torch.equal(want[0], got[0]) and np.array_equal(want[1], got[1]) and want[2] == got[2]
    assert torch.equal(want[3], got[3])
