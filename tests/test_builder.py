"""The latency-set builder: every family runs in onnxruntime, the resumable writer, the CLI."""
import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from nnformer_fast.cli import main  # noqa: E402
from nnformer_fast.data.builder import (  # noqa: E402
    FAMILIES, build_latency_set, remeasure_noisy, generate, make_session, measure_session, strip_weights, with_random_weights)
from nnformer_fast.data.builder.build import LATENCY_FILE, SPREAD_FILE  # noqa: E402
from nnformer_fast.data.builder.families import model_flops  # noqa: E402
from nnformer_fast.data.onnx_features import describe_onnx  # noqa: E402


def test_at_least_ten_families():
    assert {"resnet", "vgg", "mobilenetv2", "mobilenetv3", "mnasnet", "efficientnet", "squeezenet", "googlenet",
            "alexnet", "nasbench201"} <= set(FAMILIES)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_runs_in_onnxruntime(family):
    model = generate(family, np.random.default_rng(1), tiny=True)
    onnx.checker.check_model(model)
    session = make_session(model, threads=1)
    m = measure_session(session, batch_size=2, warmup=1, repeats=2)
    assert 0 < m.min <= m.median <= m.max and m.repeats == 2
    out = session.run(None, {"input": np.zeros([2] + list(session.get_inputs()[0].shape[1:]), np.float32)})[0]
    assert out.shape[0] == 2 and np.isfinite(out).all()
    stripped = strip_weights(model)
    assert stripped.ByteSize() < model.ByteSize() or len(model.graph.initializer) == 0
    make_session(with_random_weights(stripped, np.random.default_rng(0)))  # stripped files stay measurable
    g = describe_onnx(stripped)
    assert g.num_nodes == len(model.graph.node) and (g.edge_index[0] < g.edge_index[1]).all()


@pytest.mark.parametrize("family", ["resnet", "vgg", "efficientnet"])
def test_randomised_and_capped(family):
    models = [generate(family, np.random.default_rng([7, i]), max_gflops=0.05) for i in range(3)]
    sizes = {len(m.graph.node) for m in models} | {m.graph.input[0].type.tensor_type.shape.dim[2].dim_value
                                                   for m in models}
    assert len(sizes) > 1  # widths/depths/resolutions vary
    assert all(model_flops(m) <= 0.05e9 for m in models)
    a = generate(family, np.random.default_rng([7, 0]), max_gflops=0.05)
    assert a.SerializeToString() == models[0].SerializeToString()  # deterministic per seed


def _lines(path):
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def test_build_resume_and_torn_line(tmp_path):
    out = tmp_path / "set"
    kw = dict(threads=1, repeats=2, warmup=0, tiny=True, progress=False, seed=3)
    build_latency_set(out, ["resnet", "alexnet"], 1, [1, 2], **kw)
    lines = _lines(out / LATENCY_FILE)
    assert len(lines) == 4 and all(len(p) == 6 for p in lines)
    assert {p[4] for p in lines} == {"resnet", "alexnet"} and {p[5] for p in lines} == {"cpu-ort-t1"}
    assert all((out / p[1]).is_file() for p in lines)
    spread = (out / SPREAD_FILE).read_text().splitlines()
    assert spread[0].startswith("speed_id\tmedian_ms") and len(spread) == 5
    info = json.loads((out / "build.json").read_text())
    assert info["threads"] == 1 and info["repeats"] == 2 and info["cpu"]
    # a crash mid-write leaves a torn last line: the rerun drops it and measures the rest
    text = (out / LATENCY_FILE).read_text().splitlines(keepends=True)
    (out / LATENCY_FILE).write_text("".join(text[:3]) + text[3][:10])
    before = {p[0]: p[3] for p in _lines(out / LATENCY_FILE)[:3]}
    build_latency_set(out, ["resnet", "alexnet"], 2, [1, 2], **kw)
    lines = _lines(out / LATENCY_FILE)
    ids = [p[0] for p in lines]
    assert len(ids) == 8 and len(set(ids)) == 8
    assert all({p[0]: p[3] for p in lines}[k] == v for k, v in before.items())  # kept, not re-measured
    with pytest.raises(ValueError, match="differ"):
        build_latency_set(out, ["resnet"], 1, [1], **dict(kw, repeats=5))


