"""LatencyDataset: NNLQP layout reader, filters, splits, cache, NB201 files, default set."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")

from nnformer_fast.data import latency as lat_mod  # noqa: E402
from nnformer_fast.data.builder import generate, strip_weights  # noqa: E402
from nnformer_fast.data.latency import (  # noqa: E402
    LatencyDataset, collate_latency, load_nb201_latency, parse_latency_file)
from nnformer_fast.data.onnx_features import load_onnx_graph  # noqa: E402

FAMS = ("resnet", "squeezenet", "alexnet")


def _make_set(root: Path, n_per_family=3):
    lines = []
    k = 0
    for fam in FAMS:
        for i in range(n_per_family):
            rel = f"onnx/{fam}/{fam}_{i}.onnx"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            onnx.save(strip_weights(generate(fam, np.random.default_rng([5, i]), tiny=True)), root / rel)
            for bs in (1, 2):
                for plat, stage in (("cpu", "train"), ("gpu", "test")):
                    k += 1
                    lines.append(f"{k} {rel} {bs} {1.0 + k / 10:.3f} {fam} {plat} {stage}")
    (root / "gt.txt").write_text("# speed_id graph_path batch_size latency_ms model_type platform stage\n"
                                 + "\n".join(lines) + "\n")
    return root


@pytest.fixture()
def nnlqp(tmp_path):
    return _make_set(tmp_path / "nnlqp")


def test_read_items_and_collate(nnlqp):
    ds = LatencyDataset(nnlqp, workers=2, progress=False)
    assert len(ds) == 3 * 3 * 4
    x, e, s, y = ds[0]
    ref = load_onnx_graph(nnlqp / "onnx/resnet/resnet_0.onnx", 1)
    assert torch.equal(x, torch.from_numpy(ref.x)) and torch.equal(e, torch.from_numpy(ref.edge_index))
    assert torch.allclose(s, torch.from_numpy(ref.static)) and float(y) == pytest.approx(1.1)
    x2 = ds[2][0]  # the same network at batch size 2: batch dim embedded differently
    assert x2.shape == x.shape and not torch.equal(x2, x)
    xb, graph, sb, yb = collate_latency([ds[i] for i in (0, 5, 20)])
    assert xb.shape == (sum(int(ds.num_nodes[i]) for i in (0, 5, 20)), 192)
    assert graph.num_graphs == 3 and sb.shape == (3, 40) and yb.shape == (3,)
    from nnformer_fast.models.latency import NNFormerLatency

    assert NNFormerLatency(dim=16, n_head=4).eval()(xb, graph, sb).shape == (3, 1)
    # serial and parallel preprocessing agree
    serial = LatencyDataset(nnlqp, cache=False, workers=0, progress=False)
    for k in ("op_ids", "attrs", "shapes", "edges", "scalars"):
        assert np.array_equal(np.asarray(ds.store[k]), serial.store[k])


def test_filters(nnlqp):
    ds = LatencyDataset(nnlqp, families=["resnet", "alexnet"], platforms="cpu", progress=False)
    assert len(ds) == 2 * 3 * 2 and set(ds.families) == {"resnet", "alexnet"} and set(ds.platforms) == {"cpu"}
    ds = LatencyDataset(nnlqp, stages=["test"], progress=False)
    assert len(ds) == 18 and set(ds.records["stage"]) == {"test"}
    with pytest.raises(ValueError, match=r"unknown platform filter \['tpu'\].*present: \['cpu', 'gpu'\]"):
        LatencyDataset(nnlqp, platforms=["tpu"], progress=False)
    with pytest.raises(ValueError, match="unknown family filter"):
        LatencyDataset(nnlqp, families=["vgg"], progress=False)
    with pytest.raises(ValueError, match="unknown stage filter"):
        LatencyDataset(nnlqp, stages=["val"], progress=False)


def test_splits(nnlqp):
    ds = LatencyDataset(nnlqp, progress=False)
    train, test = ds.split_in_domain(test_fraction=0.34, seed=0)
    assert len(train) + len(test) == len(ds)
    assert set(train.families) == set(test.families) == set(FAMS)  # every family on both sides
    assert not set(train.records["graph"]) & set(test.records["graph"])  # no network leaks
    again = ds.split_in_domain(test_fraction=0.34, seed=0)[1]
    assert np.array_equal(again.records["speed_id"], test.records["speed_id"])
    other = ds.split_in_domain(test_fraction=0.34, seed=1)[1]
    assert not np.array_equal(other.records["speed_id"], test.records["speed_id"])
    tr, va, te = ds.split_in_domain(0.34, 0.34, seed=0)
    assert len(tr) + len(va) + len(te) == len(ds) and min(len(tr), len(va), len(te)) > 0
    tr, te = ds.split_out_of_domain(["squeezenet"])
    assert set(te.families) == {"squeezenet"} and "squeezenet" not in set(tr.families)
    assert len(tr) + len(te) == len(ds)
    with pytest.raises(ValueError, match="unknown test families"):
        ds.split_out_of_domain(["vgg"])
    with pytest.raises(ValueError, match="fractions"):
        ds.split_in_domain(1.2)


def test_cache_is_memory_mapped_and_rebuilt_on_change(nnlqp, monkeypatch):
    LatencyDataset(nnlqp, progress=False)
    cache = nnlqp / ".nnformer_cache" / "gt.txt.nnfc"
    assert cache.is_file()
    calls = []
    real_build = lat_mod._build_store
    monkeypatch.setattr(lat_mod, "_build_store", lambda *a, **k: calls.append(1) or real_build(*a, **k))
    ds = LatencyDataset(nnlqp, progress=False)
    assert calls == [] and isinstance(ds.store["attrs"], np.memmap)
    # an ONNX file changes (new content, new mtime) -> rebuilt
    onnx.save(strip_weights(generate("vgg", np.random.default_rng(0), tiny=True)), nnlqp / "onnx/resnet/resnet_0.onnx")
    st = os.stat(nnlqp / "onnx/resnet/resnet_0.onnx")
    os.utime(nnlqp / "onnx/resnet/resnet_0.onnx", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    ds = LatencyDataset(nnlqp, progress=False)
    assert calls == [1]
    assert ds[0][0].shape[0] == load_onnx_graph(nnlqp / "onnx/resnet/resnet_0.onnx").num_nodes
    # the text file changes -> rebuilt
    text = (nnlqp / "gt.txt").read_text().replace(" 1.100 ", " 1.200 ")
    (nnlqp / "gt.txt").write_text(text)
    ds = LatencyDataset(nnlqp, progress=False)
    assert calls == [1, 1] and float(ds[0][3]) == pytest.approx(1.2)
    LatencyDataset(nnlqp, progress=False)
    assert calls == [1, 1]


def test_cache_write_is_atomic(nnlqp, monkeypatch):
    cache = nnlqp / ".nnformer_cache" / "gt.txt.nnfc"
    good = LatencyDataset(nnlqp, progress=False)
    good_bytes = cache.read_bytes()
    (nnlqp / "gt.txt").write_text((nnlqp / "gt.txt").read_text() + "99 onnx/alexnet/alexnet_0.onnx 4 3.0 alexnet cpu train\n")

    def crash(*a, **k):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(lat_mod.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        LatencyDataset(nnlqp, progress=False)
    monkeypatch.undo()
    assert cache.read_bytes() == good_bytes  # the old cache is untouched ...
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]  # ... and no temp file is left
    ds = LatencyDataset(nnlqp, progress=False)  # stale key -> rebuilt
    assert len(ds) == len(good) + 1
    # a truncated / garbage cache (e.g. a disk-full copy) is ignored and rebuilt
    cache.write_bytes(cache.read_bytes()[:200])
    assert len(LatencyDataset(nnlqp, progress=False)) == len(ds)
    cache.write_bytes(b"junk")
    assert len(LatencyDataset(nnlqp, progress=False)) == len(ds)


def test_bad_inputs(tmp_path, nnlqp):
    with pytest.raises(FileNotFoundError, match="root not found"):
        LatencyDataset(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="latency text file"):
        LatencyDataset(empty)
    with pytest.raises(FileNotFoundError, match="latency file not found"):
        LatencyDataset(nnlqp, file="missing.txt")
    bad = nnlqp / "gt.txt"
    good = bad.read_text()
    for line, msg in (("1 a.onnx 1 2.0 resnet", "got 5 fields"), ("1 a.onnx one 2.0 resnet cpu", "must be an int"),
                      ("1 a.onnx 1 -2 resnet cpu", "positive finite latency"), ("1 a.onnx 1 nan resnet cpu", "positive")):
        bad.write_text(good + line + "\n")
        with pytest.raises(ValueError, match=rf"gt.txt:\d+: .*{msg}"):
            LatencyDataset(nnlqp, progress=False)
    bad.write_text(good + "77 onnx/none.onnx 1 2.0 resnet cpu\n")
    with pytest.raises(FileNotFoundError, match="ONNX file of 77 not found"):
        LatencyDataset(nnlqp, progress=False)
    bad.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no latency records"):
        parse_latency_file(bad)
    with pytest.raises(ValueError, match="empty batch"):
        collate_latency([])


def test_save_load_roundtrip(nnlqp, tmp_path):
    ds = LatencyDataset(nnlqp, families=["alexnet", "resnet"], progress=False)
    ds.save(tmp_path / "s.npz")
    back = LatencyDataset.load(tmp_path / "s.npz")
    assert len(back) == len(ds)
    for i in (0, 7, len(ds) - 1):
        for a, b in zip(ds[i], back[i]):
            assert torch.equal(a, b)
    assert len(LatencyDataset.load(tmp_path / "s.npz", families=["alexnet"])) == len(ds) // 2
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:  # plain arrays only
        assert all(z[k].dtype != object for k in z.files)
    with pytest.raises(FileNotFoundError):
        LatencyDataset.load(tmp_path / "none.npz")


def test_nb201_reader_on_small_files(tmp_path):
    archs = ["|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|",
             "|none~0|+|none~0|none~1|+|nor_conv_1x1~0|none~1|none~2|",
             "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|"]
    torch.save({a: i for i, a in enumerate(archs)}, tmp_path / "str_arch2idx.pt")
    torch.save([3.0, 1.0, float("nan")], tmp_path / "titanx_32.pt")
    ds = load_nb201_latency("titanx_32", tmp_path)
    assert len(ds) == 2 and list(ds.latencies) == [3.0, 1.0]
    x, e, s, y = ds[1]
    assert x.shape == (8, 192)  # every executed op stays, none included (tests/test_nb201_latency.py)
    assert x[:, :7].argmax(1).tolist() == [0, 5, 5, 5, 1, 5, 5, 6]
    assert ds.store["scalars"][0][0] == 32  # batch size from the device name
    assert ds.store["scalars"][0][1] > ds.store["scalars"][1][1]  # more convs, more FLOPs
    with pytest.raises(ValueError, match="unknown NAS-Bench-201 device"):
        load_nb201_latency("tpu_v9", tmp_path)
    with pytest.raises(FileNotFoundError, match="gold_6226.pt"):
        load_nb201_latency("gold_6226", tmp_path)


def test_default_set():
    from nnformer_fast.data import load_default_latency_set
    from nnformer_fast.data.default import DEFAULT_LATENCY_SET

    if not DEFAULT_LATENCY_SET.is_file():
        pytest.skip("default set not built yet")
    ds = load_default_latency_set()
    graphs = set(ds.records["graph"])
    assert len(graphs) >= 1000 and len(set(ds.families)) >= 8
    assert ds.num_nodes.min() <= 25 and ds.num_nodes.max() >= 500
    assert DEFAULT_LATENCY_SET.stat().st_size <= 15 * 2**20
    assert (ds.latencies > 0).all()
    x, e, s, y = ds[len(ds) - 1]
    assert x.shape[1] == 192 and s.shape == (40,) and (e[0] < e[1]).all()
