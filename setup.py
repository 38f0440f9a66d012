"""Thin setup: CMakeLists.txt is the build description; this drives it with Ninja.

Install (torch must already be installed; the build imports it):
    pip install --no-build-isolation -e .
Environment: NNFF_CUDA=1 / 0 forces the CUDA kernels on / off (default: on when nvcc is
found and torch has CUDA), NNFF_CUDA_ARCHS="80;90", MAX_JOBS=<parallel compile jobs>,
NNFF_SKIP_EXT=1 installs the pure-Python package only.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _want_cuda() -> bool:
    flag = os.environ.get("NNFF_CUDA", "").strip()
    if flag in ("0", "1"):
        return flag == "1"
    try:
        import torch
        torch_cuda = torch.version.cuda is not None
    except ImportError:
        torch_cuda = False
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = shutil.which("nvcc") or (cuda_home and shutil.which(os.path.join(cuda_home, "bin", "nvcc")))
    return bool(torch_cuda and nvcc)


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cuda = _want_cuda()
        args = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DNNFF_OUTPUT_DIR={out_dir}",
            f"-DNNFF_CUDA={'ON' if cuda else 'OFF'}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if os.environ.get("NNFF_CUDA_ARCHS"):
            args.append(f"-DNNFF_CUDA_ARCHS={os.environ['NNFF_CUDA_ARCHS']}")
        print(f"nnformer_fast: building the native extension (CUDA kernels: {'yes' if cuda else 'no'})")
        subprocess.run(args, check=True)
        build = ["cmake", "--build", str(build_dir)]
        if os.environ.get("MAX_JOBS"):
            build += ["--parallel", os.environ["MAX_JOBS"]]
        subprocess.run(build, check=True)


ext_modules = [] if os.environ.get("NNFF_SKIP_EXT") == "1" else [Extension("nnformer_fast._C", sources=[])]
setup(ext_modules=ext_modules, cmdclass={"build_ext": CMakeBuild})
