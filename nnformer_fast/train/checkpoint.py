"""Checkpoints that cannot run code and cannot be half-written.

Writing: ``torch.save`` into a temporary file in the target's folder, flush + fsync, then
``os.replace`` onto the target and fsync the folder — a crash at any point leaves either the
old checkpoint or the new one, never a torn file. Reading (:func:`load_torch_file`): the
CRC-32 of every member of the zip archive is checked (a byte changed on disk in a weight, the
optimizer state or the pickle is caught), then ``torch.load(weights_only=True)``, so a
checkpoint holds only tensors and plain containers of primitives (RNG states are stored as
tensors). A file that fails its CRCs, does not unpickle, lacks the format tag, or was written
for another task / model configuration is refused with :class:`CheckpointError`.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch

from .._atomic import atomic_open, remove_stale_temporaries
from .._safe_load import load_torch_file

__all__ = ["CheckpointError", "FORMAT", "save_checkpoint", "claim_checkpoint", "load_checkpoint", "check_compatible",
           "capture_rng_state", "restore_rng_state", "gather_rng_states"]

FORMAT = "nnformer_fast.train/1"


class CheckpointError(ValueError):
    """A checkpoint that is corrupt, of another format, or for another task/model."""


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Atomically write ``state`` (plus the format tag) to ``path``; returns the path."""
    with atomic_open(path) as f:
        torch.save({"format": FORMAT, **state}, f)
    return Path(path)


def claim_checkpoint(path: str | os.PathLike, *, resume: Optional[str], overwrite: bool) -> None:
    """Before a run writes ``path``: refuse (:class:`CheckpointError`) to replace the checkpoint
    of an earlier run unless this run resumes or ``overwrite``; remove the temporary files a
    killed writer of ``path`` left (:func:`remove_stale_temporaries`)."""
    path = Path(path)
    if path.exists() and not resume and not overwrite:
        raise CheckpointError(f"{path} holds the checkpoint of an earlier run: continue it with --resume "
                              "(resume='auto'), replace it with --overwrite (overwrite=True), or train into another "
                              "--out")
    remove_stale_temporaries(path)


def load_checkpoint(path: str | os.PathLike, *, task: Optional[str] = None,
                    model_config: Optional[Mapping[str, Any]] = None, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    With ``task`` / ``model_config`` given, refuse a checkpoint saved for another task or
    another model configuration (the message lists the differing keys).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    state = load_torch_file(path, "checkpoint", error=CheckpointError, map_location=map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not an nnformer_fast training checkpoint (format {found!r}, "
                              f"expected {FORMAT!r})")
    check_compatible(state, task=task, model_config=model_config, where=str(path))
    return state


def check_compatible(state: Mapping[str, Any], *, task: Optional[str] = None,
                     model_config: Optional[Mapping[str, Any]] = None, where: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` when ``state`` was saved for another task or model."""
    if task is not None and state.get("task") != task:
        raise CheckpointError(f"{where}: saved for the {state.get('task')!r} task, not {task!r}")
    if model_config is not None:
        saved = dict(state.get("model_config") or {})
        want = dict(model_config)
        diff = {k: (saved.get(k), want.get(k)) for k in sorted(set(saved) | set(want)) if saved.get(k) != want.get(k)}
        if diff:
            desc = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in diff.items())
            raise CheckpointError(f"{where}: model configuration differs ({desc})")


# ---------------------------------------------------------------------------- RNG states
def capture_rng_state(*generators: torch.Generator) -> dict:
    """torch (CPU and every CUDA device), numpy and python RNG states, and those of
    ``generators`` (in order, under ``"generators"``), as tensors and numbers."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]), "numpy_has_gauss": int(np_state[3]), "numpy_gauss": float(np_state[4]),
        "python": torch.tensor(py_internal, dtype=torch.int64), "python_version": int(py_version),
        "python_gauss": None if py_gauss is None else float(py_gauss),
        "generators": [g.get_state() for g in generators],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any], *generators: torch.Generator) -> None:
    """Undo :func:`capture_rng_state` (pass the same ``generators``)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    random.setstate((state["python_version"], tuple(int(v) for v in state["python"].tolist()),
                     state["python_gauss"]))
    for g, s in zip(generators, state["generators"], strict=True):
        g.set_state(s)
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def gather_rng_states(*generators: torch.Generator) -> list[dict]:
    """Every rank's :func:`capture_rng_state`, indexed by rank, on every rank: a collective
    under ``torch.distributed`` (all ranks must call it); ``[own state]`` otherwise."""
    import torch.distributed as dist

    state = capture_rng_state(*generators)
    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    states = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states
