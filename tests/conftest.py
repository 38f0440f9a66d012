import builtins
import os

import pytest

# Triton reads TRITON_INTERPRET when its kernels are decorated: set it before anything imports
# nnformer_fast, so the Triton backend runs on the CPU interpreter where no GPU is present.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is a hard requirement
    pass


@pytest.fixture
def hide_packages(monkeypatch):
    """hide_packages("sklearn", ...): importing those top-level packages raises ImportError."""

    def hide(*names: str) -> None:
        real_import = builtins.__import__

        def guarded_import(name, *args, **kwargs):
            if name.split(".")[0] in names:
                raise ImportError(f"{name} hidden by the test")
            return real_import(name, *args, **kwargs)

        monkeypatch.setattr(builtins, "__import__", guarded_import)

    return hide
