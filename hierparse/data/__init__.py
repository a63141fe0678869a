"""Datasets: real on-disk layouts, procedural synthetic people, joint image/label transforms.

Every dataset yields ``{"image", "label", "path"}``; labels are uint8 raw ids from file to loss.
"""

from hierparse.data import transforms
from hierparse.data.dataset import ParsingDataset, read_image, read_label
from hierparse.data.layouts import LAYOUTS, get_layout
from hierparse.data.registry import DATASETS, build_dataset, register_dataset
from hierparse.data.synthetic import SyntheticParsing, colorize
from hierparse.data.transforms import eval_transform, train_transform

__all__ = [
    "DATASETS",
    "LAYOUTS",
    "ParsingDataset",
    "SyntheticParsing",
    "build_dataset",
    "colorize",
    "eval_transform",
    "get_layout",
    "read_image",
    "read_label",
    "register_dataset",
    "train_transform",
    "transforms",
]
