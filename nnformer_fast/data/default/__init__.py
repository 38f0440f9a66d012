"""The embedded default latency set (see README.md in this folder for how it was measured)."""
from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_LATENCY_SET", "load_default_latency_set"]

#: the packaged file: store + record arrays of :class:`nnformer_fast.data.LatencyDataset`
DEFAULT_LATENCY_SET = Path(__file__).with_name("latency_cpu_ort.npz")


def load_default_latency_set(**filters):
    """The default latency set measured with ``nnformer-fast build-latency-set`` (onnxruntime,
    1 intra-op thread) as a :class:`~nnformer_fast.data.LatencyDataset`; ``filters`` are
    ``families=``, ``platforms=``, ``stages=`` as for the dataset constructor."""
    from ..latency import LatencyDataset

    if not DEFAULT_LATENCY_SET.is_file():
        raise FileNotFoundError(f"the default latency set is missing from the package: {DEFAULT_LATENCY_SET}")
    return LatencyDataset.load(DEFAULT_LATENCY_SET, **filters)
