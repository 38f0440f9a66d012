"""Atomic, code-free checkpoints; corrupt and mismatched ones are refused."""
import os
import random
import re

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


# ---------------------------------------------------------------------------- damaged bytes
def _flip_byte(path, member: str, at: float = 0.5) -> None:
    """Invert one byte inside ``member`` of the zip archive ``path`` (CRC then disagrees)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        pos = info.header_offset + 30 + name_len + extra_len + int(at * (info.compress_size - 1))
        f.seek(pos)
        b = f.read(1)
        f.seek(pos)
        f.write(bytes([b[0] ^ 0xFF]))


def _trained_state():
    """A checkpoint state with weights and AdamW moments (the optimizer state is tensors too)."""
    model = torch.nn.Linear(64, 32)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 64)).sum().backward()
    opt.step()
    return {**_state(), "model": model.state_dict(), "optimizer": opt.state_dict()}


def test_every_damaged_member_is_refused(tmp_path):
    """A flipped byte in any weight, in the optimizer state or in the pickle is refused by
    name, where ``torch.load`` alone reads the damaged numbers silently."""
    import zipfile

    p = save_checkpoint(tmp_path / "c.pt", _trained_state())
    with zipfile.ZipFile(p) as z:
        members = [n for n in z.namelist() if "/data/" in n or n.endswith("data.pkl")]
    assert len(members) >= 6  # weight, bias, step, exp_avg, exp_avg_sq ... and the pickle
    clean = p.read_bytes()
    for member in members:
        p.write_bytes(clean)
        _flip_byte(p, member)
        with pytest.raises(CheckpointError, match=f"{re.escape(str(p))}: .*{re.escape(repr(member))} fails its "
                                                  "CRC-32 check"):
            load_checkpoint(p)
    p.write_bytes(clean)
    assert load_checkpoint(p)["step"] == 7


# ---------------------------------------------------------------------------- an earlier run's folder
def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(dead.stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        target = tmp_path / "last.pt"
        stale = [tmp_path / f".last.pt.tmp{dead_pid}", tmp_path / f".last.pt.tmp{os.getpid()}"]
        kept = [tmp_path / f".last.pt.tmp{live.pid}", tmp_path / f".other.pt.tmp{dead_pid}",
                tmp_path / ".last.pt.tmpx1", tmp_path / "notes.txt"]
        for f in stale + kept:
            f.write_bytes(b"half a checkpoint")
        ck.claim_checkpoint(target, resume=None, overwrite=False)
        assert sorted(tmp_path.iterdir()) == sorted(kept)
    finally:
        live.kill()
        live.wait()


def test_a_fresh_run_keeps_an_earlier_runs_checkpoint(tmp_path):
    p = save_checkpoint(tmp_path / "last.pt", _state())
    with pytest.raises(CheckpointError, match="earlier run.*--resume.*--overwrite"):
        ck.claim_checkpoint(p, resume=None, overwrite=False)
    ck.claim_checkpoint(p, resume="auto", overwrite=False)
    ck.claim_checkpoint(p, resume=None, overwrite=True)
    assert load_checkpoint(p)["step"] == 7
