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


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch):
    """Builds here see an idle machine (no busy-machine warning from a loaded test runner)."""
    from nnformer_fast.data.builder import build as build_mod

    monkeypatch.setattr(build_mod, "_load_average", lambda: 0.0)


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


class _FakeSession:
    """Stands in for an onnxruntime session: logs each run under its name; sleeps ``sleep_s``."""

    def __init__(self, name, log, sleep_s=0.0):
        self.name, self.log, self.sleep_s = name, log, sleep_s

    def get_inputs(self):
        class Input:
            name, shape = "input", ["batch", 3, 4, 4]
        return [Input()]

    def run(self, _, feeds):
        import time

        assert feeds["input"].shape[1:] == (3, 4, 4)
        self.log.append((self.name, feeds["input"].shape[0]))
        if self.sleep_s:
            time.sleep(self.sleep_s)


def test_measure_group_interleaves_rounds():
    from nnformer_fast.data.builder import Protocol, measure_group

    log = []
    jobs = [(_FakeSession("a", log), 1, np.random.default_rng(0)), (_FakeSession("b", log), 4, np.random.default_rng(0))]
    ms = measure_group(jobs, Protocol(warmup=1, repeats=2, rounds=3))
    one_round = [("a", 1)] * 3 + [("b", 4)] * 3  # each job's warm-up run, then its timed runs
    assert log == one_round * 3
    assert [m.repeats for m in ms] == [6, 6]


def test_cpu_clock_leaves_out_time_off_the_cpu():
    """A run that waits (here: sleeps) 50 ms takes 50 ms of wall time and almost no CPU time."""
    from nnformer_fast.data.builder import Protocol, measure_group

    job = [(_FakeSession("a", [], sleep_s=0.05), 1, np.random.default_rng(0))]
    wall, = measure_group(job, Protocol(clock="wall", warmup=0, repeats=2))
    cpu, = measure_group(job, Protocol(clock="cpu", warmup=0, repeats=2))
    assert wall.min >= 50.0 and cpu.max < 25.0
    assert Protocol(statistic="min").latency(wall) == wall.min and Protocol().latency(wall) == wall.median


@pytest.mark.parametrize("bad, match", [(dict(clock="tsc"), "clock"), (dict(statistic="mean"), "statistic"),
                                        (dict(rounds=0), "rounds"), (dict(repeats=0), "repeats")])
def test_protocol_rejects_bad_settings(bad, match):
    from nnformer_fast.data.builder import Protocol

    with pytest.raises(ValueError, match=match):
        Protocol(**bad)


