"""Latency of an ONNX model with onnxruntime on this machine's CPU."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

__all__ = ["Measurement", "make_session", "measure_session", "cpu_model"]


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


def measure_session(session, batch_size: int, warmup: int = 3, repeats: int = 10,
                    rng: np.random.Generator | None = None) -> Measurement:
    """Time ``session.run`` on a random float32 input whose batch dim is ``batch_size``."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    rng = rng or np.random.default_rng(0)
    feeds = {}
    for inp in session.get_inputs():
        shape = [batch_size] + [d if isinstance(d, int) else 1 for d in inp.shape[1:]]
        feeds[inp.name] = rng.standard_normal(shape).astype(np.float32)
    for _ in range(warmup):
        session.run(None, feeds)
    times = np.empty(repeats)
    for r in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feeds)
        times[r] = (time.perf_counter() - t0) * 1e3
    q = np.percentile(times, [0, 25, 50, 75, 100])
    return Measurement(float(q[2]), float(q[0]), float(q[1]), float(q[3]), float(q[4]), float(times.std()), repeats)


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
