"""Short real trainings on tiny data: loss decreases, exact resume, Ctrl-C, NaN, bad inputs,
the accuracy consistency loss, ``compile``."""
import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nnformer_fast.train import CheckpointError, TrainConfig, fit
from nnformer_fast.train import tasks as T
from nnformer_fast.train.synthetic import synthetic_cells, synthetic_latency_set

TINY = dict(dim=32, n_layers=1, dropout=0.1)


@pytest.fixture(scope="module")
def lat():
    ds = synthetic_latency_set(96, seed=0)
    return ds.split_in_domain(test_fraction=0.25, seed=0)


def _cfg(**kw):
    base = dict(model=TINY, epochs=3, max_nodes=300, lr=3e-3, warmup=2, progress=False, precision="fp32",
                threads=1, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_latency_loss_decreases_bf16(lat):
    train, test = lat
    r = fit(_cfg(epochs=12, precision="bf16", ema=0.9), train_set=train, test_set=test)
    q = len(r.losses) // 4
    assert np.mean(r.losses[-q:]) < 0.8 * np.mean(r.losses[:q]), r.losses
    assert {"mape", "acc@1", "acc@5", "acc@10", "tau"} <= set(r.metrics)
    assert r.throughput["graphs_per_s"] > 0 and r.step == len(r.losses)
    assert r.throughput["warm_graphs_per_s"] > 0  # epochs 2..12
    one = fit(_cfg(epochs=1), train_set=train, test_set=None)
    assert one.throughput["warm_graphs_per_s"] is None  # only the first epoch ran


@pytest.mark.parametrize("consistency, dropout", [(False, 0.0), (True, 0.1)])
def test_accuracy_loss_decreases(consistency, dropout):
    cells = synthetic_cells(80, seed=0)
    train, test = T.split_dataset("accuracy", cells, test_fraction=0.25, seed=0)
    r = fit(_cfg(task="accuracy", model=dict(depth=1, dim=32, dropout=dropout), epochs=8, max_nodes=160, lr=3e-3,
                 consistency=consistency), train_set=train, test_set=test)
    assert np.mean(r.losses[-3:]) < 0.5 * np.mean(r.losses[:3])
    assert "tau" in r.metrics and "mape" not in r.metrics


def test_accuracy_consistency_loss_value():
    """SPEC §6 with consistency, written out by hand on the doubled batch: MSE and rank loss
    over all 2B predictions, plus λ_c · l1 between the cells and their twins."""
    task = T.AccuracyTask(depth=1, dim=32, dropout=0.2, lambda_mse=0.7, lambda_rank=0.3, lambda_consistency=0.5)
    torch.manual_seed(0)
    model = task.build_model().train()
    batch = task.builder(synthetic_cells(12, seed=1))[[0, 3, 5, 7, 8, 11]]
    torch.manual_seed(1)
    loss, p = task.loss(model, batch, consistency=True, generator=torch.Generator().manual_seed(2))

    torch.manual_seed(1)
    q = model({k: torch.cat([v, v]) for k, v in batch.inputs[0].items()}).double().reshape(-1)
    y = batch.target.double().repeat(2)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(2))
    want = (0.7 * (q - y).square().mean() + 0.3 * ((q - q[perm]) - (y - y[perm])).abs().mean()
            + 0.5 * (q[:6] - q[6:]).abs().mean())
    assert (q[:6] - q[6:]).abs().min() > 0  # dropout differs between a cell and its twin
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    torch.testing.assert_close(p, q[:6].float())


def test_vectorized_batch_matches_collate(lat):
    from nnformer_fast.data.latency import collate_latency

    train, _ = lat
    idx = [5, 0, 17, 3]
    b = T.LatencyBatchBuilder(train)[idx]
    x, g, s, y = collate_latency([train[i] for i in idx])
    torch.testing.assert_close(b.inputs[0], x)
    torch.testing.assert_close(b.inputs[2], s)
    assert torch.equal(b.inputs[1].edge_index, g.edge_index) and torch.equal(b.inputs[1].ptr, g.ptr)
    torch.testing.assert_close(b.target, y)


