"""hierparse.inference: aspect-preserving, slide and test-time-augmented inference against plain-PyTorch references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hierparse import build_model, load_hierarchy
from hierparse.hierarchy import HierarchyError, hierarchy_from_yaml
from hierparse.inference import Inference, Predictor, decode_scores

LIP = load_hierarchy("lip")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    parser = build_model(LIP, "light", "psp").eval()
    with torch.no_grad():  # random BatchNorm statistics, so that outputs vary across pixels and classes
        for module in parser.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        for module in parser.levels:  # refinements on, and the left class of each pair favoured, so that
            if module.refine is not None:  # parses hold left/right classes and are not mirror-symmetric
                module.refine[-1].weight.normal_(0, 0.1)
        swap = LIP.class_flip(2)
        parser.levels[-1].classifier.bias[[c for c in range(20) if c < swap[c]]] += 3.0
    return parser


def image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(3, height, width, generator=torch.Generator().manual_seed(seed))


def covered_resize(logits, covered, size):
    """Plain PyTorch (grid_sample): the top-left ``covered`` fraction of ``logits`` stretched over ``size``,
    each output pixel sampled at its centre."""
    height, width = size
    rows = (torch.arange(height) + 0.5) * 2 * covered[0] / height - 1
    columns = (torch.arange(width) + 0.5) * 2 * covered[1] / width - 1
    grid = torch.stack(torch.meshgrid(columns, rows, indexing="xy"), -1)[None]  # [1, H, W, (x, y)]
    return F.grid_sample(logits, grid.expand(len(logits), -1, -1, -1).to(logits.dtype), mode="bilinear",
                         padding_mode="border", align_corners=False)


def reference_view(model, picture, scaled, canvas, size, mirrored=False):
    """Plain PyTorch: resize, pad right/bottom, (mirror), run, (mirror back, swap classes), then the part
    of the logits the image covers to its size in one bilinear step, softmax."""
    x = F.interpolate(picture[None], size=scaled, mode="bilinear", align_corners=False) if scaled != tuple(
        picture.shape[-2:]) else picture[None]
    x = F.pad(x, (0, canvas[1] - scaled[1], 0, canvas[0] - scaled[0]))
    logits = model(x.flip(-1) if mirrored else x)
    out = []
    for level, level_logits in enumerate(logits):
        if mirrored:
            swap = LIP.class_flip(level)
            level_logits = level_logits.flip(-1)[:, swap]
        covered = (scaled[0] / canvas[0], scaled[1] / canvas[1])
        out.append(covered_resize(level_logits, covered, size).softmax(1)[0])
    return out


@torch.no_grad()
def test_aspect_mode_scales_the_long_side_pads_to_the_stride_and_crops_the_padding_off(model):
    picture = image(50, 90)
    predictor = Predictor(model, LIP, Inference(size=64))
    scores = predictor.scores([picture])[0]
    # long side 90 -> 64: 50 * 64 / 90 = 35.6 -> 36 rows, padded to 40 (stride 8)
    expected = reference_view(model, picture, (36, 64), (40, 64), (50, 90))
    for level, (got, want) in enumerate(zip(scores, expected)):
        assert got.shape == (LIP.num_classes[level], 50, 90)
        torch.testing.assert_close(got.exp(), want, atol=2e-5, rtol=1e-4)
    maps = predictor.maps([picture])[0]
    assert [tuple(m.shape) for m in maps] == [(50, 90)] * 3


@torch.no_grad()
def test_short_side_and_resize_modes(model):
    assert Inference(size=64, side="short").scaled_size(50, 90, 1.0) == (64, 115)
    assert Inference(mode="resize", size=64).scaled_size(50, 90, 1.25) == (80, 80)
    assert Inference(mode="none", size=64).scaled_size(50, 90, 1.0) == (50, 90)
    assert Inference(size=None).scaled_size(50, 90, 0.5) == (25, 45)
    picture = image(50, 90)
    scores = Predictor(model, LIP, Inference(mode="resize", size=48)).scores([picture])[0]
    expected = reference_view(model, picture, (48, 48), (48, 48), (50, 90))
    torch.testing.assert_close(scores[-1].exp(), expected[-1], atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_tta_averages_the_probabilities_of_every_view(model):
    picture = image(40, 56, seed=1)
    inference = Inference(size=56, flip=True, scales=(0.75, 1.0, 1.5))
    scores = Predictor(model, LIP, inference).scores([picture])[0]
    views = []
    for scale in (0.75, 1.0, 1.5):
        scaled = (round(40 * scale), round(56 * scale))
        canvas = tuple(-(-side // 8) * 8 for side in scaled)
        for mirrored in (False, True):
            views.append(reference_view(model, picture, scaled, canvas, (40, 56), mirrored))
    for level in range(3):
        mean = torch.stack([view[level] for view in views]).mean(0)
        torch.testing.assert_close(scores[level].exp(), mean, atol=2e-5, rtol=1e-4)
    expected_maps = decode_scores([torch.stack([v[l] for v in views]).mean(0).log()[None] for l in range(3)], LIP)
    maps = Predictor(model, LIP, inference).maps([picture])[0]
    for got, want in zip(maps, expected_maps):
        assert (got != want[0]).float().mean() < 1e-3  # only near-ties may differ


@torch.no_grad()
@pytest.mark.parametrize("decode", ["independent", "consistent"])
def test_flip_tta_makes_the_parse_of_a_mirrored_image_the_mirrored_parse_with_left_and_right_swapped(model, decode):
    picture = image(48, 64, seed=2)  # multiples of the stride: no padding, which is not mirror-symmetric
    predictor = Predictor(model, LIP, Inference(size=None, flip=True), decode)
    plain, mirrored = predictor.maps([picture, picture.flip(-1)])
    swapped = 0
    for level in range(3):
        swap = LIP.class_flip(level)
        expected = swap[plain[level].flip(-1)]
        assert (mirrored[level] != expected).float().mean() < 1e-3
        swapped += int((swap[plain[level]] != plain[level]).sum())
    assert swapped > 0  # some pixels are left/right classes, so the swap was exercised
    # a model that is not mirror-symmetric, without the flip view: no such guarantee
    lone = Predictor(model, LIP, Inference(size=None), decode)
    plain, mirrored = lone.maps([picture, picture.flip(-1)])
    assert not torch.equal(mirrored[-1], LIP.class_flip(2)[plain[-1].flip(-1)])


@torch.no_grad()
def test_slide_with_one_window_covering_the_image_equals_whole_image_inference(model):
    square = image(64, 64, seed=3)  # one 64x64 window, no padding either way
    whole = Predictor(model, LIP, Inference(mode="none", size=None)).scores([square])[0]
    slide = Predictor(model, LIP, Inference(mode="slide", size=None, crop=64, stride=64)).scores([square])[0]
    for a, b in zip(whole, slide):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_slide_averages_overlapping_windows_probabilities(model):
    picture = image(40, 80, seed=4)
    scores = Predictor(model, LIP, Inference(mode="slide", size=None, crop=48, stride=32)).scores([picture])[0]
    canvas = F.pad(picture[None], (0, 0, 0, 8))  # 40 rows padded to the 48-row window
    total = [torch.zeros(1, c, 48, 80) for c in LIP.num_classes]
    count = torch.zeros(1, 1, 48, 80)
    for left in (0, 32):  # 0..48 and 32..80: columns 32..48 are seen twice
        logits = model(canvas[..., left:left + 48])
        for level, level_logits in enumerate(logits):
            total[level][..., left:left + 48] += F.interpolate(level_logits, size=(48, 48), mode="bilinear",
                                                               align_corners=False).softmax(1)
        count[..., left:left + 48] += 1
    assert count[0, 0, 0].tolist() == [1] * 32 + [2] * 16 + [1] * 32
    for level in range(3):
        torch.testing.assert_close(scores[level].exp(), (total[level] / count)[0, :, :40], atol=2e-5, rtol=1e-4)


@torch.no_grad()
def test_an_images_parse_does_not_depend_on_its_batch(model):
    pictures = [image(40, 56, seed=5), image(64, 40, seed=6), image(40, 56, seed=7)]
    predictor = Predictor(model, LIP, Inference(size=64))
    together = predictor.scores(pictures)
    for picture, batched in zip(pictures, together):
        alone = predictor.scores([picture])[0]
        for a, b in zip(alone, batched):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_tree_models_average_sigmoid_scores(model):
    picture = image(32, 32, seed=8)
    inference = Inference(size=None, flip=True)
    scores = Predictor(model, LIP, inference, "tree").scores([picture])[0]
    plain = model(picture[None])
    mirrored = model(picture[None].flip(-1))
    for level in range(3):
        a = F.interpolate(plain[level], size=(32, 32), mode="bilinear", align_corners=False).sigmoid()
        b = F.interpolate(mirrored[level].flip(-1)[:, LIP.class_flip(level)], size=(32, 32), mode="bilinear",
                          align_corners=False).sigmoid()
        torch.testing.assert_close(scores[level], ((a + b) / 2)[0], atol=1e-6, rtol=1e-5)


def test_flat_models_are_parsed_at_every_level():
    torch.manual_seed(1)
    flat = build_model(LIP, "light", "fcn", stacked=False).eval()
    maps = Predictor(flat, LIP, Inference(size=None, flip=True)).maps([image(32, 40)])[0]
    parents = [torch.tensor(LIP.parents(level)) for level in (1, 2)]
    assert torch.equal(parents[1][maps[2]], maps[1]) and torch.equal(parents[0][maps[1]], maps[0])


@pytest.mark.parametrize("settings, message", [
    ({"mode": "square"}, "eval_mode must be one of aspect, resize, none, slide"),
    ({"side": "wide"}, "eval_side must be long or short"),
    ({"mode": "resize", "size": None}, "eval_mode resize needs an eval_size"),
    ({"size": 8}, "eval_size must be an integer of at least 16"),
    ({"mode": "slide", "crop": 64}, "needs slide stride as a positive integer"),
    ({"mode": "slide", "crop": 32, "stride": 64}, "slide stride 64 exceeds crop 32"),
    ({"scales": ()}, "tta scales must be a non-empty list"),
    ({"scales": (1.0, -0.5)}, "tta scales must be a non-empty list of positive numbers"),
    ({"scales": 2}, "tta scales must be a list"),
])
def test_bad_inference_settings_are_one_line_errors(settings, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        Inference(**settings)


def test_flip_pairs_must_induce_a_swap_at_every_level():
    text = """name: lopsided
levels: [side, part]
flip_pairs: [[left-arm, right-arm]]
classes:
  - name: left
    children: [{name: left-arm, ids: [1]}, {name: hat, ids: [2]}]
  - name: right
    children: [{name: right-arm, ids: [3]}]
"""
    with pytest.raises(HierarchyError, match="mirroring swaps part of this class's leaves"):
        hierarchy_from_yaml(text)
    fixed = hierarchy_from_yaml(text.replace("{name: hat, ids: [2]}", "").replace("[{name: left-arm, ids: [1]}, ]",
                                                                                 "[{name: left-arm, ids: [1]}]"))
    assert fixed.class_flip(0).tolist() == [1, 0] and fixed.class_flip(1).tolist() == [1, 0]
    assert LIP.class_flip(1).tolist() == list(range(5))  # every LIP region is mirror-symmetric
    assert sorted(LIP.class_flip(2).tolist()) == list(range(20))
