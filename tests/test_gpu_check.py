"""benchmarks/gpu_check.py keeps its measurements when something fails, here on the CPU: a
failing timing, section or correctness child process (a crash, a timeout, a failed check), a
lease cut short (SIGTERM) or running late, DataLoader workers that fail, a build past its limit.
Fast: stand-in timers and training rates, and the torch backend (the reference) where a real
correctness pass runs. The row builders themselves run in tests/test_triton.py (Triton
interpreted) and tests/test_cuda_emulator.py (the CUDA kernels emulated)."""
from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nnformer_fast.ops.backends import _REGISTRY, Backend

ROOT = Path(__file__).resolve().parents[1]
TINY = {"tiny": ([5, 3, 7], dict(avg_degree=1.5, global_token=True), 4, 8)}
OPS = ("dag_attention", "bigin", "dropout")


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return importlib.import_module("gpu_check")
    finally:
        sys.path.pop(0)


# ------------------------------------------------------------------------------- timings and sections
def test_a_failing_timing_keeps_the_others(gpu_check):
    """The third measurement raises (no message): its row fails naming the exception, and every
    other (shape, op, backend) is still timed, one row per measurement."""
    calls = 0

    def flaky(fn):
        nonlocal calls
        calls += 1
        if calls == 3:
            raise RuntimeError()
        return 1.0

    rows = list(gpu_check.timing_rows("cpu", flaky, TINY))
    failed = [r for r in rows if r.ok is False]
    assert len(rows) == calls > 3 and [r.note for r in failed] == ["RuntimeError"] and failed[0] is rows[2]
    assert all(r.ms == 1.0 for r in rows if r is not failed[0])
    assert set(OPS) <= {r.op for r in rows[3:]}


def test_a_failing_section_keeps_its_rows_and_charges_its_backend(gpu_check, capsys):
    """Each row is kept and printed as it comes; a section that then raises adds a failed row
    charged to its backend."""
    Row = gpu_check.Row

    def rows_then_crash():
        yield Row("bigin", "a", "native", "float32", ok=True)
        yield Row("dropout", "b", "native", "float32", ok=True)
        raise ValueError("")

    rows = []
    gpu_check.run_section(rows, "correctness, native", rows_then_crash, backend="native")
    assert [r.case for r in rows] == ["a", "b", "section failed"]
    assert (rows[-1].backend, rows[-1].ok, rows[-1].note) == ("native", False, "ValueError")
    out = capsys.readouterr().out
    assert out.index("case='a'") < out.index("case='b'") < out.index("| section failed |")


# ------------------------------------------------------------------------------- recommendation
def _checked(Row, name):
    return [Row(op, "vs reference", name, "float32", ok=True) for op in OPS]


def _timed(Row, name, ms):
    return [Row(op, "fwd+bwd a", name, "bfloat16", ms=ms) for op in OPS]


@pytest.mark.parametrize("trouble", ["build failed", "correctness child crashed", "correctness never ran",
                                     "correctness section failed"])
def test_recommend_puts_a_backend_without_a_passed_correctness_pass_second(gpu_check, trouble):
    """CUDA C++ is timed faster, but its correctness pass did not pass: Triton first, every op."""
    Row = gpu_check.Row
    rows = _checked(Row, "triton") + _timed(Row, "triton", 2.0)
    rows += {
        "build failed": [Row("-", "CUDA extension build", "native", "-", ok=False, note="nvcc: error"),
                         Row("-", "loads on CUDA", "native", "-", ok=False)],
        "correctness child crashed": [Row("-", "correctness pass", "native", "-", ok=False, note="SIGSEGV"),
                                      *_timed(Row, "native", 1.0)],
        "correctness never ran": _timed(Row, "native", 1.0),
        "correctness section failed": [*_checked(Row, "native"), *_timed(Row, "native", 1.0),
                                       Row("correctness, native", "section failed", "native", "-", ok=False)],
    }[trouble]
    orders = {op: order for op, (order, _) in gpu_check.recommend(rows).items()}
    assert orders == dict.fromkeys(OPS, ("triton", "native", "torch")), gpu_check.recommend(rows)


def test_recommend_never_puts_an_unbuilt_backend_first(gpu_check):
    """Triton failed a dropout check, but CUDA C++ did not even build: Triton still first."""
    Row = gpu_check.Row
    rows = [Row("-", "CUDA extension build", "native", "-", ok=False), *_checked(Row, "triton"),
            Row("dropout", "bit-exact", "triton", "float16", ok=False)]
    recommended = gpu_check.recommend(rows)
    assert all(order[0] == "triton" for order, _ in recommended.values()), recommended
    assert "native did not build or load; triton failed a check" == recommended["dropout"][1]


