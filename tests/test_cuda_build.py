"""The CUDA kernels as ptxas compiles them for the GPU (no GPU needed): register spills, which
the emulator cannot see. Flags and architectures come from CMakeLists.txt."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")


def _cmake_setting(pattern: str) -> str:
    match = re.search(pattern, (ROOT / "CMakeLists.txt").read_text())
    assert match, f"CMakeLists.txt no longer matches {pattern!r}"
    return match.group(1)


CUDA_FLAGS = _cmake_setting(r"\$<\$<COMPILE_LANGUAGE:CUDA>:([^>]*)>").split()
ARCHS = _cmake_setting(r'set\(NNFF_CUDA_ARCHS "([^"]*)"').split(";")


def _ptxas_report(source: Path, arch: str, out: Path) -> dict[str, tuple[int, int]]:
    """Mangled kernel name -> (registers, spill-store bytes) from ``ptxas -v``."""
    result = subprocess.run(["nvcc", "-c", "-std=c++17", *CUDA_FLAGS, f"-arch=sm_{arch}", f"-I{ROOT / 'csrc'}",
                             "-Xptxas", "-v", str(source), "-o", str(out)],
                            check=True, capture_output=True, text=True)
    report, name = {}, None
    for line in result.stderr.splitlines():
        if m := re.search(r"Function properties for (\S+)", line):
            name = m.group(1)
        elif name and (m := re.search(r"(\d+) bytes spill stores", line)):
            report[name] = [0, int(m.group(1))]
        elif name and (m := re.search(r"Used (\d+) registers", line)):
            report[name][0] = int(m.group(1))
            name = None
    return {k: tuple(v) for k, v in report.items()}


#: Spill bytes a kernel may have: one 64-bit value that ptxas parks around the divergent-warp
#: slow path it emits for each shuffle (taken only if a warp reaches a shuffle diverged, which
#: these kernels never do), as in a few attention variants for sm_80 and the fp64 scalar dq.
MAX_SPILL_BYTES = 8


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", sorted((ROOT / "csrc" / "cuda").glob("*.cu")), ids=lambda p: p.stem)
def test_kernels_keep_their_registers(source, arch, tmp_path):
    """No kernel spills registers inside its loops. Spills there came from a 64-bit division (a
    called subroutine: 16 bytes in the bf16 dk/dv kernel) and from a branch around the loads of
    idle lane groups (32 bytes in an fp64 forward); putting either back fails this test."""
    report = _ptxas_report(source, arch, tmp_path / "kernels.o")
    assert report, f"no kernels parsed from ptxas -v for {source.name}"
    spilling = {name: f"{regs} registers, {spill} bytes spilled" for name, (regs, spill) in report.items()
                if spill > MAX_SPILL_BYTES}
    assert not spilling, spilling
