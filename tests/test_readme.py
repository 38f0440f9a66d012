"""The README's quick start runs as written: a user's first copy-paste must not raise."""
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RESNET18 = ROOT.parent / "shared" / "data" / "nnlqp_resnet18_noweight.onnx"


def _quick_start() -> str:
    block = re.search(r"## Quick start\s+```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md has no python block under '## Quick start'"
    return block.group(1)


def test_quick_start_runs():
    code = _quick_start()
    if RESNET18.is_file():
        code = code.replace('"model.onnx"', repr(str(RESNET18)))
    else:  # its last example reads an ONNX file
        code = code.split("# From an ONNX file")[0]
    namespace: dict = {}
    exec(compile(code, "README.md quick start", "exec"), namespace)
    assert namespace["latency"].shape == (2, 1) and torch.isfinite(namespace["latency"]).all()
    if "g" in namespace:
        assert namespace["g"].x.shape[1] == 192
    else:
        pytest.skip(f"{RESNET18} absent: the ONNX example was not run")
