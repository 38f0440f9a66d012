"""The training loop: ``fit(TrainConfig)``.

Packed batches from the token-budget sampler, built in DataLoader workers; AdamW with a
linear warm-up and cosine decay; optional EMA of the weights; bf16 autocast (CPU and GPU) or
fp16 + GradScaler (GPU); optional ``torch.compile`` (latency task); atomic checkpoints every N
steps, at the end and on Ctrl-C; exact resume (every rank's RNG states); DDP under ``torchrun``
(gloo on CPU, NCCL on GPU).

Hot path per step: move the batch (non-blocking), forward under autocast, one ``.item()``
for the loss (the NaN/inf check and the progress bar), backward, clip, step. Nothing loops
over graphs in Python.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import numbers
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch
from torch import nn

from .._atomic import writable_folder
from ..models.buckets import bucketed
from .checkpoint import (CheckpointError, claim_checkpoint, gather_rng_states, load_checkpoint, restore_rng_state,
                         save_checkpoint)
from .host_memory import keep_freed_memory
from .metrics import divergence_reasons, regression_metrics
from .optim import make_optimizer
from .sampler import DistributedTokenBudgetBatchSampler, TokenBudgetBatchSampler
from .tasks import NB201_ENCODINGS, dataset_fingerprint, get_task, load_dataset, split_dataset

__all__ = ["TrainConfig", "FitResult", "fit", "evaluate_model", "ModelEMA", "make_loader", "resolve_device",
           "check_config", "compile_model", "RUN_SETTINGS"]

PRECISIONS = ("fp32", "bf16", "fp16")

#: TrainConfig fields that change the course of a run (batches, schedule, numerics): a resumed
#: run must keep every one (with the world size and the task's loss weights), or it would not
#: continue the run it resumes. Data settings are covered by the training set's fingerprint.
RUN_SETTINGS = ("max_nodes", "max_graphs", "epochs", "seed", "lr", "weight_decay", "warmup", "min_lr_ratio",
                "grad_clip", "ema", "consistency", "precision", "compile", "flush_denormal")
#: TrainConfig fields that choose the training set: the fingerprint refuses a resume on other
#: data, and the refusal names those of them that changed.
DATA_SETTINGS = ("data", "data_format", "nb201_device", "accuracy_dataset", "accuracy_target", "nb201_encoding",
                 "test_fraction", "split_seed", "train_limit")


@dataclass
class TrainConfig:
    """Everything ``fit`` needs; every field is a plain value (saved in checkpoints)."""

    task: str = "latency"
    data: Optional[str] = None            # path; None = the embedded default latency set
    data_format: str = "auto"
    nb201_device: Optional[str] = None
    accuracy_dataset: str = "cifar10"
    accuracy_target: str = "validation_accuracy"
    nb201_encoding: str = "pruned"        # NB201 CSV / NASLib cells: "pruned" (docs/DATA.md) or "reference" (authors')
    test_fraction: float = 0.2
    split_seed: int = 0
    train_limit: Optional[int] = None
    model: dict = field(default_factory=dict)   # model options (task defaults otherwise)
    epochs: int = 10
    max_nodes: int = 4096                 # node budget of one (global) batch
    max_graphs: Optional[int] = None
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.05                  # < 1: fraction of all steps; >= 1: steps
    min_lr_ratio: float = 0.0             # cosine floor as a fraction of lr
    grad_clip: Optional[float] = 1.0      # max grad norm, > 0 (None = off)
    ema: float = 0.0                      # EMA decay in [0, 1) (0 = off)
    consistency: bool = False
    precision: str = "bf16"
    device: str = "auto"
    compile: bool = False                 # torch.compile the model (latency task; dynamic shapes, one graph)
    num_workers: int = 0
    seed: int = 0
    out: Optional[str] = None             # checkpoint folder (None = no checkpoints)
    checkpoint_every: int = 0             # steps (0 = only at the end / on Ctrl-C)
    resume: Optional[str] = None          # a checkpoint path, or "auto" = <out>/last.pt if present
    overwrite: bool = False               # a fresh run may replace <out>/last.pt of another run
    max_steps: Optional[int] = None       # stop (with a checkpoint) once this many steps in all are done; checked
    #                                       before each step: 0 takes none, a resume at N takes none
    max_seconds: Optional[float] = None   # stop (with a checkpoint) after this much training time
    eval_every_epoch: bool = False
    progress: bool = True
    threads: Optional[int] = None         # torch intra-op threads (None = leave as is)
    flush_denormal: bool = True           # CPU: denormals (tiny layer-scale gradients) cost ~2x

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class FitResult:
    model: nn.Module                      # trained model (EMA weights when ema > 0), eval mode
    losses: list                          # training loss of every step since step 1
    metrics: dict                         # held-out metrics (docs/TRAINING.md) of ``model``
    throughput: dict                      # graphs_per_s, nodes_per_s, steps, seconds (this run);
    #                                       warm_graphs_per_s: after the run's first epoch (compilation
    #                                       and kernel warm-up), None when one epoch or less ran
    step: int
    checkpoint: Optional[str] = None
    interrupted: bool = False
    history: list = field(default_factory=list)   # per-epoch eval metrics (eval_every_epoch)
    divergence: list = field(default_factory=list)  # why the run looks diverged (metrics.divergence_reasons);
    #                                                 empty when it trained


# ---------------------------------------------------------------------------- helpers
class ModelEMA:
    """Exponential moving average of a model's floating-point state (others copied)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        state = model.state_dict()
        floats = [k for k, v in state.items() if v.is_floating_point()]
        torch._foreach_lerp_([self.shadow[k] for k in floats], [state[k].detach() for k in floats], 1.0 - self.decay)
        for k, v in state.items():
            if not v.is_floating_point():
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return dict(self.shadow)

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)

    def copy_to(self, model: nn.Module) -> nn.Module:
        model.load_state_dict(self.shadow)
        return model


