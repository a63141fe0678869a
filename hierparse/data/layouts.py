"""Where each dataset keeps its files on disk: find the (image, label) pairs of one split.

A *layout* names a dataset (``lip``, ``cihp``, ...); it has one or more *variants*, one per way the
files are commonly arranged: the official release and the arrangement that the widely used parsing
repositories (CE2P, SCHP) expect. ``variant="auto"`` picks the first variant whose image and label
folders exist for the split. README.md ("Datasets") draws each variant as a tree and names its source.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


@dataclasses.dataclass(frozen=True)
class Variant:
    """One arrangement of a dataset: an image folder, a label folder, optionally an id list, per split.

    Folder and file templates are relative to the root; ``{split}`` is the split as given
    (``train``) and ``{Split}`` its name in this release (``Training``), from ``split_names``.
    Several candidates per field cover archives that unpack into a doubled folder.
    """

    name: str
    images: tuple[str, ...]
    labels: tuple[str, ...]
    id_files: tuple[str, ...] = ()
    # Images of every split share one folder, so a split needs its id file (or split="all").
    shared_folder: bool = False
    split_names: tuple[tuple[str, str], ...] = ()
    image_suffixes: tuple[str, ...] = IMAGE_SUFFIXES
    label_suffix: str = ".png"
    # Images may sit in sub-folders (Cityscapes: one per city); labels mirror the same sub-folders.
    recursive: bool = False
    # "png": one single-channel PNG of raw ids; "helen_maps": a folder of per-class maps;
    # "celebamask_masks": CelebAMask-HQ's per-class binary masks, <id // 2000>/<id:05d>_<class>.png.
    label_format: str = "png"

    def _format(self, template: str, split: str) -> str:
        return template.format(split=split, Split=dict(self.split_names).get(split, split))

    def _first_existing(self, root: Path, templates: tuple[str, ...], split: str) -> Path | None:
        for template in templates:
            path = root / self._format(template, split)
            if path.exists():
                return path
        return None

    def image_folder(self, root: Path, split: str) -> Path | None:
        return self._first_existing(root, self.images, split)

    def present(self, root: Path, split: str) -> bool:
        """Whether both the image and the label folder of ``split`` exist under ``root``."""
        has_labels = self._first_existing(root, self.labels, split) is not None
        return has_labels and self.image_folder(root, split) is not None

    def find(self, root: Path, split: str) -> list[tuple[Path, Path]]:
        """The (image, label) pairs of ``split``, in id-file order or sorted by path."""
        image_dir = self.image_folder(root, split)
        if image_dir is None:
            looked = ", ".join(str(root / self._format(t, split)) for t in self.images)
            raise FileNotFoundError(f"no image folder for split {split!r}: looked for {looked}")
        label_dir = self._first_existing(root, self.labels, split)
        if label_dir is None:
            looked = ", ".join(str(root / self._format(t, split)) for t in self.labels)
            raise FileNotFoundError(f"no label folder for split {split!r}: looked for {looked}")
        id_file = self._first_existing(root, self.id_files, split) if split != "all" else None
        if id_file is not None:
            images = [self._image_of(image_dir, stem, id_file) for stem in read_id_file(id_file)]
        elif self.shared_folder and split != "all":
            looked = ", ".join(str(root / self._format(t, split)) for t in self.id_files)
            raise FileNotFoundError(
                f"split {split!r} needs an id file (the images of all splits share {image_dir}): "
                f"looked for {looked}; or pass split='all'"
            )
        else:
            pattern = "**/*" if self.recursive else "*"
            images = sorted(
                path
                for path in image_dir.glob(pattern)
                if path.is_file() and _matching_suffix(path.name, self.image_suffixes)
            )
            if not images:
                raise ValueError(
                    f"empty split {split!r}: no images ({', '.join(self.image_suffixes)}) in {image_dir}"
                )
        pairs = [(image, self._label_of(image, image_dir, label_dir)) for image in images]
        missing = [(image, label) for image, label in pairs if not self._label_exists(label)]
        if missing:
            image, label = missing[0]
            raise FileNotFoundError(
                f"missing label file {label} for image {image} "
                f"({len(missing)} of {len(pairs)} labels of split {split!r} are missing)"
            )
        return pairs

    def unpaired_labels(self, root: Path, split: str) -> list[Path]:
        """Label files of ``split``'s label folder that no image of the image folder has."""
        image_dir, label_dir = self.image_folder(root, split), self._first_existing(root, self.labels, split)
        if image_dir is None or label_dir is None or self.label_format != "png":
            return []
        pattern = f"**/*{self.label_suffix}" if self.recursive else f"*{self.label_suffix}"
        images = {self._label_of(path, image_dir, label_dir) for path in image_dir.glob("**/*" if self.recursive else "*")
                  if path.is_file() and _matching_suffix(path.name, self.image_suffixes)}
        return sorted(path for path in label_dir.glob(pattern) if path.is_file() and path not in images)

    def _image_of(self, image_dir: Path, stem: str, id_file: Path) -> Path:
        for suffix in self.image_suffixes:
            candidate = image_dir / f"{stem}{suffix}"
            if candidate.exists():
                return candidate
        raise FileNotFoundError(
            f"missing image file {image_dir / stem}{{{','.join(self.image_suffixes)}}} listed in {id_file}"
        )

    def _label_exists(self, label: Path) -> bool:
        if self.label_format == "celebamask_masks":  # a stem: the masks are <stem>_<class>.png
            return any(label.parent.glob(f"{label.name}_*.png"))
        return label.exists()

    def _label_of(self, image: Path, image_dir: Path, label_dir: Path) -> Path:
        relative = image.relative_to(image_dir)
        suffix = _matching_suffix(image.name, self.image_suffixes) or image.suffix
        stem = image.name[: -len(suffix)]
        if self.label_format == "celebamask_masks":
            if not stem.isdigit():
                raise ValueError(f"image {image}: CelebA-HQ images are named by their index (0.jpg ... 29999.jpg)")
            return label_dir / str(int(stem) // 2000) / f"{int(stem):05d}"
        return label_dir / relative.parent / f"{stem}{self.label_suffix}"


def _matching_suffix(name: str, suffixes: tuple[str, ...]) -> str | None:
    """The suffix of ``suffixes`` that ``name`` ends with, ignoring case (``.JPG``), or None."""
    lowered = name.lower()
    return next((suffix for suffix in suffixes if lowered.endswith(suffix.lower())), None)


def read_id_file(path: Path) -> list[str]:
    """Image stems listed one per line; a line may carry an index before a comma (Helen's lists)."""
    stems = []
    for line in Path(path).read_text().splitlines():
        tokens = line.replace(",", " ").split()
        if tokens:
            stem = tokens[-1]
            suffix = _matching_suffix(stem, IMAGE_SUFFIXES)
            stems.append(stem[: -len(suffix)] if suffix else stem)
    if not stems:
        raise ValueError(f"empty split: id file {path} lists no images")
    return stems


def read_list_file(path: str | Path, root: str | Path) -> list[tuple[Path, Path]]:
    """Pairs from a list file of ``image label [anything else]`` lines, paths relative to ``root``.

    This is the format of the original stacked-network code and of CE2P's ``trainList.txt``
    (whose extra columns, the flipped label and the edge map, are ignored).
    """
    root = Path(root)
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = root / path
    if not path.is_file():
        raise FileNotFoundError(f"list file {path} does not exist")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < 2:
            raise ValueError(f"{path}:{number}: expected 'image label', got {line.strip()!r}")
        pairs.append((root / tokens[0], root / tokens[1]))
    if not pairs:
        raise ValueError(f"empty split: list file {path} lists no image/label pairs")
    for image, label in pairs:
        for file in (image, label):
            if not file.exists():
                raise FileNotFoundError(f"missing file {file} listed in {path}")
    return pairs


@dataclasses.dataclass(frozen=True)
class Layout:
    """A dataset's name, the hierarchy its raw ids follow and the variants it is found in."""

    name: str
    hierarchy: str | None
    variants: tuple[Variant, ...]
    # List files of "image label" lines looked for (variant "list") when no folder variant is present.
    list_files: tuple[str, ...] = ()
    # Images larger than their labels by a whole factor are resized to them (CelebAMask-HQ: 1024 / 512).
    images_to_label_size: bool = False

    def variant(self, name: str) -> Variant:
        for variant in self.variants:
            if variant.name == name:
                return variant
        known = ", ".join(v.name for v in self.variants)
        if self.list_files:
            known += ", list"
        raise ValueError(f"layout {self.name!r} has no variant {name!r} (known: auto, {known})")

    def detect(self, root: Path, split: str) -> Variant:
        """The first variant whose image and label folders exist under ``root`` for ``split``."""
        for variant in self.variants:
            if variant.present(root, split):
                return variant
        looked = "; ".join(
            f"{v.name}: {' + '.join(v._format(t, split) for t in (*v.images, *v.labels))}" for v in self.variants
        )
        raise FileNotFoundError(f"no {self.name} layout for split {split!r} under {root} (looked for {looked})")

    def find(
        self, root: str | Path, split: str, variant: str = "auto", list_file: str | Path | None = None
    ) -> tuple[list[tuple[Path, Path]], Variant | None]:
        """The (image, label) pairs of ``split`` and the variant they were found in (None: a list file).

        ``list_file`` overrides the folders of any layout.
        """
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset root {root} is not a folder")
        if list_file is not None:
            return read_list_file(list_file, root), None
        if variant == "list" or (variant == "auto" and self.list_files and not self._any_folder(root, split)):
            for template in self.list_files:
                candidate = root / template.format(split=split)
                if candidate.is_file():
                    return read_list_file(candidate, root), None
            if variant == "list":
                looked = ", ".join(str(root / t.format(split=split)) for t in self.list_files)
                raise FileNotFoundError(f"no list file for split {split!r}: looked for {looked}")
        chosen = self.detect(root, split) if variant == "auto" else self.variant(variant)
        return chosen.find(root, split), chosen

    def _any_folder(self, root: Path, split: str) -> bool:
        return any(variant.present(root, split) for variant in self.variants)


def _schp(name: str = "schp") -> Variant:
    """SCHP (GoGoDuck912/Self-Correction-Human-Parsing): ``{split}_images``, ``{split}_segmentations``,
    ``{split}_id.txt`` directly under the root; used for LIP, ATR, PASCAL-Person-Part and CIHP alike."""
    return Variant(name, images=("{split}_images",), labels=("{split}_segmentations",), id_files=("{split}_id.txt",))


def _celebamask(name: str, *labels: str, **options) -> Variant:
    """CelebAMask-HQ: ``CelebA-HQ-img/`` beside the label folder, directly or under ``CelebAMask-HQ/``;
    no split files in the release, so id lists of one's own (or split ``all``)."""
    return Variant(name, images=("CelebA-HQ-img", "CelebAMask-HQ/CelebA-HQ-img"),
                   labels=(*labels, *(f"CelebAMask-HQ/{label}" for label in labels)),
                   id_files=("{split}.txt", "{split}_id.txt", "list/{split}.txt"), shared_folder=True, **options)


LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in [
        Layout(
            "lip",
            "lip",
            (
                Variant(
                    "official",
                    images=("TrainVal_images/{split}_images", "TrainVal_images/TrainVal_images/{split}_images"),
                    labels=(
                        "TrainVal_parsing_annotations/{split}_segmentations",
                        "TrainVal_parsing_annotations/TrainVal_parsing_annotations/{split}_segmentations",
                    ),
                    id_files=("TrainVal_images/{split}_id.txt", "{split}_id.txt"),
                ),
                _schp(),
                Variant("ce2p", images=("{split}_images",), labels=("{split}_labels",)),
            ),
        ),
        Layout(
            "cihp",
            "cihp",
            (
                Variant(
                    "official",
                    images=("{Split}/Images",),
                    labels=("{Split}/Category_ids",),
                    id_files=("{Split}/{split}_id.txt",),
                    split_names=(("train", "Training"), ("val", "Validation"), ("test", "Testing")),
                ),
                _schp(),
            ),
        ),
        Layout(
            "atr",
            "atr",
            (
                Variant(
                    "official",
                    images=("JPEGImages", "humanparsing/JPEGImages"),
                    labels=("SegmentationClassAug", "humanparsing/SegmentationClassAug"),
                    id_files=("{split}_id.txt", "humanparsing/{split}_id.txt"),
                    shared_folder=True,
                ),
                _schp(),
            ),
        ),
        Layout(
            "pascal_person_part",
            "pascal_person_part",
            (
                Variant(
                    "official",
                    images=("JPEGImages",),
                    labels=("SegmentationPart",),
                    id_files=("{split}_id.txt", "list/{split}_id.txt"),
                    shared_folder=True,
                ),
                _schp(),
            ),
        ),
        Layout(
            "helen",
            "helen",
            (
                Variant(
                    "official",
                    images=("images",),
                    labels=("labels",),
                    id_files=("{Split}.txt",),
                    shared_folder=True,
                    split_names=(("train", "exemplars"), ("val", "tuning"), ("test", "testing")),
                    label_suffix="",
                    label_format="helen_maps",
                ),
            ),
        ),
        Layout(
            "celebamask_hq",
            "celebamask_hq",
            (
                # the release: one binary mask per class, combined on reading as prepropess_data.py does;
                # then the label PNGs (ids 0-18) that zllrunning/face-parsing.PyTorch's script writes
                _celebamask("official", "CelebAMask-HQ-mask-anno", label_suffix="", label_format="celebamask_masks"),
                _celebamask("combined", "mask", "CelebAMask-HQ-mask"),
            ),
            images_to_label_size=True,
        ),
        Layout(
            "cityscapes",
            "cityscapes",
            (
                Variant(
                    "official",
                    images=("leftImg8bit/{split}",),
                    labels=("gtFine/{split}",),
                    image_suffixes=("_leftImg8bit.png",),
                    label_suffix="_gtFine_labelIds.png",
                    recursive=True,
                ),
            ),
        ),
        Layout(
            "generic",
            None,
            (
                Variant("folders", images=("{split}/images",), labels=("{split}/labels",), recursive=True),
                Variant("folders_by_kind", images=("images/{split}",), labels=("labels/{split}",), recursive=True),
            ),
            list_files=("{split}.txt", "{split}_list.txt", "list/{split}.txt"),
        ),
    ]
}


def get_layout(name: str) -> Layout:
    """The layout called ``name``; a one-line error lists the known ones."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {name!r} (known: {', '.join(LAYOUTS)})")
    return LAYOUTS[name]
