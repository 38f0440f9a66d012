"""Build NNLQP-layout latency sets: random networks of real CNN families (``families``),
written with ``onnx.helper`` (``onnx_net``), measured with onnxruntime (``measure``), by a
resumable writer (``build``). Needs the ``onnx`` and ``onnxruntime`` packages."""
from .build import (GROUP, LATENCY_FILE, MAX_COUNT, PASSES_FILE, SPREAD_FILE, build_latency_set, remeasure_noisy,
                    require_onnx, retest)
from .families import FAMILIES, generate
from .measure import CLOCKS, STATISTICS, Measurement, Protocol, cpu_model, make_session, measure_group, measure_session
from .onnx_net import Net, strip_weights, with_random_weights

__all__ = ["build_latency_set", "remeasure_noisy", "retest", "require_onnx", "MAX_COUNT", "GROUP", "LATENCY_FILE",
           "SPREAD_FILE", "PASSES_FILE", "FAMILIES", "generate", "Measurement", "Protocol", "CLOCKS", "STATISTICS",
           "cpu_model", "make_session", "measure_group", "measure_session", "Net", "strip_weights",
           "with_random_weights"]
