"""Self-describing checkpoints: the hierarchy's YAML and the model config travel with the weights.

A checkpoint is a dict saved with ``torch.save`` (atomically, see :mod:`hierparse.engine.io`) and
loaded with ``weights_only=True``: no code runs on load. Keys: ``format``, ``hierarchy_yaml``,
``model_config`` (the arguments of :func:`hierparse.build_model`), ``config`` (the whole training
config), ``iteration``, ``model``, ``optimizer``, ``scheduler``, ``scaler``, ``rng`` (one entry per
process), ``best_miou``, ``metrics`` (the last evaluation), ``amp`` (the autocast mode the run used:
``amp: auto`` resolved on its device).
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hierparse.hierarchy import Hierarchy, hierarchy_from_yaml, load_hierarchy
from hierparse.models import StackedParser, build_model

FORMAT = "hierparse-checkpoint-v2"
# Format tags of checkpoints this version cannot load, and why.
OUTDATED_FORMATS = {"hierparse-checkpoint-v1": "its modules predate the residual refinement modules (retrain it)"}
MODEL_KEYS = ("backbone", "head", "stacked", "skips", "output_stride", "module_width")


def model_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a training config that :func:`build_model` needs (pretrained weights excluded)."""
    return {key: config[key] for key in MODEL_KEYS}


def build_from_config(hierarchy: Hierarchy, model_cfg: dict[str, Any], pretrained: str | None = None) -> StackedParser:
    """The model that ``model_cfg`` describes, for ``hierarchy``."""
    skips = model_cfg["skips"]
    return build_model(hierarchy, model_cfg["backbone"], model_cfg["head"], stacked=model_cfg["stacked"],
                       pretrained=pretrained, output_stride=model_cfg["output_stride"],
                       skips=False if skips == [] else skips, module_width=model_cfg["module_width"])


def capture_rng() -> dict[str, Any]:
    """This process's Python, NumPy, torch CPU and CUDA random states (weights_only-loadable types)."""
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    return {
        "python": random.getstate(),
        "numpy": numpy_state,
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {**numpy_state["state"], "key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32)}
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A hierparse checkpoint as a dict; a one-line error for a missing, unreadable or foreign file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {path} is a folder, not a file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise PermissionError(f"checkpoint {path} is not readable (permission denied)") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"cannot read checkpoint {path}: {reason}") from None
    if isinstance(checkpoint, dict) and checkpoint.get("format") in OUTDATED_FORMATS:
        raise ValueError(f"checkpoint {path} has the older format {checkpoint['format']!r}: "
                         f"{OUTDATED_FORMATS[checkpoint['format']]}")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise ValueError(f"{path} is not a hierparse checkpoint (no '{FORMAT}' format tag)")
    return checkpoint


def same_classes(a: Hierarchy, b: Hierarchy) -> bool:
    """Whether a model for ``a`` fits ``b``: same levels, class names and raw-id merging (names, colours may differ)."""
    return (a.level_names == b.level_names
            and all(a.class_names(level) == b.class_names(level) for level in range(a.num_levels))
            and torch.equal(a.label_table(), b.label_table()))


def checkpoint_hierarchy(checkpoint: dict[str, Any], path: str | Path,
                         requested: Hierarchy | str | Path | None = None) -> Hierarchy:
    """The hierarchy stored in ``checkpoint``; an error if ``requested`` is given and differs from it."""
    hierarchy = hierarchy_from_yaml(checkpoint["hierarchy_yaml"], source=f"{path} (stored hierarchy)")
    if requested is not None:
        wanted = load_hierarchy(requested)
        if not same_classes(wanted, hierarchy):
            raise ValueError(
                f"checkpoint {path} was trained for hierarchy {hierarchy.name!r} "
                f"(classes per level {hierarchy.num_classes}), not {wanted.name!r} from {wanted.source}"
            )
    return hierarchy


def model_from_checkpoint(path: str | Path, device: torch.device | str = "cpu",
                          hierarchy: Hierarchy | str | Path | None = None
                          ) -> tuple[StackedParser, Hierarchy, dict[str, Any]]:
    """(model in eval mode on ``device``, its hierarchy, the checkpoint dict) from a checkpoint file.

    ``hierarchy``: the one the caller expects; a checkpoint trained for another is an error.
    """
    checkpoint = load_checkpoint(path)
    missing = [key for key in ("model", "model_config", "hierarchy_yaml", "config") if key not in checkpoint]
    if missing:
        raise ValueError(f"checkpoint {path} holds no {missing[0]!r} (a hierparse checkpoint without a model)")
    stored = checkpoint_hierarchy(checkpoint, path, hierarchy)
    model = build_from_config(stored, checkpoint["model_config"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), stored, checkpoint
