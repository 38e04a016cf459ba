"""Builds unet_fast._C: the C++ CPU kernels always, the CUDA kernels with UNET_FAST_CUDA=1.

The extension compiles against the torch already installed, so install with
``pip install --no-build-isolation``: build isolation would fetch a different torch.
"""

import glob
import os
import sys

from setuptools import setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:
    sys.exit(
        "unet_fast compiles against the torch you run: install torch first, then "
        "`pip install --no-build-isolation .` (see README.md, Install)."
    )


def _want_cuda() -> bool:
    if os.environ.get("UNET_FAST_CUDA", "0") != "1":
        return False
    missing = []
    if torch.version.cuda is None:
        missing.append(f"a CUDA build of torch (this is {torch.__version__})")
    if cpp_extension.CUDA_HOME is None:
        missing.append("a CUDA toolkit (set CUDA_HOME to the folder holding bin/nvcc)")
    if missing:
        sys.exit("UNET_FAST_CUDA=1 needs " + " and ".join(missing))
    return True


def _extension():
    debug = os.environ.get("UNET_FAST_DEBUG", "0") == "1"
    opt = ["-O0", "-g"] if debug else ["-O3", "-g0"]
    # No fused multiply-adds the source does not ask for: GCC would contract a * b + c where it
    # vectorizes, differently in each ISA clone and template instantiation, so bf16 computed in
    # fp32 would stop being bit for bit the fp32 computation rounded (it did, on AVX-512 BF16).
    cxx = opt + ["-fopenmp", "-ffp-contract=off"]
    sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
    kwargs = dict(extra_link_args=["-fopenmp"])
    if _want_cuda():
        sources += sorted(glob.glob("csrc/cuda/*.cpp")) + sorted(glob.glob("csrc/cuda/*.cu"))
        arch = os.environ.get("UNET_FAST_CUDA_ARCH", "80;90").split(";")
        nvcc = (["-O0", "-g", "-lineinfo"] if debug else ["-O3"]) + [f"-gencode=arch=compute_{a},code=sm_{a}" for a in arch]
        return cpp_extension.CUDAExtension(
            "unet_fast._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs
        )
    return cpp_extension.CppExtension(
        "unet_fast._C", sources, extra_compile_args={"cxx": cxx}, **kwargs
    )


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)},
)
