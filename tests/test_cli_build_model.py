"""``hierparse build-model``: what a hierarchy generates, as text and JSON, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hierparse import build_model, load_hierarchy
from hierparse.cli import main


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["build-model", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_text_lists_modules_inputs_parts_and_merging_table(capsys):
    code, out, err = run(capsys, "lip", "--backbone", "light", "--head", "fcn", "--input-size", "128")
    assert code == 0 and err == ""
    assert "model: lip (stacked, 3 modules), backbone light (output stride 8), head fcn" in out
    assert "1. level person (2 classes: Background, Person)" in out
    assert "2. level region (5 classes: Background, Head, Torso, Arms, Legs)" in out
    # 128 px: deep features 16x16 (stride 8); layer1 32x32, 24 channels on the light backbone
    assert "inputs: context 48ch 16x16; scores of module 2 5ch 16x16; skip layer1 24ch 32x32" in out
    assert "output: 20ch 32x32 logits" in out
    total = sum(p.numel() for p in build_model("lip", "light", "fcn").parameters())
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()
            if line.startswith("  ") and line.split()[0] in ("backbone", "head", "total")}
    assert rows["total"][0] == f"{total:,}"
    assert int(rows["total"][1].replace(",", "")) > int(rows["backbone"][1].replace(",", "")) > 0
    assert "label-merging table" in out and "Right-shoe" in out  # format_hierarchy's part


def test_json_describes_model_and_hierarchy(capsys):
    code, out, _ = run(capsys, "cityscapes", "--backbone", "resnet18", "--json")
    assert code == 0
    data = json.loads(out)
    model = data["model"]
    assert [m["num_classes"] for m in model["modules"]] == [7, 19]
    assert model["input_size"] == [473, 473]
    assert model["context"]["size"] == [60, 60]  # 473 -> 237 -> 119 -> 60 at output stride 8
    assert model["modules"][1]["inputs"]["skip"]["stage"] == "layer1"
    assert model["modules"][1]["output"] == {"channels": 19, "size": [119, 119]}
    expected = sum(p.numel() for p in build_model("cityscapes", "resnet18").parameters())
    assert model["total"]["parameters"] == expected
    assert sum(part["parameters"] for part in model["parts"]) == expected
    assert model["total"]["multiply_adds"] > 0
    assert data["hierarchy"]["label_table"]["26"] == [6, 13]  # car: vehicle, car
    assert data["hierarchy"]["levels"][0]["num_classes"] == 7


def test_flat_stride_size_and_skips_options(capsys):
    code, out, _ = run(capsys, "helen", "--backbone", "light", "--flat", "--output-stride", "16",
                       "--input-size", "64x128", "--json")
    model = json.loads(out)["model"]
    assert code == 0 and model["stacked"] is False and len(model["modules"]) == 1
    assert model["modules"][0]["output"] == {"channels": load_hierarchy("helen").num_classes[-1],
                                             "size": [4, 8]}
    code, out, _ = run(capsys, "lip", "--backbone", "light", "--skips", "none", "--json")
    assert all(m["inputs"]["skip"] is None for m in json.loads(out)["model"]["modules"])
    code, out, _ = run(capsys, "lip", "--backbone", "light", "--skips", "layer3,none", "--json")
    skips = [m["inputs"]["skip"] for m in json.loads(out)["model"]["modules"]]
    assert skips[0] is None and skips[1]["stage"] == "layer3" and skips[2] is None


def test_flat_with_skip_and_module_width(capsys):
    code, out, _ = run(capsys, "lip", "--backbone", "light", "--flat", "--skips", "layer1", "--module-width", "32",
                       "--input-size", "128")
    assert code == 0
    assert "inputs: context 48ch 16x16; skip layer1 24ch 32x32" in out and "output: 20ch 32x32 logits" in out
    assert "modules (coarse -> fine; refinement width 32):" in out
    expected = sum(p.numel() for p in build_model("lip", "light", "psp", stacked=False, skips=["layer1"],
                                                  module_width=32).parameters())
    assert f" {expected:,} " in out


@pytest.mark.parametrize("argv,message", [
    (["nothere.yaml"], "nothere.yaml: hierarchy file not found"),
    (["lip", "--backbone", "vgg16"], "unknown backbone 'vgg16'; choices: resnet18"),
    (["lip", "--head", "unet"], "unknown head 'unet'; choices: fcn, psp, aspp"),
    (["lip", "--output-stride", "4"], "output_stride must be one of (8, 16), got 4"),
    (["lip", "--input-size", "big"], "--input-size: expected a positive size"),
    (["lip", "--skips", "layer1"], "skips needs one entry per level after the first (2)"),
    (["lip", "--module-width", "1"], "module_width must be an integer of at least 2, got 1"),
])
def test_user_errors_are_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("hierparse: error: ") and message in err


def test_invalid_tree_is_reported_by_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nlevels: [a, b]\nclasses:\n  - {name: X, ids: 1}\n  - {name: X, ids: 2}\n")
    code, out, err = run(capsys, str(bad))
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert lines and all(line.startswith("hierparse: error: ") and "bad.yaml" in line for line in lines)
    assert any("duplicate class name" in line for line in lines)


def test_exit_status_from_the_command_line():
    done = subprocess.run([sys.executable, "-m", "hierparse", "build-model", "lip", "--head", "nope"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "hierparse: error: unknown head 'nope'; choices: fcn, psp, aspp\n"
