"""``hierparse evaluate``: per-level metrics of a checkpoint on a dataset split (by default the run's own).

The evaluation loop here is the one training runs at every ``eval_interval``: each process scores
its shard of the split, the confusion matrices are summed over processes, every process gets the
same result.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
import torch.utils.data

from hierparse.data import build_dataset, colorize, eval_transform
from hierparse.engine import distributed
from hierparse.engine.checkpoint import model_from_checkpoint
from hierparse.engine.io import to_json, write_text, writable_dir
from hierparse.engine.visualize import denormalize, paint, save_panels
from hierparse.hierarchy import Hierarchy
from hierparse.metrics import ParsingMetrics, format_metrics
from hierparse.models import StackedParser
from hierparse.losses import check_decode
from hierparse.inference import Inference, Predictor
from hierparse.parser import inference_settings
from hierparse.predict import add_inference_options, size_overrides, view_overrides


def build_eval_dataset(config: dict[str, Any], hierarchy: Hierarchy, split: str) -> torch.utils.data.Dataset:
    """The evaluation split a training config names, images and labels at their own size (synthetic
    images are those of data seed 0, drawn at ``eval_size``); :class:`Inference` sizes the images."""
    options = {"n": config["synthetic_val_images"]} if config["dataset"] == "synthetic" else {}
    dataset = build_dataset(config["dataset"], config["root"], split, hierarchy=hierarchy,
                            transform=eval_transform(hierarchy, mode="none"), size=config["eval_size"], **options,
                            **map_option(config))
    return require_samples(dataset, config, split)


def map_option(config: dict[str, Any]) -> dict[str, Any]:
    """``label_map=`` for :func:`build_dataset` from the config's ``map`` (on-disk layouts only)."""
    if config.get("map") is None:
        return {}
    if config["dataset"] == "synthetic":
        raise ValueError("config key 'map' reads an on-disk dataset with another tree; synthetic images have none")
    return {"label_map": config["map"]}


def require_samples(dataset: torch.utils.data.Dataset, config: dict[str, Any], split: str) -> torch.utils.data.Dataset:
    """``dataset``, or a one-line error if it is empty (e.g. an empty list file)."""
    if len(dataset) == 0:
        raise ValueError(f"dataset {config['dataset']!r} split {split!r} under {config['root']} has no samples")
    return dataset


def collate_lists(samples: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """A batch of samples of any sizes: each key's values as a list."""
    return {key: [sample[key] for sample in samples] for key in samples[0]}


def eval_loader(dataset: torch.utils.data.Dataset, config: dict[str, Any], device: torch.device) -> torch.utils.data.DataLoader:
    """This process's shard of ``dataset`` in order (no padding, so every sample counts once overall),
    in batches of lists (images may differ in size)."""
    shard = list(range(distributed.rank(), len(dataset), distributed.world_size()))
    return torch.utils.data.DataLoader(
        dataset, batch_size=config["batch_size"], sampler=shard, collate_fn=collate_lists,
        num_workers=config["workers"], pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # keeps the global random stream untouched (exact resume)
    )


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, loader: torch.utils.data.DataLoader, hierarchy: Hierarchy,
                   device: torch.device, decode_mode: str = "independent",
                   inference: Inference | None = None) -> dict[str, Any]:
    """``ParsingMetrics.compute()`` of ``model`` (in float32) over the loader's samples on all
    processes, each scored at its label's own size (default :class:`Inference`: aspect-preserving)."""
    parser = model.module if hasattr(model, "module") else model
    was_training = parser.training
    parser.eval()
    predictor = Predictor(parser, hierarchy, inference or Inference(), decode_mode)
    metrics = ParsingMetrics(hierarchy)
    for batch in loader:
        for maps, label in zip(predictor.maps(batch["image"]), batch["label"]):
            label = label.to(device, non_blocking=True)[None]
            metrics.update([m[None] for m in maps] if parser.stacked else maps[-1][None], label)
    metrics.load_state(metrics.state().to(device))  # nccl sums GPU tensors only
    metrics.all_reduce()
    parser.train(was_training)
    return metrics.compute()


