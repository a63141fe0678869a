"""``hierparse evaluate`` and ``hierparse predict`` on a checkpoint trained for a few iterations."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hierparse import load_hierarchy
from hierparse.cli import main
from hierparse.data import SyntheticParsing
from hierparse.label_map import load_label_map

TINY = ["crop_size", "32", "eval_size", "32", "batch_size", "2", "synthetic_train_images", "8",
        "synthetic_val_images", "3", "max_iters", "3", "eval_interval", "3", "workers", "0", "threads", "1"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *TINY, "out", str(out)]) == 0
    return out / "last.pt"


@pytest.fixture(scope="module")
def tree_min_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("tree_min_run")
    assert main(["train", *TINY, "loss", "tree_min", "ohem", "null", "decode", "tree", "out", str(out)]) == 0
    return out / "last.pt"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for index, (height, width) in enumerate([(40, 56), (48, 48)]):
        sample = SyntheticParsing(n=2, size=(height, width), split="test")[index]
        paths.append(folder / f"person{index}.png")
        Image.fromarray(sample["image"]).save(paths[-1])
    return paths


def no_nan(constant):
    raise AssertionError(f"JSON holds {constant}")


def test_evaluate_prints_table_and_writes_strict_json(checkpoint, tmp_path, capsys):
    report = tmp_path / "scores.json"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--json", str(report)]) == 0
    output = capsys.readouterr().out
    assert "iteration 3" in output and "3 images" in output
    assert "level 1 (region, 5 classes)" in output and "module   merged" in output and "consistency" in output

    data = json.loads(report.read_text(), parse_constant=no_nan)
    assert (data["iteration"], data["split"], data["images"], data["dataset"]) == (3, "val", 3, "synthetic")
    metrics = data["metrics"]
    assert [entry["name"] for entry in metrics["levels"]] == ["person", "region", "part"]
    assert len(metrics["levels"][2]["iou"]) == 20
    assert None in metrics["levels"][2]["iou"]  # classes absent from 3 tiny images: NaN written as null

    # the same images and decoding as the run's own final evaluation: the same scores
    stored = torch.load(checkpoint, weights_only=True)["metrics"]
    for entry, stored_entry in zip(metrics["levels"], stored["levels"]):
        assert entry["miou"] == pytest.approx(stored_entry["miou"])
    assert metrics["consistency"] == pytest.approx(stored["consistency"])


def test_evaluate_consistent_decoding_is_fully_consistent(checkpoint, tmp_path, capsys):
    report = tmp_path / "scores.json"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--decode", "consistent", "--size", "48",
                 "--json", str(report), "--hierarchy", "lip"]) == 0
    data = json.loads(report.read_text())
    assert data["decode"] == "consistent" and data["metrics"]["consistency"] == 1.0


def test_tree_min_checkpoint_decodes_with_tree_by_default(tree_min_checkpoint, images, tmp_path, capsys):
    report = tmp_path / "scores.json"
    assert main(["evaluate", "--checkpoint", str(tree_min_checkpoint), "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    assert data["decode"] == "tree" and data["metrics"]["consistency"] == 1.0
    assert main(["predict", "--checkpoint", str(tree_min_checkpoint), str(images[0]), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "person0_part.png").is_file()


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_decoding_that_does_not_fit_the_loss_is_one_line_exit_2(checkpoint, tree_min_checkpoint, images, tmp_path,
                                                                 capsys, command):
    for path, decode, loss, fits in [(tree_min_checkpoint, "consistent", "tree_min", "independent or tree"),
                                     (checkpoint, "tree", "softmax", "independent or consistent")]:
        extra = [str(images[0]), "--out", str(tmp_path / "out")] if command == "predict" else []
        assert main([command, "--checkpoint", str(path), "--decode", decode, *extra]) == 2
        error = capsys.readouterr().err.strip()
        assert error == (f"hierparse: error: decode {decode!r} does not fit a model trained with loss {loss!r}; "
                         f"use {fits}")
    assert not (tmp_path / "out").exists()


def test_predict_writes_levels_raw_ids_and_figure(checkpoint, images, tmp_path, capsys):
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(checkpoint), *map(str, images), "--out", str(out),
                 "--decode", "consistent", "--figure"]) == 0
    hierarchy = load_hierarchy("lip")
    fine_raw_ids = set(hierarchy.fine_to_raw().tolist())
    for path in images:
        source = np.array(Image.open(path))
        parent_of = [np.array(hierarchy.parents(level)) for level in range(1, 3)]
        levels = []
        for level, name in enumerate(hierarchy.level_names):
            picture = Image.open(out / f"{path.stem}_{name}.png")
            assert picture.mode == "P" and picture.size == (source.shape[1], source.shape[0])
            assert picture.getpalette()[:3 * hierarchy.num_classes[level]] == [
                channel for colour in hierarchy.colors(level) for channel in colour]
            levels.append(np.array(picture))
        raw = Image.open(out / f"{path.stem}_raw.png")
        assert raw.mode == "L" and raw.size == (source.shape[1], source.shape[0])
        assert set(np.unique(np.array(raw)).tolist()) <= fine_raw_ids
        assert np.array_equal(hierarchy.label_table()[2].numpy()[np.array(raw)], levels[2])
        for level in (1, 2):  # consistent decoding: every level is the parent of the next
            assert np.array_equal(parent_of[level - 1][levels[level]], levels[level - 1])
        figure = Image.open(out / f"{path.stem}_figure.png")
        assert figure.size[0] > 3 * figure.size[1]  # image | person | region | part
    assert not list(out.glob("*.tmp"))
    assert f"parsed 2 images into {out}" in capsys.readouterr().out


def write_other_hierarchy(tmp_path):
    path = tmp_path / "two_levels.yaml"
    path.write_text("name: tiny\nlevels: [coarse, fine]\nclasses:\n  - name: a\n    children:\n"
                    "      - {name: a1, ids: [0]}\n      - {name: a2, ids: [1]}\n")
    return path


@pytest.mark.parametrize("command, message", [
    (["evaluate", "--checkpoint", "{missing}"], "checkpoint {missing} does not exist"),
    (["evaluate", "--checkpoint", "{garbage}"], "cannot read checkpoint {garbage}"),
    (["evaluate", "--checkpoint", "{truncated}"], "cannot read checkpoint {truncated}"),
    (["evaluate", "--checkpoint", "{foreign}"], "is not a hierparse checkpoint"),
    (["evaluate", "--checkpoint", "{tmp}"], "is a folder, not a file"),
    (["evaluate", "--checkpoint", "{checkpoint}", "--hierarchy", "cihp"],
     "was trained for hierarchy 'lip' (classes per level [2, 5, 20]), not 'cihp'"),
    (["evaluate", "--checkpoint", "{checkpoint}", "--hierarchy", "{other}"], "not 'tiny'"),
    (["evaluate", "--checkpoint", "{checkpoint}", "--data", "{empty}", "--layout", "lip"], "empty split 'val'"),
    (["evaluate", "--checkpoint", "{checkpoint}", "--data", "{empty}"], "--data needs --layout"),
    (["evaluate", "--checkpoint", "{checkpoint}", "--json", "{file}/scores.json"], "exists and is not a folder"),
    (["predict", "--checkpoint", "{missing}", "{image}", "--out", "{out}"], "does not exist"),
    (["predict", "--checkpoint", "{checkpoint}", "{image}", "{tmp}/nothing.png", "--out", "{out}"],
     "no image, folder or pattern"),
    (["predict", "--checkpoint", "{checkpoint}", "{garbage}", "--out", "{out}"], "cannot read image file"),
    (["predict", "--checkpoint", "{checkpoint}", "{image}", "--out", "{file}/out"], "is not writable"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(checkpoint, images, tmp_path, capsys, command, message):
    places = {"missing": tmp_path / "missing.pt", "garbage": tmp_path / "garbage.png", "tmp": tmp_path,
              "truncated": tmp_path / "truncated.pt", "foreign": tmp_path / "foreign.pt", "checkpoint": checkpoint,
              "other": write_other_hierarchy(tmp_path), "empty": tmp_path / "empty", "file": tmp_path / "file",
              "image": images[0], "out": tmp_path / "out"}
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "truncated.pt").write_bytes(checkpoint.read_bytes()[:5000])
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    for folder in ("val_images", "val_segmentations"):
        (tmp_path / "empty" / folder).mkdir(parents=True)
    (tmp_path / "file").write_text("")
    command = [token.format(**places) for token in command]
    assert main(command) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("hierparse: error: ") and "\n" not in error
    assert message.format(**places) in error
    assert not (tmp_path / "out").exists()


def test_cli_subprocess_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hierparse", "predict", "--checkpoint", str(tmp_path / "x.pt"),
                             "a.png", "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == f"hierparse: error: checkpoint {tmp_path / 'x.pt'} does not exist\n"
    assert not (tmp_path / "out").exists()



def write_lip_folder(root, sizes):
    """A LIP-layout val split (ce2p variant) of synthetic people of the given sizes, labels as L PNGs."""
    for folder in ("val_images", "val_labels"):
        (root / folder).mkdir(parents=True)
    for index, size in enumerate(sizes):
        sample = SyntheticParsing(n=index + 1, size=size, split="val")[index]
        Image.fromarray(sample["image"]).convert("L").save(root / "val_images" / f"p{index}.jpg")
        Image.fromarray(sample["label"]).save(root / "val_labels" / f"p{index}.png")


def test_evaluate_scores_every_image_at_its_labels_own_size_with_and_without_tta(checkpoint, tmp_path, capsys):
    sizes = [(40, 56), (64, 36), (33, 47)]
    write_lip_folder(tmp_path / "lip", sizes)
    report = tmp_path / "scores.json"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data", str(tmp_path / "lip"), "--layout", "lip",
                 "--tta", "--json", str(report)]) == 0
    output = capsys.readouterr().out
    assert "without test-time augmentation (long side 32)" in output
    assert "with test-time augmentation (long side 32; 6 views (scales 0.75, 1.0, 1.25, flipped))" in output
    data = json.loads(report.read_text(), parse_constant=no_nan)
    labelled = sum(h * w for h, w in sizes)  # every label pixel, none resized away
    for metrics in (data["metrics"], data["metrics_tta"]):
        assert [entry["pixels"] for entry in metrics["levels"]] == [labelled] * 3
    assert data["tta"] == {"flip": True, "scales": [0.75, 1.0, 1.25]}
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--mode", "slide", "--crop", "8", "--stride", "16"]) == 2
    assert "slide stride 16 exceeds crop 8" in capsys.readouterr().err


def write_schp_folder(root, split, labels_of):
    """A SCHP-layout split ({split}_images, {split}_segmentations, {split}_id.txt) of synthetic people,
    labels through ``labels_of`` (raw ids of the dataset's own tree)."""
    for folder in (f"{split}_images", f"{split}_segmentations"):
        (root / folder).mkdir(parents=True)
    stems = []
    for index, size in enumerate([(40, 48), (36, 52)]):
        sample = SyntheticParsing(n=index + 1, size=size, split="val")[index]
        Image.fromarray(sample["image"]).save(root / f"{split}_images" / f"im{index}.jpg")
        Image.fromarray(labels_of(sample["label"])).save(root / f"{split}_segmentations" / f"im{index}.png")
        stems.append(f"im{index}")
    (root / f"{split}_id.txt").write_text("\n".join(stems) + "\n")


@pytest.mark.parametrize("layout, labels_of, message", [
    ("atr", lambda label: label % 18,
     "layout 'atr' labels its files with the raw ids of hierarchy 'atr' (raw id 3 is 'Sunglasses' there, "
     "'Glove' in 'lip'); read it through map: atr_to_lip"),
    ("cihp", lambda label: label,
     "layout 'cihp' labels its files with the raw ids of hierarchy 'cihp' (raw id 10 is 'Torso-skin' there, "
     "'Jumpsuits' in 'lip'); read it through map: cihp_to_lip"),
])
def test_another_datasets_ids_are_read_only_through_a_label_map(checkpoint, tmp_path, capsys, layout, labels_of,
                                                                 message):
    write_schp_folder(tmp_path / layout, "val", labels_of)
    command = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(tmp_path / layout), "--layout", layout]
    assert main(command) == 2
    assert capsys.readouterr().err.strip() == f"hierparse: error: {message}"
    report = tmp_path / "scores.json"
    assert main([*command, "--map", f"{layout}_to_lip", "--json", str(report)]) == 0
    assert f"read through label map {layout}_to_lip" in capsys.readouterr().out
    metrics = json.loads(report.read_text(), parse_constant=no_nan)["metrics"]
    ignored = [raw for raw, entry in load_label_map(f"{layout}_to_lip").entries.items() if entry is None]
    labels = [np.array(Image.open(path)) for path in sorted((tmp_path / layout / "val_segmentations").iterdir())]
    assert metrics["levels"][0]["pixels"] == sum(int((~np.isin(label, ignored)).sum()) for label in labels)


def test_training_reads_a_foreign_layout_through_the_config_map(tmp_path, capsys):
    root = tmp_path / "atr"
    for split in ("train", "val"):
        write_schp_folder(root / split, split, lambda label: label % 18)
        for item in (root / split).iterdir():
            item.rename(root / item.name)
    base = ["train", *TINY, "dataset", "atr", "root", str(root), "out", str(tmp_path / "run"), "max_iters", "1",
            "eval_interval", "1"]
    assert main(base) == 2
    assert "read it through map: atr_to_lip" in capsys.readouterr().err
    assert main([*base, "map", "atr_to_lip"]) == 0
    assert f"reading {root} through label map atr_to_lip" in capsys.readouterr().out