# ------------------------------------------------------------------------------- correctness pass
def test_a_check_that_raises_anything_fails(gpu_check, monkeypatch):
    """Not only an AssertionError: a kernel's error (here without a message) fails its check,
    named, and the other checks still run."""
    def broken(*args, **kwargs):
        raise RuntimeError()

    monkeypatch.setitem(_REGISTRY, "broken", Backend("broken", ops={**_REGISTRY["torch"].ops, "bigin": broken}))
    rows = gpu_check.correctness_rows("broken", "cpu", ["diamond"], past_2_32=False)
    bigin = [r for r in rows if r.op == "bigin"]
    assert bigin and all(not r.ok and r.note == "diamond: RuntimeError" for r in bigin), bigin
    assert all(r.ok for r in rows if r.op != "bigin"), rows


def test_the_correctness_child_reports_its_rows(gpu_check, monkeypatch):
    """The pass in a child process: the same rows as in this one, and the backend stays usable."""
    monkeypatch.setattr(_REGISTRY["torch"], "load_error", None)  # restored, whatever happens here
    rows = gpu_check.check_in_child("torch", "cpu", ["diamond"], past_2_32=False, timeout=120)
    assert len(rows) == 4 * len(gpu_check.DTYPES) and all(r.ok for r in rows), rows
    assert _REGISTRY["torch"].load_error is None


# the child registers three test backends: one whose ops read address 0 (a segfault, as a
# kernel's memory fault can end the process), one whose dropout keeps everything (fails its
# checks on numbers alone), and one whose dropout fails and leaves the device broken (as a
# caught CUDA error leaves the context: every later call fails)
_SITECUSTOMIZE = """
import ctypes
import torch
from nnformer_fast.ops.backends import _REGISTRY, Backend, register

def crash(*args, **kwargs):
    ctypes.string_at(0)

def break_the_device(x, p, seed=None):
    def ones(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    torch.ones = ones
    raise RuntimeError("CUDA error: an illegal memory access was encountered")

register(Backend("crashing", ops=dict.fromkeys(("dag_attention", "bigin", "dropout"), crash)))
register(Backend("keeps_all", ops={**_REGISTRY["torch"].ops, "dropout": lambda x, p, seed=None: x * 1}))
register(Backend("breaks_device", ops={**_REGISTRY["torch"].ops, "dropout": break_the_device}))
"""


