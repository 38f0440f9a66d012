"""DDP on 2 CPU processes (gloo): the loss curve matches one process on the same global batches."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnformer_fast.train import TrainConfig, fit
from nnformer_fast.train.synthetic import synthetic_latency_set

CFG = dict(model=dict(dim=32, n_layers=1, dropout=0.0), epochs=2, max_nodes=400, lr=3e-3, warmup=2,
           progress=False, precision="fp32", threads=1, seed=0, grad_clip=1.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train = synthetic_latency_set(60, seed=2)
        r = fit(TrainConfig(**CFG), train_set=train, test_set=None)
        if rank == 0:
            np.save(out, np.array(r.losses))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_process_loss_curve_matches_single(tmp_path):
    out = str(tmp_path / "losses.npy")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ddp = np.load(out)
    single = np.array(fit(TrainConfig(**CFG), train_set=synthetic_latency_set(60, seed=2), test_set=None).losses)
    assert ddp.shape == single.shape and len(single) >= 4
    np.testing.assert_allclose(ddp, single, rtol=2e-4, atol=1e-6)
