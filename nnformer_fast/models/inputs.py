"""Input checks the models share: features a Linear reads and the graph they run on."""
from __future__ import annotations

import torch
from torch import Tensor

from ..graph import GraphBatch

__all__ = ["check_features", "check_graph"]


def check_features(owner: str, name: str, t, weight: Tensor) -> None:
    """``t``: a float tensor on the device of ``weight`` (the first Linear that reads it), with
    real values (not on the meta device), and of its dtype unless autocast casts both."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{owner}: {name} must be a tensor, got {type(t).__name__}")
    if t.device != weight.device:
        raise ValueError(f"{owner}: {name} is on {t.device} but the model on {weight.device}; move one with .to()")
    if t.device.type == "meta":
        raise ValueError(f"{owner}: {name} is a meta tensor, which holds no values")
    if not t.is_floating_point():
        raise ValueError(f"{owner}: {name} must be a float tensor, got {t.dtype}")
    if t.dtype != weight.dtype and not torch.is_autocast_enabled(t.device.type):
        raise ValueError(f"{owner}: {name} is {t.dtype} but the model's weights are {weight.dtype}; cast one to "
                         "the other or run under torch.autocast")


def check_graph(owner: str, graph) -> None:
    if not isinstance(graph, GraphBatch):
        raise TypeError(f"{owner}: graph must be a GraphBatch, got {type(graph).__name__}")
