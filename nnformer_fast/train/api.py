"""``evaluate`` and ``predict`` on saved checkpoints."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .checkpoint import CheckpointError, load_checkpoint
from .tasks import get_task, load_dataset, split_dataset

__all__ = ["load_model", "evaluate", "predict", "onnx_files"]


def load_model(checkpoint: str | os.PathLike, *, ema: bool = True, device="auto"):
    """(model in eval mode, task, checkpoint state) from a training checkpoint; the EMA
    weights when the run kept them and ``ema``. ``device``: auto (CUDA when available), cpu,
    cuda, cuda:N."""
    from .loop import resolve_device

    device = resolve_device(device)
    state = load_checkpoint(checkpoint)
    task = get_task(state["task"], **state["model_config"])
    model = task.build_model()
    try:
        model.load_state_dict(state["ema"] if ema and state.get("ema") is not None else state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{checkpoint}: weights do not fit the saved model configuration: "
                              f"{str(e).splitlines()[0]}") from None
    return model.to(device).eval(), task, state


def evaluate(checkpoint: str | os.PathLike, data: Optional[str] = None, *, split: str = "test",
             max_nodes: int = 8192, device: str = "auto", precision: str = "fp32", progress: bool = True,
             **data_options) -> dict:
    """Metrics (docs/TRAINING.md) of a checkpoint on ``data`` (default: the data it was trained on).

    split: ``"test"`` (the held-out part, re-split with the run's settings), ``"train"`` or
    ``"all"``. ``device``: auto (CUDA when available), cpu, cuda, cuda:N. ``progress``: bars
    while the data loads and while it is evaluated. ``data_options``: ``fmt``,
    ``nb201_device``, ``accuracy_dataset``, ``target``, ``nb201_encoding``.
    """
    from .loop import evaluate_model, resolve_device

    if split not in ("test", "train", "all"):
        raise ValueError(f"unknown split {split!r}; choose test, train or all")
    device = resolve_device(device)
    model, task, state = load_model(checkpoint, device=device)
    run = state.get("train_config", {})
    if data is None:
        data = run.get("data")
        for key, opt in (("data_format", "fmt"), ("nb201_device", "nb201_device"),
                         ("accuracy_dataset", "accuracy_dataset"), ("accuracy_target", "target"),
                         ("nb201_encoding", "nb201_encoding")):
            if key in run and run[key] is not None:
                data_options.setdefault(opt, run[key])
    full = load_dataset(task.name, data, in_chans=task.model_config.get("in_chans", 32), progress=progress,
                        **data_options)
    task.check_dataset(full, f"dataset {data or 'default'}")
    if split == "all":
        ds = full
    else:
        train, test = split_dataset(task.name, full, test_fraction=run.get("test_fraction", 0.2),
                                    seed=run.get("split_seed", 0), train_limit=run.get("train_limit"))
        ds = test if split == "test" else train
    return evaluate_model(model, task, ds, max_nodes=max_nodes, device=device, precision=precision,
                          progress=progress, desc=f"evaluate {split}")[2]


def onnx_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Expand files and folders (recursively, ``*.onnx``) into a sorted file list."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.rglob("*.onnx"))
            if not found:
                raise FileNotFoundError(f"no .onnx files under {p}")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise FileNotFoundError(f"ONNX file or folder not found: {p}")
    return out


@torch.no_grad()
def predict(checkpoint: str | os.PathLike, paths: Sequence[str | os.PathLike] | str, *, batch_size: int = 1,
            device: str = "auto", progress: bool = True,
            on_error: Optional[Callable[[Path, Exception], None]] = None) -> list[tuple[str, float]]:
    """Predicted latency (ms) of every ONNX file in ``paths`` (files or folders) at
    ``batch_size``: a list of ``(path, ms)`` in file order. Needs a latency checkpoint.
    ``device``: auto (CUDA when available), cpu, cuda, cuda:N; ``progress``: a bar while the
    ONNX files are read. A file that cannot be read raises its ``ValueError`` /
    ``OSError``; with ``on_error`` given, it is passed ``(file, error)`` instead and the other
    files are still predicted (the list then lacks that file)."""
    from tqdm.auto import tqdm

    from ..data.latency import collate_latency
    from ..data.onnx_features import load_onnx_graph
    from .loop import resolve_device

    device = resolve_device(device)
    model, task, _ = load_model(checkpoint, device=device)
    if task.name != "latency":
        raise CheckpointError(f"{checkpoint}: a {task.name!r} checkpoint cannot predict latency of ONNX files")
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files = onnx_files(paths)
    items, read = [], []
    for f in tqdm(files, desc="read ONNX", unit="file", disable=not progress, dynamic_ncols=True, leave=False):
        try:
            g = load_onnx_graph(f, batch_size)
        except (ValueError, OSError) as e:
            if on_error is None:
                raise
            on_error(f, e)
            continue
        items.append((torch.from_numpy(np.asarray(g.x, np.float32)), torch.from_numpy(np.asarray(g.edge_index)),
                      torch.from_numpy(np.asarray(g.static, np.float32)), torch.tensor(0.0)))
        read.append(f)
    out = []
    for s in range(0, len(items), 64):
        x, graph, static, _ = collate_latency(items[s:s + 64])
        pred = model(x.to(device), graph.to(device), static.to(device)).reshape(-1).float().cpu().tolist()
        out += list(zip(map(str, read[s:s + 64]), pred))
    return out
