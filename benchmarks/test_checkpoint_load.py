"""Checkpoint loading: what the CRC-32 check of every zip member (``load_checkpoint``) costs
on top of ``torch.load(weights_only=True)``, for the default latency model with its AdamW
state (121 MB, read from the page cache).

Run: ``pytest benchmarks/test_checkpoint_load.py --benchmark-only``.
"""
import pytest
import torch

from nnformer_fast.train.checkpoint import load_checkpoint, save_checkpoint
from nnformer_fast.train.tasks import get_task

GROUP = "checkpoint load, default latency model + AdamW (121 MB)"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    task = get_task("latency")
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # the moments exist: the optimizer state is twice the weights
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.pt", {
        "task": "latency", "model_config": task.model_config, "model": model.state_dict(),
        "optimizer": opt.state_dict()})


def test_torch_load(benchmark, checkpoint):
    benchmark.group = GROUP
    state = benchmark(torch.load, checkpoint, map_location="cpu", weights_only=True)
    assert "model" in state


def test_load_checkpoint_with_crc(benchmark, checkpoint):
    benchmark.group = GROUP
    state = benchmark(load_checkpoint, checkpoint)
    assert "model" in state and "optimizer" in state
