"""Checks that a CUDA build of hierparse's native library registers its CUDA kernels.

Run by `make cuda-check` with the CUDA build of torch (no GPU needed): loads the extension built
into .venv-cuda/build (or the path given as the first argument) with torch.ops.load_library and
asserts that every hierparse operator has a CPU and a CUDA kernel, then runs each op once on the
CPU of this build (and on the GPU too when one is present): the cross-entropy against
F.cross_entropy, the tree-min loss and the fused decode against hierparse/ops/reference.py (pure
PyTorch, loaded from its file so that the rest of the package, and its build, are not needed).
Exits non-zero otherwise.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPERATORS = ["hierparse::multilevel_cross_entropy", "hierparse::multilevel_ohem_cross_entropy", "hierparse::tree_min_loss",
             "hierparse::upsample_decode"]
DISPATCH_KEYS = ["CPU", "CUDA"]


def find_library() -> str:
    """The built extension: argv[1], or the one shared library under .venv-cuda/build/hierparse."""
    if len(sys.argv) > 1:
        return sys.argv[1]
    found = sorted(glob.glob(os.path.join(ROOT, ".venv-cuda", "build", "hierparse", "_C*.so")))
    if len(found) != 1:
        sys.exit(f"cuda-check: FAILED: expected one built library in .venv-cuda/build/hierparse, found {found}")
    return found[0]


def smoke_test(device: str) -> str | None:
    """One small call of the op (3 levels, the last one smaller than the labels and upsampled inside
    the op; ignored pixels, mean) against F.interpolate + F.cross_entropy."""
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (2, 3, 5), generator=gen, dtype=torch.uint8)
    table = torch.tensor([[0, 1, 1, 255], [0, 1, 2, 255], [0, 1, 2, 255]])
    logits = [torch.randn(2, c, h, w, generator=gen) for c, h, w in ((2, 3, 5), (3, 3, 5), (3, 2, 3))]
    losses, grads = torch.ops.hierparse.multilevel_cross_entropy(
        [x.to(device) for x in logits], labels.to(device), table.to(device), None, [1.0] * 3, 0.0,
        255, 1, True,
    )
    for level, x in enumerate(logits):
        x = x.clone().requires_grad_()
        upsampled = F.interpolate(x, size=(3, 5), mode="bilinear", align_corners=False)
        expected = F.cross_entropy(upsampled, table[level][labels.long()], ignore_index=255)
        expected.backward()
        if not torch.allclose(losses[level].cpu(), expected.detach(), rtol=1e-5, atol=1e-6):
            return f"level {level} loss {losses[level].item()} != {expected.item()}"
        if not torch.allclose(grads[level].cpu(), x.grad, rtol=1e-4, atol=1e-6):
            return f"level {level} gradients differ from F.interpolate + F.cross_entropy"
    return None


def load_reference():
    """hierparse/ops/reference.py as a module of its own (it imports only torch)."""
    spec = importlib.util.spec_from_file_location("hierparse_reference", os.path.join(ROOT, "hierparse", "ops",
                                                                                      "reference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def smoke_test_tree_min(device: str) -> str | None:
    """Small calls of tree_min_loss (3 levels, ignored pixels, focal gamma, level weights; "mean" with
    its fused gradient and "none" with an incoming gradient) against the reference and its autograd."""
    reference = load_reference()
    gen = torch.Generator().manual_seed(0)
    parents = [[0, 0, 1], [0, 1, 1, 2, 2]]
    table = torch.full((3, 7), 255)
    table[2, :5] = torch.arange(5)
    table[1, :5] = torch.tensor(parents[1])
    table[0, :5] = torch.tensor(parents[0])[table[1, :5]]
    table[:2, 5] = 0  # raw id 5: ignored at level 2 only, raw id 6 everywhere
    labels = torch.randint(0, 7, (2, 3, 5), generator=gen, dtype=torch.uint8)
    logits = [torch.randn(2, c, 3, 5, generator=gen, dtype=torch.float64) * 3 for c in (2, 3, 5)]
    flat = [p for entry in parents for p in entry]
    level_weights = [0.5, 1.0, 2.0]
    for reduction, code in (("mean", 1), ("none", 0)):
        xs = [x.clone().requires_grad_() for x in logits]
        expected = reference.tree_min_loss(xs, labels, table, parents, focal_gamma=2.0, level_weights=level_weights,
                                           reduction=reduction)
        weights = torch.ones_like(expected) if reduction == "mean" else torch.randn(expected.shape, generator=gen,
                                                                                    dtype=torch.float64)
        expected_grads = torch.autograd.grad((expected * weights).sum(), xs)
        losses, grads = torch.ops.hierparse.tree_min_loss(
            [x.to(device) for x in logits], labels.to(device), table.to(device), flat, level_weights, 2.0, 255,
            code, True, None, None if reduction == "mean" else weights.to(device),
        )
        if not torch.allclose(losses.cpu(), expected.detach(), rtol=1e-10, atol=1e-12):
            return f"tree_min_loss {reduction}: losses {losses.cpu().flatten()[:6].tolist()} differ from the reference"
        for level, (got, want) in enumerate(zip(grads, expected_grads)):
            if not torch.allclose(got.cpu(), want, rtol=1e-10, atol=1e-12):
                return f"tree_min_loss {reduction}: level {level} gradients differ from the reference"
    return None


def smoke_test_decode(device: str) -> str | None:
    """upsample_decode (3 levels, consistent, a non-integer scale) against its plain-PyTorch definition."""
    reference = load_reference()
    gen = torch.Generator().manual_seed(0)
    ancestors = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 2, 2], [0, 1, 2, 3, 4]])
    logits = [torch.randn(2, c, 3, 4, generator=gen) * 3 for c in (2, 3, 5)]
    for mode, code in (("independent", 0), ("consistent", 1)):
        got = torch.ops.hierparse.upsample_decode([x.to(device) for x in logits], ancestors, [7, 9], code, False, None)
        expected = reference.upsample_decode([x.double() for x in logits], ancestors, (7, 9), mode)
        for level, (g, e) in enumerate(zip(got, expected)):
            if not torch.equal(g.cpu().long(), e.long()):
                return f"upsample_decode {mode}: level {level} maps differ from the reference"
    return None


def main() -> int:
    if torch.version.cuda is None:
        print(f"cuda-check: FAILED: torch {torch.__version__} is not a CUDA build", file=sys.stderr)
        return 1
    path = find_library()
    torch.ops.load_library(path)
    missing = [
        f"{op} has no {key} kernel"
        for op in OPERATORS
        for key in DISPATCH_KEYS
        if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key)
    ]
    if missing:
        print("cuda-check: FAILED: " + "; ".join(missing), file=sys.stderr)
        return 1
    checked = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in checked:
        error = smoke_test(device) or smoke_test_tree_min(device) or smoke_test_decode(device)
        if error:
            print(f"cuda-check: FAILED: {device} smoke test: {error}", file=sys.stderr)
            return 1
    print(
        f"cuda-check: OK: {', '.join(OPERATORS)} registered for {' and '.join(DISPATCH_KEYS)} "
        f"(torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"library {os.path.relpath(path, ROOT)}, smoke test on {' and '.join(checked)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
