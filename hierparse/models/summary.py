"""What a built model contains: modules with their inputs, parameters and multiply-adds per part.

Shapes and multiply-adds come from one forward pass with hooks. Build the model under
``torch.device("meta")`` and the pass allocates and computes nothing, so even ResNet-101 at 473x473
is described instantly (``hierparse build-model`` does this).
"""

from __future__ import annotations

import torch
from torch import nn

from hierparse.models.backbones import STAGE_NAMES
from hierparse.models.stacked import StackedParser


def part_of(name: str) -> str:
    """Which part a parameter or submodule name belongs to: backbone, head or module k."""
    first, _, rest = name.partition(".")
    return f"module {int(rest.split('.')[0]) + 1}" if first == "levels" else first


def shape_entry(x: torch.Tensor) -> dict:
    return {"channels": x.shape[1], "size": list(x.shape[-2:])}


def describe_model(model: StackedParser, input_size: int | tuple[int, int] = 473) -> dict:
    """Levels, modules (inputs, output), stages and parameters/multiply-adds per part, as a dict.

    Multiply-adds are per image: each convolution or linear layer costs (output elements) x
    (weights per output element); pooling, normalisation and resizing are not counted.
    """
    height, width = (input_size, input_size) if isinstance(input_size, int) else input_size
    device = next(model.parameters()).device
    parts = {part_of(name): {"parameters": 0, "multiply_adds": 0} for name, _ in model.named_children()
             if name != "levels"}
    parts.update({f"module {k + 1}": {"parameters": 0, "multiply_adds": 0}
                  for k in range(len(model.levels))})
    for name, parameter in model.named_parameters():
        parts[part_of(name)]["parameters"] += parameter.numel()

    captured: dict[str, object] = {}

    def count(name):
        def hook(module, args, output):
            parts[part_of(name)]["multiply_adds"] += output[0].numel() * module.weight[0].numel()
        return hook

    def capture(name):
        def hook(module, args, output):
            captured[name] = (args, output)
        return hook

    handles = [module.register_forward_hook(count(name)) for name, module in model.named_modules()
               if isinstance(module, (nn.Conv2d, nn.Linear))]
    handles += [model.backbone.register_forward_hook(capture("backbone")),
                model.head.register_forward_hook(capture("head"))]
    handles += [module.register_forward_hook(capture(f"module {k + 1}"))
                for k, module in enumerate(model.levels)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, height, width, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    stages = captured["backbone"][1]
    stage_list = [{"name": name, **shape_entry(x), "stride": stride}
                  for name, x, stride in zip(STAGE_NAMES, stages, model.backbone.stage_strides)]
    levels = []
    for k, (module, level_name, classes, skip) in enumerate(
            zip(model.levels, model.level_names, model.num_classes, model.skips)):
        args, output = captured[f"module {k + 1}"]
        inputs: dict = {"context": shape_entry(args[0]), "scores": None, "skip": None}
        if module.takes_scores:
            inputs["scores"] = {"from_module": k, **shape_entry(args[1])}
        if skip is not None:
            inputs["skip"] = {"stage": skip, **shape_entry(args[2])}
        level_index = model.hierarchy.level_names.index(level_name)
        levels.append({
            "module": k + 1, "level": level_name, "num_classes": classes,
            "classes": model.hierarchy.class_names(level_index), "inputs": inputs,
            "output": shape_entry(output),
        })
    total = {key: sum(part[key] for part in parts.values()) for key in ("parameters", "multiply_adds")}
    return {
        "hierarchy": model.hierarchy.name,
        "stacked": model.stacked,
        "backbone": model.backbone_name,
        "head": model.head_name,
        "output_stride": model.output_stride,
        "module_width": model.module_width,
        "input_size": [height, width],
        "stages": stage_list,
        "context": shape_entry(captured["head"][1]),
        "modules": levels,
        "parts": [{"name": name, **counts} for name, counts in parts.items()],
        "total": total,
    }


def _shape(entry: dict) -> str:
    return f"{entry['channels']}ch {entry['size'][0]}x{entry['size'][1]}"


def format_model(info: dict) -> str:
    """The text form of :func:`describe_model`'s dict."""
    kind = f"stacked, {len(info['modules'])} modules" if info["stacked"] else "flat, 1 module"
    lines = [
        f"model: {info['hierarchy']} ({kind}), backbone {info['backbone']} "
        f"(output stride {info['output_stride']}), head {info['head']}",
        f"input: 3x{info['input_size'][0]}x{info['input_size'][1]}; multiply-adds per image",
        "encoder stages: " + ", ".join(f"{s['name']} {_shape(s)} (stride {s['stride']})"
                                       for s in info["stages"]),
        f"head {info['head']}: layer4 -> context {_shape(info['context'])}",
        "", f"modules (coarse -> fine; refinement width {info['module_width']}):",
    ]
    for module in info["modules"]:
        inputs = module["inputs"]
        described = [f"context {_shape(inputs['context'])}"]
        if inputs["scores"]:
            described.append(f"scores of module {inputs['scores']['from_module']} "
                             f"{_shape(inputs['scores'])}")
        if inputs["skip"]:
            described.append(f"skip {inputs['skip']['stage']} {_shape(inputs['skip'])}")
        lines += [
            f"  {module['module']}. level {module['level']} ({module['num_classes']} classes: "
            f"{', '.join(module['classes'])})",
            f"       inputs: {'; '.join(described)}",
            f"       output: {_shape(module['output'])} logits",
        ]
    lines += ["", f"  {'part':<10} {'parameters':>14} {'multiply-adds':>16}"]
    for part in [*info["parts"], {"name": "total", **info["total"]}]:
        lines.append(f"  {part['name']:<10} {part['parameters']:>14,} {part['multiply_adds']:>16,}")
    return "\n".join(lines)
