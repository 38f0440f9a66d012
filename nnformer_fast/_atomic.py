"""Safe output files: atomic writes (readers see the old file or the complete new one, never a
torn one), removal of the temporary files a killed writer left, and a check that an output
folder can be written before long work starts."""
from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

__all__ = ["atomic_open", "atomic_write_bytes", "remove_stale_temporaries", "writable_folder"]


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; when the block succeeds it is flushed, fsynced
    and renamed over ``path`` (then the folder is fsynced, so the rename survives a power
    loss). When the block raises, the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path, os.getpid())
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _temporary(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.tmp{pid}")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that :func:`atomic_open` of ``path`` left behind when its
    process was killed (``kill -9``, power loss): ``.<name>.tmp<PID>`` beside ``path`` whose
    process is gone, and the calling process's own (which is not writing ``path`` while it
    calls this; a restarted container often reuses the PID). Returns the removed paths."""
    path = Path(path)
    removed = []
    prefix = f".{path.name}.tmp"
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = tmp.name[len(prefix):]
        if not pid.isdecimal() or (int(pid) != os.getpid() and _alive(int(pid))):
            continue
        try:
            tmp.unlink()
        except FileNotFoundError:  # another process removed it first
            continue
        removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists (signal 0 checks without sending anything; off POSIX
    every process counts as alive, so nothing is removed)."""
    if os.name != "posix":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process / not a PID: leave it
        return True
    return True


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as f:
        f.write(data)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def writable_folder(folder: str | os.PathLike, what: str) -> Path:
    """Create ``folder`` and write (and remove) a file in it, so a bad output path fails
    before long work instead of after it: ``ValueError`` naming ``what`` (e.g. "--out")."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise ValueError(f"{what} {folder}: cannot write there ({e.strerror or e})") from None
    return folder
