import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Triton reads TRITON_INTERPRET when its kernels are decorated: set it before anything imports
# nnformer_fast, so the Triton backend runs on the CPU interpreter where no GPU is present.
try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is a hard requirement
    pass

# The CUDA kernels on the CPU (tests/cuda_emulator), registered as the backend "cuda_emulated"
# before the test modules list the backends; where nvcc is missing it registers with the reason.
import cuda_emulator  # noqa: E402

_build_dir = Path(tempfile.mkdtemp(prefix="nnff_cuda_emulated_"))
atexit.register(shutil.rmtree, _build_dir, ignore_errors=True)
cuda_emulator.register_backend(_build_dir)
