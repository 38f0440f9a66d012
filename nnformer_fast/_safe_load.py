"""Reading PyTorch ``.pt`` files without running code and without trusting damaged bytes.

:func:`load_torch_file` checks the CRC-32 of every member of the zip archive (a flipped byte
in a tensor, the pickle or the optimizer state fails it), then unpickles with
``torch.load(weights_only=True)``, which builds only tensors and plain containers of
primitives and refuses any other global. There is no fallback: a file it refuses is
refused, in one line naming the file.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["load_torch_file"]


def load_torch_file(path: str | os.PathLike, what: str, *, error: type[Exception] = ValueError,
                    map_location="cpu") -> Any:
    """The object stored in the ``.pt`` file ``path`` (a torch zip archive).

    Raises ``error`` (a ValueError subclass) with one line ``"<path>: not a readable <what>
    (<why>)"`` when the file is not a zip archive, a member fails its CRC-32 check, or
    ``weights_only`` unpickling refuses it (e.g. a global that could run code)."""
    path = Path(path)
    try:
        f = open(path, "rb")  # one open file for the check and the load: a file replaced meanwhile is not mixed in
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or _why(e)})") from None
    with f:
        try:
            with zipfile.ZipFile(f) as z:
                bad = z.testzip()
        except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:  # OSError: a seek past a truncated end
            raise error(f"{path}: not a readable {what} (not a complete zip archive: {_why(e)})") from None
        if bad is not None:
            raise error(f"{path}: not a readable {what} (member {bad!r} fails its CRC-32 check: the file was "
                        "changed or damaged after it was written)")
        f.seek(0)
        try:
            return torch.load(f, map_location=map_location, weights_only=True)
        except Exception as e:  # UnpicklingError for refused globals, RuntimeError for bad records, ...
            raise error(f"{path}: not a readable {what} (refused by torch.load(weights_only=True): "
                        f"{_why(e)})") from None


def _why(e: Exception) -> str:
    """One short line of ``e``: torch's weights_only refusal names the offending global on
    a later line (the first tells how to load the file unsafely); others use their first."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    reason = next((s for s in lines if "Unsupported global" in s or "WeightsUnpickler error" in s),
                  lines[0] if lines else type(e).__name__)
    reason = reason.replace("WeightsUnpickler error: ", "").split(". ")[0].rstrip(".")  # not torch's advice
    return reason if len(reason) <= 160 else reason[:157] + "..."