NONE_ARCHS = ["|nor_conv_3x3~0|+|none~0|avg_pool_3x3~1|+|skip_connect~0|none~1|nor_conv_1x1~2|",
              "|none~0|+|none~0|none~1|+|none~0|none~1|none~2|",
              "|nor_conv_1x1~0|+|none~0|none~1|+|skip_connect~0|none~1|avg_pool_3x3~2|",
              "|avg_pool_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|nor_conv_3x3~0|skip_connect~1|avg_pool_3x3~2|"]


def test_cell_batch_code_depth_follows_cell_depth():
    """code_depth is the one-hot of each cell's depth, not of its node count: the authors'
    NAS-Bench-201 cells have 8 nodes and depth = their non-none nodes."""
    from nnformer_fast.data.cells import nb201_cell, tokenize

    cells = T.CellArrays([nb201_cell(a, 0.5, prune=False) for a in NONE_ARCHS] + [nb201_cell(NONE_ARCHS[0], 0.5)])
    np.testing.assert_array_equal(cells.depths, [6, 2, 5, 8, 6])
    np.testing.assert_array_equal(cells.num_nodes, [8, 8, 8, 8, 6])
    idx = [4, 1, 0, 3, 2]
    batch = T.CellBatchBuilder(cells)[idx]
    depth = batch.inputs[0]["code_depth"]
    assert depth.shape == (5, 1, 32) and torch.equal(depth.sum(-1), torch.ones(5, 1))
    assert depth[:, 0].argmax(-1).tolist() == [6, 2, 6, 8, 5]
    for row, i in enumerate(idx):
        assert torch.equal(depth[row], tokenize(cells.cells[i])["code_depth"])


def test_fingerprint_hashes_depths_that_differ_from_the_node_counts():
    import hashlib

    from nnformer_fast.data.cells import nb201_cell

    task = T.AccuracyTask(depth=1)
    pruned = T.CellArrays([nb201_cell(a, 0.1 * i) for i, a in enumerate(NONE_ARCHS)])
    ref = T.CellArrays([nb201_cell(a, 0.1 * i, prune=False) for i, a in enumerate(NONE_ARCHS)])
    same_sizes = T.CellArrays([nb201_cell(NONE_ARCHS[3], 0.3, prune=False)] * 2)
    other_depth = T.CellArrays([same_sizes.cells[0], dataclasses.replace(same_sizes.cells[0], depth=7)])
    # depth = L everywhere: the fingerprint of node counts and targets alone, as before depths existed
    h = hashlib.sha256(pruned.num_nodes.tobytes() + pruned.targets.astype(np.float64).tobytes())
    assert T.dataset_fingerprint(task, pruned) == h.hexdigest()[:16]
    assert T.dataset_fingerprint(task, ref) != T.dataset_fingerprint(task, pruned)
    assert T.dataset_fingerprint(task, other_depth) != T.dataset_fingerprint(task, same_sizes)


def test_time_limit_stops_with_a_checkpoint(lat, tmp_path):
    train, _ = lat
    r = fit(_cfg(max_seconds=0.0, out=str(tmp_path / "run")), train_set=train, test_set=None)
    assert r.step == 1 and Path(r.checkpoint).is_file()  # the limit is checked after each step


def test_resume_is_bit_exact(lat, tmp_path):
    train, test = lat
    full = fit(_cfg(epochs=3), train_set=train, test_set=None)
    n = len(full.losses)
    k = n // 2 + 1  # mid-epoch
    out = tmp_path / "run"
    first = fit(_cfg(epochs=3, out=str(out), max_steps=k), train_set=train, test_set=None)
    assert first.step == k and Path(first.checkpoint).is_file()
    second = fit(_cfg(epochs=3, out=str(out), resume="auto"), train_set=train, test_set=None)
    assert second.losses == full.losses  # bit for bit, including dropout and sampler position
    for a, b in zip(full.model.state_dict().values(), second.model.state_dict().values()):
        assert torch.equal(a, b)


