"""On-disk layouts: a tiny tree per layout and variant, built with PIL in tmp_path, loaded back."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hierparse import load_hierarchy
from hierparse.cli import main
from hierparse.data import ParsingDataset, build_dataset, read_label

H, W = 12, 16


def make_pair(seed: int, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    label = rng.choice(np.asarray(ids, dtype=np.uint8), size=(H, W))
    return image, label


def write(image_path: Path, image: np.ndarray, label_path: Path | None = None, label: np.ndarray | None = None):
    """Save an image (PNG bytes even under a .jpg name, so pixels stay exact) and its label PNG."""
    image_path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(image_path, format="PNG")
    if label_path is not None:
        label_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label).save(label_path)


def write_ids(path: Path, stems: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{stem}\n" for stem in stems))


LIP_IDS = list(range(20))


def tree_lip_official(root: Path, split: str, doubled: bool = False) -> dict:
    expected = {}
    images = root / "TrainVal_images" / ("TrainVal_images" if doubled else "") / f"{split}_images"
    labels = (
        root / "TrainVal_parsing_annotations" / ("TrainVal_parsing_annotations" if doubled else "")
        / f"{split}_segmentations"
    )
    for i, stem in enumerate(["100034_483681", "10005_205677"]):
        image, label = make_pair(i, LIP_IDS)
        write(images / f"{stem}.jpg", image, labels / f"{stem}.png", label)
        expected[stem] = (image, label)
    write_ids(root / "TrainVal_images" / f"{split}_id.txt", list(expected))
    return expected


def tree_lip_official_doubled(root: Path, split: str) -> dict:
    return tree_lip_official(root, split, doubled=True)


def tree_schp(ids: list[int]):
    def build(root: Path, split: str) -> dict:
        expected = {}
        for i, stem in enumerate(["b", "a", "c"]):
            image, label = make_pair(10 + i, ids)
            write(root / f"{split}_images" / f"{stem}.jpg", image, root / f"{split}_segmentations" / f"{stem}.png", label)
            expected[stem] = (image, label)
        write_ids(root / f"{split}_id.txt", list(expected))  # id-file order, not sorted
        return expected

    return build


def tree_lip_ce2p(root: Path, split: str) -> dict:
    expected = {}
    for i, stem in enumerate(["x1", "x2"]):
        image, label = make_pair(20 + i, LIP_IDS)
        write(root / f"{split}_images" / f"{stem}.jpg", image, root / f"{split}_labels" / f"{stem}.png", label)
        expected[stem] = (image, label)
    return expected


def tree_cihp_official(root: Path, split: str) -> dict:
    folder = root / {"train": "Training", "val": "Validation"}[split]
    expected = {}
    for i, stem in enumerate(["0000006", "0000009"]):
        image, label = make_pair(30 + i, LIP_IDS)
        write(folder / "Images" / f"{stem}.jpg", image, folder / "Category_ids" / f"{stem}.png", label)
        expected[stem] = (image, label)
    write_ids(folder / f"{split}_id.txt", list(expected))
    return expected


def tree_shared(images_dir: str, labels_dir: str, ids: list[int], id_file: str):
    """Images of every split in one folder; a split is chosen by its id file."""

    def build(root: Path, split: str) -> dict:
        expected = {}
        for i, stem in enumerate(["2008_000003", "2008_000008", "2008_000015"]):
            image, label = make_pair(40 + i, ids)
            write(root / images_dir / f"{stem}.jpg", image, root / labels_dir / f"{stem}.png", label)
            if i < 2:  # the third image belongs to another split
                expected[stem] = (image, label)
        write_ids(root / id_file.format(split=split), list(expected))
        return expected

    return build


def tree_helen(root: Path, split: str) -> dict:
    expected = {}
    for i, stem in enumerate(["100032540_1", "10405146_1"]):
        image, label = make_pair(50 + i, list(range(11)))
        write(root / "images" / f"{stem}.jpg", image)
        rng = np.random.default_rng(i)
        for index in range(11):
            # Soft maps: the true class gets the highest value at each pixel.
            soft = rng.integers(0, 100, (H, W)).astype(np.uint8)
            soft[label == index] = 200
            (root / "labels" / stem).mkdir(parents=True, exist_ok=True)
            Image.fromarray(soft).save(root / "labels" / stem / f"{stem}_lbl{index:02d}.png")
        expected[stem] = (image, label)
    list_name = {"train": "exemplars", "val": "tuning"}[split]
    (root / f"{list_name}.txt").write_text("".join(f"{n + 1} , {stem}\n" for n, stem in enumerate(expected)))
    return expected


def tree_cityscapes(root: Path, split: str) -> dict:
    expected = {}
    cityscapes_ids = [0, 7, 8, 11, 21, 24, 26, 33]
    for i, (city, frame) in enumerate([("aachen", "aachen_000000_000019"), ("bochum", "bochum_000000_000313")]):
        image, label = make_pair(60 + i, cityscapes_ids)
        write(
            root / "leftImg8bit" / split / city / f"{frame}_leftImg8bit.png",
            image,
            root / "gtFine" / split / city / f"{frame}_gtFine_labelIds.png",
            label,
        )
        expected[f"{frame}_leftImg8bit"] = (image, label)
    return expected


def tree_generic(by_kind: bool):
    def build(root: Path, split: str) -> dict:
        expected = {}
        for i, stem in enumerate(["one", "two"]):
            image, label = make_pair(70 + i, [0, 1, 2])
            images = root / "images" / split if by_kind else root / split / "images"
            labels = root / "labels" / split if by_kind else root / split / "labels"
            write(images / f"{stem}.png", image, labels / f"{stem}.png", label)
            expected[stem] = (image, label)
        return expected

    return build


def tree_generic_list(root: Path, split: str) -> dict:
    expected = {}
    lines = []
    for i, stem in enumerate(["p", "q"]):
        image, label = make_pair(80 + i, [0, 1, 2])
        write(root / "img" / f"{stem}.png", image, root / "ann" / f"{stem}.png", label)
        expected[stem] = (image, label)
        lines.append(f"img/{stem}.png ann/{stem}.png\n")
    (root / f"{split}.txt").write_text("".join(lines))
    return expected


CASES = [
    ("lip", "official", tree_lip_official, None),
    ("lip", "official", tree_lip_official_doubled, None),
    ("lip", "schp", tree_schp(LIP_IDS), None),
    ("lip", "ce2p", tree_lip_ce2p, None),
    ("cihp", "official", tree_cihp_official, None),
    ("cihp", "schp", tree_schp(LIP_IDS), None),
    ("atr", "official", tree_shared("humanparsing/JPEGImages", "humanparsing/SegmentationClassAug", list(range(18)),
                                    "humanparsing/{split}_id.txt"), None),
    ("atr", "schp", tree_schp(list(range(18))), None),
    ("pascal_person_part", "official", tree_shared("JPEGImages", "SegmentationPart", list(range(7)),
                                                   "list/{split}_id.txt"), None),
    ("pascal_person_part", "schp", tree_schp(list(range(7))), None),
    ("helen", "official", tree_helen, None),
    ("cityscapes", "official", tree_cityscapes, None),
    ("generic", "folders", tree_generic(by_kind=False), "pascal_person_part"),
    ("generic", "folders_by_kind", tree_generic(by_kind=True), "pascal_person_part"),
    ("generic", "list", tree_generic_list, "pascal_person_part"),
]


@pytest.mark.parametrize("layout, variant, build, hierarchy", CASES, ids=lambda x: getattr(x, "__name__", str(x)))
@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("detect", [True, False], ids=["auto", "named"])
def test_each_layout_loads_its_tiny_tree(tmp_path, layout, variant, build, hierarchy, split, detect):
    expected = build(tmp_path, split)
    dataset = ParsingDataset(tmp_path, layout, split, hierarchy=hierarchy, variant="auto" if detect else variant)
    assert len(dataset) == len(expected)
    assert dataset.hierarchy.name == (hierarchy or layout)
    loaded = {}
    for sample in dataset:
        assert set(sample) == {"image", "label", "path"}
        assert sample["image"].dtype == np.uint8 and sample["image"].shape == (H, W, 3)
        assert sample["label"].dtype == np.uint8 and sample["label"].shape == (H, W)
        loaded[Path(sample["path"]).name.rsplit(".", 1)[0]] = sample
    assert set(loaded) == set(expected)
    for stem, (image, label) in expected.items():
        np.testing.assert_array_equal(loaded[stem]["image"], image)
        np.testing.assert_array_equal(loaded[stem]["label"], label)


def test_id_file_order_is_kept(tmp_path):
    tree_schp(LIP_IDS)(tmp_path, "train")
    names = [Path(path).stem for path, _ in ParsingDataset(tmp_path, "lip", "train").pairs]
    assert names == ["b", "a", "c"]


def test_ce2p_list_file_with_extra_columns(tmp_path):
    expected = tree_lip_ce2p(tmp_path, "train")
    list_file = tmp_path / "list" / "trainList.txt"
    list_file.parent.mkdir()
    list_file.write_text(
        "".join(f"train_images/{s}.jpg train_labels/{s}.png train_labels_rev/{s}.png train_edges/{s}.png\n"
                for s in expected)
    )
    dataset = ParsingDataset(tmp_path, "lip", "train", list_file="list/trainList.txt")
    assert [Path(s["path"]).stem for s in dataset] == list(expected)
    np.testing.assert_array_equal(dataset[1]["label"], expected["x2"][1])


def test_jpeg_image_decodes_close_to_the_original(tmp_path):
    image, label = make_pair(0, LIP_IDS)
    image = np.repeat(np.repeat(image[:3, :4], 4, axis=0), 4, axis=1)  # smooth blocks survive JPEG
    (tmp_path / "train_images").mkdir()
    Image.fromarray(image).save(tmp_path / "train_images" / "a.jpg", quality=95, subsampling=0)
    write_ids(tmp_path / "train_id.txt", ["a"])
    (tmp_path / "train_segmentations").mkdir()
    Image.fromarray(label).save(tmp_path / "train_segmentations" / "a.png")
    sample = ParsingDataset(tmp_path, "lip", "train")[0]
    assert np.abs(sample["image"].astype(int) - image).mean() < 8
    np.testing.assert_array_equal(sample["label"], label)


def test_palette_label_gives_indices_not_colours(tmp_path):
    label = np.array([[0, 5, 14], [15, 19, 255]], dtype=np.uint8)
    palette_image = Image.fromarray(label, mode="P")
    palette_image.putpalette([value for i in range(256) for value in (i * 7 % 256, 0, 255 - i)])
    palette_image.save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label(tmp_path / "l.png"), label)


def test_sixteen_bit_label_within_range_is_accepted(tmp_path):
    label = np.array([[0, 7], [33, 255]], dtype=np.uint16)
    Image.fromarray(label).save(tmp_path / "l.png")
    np.testing.assert_array_equal(read_label(tmp_path / "l.png"), label.astype(np.uint8))


def test_shared_folder_split_all_reads_every_image(tmp_path):
    tree_shared("JPEGImages", "SegmentationPart", list(range(7)), "{split}_id.txt")(tmp_path, "train")
    assert len(ParsingDataset(tmp_path, "pascal_person_part", "all")) == 3
    assert len(ParsingDataset(tmp_path, "pascal_person_part", "train")) == 2


def test_build_dataset_names_a_layout_and_a_root(tmp_path):
    tree_schp(LIP_IDS)(tmp_path, "val")
    dataset = build_dataset("lip", tmp_path, "val", transform="eval", size=(8, 8))
    sample = dataset[0]
    assert tuple(sample["image"].shape) == (3, 8, 8) and sample["label"].dtype.is_floating_point is False
    assert str(sample["label"].dtype) == "torch.uint8"


# ---------------------------------------------------------------------------- bad data
def schp_tree(tmp_path: Path) -> dict:
    return tree_schp(LIP_IDS)(tmp_path, "train")


def test_missing_label_file_is_named(tmp_path):
    schp_tree(tmp_path)
    missing = tmp_path / "train_segmentations" / "a.png"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=f"missing label file {missing}"):
        ParsingDataset(tmp_path, "lip", "train")


def test_missing_image_listed_in_id_file_is_named(tmp_path):
    schp_tree(tmp_path)
    (tmp_path / "train_images" / "c.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"train_images/c.*train_id\.txt"):
        ParsingDataset(tmp_path, "lip", "train")


def test_image_deleted_after_listing_is_named(tmp_path):
    schp_tree(tmp_path)
    dataset = ParsingDataset(tmp_path, "lip", "train")
    (tmp_path / "train_images" / "a.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing image file .*train_images/a\.jpg"):
        dataset[1]


@pytest.mark.parametrize("which", ["image", "label"])
def test_unreadable_file_is_named(tmp_path, which):
    schp_tree(tmp_path)
    broken = tmp_path / ("train_images/a.jpg" if which == "image" else "train_segmentations/a.png")
    broken.write_bytes(b"not an image at all")
    dataset = ParsingDataset(tmp_path, "lip", "train")
    with pytest.raises(ValueError, match=f"cannot read {which} file {broken}"):
        dataset[1]


@pytest.mark.parametrize("layout, mode", [("lip", "RGB"), ("pascal_person_part", "RGBA")])
def test_colour_rendered_labels_are_read_through_the_trees_colours_within_a_tolerance(tmp_path, layout, mode):
    """Renderings as some copies of Pascal-Person-Part ship them: class colours a few levels off, RGBA."""
    hierarchy = load_hierarchy(layout)
    fine = hierarchy.num_levels - 1
    rng = np.random.default_rng(0)
    raw = rng.choice(hierarchy.fine_to_raw().numpy(), size=(H, W)).astype(np.uint8)
    palette = np.asarray(hierarchy.colors(fine), np.int16)
    rendered = palette[hierarchy.label_table()[fine].numpy()[raw]] + rng.integers(-8, 9, size=(H, W, 3))
    rendered = np.clip(rendered, 0, 255).astype(np.uint8)
    if mode == "RGBA":
        rendered = np.dstack([rendered, np.full((H, W), 255, np.uint8)])
    path = tmp_path / "render.png"
    Image.fromarray(rendered).save(path)
    assert np.array_equal(read_label(path, hierarchy), raw)
    with pytest.raises(ValueError, match=f"label file {path} has mode '{mode}'"):
        read_label(path)  # without a tree to read the colours with


def test_a_colour_far_from_every_class_is_a_one_line_error_naming_the_file(tmp_path):
    schp_tree(tmp_path)
    path = tmp_path / "train_segmentations" / "b.png"
    rendered = np.zeros((H, W, 3), np.uint8)
    rendered[2, 3] = (40, 200, 90)
    Image.fromarray(rendered).save(path)
    with pytest.raises(ValueError, match=rf"label file {path}: colour \(40, 200, 90\) at x=3, y=2 is more than 8 "
                                         "levels from every class colour of hierarchy 'lip'"):
        ParsingDataset(tmp_path, "lip", "train")[0]


def test_undeclared_label_values_name_file_and_values(tmp_path):
    schp_tree(tmp_path)
    path = tmp_path / "train_segmentations" / "a.png"
    label = np.zeros((H, W), np.uint8)
    label[0, :3] = [30, 77, 30]
    Image.fromarray(label).save(path)
    with pytest.raises(ValueError, match=rf"label file {path} holds raw ids \[30, 77\] .*'lip'"):
        ParsingDataset(tmp_path, "lip", "train")[1]


def test_undeclared_values_can_be_ignored_with_one_warning(tmp_path):
    schp_tree(tmp_path)
    for stem in ("a", "b"):
        label = np.full((H, W), 3, np.uint8)
        label[1, 1] = 42
        Image.fromarray(label).save(tmp_path / "train_segmentations" / f"{stem}.png")
    dataset = ParsingDataset(tmp_path, "lip", "train", undeclared="ignore")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first, second = dataset[0], dataset[1]
    assert len(caught) == 1 and "[42]" in str(caught[0].message)
    for sample in (first, second):
        assert sample["label"][1, 1] == 255 and (np.delete(sample["label"].ravel(), 1 * W + 1) == 3).all()


def test_bad_undeclared_policy_is_refused(tmp_path):
    schp_tree(tmp_path)
    with pytest.raises(ValueError, match="undeclared must be one of"):
        ParsingDataset(tmp_path, "lip", "train", undeclared="drop")


def test_size_mismatch_names_the_pair(tmp_path):
    schp_tree(tmp_path)
    label_path = tmp_path / "train_segmentations" / "c.png"
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(label_path)
    with pytest.raises(ValueError, match=rf"image .*train_images/c\.jpg is 16x12 but its label {label_path} is 16x13"):
        ParsingDataset(tmp_path, "lip", "train")[2]


def test_empty_split_names_the_folder(tmp_path):
    (tmp_path / "val_images").mkdir()
    (tmp_path / "val_segmentations").mkdir()
    with pytest.raises(ValueError, match=f"empty split 'val': no images .* in {tmp_path / 'val_images'}"):
        ParsingDataset(tmp_path, "lip", "val")


def test_empty_id_file_is_named(tmp_path):
    schp_tree(tmp_path)
    (tmp_path / "train_id.txt").write_text("\n")
    with pytest.raises(ValueError, match=f"empty split: id file {tmp_path / 'train_id.txt'}"):
        ParsingDataset(tmp_path, "lip", "train")


def test_empty_list_file_is_named(tmp_path):
    (tmp_path / "train.txt").write_text("")
    with pytest.raises(ValueError, match="empty split: list file .*train.txt"):
        ParsingDataset(tmp_path, "generic", "train", hierarchy="lip")


def test_list_file_line_without_label_is_named(tmp_path):
    (tmp_path / "train.txt").write_text("a.png b.png\nc.png\n")
    with pytest.raises(ValueError, match=r"train\.txt:2: expected 'image label'"):
        ParsingDataset(tmp_path, "generic", "train", hierarchy="lip")


def test_no_layout_found_lists_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no lip layout for split 'train' .*TrainVal_images/train_images"):
        ParsingDataset(tmp_path, "lip", "train")


def test_missing_root_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"dataset root {tmp_path / 'nowhere'}"):
        ParsingDataset(tmp_path / "nowhere", "lip", "train")


def test_shared_folder_without_id_file_says_what_to_do(tmp_path):
    tree_shared("JPEGImages", "SegmentationClassAug", list(range(18)), "{split}_id.txt")(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"split 'val' needs an id file .*split='all'"):
        ParsingDataset(tmp_path, "atr", "val")


def test_missing_helen_maps_are_named(tmp_path):
    tree_helen(tmp_path, "train")
    for path in (tmp_path / "labels" / "10405146_1").iterdir():
        path.unlink()
    with pytest.raises(FileNotFoundError, match=r"missing label maps 10405146_1_lbl00\.png"):
        ParsingDataset(tmp_path, "helen", "train")[1]


def test_unknown_layout_variant_and_dataset_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset layout 'mhp'"):
        ParsingDataset(tmp_path, "mhp", "train")
    schp_tree(tmp_path)
    with pytest.raises(ValueError, match="layout 'lip' has no variant 'coco'"):
        ParsingDataset(tmp_path, "lip", "train", variant="coco")
    with pytest.raises(ValueError, match="unknown dataset 'mhp'"):
        build_dataset("mhp", tmp_path)
    with pytest.raises(ValueError, match="needs a root folder"):
        build_dataset("lip")
    with pytest.raises(ValueError, match="unknown transform 'augment'"):
        build_dataset("lip", tmp_path, transform="augment")


def test_generic_layout_needs_a_hierarchy(tmp_path):
    tree_generic(by_kind=False)(tmp_path, "train")
    with pytest.raises(ValueError, match="layout 'generic' has no hierarchy"):
        ParsingDataset(tmp_path, "generic", "train")


def test_dataset_pickles_for_worker_processes(tmp_path):
    expected = tree_schp(LIP_IDS)(tmp_path, "train")
    dataset = pickle.loads(pickle.dumps(ParsingDataset(tmp_path, "lip", "train", undeclared="ignore")))
    np.testing.assert_array_equal(dataset[0]["label"], expected["b"][1])


@pytest.mark.parametrize("layout, variant, build, hierarchy", CASES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_check_data_finds_each_layout_ready(tmp_path, capsys, layout, variant, build, hierarchy):
    build(tmp_path, "train")
    if layout == "cityscapes":  # the release keeps trainIds, instanceIds (16-bit) and colour files beside labelIds
        for label in (tmp_path / "gtFine" / "train").rglob("*_labelIds.png"):
            frame = label.name[: -len("_labelIds.png")]
            Image.fromarray(np.array(Image.open(label))).save(label.parent / f"{frame}_trainIds.png")
            Image.fromarray(np.full((H, W), 26001, np.uint16)).save(label.parent / f"{frame}_instanceIds.png")
    command = ["check-data", str(tmp_path), "--layout", layout, "--sheet", str(tmp_path / "sheet.png")]
    assert main([*command, *(["--hierarchy", hierarchy] if hierarchy else [])]) == 0
    assert capsys.readouterr().out.strip().endswith("ready to train on")


@pytest.mark.parametrize("layout, variant, build, hierarchy",
                         [case for case in CASES if case[1] in ("official", "folders")], ids=lambda x: str(x))
def test_a_few_training_iterations_run_on_each_layout(tmp_path, layout, variant, build, hierarchy):
    for split in ("train", "val"):
        build(tmp_path, split)
    assert main(["train", "hierarchy", hierarchy or layout, "dataset", layout, "root", str(tmp_path), "crop_size", "16",
                 "eval_size", "16", "batch_size", "2", "max_iters", "2", "eval_interval", "2", "workers", "0",
                 "threads", "1", "out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "last.pt").exists()