@torch.no_grad()
def save_sample_grid(model: StackedParser, dataset: torch.utils.data.Dataset, hierarchy: Hierarchy,
                     device: torch.device, decode_mode: str, path: str | Path, count: int = 4,
                     inference: Inference | None = None) -> None:
    """A PNG grid, one row per sample: image | prediction of every level | ground truth (finest)."""
    was_training = model.training
    model.eval()
    predictor = Predictor(model, hierarchy, inference or Inference(), decode_mode)
    samples = [dataset[index] for index in range(min(count, len(dataset)))]
    rows = [[denormalize(sample["image"])] + [paint(level.cpu(), hierarchy, k) for k, level in enumerate(maps)]
            + [colorize(sample["label"].numpy(), hierarchy, -1)]
            for sample, maps in zip(samples, predictor.maps([sample["image"] for sample in samples]))]
    model.train(was_training)
    titles = ["image", *(f"{name} (predicted)" for name in hierarchy.level_names), "ground truth"]
    save_panels(rows, titles, path)


# ---------------------------------------------------------------------- command
def add_evaluate(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="per-level metrics of a checkpoint (module and merged mIoU, consistency)",
        description="Score a checkpoint on a dataset split; without --data, on the data the run was "
                    "evaluated on (the synthetic validation images for synthetic runs).")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by hierparse train (last.pt, best.pt)")
    p.add_argument("--data", metavar="ROOT", help="dataset folder (default: the run's own data)")
    p.add_argument("--layout", help="layout of --data: lip, cihp, atr, pascal_person_part, helen, cityscapes, generic")
    p.add_argument("--split", default="val", help="split to score (default val)")
    p.add_argument("--map", help="label map reading --data with another tree's raw ids (e.g. atr_to_lip)")
    p.add_argument("--batch-size", type=int, help="images per batch (default: the run's)")
    p.add_argument("--json", metavar="FILE", help="also write every score to FILE (NaN as null)")
    add_inference_options(p)
    p.set_defaults(func=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    if args.data is not None and args.layout is None:
        raise ValueError("--data needs --layout (lip, cihp, atr, pascal_person_part, helen, cityscapes, generic)")
    if args.json is not None:
        writable_dir(Path(args.json).resolve().parent, "folder of --json")
    device = distributed.resolve_device(args.device)
    model, hierarchy, checkpoint = model_from_checkpoint(args.checkpoint, device, args.hierarchy)
    config = dict(checkpoint["config"])
    if args.data is not None:
        config.update(dataset=args.layout, root=args.data, map=args.map)
    elif args.map is not None:
        raise ValueError("--map reads a dataset given with --data and --layout")
    if args.batch_size is not None:
        config["batch_size"] = args.batch_size
    decode_mode = args.decode or config["decode"]
    check_decode(config.get("loss", "softmax"), decode_mode)
    sizing = size_overrides(args)
    views = {"without test-time augmentation": inference_settings(config, False, **sizing)}
    augmented = inference_settings(config, args.tta or None, **sizing, **view_overrides(args))
    if len(augmented.views) > 1:
        views["with test-time augmentation"] = augmented
    dataset = build_eval_dataset(config, hierarchy, args.split)
    where = "synthetic images" if config["dataset"] == "synthetic" else f"{config['dataset']} {config['root']}"
    if getattr(dataset, "label_map", None) is not None:
        where += f" read through {dataset.label_map.describe()}"
        hierarchy = dataset.hierarchy  # with raw ids for the map's unions
    print(f"checkpoint {args.checkpoint} (iteration {checkpoint['iteration']}) on {where}, split {args.split!r}, "
          f"{len(dataset)} images, decode {decode_mode}")
    results = {}
    for title, inference in views.items():
        results[title] = evaluate_model(model, eval_loader(dataset, config, device), hierarchy, device, decode_mode,
                                        inference)
        print(f"\n{title} ({describe(inference)}):\n")
        print(format_metrics(results[title]))
    if args.json is not None:
        report = {"checkpoint": str(args.checkpoint), "iteration": checkpoint["iteration"],
                  "hierarchy": hierarchy.name, "dataset": config["dataset"], "root": config["root"],
                  "split": args.split, "images": len(dataset), "decode": decode_mode,
                  "metrics": results[next(iter(views))]}
        if len(views) > 1:
            report["tta"] = {"flip": views[title].flip, "scales": list(views[title].scales)}
            report["metrics_tta"] = results[title]
        write_text(args.json, to_json(report, indent=2) + "\n")
    return 0


def describe(inference: Inference) -> str:
    """A few words on how images were sized and augmented."""
    size = f"{inference.side} side {inference.size}" if inference.size else "native size"
    if inference.mode == "resize":
        size = f"squashed to {inference.size}x{inference.size}"
    elif inference.mode == "slide":
        size += f", {inference.crop}-pixel windows every {inference.stride}"
    views = f"{len(inference.views)} views (scales {', '.join(map(str, inference.scales))}" + (
        ", flipped" if inference.flip else "") + ")"
    return f"{size}; {views}" if len(inference.views) > 1 else size
