"""Thin setup: CMakeLists.txt is the build description; this drives it with CMake + Ninja.

Like other PyTorch extensions (flash-attention, pyg-lib, torch-scatter), the extension compiles
against the torch already installed, so install torch first and build without isolation:
    pip install "setuptools>=64" wheel "pybind11>=2.12" ninja "cmake>=3.18"
    pip install --no-build-isolation .          # or -e . (development), or the sdist / wheel
Any other way fails in one line saying so, before CMake starts.
Environment: NNFF_CUDA=1 / 0 forces the CUDA kernels on / off (default: on when nvcc is
found and torch has CUDA), NNFF_CUDA_ARCHS="80;90", MAX_JOBS=<parallel compile jobs>,
NNFF_SKIP_EXT=1 installs the pure-Python package only (no torch needed to build it).
"""
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from functools import lru_cache
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build import build
from setuptools.command.build_ext import build_ext
from setuptools.errors import SetupError

ROOT = Path(__file__).resolve().parent
#: what the extension build needs besides torch: pip requirement -> (import name or program, minimum version)
BUILD_TOOLS = {"pybind11>=2.12": ("pybind11", (2, 12)), "cmake>=3.18": ("cmake", (3, 18)), "ninja": ("ninja", None)}
NO_ISOLATION = "then `pip install --no-build-isolation <this folder or sdist>`"


def _version(text: str) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:2])


def _program(name: str):
    """The path of a build program, looking first beside this Python (a venv's pip-installed cmake / ninja)."""
    return shutil.which(name, path=os.pathsep.join([sysconfig.get_path("scripts"), os.environ.get("PATH", "")]))


@lru_cache(maxsize=None)
def _check_build_environment() -> dict:
    """Paths of cmake and ninja, after checking torch and the build tools; a one-line SetupError otherwise."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise SetupError("nnformer_fast: the build cannot import torch (the extension compiles against the "
                         "installed torch): install torch first, " + NO_ISOLATION) from None
    missing, paths = [], {}
    for requirement, (name, minimum) in BUILD_TOOLS.items():
        if name == "pybind11":
            try:
                import pybind11
                found = _version(pybind11.__version__)
            except ImportError:
                found = None
        else:
            paths[name] = _program(name)
            found = paths[name] and (minimum is None or _version(
                subprocess.run([paths[name], "--version"], capture_output=True, text=True).stdout))
        if not found or (minimum is not None and found < minimum):
            missing.append(requirement)
    if missing:
        listed = " ".join(f'"{m}"' for m in missing)
        raise SetupError(f"nnformer_fast: the build needs {', '.join(missing)}; `pip install {listed}`, "
                         f"{NO_ISOLATION}")
    return paths


def _drop_stale_cache(build_dir: Path, expected: dict) -> None:
    """Delete ``build_dir`` when its CMakeCache.txt was made by another configuration (other generator,
    source or Python) or names programs that no longer exist (a pip build environment since deleted)."""
    cache = build_dir / "CMakeCache.txt"
    if not cache.is_file():
        return
    entries = dict(re.findall(r"^([A-Za-z_]\w*):\w+=(.*)$", cache.read_text(errors="replace"), re.M))

    def same(cached, value: str) -> bool:
        return cached == value or (cached is not None and os.path.isabs(value)
                                   and Path(cached).resolve() == Path(value).resolve())
    stale = [k for k, v in expected.items() if not same(entries.get(k), v)]
    stale += [k for k in ("CMAKE_COMMAND", "CMAKE_MAKE_PROGRAM", "Python_EXECUTABLE")
              if k not in stale and entries.get(k) and not Path(entries[k]).exists()]
    if stale:
        print(f"nnformer_fast: starting a fresh CMake build in {build_dir} ({', '.join(stale)} changed or gone)")
        shutil.rmtree(build_dir)


def _want_cuda() -> bool:
    flag = os.environ.get("NNFF_CUDA", "").strip()
    if flag in ("0", "1"):
        return flag == "1"
    import torch

    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc") or (cuda_home and shutil.which(os.path.join(cuda_home, "bin", "nvcc")))
    return bool(torch.version.cuda is not None and nvcc)


class CheckedBuild(build):
    """``build`` that checks the build environment first, so a wheel build fails before copying anything."""

    def run(self) -> None:
        if self.distribution.ext_modules:
            _check_build_environment()
        super().run()


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        tools = _check_build_environment()
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        _drop_stale_cache(build_dir, {"CMAKE_HOME_DIRECTORY": str(ROOT), "CMAKE_GENERATOR": "Ninja",
                                      "CMAKE_MAKE_PROGRAM": tools["ninja"], "Python_EXECUTABLE": sys.executable})
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda = _want_cuda()
        args = [
            tools["cmake"], "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DCMAKE_MAKE_PROGRAM={tools['ninja']}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DNNFF_OUTPUT_DIR={out_dir}",
            f"-DNNFF_CUDA={'ON' if cuda else 'OFF'}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if os.environ.get("NNFF_CUDA_ARCHS"):
            args.append(f"-DNNFF_CUDA_ARCHS={os.environ['NNFF_CUDA_ARCHS']}")
        print(f"nnformer_fast: building the native extension (CUDA kernels: {'yes' if cuda else 'no'})")
        subprocess.run(args, check=True)
        build = [tools["cmake"], "--build", str(build_dir)]
        if os.environ.get("MAX_JOBS"):
            build += ["--parallel", os.environ["MAX_JOBS"]]
        subprocess.run(build, check=True)


if __name__ == "__main__":  # how pip's build backend runs this file (tests import its helpers)
    ext_modules = [] if os.environ.get("NNFF_SKIP_EXT") == "1" else [Extension("nnformer_fast._C", sources=[])]
    setup(license="MIT", ext_modules=ext_modules, cmdclass={"build": CheckedBuild, "build_ext": CMakeBuild})