def test_max_steps_is_checked_before_a_step(lat, tmp_path):
    """max_steps counts all steps of the run: 0 takes none, and a run resumed at N with
    max_steps=N takes none (it used to take one more on every rerun)."""
    train, _ = lat
    out = str(tmp_path / "run")
    zero = fit(_cfg(max_steps=0), train_set=train, test_set=None)
    assert zero.step == 0 and zero.losses == [] and zero.throughput["steps"] == 0
    first = fit(_cfg(out=out, max_steps=2), train_set=train, test_set=None)
    assert first.step == 2 and len(first.losses) == 2
    again = fit(_cfg(out=out, max_steps=2, resume="auto"), train_set=train, test_set=None)
    assert again.step == 2 and again.throughput["steps"] == 0 and again.losses == first.losses
    more = fit(_cfg(out=out, max_steps=3, resume="auto"), train_set=train, test_set=None)
    assert more.step == 3 and more.throughput["steps"] == 1


CHANGED = [dict(max_graphs=4), dict(ema=0.5), dict(warmup=3), dict(min_lr_ratio=0.1), dict(precision="bf16"),
           dict(grad_clip=0.5), dict(grad_clip=None), dict(weight_decay=0.0), dict(consistency=True), dict(lr=1e-3),
           dict(max_nodes=299), dict(epochs=4), dict(seed=1)]


@pytest.mark.parametrize("change", CHANGED, ids=[f"{k}={v}" for c in CHANGED for k, v in c.items()])
def test_resume_refuses_changed_run_settings(lat, tmp_path, change):
    train, _ = lat
    out = str(tmp_path / "run")
    base = fit(_cfg(out=out, max_steps=1), train_set=train, test_set=None)
    (key, value), = change.items()
    saved = getattr(_cfg(), key)
    with pytest.raises(CheckpointError, match=rf"saved with {key}={saved!r}, this run has {key}={value!r}"):
        fit(_cfg(out=out, resume="auto", **change), train_set=train, test_set=None)
    assert base.step == 1


def test_resume_refuses_changed_loss_weights(tmp_path):
    cells = synthetic_cells(30, seed=0)
    model = dict(depth=1, dim=32)
    out = str(tmp_path / "run")
    fit(_cfg(task="accuracy", model=model, max_nodes=100, out=out, max_steps=1), train_set=cells, test_set=None)
    with pytest.raises(CheckpointError, match="saved with lambda_rank=.*, this run has lambda_rank=0.5"):
        fit(_cfg(task="accuracy", model=dict(model, lambda_rank=0.5), max_nodes=100, out=out, resume="auto"),
            train_set=cells, test_set=None)


def test_resume_of_an_older_checkpoint(lat, tmp_path):
    """Checkpoints written before the run settings were all saved: their "train_config" still
    refuses a changed setting; one without it resumes (with the settings it does hold)."""
    train, _ = lat
    out = tmp_path / "run"
    fit(_cfg(out=str(out), max_steps=1, max_graphs=8), train_set=train, test_set=None)
    state = torch.load(out / "last.pt", weights_only=True)
    state["run"] = {k: state["run"][k] for k in ("max_nodes", "epochs", "seed", "world_size")}
    del state["sampler"]["max_graphs"]
    torch.save(state, out / "last.pt")
    with pytest.raises(CheckpointError, match="max_graphs=8, this run has max_graphs=None"):
        fit(_cfg(out=str(out), resume="auto"), train_set=train, test_set=None)
    assert fit(_cfg(out=str(out), resume="auto", max_graphs=8, max_steps=2), train_set=train,
               test_set=None).step == 2
    del state["train_config"]
    torch.save(state, out / "last.pt")
    assert fit(_cfg(out=str(out), resume="auto", max_graphs=8, max_steps=2), train_set=train,
               test_set=None).step == 2


