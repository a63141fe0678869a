"""``python -m hierparse.data [OUT.png]``: save a contact sheet of synthetic samples (image | label)."""

import argparse
import sys

from PIL import Image

from hierparse.data.synthetic import SyntheticParsing, contact_sheet
from hierparse.engine.command import run_command


def write_sheet(args: argparse.Namespace) -> int:
    sheet = contact_sheet(SyntheticParsing(n=args.count, size=args.size, seed=args.seed), count=args.count)
    Image.fromarray(sheet).save(args.out)
    print(f"wrote {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hierparse.data", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("out", nargs="?", default="synthetic_samples.png", help="PNG to write (default %(default)s)")
    parser.add_argument("--count", type=int, default=16, help="samples, 4 a row (default %(default)s)")
    parser.add_argument("--size", type=int, default=128, help="image size in pixels (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="data seed (default %(default)s)")
    return run_command(write_sheet, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
