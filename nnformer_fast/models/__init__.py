"""NN-Former models built from one set of shared blocks."""
from .accuracy import NNFormer
from .latency import NNFormerLatency

__all__ = ["NNFormer", "NNFormerLatency"]
