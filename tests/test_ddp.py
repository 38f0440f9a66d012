"""DDP on 2 CPU processes (gloo): the loss curve matches one process on the same global batches;
an interrupted and resumed run matches an uninterrupted one (every rank's RNG restored)."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnformer_fast.train import CheckpointError, TrainConfig, fit, load_checkpoint
from nnformer_fast.train.synthetic import synthetic_latency_set

CFG = dict(model=dict(dim=32, n_layers=1, dropout=0.0), epochs=2, max_nodes=400, lr=3e-3, warmup=2,
           progress=False, precision="fp32", threads=1, seed=0, grad_clip=1.0)
#: dropout on: each rank draws its own masks, so a resume must restore each rank's RNG
DROPOUT = dict(CFG, model=dict(dim=32, n_layers=1, dropout=0.2))

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank: int, world: int, port: int, job, *args) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        job(rank, *args)
        dist.barrier()  # neither rank tears its gloo pairs down while the other still talks
    finally:
        dist.destroy_process_group()


def _spawn(job, *args) -> None:
    """``job(rank, *args)`` in 2 gloo processes."""
    mp.spawn(_run, args=(2, _free_port(), job, *args), nprocs=2, join=True)


def _loss_curve(rank: int, out: str) -> None:
    r = fit(TrainConfig(**CFG), train_set=synthetic_latency_set(60, seed=2), test_set=None)
    if rank == 0:
        np.save(out, np.array(r.losses))


def _interrupted_and_resumed(rank: int, tmp: str) -> None:
    train = synthetic_latency_set(60, seed=2)
    full = fit(TrainConfig(**DROPOUT), train_set=train, test_set=None)
    k = len(full.losses) // 2 + 1
    fit(TrainConfig(**DROPOUT, out=tmp, max_steps=k), train_set=train, test_set=None)
    resumed = fit(TrainConfig(**DROPOUT, out=tmp, resume="auto"), train_set=train, test_set=None)
    # every rank's own result: rank 1 diverges if it resumed with rank 0's RNG state
    torch.save({"full": full.losses, "resumed": resumed.losses, "k": k,
                "params": [p.detach().clone() for p in full.model.parameters()],
                "resumed_params": [p.detach().clone() for p in resumed.model.parameters()]},
               os.path.join(tmp, f"rank{rank}.pt"))


def test_two_process_loss_curve_matches_single(tmp_path):
    out = str(tmp_path / "losses.npy")
    _spawn(_loss_curve, out)
    ddp = np.load(out)
    single = np.array(fit(TrainConfig(**CFG), train_set=synthetic_latency_set(60, seed=2), test_set=None).losses)
    assert ddp.shape == single.shape and len(single) >= 4
    np.testing.assert_allclose(ddp, single, rtol=2e-4, atol=1e-6)


def test_two_process_resume_matches_uninterrupted(tmp_path):
    _spawn(_interrupted_and_resumed, str(tmp_path))
    for rank in range(2):
        r = torch.load(tmp_path / f"rank{rank}.pt")
        assert r["resumed"] == r["full"] and len(r["full"]) > r["k"]  # bit for bit, dropout on
        for a, b in zip(r["params"], r["resumed_params"]):
            assert torch.equal(a, b)
    rng = load_checkpoint(tmp_path / "last.pt")["rng"]  # weights_only=True
    assert len(rng) == 2 and not torch.equal(rng[0]["torch"], rng[1]["torch"])
    with pytest.raises(CheckpointError, match="world_size=2, this run has world_size=1"):
        fit(TrainConfig(**DROPOUT, out=str(tmp_path), resume="auto"), train_set=synthetic_latency_set(60, seed=2),
            test_set=None)
