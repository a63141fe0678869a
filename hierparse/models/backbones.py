"""Image encoders: dilated ResNets with torchvision's parameter names, and a light CPU encoder.

Every backbone returns the outputs of its four stages ``layer1`` … ``layer4`` (strides 4, 8 and
then 8 or 16 once dilated), so heads and skip connections work the same over any of them.
Parameter names and shapes of ``resnet18/34/50/101`` are exactly those of ``torchvision.models``'
ResNet without ``fc``, so a torchvision checkpoint file loads with :func:`load_torchvision_weights`.
Dilation follows torchvision's ``replace_stride_with_dilation``: a dilated stage keeps stride 1 and
its first block still uses the previous dilation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")
OUTPUT_STRIDES = (8, 16)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride, padding=dilation, dilation=dilation,
                     bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual (ResNet-18/34); dilation is allowed here, unlike torchvision."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, dilation: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """1x1 - 3x3 (strided, dilated) - 1x1 with a residual (ResNet-50/101, torchvision's v1.5)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, dilation: int = 1):
        super().__init__()
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """A ResNet trunk (no pooling, no ``fc``) returning its four stage outputs.

    ``stage_channels`` and ``stage_strides`` describe those outputs; ``layer3`` (output stride 8)
    and ``layer4`` (8 and 16) are dilated instead of strided.
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: tuple[int, int, int, int],
                 output_stride: int = 8, widths: tuple[int, int, int, int] = (64, 128, 256, 512),
                 stem_channels: int = 64, stem_kernel: int = 7):
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
        self.in_channels = stem_channels
        self.dilation = 1
        self.conv1 = nn.Conv2d(3, stem_channels, stem_kernel, 2, padding=stem_kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        dilate = {8: (False, True, True), 16: (False, False, True)}[output_stride]
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2, dilate[0])
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2, dilate[1])
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2, dilate[2])
        self.stage_channels = [width * block.expansion for width in widths]
        self.stage_strides = [4, 8, min(16, output_stride), output_stride]
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False):
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.in_channels != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.in_channels, planes * block.expansion, stride),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.in_channels, planes, stride, downsample, previous_dilation)]
        self.in_channels = planes * block.expansion
        layers += [block(self.in_channels, planes, dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        stages = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            stages.append(x)
        return stages


def resnet18(output_stride: int = 8) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), output_stride)


def resnet34(output_stride: int = 8) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), output_stride)


def resnet50(output_stride: int = 8) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), output_stride)


def resnet101(output_stride: int = 8) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 23, 3), output_stride)


def light(output_stride: int = 8) -> ResNet:
    """One narrow basic block per stage and a 3x3 stem: trains in seconds on a CPU, no checkpoint."""
    return ResNet(BasicBlock, (1, 1, 1, 1), output_stride, widths=(24, 48, 96, 192),
                  stem_channels=24, stem_kernel=3)


BACKBONES: dict[str, Callable[[int], ResNet]] = {
    "resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101,
    "light": light,
}
TORCHVISION_COMPATIBLE = ("resnet18", "resnet34", "resnet50", "resnet101")


def build_backbone(name: str, output_stride: int = 8) -> ResNet:
    """The backbone registered under ``name`` in :data:`BACKBONES`."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choices: {', '.join(BACKBONES)}")
    return BACKBONES[name](output_stride)


def _name_keys(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (and {len(keys) - limit} more)" if len(keys) > limit else "")


def load_torchvision_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load a torchvision ResNet checkpoint (a state dict saved with ``torch.save``) into ``backbone``.

    ``fc.*`` is skipped and ``num_batches_tracked`` may be absent (older torchvision files lack
    it); any other missing, unexpected or mis-shaped key is a ValueError naming the keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several unrelated types for a bad file
        raise ValueError(f"{path}: not a torch checkpoint: {error}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (torchvision ResNet checkpoint)")
    state = {key: value for key, value in state.items() if not key.startswith("fc.")}
    expected = backbone.state_dict()
    missing = [key for key in expected
               if key not in state and not key.endswith("num_batches_tracked")]
    unexpected = [key for key in state if key not in expected]
    misshaped = [f"{key} {tuple(state[key].shape)} != {tuple(expected[key].shape)}"
                 for key in state if key in expected and state[key].shape != expected[key].shape]
    problems = [f"{label} keys: {_name_keys(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)) if keys]
    if problems:
        raise ValueError(f"{path}: does not fit the backbone: " + "; ".join(problems))
    backbone.load_state_dict(state, strict=False)
