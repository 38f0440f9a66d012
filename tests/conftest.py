import os

# Triton reads TRITON_INTERPRET when its kernels are decorated: set it before anything imports
# nnformer_fast, so the Triton backend runs on the CPU interpreter where no GPU is present.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is a hard requirement
    pass