def resolve_device(name) -> torch.device:
    """``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``;
    ``ValueError`` for anything else or a GPU that is not there."""
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r}; choose auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    return dev


def check_config(cfg: "TrainConfig") -> None:
    """Refuse settings outside their ranges before any work (``ValueError`` naming the option)."""
    def need(ok: bool, option: str, rule: str, value) -> None:
        if not ok:
            flag = {"num_workers": "--workers", "max_seconds": None, "flush_denormal": None}.get(
                option, "--" + option.replace("_", "-"))
            raise ValueError(f"{option}{f' ({flag})' if flag else ''} must be {rule}, got {value!r}")

    num, integer = numbers.Real, numbers.Integral
    need(isinstance(cfg.epochs, integer) and cfg.epochs >= 1, "epochs", ">= 1", cfg.epochs)
    need(isinstance(cfg.ema, num) and 0 <= cfg.ema < 1, "ema", "in [0, 1) (0 = off)", cfg.ema)
    need(cfg.grad_clip is None or (isinstance(cfg.grad_clip, num) and cfg.grad_clip > 0), "grad_clip",
         "> 0 (off: None, or 0 on the command line)", cfg.grad_clip)
    need(isinstance(cfg.warmup, num) and cfg.warmup >= 0, "warmup", ">= 0", cfg.warmup)
    need(cfg.threads is None or (isinstance(cfg.threads, integer) and cfg.threads >= 1), "threads", ">= 1",
         cfg.threads)
    need(isinstance(cfg.test_fraction, num) and 0 < cfg.test_fraction < 1, "test_fraction", "in (0, 1)",
         cfg.test_fraction)
    need(isinstance(cfg.lr, num) and cfg.lr > 0, "lr", "> 0", cfg.lr)
    need(isinstance(cfg.weight_decay, num) and cfg.weight_decay >= 0, "weight_decay", ">= 0", cfg.weight_decay)
    need(isinstance(cfg.min_lr_ratio, num) and 0 <= cfg.min_lr_ratio <= 1, "min_lr_ratio", "in [0, 1]",
         cfg.min_lr_ratio)
    need(isinstance(cfg.max_nodes, integer) and cfg.max_nodes >= 1, "max_nodes", ">= 1", cfg.max_nodes)
    need(cfg.max_graphs is None or (isinstance(cfg.max_graphs, integer) and cfg.max_graphs >= 1), "max_graphs",
         ">= 1", cfg.max_graphs)
    need(cfg.train_limit is None or (isinstance(cfg.train_limit, integer) and cfg.train_limit >= 1), "train_limit",
         ">= 1", cfg.train_limit)
    need(cfg.max_steps is None or (isinstance(cfg.max_steps, integer) and cfg.max_steps >= 0), "max_steps",
         ">= 0 (0: no step)", cfg.max_steps)
    need(cfg.max_seconds is None or (isinstance(cfg.max_seconds, num) and cfg.max_seconds >= 0), "max_seconds",
         ">= 0", cfg.max_seconds)
    need(isinstance(cfg.checkpoint_every, integer) and cfg.checkpoint_every >= 0, "checkpoint_every", ">= 0",
         cfg.checkpoint_every)
    need(isinstance(cfg.num_workers, integer) and cfg.num_workers >= 0, "num_workers", ">= 0", cfg.num_workers)
    need(cfg.precision in PRECISIONS, "precision", f"one of {PRECISIONS}", cfg.precision)
    need(cfg.nb201_encoding in NB201_ENCODINGS, "nb201_encoding", f"one of {NB201_ENCODINGS}", cfg.nb201_encoding)
    need(isinstance(cfg.model, dict), "model", "a dict of model options", cfg.model)


