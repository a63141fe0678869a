"""The per-pixel math header (csrc/multilevel_ce.h), compiled on its own with the host compiler.

The CUDA kernel runs the header's scalar instantiations and the CPU kernel its vector ones; the
op tests exercise the vector ones, this test the scalar ones (which no CPU code path runs),
against double-precision libm and bit for bit against the vector instantiations.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPILER = shutil.which("g++") or shutil.which("c++")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if COMPILER is None:
        pytest.skip("no C++ compiler")
    binary = tmp_path_factory.mktemp("pixel_math") / "pixel_math_check"
    # No FMA contraction, so scalar and vector code round alike (the GPU contracts; it stays within
    # the ulp bounds below).
    subprocess.run([COMPILER, "-std=c++17", "-O2", "-ffp-contract=off", "-Wno-psabi", f"-I{ROOT / 'csrc'}",
                    str(ROOT / "tests/native/pixel_math_check.cpp"), "-o", str(binary)], check=True, timeout=120)
    return json.loads(subprocess.run([str(binary)], capture_output=True, text=True, check=True, timeout=120).stdout)


def test_scalar_exp_and_log_are_within_one_and_a_half_ulps_of_libm(report):
    assert report["exp_max_ulps"] <= 1.5, report
    assert report["log_max_ulps"] <= 1.5, report


def test_special_values(report):
    assert report["specials_ok"], report  # exp(-inf) = exp(x < -87) = 0, exp(0) = 1, NaN stays NaN


def test_vector_lanes_equal_the_scalar_results_bit_for_bit(report):
    assert report["values"] > 4_000_000
    assert report["vector_mismatches"] == 0, report
