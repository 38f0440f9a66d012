"""Run-time CPU dispatch of the native kernels: every instruction set this CPU runs, forced with
NNFF_CPU_CAPABILITY in a fresh process (the choice is made once, at load time), gives the same
bits as every other one with FMA, and the baseline (no FMA) agrees within the op tolerances.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import nnformer_fast

INFO = nnformer_fast.build_info()
if not (INFO["native"] and INFO["torch_match"]):
    pytest.skip(f"native extension not usable: {INFO['error'] or INFO}", allow_module_level=True)

ENV_VAR = "NNFF_CPU_CAPABILITY"

# Every op and dtype on shapes that reach each code path: head dims with a full 16-lane
# step only (128), a partial tail (40) and no full step (8); float16 / bfloat16 rounding;
# dropout; bigin with and without biases, through `out` (relu) and recomputation (gelu);
# add_layer_norm on rows with a partial 16-lane tail.
_OUTPUTS = textwrap.dedent("""
    import sys, torch
    import nnformer_fast
    from nnformer_fast import testing
    ops = torch.ops.nnformer_fast
    graph = testing.FAMILIES["diamond"]()
    n = graph.num_nodes
    rel = (graph.rel_rowptr, graph.rel_col, graph.rel_tperm)
    csr = (graph.adj_rowptr, graph.adj_col, graph.adjt_rowptr, graph.adjt_col)
    gen = torch.Generator().manual_seed(0)
    out = {"capability": nnformer_fast.build_info()["cpu_capability"]}
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for dh in (128, 40, 8):
            q, k, v, do = (torch.randn(n, 4, dh, generator=gen).to(dtype) for _ in range(4))
            for p in (0.0, 0.3):
                o, lse, w = ops.dag_attention_fwd(q, k, v, *rel, dh ** -0.5, p, 5)
                grads = ops.dag_attention_bwd(do, q, k, v, o, lse, w, *rel, dh ** -0.5, p, 5)
                out[f"attn {dtype} {dh} {p}"] = [o, lse, w, *grads]
        h, g, dy = (torch.randn(n, 70, generator=gen).to(dtype) for _ in range(3))
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        bh, bg = (torch.randn(70, generator=gen).to(acc) for _ in range(2))
        y = ops.bigin_fwd(h, g, *csr, "relu")
        out[f"bigin relu {dtype}"] = [y, *ops.bigin_bwd(dy, None, None, *csr, "relu", None, None, y)]
        y = ops.bigin_fwd(h, g, *csr, "gelu", bh, bg)
        out[f"bigin gelu {dtype}"] = [y, *ops.bigin_bwd(dy, h, g, *csr, "gelu", bh, bg)]
        out[f"dropout {dtype}"] = [ops.dropout_fwd(h, 0.3, 7)]
        x, ds = (torch.randn(n, 70, generator=gen).to(acc) for _ in range(2))
        scale, weight, bias = (torch.randn(70, generator=gen).to(acc) for _ in range(3))
        s, o, mean, rstd = ops.add_layer_norm_fwd(x, h, scale, weight, bias, 1e-5, dtype)
        grads = ops.add_layer_norm_bwd(ds, dy, s, h, scale, weight, mean, rstd, acc)
        out[f"add_layer_norm {dtype}"] = [s, o, mean, rstd, *grads]
    torch.save(out, sys.argv[1])
""")


def _run(capability: str, tmp_path, script: str = _OUTPUTS) -> subprocess.CompletedProcess:
    path = tmp_path / f"{capability}.pt"
    env = dict(os.environ, **{ENV_VAR: capability})
    return subprocess.run([sys.executable, "-c", script, str(path)], env=env, capture_output=True, text=True,
                          timeout=300)


def _outputs(capability: str, tmp_path) -> dict:
    proc = _run(capability, tmp_path)
    assert proc.returncode == 0, proc.stderr
    return torch.load(tmp_path / f"{capability}.pt", weights_only=True)


def test_build_info_names_the_capability():
    assert INFO["cpu_capabilities"][0] == "default"
    assert INFO["cpu_capability"] == INFO["cpu_capabilities"][-1]  # the best this CPU runs
    assert INFO["cpu_capability"] == "default" or INFO["cpu_flags"]


def test_capabilities_agree(tmp_path):
    """avx2 and up: bit for bit the same; default (no FMA): within the op harness tolerances."""
    outputs = {c: _outputs(c, tmp_path) for c in INFO["cpu_capabilities"]}
    fma = [c for c in outputs if c != "default"]
    for c, out in outputs.items():
        assert out.pop("capability") == c
    for c in fma[1:]:
        for key, tensors in outputs[fma[0]].items():
            for a, b in zip(tensors, outputs[c][key]):
                assert torch.equal(a, b), f"{key}: {fma[0]} and {c} differ"
    if fma:
        for key, tensors in outputs["default"].items():
            tol = {"rtol": 2e-2, "atol": 2e-2} if "16" in key else {"rtol": 1e-4, "atol": 1e-5}
            for a, b in zip(tensors, outputs[fma[0]][key]):
                torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{key}: {m}")


@pytest.mark.parametrize("capability", ["avx1024", "neon"])
def test_unknown_capability_is_refused(capability, tmp_path):
    script = textwrap.dedent("""
        import torch, nnformer_fast
        info = nnformer_fast.build_info()
        assert info["native"] and info["cpu_capability"] is None, info
        print(info["error"])
        torch.ops.nnformer_fast.dropout_fwd(torch.ones(3), 0.5, 1)
    """)
    proc = _run(capability, tmp_path, script)
    assert proc.returncode != 0
    message = f"NNFF_CPU_CAPABILITY={capability}: not a CPU capability of this build"
    assert message in proc.stdout  # build_info's error
    assert proc.stderr.strip().splitlines()[-1].startswith(f"RuntimeError: nnformer_fast CPU kernels: {message}")
