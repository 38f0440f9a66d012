"""``build_latency_set``: generate, save (weights stripped) and measure networks, writing the
NNLQP layout. Resumable: measured lines are appended and fsynced one by one; a rerun skips
every ``speed_id`` already in the file (a torn last line from a crash is dropped first).

Output folder::

    latency.txt            speed_id graph_path batch_size latency_ms model_type platform_id
    latency_spread.tsv     speed_id median_ms min_ms p25_ms p75_ms max_ms std_ms repeats
    latency_passes.tsv     speed_id pass median_ms min_ms p25_ms p75_ms max_ms std_ms repeats
    build.json             settings, CPU model, onnxruntime version
    onnx/<family>/<family>_<i>.onnx

A record's line goes into ``latency.txt`` once all its passes (``Protocol.passes``) are
measured (:meth:`~.measure.Protocol.combine`), with the spread of the pass nearest to it;
``latency_passes.tsv`` keeps every pass's measurement.

Network ``i`` of a family is drawn from ``np.random.default_rng([seed, crc32(family), i])``,
so a resumed run regenerates the same networks. Networks are measured ``GROUP`` at a time
(:func:`~.measure.measure_group`: with ``rounds > 1`` their runs are interleaved).
"""
from __future__ import annotations

import json
import os
import platform as _platform
import time
import warnings
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ..._atomic import atomic_write_bytes
from .families import FAMILIES, generate
from .measure import Measurement, Protocol, cpu_model, make_session, measure_group
from .onnx_net import strip_weights

__all__ = ["build_latency_set", "remeasure_noisy", "retest", "require_onnx", "LATENCY_FILE", "SPREAD_FILE",
           "PASSES_FILE", "MAX_COUNT", "GROUP"]

LATENCY_FILE = "latency.txt"
#: most networks per family: ids are ``<family>_<i:05d>`` (five digits keep them sorted)
MAX_COUNT = 100_000
#: networks measured together (one group's records are written when the group is measured)
GROUP = 8
#: the 1-minute load average per CPU above which a build or retest warns that its numbers are
#: inflated: on a 2-vCPU VM at load 3-4, other processes made onnxruntime 2-17 % slower per
#: family even in thread CPU time (shared caches and memory bandwidth)
BUSY_LOAD_PER_CPU = 0.75
NEED_ONNX = 'build-latency-set needs onnx and onnxruntime: pip install "nnformer_fast[data]"'


def require_onnx():
    """The ``onnxruntime`` module; ``ModuleNotFoundError`` naming the ``[data]`` extra when
    onnx or onnxruntime is not installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise ModuleNotFoundError(NEED_ONNX) from None
    return onnxruntime


def _read_manifest(path: Path) -> dict:
    try:
        info = json.loads(path.read_text())
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{path}: unreadable build manifest ({e}); delete it or write the set to another "
                         "folder") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: unreadable build manifest (not a JSON object); delete it or write the set to "
                         "another folder")
    return info
SPREAD_FILE = "latency_spread.tsv"
PASSES_FILE = "latency_passes.tsv"
_STATS = "median_ms\tmin_ms\tp25_ms\tp75_ms\tmax_ms\tstd_ms\trepeats\n"
_SPREAD_HEADER = "speed_id\t" + _STATS
_PASSES_HEADER = "speed_id\tpass\t" + _STATS


def _repair_tail(path: Path) -> None:
    """Drop a torn (newline-less) last line left by an interrupted write."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)


def _done_ids(path: Path) -> set[str]:
    if not path.exists():
        return set()
    with open(path) as f:
        return {line.split()[0] for line in f if line.strip() and not line.startswith(("#", "speed_id"))}


def _append(f, line: str) -> None:
    f.write(line)
    f.flush()
    os.fsync(f.fileno())


def _spread_line(sid: str, m) -> str:
    return f"{sid}\t{m.median:.5f}\t{m.min:.5f}\t{m.p25:.5f}\t{m.p75:.5f}\t{m.max:.5f}\t{m.std:.5f}\t{m.repeats}\n"


def _read_passes(path: Path) -> dict[str, list[Measurement]]:
    """``{speed_id: [Measurement of pass 0, 1, ...]}`` from a ``latency_passes.tsv``."""
    measured: dict[str, list[Measurement]] = {}
    if not path.exists():
        return measured
    for line in path.read_text().splitlines()[1:]:
        f = line.split("\t")
        if len(f) == 9 and int(f[1]) == len(measured.get(f[0], ())):
            measured.setdefault(f[0], []).append(Measurement(*map(float, f[2:8]), int(f[8])))
    return measured


