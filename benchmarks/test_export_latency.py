"""End-to-end latency of one parsed image (uint8 in, per-level label maps out, normalisation and the
fused decode inside) through each way of deploying a parser: eager PyTorch, torch.compile, the
dynamic ONNX export in onnxruntime and the dynamic AOTInductor package (results: benchmarks/RESULTS.md).

The default model (stacked light/PSP, LIP tree) with its initial weights (latency does not depend on
them); one 473x473 image, padded to 480x480 (the exported graphs take sizes divisible by the stride
8); batch 1, float32, 2 threads everywhere. One dynamic export per format and output kind, traced on
a batch of 2 at 128x128; each file is checked against eager PyTorch on the trace and on the timed
image (logits within 1e-4, labels agreeing on 99.99% of pixels: the export's own check) and the
figures printed: this is the parity record of both models.

Run: .venv/bin/python -m pytest benchmarks/test_export_latency.py --benchmark-only -s
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from timing import interleaved_medians

from hierparse import load_hierarchy
from hierparse.export import DeployedParser, check_parity, export, load_runner, parity
from hierparse.models import build_model

THREADS = 2
SIZE = (480, 480)    # a 473x473 image padded to the network's stride
ROUNDS = 12
BACKBONES = ("light", "resnet50")


def onnxruntime_runner(path):
    onnxruntime = pytest.importorskip("onnxruntime")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images.numpy()})


def aoti_runner(path):
    package = torch._inductor.aoti_load_package(str(path))
    return lambda images: package(images)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_latency_per_image(benchmark, backbone, tmp_path):
    pytest.importorskip("onnx")
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        hierarchy = load_hierarchy("lip")
        torch.manual_seed(0)
        model = build_model(hierarchy, backbone, "psp")
        image = torch.randint(0, 256, (1, 3, *SIZE), dtype=torch.uint8)
        checks = (torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8), image)  # the trace, and another size
        runners, reports = {}, {}
        for outputs in ("logits", "labels"):
            graph = DeployedParser(model, hierarchy, "independent", logits=outputs == "logits")
            for fmt, name, timed_runner in (("onnx", "onnxruntime", onnxruntime_runner), ("pt2", "aoti", aoti_runner)):
                path = tmp_path / f"{outputs}.{fmt}"
                export(graph, path, fmt, checks[0], dynamic=True, meta={})
                for sample in checks:  # recorded here, checked after the timing so that the record is whole
                    reports[f"{name} {outputs} {'x'.join(map(str, sample.shape))}"] = parity(
                        graph, load_runner(path, fmt), sample)
                if outputs == "labels":
                    runners[name] = timed_runner(path)
        print(f"\n{backbone}/psp parity against eager: " + ", ".join(
            f"{case} {value:.4g}" for case, report in reports.items() for value in report.values()))
        deployed = DeployedParser(model, hierarchy, "independent")
        compiled = torch.compile(deployed, dynamic=False)

        def inference(model):
            def run():
                with torch.inference_mode():
                    return model(image)
            return run

        runs = {"eager": inference(deployed), "compile": inference(compiled),
                **{name: (lambda run=run: run(image)) for name, run in runners.items()}}
        runs["compile"]()  # compiled outside the timed rounds
        load_before = os.getloadavg()[0]
        median = {name: 1e3 * seconds for name, seconds in interleaved_medians(runs, ROUNDS, warmup=2).items()}
        load_after = os.getloadavg()[0]
        benchmark.group = f"latency per {SIZE[0]}x{SIZE[1]} image"
        benchmark.extra_info.update({f"{name}_ms": ms for name, ms in median.items()},
                                    **{f"{name}_vs_eager": ms / median["eager"] for name, ms in median.items()},
                                    load=[load_before, load_after], parity={case: next(iter(report.values())) for case, report in reports.items()})
        print(f"\n{backbone}/psp, one {SIZE[0]}x{SIZE[1]} image, {THREADS} threads, load {load_before:.1f}-"
              f"{load_after:.1f}: " + ", ".join(f"{name} {ms:.1f} ms ({ms / median['eager']:.2f}x eager)"
                                               for name, ms in median.items()))
        benchmark.pedantic(runs["eager"], rounds=2)
        for case, report in reports.items():
            check_parity(report, Path(case))
    finally:
        torch.set_num_threads(previous)
