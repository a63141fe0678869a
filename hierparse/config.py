"""Training configuration: flat defaults, a YAML file on top, then ``KEY VALUE`` / ``--key value`` overrides.

Every key has a default in :data:`DEFAULTS` (the no-argument run), so a YAML file and the command
line only name what changes. Values given on the command line are parsed as YAML scalars
(``0.01``, ``true``, ``[1, 1, 2]``, ``null``). An unknown key or a value of the wrong type is a
one-line ``ValueError``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Sequence

import yaml

from hierparse.data.mixture import check_sources
from hierparse.losses import COARSE_LABELS, LOSSES, OHEM, check_decode, check_loss_options
from hierparse.models.stacked import DEFAULT_MODULE_WIDTH
from hierparse.inference import DECODE_MODES, SIDES, SIZE_MODES, Inference

# The no-argument run: the light stacked PSP model on synthetic LIP-like people with hard-pixel mining
# (README "Train, evaluate, predict" has its time and scores).
DEFAULTS: dict[str, Any] = {
    # data
    "hierarchy": "lip",               # built-in name or YAML file
    "dataset": "synthetic",           # synthetic or a layout: lip, cihp, atr, pascal_person_part, helen, cityscapes, generic
    "root": None,                     # dataset folder (layouts on disk)
    "train_split": "train",
    "val_split": "val",
    "map": None,                      # label map reading dataset/root with another tree's raw ids, e.g. atr_to_lip
    "datasets": None,                 # training sources mixed by weight instead of dataset/root/train_split: a list
                                      # of {dataset, root, split, weight, coarsen, n, first} (hierparse.data.mixture)
    "synthetic_train_images": 20000,  # distinct synthetic training images (sample i is fixed by seed, split, i)
    "synthetic_val_images": 200,
    "crop_size": 128,                 # training crop (after random scale and flip)
    "train_scale": [0.75, 1.25],      # range of the random rescale before cropping
    "eval_size": 128,                 # evaluation and prediction: the network sees each image with its long side
                                      # (eval_side) at this size, aspect kept, padded to the stride; predictions are
                                      # scored at the label's own size; null: native size
    "eval_mode": "aspect",            # aspect, resize (eval_size x eval_size squares), none (native), or slide
    "eval_side": "long",              # long or short: the side eval_size sets (aspect, slide)
    "slide": None,                    # eval_mode slide: {crop, stride} windows, overlapping probabilities averaged
    "tta": None,                      # test-time augmentation of evaluate and predict: {flip: true, scales: [...]}:
                                      # mirrored views with left/right classes swapped at every level; null: off
    "workers": 1,                     # DataLoader worker processes per training process
    # model
    "backbone": "light",              # light, resnet18/34/50/101
    "head": "psp",                    # fcn, psp, aspp
    "stacked": True,                  # false: the flat baseline (finest level only)
    "skips": None,                    # stacked: skip stage per level after the first (null: default, []: none);
                                      # flat: null or one stage, e.g. [layer1] (flat + skip)
    "module_width": DEFAULT_MODULE_WIDTH,  # channels of each module's refinement branch
    "output_stride": 8,
    "pretrained": None,               # torchvision ResNet checkpoint file for the backbone
    # loss
    "loss": "softmax",                # softmax: per-level cross-entropy; tree_min: HSSN's tree-min loss (sigmoid
                                      # scores per class-tree node; stacked models, decode independent or tree)
    "focal_gamma": 0.0,               # tree_min only: focal exponent of its terms (HSSN), 0: off
    "level_weights": "fine",          # one weight per level; null: all 1; fine: each coarser level weighs
                                      # half the next finer one ([0.25, 0.5, 1] for three levels)
    "class_weights": None,            # per level: a list of per-class weights or null
    "label_smoothing": 0.0,
    "coarse_labels": "marginal",      # labels naming a group (coarse): marginal, the set's summed probability at
                                      # finer levels; balanced, each class of the set weighed by its inverse share
                                      # in exact labels; ignore: they train their own level and coarser ones only
    "teacher": None,                  # {checkpoint, threshold, warm_start, refresh}: coarse labels relabelled with a
                                      # trained model's best class inside each one's set; warm_start: the model
                                      # starts from the teacher's weights; refresh N: self-correction, the teacher
                                      # averages in the model every N iterations (hierparse.engine.teacher); null: off
    "ohem": {"threshold": 0.7, "min_kept": 3000},  # hard-pixel mining per level (softmax); null: off.
                                      # 3000 of a 128x128 crop's pixels: mmseg's Cityscapes fraction
    # solver
    "optimizer": "adamw",             # adamw or sgd (momentum)
    "lr": 0.004,
    "momentum": 0.9,                  # sgd only
    "weight_decay": 0.0001,           # not applied to norm weights and biases
    "batch_size": 16,                 # per process
    "max_iters": 1200,
    "warmup_iters": 50,               # linear warm-up from warmup_factor * lr, then poly decay
    "warmup_factor": 0.1,
    "poly_power": 0.9,
    "amp": "auto",                    # null, bf16 (CPU or GPU), fp16 (GPU), or auto: bf16 where the device
                                      # computes it natively (GPU; CPU with AVX512-BF16 or AMX), else null
    "channels_last": True,            # NHWC memory layout for model and images (faster oneDNN convolutions)
    "compile": False,                 # torch.compile the model (first steps slower while it compiles)
    # run
    "seed": 0,
    "out": "runs/default",            # run directory
    "resume": False,                  # continue from <out>/last.pt
    "eval_interval": 400,             # evaluate, checkpoint and plot every N iterations (and at the end)
    "log_interval": 20,
    "decode": "independent",          # independent, consistent (softmax) or tree (tree_min); evaluation and samples
    "device": "auto",                 # auto (cuda when available), cpu, cuda, cuda:1
    "threads": None,                  # torch CPU threads per process; null: the cores left after data workers
}

# Keys that may be null, and the type they have otherwise (the others have their default's type).
NULLABLE: dict[str, type] = {
    "root": str, "eval_size": int, "skips": list, "pretrained": str, "level_weights": list,
    "class_weights": list, "amp": str, "threads": int, "ohem": dict, "datasets": list, "teacher": dict,
    "slide": dict, "tta": dict, "map": str,
}
# Words a key takes besides values of its type.
WORDS: dict[str, tuple[str, ...]] = {"level_weights": ("fine",)}
TYPE_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list",
              dict: "a mapping"}
CHOICES: dict[str, tuple[Any, ...]] = {
    "optimizer": ("adamw", "sgd"),
    "amp": (None, "bf16", "fp16", "auto"),
    "decode": DECODE_MODES,
    "loss": LOSSES,
    "coarse_labels": COARSE_LABELS,
    "eval_mode": SIZE_MODES,
    "eval_side": SIDES,
}
POSITIVE = ("crop_size", "batch_size", "max_iters", "eval_interval", "log_interval", "lr",
            "synthetic_train_images", "synthetic_val_images", "threads", "output_stride")
NON_NEGATIVE = ("workers", "warmup_iters", "weight_decay", "momentum", "label_smoothing", "seed",
                "warmup_factor", "poly_power", "focal_gamma")


def _check_key(key: str, source: str) -> None:
    if key not in DEFAULTS:
        close = difflib.get_close_matches(key, DEFAULTS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown config key {key!r} in {source}{hint}")


def _check_type(key: str, value: Any, source: str) -> Any:
    """``value`` if it has the key's type (ints pass as floats); raise a one-line error otherwise."""
    if value is None and key in NULLABLE or value in WORDS.get(key, ()):
        return value
    expected = NULLABLE.get(key, type(DEFAULTS[key]))
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
        alternatives = [*(repr(word) for word in WORDS.get(key, ())), *(["null"] if key in NULLABLE else [])]
        also = f" or {' or '.join(alternatives)}" if alternatives else ""
        raise ValueError(f"config key {key!r} in {source} must be {TYPE_WORDS[expected]}{also}, got {value!r}")
    return value


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Check choices and ranges of a resolved config; return it."""
    for key, allowed in CHOICES.items():
        if config[key] not in allowed:
            choices = ", ".join("null" if choice is None else choice for choice in allowed)
            raise ValueError(f"config key {key!r} must be one of {choices}; got {config[key]!r}")
    for key in POSITIVE:
        if config[key] is not None and not config[key] > 0:
            raise ValueError(f"config key {key!r} must be positive, got {config[key]!r}")
    for key in NON_NEGATIVE:
        if config[key] < 0:
            raise ValueError(f"config key {key!r} must not be negative, got {config[key]!r}")
    scale = config["train_scale"]
    if (len(scale) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in scale)
            or not 0 < scale[0] <= scale[1]):
        raise ValueError(f"config key 'train_scale' must be [low, high] with 0 < low <= high, got {scale!r}")
    check_loss_options(config["loss"], focal_gamma=config["focal_gamma"], class_weights=config["class_weights"],
                       label_smoothing=config["label_smoothing"], ohem=OHEM.from_config(config["ohem"]))
    check_decode(config["loss"], config["decode"])
    if config["datasets"] is not None:
        check_sources(config["datasets"])
    if config["loss"] == "tree_min" and not config["stacked"]:
        raise ValueError("loss tree_min scores every level of the class tree; it needs stacked: true")
    if config["module_width"] < 2:
        raise ValueError(f"config key 'module_width' must be at least 2, got {config['module_width']!r}")
    if config["eval_size"] is not None and config["eval_size"] < 16:
        raise ValueError(f"config key 'eval_size' must be at least 16 or null, got {config['eval_size']!r}")
    Inference.from_config(config)  # one-line errors for eval_mode, slide and tta
    return config


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The keys of a YAML config file, each checked against :data:`DEFAULTS`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"config file {path} is not valid YAML: {' '.join(str(error).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of keys to values, got {type(data).__name__}")
    checked = {}
    for key, value in data.items():
        _check_key(str(key), f"config file {path}")
        checked[key] = _check_type(key, value, f"config file {path}")
    return checked


def _is_bool_text(text: str | None) -> bool:
    try:
        return isinstance(yaml.safe_load(text), bool) if text is not None else False
    except yaml.YAMLError:
        return False


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """``["max_iters", "100", "--lr", "0.01", "--resume", "--out=runs/x"]`` -> a dict of checked values.

    Keys may be written ``key value``, ``--key value``, ``--key=value`` (dashes or underscores); a
    boolean ``--key`` not followed by true/false means true.
    """
    overrides: dict[str, Any] = {}
    position = 0
    while position < len(tokens):
        token = tokens[position]
        dashed = token.startswith("--")
        key, has_value, value_text = token.lstrip("-").partition("=")
        key = key.replace("-", "_")
        _check_key(key, "the command line")
        if not has_value:
            following = tokens[position + 1] if position + 1 < len(tokens) else None
            if isinstance(DEFAULTS[key], bool) and dashed and not _is_bool_text(following):
                value_text = "true"
            elif following is None:
                raise ValueError(f"config key {key!r} on the command line has no value")
            else:
                value_text = following
                position += 1
        position += 1
        if NULLABLE.get(key, type(DEFAULTS[key])) is str and value_text not in ("null", "~"):
            value = value_text  # a path or name stays as written, even "1" or "yes"
        else:
            try:
                value = yaml.safe_load(value_text)
            except yaml.YAMLError:
                value = value_text
        overrides[key] = _check_type(key, value, "the command line")
    return overrides


def resolve(config_file: str | Path | None = None, overrides: Sequence[str] = (),
            base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults (or ``base``), then ``config_file``, then command-line ``overrides``; validated."""
    config = dict(DEFAULTS if base is None else base)
    if config_file is not None:
        config.update(load_yaml(config_file))
    config.update(parse_overrides(overrides))
    return validate(config)


def dump(config: dict[str, Any]) -> str:
    """The config as YAML text, keys in the order of :data:`DEFAULTS`."""
    return yaml.safe_dump({key: config[key] for key in DEFAULTS}, sort_keys=False)