def _load_average() -> float:
    """The 1-minute load average (0 where the OS does not report one)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def _warn_if_busy(what: str, busiest: float) -> None:
    cpus = os.cpu_count() or 1
    if busiest > BUSY_LOAD_PER_CPU * cpus:
        warnings.warn(f"{what}: the load average reached {busiest:.1f} on {cpus} CPU(s) while measuring; other work "
                      "slows onnxruntime even in CPU time (2-17 % per family on a 2-vCPU VM at load 3-4): measure on "
                      "an idle machine, or check with --retest", stacklevel=3)


def _network(info: dict, model_id: str):
    """The network ``<family>_<i>`` of a build with manifest ``info``, regenerated from its seed."""
    fam, idx = model_id.rsplit("_", 1)
    return generate(fam, np.random.default_rng([info["seed"], zlib.crc32(fam.encode()), int(idx)]),
                    info.get("tiny", False))


def _protocol(info: dict, **override) -> Protocol:
    """The measurement protocol of a build's manifest (builds older than the protocol options
    used the defaults), fields in ``override`` replaced."""
    fields = {k: info[k] for k in Protocol().settings() if k in info}
    return Protocol(**dict(fields, **override))


def _measure_networks(info: dict, todo: dict[str, list[int]], protocol: Protocol, sessions=None) -> dict:
    """``{model_id_bs<b>: Measurement}`` of ``todo`` (``{model_id: [batch sizes]}``, at most
    ``GROUP`` networks) measured together with ``protocol``; ``sessions`` maps a model id to
    its session (default: regenerated from the manifest ``info``)."""
    sessions = sessions or {mid: make_session(_network(info, mid), info["threads"]) for mid in todo}
    jobs = [(mid, b) for mid, bs in todo.items() for b in bs]
    ms = measure_group([(sessions[mid], b, np.random.default_rng(int(mid.rsplit("_", 1)[1]))) for mid, b in jobs],
                       protocol)
    return {f"{mid}_bs{b}": m for (mid, b), m in zip(jobs, ms)}


def _measure_in_passes(info: dict, by_model: dict[str, list[int]], protocol: Protocol, bar,
                       what: str) -> dict[str, tuple]:
    """``{speed_id: protocol.combine(...)}`` of the records ``by_model`` (``{model_id: [batch
    sizes]}``) measured in ``protocol.passes`` passes, ``GROUP`` networks at a time with fresh
    sessions; ``bar`` counts the measurements; ``what`` names them in a busy-machine warning."""
    measured: dict[str, list] = {}
    ids = list(by_model)
    busiest = 0.0
    for _ in range(protocol.passes):
        for g in range(0, len(ids), GROUP):
            busiest = max(busiest, _load_average())
            for sid, m in _measure_networks(info, {mid: by_model[mid] for mid in ids[g:g + GROUP]}, protocol).items():
                measured.setdefault(sid, []).append(m)
                bar.update(1)
    _warn_if_busy(what, busiest)
    return {sid: protocol.combine(ms) for sid, ms in measured.items()}


def build_latency_set(out: str | os.PathLike, families: Sequence[str] | None = None, count: int = 10,
                      batch_sizes: Sequence[int] = (1,), *, threads: int = 1, repeats: int = 10, warmup: int = 3,
                      seed: int = 0, platform: str | None = None, tiny: bool = False, progress: bool = True,
                      clock: str = "wall", statistic: str = "median", rounds: int = 1, passes: int = 1) -> Path:
    """Generate ``count`` networks per family, measure each at every batch size, write the
    NNLQP layout under ``out`` and return the path of its latency file.

    families: names from ``FAMILIES`` (default all). platform: the ``platform_id`` column
    (default ``cpu-ort-t{threads}``). tiny: the smallest variants (tests). warmup, repeats,
    clock, statistic, rounds, passes: the measurement :class:`~.measure.Protocol`.
    """
    from tqdm.auto import tqdm

    ort = require_onnx()
    families = list(dict.fromkeys(families or FAMILIES))  # a repeated name would measure its networks twice
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    if not 1 <= count <= MAX_COUNT:
        raise ValueError(f"count (networks per family) must lie in 1..{MAX_COUNT}, got {count}")
    batch_sizes = list(dict.fromkeys(int(b) for b in batch_sizes))
    if not batch_sizes or min(batch_sizes) < 1:
        raise ValueError(f"batch sizes must be >= 1, got {batch_sizes}")
    if threads < 1:
        raise ValueError(f"need threads >= 1, got {threads}")
    protocol = Protocol(clock=clock, statistic=statistic, warmup=warmup, repeats=repeats, rounds=rounds, passes=passes)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    platform = platform or f"cpu-ort-t{threads}"
    if any(c.isspace() for c in platform):
        raise ValueError(f"platform id must not contain whitespace: {platform!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / "build.json"
    settings = {"seed": seed, "tiny": tiny, "threads": threads, "platform": platform, **protocol.settings()}
    old = _read_manifest(manifest) if manifest.exists() else None
    if old is not None:
        before = dict(Protocol().settings(), **old)  # a build older than the protocol options used the defaults
        clash = {k: (before.get(k), v) for k, v in settings.items() if k in before and before[k] != v}
        if clash:
            raise ValueError(f"{out}: resuming with settings that differ from the existing build: {clash}")
    info = dict(settings, families=sorted(set(families) | set(old.get("families", []))) if old is not None
                else families,
                cpu=cpu_model(), machine=_platform.machine(), onnxruntime=ort.__version__,
                updated=time.strftime("%Y-%m-%d %H:%M:%S"))
    atomic_write_bytes(manifest, json.dumps(info, indent=1).encode())

    lat_path, spread_path, passes_path = out / LATENCY_FILE, out / SPREAD_FILE, out / PASSES_FILE
    for path in (lat_path, spread_path, passes_path):
        _repair_tail(path)
    done = _done_ids(lat_path)
    measured = _read_passes(passes_path)  # every pass of the records not yet in latency.txt
    jobs = [(fam, i) for fam in families for i in range(count)]
    sids = [f"{fam}_{i:05d}_bs{b}" for fam, i in jobs for b in batch_sizes]
    n_done = sum(protocol.passes if sid in done else min(len(measured.get(sid, ())), protocol.passes) for sid in sids)
    new_spread, new_passes = not spread_path.exists(), not passes_path.exists()
    with open(lat_path, "a") as lat_f, open(spread_path, "a") as spread_f, open(passes_path, "a") as passes_f, \
            tqdm(total=len(sids) * protocol.passes, initial=n_done, desc="build-latency-set", unit="meas",
                 disable=not progress) as bar:
        if new_spread:
            _append(spread_f, _SPREAD_HEADER)
        if new_passes:
            _append(passes_f, _PASSES_HEADER)

        def finish(sid: str) -> None:
            """Write the record ``sid``, all of whose passes are measured."""
            value, kept = protocol.combine(measured[sid][:protocol.passes])
            model_id = sid.rsplit("_bs", 1)[0]
            # spread first: a crash between the two writes re-measures, never loses spread
            _append(spread_f, _spread_line(sid, kept))
            _append(lat_f, f"{sid} {_onnx_path(model_id).as_posix()} {sid.rsplit('_bs', 1)[1]} {value:.5f} "
                           f"{model_id.rsplit('_', 1)[0]} {platform}\n")
            done.add(sid)

        for sid in sids:  # measured in full before a crash, not yet written
            if sid not in done and len(measured.get(sid, ())) >= protocol.passes:
                finish(sid)
        busiest = 0.0
        for k in range(protocol.passes):
            todo = {}
            for fam, i in jobs:
                model_id = f"{fam}_{i:05d}"
                bs = [b for b in batch_sizes
                      if f"{model_id}_bs{b}" not in done and len(measured.get(f"{model_id}_bs{b}", ())) == k]
                if bs:
                    todo[model_id] = bs
            ids = list(todo)
            for g in range(0, len(ids), GROUP):
                busiest = max(busiest, _load_average())
                group = {mid: todo[mid] for mid in ids[g:g + GROUP]}
                sessions = {}
                for model_id in group:
                    model = _network(info, model_id)
                    rel = _onnx_path(model_id)
                    if not (out / rel).exists():
                        (out / rel).parent.mkdir(parents=True, exist_ok=True)
                        atomic_write_bytes(out / rel, strip_weights(model).SerializeToString())
                    sessions[model_id] = make_session(model, threads)
                for sid, m in _measure_networks(info, group, protocol, sessions).items():
                    _append(passes_f, _spread_line(f"{sid}\t{k}", m))
                    measured.setdefault(sid, []).append(m)
                    bar.update(1)
                    if len(measured[sid]) == protocol.passes:
                        finish(sid)
    _warn_if_busy(str(out), busiest)
    return lat_path


def _onnx_path(model_id: str) -> Path:
    return Path("onnx") / model_id.rsplit("_", 1)[0] / f"{model_id}.onnx"


def _built(out: Path) -> dict:
    """The manifest of the set built in ``out``; FileNotFoundError when there is none."""
    manifest = out / "build.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"{out}: no build.json (not a folder written by build_latency_set)")
    return _read_manifest(manifest)


def remeasure_noisy(out: str | os.PathLike, max_rel_iqr: float = 0.25, *, repeats: int | None = None,
                    progress: bool = True) -> int:
    """Measure again every record of a built set whose relative interquartile range
    ``(p75 - p25) / median`` exceeds ``max_rel_iqr`` (a busy machine), keeping whichever
    measurement has the smaller spread. The protocol comes from ``build.json``; ``repeats``
    overrides its repeat count (>= 1). Both files are rewritten atomically after every 50
    networks (each network's records at all its batch sizes), so an interrupted run loses at
    most those networks' new measurements. Returns the number of records replaced."""
    from tqdm.auto import tqdm

    require_onnx()
    if repeats is not None and repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    out = Path(out)
    info = _built(out)
    protocol = _protocol(info, **({} if repeats is None else {"repeats": int(repeats)}))
    if protocol.passes > 1:
        raise ValueError(f"{out}: a build of {protocol.passes} passes has measured every record {protocol.passes} "
                         "times already; re-measuring by spread is for single-pass builds on a busy machine")
    lat_path, spread_path = out / LATENCY_FILE, out / SPREAD_FILE
    _repair_tail(lat_path)
    _repair_tail(spread_path)
    lines = lat_path.read_text().splitlines(keepends=True)
    spread_lines = spread_path.read_text().splitlines(keepends=True)
    spread = {ln.split("\t")[0]: k for k, ln in enumerate(spread_lines) if k > 0 and ln.strip()}
    line_of = {ln.split()[0]: k for k, ln in enumerate(lines) if ln.strip()}

    def rel(k):
        f = spread_lines[k].split("\t")
        return (float(f[4]) - float(f[3])) / float(f[1])

    todo = sorted(sid for sid, k in spread.items() if sid in line_of and rel(k) > max_rel_iqr)
    by_model: dict[str, list[int]] = {}
    for sid in todo:
        model_id, b = sid.rsplit("_bs", 1)
        by_model.setdefault(model_id, []).append(int(b))

    def flush():
        atomic_write_bytes(spread_path, "".join(spread_lines).encode())
        atomic_write_bytes(lat_path, "".join(lines).encode())

    replaced = 0
    ids = list(by_model)
    with tqdm(total=len(todo), desc="remeasure", unit="meas", disable=not progress) as bar:
        for g in range(0, len(ids), GROUP):
            for sid, m in _measure_networks(info, {mid: by_model[mid] for mid in ids[g:g + GROUP]}, protocol).items():
                k = spread[sid]
                if m.spread < rel(k):
                    spread_lines[k] = _spread_line(sid, m)
                    parts = lines[line_of[sid]].split()
                    parts[3] = f"{protocol.latency(m):.5f}"
                    lines[line_of[sid]] = " ".join(parts) + "\n"
                    replaced += 1
                bar.update(1)
            if g // GROUP % 6 == 5:  # every 48 networks
                flush()
    flush()
    return replaced


def retest(out: str | os.PathLike, fraction: float, *, seed: int = 0, progress: bool = True) -> dict:
    """Test-retest of a built set: measure again, with the protocol of its ``build.json`` (all
    its passes, made one after the other over the sample), a sample of ``max(1, round(fraction
    * records))`` of its records drawn with ``seed``, and compare with the stored latencies.
    Changes nothing. Returns ``{"records": n, "median":, "p90":, "max":}`` of ``|new - stored|
    / stored`` and ``"protocol"``, the settings used."""
    from tqdm.auto import tqdm

    require_onnx()
    if not 0 < fraction <= 1:
        raise ValueError(f"retest fraction must lie in (0, 1], got {fraction}")
    out = Path(out)
    info = _built(out)
    protocol = _protocol(info)
    _repair_tail(out / LATENCY_FILE)
    stored = {p[0]: float(p[3]) for p in (ln.split() for ln in (out / LATENCY_FILE).read_text().splitlines()) if p}
    if not stored:
        raise ValueError(f"{out / LATENCY_FILE}: no records to retest")
    sids = sorted(stored)
    pick = np.random.default_rng(seed).choice(len(sids), max(1, round(fraction * len(sids))), replace=False)
    by_model: dict[str, list[int]] = {}
    for sid in sorted(sids[k] for k in pick):
        model_id, b = sid.rsplit("_bs", 1)
        by_model.setdefault(model_id, []).append(int(b))
    with tqdm(total=len(pick) * protocol.passes, desc="retest", unit="meas", disable=not progress) as bar:
        new = _measure_in_passes(info, by_model, protocol, bar, f"{out}: retest")
    rel = np.asarray([abs(value - stored[sid]) / stored[sid] for sid, (value, _) in new.items()])
    return {"records": int(rel.size), "median": float(np.median(rel)), "p90": float(np.percentile(rel, 90)),
            "max": float(rel.max()), "protocol": protocol.settings()}
