"""``hierparse export``: ONNX (run with onnxruntime) and AOTInductor packages against eager PyTorch,
dynamic shapes, the size-agnostic pooling that makes them exact, the onnxruntime-only example."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from hierparse import Parser, load_hierarchy
from hierparse.cli import main
from hierparse.data import SyntheticParsing
from hierparse.engine.checkpoint import model_from_checkpoint
from hierparse.export import SizeAgnosticAvgPool2d, exportable

onnxruntime = pytest.importorskip("onnxruntime")
TINY = ["crop_size", "32", "eval_size", "32", "batch_size", "2", "synthetic_train_images", "8",
        "synthetic_val_images", "3", "max_iters", "2", "eval_interval", "2", "workers", "0", "threads", "1"]
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "onnx_parse.py"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *TINY, "out", str(out)]) == 0
    return out / "last.pt"


def images(height: int, width: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (batch, 3, height, width), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def eager_logits(model, batch: torch.Tensor) -> list[np.ndarray]:
    """The checkpoint's model in plain PyTorch on a uint8 batch, normalised as the data pipeline does."""
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        return [level.numpy() for level in model((batch.float() / 255 - mean) / std)]


def eager_maps(model, batch: torch.Tensor) -> list[np.ndarray]:
    hierarchy = load_hierarchy("lip")
    maps = []
    for level, logits in enumerate(eager_logits(model, batch)):
        full = F.interpolate(torch.from_numpy(logits).double(), size=batch.shape[-2:], mode="bilinear",
                             align_corners=False)
        maps.append(full.argmax(1).numpy())
        assert full.shape[1] == hierarchy.num_classes[level]
    return maps


@pytest.mark.parametrize("size", [(5, 7), (12, 16), (16, 12), (13, 29), (6, 6), (1, 9)])
@pytest.mark.parametrize("bins", [1, 2, 3, 6])
def test_size_agnostic_pooling_equals_adaptive_average_pooling(size, bins):
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    torch.testing.assert_close(SizeAgnosticAvgPool2d(bins)(x), F.adaptive_avg_pool2d(x, bins))


def test_exportable_copy_replaces_pooling_and_leaves_the_model_alone(checkpoint):
    model, _, _ = model_from_checkpoint(checkpoint)
    copy = exportable(model)
    assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in copy.modules())
    assert any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in model.modules())
    batch = torch.randn(1, 3, 40, 56)
    with torch.no_grad():
        for a, b in zip(copy(batch), model(batch)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def run_onnx(path: Path, batch: torch.Tensor) -> list[np.ndarray]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch.numpy()})


@pytest.mark.slow
def test_onnx_dynamic_export_matches_eager_at_two_sizes(checkpoint, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    model, _, _ = model_from_checkpoint(checkpoint)
    logits_file, maps_file = tmp_path / "logits.onnx", tmp_path / "maps.onnx"
    assert main(["export", str(checkpoint), "--out", str(logits_file), "--dynamic", "--logits"]) == 0
    assert main(["export", str(checkpoint), "--out", str(maps_file), "--dynamic"]) == 0
    assert "wrote" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(str(maps_file)))
    domains = {node.domain for node in onnx.load(str(maps_file)).graph.node}
    assert domains <= {"", "ai.onnx"}  # standard operators only: no runtime plugin needed
    for batch in (images(32, 32), images(40, 72, batch=3, seed=1)):
        for got, expected in zip(run_onnx(logits_file, batch), eager_logits(model, batch)):
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)
        for got, expected in zip(run_onnx(maps_file, batch), eager_maps(model, batch)):
            assert got.dtype == np.uint8 and got.shape == expected.shape
            assert np.mean(got == expected) >= 0.9999


@pytest.mark.slow
def test_onnx_export_of_a_resnet50_psp_model_matches_eager(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "max_iters", "1", "eval_interval", "1", "backbone", "resnet50",
                 "out", str(out)]) == 0
    model, _, _ = model_from_checkpoint(out / "last.pt")
    assert main(["export", str(out / "last.pt"), "--out", str(tmp_path / "r50.onnx"), "--dynamic", "--logits"]) == 0
    for batch in (images(32, 32, batch=1), images(48, 40, batch=1, seed=2)):
        for got, expected in zip(run_onnx(tmp_path / "r50.onnx", batch), eager_logits(model, batch)):
            np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_aoti_package_matches_eager_at_two_sizes(checkpoint, tmp_path):
    model, _, _ = model_from_checkpoint(checkpoint)
    path = tmp_path / "parser.pt2"
    assert main(["export", str(checkpoint), "--format", "pt2", "--out", str(path), "--dynamic"]) == 0
    package = torch._inductor.aoti_load_package(str(path))
    for batch in (images(32, 32), images(48, 40, batch=1, seed=3)):
        for got, expected in zip(package(batch), eager_maps(model, batch)):
            assert got.dtype == torch.uint8 and np.mean(got.numpy() == expected) >= 0.9999


@pytest.mark.slow
def test_the_onnxruntime_example_parses_a_photo_as_the_parser_does(checkpoint, tmp_path):
    model_file = tmp_path / "parser.onnx"
    assert main(["export", str(checkpoint), "--out", str(model_file), "--dynamic"]) == 0
    photo = SyntheticParsing(n=1, size=(48, 80), split="test")[0]["image"]
    Image.fromarray(photo).save(tmp_path / "photo.png")
    result = subprocess.run([sys.executable, str(EXAMPLE), str(model_file), str(tmp_path / "photo.png"),
                             "--out", str(tmp_path / "out"), "--size", "80"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    expected = Parser.from_checkpoint(checkpoint, device="cpu", size=80)(tmp_path / "photo.png")
    hierarchy = load_hierarchy("lip")
    for level, name in enumerate(hierarchy.level_names):
        picture = Image.open(tmp_path / "out" / f"photo_{name}.png")
        assert picture.mode == "P" and picture.size == (80, 48)
        assert np.mean(np.array(picture) == expected.levels[level]) >= 0.9999
    assert np.mean(np.array(Image.open(tmp_path / "out" / "photo_raw.png")) == expected.raw) >= 0.9999


@pytest.mark.parametrize("arguments, message", [
    (["--size", "30"], "--size 30: height and width must be multiples of the network's stride 8"),
    (["--size", "big"], "--size: expected a size like 128 or 512x1024"),
    (["--decode", "tree"], "decode 'tree' does not fit a model trained with loss 'softmax'"),
    (["--out", "{file}/x.onnx"], "exists and is not a folder"),
])
def test_export_bad_input_is_one_line_exit_2_and_nothing_written(checkpoint, tmp_path, capsys, arguments, message):
    (tmp_path / "file").write_text("")
    arguments = [token.format(file=tmp_path / "file") for token in arguments]
    out = ["--out", str(tmp_path / "model.onnx")] if "--out" not in arguments else []
    assert main(["export", str(checkpoint), *out, *arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("hierparse: error: ") and "\n" not in error and message in error
    assert not (tmp_path / "model.onnx").exists() and not list(tmp_path.glob(".model.onnx*"))


def test_a_checkpoint_without_a_model_is_one_line_exit_2(checkpoint, tmp_path, capsys):
    stored = torch.load(checkpoint, weights_only=True)
    del stored["model"]
    torch.save(stored, tmp_path / "empty.pt")
    assert main(["export", str(tmp_path / "empty.pt"), "--out", str(tmp_path / "model.onnx")]) == 2
    assert "holds no 'model'" in capsys.readouterr().err
    assert not (tmp_path / "model.onnx").exists()