def test_remeasure_noisy(tmp_path):
    out = tmp_path / "set"
    build_latency_set(out, ["vgg"], 2, [1], threads=1, repeats=3, warmup=0, tiny=True, progress=False)
    spread = (out / SPREAD_FILE).read_text().splitlines(keepends=True)
    f = spread[1].split("\t")
    f[4] = "1000.0"  # a wild p75: this record looks noisy
    spread[1] = "\t".join(f)
    (out / SPREAD_FILE).write_text("".join(spread))
    before = _lines(out / LATENCY_FILE)
    assert remeasure_noisy(out, 100.0, repeats=3, progress=False) == 1
    after = _lines(out / LATENCY_FILE)
    assert [p[0] for p in after] == [p[0] for p in before] and after[1] == before[1]
    assert float((out / SPREAD_FILE).read_text().splitlines()[1].split("\t")[4]) < 1000
    assert not list(out.glob("*.tmp*"))
    with pytest.raises(FileNotFoundError, match="build.json"):
        remeasure_noisy(tmp_path)


def test_build_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown families"):
        build_latency_set(tmp_path, ["resnet", "transformer"], 1)
    with pytest.raises(ValueError, match="count"):
        build_latency_set(tmp_path, ["resnet"], 0)
    with pytest.raises(ValueError, match="batch sizes"):
        build_latency_set(tmp_path, ["resnet"], 1, [0])
    with pytest.raises(ValueError, match="whitespace"):
        build_latency_set(tmp_path, ["resnet"], 1, platform="my cpu")


def test_cli(tmp_path, capsys):
    rc = main(["build-latency-set", str(tmp_path / "o"), "--families", "squeezenet,nasbench201", "--count", "1",
               "--batch-sizes", "1", "--repeats", "2", "--warmup", "0", "--tiny", "--quiet",
               "--pack", str(tmp_path / "o.npz")])
    assert rc == 0 and len(_lines(tmp_path / "o" / LATENCY_FILE)) == 2
    from nnformer_fast.data import LatencyDataset

    packed = LatencyDataset.load(tmp_path / "o.npz")
    assert len(packed) == 2 and set(packed.families) == {"squeezenet", "nasbench201"}
    assert (packed.records["p25_ms"] <= packed.records["p75_ms"]).all()
    assert main(["build-latency-set", str(tmp_path / "p"), "--families", "nope", "--quiet"]) == 2
    assert "unknown families" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["build-latency-set", str(tmp_path / "p"), "--batch-sizes", "a,b"])
    assert main([]) == 2


def test_repeated_batch_sizes_and_families_measure_once(tmp_path):
    kw = dict(threads=1, repeats=2, warmup=0, tiny=True, progress=False)
    build_latency_set(tmp_path / "a", ["resnet"], 1, [1, 1], **kw)
    build_latency_set(tmp_path / "b", ["resnet", "resnet"], 1, [1], **kw)
    for d in ("a", "b"):
        assert [p[0] for p in _lines(tmp_path / d / LATENCY_FILE)] == ["resnet_00000_bs1"]
        assert len((tmp_path / d / SPREAD_FILE).read_text().splitlines()) == 2


def test_bad_arguments_write_nothing(tmp_path):
    from nnformer_fast.data.builder import MAX_COUNT

    with pytest.raises(ValueError, match="seed"):
        build_latency_set(tmp_path / "s", ["resnet"], 1, seed=-1, progress=False)
    with pytest.raises(ValueError, match="count"):
        build_latency_set(tmp_path / "s", ["resnet"], MAX_COUNT + 1, progress=False)
    assert not (tmp_path / "s").exists()  # no build.json that would refuse the corrected command


def test_corrupt_manifest_is_named(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "build.json").write_text("{bad")
    with pytest.raises(ValueError, match="build.json"):
        build_latency_set(out, ["resnet"], 1, tiny=True, progress=False)
    with pytest.raises(ValueError, match="build.json"):
        remeasure_noisy(out, progress=False)
    assert main(["build-latency-set", str(out), "--tiny", "--families", "resnet", "--count", "1", "--quiet"]) == 2
    assert str(out / "build.json") in capsys.readouterr().err


def test_remeasure_refuses_zero_repeats(tmp_path):
    with pytest.raises(ValueError, match="repeats"):
        remeasure_noisy(tmp_path, repeats=0, progress=False)
