"""Builds the CUDA kernels of csrc/cuda as host C++ over the emulation of csrc/emulate/cuda_emulation.h
and loads them as the library ``torch.ops.hierparse_emulated`` (the op schemas of
``torch.ops.hierparse``, with CPU tensors), in three variants: ``plain``, ``thread``
(ThreadSanitizer) and ``address`` (AddressSanitizer). A sanitized variant loads only into a
process whose sanitizer runtime came first: ``sanitized_env`` gives that process's environment.

Before building, ``check_intrinsics`` scans the kernel sources for CUDA built-ins (``__name``,
``atomicName``, inline ``asm``) that the emulation does not model, and fails the build on one: a
kernel the emulator cannot run faithfully must not pass as tested.

    python tools/cuda_emulation.py [plain|thread|address]   # build (ninja: only what changed)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
VARIANTS = ("plain", "thread", "address")
# what cuda_emulation.h models, plus compiler keywords the sources may use on the host too
MODELLED = {
    "__global__", "__device__", "__host__", "__forceinline__", "__launch_bounds__", "__grid_constant__",
    "__shared__", "__syncthreads", "__restrict__", "__CUDACC__", "__attribute__", "__VA_ARGS__",
    "atomicAdd", "atomicMin", "atomicMax",
}
# the kernel sources: the CUDA directory and the per-pixel headers it includes
KERNEL_SOURCES = ("cuda/*.cuh", "cuda/*.cu", "*.h")
BUILT_IN = re.compile(r"\b(__[A-Za-z_][A-Za-z0-9_]*|atomic[A-Z][A-Za-z]*|asm)\b")
HOST_SOURCES = ("multilevel_ce_host.cpp", "tree_min_host.cpp", "upsample_decode_host.cpp")
# a sanitizer's name in gcc, the runtimes to preload and its options variable in the sanitized
# process. libstdc++ is preloaded after ASan's runtime so that ASan's __cxa_throw interceptor finds
# the real one (google/sanitizers#934): the ops throw ValueError on bad input.
SANITIZERS = {
    "thread": ("thread", ["libtsan.so"], "TSAN_OPTIONS", "halt_on_error=1 report_signal_unsafe=0"),
    "address": ("address", ["libasan.so", "libstdc++.so"], "ASAN_OPTIONS", "detect_leaks=0 halt_on_error=1"),
}


def strip_comments(text: str) -> str:
    """C++ source without its comments and string literals (their words name no built-in)."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return re.sub(r'"(?:\\.|[^"\\])*"', '""', text)


def unmodelled_intrinsics(paths: list[Path] | None = None) -> list[str]:
    """``file:line: name`` for every CUDA built-in in the kernel sources that the emulation does not model."""
    if paths is None:
        paths = sorted({p for pattern in KERNEL_SOURCES for p in CSRC.glob(pattern)})
    found = []
    for path in paths:
        for number, line in enumerate(strip_comments(path.read_text()).splitlines(), 1):
            for name in BUILT_IN.findall(line):
                if name not in MODELLED:
                    found.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{number}: {name}")
    return found


def check_intrinsics() -> None:
    found = unmodelled_intrinsics()
    if found:
        raise RuntimeError("the CUDA emulation does not model what these kernel sources use (model it in "
                           "csrc/emulate/cuda_emulation.h and tools/cuda_emulation.py, or do without):\n  "
                           + "\n  ".join(found))


def runtime_path(library: str) -> str:
    """The gcc sanitizer runtime to preload (``gcc -print-file-name``)."""
    path = subprocess.run(["gcc", f"-print-file-name={library}"], capture_output=True, text=True,
                          check=True).stdout.strip()
    if not os.path.isabs(path):
        raise RuntimeError(f"gcc has no {library} (install the compiler's sanitizer runtimes)")
    return os.path.realpath(path)


def sanitized_env(variant: str, report: Path | None = None) -> dict[str, str]:
    """The environment of a process that loads `variant` (HIERPARSE_EMULATION): for a sanitized one,
    its runtime preloaded, its reports written to files `report`.<pid> when given (a sanitizer that
    halts the process would otherwise report into a capture that is lost), one torch thread (the
    uninstrumented OpenMP runtime's synchronisation is invisible to TSan)."""
    env = {**os.environ, "HIERPARSE_EMULATION": variant}
    if variant == "plain":
        return env
    _, libraries, variable, options = SANITIZERS[variant]
    if report is not None:
        options += f" log_path={report}"
    env.update({variable: options}, LD_PRELOAD=":".join(runtime_path(lib) for lib in libraries), OMP_NUM_THREADS="1")
    return env


def build(variant: str = "plain", verbose: bool = False) -> Path:
    """Builds a variant into build/cuda_emulation/<variant> (ninja: only what changed) and returns its
    shared library; loads nothing."""
    from torch.utils import cpp_extension

    if variant not in VARIANTS:
        raise ValueError(f"unknown CUDA emulation variant {variant!r}; choose from {', '.join(VARIANTS)}")
    check_intrinsics()
    name = f"hierparse_emulated_{variant}"
    flags = ["-DHIERPARSE_EMULATE_CUDA", "-fno-trapping-math", "-Wno-psabi"]
    if variant == "plain":
        flags.append("-O2")
        ldflags = []
    else:
        flags += ["-O1", "-g", "-fno-omit-frame-pointer", f"-fsanitize={SANITIZERS[variant][0]}",
                  "-DHIERPARSE_EMULATION_FEW_TYPES"]
        ldflags = [f"-fsanitize={SANITIZERS[variant][0]}"]
    directory = ROOT / "build" / "cuda_emulation" / variant
    directory.mkdir(parents=True, exist_ok=True)
    sources = [*sorted((CSRC / "emulate").glob("*.cpp")), *(CSRC / s for s in HOST_SOURCES)]
    # built here, loaded by the caller: a sanitized library cannot load into this process; the
    # compiler must not inherit a preloaded sanitizer runtime either
    preload = os.environ.pop("LD_PRELOAD", None)
    try:
        cpp_extension._write_ninja_file_and_build_library(
            name=name, sources=[str(s) for s in sources], extra_cflags=flags, extra_cuda_cflags=None,
            extra_sycl_cflags=None, extra_ldflags=ldflags, extra_include_paths=[str(CSRC)],
            build_directory=str(directory), verbose=verbose, with_cuda=False, with_sycl=False)
    finally:
        if preload is not None:
            os.environ["LD_PRELOAD"] = preload
    return directory / f"{name}.so"


def load(variant: str = "plain") -> None:
    """Builds a variant and loads it into this process (``torch.ops.hierparse_emulated``)."""
    import torch

    torch.ops.load_library(str(build(variant)))


if __name__ == "__main__":
    for arg in sys.argv[1:] or ["plain"]:
        print(build(arg, verbose=True))