def test_resume_with_ema(lat, tmp_path):
    """The EMA is built after the resumed weights load: its saved state continues exactly, and
    without a saved state it starts from the trained weights (not the random initial ones)."""
    train, _ = lat
    full = fit(_cfg(epochs=2, ema=0.9), train_set=train, test_set=None)
    out = tmp_path / "run"
    k = len(full.losses) // 2 + 1
    fit(_cfg(epochs=2, ema=0.9, out=str(out), max_steps=k), train_set=train, test_set=None)
    state = torch.load(out / "last.pt", weights_only=True)
    at_k = fit(_cfg(epochs=2, ema=0.9, out=str(out), resume="auto", max_steps=k), train_set=train, test_set=None)
    for name, v in at_k.model.state_dict().items():  # no step taken: the result is the saved EMA
        assert torch.equal(v, state["ema"][name])
    resumed = fit(_cfg(epochs=2, ema=0.9, out=str(out), resume="auto"), train_set=train, test_set=None)
    assert resumed.losses == full.losses
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    state["ema"] = None  # a checkpoint without the EMA's state
    torch.save(state, out / "last.pt")
    fresh = fit(_cfg(epochs=2, ema=0.9, out=str(out), resume="auto", max_steps=k), train_set=train, test_set=None)
    for name, v in fresh.model.state_dict().items():
        assert torch.equal(v, state["model"][name])


def test_ctrl_c_writes_checkpoint_and_resumes(lat, tmp_path, monkeypatch):
    train, _ = lat
    full = fit(_cfg(epochs=2), train_set=train, test_set=None)
    real = T.LatencyBatchBuilder.__getitem__
    calls = {"n": 0}

    def interrupting(self, idx):
        calls["n"] += 1
        if calls["n"] == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, idx)

    monkeypatch.setattr(T.LatencyBatchBuilder, "__getitem__", interrupting)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(epochs=2, out=str(out)), train_set=train, test_set=None)
    monkeypatch.setattr(T.LatencyBatchBuilder, "__getitem__", real)
    assert (out / "last.pt").is_file()
    resumed = fit(_cfg(epochs=2, out=str(out), resume=str(out / "last.pt")), train_set=train, test_set=None)
    assert resumed.losses == full.losses


def test_nan_loss_names_step_and_batch(lat, monkeypatch):
    train, _ = lat
    real = T.LatencyTask.forward
    calls = {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        p = real(model, batch)
        return p * float("nan") if calls["n"] == 3 else p

    monkeypatch.setattr(T.LatencyTask, "forward", staticmethod(poisoned))
    with pytest.raises(FloatingPointError, match=r"step 3 \(epoch 1, batch 3 of \d+;.*dataset items \["):
        fit(_cfg(), train_set=train, test_set=None)


def test_bad_inputs(lat, tmp_path):
    train, test = lat
    with pytest.raises(FileNotFoundError):
        fit(_cfg(data=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="empty"):
        fit(_cfg(), train_set=train.subset([]), test_set=None)
    bad = train.subset(np.arange(len(train)))
    bad.records = dict(bad.records, latency=bad.records["latency"].copy())
    bad.records["latency"][2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit(_cfg(), train_set=bad, test_set=None)
    bad.records["latency"][2] = 0.0
    with pytest.raises(ValueError, match="positive"):
        fit(_cfg(), train_set=bad, test_set=None)
    with pytest.raises(ValueError, match="fp16 training needs a GPU"):
        fit(_cfg(precision="fp16", device="cpu"), train_set=train, test_set=None)
    with pytest.raises(ValueError, match="compile: only the latency task"):
        fit(_cfg(task="accuracy", model=dict(depth=1), compile=True))
    # a checkpoint of another model configuration is refused on resume
    out = tmp_path / "run"
    fit(_cfg(out=str(out), max_steps=1), train_set=train, test_set=None)
    with pytest.raises(CheckpointError, match="dim"):
        fit(_cfg(model=dict(TINY, dim=64), out=str(out), resume="auto"), train_set=train, test_set=None)
    with pytest.raises(CheckpointError, match="another training set"):
        fit(_cfg(out=str(out), resume="auto"), train_set=test, test_set=None)


def test_cli_train_evaluate_predict(tmp_path, capsys):
    from nnformer_fast.cli import main

    synthetic_latency_set(40, seed=1).save(tmp_path / "set.npz")
    out = tmp_path / "run"
    rc = main(["train", "--data", str(tmp_path / "set.npz"), "--model", "dim=32,n_layers=1", "--epochs", "1",
               "--max-nodes", "400", "--out", str(out), "--quiet", "--precision", "fp32", "--threads", "1"])
    assert rc == 0 and (out / "last.pt").is_file()
    assert "held-out:" in capsys.readouterr().out
    assert main(["evaluate", str(out / "last.pt"), "--json"]) == 0
    assert '"mape"' in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "missing.pt")]) == 2
    onnx = Path(os.environ.get("NNFORMER_FAST_DATA", "/work/shared/data")) / "nnlqp_resnet18_noweight.onnx"
    if onnx.is_file():
        assert main(["predict", str(out / "last.pt"), str(onnx)]) == 0
        line = capsys.readouterr().out.strip()
        assert line.endswith(" ms") and float(line.split("\t")[1].split()[0]) > 0


