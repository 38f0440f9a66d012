"""nnformer_fast: compiled-kernel acceleration for NN-Former (arXiv 2507.00880)."""
from .graph import GraphBatch
from .models import NNFormer, NNFormerLatency
from ._build import build_info
from .ops import backends

__version__ = "0.1.0"

__all__ = ["GraphBatch", "NNFormer", "NNFormerLatency", "backends", "build_info", "__version__"]
