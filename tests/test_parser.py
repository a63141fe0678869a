"""hierparse.Parser and ``hierparse predict`` on photos as users have them: every image mode, EXIF
orientation, folders with a corrupt file, resumed jobs; the API and the CLI agree."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from hierparse import Parser, load_hierarchy
from hierparse.cli import main
from hierparse.data import SyntheticParsing, read_image
from hierparse.data.dataset import to_rgb

TINY = ["crop_size", "32", "eval_size", "32", "batch_size", "2", "synthetic_train_images", "8",
        "synthetic_val_images", "3", "max_iters", "2", "eval_interval", "2", "workers", "0", "threads", "1"]
LIP = load_hierarchy("lip")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", *TINY, "out", str(out)]) == 0
    return out / "last.pt"


def person(height: int, width: int, index: int = 0) -> np.ndarray:
    return SyntheticParsing(n=index + 1, size=(height, width), split="test")[index]["image"]


def exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A folder of mixed photos: JPEG, PNG with alpha, grayscale JPEG, an EXIF-rotated phone photo, a
    16-bit gray PNG, a CMYK JPEG, a palette PNG, and one truncated file."""
    folder = tmp_path_factory.mktemp("photos")
    rgb = person(40, 56)
    Image.fromarray(rgb).save(folder / "plain.jpg", quality=95)
    rgba = np.dstack([person(48, 40, 1), np.full((48, 40), 128, np.uint8)])
    Image.fromarray(rgba).save(folder / "alpha.png")
    Image.fromarray(person(36, 52, 2)).convert("L").save(folder / "gray.jpg")
    Image.fromarray(person(32, 48, 3)).save(folder / "phone.jpg", exif=exif_orientation(6))
    Image.fromarray((person(40, 40, 4)[..., 0].astype(np.uint16) * 257)).save(folder / "deep.png")
    Image.fromarray(rgb).convert("CMYK").save(folder / "print.jpg")
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    (folder / "broken.jpg").write_bytes((folder / "plain.jpg").read_bytes()[:400])
    (folder / "notes.txt").write_text("not an image")
    return folder


# ---------------------------------------------------------------------- reading images
def test_exif_orientation_is_applied_to_photos_not_to_dataset_images(tmp_path):
    stored = person(32, 48)
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif_orientation(6))  # 6: rotate 90 clockwise
    oriented = read_image(tmp_path / "phone.png", orient=True)
    assert oriented.shape == (48, 32, 3)
    assert np.array_equal(oriented, np.rot90(stored, k=-1))
    assert np.array_equal(read_image(tmp_path / "phone.png"), stored)  # datasets: as stored, like their labels


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    pixels = read_image(tmp_path / "deep.png")
    assert pixels[..., 0].tolist() == [[0, 1, 128, 255]]
    assert np.array_equal(pixels[..., 0], pixels[..., 2])


@pytest.mark.parametrize("mode", ["L", "LA", "P", "PA", "RGBA", "CMYK", "I;16"])
def test_every_image_mode_becomes_rgb(mode):
    rgb = person(24, 32)
    source = Image.fromarray(rgb)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(source.convert("L")).astype(np.uint16) * 257)
        expected = np.repeat(np.asarray(source.convert("L"))[..., None], 3, axis=2)
    elif mode in ("LA", "PA", "RGBA"):
        image = source.convert(mode)
        image.putalpha(Image.fromarray(np.full(rgb.shape[:2], 7, np.uint8)))  # alpha dropped, not composited
        expected = np.asarray(source.convert(mode[:-1] if mode != "RGBA" else "RGB").convert("RGB"))
    else:
        image = source.convert(mode)
        expected = np.asarray(image.convert("RGB"))
    pixels = to_rgb(image)
    assert pixels.dtype == np.uint8 and pixels.shape == (24, 32, 3)
    assert np.array_equal(pixels, expected)


