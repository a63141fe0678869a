"""``hierparse predict``: parse image files, folders and globs with a checkpoint (see :class:`hierparse.Parser`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from hierparse.inference import DECODE_MODES, SIDES, SIZE_MODES


def add_inference_options(p: argparse.ArgumentParser) -> None:
    """The input-size and test-time augmentation options ``evaluate`` and ``predict`` share."""
    p.add_argument("--size", type=int, metavar="N",
                   help="the network sees each image with its long side (--side) at N pixels, aspect kept "
                        "(default: the run's eval_size; 0: native size); outputs have the image's own size")
    p.add_argument("--mode", choices=SIZE_MODES, help="aspect (default), resize (NxN squares), none (native) "
                                                     "or slide (windows: --crop, --stride)")
    p.add_argument("--side", choices=SIDES, help="the side --size sets (default long)")
    p.add_argument("--crop", type=int, metavar="N", help="slide: window size")
    p.add_argument("--stride", type=int, metavar="N", help="slide: step between windows")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: the run's tta, else flip + scales 0.75 1 1.25")
    p.add_argument("--flip", action="store_true", help="add mirrored views (left/right classes swapped)")
    p.add_argument("--scales", type=float, nargs="+", metavar="S", help="scales of the views, e.g. 0.75 1 1.25")
    p.add_argument("--decode", choices=DECODE_MODES, help="decoding (default: the run's)")
    p.add_argument("--hierarchy", help="expected hierarchy; a checkpoint trained for another one is an error")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")


def size_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The input-size fields of :class:`Inference` the command line sets (``--size 0``: native)."""
    overrides: dict[str, Any] = {key: getattr(args, key) for key in ("mode", "side", "crop", "stride")
                                 if getattr(args, key) is not None}
    if args.size is not None:
        overrides["size"] = args.size or None
    return overrides


def view_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The test-time augmentation fields of :class:`Inference` the command line sets."""
    return {**({"flip": True} if args.flip else {}), **({"scales": args.scales} if args.scales else {})}


def add_predict(subparsers) -> None:
    p = subparsers.add_parser(
        "predict", help="parse images: a palette PNG per level and a raw-id PNG per image",
        description="Parse image files, folders and glob patterns. Per image: <stem>_<level>.png (palette "
                    "PNG in the tree's colours), <stem>_raw.png (finest level as raw label ids), and with "
                    "--figure / --overlay a side-by-side figure and an overlay. Unreadable files are skipped "
                    "and counted (exit status 1); a single unreadable image exits 2.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files, folders or glob patterns")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by hierparse train")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--recursive", action="store_true", help="also images in subfolders (kept in the output)")
    p.add_argument("--batch-size", type=int, default=8, help="images per batch (default 8)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader processes reading images (default 0)")
    p.add_argument("--skip-existing", action="store_true", help="leave images whose outputs exist (resume a job)")
    p.add_argument("--figure", action="store_true", help="also <stem>_figure.png: image and every level")
    p.add_argument("--overlay", action="store_true", help="also <stem>_overlay.png: the finest level over the image")
    add_inference_options(p)
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from hierparse.data import read_image
    from hierparse.parser import Parser

    if args.batch_size < 1 or args.workers < 0:
        raise ValueError("--batch-size must be positive and --workers not negative")
    parser = Parser.from_checkpoint(args.checkpoint, args.device, args.decode, args.tta or None, args.hierarchy,
                                    args.batch_size, **size_overrides(args), **view_overrides(args))
    if len(args.images) == 1 and Path(args.images[0]).is_file():
        read_image(args.images[0])  # a single image that cannot be read is an error (exit 2), not a skip
    report = parser.parse_folder(args.images, args.out, workers=args.workers, recursive=args.recursive,
                                 skip_existing=args.skip_existing, figure=args.figure, overlay=args.overlay,
                                 progress=sys.stderr.isatty())
    existing = f", {report.existing} parsed before (--skip-existing)" if report.existing else ""
    failed = f", {len(report.failed)} unreadable and skipped" if report.failed else ""
    print(f"parsed {report.parsed} images into {args.out}{existing}{failed}")
    return 1 if report.failed else 0
