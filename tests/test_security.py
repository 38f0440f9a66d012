"""No file the package reads can run code: a pickled object whose ``__reduce__`` writes a
marker file is planted in every kind of file that can hold a pickle (checkpoints, the
NAS-Bench-201 latency ``.pt`` files and ``str_arch2idx.pt``, ``.npz`` sets, the feature
cache, a bare ``.pkl`` given as data); each is refused in one line naming the file and the
marker never appears. The shipped HELP files still load without any unpickling fallback."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nnformer_fast.cli import main
from nnformer_fast.data import latency as L
from nnformer_fast.train.checkpoint import FORMAT, CheckpointError, load_checkpoint
from nnformer_fast.train.synthetic import synthetic_latency_set

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("NNFORMER_FAST_DATA", "/work/shared/data"))


class Payload:
    """Unpickling this runs ``exec``, which writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('code ran')",)


@pytest.fixture
def marker(tmp_path):
    m = tmp_path / "MARKER"
    yield m
    assert not m.exists(), "unpickling ran the planted code"


def _one_line_naming(err: str, path: Path) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and len(lines[0]) <= 300, err[:2000]
    assert "Traceback" not in err


def _help_folder(tmp_path, latencies, arch2idx) -> Path:
    d = tmp_path / "nb201_latency"
    d.mkdir()
    torch.save(latencies, d / "pixel3.pt")
    torch.save(arch2idx, d / "str_arch2idx.pt")
    return d


GOOD_ARCH = {"|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|none~1|avg_pool_3x3~2|": 0}


@pytest.mark.parametrize("poisoned", ["pixel3.pt", "str_arch2idx.pt"])
def test_nb201_latency_files_cannot_run_code(tmp_path, marker, capsys, poisoned):
    evil = [Payload(marker)]
    d = _help_folder(tmp_path, evil if poisoned == "pixel3.pt" else [1.5],
                     {"|x~0|": Payload(marker)} if poisoned == "str_arch2idx.pt" else GOOD_ARCH)
    with pytest.raises(ValueError, match=re.escape(str(d / poisoned)) + ".*weights_only"):
        L.load_nb201_latency("pixel3", root=d)
    rc = main(["train", "--task", "latency", "--data", str(d), "--nb201-device", "pixel3", "--epochs", "1",
               "--quiet", "--out", str(tmp_path / "out")])
    assert rc == 2
    _one_line_naming(capsys.readouterr().err, d / poisoned)


def test_checkpoint_cannot_run_code(tmp_path, marker, capsys):
    p = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "task": "latency", "model_config": {}, "model": Payload(marker)}, p)
    with pytest.raises(CheckpointError, match=re.escape(str(p))):
        load_checkpoint(p)
    data = tmp_path / "set.npz"
    synthetic_latency_set(12, seed=0).save(data)
    for argv in (["predict", str(p), str(tmp_path)], ["evaluate", str(p), "--quiet"],
                 ["train", "--data", str(data), "--resume", str(p), "--out", str(tmp_path / "o"), "--quiet",
                  "--epochs", "1", "--model", "dim=32,n_layers=1"]):
        assert main(argv) == 2, argv
        _one_line_naming(capsys.readouterr().err, p)


def test_npz_latency_set_cannot_run_code(tmp_path, marker, capsys):
    good = tmp_path / "good.npz"
    synthetic_latency_set(12, seed=0).save(good)
    with np.load(good) as z:
        arrays = dict(z)
    arrays["rec_family"] = np.array([Payload(marker)] * len(arrays["rec_family"]), dtype=object)
    p = tmp_path / "evil.npz"
    np.savez(p, **arrays)
    with pytest.raises(ValueError, match=re.escape(str(p))):
        L.LatencyDataset.load(p)
    assert main(["train", "--data", str(p), "--out", str(tmp_path / "o"), "--quiet", "--epochs", "1"]) == 2
    _one_line_naming(capsys.readouterr().err, p)


def test_feature_cache_cannot_run_code(tmp_path, marker):
    """A forged cache claiming an object array is not a cache (it is rebuilt, nothing runs)."""
    import pickle

    blob = pickle.dumps(np.array([Payload(marker)], dtype=object))
    header = json.dumps({"key": "k", "arrays": {k: {"dtype": "|O", "shape": [1], "offset": 0}
                                                for k in L._STORE_KEYS}}).encode()
    p = tmp_path / "x.nnfc"
    p.write_bytes(L._MAGIC + len(header).to_bytes(8, "little") + header + b"\0" * 64 + blob)
    assert L._read_raw(p) is None


@pytest.mark.parametrize("task", ["latency", "accuracy"])
def test_bare_pickle_as_data_is_refused(tmp_path, marker, capsys, task):
    import pickle

    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"x": Payload(marker)}))
    assert main(["train", "--task", task, "--data", str(p), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    _one_line_naming(capsys.readouterr().err, p)


def test_package_has_no_unpickling_fallback():
    """No code path can unpickle what ``torch.load(weights_only=True)`` refuses."""
    banned = re.compile(r"pickle\.(loads?|Unpickler)\b|allow_pickle\s*=\s*True|weights_only\s*=\s*False|"
                        r"^\s*(import|from) (pickle|_pickle|dill|joblib|cloudpickle)\b")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "nnformer_fast").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if banned.search(line)]
    assert not hits, hits


@pytest.mark.skipif(not (DATA / "nb201_latency").is_dir(), reason="shared data folder absent")
def test_shipped_help_files_load_safely():
    from nnformer_fast._safe_load import load_torch_file

    for p in sorted((DATA / "nb201_latency").glob("*.pt")):
        assert isinstance(load_torch_file(p, "file"), (list, dict)), p
    ds = L.load_nb201_latency("essential_ph_1", root=DATA)
    assert len(ds) > 3000
