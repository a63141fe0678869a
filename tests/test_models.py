"""Models built from hierarchies: outputs, gradients, strides, skips, torchvision weights, export."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from hierparse import build_model, load_hierarchy
from hierparse.hierarchy import builtin_names
from hierparse.models import BACKBONES, HEADS, describe_model
from hierparse.models.heads import resize

HEAD_NAMES = ["fcn", "psp", "aspp"]

# --------------------------------------------------------------------------- torchvision layout
# Written from torchvision.models.resnet (not from hierparse): block type and blocks per stage,
# plus the parameter counts torchvision documents for each model (fc included).
TORCHVISION_ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2), 11_689_512),
    "resnet34": ("basic", (3, 4, 6, 3), 21_797_672),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 25_557_032),
    "resnet101": ("bottleneck", (3, 4, 23, 3), 44_549_160),
}


def torchvision_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``torchvision.models.<arch>().state_dict()``."""
    kind, counts, _ = TORCHVISION_ARCHS[arch]
    expansion = 1 if kind == "basic" else 4
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(prefix: str, channels: int) -> None:
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{name}"] = (channels,)
        shapes[f"{prefix}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    inplanes = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), counts), start=1):
        for block in range(blocks):
            p = f"layer{stage}.{block}"
            if kind == "basic":
                convs = [(planes, inplanes, 3, 3), (planes, planes, 3, 3)]
            else:
                convs = [(planes, inplanes, 1, 1), (planes, planes, 3, 3), (planes * 4, planes, 1, 1)]
            for i, shape in enumerate(convs, start=1):
                shapes[f"{p}.conv{i}.weight"] = shape
                bn(f"{p}.bn{i}", shape[0])
            if block == 0 and (stage > 1 or inplanes != planes * expansion):
                shapes[f"{p}.downsample.0.weight"] = (planes * expansion, inplanes, 1, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            inplanes = planes * expansion
    shapes["fc.weight"] = (1000, 512 * expansion)
    shapes["fc.bias"] = (1000,)
    return shapes


def learnable_count(shapes: dict[str, tuple[int, ...]]) -> int:
    return sum(torch.Size(s).numel() for k, s in shapes.items()
               if k.endswith(("weight", "bias")))


def torchvision_checkpoint(arch: str, path, generator: torch.Generator, drop_tracked=False) -> dict:
    state = {}
    for key, shape in torchvision_shapes(arch).items():
        if key.endswith("num_batches_tracked"):
            if not drop_tracked:
                state[key] = torch.tensor(7)
        else:
            state[key] = torch.randn(shape, generator=generator)
    torch.save(state, path)
    return state


@pytest.mark.parametrize("arch", list(TORCHVISION_ARCHS))
def test_backbone_keys_and_shapes_are_torchvision_without_fc(arch):
    expected = torchvision_shapes(arch)
    assert learnable_count(expected) == TORCHVISION_ARCHS[arch][2]  # the table itself is right
    with torch.device("meta"):
        model = build_model("lip", arch, "fcn")
    got = {key: tuple(value.shape) for key, value in model.backbone.state_dict().items()}
    assert got == {k: s for k, s in expected.items() if not k.startswith("fc.")}


def test_torchvision_checkpoint_loads_and_skips_fc(tmp_path):
    path = tmp_path / "resnet18.pth"
    state = torchvision_checkpoint("resnet18", path, torch.Generator().manual_seed(0))
    model = build_model("lip", "resnet18", "fcn", pretrained=path)
    loaded = model.backbone.state_dict()
    for key, value in state.items():
        if key.startswith("fc."):
            assert key not in loaded
        else:
            assert torch.equal(loaded[key], value), key


def test_checkpoint_without_num_batches_tracked_loads(tmp_path):
    path = tmp_path / "old.pth"
    state = torchvision_checkpoint("resnet18", path, torch.Generator().manual_seed(1), drop_tracked=True)
    model = build_model("helen", "resnet18", "fcn", pretrained=str(path))
    assert torch.equal(model.backbone.get_parameter("layer4.1.bn2.weight"), state["layer4.1.bn2.weight"])
    assert torch.equal(model.backbone.get_buffer("layer4.1.bn2.running_var"),
                       state["layer4.1.bn2.running_var"])


def test_wrong_checkpoints_name_the_keys(tmp_path):
    generator = torch.Generator().manual_seed(2)
    state = torchvision_checkpoint("resnet18", tmp_path / "a.pth", generator)
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    state["layer9.0.conv1.weight"] = torch.zeros(1)
    del state["layer2.0.downsample.0.weight"]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as error:
        build_model("lip", "resnet18", "fcn", pretrained=tmp_path / "bad.pth")
    message = str(error.value)
    assert "bad.pth" in message
    assert "missing keys: layer2.0.downsample.0.weight" in message
    assert "unexpected keys: layer9.0.conv1.weight" in message
    assert "mis-shaped keys: layer1.0.conv1.weight (64, 64, 1, 1) != (64, 64, 3, 3)" in message
    # a resnet50 checkpoint does not fit resnet18
    torchvision_checkpoint("resnet50", tmp_path / "r50.pth", generator)
    with pytest.raises(ValueError, match="unexpected keys: .*layer1.0.conv3.weight"):
        build_model("lip", "resnet18", "fcn", pretrained=tmp_path / "r50.pth")


def test_pretrained_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        build_model("lip", "resnet18", "fcn", pretrained=tmp_path / "nothere.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth: not a torch checkpoint"):
        build_model("lip", "resnet18", "fcn", pretrained=tmp_path / "junk.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a state dict"):
        build_model("lip", "resnet18", "fcn", pretrained=tmp_path / "list.pth")
    with pytest.raises(ValueError, match="backbone 'light' has no torchvision checkpoint"):
        build_model("lip", "light", "fcn", pretrained=tmp_path / "list.pth")


# --------------------------------------------------------------------------- outputs
@pytest.mark.parametrize("head", HEAD_NAMES)
@pytest.mark.parametrize("name", builtin_names())
def test_one_output_per_level_with_its_classes(name, head):
    hierarchy = load_hierarchy(name)
    model = build_model(hierarchy, "light", head)
    outputs = model(torch.randn(2, 3, 64, 64))
    assert [o.shape[1] for o in outputs] == hierarchy.num_classes
    # default skips: the finest level at layer1 (stride 4), the one above at layer2 (stride 8)
    sides = {2: [8, 16], 3: [8, 8, 16]}[hierarchy.num_levels]
    assert [tuple(o.shape) for o in outputs] == [(2, c, s, s) for c, s in zip(hierarchy.num_classes, sides)]


def test_resnet_model_outputs():
    outputs = build_model("pascal_person_part", "resnet18", "psp")(torch.randn(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outputs] == [(2, 3, 8, 8), (2, 5, 8, 8), (2, 7, 16, 16)]


@pytest.mark.parametrize("backbone,head", [("light", "psp"), ("light", "aspp"), ("resnet18", "fcn")])
@pytest.mark.parametrize("stacked", [True, False])
def test_gradients_reach_every_parameter(backbone, head, stacked):
    torch.manual_seed(0)
    model = build_model("lip", backbone, head, stacked=stacked, skips=None if stacked else ["layer1"])
    images = torch.randn(2, 3, 64, 64)
    labels = [torch.randint(c, (2, 16, 16)) for c in model.num_classes]

    def backward():
        model.zero_grad()
        outputs = [resize(o, (16, 16)) for o in model(images)]
        sum(F.cross_entropy(o, y) for o, y in zip(outputs, labels)).backward()

    # the refinements' last convolutions start at zero, so their inputs get gradients after one step
    backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_flat_model_has_one_module_for_the_finest_level():
    hierarchy = load_hierarchy("lip")
    model = build_model(hierarchy, "light", "psp", stacked=False)
    assert len(model.levels) == 1
    assert model.levels[0].refine is None  # the base network's classifier and nothing else
    outputs = model(torch.randn(1, 3, 64, 64))
    assert len(outputs) == 1 and tuple(outputs[0].shape) == (1, 20, 8, 8)
    stacked = build_model(hierarchy, "light", "psp")
    flat_names = {n for n, _ in model.named_parameters()}
    assert {n for n, _ in stacked.named_parameters() if not n.startswith("levels.")} == \
        {n for n in flat_names if not n.startswith("levels.")}


@pytest.mark.parametrize("backbone", ["light", "resnet18"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_output_stride_is_honoured(backbone, output_stride):
    model = build_model("cityscapes", backbone, "aspp", output_stride=output_stride).eval()
    stages = model.backbone(torch.randn(1, 3, 64, 96))
    assert [tuple(s.shape[-2:]) for s in stages] == [
        (16, 24), (8, 12), (64 // min(16, output_stride), 96 // min(16, output_stride)),
        (64 // output_stride, 96 // output_stride)]
    coarse, fine = model(torch.randn(1, 3, 64, 96))
    assert tuple(coarse.shape[-2:]) == (64 // output_stride, 96 // output_stride)
    assert tuple(fine.shape[-2:]) == (16, 24)  # cityscapes' fine level skips from layer1


def test_dilation_matches_torchvision_replace_stride_with_dilation():
    # torchvision resnet50(replace_stride_with_dilation=[False, True, True]): the first block of a
    # dilated stage keeps the previous dilation, later blocks use the new one; no strides.
    with torch.device("meta"):
        backbone = build_model("lip", "resnet50", "fcn", output_stride=8).backbone
    conv = backbone.get_submodule
    assert (conv("layer3.0.conv2").dilation, conv("layer3.0.conv2").stride) == ((1, 1), (1, 1))
    assert conv("layer3.1.conv2").dilation == (2, 2)
    assert (conv("layer4.0.conv2").dilation, conv("layer4.2.conv2").dilation) == ((2, 2), (4, 4))
    assert conv("layer4.0.downsample.0").stride == (1, 1)
    assert conv("layer2.0.conv2").stride == (2, 2)


def test_bad_names_and_strides_list_the_choices():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'; choices: " + ", ".join(BACKBONES)):
        build_model("lip", "resnet9")
    with pytest.raises(ValueError, match="unknown head 'unet'; choices: " + ", ".join(HEADS)):
        build_model("lip", "light", "unet")
    with pytest.raises(ValueError, match="output_stride must be one of .*got 32"):
        build_model("lip", "light", "fcn", output_stride=32)


# --------------------------------------------------------------------------- skips
def test_custom_skips_set_module_inputs_and_resolution():
    model = build_model("lip", "light", "fcn", skips=["layer1", 3])
    assert model.skips == [None, "layer1", "layer3"]
    sizes = [tuple(o.shape[-2:]) for o in model(torch.randn(1, 3, 64, 64))]
    assert sizes == [(8, 8), (16, 16), (8, 8)]
    assert model.levels[1].skip_reduce[0].in_channels == model.backbone.stage_channels[0]
    assert model.levels[2].skip_reduce[0].in_channels == model.backbone.stage_channels[2]


@pytest.mark.parametrize("disabled", [False, []])
def test_skips_can_be_disabled(disabled):
    model = build_model("lip", "light", "psp", skips=disabled)
    assert model.skips == [None, None, None]
    assert all(module.skip_reduce is None and module.takes_scores for module in model.levels[1:])
    assert [tuple(o.shape[-2:]) for o in model(torch.randn(1, 3, 64, 64))] == [(8, 8)] * 3


def test_skip_per_level_may_be_none():
    model = build_model("lip", "light", "fcn", skips=[None, "layer1"])
    assert model.levels[1].skip_reduce is None and model.levels[2].skip_reduce is not None


@pytest.mark.parametrize("skips,message", [
    (["layer1"], r"one entry per level after the first \(2\)"),
    ("layer1", "one entry per level"),
    (["layer1", "layer4"], "skip of level 2: unknown stage 'layer4'; choices: layer1, layer2, layer3"),
    ([0, "layer1"], "skip of level 1: unknown stage 0"),
])
def test_bad_skips(skips, message):
    with pytest.raises(ValueError, match=message):
        build_model("lip", "light", "fcn", skips=skips)


def test_flat_model_takes_one_skip_for_its_only_module():
    with pytest.raises(ValueError, match=r"one entry per module of the flat model \(1\)"):
        build_model("lip", "light", "fcn", stacked=False, skips=["layer2", "layer1"])
    with pytest.raises(ValueError, match="skip of level 2: unknown stage 'layer4'"):
        build_model("lip", "light", "fcn", stacked=False, skips=["layer4"])
    assert build_model("lip", "light", "fcn", stacked=False, skips=False).skips == [None]


# --------------------------------------------------------------------------- stacked contains flat
def copy_flat_weights(flat, stacked) -> None:
    """Load the flat model's backbone, head and classifier into the stacked model's shared parts and
    its finest module's classifier."""
    state = {key: value for key, value in flat.state_dict().items() if not key.startswith("levels.")}
    state.update({f"levels.{len(stacked.levels) - 1}.{key[len('levels.0.'):]}": value
                  for key, value in flat.state_dict().items() if key.startswith("levels.0.classifier")})
    missing = stacked.load_state_dict(state, strict=False).missing_keys
    assert not any(key.startswith(("backbone.", "head.")) or ".classifier." in key and key.startswith("levels.2")
                   for key in missing)


@pytest.mark.parametrize("head", HEAD_NAMES)
@pytest.mark.parametrize("skips", [None, False])
def test_untrained_stacked_model_predicts_what_the_flat_model_does(head, skips):
    """Stacked is a superset of flat: with the flat model's weights in the shared parts and the
    finest classifier, the refinements (zero at the start) add nothing."""
    torch.manual_seed(0)
    flat = build_model("lip", "light", head, stacked=False).eval()
    stacked = build_model("lip", "light", head, skips=skips).eval()
    copy_flat_weights(flat, stacked)
    images = torch.randn(2, 3, 64, 64)
    fine = stacked(images)[-1]
    expected = resize(flat(images)[0], fine.shape[-2:])
    torch.testing.assert_close(fine, expected, rtol=0, atol=1e-6)
    # and once the refinement has weights, it does change the prediction
    torch.nn.init.normal_(stacked.levels[-1].refine[-1].weight)
    assert not torch.allclose(stacked(images)[-1], expected, atol=1e-3)


def test_flat_with_skip_is_the_decoder_without_the_stack():
    model = build_model("lip", "light", "psp", stacked=False, skips=["layer1"])
    assert model.skips == ["layer1"]
    module = model.levels[0]
    assert module.takes_skip and not module.takes_scores
    assert module.refine[0][0].in_channels == 64 + 32  # context reduced to the width, skip to half
    (fine,) = model(torch.randn(1, 3, 64, 64))
    assert tuple(fine.shape) == (1, 20, 16, 16)
    info = describe_model(model, 64)
    assert info["modules"][0]["inputs"]["scores"] is None
    assert info["modules"][0]["inputs"]["skip"]["stage"] == "layer1"


@pytest.mark.parametrize("width", [8, 48])
def test_module_width_sets_every_refinement(width):
    model = build_model("lip", "light", "fcn", module_width=width)
    assert model.module_width == width
    for module, previous in zip(model.levels[1:], model.num_classes):
        skip = width // 2 if module.takes_skip else 0
        assert module.context_reduce[0].out_channels == width
        assert module.refine[0][0].in_channels == width + previous + skip
        assert module.refine[-1].in_channels == width
    assert model.levels[0].refine is None
    assert [o.shape[1] for o in model(torch.randn(1, 3, 32, 32))] == [2, 5, 20]


@pytest.mark.parametrize("width", [0, 1, 2.5, True, "64"])
def test_bad_module_width(width):
    with pytest.raises(ValueError, match=f"module_width must be an integer of at least 2, got {width!r}"):
        build_model("lip", "light", "fcn", module_width=width)


# --------------------------------------------------------------------------- summary
def test_describe_counts_match_flop_counter_and_parameters():
    model = build_model("lip", "light", "aspp")
    info = describe_model(model, (64, 96))
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, 64, 96))
    assert info["total"]["multiply_adds"] * 2 == counter.get_total_flops()
    assert info["total"]["parameters"] == sum(p.numel() for p in model.parameters())
    assert [p["name"] for p in info["parts"]] == ["backbone", "head", "module 1", "module 2", "module 3"]
    backbone = next(p for p in info["parts"] if p["name"] == "backbone")
    assert backbone["parameters"] == sum(p.numel() for p in model.backbone.parameters())
    fine = info["modules"][2]["inputs"]
    assert fine["skip"] == {"stage": "layer1", "channels": 24, "size": [16, 24]}
    assert fine["scores"] == {"from_module": 2, "channels": 5, "size": [8, 12]}
    assert info["modules"][0]["inputs"]["scores"] is None
    assert info["modules"][2]["output"] == {"channels": 20, "size": [16, 24]}
    assert not model.training  # describe_model restores the mode it found
    describe_model(model.train(), 32)
    assert model.training


# --------------------------------------------------------------------------- export
def test_torch_export_matches_eager():
    model = build_model("lip", "light", "psp").eval()
    images = torch.randn(2, 3, 64, 64)
    exported = torch.export.export(model, (images,))
    for got, expected in zip(exported.module()(images), model(images)):
        torch.testing.assert_close(got, expected)
