"""``hierparse check-data`` on folders shaped like the real ones: a clean LIP split (grayscale JPEGs,
L and P label PNGs), one with every kind of problem, and ATR read with and without its map."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hierparse.cli import main
from hierparse.data import ParsingDataset, SyntheticParsing

SIZES = [(40, 48), (36, 52), (40, 48)]


def lip_split(root, split="train"):
    """LIP's SCHP layout: grayscale and colour JPEGs, labels as L and as P PNGs."""
    for folder in (f"{split}_images", f"{split}_segmentations"):
        (root / folder).mkdir(parents=True)
    labels = []
    for index, size in enumerate(SIZES):
        sample = SyntheticParsing(n=index + 1, size=size, split="val")[index]
        image = Image.fromarray(sample["image"])
        (image.convert("L") if index == 0 else image).save(root / f"{split}_images" / f"p{index}.jpg")
        label = Image.fromarray(sample["label"])
        if index == 1:
            label = label.convert("P")
            label.putpalette([value for i in range(256) for value in (i, i, i)])
        label.save(root / f"{split}_segmentations" / f"p{index}.png")
        labels.append(sample["label"])
    (root / f"{split}_id.txt").write_text("p0\np1\np2\n")
    return labels


def test_a_clean_folder_is_described_and_ready(tmp_path, capsys):
    labels = lip_split(tmp_path / "lip")
    sheet = tmp_path / "sheet.png"
    assert main(["check-data", str(tmp_path / "lip"), "--layout", "lip", "--sheet", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert "3 image/label pairs, layout lip, split 'train', read as hierarchy 'lip'" in out
    assert "image modes: RGB 2, L 1" in out and "image sizes (WxH): 48x40 2, 52x36 1" in out
    seen = sorted(set(np.concatenate([label.ravel() for label in labels]).tolist()))
    assert f"raw ids seen: {seen}" in out
    background = sum(int((label == 0).sum()) for label in labels) / sum(label.size for label in labels)
    assert f"Background {100 * background:.1f}%" in out
    assert out.strip().endswith("ready to train on")
    assert Image.open(sheet).size[0] > 0


def test_every_problem_is_listed_and_the_exit_status_is_1(tmp_path, capsys):
    root = tmp_path / "lip"
    lip_split(root)
    (root / "train_images" / "p1.jpg").write_bytes((root / "train_images" / "p1.jpg").read_bytes()[:200])
    label = np.array(Image.open(root / "train_segmentations" / "p2.png"))
    label[0, :2] = [77, 30]
    Image.fromarray(label).save(root / "train_segmentations" / "p2.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "train_segmentations" / "stray.png")
    assert main(["check-data", str(root), "--layout", "lip", "--sheet", str(tmp_path / "s.png")]) == 1
    problems = [line for line in capsys.readouterr().out.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 3
    assert problems[0].startswith(f"problem: cannot read image file {root / 'train_images' / 'p1.jpg'}")
    assert problems[1:] == [
        f"problem: label file {root / 'train_segmentations' / 'p2.png'} holds raw ids [30, 77] that hierarchy "
        "'lip' does not declare",
        f"problem: label file {root / 'train_segmentations' / 'stray.png'} has no image",
    ]


def test_a_size_mismatch_is_a_problem(tmp_path, capsys):
    root = tmp_path / "lip"
    lip_split(root)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "train_segmentations" / "p0.png")
    assert main(["check-data", str(root), "--layout", "lip", "--sheet", str(tmp_path / "s.png")]) == 1
    assert (f"problem: image {root / 'train_images' / 'p0.jpg'} is 48x40 but its label "
            f"{root / 'train_segmentations' / 'p0.png'} is 12x10") in capsys.readouterr().out


def test_another_trees_ids_need_the_map(tmp_path, capsys):
    root = tmp_path / "atr"
    for folder in ("train_images", "train_segmentations"):
        (root / folder).mkdir(parents=True)
    sample = SyntheticParsing(n=1, size=(32, 32), split="val")[0]
    Image.fromarray(sample["image"]).save(root / "train_images" / "a.jpg")
    Image.fromarray(sample["label"] % 18).save(root / "train_segmentations" / "a.png")
    (root / "train_id.txt").write_text("a\n")
    assert main(["check-data", str(root), "--layout", "atr", "--hierarchy", "lip"]) == 2
    assert "read it through map: atr_to_lip" in capsys.readouterr().err
    assert main(["check-data", str(root), "--layout", "atr", "--map", "atr_to_lip",
                 "--sheet", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "read as hierarchy 'lip' through label map atr_to_lip" in out and "ready to train on" in out


def test_a_bad_label_read_by_a_dataloader_worker_is_one_line_exit_2(tmp_path, capsys):
    root = tmp_path / "lip"
    lip_split(root, "train")
    lip_split(root, "val")
    label = np.array(Image.open(root / "train_segmentations" / "p0.png"))
    label[3, 3] = 99
    Image.fromarray(label).save(root / "train_segmentations" / "p0.png")
    command = ["train", "dataset", "lip", "root", str(root), "crop_size", "32", "eval_size", "32", "batch_size", "3",
               "max_iters", "2", "eval_interval", "2", "threads", "1", "workers", "1", "out", str(tmp_path / "run")]
    assert main(command) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"hierparse: error: label file {root / 'train_segmentations' / 'p0.png'} holds raw ids [99] "
                     "that hierarchy 'lip' does not declare (pass undeclared='ignore' to treat them as ignored)")


def celebamask_folder(root, stems_by_split):
    """CelebAMask-HQ as face-parsing.PyTorch leaves it: CelebA-HQ-img/ at twice the size of mask/."""
    (root / "CelebA-HQ-img").mkdir(parents=True)
    (root / "mask").mkdir()
    rng = np.random.default_rng(0)
    for split, stems in stems_by_split.items():
        for stem, side in stems:
            label = np.zeros((side, side), np.uint8)
            label[side // 8: -side // 8, side // 4: -side // 4] = 1      # skin
            label[: side // 6] = 17                                          # hair
            label[side // 3: side // 3 + 3, side // 3: side // 3 + 4] = 4   # left eye
            label[-side // 8:] = rng.choice([14, 16])                        # neck or cloth
            Image.fromarray(label).save(root / "mask" / f"{stem}.png")
            image = np.repeat(np.repeat((label * 13)[..., None], 3, axis=2), 2, axis=0).repeat(2, axis=1)
            Image.fromarray(image.astype(np.uint8)).save(root / "CelebA-HQ-img" / f"{stem}.jpg")
        (root / f"{split}.txt").write_text("\n".join(stem for stem, _ in stems) + "\n")


def test_celebamask_hq_images_twice_their_labels_size_are_resized_to_them(tmp_path, capsys):
    root = tmp_path / "celeba"
    celebamask_folder(root, {"train": [("0", 512), ("1", 48)], "val": [("2", 48)]})
    assert Image.open(root / "CelebA-HQ-img" / "0.jpg").size == (1024, 1024)
    assert main(["check-data", str(root), "--layout", "celebamask_hq", "--sheet", str(tmp_path / "s.png")]) == 0
    out = capsys.readouterr().out
    assert "image sizes (WxH): 1024x1024 1, 96x96 1" in out and "ready to train on" in out
    dataset = ParsingDataset(root, "celebamask_hq", "train")
    assert dataset[0]["image"].shape == (512, 512, 3) and dataset[0]["label"].shape == (512, 512)
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(root / "mask" / "1.png")
    with pytest.raises(ValueError, match="not one whole scale factor on both sides"):
        dataset[1]


def test_a_helen_model_trains_and_evaluates_on_celebamask_hq_through_the_map(tmp_path, capsys):
    root = tmp_path / "celeba"
    celebamask_folder(root, {"train": [("0", 48), ("1", 48)], "val": [("2", 48)]})
    run = tmp_path / "run"
    assert main(["train", "hierarchy", "helen", "dataset", "celebamask_hq", "root", str(root), "map",
                 "celebamask_hq_to_helen", "crop_size", "32", "eval_size", "48", "batch_size", "2", "max_iters", "2",
                 "eval_interval", "2", "workers", "0", "threads", "1", "out", str(run)]) == 0
    assert "through label map celebamask_hq_to_helen" in capsys.readouterr().out
    assert main(["evaluate", "--checkpoint", str(run / "last.pt"), "--data", str(root), "--layout",
                 "celebamask_hq"]) == 2
    assert "read it through map: celebamask_hq_to_helen" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(run / "last.pt"), "--data", str(root), "--layout",
                 "celebamask_hq", "--map", "celebamask_hq_to_helen"]) == 0


def test_celebamask_hq_release_masks_combine_as_the_combined_pngs(tmp_path, capsys):
    """The release's per-class binary masks, CelebAMask-HQ-mask-anno/<id // 2000>/<id:05d>_<class>.png,
    read as the combined PNG that face-parsing.PyTorch writes (a later class overwrites an earlier one)."""
    combined = tmp_path / "combined"
    celebamask_folder(combined, {"train": [("0", 48), ("2001", 48)], "val": [("1", 48)]})
    release = tmp_path / "release"
    (release / "CelebA-HQ-img").mkdir(parents=True)
    names = {1: "skin", 4: "l_eye", 14: "neck", 16: "cloth", 17: "hair"}
    for path in sorted((combined / "mask").glob("*.png")):
        label = np.array(Image.open(path))
        index = int(path.stem)
        folder = release / "CelebAMask-HQ-mask-anno" / str(index // 2000)
        folder.mkdir(parents=True, exist_ok=True)
        for raw in np.unique(label):
            if raw:
                mask = (label == raw) | ((raw == 1) & (label == 4))  # skin under the eye: the eye mask wins
                Image.fromarray((mask * 255).astype(np.uint8)).save(folder / f"{index:05d}_{names[raw]}.png")
        (release / "CelebA-HQ-img" / f"{path.stem}.jpg").write_bytes(
            (combined / "CelebA-HQ-img" / f"{path.stem}.jpg").read_bytes())
    for split in ("train", "val"):
        (release / f"{split}.txt").write_text((combined / f"{split}.txt").read_text())
    ours = ParsingDataset(release, "celebamask_hq", "train")
    theirs = ParsingDataset(combined, "celebamask_hq", "train")
    assert ours.variant.name == "official" and theirs.variant.name == "combined"
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["image"], b["image"])
    assert main(["check-data", str(release), "--layout", "celebamask_hq", "--sheet", str(tmp_path / "s.png")]) == 0
    assert "ready to train on" in capsys.readouterr().out
    (release / "CelebA-HQ-img" / "portrait.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="CelebA-HQ images are named by their index"):
        ParsingDataset(release, "celebamask_hq", "all")