def _autocast(device: torch.device, precision: str):
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {PRECISIONS}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 training needs a GPU (GradScaler); use bf16 on the CPU")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def _identity(x):
    return x


def make_loader(builder, sampler, *, num_workers: int = 0, device: torch.device = torch.device("cpu")):
    """A DataLoader whose workers build whole batches (``builder[list_of_indices]``)."""
    kw = {}
    if num_workers > 0:
        kw = dict(persistent_workers=True, prefetch_factor=4)
    # its own generator: every iter(loader) draws a worker base seed, which must not advance the
    # global RNG (dropout) or a resumed run would drift from the uninterrupted one
    return torch.utils.data.DataLoader(builder, sampler=sampler, batch_size=None, collate_fn=_identity,
                                       num_workers=num_workers, pin_memory=device.type == "cuda",
                                       generator=torch.Generator().manual_seed(0), **kw)


def _lr_lambda(total: int, warmup: int, floor: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
    return f


class _StopFlag:
    """First Ctrl-C: finish the current step, checkpoint, stop. Second: stop at once.
    ``announce``: say so on stderr (DDP: rank 0 only, not once per process)."""

    def __init__(self, announce: bool = True):
        self.set = False
        self.announce = announce
        self._old = None

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self._old = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set = True
        if self.announce:
            print("\ninterrupt: finishing this step and writing a checkpoint (Ctrl-C again to stop at once)",
                  file=sys.stderr)

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def _dist_info():
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return 0, 1, 0


# ---------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate_model(model: nn.Module, task, dataset, *, max_nodes: int = 8192, device=None,
                   precision: str = "fp32", num_workers: int = 0, progress: bool = False,
                   desc: str = "evaluate") -> tuple[np.ndarray, np.ndarray, dict]:
    """Predictions, targets (dataset order) and the metrics (docs/TRAINING.md) on ``dataset``;
    ``progress`` shows a bar of the batches (titled ``desc``)."""
    from tqdm.auto import tqdm

    task.check_dataset(dataset, "evaluation set")
    device = device or next(model.parameters()).device
    sampler = TokenBudgetBatchSampler(task.sizes(dataset), max_nodes, shuffle=False)
    loader = make_loader(task.builder(dataset), sampler, num_workers=num_workers, device=device)
    was_training = model.training
    model.eval()
    preds = np.zeros(len(dataset), dtype=np.float64)
    bar = tqdm(loader, total=len(sampler), desc=desc, unit="batch", disable=not progress, dynamic_ncols=True,
               leave=False)
    try:
        for batch in bar:
            batch = batch.to(device, non_blocking=True)
            with _autocast(device, precision):
                p = task.forward(model, batch)
            preds[batch.index.numpy()] = p.float().cpu().numpy()
    finally:
        bar.close()
        model.train(was_training)
    y = task.targets(dataset)
    return preds, y, regression_metrics(preds, y, relative=task.relative_metrics)


def _changed_data_settings(cfg: "TrainConfig", saved: dict) -> str:
    """``"saved with k=v, this run has k=w"`` for every ``DATA_SETTINGS`` field of ``saved`` (a
    checkpoint's train_config) that ``cfg`` changes, joined by "; "; "" when none."""
    return "; ".join(f"saved with {k}={saved[k]!r}, this run has {k}={getattr(cfg, k)!r}"
                     for k in DATA_SETTINGS if k in saved and saved[k] != getattr(cfg, k))


