"""Builds hierparse and its native extension ``hierparse._C``.

``CppExtension`` (C++ kernels, OpenMP) always; ``CUDAExtension`` (C++ and CUDA kernels) when torch
is a CUDA build and a CUDA toolkit is found, or when ``FORCE_CUDA=1``.
"""

import glob
import os

from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
import torch


# GPU architectures of a CUDA build on a machine where torch sees no GPU (with one, torch builds for
# the cards it sees): Turing to Hopper, and PTX for newer cards (CUDA 13 no longer targets Volta).
DEFAULT_CUDA_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"


def use_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def extension():
    sources = [*sorted(glob.glob("csrc/*.cpp")), *sorted(glob.glob("csrc/cpu/*.cpp"))]
    cxx_flags = ["-O3", "-fopenmp", "-fno-trapping-math", "-Wno-psabi"]
    link_flags = ["-fopenmp"]
    include_dirs = [os.path.abspath("csrc")]
    if use_cuda():
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCHS
        return CUDAExtension(
            "hierparse._C",
            sources + sorted(glob.glob("csrc/cuda/*.cu")),
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]},
            extra_link_args=link_flags,
        )
    return CppExtension(
        "hierparse._C",
        sources,
        include_dirs=include_dirs,
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )


setup(
    name="hierparse",
    version="0.1.0",
    description="Coarse-to-fine image parsing with stacked networks driven by YAML class trees",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["hierparse", "hierparse.*"]),
    install_requires=[
        "torch>=2.4",
        "numpy",
        "pyyaml",
        "scipy",
        "pillow",
        "tqdm",
        "matplotlib",
        "tensorboard",
    ],
    extras_require={
        # export: hierparse export --format onnx (onnxscript: the dynamo exporter; onnxruntime: its
        # parity check and examples/onnx_parse.py). cityscapesscripts: the official Cityscapes
        # evaluation that the metrics are checked against.
        "export": ["onnx", "onnxscript", "onnxruntime"],
        "test": ["pytest", "pytest-benchmark", "hypothesis", "onnx", "onnxscript", "onnxruntime", "cityscapesscripts"],
    },
    entry_points={"console_scripts": ["hierparse = hierparse.cli:main"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
