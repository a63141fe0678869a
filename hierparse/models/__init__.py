"""Models generated from a hierarchy: backbones, context heads and the stacked parser.

``build_model(hierarchy, backbone="resnet50", head="psp")`` is the one entry point; the registries
:data:`BACKBONES` and :data:`HEADS` list what it can combine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from hierparse.hierarchy import Hierarchy, load_hierarchy
from hierparse.models.backbones import (BACKBONES, TORCHVISION_COMPATIBLE, build_backbone,
                                        load_torchvision_weights)
from hierparse.models.heads import HEADS, build_head
from hierparse.models.stacked import DEFAULT_MODULE_WIDTH, StackedParser, resolve_skips
from hierparse.models.summary import describe_model, format_model

__all__ = ["BACKBONES", "HEADS", "StackedParser", "build_model", "describe_model", "format_model",
           "load_torchvision_weights"]


def build_model(
    hierarchy: Hierarchy | str | Path,
    backbone: str = "resnet50",
    head: str = "psp",
    *,
    stacked: bool = True,
    pretrained: str | Path | None = None,
    output_stride: int = 8,
    skips: Sequence[str | int | None] | bool | None = None,
    module_width: int = DEFAULT_MODULE_WIDTH,
) -> StackedParser:
    """The stacked parser for ``hierarchy`` (one module per level), or the flat baseline.

    ``backbone``: a name from :data:`BACKBONES`; ``head``: a name from :data:`HEADS`.
    ``stacked=False``: one module, for the finest level only. ``pretrained``: a torchvision ResNet
    checkpoint file to load into the backbone (never downloaded). ``output_stride``: 8 or 16.
    ``skips``: encoder stage feeding each level after the first; ``None`` for the default (finest
    level <- ``layer1``), ``False`` for none; for a flat model one entry (``["layer1"]``: the same
    skip without the stack); see :func:`hierparse.models.stacked.resolve_skips`.
    ``module_width``: channels of each module's refinement branch (scores + skip).
    """
    hierarchy = load_hierarchy(hierarchy)
    if head not in HEADS:  # checked before building a possibly large backbone
        raise ValueError(f"unknown head {head!r}; choices: {', '.join(HEADS)}")
    skip_stages = resolve_skips(skips, hierarchy.num_levels, stacked)
    if not isinstance(module_width, int) or isinstance(module_width, bool) or module_width < 2:
        raise ValueError(f"module_width must be an integer of at least 2, got {module_width!r}")
    encoder = build_backbone(backbone, output_stride)
    if pretrained is not None:
        if backbone not in TORCHVISION_COMPATIBLE:
            raise ValueError(
                f"backbone {backbone!r} has no torchvision checkpoint; pretrained weights load into "
                f"{', '.join(TORCHVISION_COMPATIBLE)}"
            )
        load_torchvision_weights(encoder, pretrained)
    context_head = build_head(head, encoder.stage_channels[-1], output_stride)
    return StackedParser(hierarchy, encoder, context_head, stacked=stacked, skips=skip_stages,
                         module_width=module_width, backbone_name=backbone, head_name=head, output_stride=output_stride)