# ---------------------------------------------------------------------------- fit
def compile_model(model: nn.Module) -> nn.Module:
    """``model`` through ``torch.compile`` as ``fit(compile=True)`` trains it (without the shape
    buckets, which ``fit`` wraps around it): ``dynamic=True``, so batches of any size share one
    graph; ``fullgraph=True``, which also traces the dropout seeds the model draws as Python ints
    (without it each one breaks the graph)."""
    return torch.compile(model, dynamic=True, fullgraph=True)


def fit(config: Optional[TrainConfig] = None, *, train_set=None, test_set=None, **overrides) -> FitResult:
    """Train a predictor; returns a :class:`FitResult`.

    ``config`` (or keyword overrides of :class:`TrainConfig`) chooses task, data, model and
    schedule. ``train_set`` / ``test_set`` bypass loading (datasets of the task's kind:
    ``LatencyDataset`` or ``CellArrays``). Raises ``FloatingPointError`` on a NaN/inf loss,
    ``KeyboardInterrupt`` after writing a checkpoint on Ctrl-C, ``CheckpointError`` when the
    resume checkpoint does not match (another task, model, training set, or any setting of
    ``RUN_SETTINGS``, world size or loss weight) or when a fresh run (no ``resume``, no
    ``overwrite``) would replace the checkpoint in ``out``, ``ValueError`` for settings out of range
    (:func:`check_config`), an unknown device or an ``out`` folder that cannot be written —
    all before any training.
    """
    cfg = dataclasses.replace(config or TrainConfig(), **overrides)
    check_config(cfg)
    device = resolve_device(cfg.device)
    task = get_task(cfg.task, **cfg.model)
    if cfg.compile and cfg.task != "latency":
        raise ValueError("compile: only the latency task; the accuracy model builds its graph and packs its tokens "
                         "with data-dependent shapes inside forward, which torch.compile splits into many graphs")
    _autocast(device, cfg.precision)  # validate precision/device early
    ckpt_path = writable_folder(cfg.out, "--out") / "last.pt" if cfg.out else None
    if ckpt_path is not None:
        claim_checkpoint(ckpt_path, resume=cfg.resume, overwrite=cfg.overwrite)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.flush_denormal:
        torch.set_flush_denormal(True)
    if device.type == "cpu":
        keep_freed_memory()
    rank, world, local_rank = _dist_info()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    main_proc = rank == 0

    # ---- data
    if train_set is None:
        full = load_dataset(cfg.task, cfg.data, fmt=cfg.data_format, nb201_device=cfg.nb201_device,
                            accuracy_dataset=cfg.accuracy_dataset, target=cfg.accuracy_target,
                            nb201_encoding=cfg.nb201_encoding, in_chans=task.model_config.get("in_chans", 32),
                            progress=cfg.progress and main_proc)
        task.check_dataset(full, f"dataset {cfg.data or 'default'}")
        if test_set is None:
            train_set, test_set = split_dataset(cfg.task, full, test_fraction=cfg.test_fraction,
                                                seed=cfg.split_seed, train_limit=cfg.train_limit)
        else:
            train_set = full
    task.check_dataset(train_set, "training set")
    if test_set is not None and len(test_set) == 0:
        test_set = None
    sizes = task.sizes(train_set)
    sampler_kw = dict(max_graphs=cfg.max_graphs, shuffle=True, seed=cfg.seed)
    if world > 1:
        sampler = DistributedTokenBudgetBatchSampler(sizes, cfg.max_nodes, num_replicas=world, rank=rank,
                                                     **sampler_kw)
    else:
        sampler = TokenBudgetBatchSampler(sizes, cfg.max_nodes, **sampler_kw)
    steps_per_epoch = [len(sampler._epoch_batches(e)) for e in range(cfg.epochs)]
    total_steps = sum(steps_per_epoch)
    loader = make_loader(task.builder(train_set), sampler, num_workers=cfg.num_workers, device=device)

    # ---- model & optimisation
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    model = task.build_model().to(device)
    if world > 1:  # the same initial weights everywhere, but each rank its own dropout masks
        torch.manual_seed(cfg.seed + rank)
    optimizer = make_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup * total_steps) if cfg.warmup < 1 else int(cfg.warmup)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(total_steps, max(1, warmup),
                                                                         cfg.min_lr_ratio))
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    loss_gen = torch.Generator().manual_seed(cfg.seed + 1)
    fingerprint = dataset_fingerprint(task, train_set)
    run_settings = {**{k: getattr(cfg, k) for k in RUN_SETTINGS}, "world_size": world, **task.loss_config}

    step, epoch, losses = 0, 0, []
    state = None
    resume = cfg.resume
    if resume == "auto":
        resume = str(ckpt_path) if ckpt_path is not None and ckpt_path.is_file() else None
    if resume:
        state = load_checkpoint(resume, task=cfg.task, model_config=task.model_config)
        if state.get("dataset") != fingerprint:
            hint = _changed_data_settings(cfg, state.get("train_config") or {}) or (
                "check --data, --test-fraction, --split-seed, --train-limit, --nb201-encoding")
            raise CheckpointError(f"{resume}: saved for another training set (fingerprint {state.get('dataset')} "
                                  f"vs {fingerprint}); {hint}")
        # older checkpoints hold few "run" settings, but every TrainConfig field in "train_config"
        saved_settings = {**(state.get("train_config") or {}), **(state.get("run") or {})}
        for key, mine in run_settings.items():
            if key in saved_settings and saved_settings[key] != mine:
                raise CheckpointError(f"{resume}: saved with {key}={saved_settings[key]!r}, this run has "
                                      f"{key}={mine!r}; resume with the same settings (or train into another --out)")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(state["sampler"])
        step, epoch = int(state["step"]), int(state["sampler"]["epoch"])
        losses = state["losses"].tolist()
        rng = state["rng"]
        if not (isinstance(rng, list) and len(rng) == world):
            raise CheckpointError(f"{resume}: holds no RNG states for {world} rank(s) (written by an older version?), "
                                  "so it cannot be resumed exactly")
        restore_rng_state(rng[rank], loss_gen)
        if main_proc:
            print(f"resumed from {resume} at step {step} (epoch {epoch}, batch {sampler.position})", file=sys.stderr)
    # after the resumed weights are in place: an EMA without saved state averages from them
    ema = ModelEMA(model, cfg.ema) if cfg.ema > 0 else None
    if ema is not None and state is not None and state.get("ema") is not None:
        ema.load_state_dict(state["ema"])

    train_model = compile_model(model) if cfg.compile else model
    if world > 1:  # around the compiled module: dynamo cannot trace DDP's forward in one graph
        train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=[device.index]
                                                          if device.type == "cuda" else None)
    if cfg.compile:  # the shape buckets the compiled model cannot pad for itself (CPU bf16/fp16)
        train_model = bucketed(train_model)

    def checkpoint(consumed: int) -> Optional[str]:
        """Rank 0 writes ``ckpt_path`` with every rank's RNG states; under DDP a collective that
        returns on every rank once the file is in place (so a rank may resume from it at once)."""
        if ckpt_path is None:
            return None
        rng = gather_rng_states(loss_gen)
        if main_proc:
            save_checkpoint(ckpt_path, {
                "task": cfg.task, "model_config": task.model_config, "dataset": fingerprint,
                "run": run_settings,
                "train_config": {k: v for k, v in cfg.to_dict().items() if k != "model"},
                "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "sampler": sampler.state_dict(consumed=consumed), "step": step,
                "losses": torch.tensor(losses, dtype=torch.float64), "rng": rng,
            })
        if world > 1:
            torch.distributed.barrier()
        return str(ckpt_path)

    # ---- loop
    from tqdm.auto import tqdm

    model.train()
    seen_graphs = seen_nodes = 0
    t_start = time.perf_counter()
    run_steps = 0
    epoch_times = []  # (graphs, seconds) of each epoch of this run
    interrupted = stopped = False
    history = []
    saved = None
    consumed = sampler.position
    with _StopFlag(announce=main_proc) as stop:
        while epoch < cfg.epochs and not stopped:
            if cfg.max_steps is not None and step >= cfg.max_steps:  # before a step: a resume at N takes none
                stopped = True
                break
            sampler.set_epoch(epoch)
            consumed = sampler.position
            bar = tqdm(total=steps_per_epoch[epoch], initial=consumed, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       unit="step", disable=not (cfg.progress and main_proc), dynamic_ncols=True, leave=False)
            t_epoch, g_epoch, n_epoch = time.perf_counter(), 0, 0
            for batch in loader:
                batch = batch.to(device, non_blocking=True) if device.type != "cpu" else batch
                with _autocast(device, cfg.precision):
                    loss, _ = task.loss(train_model, batch, consistency=cfg.consistency, generator=loss_gen)
                # the time limit is agreed on by all ranks (in the all_reduce), or one would wait alone
                out_of_time = cfg.max_seconds is not None and time.perf_counter() - t_start > cfg.max_seconds
                if world > 1:
                    import torch.distributed as dist

                    b = batch.num_graphs
                    flags = [float(stop.set), float(out_of_time)]
                    red = torch.tensor([float(b), loss.detach().float().item() * b, *flags],
                                       dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
                    dist.all_reduce(red)
                    b_global = red[0].item()
                    loss_value = red[1].item() / b_global
                    stop_now, out_of_time = red[2].item() > 0, red[3].item() > 0
                    loss = loss * (b * world / b_global)
                else:
                    loss_value, stop_now = loss.item(), stop.set
                if not math.isfinite(loss_value):
                    idx = batch.index.tolist()
                    shown = ", ".join(map(str, idx[:8])) + (", ..." if len(idx) > 8 else "")
                    raise FloatingPointError(
                        f"non-finite training loss {loss_value} at step {step + 1} (epoch {epoch + 1}, batch "
                        f"{consumed + 1} of {steps_per_epoch[epoch]}; {batch.num_graphs} graphs, "
                        f"{batch.num_nodes} nodes; dataset items [{shown}])")
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(model)
                step += 1
                run_steps += 1
                consumed += 1
                losses.append(loss_value)
                g_epoch += batch.num_graphs * world
                n_epoch += batch.num_nodes * world
                if bar.disable is False:
                    dt = max(1e-9, time.perf_counter() - t_epoch)
                    bar.set_postfix(loss=f"{loss_value:.4g}", graphs_s=f"{g_epoch / dt:.0f}",
                                    nodes_s=f"{n_epoch / dt:.0f}", refresh=False)
                    bar.update(1)
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    saved = checkpoint(consumed)
                if stop_now:
                    interrupted = stopped = True
                    break
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    stopped = True
                    break
                if out_of_time:
                    stopped = True
                    if main_proc:
                        print(f"time limit {cfg.max_seconds:.0f} s reached at step {step}", file=sys.stderr)
                    break
            bar.close()
            seen_graphs += g_epoch
            seen_nodes += n_epoch
            epoch_times.append((g_epoch, time.perf_counter() - t_epoch))
            if stopped:
                break
            epoch += 1
            consumed = 0
            sampler.set_epoch(epoch)
            if cfg.eval_every_epoch and test_set is not None and main_proc:
                eval_model = _eval_model(model, ema, task)
                history.append({"epoch": epoch, **evaluate_model(eval_model, task, test_set,
                                                                 max_nodes=cfg.max_nodes * 2, progress=cfg.progress,
                                                                 desc=f"evaluate epoch {epoch}")[2]})
                if cfg.progress:
                    print(f"epoch {epoch}: " + _fmt(history[-1]), file=sys.stderr)
    seconds = time.perf_counter() - t_start
    saved = checkpoint(consumed) or saved
    if interrupted:
        msg = f"interrupted at step {step}" + (f"; checkpoint written to {saved} (resume with --resume {saved})"
                                               if saved else "; no --out folder, so no checkpoint was written")
        if main_proc:
            print(msg, file=sys.stderr)
        raise KeyboardInterrupt(msg)

    result_model = _eval_model(model, ema, task)
    metrics, held_out = {}, {}
    if test_set is not None and main_proc:
        pred, y, metrics = evaluate_model(result_model, task, test_set, max_nodes=cfg.max_nodes * 2,
                                          progress=cfg.progress, desc="evaluate held-out")
        held_out = dict(pred=pred, target=y)
    divergence = divergence_reasons(losses, steps_per_epoch[0], **held_out)
    if divergence and main_proc:
        print(f"warning: the run looks diverged: {'; '.join(divergence)}", file=sys.stderr)
    throughput = {"graphs_per_s": seen_graphs / seconds if seconds else 0.0,
                  "nodes_per_s": seen_nodes / seconds if seconds else 0.0,
                  "steps": run_steps, "seconds": seconds, "warm_graphs_per_s": _warm_rate(epoch_times[1:])}
    return FitResult(result_model.eval(), losses, metrics, throughput, step, saved, False, history, divergence)


def _warm_rate(epochs: list) -> Optional[float]:
    graphs, seconds = sum(g for g, _ in epochs), sum(s for _, s in epochs)
    return graphs / seconds if seconds > 0 else None


def _eval_model(model: nn.Module, ema: Optional[ModelEMA], task) -> nn.Module:
    if ema is None:
        return model
    return ema.copy_to(copy.deepcopy(model))


def _fmt(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
