"""The CUDA kernels executed on the CPU (`make cuda-emulate`): the emulator itself (barriers, atomics,
a divergent barrier, a deadlock, races and overflows that the sanitizers must see), the check that
no kernel uses an intrinsic the emulator does not model, and tests/cuda_emulation/kernels.py (every
kernel against the CPU op) in the plain, ThreadSanitizer and AddressSanitizer builds."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import cuda_emulation  # noqa: E402

KERNELS = ROOT / "tests" / "cuda_emulation" / "kernels.py"
# the CPU op on the CUDA kernels' arithmetic: its portable kernel, the gather algorithm upsampled
CPU_AS_CUDA = {"HIERPARSE_CPU_CAPABILITY": "default", "HIERPARSE_CPU_UPSAMPLING": "gather"}
SANITIZER_REPORT = re.compile(r"WARNING: ThreadSanitizer|ERROR: AddressSanitizer")


@pytest.fixture(scope="module")
def emulated():
    cuda_emulation.load("plain")
    return torch.ops.hierparse_emulated


def run_sanitized(variant: str, tmp_path: Path, args: list[str], timeout: int) -> tuple[subprocess.CompletedProcess, str]:
    """Runs `python args` with `variant` loadable (built here first) and returns it with the
    sanitizer's reports (read from their files)."""
    cuda_emulation.build(variant)
    env = {**cuda_emulation.sanitized_env(variant, tmp_path / "report"), **CPU_AS_CUDA}
    process = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=timeout)
    reports = "".join(path.read_text() for path in sorted(tmp_path.glob("report*")))
    return process, reports