def test_unsupported_and_broken_images_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="32-bit float images are not supported"):
        to_rgb(Image.fromarray(np.zeros((4, 4), np.float32)), "depth.tif")
    (tmp_path / "cut.jpg").write_bytes(_jpeg_bytes()[:300])
    with pytest.raises(ValueError, match=f"cannot read image file {tmp_path / 'cut.jpg'}"):
        read_image(tmp_path / "cut.jpg", orient=True)


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(person(32, 32)).save(buffer, format="JPEG")
    return buffer.getvalue()


# ---------------------------------------------------------------------- the Parser API
def test_parser_takes_paths_pil_images_and_arrays_and_returns_maps_at_the_images_size(checkpoint, photos):
    parser = Parser.from_checkpoint(checkpoint, device="cpu")
    from_path = parser(photos / "plain.jpg")
    from_array = parser(read_image(photos / "plain.jpg"))
    from_pil = parser(Image.open(photos / "plain.jpg"))
    for parse in (from_path, from_array, from_pil):
        assert [level.shape for level in parse.levels] == [(40, 56)] * 3
        assert all(np.array_equal(a, b) for a, b in zip(parse.levels, from_path.levels))
    assert from_path.path == photos / "plain.jpg" and from_array.path is None
    phone = parser(photos / "phone.jpg")
    assert phone.levels[0].shape == (48, 32)  # the oriented size
    many = parser([photos / "plain.jpg", photos / "gray.jpg"], probabilities=True)
    assert len(many) == 2 and many[1].levels[0].shape == (36, 52)
    probabilities = many[0].probabilities
    assert [p.shape for p in probabilities] == [(c, 40, 56) for c in LIP.num_classes]
    np.testing.assert_allclose(probabilities[-1].sum(0), 1, atol=1e-4)
    assert np.array_equal(probabilities[-1].argmax(0), many[0].levels[-1])
    raw = many[0].raw
    assert raw.dtype == np.uint8 and np.array_equal(LIP.label_table()[2].numpy()[raw], many[0].levels[-1])
    assert many[0].colored(1).shape == (40, 56, 3) and many[0].overlay().shape == (40, 56, 3)


