"""``hierparse export``: a checkpoint as a self-contained graph, ONNX (onnxruntime, no torch needed)
or a torch.export / AOTInductor package.

The exported graph takes an image batch ``[N, 3, H, W]`` (uint8, or float32 in 0..255 with
``--float``), normalises it, runs the model and decodes: it returns one label map per level
(uint8 ``[N, H, W]``, coarse -> fine, class indices of the level) or, with ``--logits``, the
per-level logits at the model's own resolution. Test-time augmentation stays outside the graph.
``--dynamic`` exports one graph for any batch and any image size divisible by the network's stride.

PSP's adaptive average pooling is exported exactly at every size by computing its averaging
matrices from the input's size (:class:`SizeAgnosticAvgPool2d`); ``nn.AdaptiveAvgPool2d`` itself
would be frozen at the size it was traced at.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hierparse.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from hierparse.engine.checkpoint import model_from_checkpoint
from hierparse.engine.io import writable_dir
from hierparse.hierarchy import Hierarchy
from hierparse import ops
from hierparse.inference import DECODE_MODES, ancestor_table
from hierparse.losses import check_decode
from hierparse.ops.decode import export_decompositions

FORMATS = ("onnx", "pt2")
LOGIT_TOLERANCE = 1e-4       # largest absolute logit difference against eager PyTorch (float32)
MAP_AGREEMENT = 0.9999       # least share of pixels whose labels agree with eager PyTorch


def pool_matrix(size: torch.SymInt | int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """``[bins, size]``: row i averages the input positions ``floor(i*size/bins) .. ceil((i+1)*size/bins)-1``,
    the windows of ``adaptive_avg_pool``."""
    index = torch.arange(bins, device=like.device)
    start = index * size // bins
    end = ((index + 1) * size + bins - 1) // bins
    position = torch.arange(size, device=like.device)
    inside = (position[None] >= start[:, None]) & (position[None] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


class SizeAgnosticAvgPool2d(nn.Module):
    """``adaptive_avg_pool2d`` to ``bins x bins`` as two matrix products (exact at every input size
    in an exported graph)."""

    def __init__(self, bins: int):
        super().__init__()
        self.bins = bins

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = pool_matrix(x.shape[-2], self.bins, x)
        columns = pool_matrix(x.shape[-1], self.bins, x)
        return rows @ x @ columns.transpose(0, 1)


def exportable(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every square ``nn.AdaptiveAvgPool2d`` replaced by :class:`SizeAgnosticAvgPool2d`."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.AdaptiveAvgPool2d):
                bins = child.output_size
                if isinstance(bins, tuple):
                    if bins[0] != bins[1] or bins[0] is None:
                        raise ValueError(f"{name}.{child_name}: only square adaptive pooling exports, got {bins}")
                    bins = bins[0]
                setattr(module, child_name, SizeAgnosticAvgPool2d(int(bins)))
    return model


class DeployedParser(nn.Module):
    """Image batch (uint8 or float 0..255, ``[N, 3, H, W]``) -> per-level uint8 label maps ``[N, H, W]``
    (or per-level logits with ``logits=True``)."""

    def __init__(self, model: nn.Module, hierarchy: Hierarchy, decode: str = "independent", logits: bool = False):
        super().__init__()
        self.model, self.hierarchy, self.decode, self.logits = exportable(model).eval(), hierarchy, decode, logits
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255)
        self.register_buffer("inv_std", 1 / (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255))
        # a plain CPU tensor, not a buffer: .cuda() leaves it where the op reads it (no host sync)
        self.ancestors = ancestor_table(hierarchy)
        self.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits = self.model((images.float() - self.mean) * self.inv_std)
        if self.logits:
            return tuple(logits)
        return tuple(ops.upsample_decode(logits, self.ancestors, images.shape[-2:], self.decode))


def metadata(hierarchy: Hierarchy, deployed: DeployedParser, checkpoint: dict[str, Any]) -> dict[str, str]:
    """What a runtime needs to read the outputs: levels, classes, colours, raw ids, input stride."""
    return {
        "hierparse": json.dumps({
            "hierarchy": hierarchy.name, "iteration": checkpoint["iteration"], "decode": deployed.decode,
            "outputs": "logits" if deployed.logits else "label maps",
            "stride": getattr(deployed.model, "output_stride", 8),
            "levels": [{"name": name, "classes": hierarchy.class_names(level),
                        "colors": [list(color) for color in hierarchy.colors(level)]}
                       for level, name in enumerate(hierarchy.level_names)],
            "fine_to_raw": hierarchy.fine_to_raw().tolist(),
        }),
    }


def example_images(size: tuple[int, int], dtype: torch.dtype, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, *size), generator=generator, dtype=torch.uint8).to(dtype)


def dynamic_shapes(stride: int) -> tuple[dict[int, Any]]:
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = torch.export.Dim("height_over_stride", min=2, max=1024)
    width = torch.export.Dim("width_over_stride", min=2, max=1024)
    return ({0: batch, 2: stride * height, 3: stride * width},)


def export(deployed: DeployedParser, path: Path, fmt: str, images: torch.Tensor, dynamic: bool,
           meta: dict[str, str]) -> None:
    """Write the graph of ``deployed`` traced on ``images`` to ``path`` (atomically)."""
    stride = getattr(deployed.model, "output_stride", 8)
    shapes = dynamic_shapes(stride) if dynamic else None
    # the fused decode op in standard operators: the file needs neither hierparse nor its extension
    traced = torch.export.export(deployed, (images,), dynamic_shapes=shapes).run_decompositions(export_decompositions())
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as folder:
        temporary = Path(folder) / f"model.{fmt}"
        if fmt == "onnx":
            import onnx

            program = torch.onnx.export(traced, (images,), dynamo=True, input_names=["images"],
                                        output_names=output_names(deployed), verbose=False)
            program.save(str(temporary))
            graph = onnx.load(str(temporary))
            onnx.checker.check_model(graph)
            for key, value in meta.items():
                graph.metadata_props.add(key=key, value=value)
            onnx.save(graph, str(temporary))
        else:
            torch._inductor.aoti_compile_and_package(traced, package_path=str(temporary))
        temporary.replace(path)


def output_names(deployed: DeployedParser) -> list[str]:
    names = deployed.hierarchy.level_names
    if deployed.logits and not getattr(deployed.model, "stacked", True):
        names = names[-1:]
    return [f"{name}_{'logits' if deployed.logits else 'labels'}" for name in names]


def load_runner(path: Path, fmt: str):
    """A callable: uint8/float image batch (numpy or torch) -> list of numpy outputs of the exported file."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda images: session.run(None, {name: np.asarray(images)})
    package = torch._inductor.aoti_load_package(str(path))
    return lambda images: [output.numpy() for output in package(torch.as_tensor(np.asarray(images)))]


