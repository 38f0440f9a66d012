"""Build the next batches in a background thread while the current training step runs."""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator, TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")
_END = object()


def prefetch(iterable: Iterable[T], depth: int = 2) -> Iterator[T]:
    """The items of ``iterable`` in order, produced up to ``depth`` ahead by a daemon thread.

    For a DataLoader without worker processes: batch building (numpy gathers, CSR builds)
    overlaps the training step, whose backward pass and kernels release the GIL, with no
    inter-process copies. ``iter(iterable)`` is called at the first ``next``, in the
    caller's thread. An exception raised while producing an item is raised here, in place
    of that item. Closing the generator (leaving a ``with contextlib.closing(...)`` block)
    stops the thread once the item it is building is done.
    """
    if depth < 1:
        raise ValueError(f"prefetch: depth must be >= 1, got {depth}")
    return _prefetched(iterable, depth)


def _prefetched(iterable: Iterable[T], depth: int) -> Iterator[T]:
    items = iter(iterable)
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((_END, exc))

    worker = threading.Thread(target=produce, name="nnformer_fast-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item, exc = slots.get()
            if exc is not None:
                raise exc
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        worker.join()