@pytest.mark.skipif(not torch._dynamo.is_dynamo_supported(), reason="torch.compile does not run here")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compile_matches_eager(lat, monkeypatch, precision):
    """``compile=True`` trains like eager, with dropout on, in one graph for every batch shape
    (in bf16 on the CPU: padded to shape buckets before the compiled call, as eager pads
    inside the model). The aot_eager backend traces and partitions like inductor but skips its
    C++ code generation (minutes on 2 cores) and draws dropout seeds from torch's generator, so
    eager's masks are reproduced; inductor draws them from its own RNG."""
    from torch._dynamo.utils import counters

    train, _ = lat
    eager = fit(_cfg(epochs=2, precision=precision), train_set=train, test_set=None)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    counters.clear()
    compiled = fit(_cfg(epochs=2, compile=True, precision=precision), train_set=train, test_set=None)
    assert len(compiled.losses) == len(eager.losses) >= 8
    np.testing.assert_allclose(compiled.losses, eager.losses, rtol=1e-4)
    for a, b in zip(eager.model.state_dict().values(), compiled.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)
    assert not counters["graph_break"]
    # one graph, plus at most one for batches of a single graph (sizes 0 and 1 are specialised)
    assert 1 <= counters["stats"]["unique_graphs"] <= 2, dict(counters["stats"])


def test_splits_share_one_node_feature_table():
    data = synthetic_latency_set(40)
    train, test = data.split_in_domain(test_fraction=0.25, seed=0)
    table = train.node_feature_table()
    assert test.node_feature_table() is table and data.node_feature_table() is table
    batch = T.LatencyBatchBuilder(test)[[0, 1]]
    x = batch.inputs[0].numpy()
    nodes = np.concatenate([np.arange(*data.store["node_ptr"][e:e + 2]) for e in test.records["entry"][:2]])
    np.testing.assert_array_equal(x, table[nodes])