def test_protocol_is_kept_and_checked_on_resume(tmp_path):
    from nnformer_fast.data.builder import Protocol

    out = tmp_path / "set"
    kw = dict(threads=1, repeats=2, warmup=0, tiny=True, progress=False)
    build_latency_set(out, ["alexnet"], 1, [1, 2], clock="cpu", statistic="min", rounds=2, **kw)
    info = json.loads((out / "build.json").read_text())
    assert {k: info[k] for k in ("clock", "statistic", "rounds")} == {"clock": "cpu", "statistic": "min", "rounds": 2}
    spread = {ln.split("\t")[0]: ln.split("\t") for ln in (out / SPREAD_FILE).read_text().splitlines()[1:]}
    for p in _lines(out / LATENCY_FILE):  # the latency column is the min of the 2 x 2 timed runs
        assert p[3] == spread[p[0]][2] and spread[p[0]][7] == "4"
    with pytest.raises(ValueError, match="clock"):
        build_latency_set(out, ["alexnet"], 2, [1, 2], **kw)
    # a manifest written before the protocol options: resumed under the defaults, nothing else
    for k in ("clock", "statistic", "rounds"):
        del info[k]
    (out / "build.json").write_text(json.dumps(info))
    build_latency_set(out, ["alexnet"], 2, [1, 2], **kw)
    assert json.loads((out / "build.json").read_text())["clock"] == Protocol().clock
    (out / "build.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="differ"):
        build_latency_set(out, ["alexnet"], 2, [1, 2], clock="cpu", **kw)


def test_retest_compares_a_seeded_sample_with_the_stored_latencies(tmp_path):
    from nnformer_fast.data.builder import retest

    out = tmp_path / "set"
    build_latency_set(out, ["vgg", "squeezenet"], 3, [1, 2], threads=1, repeats=2, warmup=1, tiny=True,
                      progress=False, clock="cpu", statistic="min")
    lines = (out / LATENCY_FILE).read_text().splitlines()
    # every stored latency 1000x too large: each re-measured one is off by 0.999 of the stored value
    (out / LATENCY_FILE).write_text("".join(
        " ".join(p[:3] + [f"{1000 * float(p[3]):.5f}"] + p[4:]) + "\n" for p in map(str.split, lines)))
    before = {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()}
    r = retest(out, 0.5, seed=1, progress=False)
    assert r["records"] == 6 and r["protocol"]["clock"] == "cpu" and r["protocol"]["statistic"] == "min"
    assert 0.99 < r["median"] <= r["p90"] <= r["max"] < 1.0
    assert {f.name: f.read_bytes() for f in out.iterdir() if f.is_file()} == before  # changes nothing
    with pytest.raises(ValueError, match="fraction"):
        retest(out, 0.0, progress=False)
    with pytest.raises(FileNotFoundError, match="build.json"):
        retest(tmp_path, 0.5, progress=False)


def test_cli_protocol_and_retest(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["build-latency-set", str(out), "--families", "alexnet", "--count", "2", "--batch-sizes", "1",
                 "--repeats", "2", "--warmup", "0", "--rounds", "2", "--clock", "cpu", "--statistic", "min",
                 "--tiny", "--quiet", "--retest", "1"]) == 0
    text = capsys.readouterr().out
    assert "retest of 2 records: |new - stored| / stored median" in text
    assert json.loads((out / "build.json").read_text())["rounds"] == 2
    with pytest.raises(SystemExit):
        main(["build-latency-set", str(out), "--clock", "tsc"])


def test_protocol_combines_passes_by_their_median():
    from nnformer_fast.data.builder import Measurement, Protocol

    def m(v):
        return Measurement(median=v + 1, min=v, p25=v, p75=v + 2, max=v + 3, std=0.5, repeats=4)

    passes = [m(5.0), m(1.0), m(3.0), m(100.0)]
    assert Protocol(statistic="min", passes=4).combine(passes) == (1.0, passes[1])  # the fastest run of all
    value, kept = Protocol(passes=4).combine(passes)
    assert value == 5.0 and kept.median in (4.0, 6.0)  # median of the medians 6, 2, 4, 101; the nearest pass
    assert Protocol(passes=3).combine(passes[:3]) == (4.0, passes[2])
    with pytest.raises(ValueError, match="passes"):
        Protocol(passes=0)


def _passes(out):
    from nnformer_fast.data.builder import PASSES_FILE

    rows = [ln.split("\t") for ln in (out / PASSES_FILE).read_text().splitlines()]
    assert rows[0][:3] == ["speed_id", "pass", "median_ms"]
    return rows[1:]


def test_build_in_passes_stores_the_median_and_resumes_mid_pass(tmp_path):
    from nnformer_fast.data.builder import PASSES_FILE

    out = tmp_path / "set"
    kw = dict(threads=1, repeats=2, warmup=0, tiny=True, progress=False, clock="cpu", statistic="median", passes=3)
    build_latency_set(out, ["alexnet", "vgg"], 2, [1, 2], **kw)
    rows = _passes(out)
    by_sid = {}
    for r in rows:
        by_sid.setdefault(r[0], []).append(r)
    assert len(by_sid) == 8 and all([r[1] for r in rs] == ["0", "1", "2"] for rs in by_sid.values())
    spread = {ln.split("\t")[0]: ln.split("\t") for ln in (out / SPREAD_FILE).read_text().splitlines()[1:]}
    for p in _lines(out / LATENCY_FILE):  # the median over the passes of each pass's median
        medians = sorted(float(r[2]) for r in by_sid[p[0]])
        assert float(p[3]) == pytest.approx(medians[1], abs=1e-5)
        # the kept pass's statistics: a pass with that median (two can print the same median)
        assert spread[p[0]][1:] in [r[2:] for r in by_sid[p[0]] if float(r[2]) == medians[1]]
    # interrupted in pass 1 (its last two measurements lost) and before any record was complete
    text = (out / PASSES_FILE).read_text().splitlines(keepends=True)
    keep = [ln for ln in text if "\t2\t" not in ln][:-2]
    (out / PASSES_FILE).write_text("".join(keep) + "alexnet_0")  # and a torn line
    (out / LATENCY_FILE).write_text("")
    (out / SPREAD_FILE).write_text(text[0].replace("pass\t", ""))
    build_latency_set(out, ["alexnet", "vgg"], 2, [1, 2], **kw)
    new_rows = _passes(out)
    assert new_rows[:len(keep) - 1] == [ln.rstrip("\n").split("\t") for ln in keep[1:]]  # kept, not re-measured
    assert len(new_rows) == 24 and len(_lines(out / LATENCY_FILE)) == 8
    # every pass measured, crashed before the records were written: written without measuring again
    (out / LATENCY_FILE).write_text("")
    build_latency_set(out, ["alexnet", "vgg"], 2, [1, 2], **kw)
    assert _passes(out) == new_rows and len(_lines(out / LATENCY_FILE)) == 8


def test_retest_and_remeasure_of_a_build_in_passes(tmp_path, monkeypatch):
    from nnformer_fast.data.builder import build as build_mod
    from nnformer_fast.data.builder import retest

    out = tmp_path / "set"
    build_latency_set(out, ["squeezenet"], 2, [1], threads=1, repeats=2, warmup=0, tiny=True, progress=False,
                      passes=2)
    calls = []
    real = build_mod._measure_networks
    monkeypatch.setattr(build_mod, "_measure_networks", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    assert retest(out, 1.0, progress=False)["records"] == 2
    assert len(calls) == 2 and calls[0] == calls[1]  # each pass measures the sample again
    with pytest.raises(ValueError, match="2 passes"):
        remeasure_noisy(out, progress=False)


def test_a_busy_machine_is_named_in_a_warning(tmp_path, monkeypatch):
    """Other work inflates even CPU-time latencies: a build or retest measured while the load
    average exceeds 0.75 per CPU says so, an idle one does not."""
    import os
    import warnings

    from nnformer_fast.data.builder import build as build_mod
    from nnformer_fast.data.builder import retest

    kw = dict(threads=1, repeats=1, warmup=0, tiny=True, progress=False)
    monkeypatch.setattr(build_mod, "_load_average", lambda: 0.7 * (os.cpu_count() or 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_latency_set(tmp_path / "idle", ["alexnet"], 1, [1], **kw)
    monkeypatch.setattr(build_mod, "_load_average", lambda: 0.8 * (os.cpu_count() or 1))
    with pytest.warns(UserWarning, match="busy: the load average reached .* on .* CPU.* while measuring"):
        build_latency_set(tmp_path / "busy", ["alexnet"], 1, [1], **kw)
    with pytest.warns(UserWarning, match="retest: the load average reached"):
        retest(tmp_path / "busy", 1.0, progress=False)
