"""Parse a photo with an exported hierparse model, using onnxruntime, numpy and Pillow only (no torch).

    hierparse export runs/default/best.pt --format onnx --dynamic --out parser.onnx
    python examples/onnx_parse.py parser.onnx photo.jpg --out parsed/ [--size 128]

The photo is seen with its long side at ``--size`` pixels (aspect kept, padded to the network's
stride), and each level's label map is cropped and brought back to the photo's size. Writes
``<stem>_<level>.png`` (palette PNGs in the tree's colours) and ``<stem>_raw.png`` (the finest level
as the dataset's raw ids); class names and colours come from the model file's metadata.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime
from PIL import Image, ImageOps


def parse(session: onnxruntime.InferenceSession, info: dict, photo: Image.Image, size: int) -> list[np.ndarray]:
    """Per-level uint8 label maps at the photo's own size."""
    width, height = photo.size
    scale = size / max(width, height)
    scaled = (max(1, round(width * scale)), max(1, round(height * scale)))
    stride = info["stride"]
    canvas = np.zeros((-(-scaled[1] // stride) * stride, -(-scaled[0] // stride) * stride, 3), np.uint8)
    canvas[:scaled[1], :scaled[0]] = np.asarray(photo.resize(scaled, Image.BILINEAR))
    batch = canvas.transpose(2, 0, 1)[None]  # [1, 3, H, W] uint8; normalisation is inside the graph
    outputs = session.run(None, {session.get_inputs()[0].name: batch})
    return [np.asarray(Image.fromarray(level[0, :scaled[1], :scaled[0]]).resize((width, height), Image.NEAREST))
            for level in outputs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="an ONNX file written by hierparse export (label maps, not --logits)")
    parser.add_argument("photo")
    parser.add_argument("--out", default=".", help="output folder")
    parser.add_argument("--size", type=int, default=128, help="long side the network sees (default 128)")
    args = parser.parse_args()
    session = onnxruntime.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    info = json.loads(session.get_modelmeta().custom_metadata_map["hierparse"])
    photo = ImageOps.exif_transpose(Image.open(args.photo)).convert("RGB")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.photo).stem
    levels = parse(session, info, photo, args.size)
    for level, labels in zip(info["levels"], levels):
        picture = Image.frombytes("P", labels.shape[::-1], np.ascontiguousarray(labels).tobytes())
        picture.putpalette([channel for color in level["colors"] for channel in color])
        picture.save(out / f"{stem}_{level['name']}.png")
    raw = np.asarray(info["fine_to_raw"], np.uint8)[levels[-1]]
    Image.fromarray(raw).save(out / f"{stem}_raw.png")
    names = [f"{stem}_{level['name']}.png" for level in info["levels"]]
    print(f"{args.photo}: {', '.join(names)}, {stem}_raw.png")


if __name__ == "__main__":
    main()