def parity(deployed: DeployedParser, run, images: torch.Tensor) -> dict[str, float]:
    """The exported file against eager PyTorch on ``images``: the largest logit difference or the
    share of label pixels that agree, whichever the graph returns."""
    with torch.no_grad():
        expected = [output.numpy() for output in deployed(images)]
    got = run(images.numpy())
    if deployed.logits:
        return {"max_logit_difference": max(float(np.abs(a - b).max()) for a, b in zip(got, expected))}
    return {"label_agreement": float(np.mean([np.mean(a == b) for a, b in zip(got, expected)]))}


def check_parity(report: dict[str, float], path: Path) -> None:
    difference = report.get("max_logit_difference", 0.0)
    agreement = report.get("label_agreement", 1.0)
    if difference > LOGIT_TOLERANCE or agreement < MAP_AGREEMENT:
        raise ValueError(f"{path} does not reproduce the model: {report} (limits: logits within "
                         f"{LOGIT_TOLERANCE}, labels agreeing on {MAP_AGREEMENT:.2%} of pixels)")


def parse_size(text: str, stride: int) -> tuple[int, int]:
    """``"128"`` or ``"512x1024"`` -> (height, width), each a positive multiple of ``stride``."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise ValueError(f"--size: expected a size like 128 or 512x1024, got {text!r}")
    size = (int(parts[0]), int(parts[-1]))
    if any(side % stride or side < 2 * stride for side in size):
        raise ValueError(f"--size {text}: height and width must be multiples of the network's stride {stride} "
                         f"(at least {2 * stride})")
    return size


# ---------------------------------------------------------------------- command
def add_export(subparsers) -> None:
    p = subparsers.add_parser(
        "export", help="export a checkpoint to ONNX or a torch.export/AOTInductor package (label maps or logits)",
        description="Export a checkpoint as one graph: uint8 images [N, 3, H, W] in, one uint8 label map per "
                    "level out (class indices, coarse to fine); normalisation and decoding inside. The file is "
                    "checked against eager PyTorch before it is kept.")
    p.add_argument("checkpoint", help="a checkpoint written by hierparse train")
    p.add_argument("--format", choices=FORMATS, default="onnx", help="onnx (default) or pt2 (AOTInductor package)")
    p.add_argument("--out", required=True, metavar="FILE", help="the file to write")
    p.add_argument("--decode", choices=DECODE_MODES, help="decoding in the graph (default: the run's)")
    p.add_argument("--size", metavar="H[xW]", help="image size of the trace (default: the run's eval_size, square)")
    p.add_argument("--dynamic", action="store_true", help="any batch size and any image size divisible by the stride")
    p.add_argument("--logits", action="store_true", help="return per-level logits instead of label maps")
    p.add_argument("--float", action="store_true", help="take float32 images (0..255) instead of uint8")
    p.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    writable_dir(out.resolve().parent, "folder of --out")
    model, hierarchy, checkpoint = model_from_checkpoint(args.checkpoint)
    decode = args.decode or checkpoint["config"]["decode"]
    check_decode(checkpoint["config"].get("loss", "softmax"), decode)
    stride = model.output_stride
    size = parse_size(args.size or str(checkpoint["config"]["eval_size"] or 128), stride)
    deployed = DeployedParser(model, hierarchy, decode, args.logits)
    dtype = torch.float32 if args.float else torch.uint8
    images = example_images(size, dtype)
    export(deployed, out, args.format, images, args.dynamic, metadata(hierarchy, deployed, checkpoint))
    run = load_runner(out, args.format)
    checks = [images] + ([example_images((size[0] + stride, size[1] + 2 * stride), dtype, batch=3, seed=1)]
                         if args.dynamic else [])
    try:
        for sample in checks:
            report = parity(deployed, run, sample)
            check_parity(report, out)
            print(f"{tuple(sample.shape)}: " + ", ".join(f"{key} {value:.6g}" for key, value in report.items()))
    except Exception:
        out.unlink()
        raise
    print(f"wrote {out} ({args.format}, {'dynamic' if args.dynamic else 'static'} shapes, "
          f"{'logits' if args.logits else 'label maps'}, decode {decode})")
    return 0
