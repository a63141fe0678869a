"""Context heads (the base segmentation networks): deep features -> context features.

A head turns the backbone's deepest features into ``out_channels`` context features at the same
resolution; it holds no classifier, so one head is shared by every level's module of a stacked
parser (the heavy context work runs once, see :mod:`hierparse.models.stacked`).

To add a head: write a small ``nn.Module`` whose ``__init__(in_channels, output_stride)`` sets
``self.out_channels`` and whose ``forward(features)`` returns ``[N, out_channels, h, w]`` at the
input's ``h, w``; then add it to :data:`HEADS` under a name. ``build_model(head=NAME)`` and
``hierparse build-model --head NAME`` pick it up from there.

Pooled branches carry a conv bias instead of BatchNorm: after global pooling a batch of one has one
value per channel and BatchNorm cannot train on it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=dilation * (kernel // 2),
                  dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def pooled_branch(in_channels: int, out_channels: int, bins: int) -> nn.Sequential:
    """Average-pool to ``bins x bins`` and reduce channels (upsampled back by the caller)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(bins), nn.Conv2d(in_channels, out_channels, 1),
                         nn.ReLU(inplace=True))


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize to ``size`` (a no-op when it already has that size)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class FCNHead(nn.Module):
    """FCN (Long et al. 2015, torchvision's FCNHead): one 3x3 conv to a quarter of the channels."""

    def __init__(self, in_channels: int, output_stride: int = 8, dropout: float = 0.1):
        super().__init__()
        self.out_channels = in_channels // 4
        self.block = nn.Sequential(conv_bn_relu(in_channels, self.out_channels, 3), nn.Dropout2d(dropout))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.block(features)


class PSPHead(nn.Module):
    """PSPNet's pyramid pooling (Zhao et al. 2017; the head of the original stacked network).

    Pool to 1, 2, 3 and 6 bins, reduce each to a quarter of the channels, upsample, concatenate
    with the features and fuse with a 3x3 conv to a quarter of the input channels.
    """

    bins = (1, 2, 3, 6)

    def __init__(self, in_channels: int, output_stride: int = 8, dropout: float = 0.1):
        super().__init__()
        reduced = in_channels // len(self.bins)
        self.out_channels = in_channels // 4
        self.pyramid = nn.ModuleList(pooled_branch(in_channels, reduced, bins) for bins in self.bins)
        self.bottleneck = nn.Sequential(
            conv_bn_relu(in_channels + reduced * len(self.bins), self.out_channels, 3),
            nn.Dropout2d(dropout),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        size = features.shape[-2:]
        pooled = [resize(branch(features), size) for branch in self.pyramid]
        return self.bottleneck(torch.cat([features, *pooled], dim=1))


class ASPPHead(nn.Module):
    """DeepLabV3's atrous spatial pyramid pooling (Chen et al. 2017) followed by a 3x3 conv.

    Rates 6/12/18 at output stride 16 and 12/24/36 at output stride 8, as in the paper.
    """

    def __init__(self, in_channels: int, output_stride: int = 8, dropout: float = 0.1):
        super().__init__()
        width = self.out_channels = in_channels // 8
        rates = [rate * 16 // output_stride for rate in (6, 12, 18)]
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, width)] + [conv_bn_relu(in_channels, width, 3, r) for r in rates]
        )
        self.image_pool = pooled_branch(in_channels, width, 1)
        self.project = nn.Sequential(conv_bn_relu(5 * width, width), nn.Dropout2d(dropout),
                                     conv_bn_relu(width, width, 3))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        outputs = [branch(features) for branch in self.branches]
        outputs.append(resize(self.image_pool(features), features.shape[-2:]))
        return self.project(torch.cat(outputs, dim=1))


HEADS: dict[str, type[nn.Module]] = {"fcn": FCNHead, "psp": PSPHead, "aspp": ASPPHead}


def build_head(name: str, in_channels: int, output_stride: int = 8) -> nn.Module:
    """The head registered under ``name`` in :data:`HEADS`, on ``in_channels`` deep features."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}; choices: {', '.join(HEADS)}")
    return HEADS[name](in_channels, output_stride)
