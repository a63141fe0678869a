"""Training: artefacts of a run, exact resume, NaN stop, torchrun with two processes, bad input."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hierparse import load_hierarchy
from hierparse.cli import main
from hierparse.engine.checkpoint import load_checkpoint, model_from_checkpoint
from hierparse.engine.sampling import EpochSampler, SeededSamples
from hierparse.data import DATASETS, build_dataset
from hierparse import config as configuration
from hierparse.engine.solver import PolyWarmup
from hierparse.train import Trainer, resolve_amp, train as run_training

REPO = Path(__file__).resolve().parents[1]
TINY = ["crop_size", "32", "eval_size", "32", "batch_size", "2", "synthetic_train_images", "8",
        "synthetic_val_images", "2", "max_iters", "6", "eval_interval", "3", "log_interval", "1",
        "workers", "0", "threads", "1"]


def train(out: Path, *extra: str) -> int:
    return main(["train", *TINY, "out", str(out), *extra])


def test_a_short_run_writes_every_artefact(tmp_path, capsys):
    assert train(tmp_path / "run") == 0
    run = tmp_path / "run"
    names = {path.name for path in run.iterdir()}
    assert {"config.yaml", "hierarchy.yaml", "last.pt", "best.pt", "metrics.jsonl", "loss.png", "miou.png",
            "samples.png", "tb"} <= names
    assert not [name for name in names if name.endswith(".tmp")]
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert load_hierarchy(run / "hierarchy.yaml") == load_hierarchy("lip")

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records if r["type"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["iter"] for r in records if r["type"] == "eval"] == [3, 6]
    assert set(records[-1]["miou"]) == {"person", "region", "part"}

    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint["iteration"] == 6
    assert checkpoint["model_config"] == {"backbone": "light", "head": "psp", "stacked": True, "skips": None,
                                          "output_stride": 8, "module_width": 64}
    assert {"optimizer", "scheduler", "scaler", "rng", "config", "metrics"} <= set(checkpoint)
    model, hierarchy, _ = model_from_checkpoint(run / "last.pt")  # self-describing: nothing else needed
    assert hierarchy == load_hierarchy("lip") and len(model(torch.zeros(1, 3, 32, 32))) == 3

    output = capsys.readouterr().out
    assert "level 2 (part, 20 classes)" in output and "consistency" in output and "iter 6/6" in output


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    assert train(tmp_path / "straight") == 0

    original_step = Trainer.train_step

    def interrupted_step(self, batch):
        if self.iteration == 3:  # just after the checkpoint of iteration 3
            raise KeyboardInterrupt
        return original_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "resumed", "workers", "1")  # worker processes do not change the data
    assert load_checkpoint(tmp_path / "resumed" / "last.pt")["iteration"] == 3
    monkeypatch.setattr(Trainer, "train_step", original_step)
    assert train(tmp_path / "resumed", "--resume", "workers", "1") == 0

    straight = load_checkpoint(tmp_path / "straight" / "last.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pt")
    assert resumed["iteration"] == 6
    for name, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name

    def losses(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [(r["iter"], r["losses"]) for r in map(json.loads, lines) if r["type"] == "train"]

    assert losses("resumed") == losses("straight")  # history trimmed to the checkpoint, then continued


def test_data_order_depends_on_seed_and_epoch_only():
    dataset = SeededSamples(build_dataset("synthetic", transform="train", size=32, n=6), seed=3)

    def epoch(epoch, replicas=1, rank=0, skip=0):
        sampler = EpochSampler(dataset, replicas, rank, seed=3)
        sampler.set_epoch(epoch)
        sampler.skip = skip
        return [(key, dataset[key]["label"]) for key in sampler]

    first = epoch(0)
    assert [key for key, _ in first] == [key for key, _ in epoch(0)]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, epoch(0)))  # same crops and flips
    assert [key for key, _ in epoch(1)] != [key for key, _ in first]
    assert [key for key, _ in epoch(0, skip=4)] == [key for key, _ in first][4:]
    shards = epoch(0, 2, 0) + epoch(0, 2, 1)
    assert sorted(key for key, _ in shards) == sorted(key for key, _ in first)


def test_poly_schedule_with_warmup():
    schedule = PolyWarmup(max_iters=100, warmup_iters=10, warmup_factor=0.1, power=1.0)
    assert schedule(0) == pytest.approx(0.1)
    assert schedule(5) == pytest.approx(0.55 * 0.95)
    assert schedule(10) == pytest.approx(0.9)
    assert schedule(100) == 0.0


def test_nan_loss_stops_naming_iteration_and_level(tmp_path, monkeypatch, capsys):
    from hierparse.losses import HierarchicalLoss

    original_forward = HierarchicalLoss.forward
    calls = []

    def forward(self, logits, labels):
        losses = original_forward(self, logits, labels)
        calls.append(1)
        return losses * torch.tensor([1.0, float("nan"), 1.0]) if len(calls) == 5 else losses

    monkeypatch.setattr(HierarchicalLoss, "forward", forward)
    run = tmp_path / "run"
    assert train(run) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith("hierparse: error: ")
    assert "level 1 (region) is nan at iteration 5" in error
    assert f"{run / 'last.pt'} (iteration 3) is intact" in error
    assert load_checkpoint(run / "last.pt")["iteration"] == 3


class EmptyDataset(torch.utils.data.Dataset):
    """A registered dataset whose split holds nothing."""

    hierarchy, transform = load_hierarchy("lip"), None

    def __len__(self):
        return 0


@pytest.mark.parametrize("extra, message", [
    (["nonsense_key", "1"], "unknown config key 'nonsense_key'"),
    (["--resume"], "cannot resume: "),
    (["dataset", "lip", "root", "{empty}"], "empty split 'train'"),
    (["dataset", "nothing"], "dataset 'nothing' split 'train' under None has no samples"),
    (["dataset", "lip", "root", "{missing}"], "is not a folder"),
    (["synthetic_train_images", "1"], "fewer than one batch"),
    (["out", "{file}/run"], "is not writable"),
    (["hierarchy", "helen"], "synthetic data uses LIP raw ids"),
    (["amp", "fp16", "device", "cpu"], "amp fp16 needs a GPU"),
    (["backbone", "resnet7"], "unknown backbone 'resnet7'"),
    (["level_weights", "[1, 2]"], "got 2 level weights for the 3 levels"),
    (["stacked", "false", "skips", "[layer2, layer1]"], "skips needs one entry per module of the flat model (1)"),
    (["module_width", "1"], "config key 'module_width' must be at least 2, got 1"),
    (["train_scale", "[2, 1]"], "config key 'train_scale' must be [low, high] with 0 < low <= high"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch, extra, message):
    (tmp_path / "empty" / "val_images").mkdir(parents=True)
    (tmp_path / "empty" / "val_segmentations").mkdir()
    (tmp_path / "empty" / "train_images").mkdir()
    (tmp_path / "empty" / "train_segmentations").mkdir()
    (tmp_path / "file").write_text("")
    places = {"empty": tmp_path / "empty", "missing": tmp_path / "missing", "file": tmp_path / "file"}
    monkeypatch.setitem(DATASETS, "nothing", lambda root, split, hierarchy, size: EmptyDataset())
    extra = [token.format(**places) for token in extra]
    out = tmp_path / "run"
    assert main(["train", *TINY, "out", str(out), *extra]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("hierparse: error: ") and "\n" not in error and message in error
    assert not out.exists()


def test_module_entry_point_one_line_error_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hierparse.train", "max_iters", "1", "learning_rate", "0.1"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("hierparse: error: unknown config key 'learning_rate' in the command line")
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "runs").exists()


TORCHRUN_SCRIPT = """
import sys, torch, torch.distributed as dist
from hierparse import config
from hierparse.train import train
trainer = train(config.resolve(None, sys.argv[2:]))
torch.save(dict(trainer.model.named_parameters()), f"{sys.argv[1]}/rank{dist.get_rank()}.pt")
dist.destroy_process_group()
"""


def test_torchrun_two_processes_end_with_identical_weights(tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(TORCHRUN_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(tmp_path), *TINY, "max_iters", "4", "eval_interval", "2", "synthetic_val_images", "5",
         "out", str(tmp_path / "run")],
        capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1))
    assert rank0.keys() == rank1.keys()
    assert all(torch.equal(rank0[name], rank1[name]) for name in rank0)
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    assert all(torch.equal(checkpoint["model"][name], rank0[name]) for name in rank0)
    assert len(checkpoint["rng"]) == 2  # each process's random state, for an exact resume
    assert len(list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))) == 1  # only rank 0 writes
    assert result.stdout.count("iter 4/4") == 1

    # the evaluation summed over two uneven shards equals one process scoring all 5 images
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--json", str(tmp_path / "e.json")]) == 0
    alone = json.loads((tmp_path / "e.json").read_text())["metrics"]
    assert [e["miou"] for e in alone["levels"]] == [e["miou"] for e in checkpoint["metrics"]["levels"]]
    assert alone["consistency"] == checkpoint["metrics"]["consistency"]


def test_an_invalid_hierarchy_prints_one_line_per_problem(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nlevels: [coarse, fine]\nclasses:\n  - name: a\n    children:\n"
                   "      - {name: a1}\n      - {name: a2, ids: [300]}\n")
    assert main(["train", "hierarchy", str(bad), "out", str(tmp_path / "run")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith(f"hierparse: error: {bad}: ") for line in lines)
    assert "a1" in lines[0] and "300" in lines[1]
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- speed options
def trained(tmp_path, name: str, *extra: str) -> Trainer:
    return run_training(configuration.resolve(None, [*TINY, "max_iters", "3", "eval_interval", "3",
                                                     "out", str(tmp_path / name), *extra]))


def final_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in trainer.model.state_dict().items()}


FLOAT32 = ["amp", "null", "channels_last", "false"]


@pytest.mark.parametrize("options", [["amp", "bf16", "channels_last", "false"], ["amp", "null", "channels_last", "true"],
                                     ["amp", "bf16", "channels_last", "true"]], ids=" ".join)
def test_speed_options_train_and_repeat_bit_for_bit(tmp_path, options, capsys):
    """bfloat16 autocast and channels_last on the CPU: they train, they are what the run uses, and
    two runs with the same seed end with the same bits (determinism holds, as in float32)."""
    first, second = trained(tmp_path, "a", *options), trained(tmp_path, "b", *options)
    assert "iter 3/3" in capsys.readouterr().out
    conv = first.model.backbone.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == ("true" in options)
    assert first.amp == ("bf16" if "bf16" in options else None)
    a, b = final_weights(first), final_weights(second)
    assert all(torch.equal(a[name], b[name]) for name in a)
    if "bf16" in options:  # and bfloat16 changed the computation: not the float32 result
        plain = final_weights(trained(tmp_path, "plain", *FLOAT32))
        assert not all(torch.equal(a[name], plain[name]) for name in a)


def test_resume_in_another_precision_says_so(tmp_path, capsys):
    trained(tmp_path, "run", "amp", "bf16")
    assert load_checkpoint(tmp_path / "run" / "last.pt")["amp"] == "bf16"
    assert train(tmp_path / "run", "--resume", "max_iters", "4", *FLOAT32) == 0
    assert "note: iterations 1-3 ran in bf16, the rest run in float32 (amp null on this device)" in \
        capsys.readouterr().out


def test_bf16_autocast_runs_the_model_in_bfloat16(tmp_path):
    trainer = Trainer(configuration.resolve(None, [*TINY, "out", str(tmp_path / "run"), "amp", "bf16"]))
    dtypes = set()
    for module in trainer.model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(lambda module, args, output: dtypes.add(output.dtype))
    losses = trainer.train_step(next(iter(trainer.train_loader)))
    trainer.close()
    assert dtypes == {torch.bfloat16} and losses.dtype == torch.float32  # the loss stays float32


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(True, False, "bf16"), (False, True, "bf16"),
                                                        (False, False, None)])
def test_amp_auto_uses_bf16_only_where_the_cpu_has_it(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert resolve_amp("auto", torch.device("cpu")) == expected
    assert resolve_amp("bf16", torch.device("cpu")) == "bf16"  # asked for by name: always
    assert resolve_amp(None, torch.device("cpu")) is None


@pytest.mark.slow
def test_compiled_model_trains_like_the_eager_one(tmp_path):
    """``compile: true``: the same losses as eager (float32 rounding), and the checkpoint holds the
    plain model's parameter names, so evaluate/predict load it without compiling."""
    eager = trained(tmp_path, "eager", *FLOAT32)
    compiled = trained(tmp_path, "compiled", "compile", "true", *FLOAT32)
    losses = [[r["loss"] for r in t.history if r["type"] == "train"] for t in (eager, compiled)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert compiled.network is not compiled.model
    model, _, _ = model_from_checkpoint(tmp_path / "compiled" / "last.pt")
    assert model.state_dict().keys() == eager.model.state_dict().keys()


@pytest.mark.parametrize("extra", [["stacked", "false", "skips", "[layer1]"], ["module_width", "16"]],
                         ids=" ".join)
def test_model_options_reach_the_checkpoint(tmp_path, extra):
    trainer = trained(tmp_path, "run", *extra)
    checkpoint = load_checkpoint(tmp_path / "run" / "last.pt")
    model, _, _ = model_from_checkpoint(tmp_path / "run" / "last.pt")
    assert model.skips == trainer.model.skips and model.module_width == trainer.model.module_width
    assert checkpoint["model_config"]["module_width"] == trainer.config["module_width"]


def test_checkpoint_of_the_older_format_is_a_clear_error(tmp_path, capsys):
    torch.save({"format": "hierparse-checkpoint-v1"}, tmp_path / "old.pt")
    assert main(["evaluate", "--checkpoint", str(tmp_path / "old.pt")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("hierparse: error: checkpoint ") and "older format" in error and "\n" not in error


def test_training_with_hard_pixel_mining(tmp_path):
    trainer = trained(tmp_path, "run", "ohem", "{threshold: 0.7, min_kept: 16}")
    assert trainer.loss.ohem.threshold == 0.7 and trainer.loss.ohem.min_kept == 16
    losses = [record["loss"] for record in trainer.history if record["type"] == "train"]
    assert len(losses) == 3 and all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["ohem"] == {"threshold": 0.7, "min_kept": 16}