def test_demo_runs_end_to_end_on_a_small_set(tmp_path, capsys):
    from nnformer_fast import demo

    path = tmp_path / "lat.npz"
    synthetic_latency_set(48).save(path)
    threads = torch.get_num_threads()
    try:
        assert demo.main(["--data", str(path), "--epochs", "1", "--out", str(tmp_path / "out"),
                          "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    rounds = report["side_by_side_graphs_per_s"]
    assert report["epochs"] == 1 and report["steps"] > 0 and report["compiled"] and len(rounds) == demo.ROUNDS
    for loop in ("eager", "compiled"):
        ratios = sorted(r[loop] / r["reference"] for r in rounds)
        assert report["speedup"][loop] == pytest.approx(ratios[len(ratios) // 2])
    assert "speedup (median of the rounds)" in capsys.readouterr().out


def test_demo_sees_a_core_kept_busy_by_another_process():
    from nnformer_fast._cli_args import busy_cores

    idle = busy_cores(0.3)
    if idle is None:
        pytest.skip("/proc/stat does not describe this machine's CPUs")
    assert 0.0 <= idle <= os.cpu_count()
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # let it start spinning
        assert busy_cores(0.5) > 0.5
    finally:
        spinner.kill()
        spinner.wait()


def test_baseline_loops_agree_and_time_only_after_the_warm_up(lat):
    """The reference loop (dense formulation) and the packed model on one-graph batches are the
    same math: from the same weights (same seed) their losses agree step by step in fp32. The
    timed graphs are those after the warm-up step."""
    from nnformer_fast.train.baseline import baseline_fit

    train, _ = lat
    runs = {impl: baseline_fit(train, model_config=dict(TINY, dropout=0.0), batch_size=8, max_steps=4, lr=3e-3,
                               impl=impl, device="cpu")
            for impl in ("dense", "packed")}
    np.testing.assert_allclose(runs["dense"].losses, runs["packed"].losses, rtol=1e-4)
    r = runs["dense"]
    assert r.steps == 4 and len(r.losses) == 4
    assert r.graphs_per_s == pytest.approx(3 * 8 / r.seconds)
    with pytest.raises(ValueError, match="impl"):
        baseline_fit(train, impl="sparse")


def _tiny_and_large_latencies():
    """NAS-Bench-201 cells whose latency is an additive op cost, 30 % of them a thousand times
    faster (as on raspi4 and pixel3, where the cut-off cells run in microseconds)."""
    import itertools

    from nnformer_fast.data import nb201_latency_set
    from nnformer_fast.data.cells import NB201_OPS, parse_nb201_arch

    archs = ["|{}~0|+|{}~0|{}~1|+|{}~0|{}~1|{}~2|".format(*ops)
             for ops in itertools.islice(itertools.product(NB201_OPS[1:6], repeat=6), 0, 15625, 97)]
    cost = {"nor_conv_1x1": 4, "nor_conv_3x3": 10, "avg_pool_3x3": 2, "skip_connect": 0.2, "none": 0.0}
    lat = np.array([1 + sum(cost[o] for o in parse_nb201_arch(a)) for a in archs])
    lat[np.random.default_rng(0).random(len(lat)) < 0.3] *= 1e-3
    ds = nb201_latency_set(archs, lat)
    return ds.subset(np.arange(0, len(ds), 2)), ds.subset(np.arange(1, len(ds), 2))


def test_fit_reports_a_diverged_run(capsys):
    """Relative MSE (SPEC §5) on targets spanning four orders of magnitude collapses to
    near-zero predictions, as raspi4 did with 60 epochs: fit says so in its result and in one
    warning line."""
    train, test = _tiny_and_large_latencies()
    r = fit(_cfg(model=dict(dim=32, n_layers=1, dropout=0.0), epochs=6, max_nodes=8 * 16), train_set=train,
            test_set=test)
    assert any(m.startswith("held-out predictions nearly constant") for m in r.divergence), r.divergence
    err = capsys.readouterr().err
    assert err.count("warning: the run looks diverged: held-out predictions nearly constant") == 1
    fine = fit(_cfg(epochs=3), train_set=train, test_set=None)  # the loss check alone: it fell
    assert fine.divergence == [] and np.mean(fine.losses[-3:]) < np.mean(fine.losses[:3])


def test_latency_loss_option(lat, tmp_path):
    train, _ = lat
    with pytest.raises(ValueError, match="unknown loss .mae.; choose from relative_mse, log_mse, log_mse_mape"):
        T.get_task("latency", loss="mae")
    assert T.get_task("latency").loss_config == {"loss": "relative_mse"}
    out = str(tmp_path / "run")
    fit(_cfg(model=dict(TINY, loss="log_mse"), out=out, max_steps=1), train_set=train, test_set=None)
    with pytest.raises(CheckpointError, match="saved with loss='log_mse', this run has loss='relative_mse'"):
        fit(_cfg(out=out, resume="auto"), train_set=train, test_set=None)
    assert fit(_cfg(model=dict(TINY, loss="log_mse"), out=out, resume="auto", max_steps=2), train_set=train,
               test_set=None).step == 2
