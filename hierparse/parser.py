"""Parse photos: :class:`Parser` (a checkpoint behind one call) and :class:`Parse` (one image's maps).

    parser = hierparse.Parser.from_checkpoint("runs/default/best.pt", tta=True)
    parse = parser("photo.jpg")             # a path, a PIL image, an HxWx3 uint8 array, or a list
    parse.levels[-1]                        # finest class indices at the photo's own size
    parse.raw                               # ... as the dataset's raw label ids
    parser.parse_folder("photos/", "parsed/", batch_size=8)

Photos are read as a viewer shows them (EXIF orientation applied); gray, palette, CMYK, 16-bit and
RGBA images are converted to RGB (:func:`hierparse.data.dataset.to_rgb`: alpha dropped).
"""

from __future__ import annotations

import dataclasses
import glob
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.utils.data
from PIL import Image

from hierparse.data.dataset import read_image, to_rgb
from hierparse.data.transforms import ToTensor
from hierparse.engine import distributed
from hierparse.engine.checkpoint import model_from_checkpoint
from hierparse.engine.io import atomic_write, writable_dir
from hierparse.engine.visualize import paint, save_panels
from hierparse.hierarchy import Hierarchy
from hierparse.inference import Inference, Predictor
from hierparse.losses import check_decode

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
DEFAULT_TTA = {"flip": True, "scales": [0.75, 1.0, 1.25]}
OVERLAY_ALPHA = 0.5


