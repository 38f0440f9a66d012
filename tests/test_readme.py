"""The README's Python code runs as written: a user's first copy-paste must not raise."""
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RESNET18 = ROOT.parent / "shared" / "data" / "nnlqp_resnet18_noweight.onnx"


def _python_blocks(section: str) -> list[str]:
    """The ```python blocks under the README heading ``## <section>``."""
    text = (ROOT / "README.md").read_text()
    body = re.search(rf"^## {section}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert body, f"README.md has no '## {section}' section"
    blocks = re.findall(r"```python\n(.*?)```", body.group(1), re.S)
    assert blocks, f"README.md has no python block under '## {section}'"
    return blocks


def test_quick_start_trains_evaluates_and_predicts(tmp_path, monkeypatch):
    train, direct = _python_blocks("Quick start")
    # a short run (the README's epochs take a minute): the same calls, fewer steps
    assert "epochs=5," in train
    train = train.replace("epochs=5,", "epochs=1, max_steps=2,")
    if RESNET18.is_file():
        train = train.replace('"model.onnx"', repr(str(RESNET18)))
    else:
        train = "\n".join(line for line in train.splitlines() if "predict(" not in line.split("#")[0]
                          or "import" in line)
    monkeypatch.chdir(tmp_path)  # runs/quickstart lands here
    namespace: dict = {}
    exec(compile(train, "README.md quick start", "exec"), namespace)
    assert {"mape", "tau", "acc@10"} <= set(namespace["result"].metrics)
    assert (tmp_path / "runs" / "quickstart" / "last.pt").is_file()

    namespace = {}
    exec(compile(direct, "README.md quick start (models and ops)", "exec"), namespace)
    assert namespace["latency"].shape == (2, 1) and torch.isfinite(namespace["latency"]).all()
    assert namespace["out"].shape == namespace["q"].shape and namespace["y"].shape == (5, 64)
    if not RESNET18.is_file():
        pytest.skip(f"{RESNET18} absent: predict on an ONNX file was not run")