@pytest.mark.parametrize("backend, timeout, expected", [
    ("crashing", 120, "its child process: killed by SIGSEGV"),
    ("keeps_all", 0.5, "its child process: timed out after 0 s"),
    ("breaks_device", 120, "its child process: a CUDA call failed after its checks"),
])
def test_a_correctness_child_that_ends_badly_marks_its_backend_unusable(gpu_check, monkeypatch, tmp_path, backend,
                                                                        timeout, expected):
    """A child that crashes, times out or leaves its device broken: a failed row naming how it
    ended (after any rows it reported), the backend's load_error set (no timings, no dispatch)
    and a row saying so."""
    (tmp_path / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setitem(_REGISTRY, backend, Backend(backend, ops={}))
    rows = gpu_check.check_in_child(backend, "cpu", ["diamond"], past_2_32=False, timeout=timeout)
    ended = [r for r in rows if r.op == "-" and r.ok is False]
    assert [(r.backend, r.note) for r in ended] == [(backend, expected)], rows
    if backend == "breaks_device":  # the rows before the device broke are kept
        assert any(r.op == "dag_attention" and r.ok for r in rows), rows
    assert _REGISTRY[backend].load_error and _REGISTRY[backend].reasons("dropout") == [_REGISTRY[backend].load_error]
    assert rows[-1].case == "not used after its correctness pass" and rows[-1].backend == backend


def test_a_correctness_child_failing_on_numbers_keeps_its_backend(gpu_check, monkeypatch, tmp_path):
    """A check that fails on numbers alone (a working device): failed rows, but the backend
    stays in the timings; the recommendation ranks it after one that passed."""
    (tmp_path / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setitem(_REGISTRY, "keeps_all", Backend("keeps_all", ops={}))
    rows = gpu_check.check_in_child("keeps_all", "cpu", ["diamond"], past_2_32=False, timeout=120)
    failed = [r for r in rows if r.ok is False]
    assert failed and {r.op for r in failed} == {"dropout"}, rows
    assert _REGISTRY["keeps_all"].load_error is None
    assert not any(r.case == "not used after its correctness pass" for r in rows)


# ------------------------------------------------------------------------------- a lease running short
def test_sigterm_prints_the_table_and_the_preference(gpu_check):
    """``timeout`` ends the check with SIGTERM: it prints the rows so far and CUDA_PREFERENCE,
    and exits 124."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT / "benchmarks")!r})
        import gpu_check
        rows = [gpu_check.Row("bigin", "fwd tiny", "triton", "bfloat16", ms=1.5)]
        gpu_check.report_on_sigterm(rows, "Some GPU")
        rows.append(gpu_check.Row("dropout", "fwd tiny", "native", "bfloat16", ms=0.5))
        print("ready", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    finally:
        proc.kill()
    assert proc.returncode == 124, out
    assert "| bigin | fwd tiny | triton |" in out and "| dropout | fwd tiny | native |" in out
    assert "CUDA_PREFERENCE: dict[str, tuple] = {" in out and "on Some GPU" in out


def test_training_reruns_without_failed_workers_and_skips_late_runs(gpu_check, monkeypatch):
    """Loader workers that fail: the run once more without them, the row saying so; a run
    that fails anyway: a failed row, and the next still runs; past the time guard, the largest
    budget is skipped, a row saying why."""
    calls = []

    def packed_rate(train_set, *, max_nodes, num_workers, **kwargs):
        calls.append((max_nodes, num_workers))
        if num_workers or max_nodes == 768:
            raise RuntimeError("DataLoader worker (pid 1) exited unexpectedly")
        return 30.0

    monkeypatch.setattr(gpu_check, "packed_rate", packed_rate)
    monkeypatch.setattr(gpu_check, "reference_rate", lambda *args, **kwargs: 10.0)
    rows = list(gpu_check.training_rows("cpu", budgets=(512, 768, 1024), train_limit=8, workers=2,
                                        skip_reason=lambda: "late"))
    assert calls == [(512, 2), (512, 0), (768, 2), (768, 0)]
    assert [r.case for r in rows[1:]] == ["packed, 512 nodes a step, 0 loader workers", "packed, 768 nodes a step",
                                          "packed, 1024 nodes a step"]
    assert rows[1].ok is None and rows[1].note == ("30.0 graphs/s, 3.0x the reference loop; rerun without workers, "
                                                   "2 failed: RuntimeError: DataLoader worker (pid 1) exited "
                                                   "unexpectedly")
    assert rows[2].ok is False and rows[2].note.startswith("RuntimeError: DataLoader worker")
    assert rows[3].ok is None and rows[3].ms is None and rows[3].note == "skipped: late"


def test_training_rows_with_loader_workers(gpu_check, monkeypatch):
    """The GPU's training path, DataLoader workers building the batches, on the CPU with two."""
    monkeypatch.setattr(gpu_check, "reference_rate", lambda *args, **kwargs: 10.0)  # not under test
    rows = list(gpu_check.training_rows("cpu", budgets=(512,), train_limit=24, workers=2))
    assert rows[1].case == "packed, 512 nodes a step, 2 loader workers" and rows[1].ok is None, rows
    assert float(rows[1].note.split()[0]) > 0 and "rerun" not in rows[1].note


# ------------------------------------------------------------------------------- build
def test_the_build_names_torchs_arch_list_too(gpu_check):
    """An image's exported TORCH_CUDA_ARCH_LIST (torch's -gencode flags) gives way to ours."""
    env = gpu_check.build_env({"TORCH_CUDA_ARCH_LIST": "5.0 6.0 7.0 7.5 8.0 8.6 9.0+PTX"})
    assert (env["NNFF_CUDA"], env["NNFF_CUDA_ARCHS"], env["TORCH_CUDA_ARCH_LIST"]) == ("1", "90", "9.0")
    assert gpu_check.build_env({"NNFF_CUDA_ARCHS": "80;90a"})["TORCH_CUDA_ARCH_LIST"] == "8.0;9.0a"


def test_a_failed_build_is_reported_and_the_check_goes_on(gpu_check, monkeypatch, capsys):
    """The build (pip, with torch's arch list set) fails or times out: its first error is the
    build row's note, and its error lines and time are printed."""
    calls = []

    def run_build(cmd, env, timeout):
        calls.append((cmd, env["TORCH_CUDA_ARCH_LIST"], timeout))
        return "compiling\nnvcc error: no kernel image\n", "timed out after 300 s"

    monkeypatch.delenv("NNFF_CUDA_ARCHS", raising=False)
    monkeypatch.setattr(gpu_check.nnformer_fast, "build_info", lambda: {"cuda": False})
    monkeypatch.setattr(gpu_check, "run_build", run_build)
    assert gpu_check.build_if_needed(skip=False) == "timed out after 300 s: nvcc error: no kernel image"
    [(cmd, archs, timeout)] = calls
    assert "--disable-pip-version-check" in cmd and archs == "9.0" and timeout == gpu_check.BUILD_TIMEOUT_S
    assert "CUDA extension build FAILED (timed out after 300 s, 0 s)" in capsys.readouterr().out


def test_a_build_past_its_limit_fails_and_stops_its_compilers(gpu_check, tmp_path):
    """A timed-out build is a failed one, with its output so far; what it started ends too."""
    pid_file = tmp_path / "pid"
    started = time.monotonic()
    log, failure = gpu_check.run_build(["sh", "-c", f"sleep 60 & echo $! > {pid_file}; echo compiling; wait"],
                                       dict(os.environ), timeout=1)
    assert failure == "timed out after 1 s" and log == "compiling\n" and time.monotonic() - started < 30
    stat = Path(f"/proc/{pid_file.read_text().strip()}/stat")

    def ended():  # gone, or a zombie; a killed process closes its pipe before it finishes exiting
        try:
            return stat.read_text().split(") ")[1].startswith("Z")
        except (FileNotFoundError, ProcessLookupError):
            return True

    deadline = time.monotonic() + 10
    while not ended() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ended(), stat.read_text()


# ------------------------------------------------------------------------------- the whole run
def test_the_whole_check_goes_on_without_a_backend_that_crashed(gpu_check, monkeypatch, tmp_path, capsys):
    """``check`` (every section after the build) on the CPU: the CUDA C++ correctness child
    crashes (its ops replaced by a segfault in the child); CUDA C++ is then marked unusable,
    the models and timings run on the others, the preference (printed after the timings and
    at the end) puts Triton first, and the exit status is 1. Stand-ins: Triton's correctness
    rows, the timer, the shapes, the training rows."""
    pytest.importorskip("triton")  # the backend left to time
    (tmp_path / "sitecustomize.py").write_text(_SITECUSTOMIZE + textwrap.dedent("""
        import nnformer_fast.ops.native
        _REGISTRY["native"].ops = _REGISTRY["crashing"].ops
    """))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(_REGISTRY["native"], "load_error", None)  # restored after the test
    Row, real_check_in_child, real_timing_rows = gpu_check.Row, gpu_check.check_in_child, gpu_check.timing_rows

    def check_in_child(name, device, timeout):
        if name == "triton":
            return _checked(Row, "triton")
        return real_check_in_child(name, device, ["diamond"], past_2_32=False, timeout=timeout)

    def training_rows(device, skip_reason):
        yield Row("training", "packed", "ours", "bfloat16", note=f"skip: {skip_reason()}")

    monkeypatch.setattr(gpu_check, "check_in_child", check_in_child)
    monkeypatch.setattr(gpu_check, "bench", lambda fn: 1.0)
    monkeypatch.setattr(gpu_check, "timing_rows", lambda device, bench: real_timing_rows(device, bench, TINY))
    monkeypatch.setattr(gpu_check, "training_rows", training_rows)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        assert gpu_check.check("cpu", "Some GPU") == 1
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    out = capsys.readouterr().out
    assert "| - | correctness pass | native | - |" in out and "killed by SIGSEGV" in out
    assert "| - | not used after its correctness pass | native |" in out
    assert "| model | latency fwd+bwd vs the CPU | auto | float32 |" in out and "**NO** | worst" not in out
    assert "| dag_attention | fwd+bwd tiny | triton |" in out and "| dag_attention | fwd+bwd tiny | native |" not in out
    assert "note='skip: None'" in out
    namespace = {}
    for source in out.split("#: CUDA backends per op")[1:]:  # after the timings, and at the end
        exec("CUDA_PREFERENCE" + source.split("CUDA_PREFERENCE", 1)[1].split("}", 1)[0] + "}", namespace)
        assert namespace["CUDA_PREFERENCE"] == dict.fromkeys(OPS, ("triton", "native", "torch"))
    assert out.count("#: CUDA backends per op") == 2
