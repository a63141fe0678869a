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

from hierparse.data import build_dataset, colorize
from hierparse.engine import distributed
from hierparse.engine.checkpoint import model_from_checkpoint
from hierparse.engine.io import to_json, write_text, writable_dir
from hierparse.engine.visualize import denormalize, paint, save_panels
from hierparse.hierarchy import Hierarchy
from hierparse.metrics import ParsingMetrics, format_metrics
from hierparse.models import StackedParser
from hierparse.losses import check_decode
from hierparse.predict import DECODE_MODES, predict_batch


def build_eval_dataset(config: dict[str, Any], hierarchy: Hierarchy, split: str) -> torch.utils.data.Dataset:
    """The evaluation split a training config names (synthetic images are always those of data seed 0)."""
    options = {"n": config["synthetic_val_images"]} if config["dataset"] == "synthetic" else {}
    dataset = build_dataset(config["dataset"], config["root"], split, hierarchy=hierarchy, transform="eval",
                            size=config["eval_size"], **options)
    return require_samples(dataset, config, split)


def require_samples(dataset: torch.utils.data.Dataset, config: dict[str, Any], split: str) -> torch.utils.data.Dataset:
    """``dataset``, or a one-line error if it is empty (e.g. an empty list file)."""
    if len(dataset) == 0:
        raise ValueError(f"dataset {config['dataset']!r} split {split!r} under {config['root']} has no samples")
    return dataset


def eval_loader(dataset: torch.utils.data.Dataset, config: dict[str, Any], device: torch.device) -> torch.utils.data.DataLoader:
    """This process's shard of ``dataset`` in order (no padding, so every sample counts once overall).

    Images of different sizes (``eval_size: null``) go one at a time.
    """
    shard = list(range(distributed.rank(), len(dataset), distributed.world_size()))
    return torch.utils.data.DataLoader(
        dataset, batch_size=config["batch_size"] if config["eval_size"] else 1, sampler=shard,
        num_workers=config["workers"], pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # keeps the global random stream untouched (exact resume)
    )


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, loader: torch.utils.data.DataLoader, hierarchy: Hierarchy,
                   device: torch.device, decode_mode: str = "independent") -> dict[str, Any]:
    """``ParsingMetrics.compute()`` of ``model`` (in float32) over the loader's samples on all processes."""
    parser = model.module if hasattr(model, "module") else model
    was_training = parser.training
    parser.eval()
    metrics = ParsingMetrics(hierarchy)
    for batch in loader:
        labels = batch["label"].to(device, non_blocking=True)
        preds = predict_batch(parser, batch["image"].to(device, non_blocking=True), hierarchy,
                              tuple(labels.shape[-2:]), decode_mode)
        metrics.update(preds if parser.stacked else preds[-1], labels)
    metrics.load_state(metrics.state().to(device))  # nccl sums GPU tensors only
    metrics.all_reduce()
    parser.train(was_training)
    return metrics.compute()


@torch.no_grad()
def save_sample_grid(model: StackedParser, dataset: torch.utils.data.Dataset, hierarchy: Hierarchy,
                     device: torch.device, decode_mode: str, path: str | Path, count: int = 4) -> None:
    """A PNG grid, one row per sample: image | prediction of every level | ground truth (finest)."""
    was_training = model.training
    model.eval()
    rows = []
    for index in range(min(count, len(dataset))):
        sample = dataset[index]
        label = sample["label"]
        preds = predict_batch(model, sample["image"][None].to(device), hierarchy, tuple(label.shape[-2:]),
                              decode_mode)
        rows.append([denormalize(sample["image"])]
                    + [paint(pred[0].cpu(), hierarchy, level) for level, pred in enumerate(preds)]
                    + [colorize(label.numpy(), hierarchy, -1)])
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
    p.add_argument("--hierarchy", help="expected hierarchy; a checkpoint trained for another one is an error")
    p.add_argument("--size", type=int, metavar="N",
                   help="resize images to NxN (default: the run's eval_size); 0: native size")
    p.add_argument("--decode", choices=DECODE_MODES, help="decoding (default: the run's)")
    p.add_argument("--batch-size", type=int, help="images per batch (default: the run's)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--json", metavar="FILE", help="also write every score to FILE (NaN as null)")
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
        config.update(dataset=args.layout, root=args.data)
    if args.size is not None:
        config["eval_size"] = args.size or None
    if args.batch_size is not None:
        config["batch_size"] = args.batch_size
    decode_mode = args.decode or config["decode"]
    check_decode(config.get("loss", "softmax"), decode_mode)
    dataset = build_eval_dataset(config, hierarchy, args.split)
    result = evaluate_model(model, eval_loader(dataset, config, device), hierarchy, device, decode_mode)
    where = "synthetic images" if config["dataset"] == "synthetic" else f"{config['dataset']} {config['root']}"
    print(f"checkpoint {args.checkpoint} (iteration {checkpoint['iteration']}) on {where}, split {args.split!r}, "
          f"{len(dataset)} images, decode {decode_mode}\n")
    print(format_metrics(result))
    if args.json is not None:
        report = {"checkpoint": str(args.checkpoint), "iteration": checkpoint["iteration"],
                  "hierarchy": hierarchy.name, "dataset": config["dataset"], "root": config["root"],
                  "split": args.split, "images": len(dataset), "decode": decode_mode, "metrics": result}
        write_text(args.json, to_json(report, indent=2) + "\n")
    return 0

