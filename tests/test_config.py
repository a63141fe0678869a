"""Training config: defaults, YAML files, KEY VALUE / --key value overrides, one-line errors."""

from pathlib import Path

import pytest
import yaml

from hierparse import config
from hierparse.train import resolve_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_valid_and_dump_round_trips(tmp_path):
    resolved = config.resolve()
    assert resolved == config.DEFAULTS
    (tmp_path / "saved.yaml").write_text(config.dump(resolved))
    assert config.resolve(tmp_path / "saved.yaml") == resolved


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_load(path):
    resolved = config.resolve(path)
    assert set(resolved) == set(config.DEFAULTS)


def test_every_override_form():
    overrides = config.parse_overrides(
        ["max_iters", "20", "--lr", "0.5", "--batch-size=3", "--resume", "--stacked", "false",
         "level_weights", "[1, 2, 3]", "out", "runs/x", "root", "123", "amp", "bf16", "skips", "null"])
    assert overrides == {"max_iters": 20, "lr": 0.5, "batch_size": 3, "resume": True, "stacked": False,
                         "level_weights": [1, 2, 3], "out": "runs/x", "root": "123", "amp": "bf16", "skips": None}
    assert isinstance(config.parse_overrides(["lr", "1"])["lr"], float)


def test_file_then_command_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("max_iters: 50\nlr: 0.1\noptimizer: sgd\n")
    resolved = config.resolve(path, ["lr", "0.2"])
    assert (resolved["max_iters"], resolved["lr"], resolved["optimizer"]) == (50, 0.2, "sgd")
    assert resolved["batch_size"] == config.DEFAULTS["batch_size"]


@pytest.mark.parametrize("tokens, message", [
    (["max_iter", "5"], "unknown config key 'max_iter' in the command line; did you mean 'max_iters'?"),
    (["--nonsense", "1"], "unknown config key 'nonsense'"),
    (["max_iters", "five"], "config key 'max_iters' in the command line must be an integer, got 'five'"),
    (["stacked", "2"], "config key 'stacked' in the command line must be true or false"),
    (["level_weights", "1"], "must be a list or 'fine' or null, got 1"),
    (["level_weights", "coarse"], "must be a list or 'fine' or null, got 'coarse'"),
    (["max_iters"], "config key 'max_iters' on the command line has no value"),
    (["optimizer", "adam"], "config key 'optimizer' must be one of adamw, sgd; got 'adam'"),
    (["amp", "fp8"], "config key 'amp' must be one of null, bf16, fp16"),
    (["batch_size", "0"], "config key 'batch_size' must be positive"),
    (["weight_decay", "-1"], "config key 'weight_decay' must not be negative"),
    (["eval_size", "8"], "config key 'eval_size' must be at least 16 or null"),
    (["loss", "bce"], "config key 'loss' must be one of softmax, tree_min; got 'bce'"),
    (["loss", "tree_min", "ohem", "null", "decode", "consistent"],
     "decode 'consistent' does not fit a model trained with loss 'tree_min'; use independent or tree"),
    (["decode", "tree"], "decode 'tree' does not fit a model trained with loss 'softmax'; use independent or consistent"),
    (["loss", "tree_min", "ohem", "null", "decode", "tree", "stacked", "false"], "loss tree_min scores every level of the class tree; it needs stacked: true"),
    (["loss", "tree_min", "decode", "tree"], "ohem: for loss softmax only, not tree_min; set ohem null (it is on by default)"),
    (["loss", "tree_min", "ohem", "null", "label_smoothing", "0.1", "class_weights", "[null, null, null]"],
     "class_weights and label_smoothing: for loss softmax only, not tree_min"),
    (["focal_gamma", "2"], "focal_gamma must be >= 0 and applies to loss tree_min only, got 2.0 with loss 'softmax'"),
    (["loss", "tree_min", "ohem", "null", "focal_gamma", "-1"], "config key 'focal_gamma' must not be negative"),
])
def test_bad_overrides_are_one_line_errors(tokens, message):
    with pytest.raises(ValueError) as error:
        config.resolve(None, tokens)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file .*missing.yaml does not exist"):
        config.resolve(tmp_path / "missing.yaml")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("max_iters: 5\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown config key 'learning_rate' in config file .*unknown.yaml"):
        config.resolve(unknown)
    broken = tmp_path / "broken.yaml"
    broken.write_text("max_iters: [5\n")
    with pytest.raises(ValueError, match="is not valid YAML") as error:
        config.resolve(broken)
    assert "\n" not in str(error.value)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        config.resolve(listing)


def test_resume_starts_from_the_saved_config(tmp_path):
    (tmp_path / "config.yaml").write_text(config.dump({**config.DEFAULTS, "max_iters": 77, "lr": 0.3}))
    resolved = resolve_config(None, ["out", str(tmp_path), "--resume", "max_iters", "99"])
    assert (resolved["lr"], resolved["max_iters"], resolved["resume"]) == (0.3, 99, True)
    assert resolve_config(None, ["out", str(tmp_path)])["lr"] == config.DEFAULTS["lr"]


def test_dump_is_yaml_in_default_order():
    text = config.dump(config.DEFAULTS)
    assert list(yaml.safe_load(text)) == list(config.DEFAULTS)