def test_parser_rejects_what_it_cannot_parse(checkpoint):
    parser = Parser.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(ValueError, match="an image array must be uint8 or uint16"):
        parser(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(TypeError, match="cannot parse a int"):
        parser(3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'zoom'"):
        Parser.from_checkpoint(checkpoint, device="cpu", zoom=2)


def test_tta_settings_of_the_parser(checkpoint):
    assert Parser.from_checkpoint(checkpoint, device="cpu").inference.views == [(1.0, False)]
    tta = Parser.from_checkpoint(checkpoint, device="cpu", tta=True).inference
    assert tta.flip and tta.scales == (0.75, 1.0, 1.25) and len(tta.views) == 6
    custom = Parser.from_checkpoint(checkpoint, device="cpu", tta={"flip": False, "scales": [0.5, 1]}).inference
    assert custom.views == [(0.5, False), (1, False)]
    assert Parser.from_checkpoint(checkpoint, device="cpu", mode="slide", crop=32, stride=16).inference.mode == "slide"


# ---------------------------------------------------------------------- hierparse predict
def read_outputs(out, stem):
    levels = [np.array(Image.open(out / f"{stem}_{name}.png")) for name in LIP.level_names]
    return levels, np.array(Image.open(out / f"{stem}_raw.png"))


def test_predict_a_folder_of_mixed_photos_skips_the_broken_one_and_matches_the_api(checkpoint, photos, tmp_path,
                                                                                  capsys):
    out = tmp_path / "out"
    status = main(["predict", str(photos), "--checkpoint", str(checkpoint), "--out", str(out), "--batch-size", "3",
                   "--overlay", "--device", "cpu"])
    captured = capsys.readouterr()
    assert status == 1
    assert f"hierparse: skipped: cannot read image file {photos / 'broken.jpg'}" in captured.err
    assert "parsed 7 images into" in captured.out and "1 unreadable and skipped" in captured.out
    parser = Parser.from_checkpoint(checkpoint, device="cpu", batch_size=3)
    for stem, size in [("plain", (40, 56)), ("alpha", (48, 40)), ("gray", (36, 52)), ("phone", (48, 32)),
                       ("deep", (40, 40)), ("print", (40, 56)), ("palette", (40, 56))]:
        picture = Image.open(out / f"{stem}_part.png")
        assert picture.mode == "P" and picture.size == size[::-1]
        assert picture.getpalette()[:6] == [c for color in LIP.colors(2)[:2] for c in color]
        levels, raw = read_outputs(out, stem)
        expected = parser(photos / f"{stem}{'.png' if stem in ('alpha', 'deep', 'palette') else '.jpg'}")
        assert all(np.array_equal(a, b) for a, b in zip(levels, expected.levels)), stem
        assert np.array_equal(raw, expected.raw)
        assert np.array(Image.open(out / f"{stem}_overlay.png")).shape == (*size, 3)
    assert not (out / "broken_part.png").exists() and not list(out.glob("*.tmp"))


def test_predict_skip_existing_resumes_a_stopped_job(checkpoint, photos, tmp_path, capsys):
    images = [str(photos / name) for name in ("plain.jpg", "gray.jpg", "alpha.png")]
    out = tmp_path / "out"
    assert main(["predict", *images, "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    (out / "gray_region.png").unlink()  # as if stopped while writing gray's outputs
    before = (out / "plain_part.png").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["predict", *images, "--checkpoint", str(checkpoint), "--out", str(out), "--skip-existing"]) == 0
    text = capsys.readouterr().out
    assert "parsed 1 images into" in text and "2 parsed before (--skip-existing)" in text
    assert (out / "gray_region.png").exists() and (out / "plain_part.png").stat().st_mtime_ns == before


def test_predict_takes_globs_and_recursive_folders(checkpoint, photos, tmp_path):
    nested = tmp_path / "album" / "day1"
    nested.mkdir(parents=True)
    Image.fromarray(person(32, 32)).save(nested / "a.png")
    Image.fromarray(person(32, 40, 1)).save(tmp_path / "album" / "b.png")
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "album"), "--recursive", "--checkpoint", str(checkpoint),
                 "--out", str(out)]) == 0
    assert (out / "day1" / "a_raw.png").exists() and (out / "b_raw.png").exists()
    assert main(["predict", str(photos / "p*.jpg"), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "g")]) == 0
    assert sorted(p.name for p in (tmp_path / "g").glob("*_raw.png")) == ["phone_raw.png", "plain_raw.png", "print_raw.png"]


@pytest.mark.parametrize("command, message", [
    (["{broken}"], "cannot read image file {broken}"),
    (["{photos}/nothing.png"], "no image, folder or pattern {photos}/nothing.png"),
    (["{photos}/zz*.png"], "no file matches {photos}/zz*.png"),
    (["{photos}/plain.jpg", "{other}/plain.jpg"], "would both write plain_*.png"),
    (["{photos}/plain.jpg", "--mode", "slide"], "eval_mode slide needs slide crop as a positive integer"),
    (["{photos}/plain.jpg", "--scales", "0"], "tta scales must be a non-empty list of positive numbers"),
])
def test_predict_bad_input_is_one_line_exit_2_and_nothing_written(checkpoint, photos, tmp_path, capsys, command,
                                                                   message):
    other = tmp_path / "other"
    other.mkdir()
    (other / "plain.jpg").write_bytes((photos / "plain.jpg").read_bytes())
    places = {"broken": photos / "broken.jpg", "photos": photos, "other": other}
    args = [token.format(**places) for token in command]
    assert main(["predict", *args, "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("hierparse: error: ") and "\n" not in error
    assert message.format(**places) in error
    assert not (tmp_path / "out").exists()
