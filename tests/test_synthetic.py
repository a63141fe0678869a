"""Synthetic people: deterministic, all 20 LIP classes, own left/right, not separable by colour."""

from __future__ import annotations

import numpy as np
import pytest

from hierparse import load_hierarchy
from hierparse.data import SyntheticParsing, build_dataset, colorize
from hierparse.data.synthetic import _Canvas, _Materials, _Person, contact_sheet

LEFT_SHOE, RIGHT_SHOE, FACE = 18, 19, 13


@pytest.fixture(scope="module")
def forty() -> list[dict]:
    dataset = SyntheticParsing(n=40, size=96, seed=3)
    return [dataset[i] for i in range(40)]


def test_samples_are_raw_arrays_of_lip_ids(forty):
    for sample in forty:
        assert sample["image"].dtype == np.uint8 and sample["image"].shape == (96, 96, 3)
        assert sample["label"].dtype == np.uint8 and sample["label"].shape == (96, 96)
        assert sample["label"].max() < 20


def test_every_lip_class_appears_within_forty_images(forty):
    present = set()
    for sample in forty:
        present |= set(np.unique(sample["label"]).tolist())
    assert present == set(range(20))


def test_same_seed_split_index_gives_the_same_sample_in_a_new_instance():
    first = SyntheticParsing(n=5, size=64, seed=11, split="val")[4]
    again = SyntheticParsing(n=5, size=64, seed=11, split="val")[4]
    np.testing.assert_array_equal(first["image"], again["image"])
    np.testing.assert_array_equal(first["label"], again["label"])
    assert first["path"] == again["path"] == "synthetic/val/4"


@pytest.mark.parametrize(
    "other",
    [dict(seed=0, split="val", index=0), dict(seed=1, split="train", index=0), dict(seed=0, split="train", index=1)],
    ids=["split", "seed", "index"],
)
def test_split_seed_and_index_each_change_the_sample(other):
    base = SyntheticParsing(n=2, size=64, seed=0, split="train")[0]
    changed = SyntheticParsing(n=2, size=64, seed=other["seed"], split=other["split"])[other["index"]]
    assert not np.array_equal(base["label"], changed["label"])
    assert not np.array_equal(base["image"], changed["image"])


def test_train_and_val_share_no_image():
    train = SyntheticParsing(n=20, size=32, seed=0, split="train")
    val = SyntheticParsing(n=20, size=32, seed=0, split="val")
    train_images = {train[i]["image"].tobytes() for i in range(20)}
    assert not train_images & {val[i]["image"].tobytes() for i in range(20)}


def test_non_square_size():
    sample = SyntheticParsing(n=1, size=(80, 48))[0]
    assert sample["image"].shape == (80, 48, 3) and sample["label"].shape == (80, 48)


def centroid_x(label: np.ndarray, raw_id: int) -> float:
    return float(np.nonzero(label == raw_id)[1].mean())


@pytest.mark.parametrize("seed", range(6))
def test_left_and_right_are_the_persons_own(seed):
    # Seen from the front the person's left shoe is on the image's right; from the back, on the left.
    for facing_back in (False, True):
        rng = np.random.default_rng(seed)
        canvas = _Canvas(128, 128)
        person = _Person(rng, _Materials(), height=110.0, cx=64.0, top=8.0, facing_back=facing_back)
        person.draw(canvas)
        label = np.asarray(canvas.label)
        left_of_right = centroid_x(label, LEFT_SHOE) < centroid_x(label, RIGHT_SHOE)
        assert left_of_right == facing_back
        has_face = (label == FACE).any()
        assert has_face != facing_back or person.bald


def test_colour_alone_does_not_give_the_class():
    """A colour -> class lookup fitted on 40 training images scores a low mIoU on validation images."""
    bins = 16

    def keys(images):
        quantised = (np.stack(images) // (256 // bins)).astype(np.int64)
        return (quantised[..., 0] * bins + quantised[..., 1]) * bins + quantised[..., 2]

    train = [SyntheticParsing(n=40, size=64, seed=0)[i] for i in range(40)]
    val = [SyntheticParsing(n=20, size=64, seed=0, split="val")[i] for i in range(20)]
    counts = np.zeros((bins**3, 20))
    np.add.at(counts, (keys([s["image"] for s in train]).ravel(), np.stack([s["label"] for s in train]).ravel()), 1)
    predicted = counts.argmax(axis=1)[keys([s["image"] for s in val])]
    truth = np.stack([s["label"] for s in val])
    ious = [
        ((predicted == c) & (truth == c)).sum() / ((predicted == c) | (truth == c)).sum()
        for c in range(20)
        if ((predicted == c) | (truth == c)).any()
    ]
    assert np.mean(ious) < 0.25


def test_transform_and_build_dataset():
    dataset = build_dataset("synthetic", split="val", transform="train", size=48, n=3, seed=2)
    assert isinstance(dataset, SyntheticParsing) and dataset.split == "val" and len(dataset) == 3
    sample = dataset[2]
    assert tuple(sample["image"].shape) == (3, 48, 48) and str(sample["label"].dtype) == "torch.uint8"


def test_colorize_uses_the_hierarchy_colours_and_white_for_ignored():
    lip = load_hierarchy("lip")
    label = np.array([[0, 13], [19, 255]], dtype=np.uint8)
    colours = lip.colors(-1)
    fine_index = {raw: i for i, raw in enumerate(lip.fine_to_raw().tolist())}
    out = colorize(label, lip)
    assert tuple(out[0, 1]) == colours[fine_index[13]] and tuple(out[1, 0]) == colours[fine_index[19]]
    assert tuple(out[1, 1]) == (255, 255, 255)


def test_contact_sheet_tiles_image_and_label():
    sheet = contact_sheet(SyntheticParsing(n=4, size=32), count=4, columns=2)
    assert sheet.shape == (2 * 32 + 4, 2 * 64 + 4, 3) and sheet.dtype == np.uint8


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(hierarchy="atr"), ValueError, r"hierarchy 'atr' does not declare \[18, 19\]"),
        (dict(split="holdout"), ValueError, "unknown split 'holdout'"),
        (dict(n=0), ValueError, "n must be at least 1"),
        (dict(size=8), ValueError, "size must be at least 16x16"),
    ],
)
def test_bad_arguments_are_refused(kwargs, error, message):
    with pytest.raises(error, match=message):
        SyntheticParsing(**kwargs)


def test_index_out_of_range():
    with pytest.raises(IndexError, match="index 3 out of range for 3 samples"):
        SyntheticParsing(n=3, size=16)[3]


def test_the_module_entry_point_takes_help_and_bad_arguments(tmp_path):
    import subprocess
    import sys
    run = lambda *args: subprocess.run([sys.executable, "-m", "hierparse.data", *args], capture_output=True,
                                       text=True, timeout=120)
    shown = run("--help")
    assert shown.returncode == 0 and shown.stdout.startswith("usage: python -m hierparse.data")
    bad = run(str(tmp_path / "x.png"), "--size", "8")
    assert bad.returncode == 2 and bad.stderr == "hierparse: error: size must be at least 16x16, got 8\n"
    good = run(str(tmp_path / "x.png"), "--count", "4", "--size", "32")
    assert good.returncode == 0 and (tmp_path / "x.png").read_bytes().startswith(b"\x89PNG")
