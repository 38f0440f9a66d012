"""Latency of an ONNX model with onnxruntime on this machine's CPU.

A :class:`Protocol` says how: which clock times a run (``wall``: elapsed time; ``cpu``: the
CPU time of the calling thread, on which onnxruntime with one intra-op thread runs the whole
graph, so the time spent waiting for a core of a shared machine is left out), which
statistic of the timed runs is the latency (``median`` or ``min``), how many rounds the
runs are spread over (:func:`measure_group` times a group of records round-robin, each round
re-warming every record, so a neighbour's burst of work falls on all of the group's records
instead of all of one record's runs), and how many passes the builder makes over the whole
set (each with fresh sessions, minutes apart, so that a drift of the machine, which shifts
every record measured while it lasts, falls on one pass only).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

__all__ = ["Measurement", "Protocol", "CLOCKS", "STATISTICS", "make_session", "measure_session", "measure_group",
           "cpu_model"]

#: clocks that time one run, in nanoseconds
CLOCKS = {"wall": time.perf_counter_ns, "cpu": time.thread_time_ns}
#: statistics of the timed runs that can be a record's latency
STATISTICS = ("median", "min")


@dataclass
class Measurement:
    """Latency statistics in ms over ``repeats`` timed runs (after the warm-up runs)."""

    median: float
    min: float
    p25: float
    p75: float
    max: float
    std: float
    repeats: int

    @property
    def spread(self) -> float:
        """Relative interquartile range, (p75 - p25) / median."""
        return (self.p75 - self.p25) / self.median if self.median > 0 else 0.0

    @classmethod
    def of(cls, times_ms: np.ndarray) -> "Measurement":
        """The statistics of the (R,) run times ``times_ms``."""
        q = np.percentile(times_ms, [0, 25, 50, 75, 100])
        return cls(float(q[2]), float(q[0]), float(q[1]), float(q[3]), float(q[4]), float(times_ms.std()),
                   int(times_ms.size))


@dataclass(frozen=True)
class Protocol:
    """How a latency is measured: ``rounds`` rounds, each ``warmup`` untimed runs then
    ``repeats`` runs timed by ``clock`` (a key of ``CLOCKS``); a pass's latency is ``statistic``
    (``median`` or ``min``) of its ``rounds * repeats`` timed runs, and the record's latency is
    the same statistic over ``passes`` passes made over the whole set (``min``: the fastest of
    all its timed runs). The defaults are the builder's historical single-pass protocol (wall
    clock, median of 10 after 3 warm-ups)."""

    clock: str = "wall"
    statistic: str = "median"
    warmup: int = 3
    repeats: int = 10
    rounds: int = 1
    passes: int = 1

    def __post_init__(self):
        if self.clock not in CLOCKS:
            raise ValueError(f"unknown clock {self.clock!r}; choose from {', '.join(CLOCKS)}")
        if self.statistic not in STATISTICS:
            raise ValueError(f"unknown statistic {self.statistic!r}; choose from {', '.join(STATISTICS)}")
        if self.repeats < 1 or self.rounds < 1 or self.passes < 1 or self.warmup < 0:
            raise ValueError(f"need repeats >= 1, rounds >= 1, passes >= 1, warmup >= 0; got repeats {self.repeats}, "
                             f"rounds {self.rounds}, passes {self.passes}, warmup {self.warmup}")

    def latency(self, m: Measurement) -> float:
        """The latency (ms) this protocol reports for one pass's measurement ``m``."""
        return m.median if self.statistic == "median" else m.min

    def combine(self, passes: Sequence[Measurement]) -> tuple[float, Measurement]:
        """A record's latency (ms) over its ``passes`` measurements (``statistic`` of their
        :meth:`latency`), and the measurement of the pass nearest to it (its spread is the one
        stored)."""
        lat = [self.latency(m) for m in passes]
        value = float(np.median(lat) if self.statistic == "median" else np.min(lat))
        return value, passes[int(np.argmin([abs(v - value) for v in lat]))]

    def settings(self) -> dict:
        """The fields as a plain dict (build.json)."""
        return asdict(self)


def make_session(model, threads: int = 1):
    """An onnxruntime CPU session of ``model`` (ModelProto or bytes): ``threads`` intra-op
    threads, one inter-op thread, sequential execution, all graph optimisations on."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    data = model if isinstance(model, (bytes, bytearray)) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def _feeds(session, batch_size: int, rng: np.random.Generator) -> dict:
    feeds = {}
    for inp in session.get_inputs():
        shape = [batch_size] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def measure_group(jobs: Sequence[tuple], protocol: Protocol) -> list[Measurement]:
    """Measure every ``(session, batch_size, rng)`` of ``jobs`` (random float32 inputs drawn
    from ``rng``, whose batch dim is ``batch_size``) with ``protocol``: in each of its rounds,
    every job in turn runs its warm-up runs, then its timed runs. One Measurement per job,
    over all its timed runs."""
    clock = CLOCKS[protocol.clock]
    feeds = [_feeds(session, b, rng) for session, b, rng in jobs]
    times = np.empty((len(jobs), protocol.rounds * protocol.repeats))
    for r in range(protocol.rounds):
        for j, (session, _, _) in enumerate(jobs):
            for _ in range(protocol.warmup):
                session.run(None, feeds[j])
            for k in range(r * protocol.repeats, (r + 1) * protocol.repeats):
                t0 = clock()
                session.run(None, feeds[j])
                times[j, k] = (clock() - t0) / 1e6
    return [Measurement.of(t) for t in times]


def measure_session(session, batch_size: int, warmup: int = 3, repeats: int = 10,
                    rng: np.random.Generator | None = None, clock: str = "wall") -> Measurement:
    """Time ``session.run`` on a random float32 input whose batch dim is ``batch_size``:
    ``warmup`` untimed runs, then ``repeats`` runs timed by ``clock``."""
    protocol = Protocol(clock=clock, warmup=warmup, repeats=repeats)
    return measure_group([(session, batch_size, rng or np.random.default_rng(0))], protocol)[0]


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"
