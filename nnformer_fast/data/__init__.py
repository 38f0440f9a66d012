"""Data: cell benchmarks (NAS-Bench-101/201) and their batching; latency datasets (NNLQP
layout, NAS-Bench-201 per-device latencies, the embedded default set), ONNX features and the
latency-set builder (``nnformer_fast.data.builder``, needs onnx + onnxruntime, imported
lazily)."""
from .cells import (
    Cell,
    CellDataset,
    SameSizeBatchSampler,
    collate_padded,
    collate_same_size,
    default_data_dir,
    group_by_size,
    load_nb101_json,
    load_nb101_naslib,
    load_nb201_csv,
    load_nb201_naslib,
    nb101_cell,
    nb201_cell,
    parse_nb201_arch,
    tokenize,
)

__all__ = [
    "Cell",
    "CellDataset",
    "SameSizeBatchSampler",
    "collate_padded",
    "collate_same_size",
    "default_data_dir",
    "group_by_size",
    "load_nb101_json",
    "load_nb101_naslib",
    "load_nb201_csv",
    "load_nb201_naslib",
    "nb101_cell",
    "nb201_cell",
    "parse_nb201_arch",
    "tokenize",
    # latency data (onnx is imported only when an ONNX file is parsed)
    "LatencyDataset",
    "collate_latency",
    "parse_latency_file",
    "load_nb201_latency",
    "load_nb201_latency_csv",
    "nb201_latency_set",
    "load_onnx_graph",
    "OnnxGraph",
    "load_default_latency_set",
    "build_latency_set",
]

from .latency import (LatencyDataset, collate_latency, load_nb201_latency, load_nb201_latency_csv,  # noqa: E402
                      nb201_latency_set, parse_latency_file)
from .onnx_features import OnnxGraph, load_onnx_graph  # noqa: E402
from .default import load_default_latency_set  # noqa: E402


def __getattr__(name):
    if name == "build_latency_set":  # pulls in the builder (onnx, onnxruntime) on first use
        from .builder import build_latency_set

        return build_latency_set
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
