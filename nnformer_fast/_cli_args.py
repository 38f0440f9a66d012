"""Helpers shared by the command lines (``nnformer-fast``, its subcommands, ``make demo``): an
argparse integer type, one-line messages, and the choice of torch's thread count on a small,
shared machine."""
from __future__ import annotations

import argparse
import math
import os
import time
from typing import Callable

import torch

__all__ = ["int_at_least", "one_line", "busy_cores", "pick_threads"]


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (otherwise a usage error, exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def one_line(message, limit: int = 300) -> str:
    """``str(message)`` on one line (newlines and runs of spaces become single spaces), cut to
    ``limit`` characters: an error about a file never echoes the file."""
    text = " ".join(str(message).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def busy_cores(window_s: float = 1.0) -> float | None:
    """Cores kept busy by other processes over ``window_s`` seconds while this one sleeps, from
    /proc/stat; None where that file does not describe exactly this machine's CPUs (a container
    may see its host's). Unlike the load average, it does not count this process's own recent
    work, nor the extension build that ``make demo`` runs just before."""
    def snapshot() -> tuple[list[int], int]:
        with open("/proc/stat") as f:
            lines = f.read().splitlines()
        return [int(v) for v in lines[0].split()[1:9]], sum(line[:3] == "cpu" and line[3:4].isdigit()
                                                            for line in lines)
    try:
        before, ncpu = snapshot()
        time.sleep(window_s)
        after, _ = snapshot()
    except (OSError, ValueError, IndexError):
        return None
    if ncpu != os.cpu_count():
        return None
    spent = [b - a for a, b in zip(before, after)]  # user nice system idle iowait irq softirq steal
    total = sum(spent)
    return ncpu * (1.0 - (spent[3] + spent[4]) / total) if total > 0 else 0.0


def pick_threads() -> int:
    """1 thread when other work keeps a core of a 2-core machine busy (a second OpenMP thread
    that has to wait for a busy core makes every op 10x slower); otherwise 1 or 2, whichever
    runs a small training-like op mix faster."""
    ncpu = os.cpu_count() or 1
    if ncpu <= 2:
        busy = busy_cores()
        if (busy if busy is not None else os.getloadavg()[0]) > 0.5:
            torch.set_num_threads(1)
            return 1
    best, best_t = 1, math.inf
    a, w = torch.randn(2048, 128), torch.randn(128, 512)
    for n in sorted({1, min(2, ncpu)}):
        torch.set_num_threads(n)
        (a @ w).relu_().sum()
        t = time.perf_counter()
        for _ in range(20):
            (a @ w).relu_().sum()
        dt = time.perf_counter() - t
        if dt < best_t:
            best, best_t = n, dt
    torch.set_num_threads(best)
    return best