def test_a_barrier_reduction_and_the_atomics(emulated):
    assert emulated.emulator_selftest("block_sum", 3)[:3].tolist() == [255 * 256 // 2] * 3
    count, low, high = emulated.emulator_selftest("atomics", 3)[:3].tolist()
    assert (count, low, high) == (3 * 256, 0, 3 * 256 - 1)


def test_a_divergent_barrier_and_a_deadlock_fail_the_launch(emulated, monkeypatch):
    with pytest.raises(RuntimeError, match=r"255 threads of block 0 wait at __syncthreads while 1 have returned"):
        emulated.emulator_selftest("divergent", 2)
    monkeypatch.setenv("HIERPARSE_EMULATION_TIMEOUT", "0.5")
    with pytest.raises(RuntimeError, match=r"deadlock: 1 of 256 threads of block 0 reached a barrier within 0.5"):
        emulated.emulator_selftest("deadlock", 1)
    with pytest.raises(ValueError, match="no kernel nothing"):
        emulated.emulator_selftest("nothing", 1)


@pytest.mark.parametrize("variant,kernel,report", [
    ("thread", "race", r"ThreadSanitizer: data race(.|\n)*race_kernel"),
    ("address", "overflow", r"AddressSanitizer: heap-buffer-overflow(.|\n)*overflow_kernel"),
    ("address", "static_overflow", r"AddressSanitizer: global-buffer-overflow(.|\n)*static_overflow_kernel"),
])
def test_the_sanitizers_see_a_race_and_overflows_of_shared_memory(variant, kernel, report, tmp_path):
    """The sanitized builds do catch what they are for: a missing barrier, writes past dynamic and
    static shared memory (so that a clean run below means something)."""
    script = (f"import sys, torch; sys.path.insert(0, 'tools'); import cuda_emulation; "
              f"cuda_emulation.load('{variant}'); torch.ops.hierparse_emulated.emulator_selftest('{kernel}', 1)")
    process, reports = run_sanitized(variant, tmp_path, ["-c", script], timeout=300)
    assert process.returncode != 0 and re.search(report, reports), process.stderr[-3000:] + reports[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("variant", cuda_emulation.VARIANTS)
def test_every_cuda_kernel_matches_the_cpu_op(variant, tmp_path):
    """tests/cuda_emulation/kernels.py in one build: passes, and no sanitizer reports anything."""
    process, reports = run_sanitized(variant, tmp_path, ["-m", "pytest", "-q", "-p", "no:cacheprovider", str(KERNELS)],
                                     timeout=1500)
    assert not SANITIZER_REPORT.search(reports + process.stderr), reports[:6000] + process.stderr[-3000:]
    assert process.returncode == 0, process.stdout[-6000:] + process.stderr[-3000:]
    assert re.search(r"\d+ passed", process.stdout) and "failed" not in process.stdout


def test_the_kernel_sources_model_only_what_the_emulator_models(tmp_path):
    assert cuda_emulation.unmodelled_intrinsics() == []
    source = tmp_path / "kernel.cuh"
    source.write_text('// __ldg in a comment is fine, and so is "__shfl_sync" in a string\n'
                      "__global__ void k(float* x) {\n"
                      "  float v = __shfl_down_sync(0xffffffff, x[0], 1);\n"
                      "  atomicCAS((int*)x, 0, 1); atomicAdd(x, v);\n"
                      '  asm volatile("membar.gl;");\n'
                      "}\n")
    found = [line.split(": ", 1)[1] for line in cuda_emulation.unmodelled_intrinsics([source])]
    assert found == ["__shfl_down_sync", "atomicCAS", "asm"]


def test_an_unmodelled_intrinsic_fails_the_build(monkeypatch):
    monkeypatch.setattr(cuda_emulation, "unmodelled_intrinsics", lambda: ["csrc/cuda/x.cuh:3: __shfl_sync"])
    with pytest.raises(RuntimeError, match=r"does not model(.|\n)*x.cuh:3: __shfl_sync"):
        cuda_emulation.build("plain")


def test_the_gpu_and_the_emulated_builds_compile_the_same_kernel_headers():
    """Each .cu of csrc/cuda and its twin in csrc/emulate include one header and nothing else."""
    gpu = {path.stem.removesuffix("_cuda"): path for path in (ROOT / "csrc" / "cuda").glob("*.cu")}
    emulated = {path.stem: path for path in (ROOT / "csrc" / "emulate").glob("*.cpp")}
    assert sorted(gpu) == ["common", "multilevel_ce", "ohem", "tree_min", "upsample_decode"]
    for name, path in gpu.items():
        includes = re.findall(r'#include "([^"]+)"', path.read_text())
        assert includes == [f"{name}_kernels.cuh"], path
        assert re.findall(r'#include "([^"]+)"', emulated[name].read_text()) == [f"cuda/{name}_kernels.cuh"]


def kernel_code(path: Path) -> str:
    return cuda_emulation.strip_comments(path.read_text())


def test_the_launchers_keep_to_the_backend():
    """Host-side audit, as far as reading the source settles it: every launch goes through
    launch_kernel (backend.cuh: the current stream, the launch check after every kernel, a grid of
    1 to 2^31 - 1 blocks in x only), every op entry sets the device guard, and the kernels' own host
    code copies nothing to the host but the label pre-pass's counts (the planning code they share
    with the CPU op, csrc/*_host.cpp, still reads the table and class weights on the host)."""
    cuda = ROOT / "csrc" / "cuda"
    headers = {path.name: kernel_code(path) for path in sorted(cuda.glob("*.cuh"))}
    backend = headers.pop("backend.cuh")
    assert backend.count("<<<") == 1 and "C10_CUDA_KERNEL_LAUNCH_CHECK();" in backend
    for name, code in headers.items():
        for construct in ("<<<", "getCurrentCUDAStream", "cudaStream_t", "dim3", "cudaMemcpy", "Synchronize",
                          "pin_memory", "CUDAGuard", ".item<", "is_cuda()"):
            assert construct not in code, f"{name} uses {construct}"
        assert not re.search(r"\b(threadIdx|blockIdx|blockDim|gridDim)\.[yz]\b", code), f"{name}: a 2-D or 3-D grid"
        if "HP_REGISTER_CUDA_KERNELS" in code:
            assert "const KernelDeviceGuard guard(" in code, name
    host_copies = {name: re.findall(r"\.cpu\(\)|to\(at::kCPU", code) for name, code in headers.items()}
    assert {name: found for name, found in host_copies.items() if found} == {"common_kernels.cuh": [".cpu()"]}