@dataclass
class Parse:
    """One parsed image: ``levels``, int64 ``HxW`` class maps coarse -> fine at the image's own size."""

    hierarchy: Hierarchy
    levels: list[np.ndarray]
    image: np.ndarray                                   # uint8 HxWx3, as parsed (oriented)
    path: Path | None = None
    probabilities: list[np.ndarray] | None = field(default=None, repr=False)  # float32 [C, H, W] per level

    @property
    def raw(self) -> np.ndarray:
        """uint8 ``HxW``: the finest level as the dataset's raw label ids."""
        return self.hierarchy.to_raw(self.levels[-1])

    def colored(self, level: int = -1) -> np.ndarray:
        """uint8 ``HxWx3``: ``level`` in the tree's colours."""
        return paint(self.levels[level], self.hierarchy, level)

    def overlay(self, level: int = -1, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
        """uint8 ``HxWx3``: the image blended with the coloured ``level`` (``alpha`` of the colours)."""
        blend = (1 - alpha) * self.image.astype(np.float32) + alpha * self.colored(level).astype(np.float32)
        return blend.round().astype(np.uint8)

    def palette_image(self, level: int = -1) -> Image.Image:
        """A mode ``P`` image of ``level``'s class indices with the tree's colours (as LIP and VOC tools read)."""
        indices = np.ascontiguousarray(self.levels[level], dtype=np.uint8)
        picture = Image.frombytes("P", indices.shape[::-1], indices.tobytes())
        picture.putpalette([channel for color in self.hierarchy.colors(level) for channel in color])
        return picture

    def save(self, out: str | Path, stem: str, figure: bool = False, overlay: bool = False) -> list[Path]:
        """Write the outputs of ``hierparse predict`` into ``out``; returns their paths."""
        paths = output_paths(self.hierarchy, Path(out), stem, figure, overlay)
        for level, path in enumerate(paths[:self.hierarchy.num_levels]):
            save_image(self.palette_image(level), path)
        save_image(Image.fromarray(self.raw), paths[self.hierarchy.num_levels])
        extras = iter(paths[self.hierarchy.num_levels + 1:])
        if figure:
            save_panels([[self.image, *(self.colored(level) for level in range(self.hierarchy.num_levels))]],
                        ["image", *self.hierarchy.level_names], next(extras), panel_inches=2.5)
        if overlay:
            save_image(Image.fromarray(self.overlay()), next(extras))
        return paths


def output_paths(hierarchy: Hierarchy, out: Path, stem: str, figure: bool, overlay: bool) -> list[Path]:
    """A palette PNG per level, the raw-id PNG, then the figure and the overlay if asked for."""
    names = [f"{stem}_{name}.png" for name in hierarchy.level_names] + [f"{stem}_raw.png"]
    names += [f"{stem}_figure.png"] * figure + [f"{stem}_overlay.png"] * overlay
    return [out / name for name in names]


def save_image(picture: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temporary: picture.save(temporary, format="PNG"))


def as_rgb(image: Any) -> np.ndarray:
    """uint8 ``HxWx3`` of a path, a PIL image or an array (uint8 or uint16; gray, RGB or RGBA)."""
    if isinstance(image, (str, Path)):
        return read_image(image, orient=True)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype not in (np.uint8, np.uint16) or image.ndim not in (2, 3) or (
                image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise ValueError(f"an image array must be uint8 or uint16 HxW, HxWx3 or HxWx4; got {image.dtype} "
                             f"{image.shape}")
        if image.dtype == np.uint16 and image.ndim == 3:
            image = (image.astype(np.uint32) * 255 + 32767) // 65535
            image = image.astype(np.uint8)
        return to_rgb(Image.fromarray(np.ascontiguousarray(image)))
    raise TypeError(f"cannot parse a {type(image).__name__}; pass a path, a PIL image or an HxWx3 uint8 array")


def find_images(sources: Sequence[str | Path], recursive: bool = False) -> list[tuple[Path, Path]]:
    """(image file, its output stem relative to the output folder) of files, folders and glob patterns.

    A folder's images keep their subfolders (``--recursive``) in the output; two inputs that would
    write the same outputs are an error.
    """
    found: list[tuple[Path, Path]] = []
    for source in map(str, sources):
        path = Path(source)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            found += [(file, file.relative_to(path).with_suffix("")) for file in files]
        elif path.is_file():
            found.append((path, Path(path.stem)))
        elif glob.has_magic(source):
            matches = sorted(Path(p) for p in glob.glob(source, recursive=recursive) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"no file matches {source}")
            found += [(match, Path(match.stem)) for match in matches]
        else:
            raise FileNotFoundError(f"no image, folder or pattern {source}")
    stems: dict[Path, Path] = {}
    for file, stem in found:
        if stem in stems and stems[stem] != file:
            raise ValueError(f"{stems[stem]} and {file} would both write {stem}_*.png; parse them into separate "
                             "folders")
        stems[stem] = file
    return list(dict.fromkeys(found))


TO_TENSOR = ToTensor()


def normalised(photo: np.ndarray) -> torch.Tensor:
    """A uint8 ``HxWx3`` photo as the network's input ``[3, H, W]`` (ImageNet mean and std)."""
    return TO_TENSOR({"image": photo, "label": np.zeros(photo.shape[:2], np.uint8)})["image"]


class PhotoFiles(torch.utils.data.Dataset):
    """Image files for a DataLoader: ``{"index", "photo", "image"}`` or ``{"index", "error"}`` if unreadable."""

    def __init__(self, files: Sequence[Path]):
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            photo = read_image(self.files[index], orient=True)
        except (ValueError, FileNotFoundError, PermissionError) as error:
            return {"index": index, "error": str(error)}
        return {"index": index, "photo": photo, "image": normalised(photo)}


def collate_photos(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return samples


@dataclass
class FolderReport:
    """What :meth:`Parser.parse_folder` did: images parsed, found parsed already, and unreadable (with why)."""

    parsed: int = 0
    existing: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)


class Parser:
    """A trained model behind one call: images in, one :class:`Parse` per image out."""

    def __init__(self, model: torch.nn.Module, hierarchy: Hierarchy, inference: Inference = Inference(),
                 decode: str = "independent", batch_size: int = 8):
        self.predictor = Predictor(model.eval(), hierarchy, inference, decode)
        self.hierarchy, self.batch_size = hierarchy, batch_size

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto", decode: str | None = None,
                        tta: bool | dict[str, Any] | None = None, hierarchy: str | Path | Hierarchy | None = None,
                        batch_size: int = 8, **inference: Any) -> "Parser":
        """The run's model and inference settings; ``decode`` and ``inference`` (``mode``, ``size``,
        ``side``, ``crop``, ``stride``) override them. ``tta``: None, the run's ``tta``; False, none;
        True, the run's or flip + scales 0.75, 1, 1.25; a dict ``{flip, scales}``."""
        model, stored, checkpoint = model_from_checkpoint(path, distributed.resolve_device(str(device)), hierarchy)
        config = checkpoint["config"]
        decode = decode or config["decode"]
        check_decode(config.get("loss", "softmax"), decode)
        return cls(model, stored, inference_settings(config, tta, **inference), decode, batch_size)

    @property
    def inference(self) -> Inference:
        return self.predictor.inference

    def __call__(self, images: Any, probabilities: bool = False) -> Parse | list[Parse]:
        """One :class:`Parse` of an image, or a list of them of a list of images; ``probabilities``:
        also keep each level's averaged probabilities (sigmoid scores for tree-min models)."""
        many = isinstance(images, (list, tuple))
        items = list(images) if many else [images]
        parses = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start:start + self.batch_size]
            photos = [as_rgb(item) for item in chunk]
            paths = [Path(item) if isinstance(item, (str, Path)) else None for item in chunk]
            parses += self._parse(photos, [normalised(photo) for photo in photos], paths, probabilities)
        return parses if many else parses[0]

    def _parse(self, photos: Sequence[np.ndarray], tensors: Sequence[torch.Tensor], paths: Sequence[Path | None],
               probabilities: bool = False) -> list[Parse]:
        parses = []
        scored = self.predictor.scores(tensors) if probabilities else None
        decoded = self.predictor.maps(tensors) if scored is None else [self.predictor.decode(s) for s in scored]
        for index, (photo, path, maps) in enumerate(zip(photos, paths, decoded)):
            probs = None
            if scored is not None:
                probs = [(s if self.predictor.decode_mode == "tree" else s.exp()).cpu().numpy() for s in scored[index]]
            parses.append(Parse(self.hierarchy, [level.cpu().numpy() for level in maps], photo, path, probs))
        return parses

    def parse_folder(self, sources: str | Path | Sequence[str | Path], out: str | Path, batch_size: int | None = None,
                     workers: int = 0, recursive: bool = False, skip_existing: bool = False, figure: bool = False,
                     overlay: bool = False, progress: bool = True) -> FolderReport:
        """Parse image files, folders and glob patterns into ``out``, streaming (memory stays flat):
        unreadable files are reported and skipped; ``skip_existing`` leaves images with outputs alone."""
        from tqdm import tqdm  # a progress bar: loaded here, so that import hierparse needs no tqdm
        found = find_images([sources] if isinstance(sources, (str, Path)) else sources, recursive)
        out = writable_dir(out)
        report = FolderReport()
        todo = []
        for file, stem in found:
            if skip_existing and all(p.exists() for p in output_paths(self.hierarchy, out, str(stem), figure, overlay)):
                report.existing += 1
            else:
                todo.append((file, stem))
        loader = torch.utils.data.DataLoader(
            PhotoFiles([file for file, _ in todo]), batch_size=batch_size or self.batch_size, num_workers=workers,
            collate_fn=collate_photos, pin_memory=self.predictor.device.type == "cuda")
        with tqdm(total=len(todo), unit="img", disable=not progress, desc="parsing") as bar:
            for batch in loader:
                good = [sample for sample in batch if "error" not in sample]
                for sample in batch:
                    if "error" in sample:
                        report.failed.append((todo[sample["index"]][0], sample["error"]))
                        bar.write(f"hierparse: skipped: {sample['error']}", file=sys.stderr)
                if good:
                    parses = self._parse([s["photo"] for s in good], [s["image"] for s in good],
                                         [todo[s["index"]][0] for s in good])
                    for sample, parse in zip(good, parses):
                        parse.save(out, str(todo[sample["index"]][1]), figure, overlay)
                    report.parsed += len(good)
                bar.update(len(batch))
        return report


def inference_settings(config: dict[str, Any], tta: bool | dict[str, Any] | None = None, **overrides: Any) -> Inference:
    """A run's :class:`Inference` with ``tta`` (see :meth:`Parser.from_checkpoint`) and ``overrides``
    (fields of :class:`Inference`) applied."""
    if tta is None:
        tta = config.get("tta")
    elif tta is True:
        tta = config.get("tta") or DEFAULT_TTA
    return dataclasses.replace(Inference.from_config({**config, "tta": tta or None}), **overrides)
