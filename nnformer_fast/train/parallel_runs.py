"""Independent training runs side by side in worker processes (``reproduce --jobs``).

The accuracy models of ``reproduce`` are small and gain little from a second torch thread:
on a 2-core AMD EPYC, two one-thread NAS-Bench-201 10 % runs at a time finished one run every
214 s; one run with two threads took 220 s at 100 epochs instead of 130 (about 286 s scaled;
docs/REPRODUCTION.md, budget). Each run is seeded on its own and keeps its result whatever
runs beside it.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Optional, Sequence

__all__ = ["Call", "usable_cpus", "run_calls"]

#: ``(function, args, kwargs)``: one run; the function must be importable at module level and its
#: arguments picklable (workers are spawned, not forked)
Call = tuple[Callable[..., Any], tuple, dict]


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


def run_calls(calls: Sequence[Call], *, jobs: int, threads: int,
              costs: Optional[Sequence[float]] = None) -> list:
    """The results of ``fn(*args, **kwargs)`` for every call, in the order of ``calls``. With
    ``jobs`` > 1, in that many spawned worker processes of ``threads`` torch threads each,
    started in decreasing order of ``costs`` (longest first: the last run to finish is a short
    one); otherwise one after another in this process. An error in any run is raised here
    after the pending runs are cancelled."""
    if jobs <= 1 or len(calls) <= 1:
        return [fn(*args, **kwargs) for fn, args, kwargs in calls]
    order = sorted(range(len(calls)), key=lambda i: -(costs[i] if costs is not None else 0.0))
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(calls)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))
    try:
        futures = {i: pool.submit(calls[i][0], *calls[i][1], **calls[i][2]) for i in order}
        results = [futures[i].result() for i in range(len(calls))]
    except BaseException:  # an error or Ctrl-C: start nothing more, let the running runs end
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return results
