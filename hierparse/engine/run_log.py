"""What a training run reports as it goes: ``metrics.jsonl``, TensorBoard, and a tqdm bar on a
terminal or plain lines in a log file. Only the main process (rank 0) reports; elsewhere every
method does nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hierparse.engine.io import to_json, write_text


class RunLog:
    """The run's history (one record per log window and per evaluation) and where it is shown."""

    def __init__(self, out: Path, main: bool, max_iters: int):
        self.out, self.main, self.max_iters = out, main, max_iters
        self.history: list[dict[str, Any]] = []
        self.events = None
        self.progress = None

    def restore(self, iteration: int) -> None:
        """Keep the records up to ``iteration`` (a resumed run rewrites what came after its checkpoint)."""
        path = self.out / "metrics.jsonl"
        if not self.main or not path.exists():
            return
        records = [json.loads(line) for line in path.read_text().splitlines() if line]
        self.history = [record for record in records if record["iter"] <= iteration]
        write_text(path, "".join(to_json(record) + "\n" for record in self.history))

    def open_events(self, iteration: int, resumed: bool) -> None:
        """Start TensorBoard, dropping the events after ``iteration`` when resumed."""
        if not self.main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.events = SummaryWriter(str(self.out / "tb"), purge_step=iteration if resumed else None)

    def start_progress(self, iteration: int) -> None:
        """A tqdm bar from ``iteration`` to the end, on a terminal only."""
        if self.main and sys.stderr.isatty():
            from tqdm import tqdm

            self.progress = tqdm(total=self.max_iters, initial=iteration, desc="train", dynamic_ncols=True)

    def print(self, message: str) -> None:
        """A line on rank 0 (through the progress bar when there is one)."""
        if not self.main:
            return
        if self.progress is not None:
            self.progress.write(message)
        else:
            print(message, flush=True)

    def step(self) -> None:
        if self.progress is not None:
            self.progress.update(1)

    def training(self, iteration: int, losses: dict[str, float], lr: float, images_per_s: float) -> None:
        """One log window: mean per-level losses, learning rate and speed."""
        if not self.main:
            return
        record = {"type": "train", "iter": iteration, "loss": sum(losses.values()), "losses": losses, "lr": lr,
                  "images_per_s": images_per_s}
        self._record(record)
        self.events.add_scalar("train/loss", record["loss"], iteration)
        for name, value in losses.items():
            self.events.add_scalar(f"train/loss_{name}", value, iteration)
        self.events.add_scalar("train/lr", lr, iteration)
        self.events.add_scalar("train/images_per_s", images_per_s, iteration)
        if self.progress is not None:
            self.progress.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{images_per_s:.1f}")
        else:
            per_level = " ".join(f"{name} {value:.3f}" for name, value in losses.items())
            self.print(f"iter {iteration}/{self.max_iters}  loss {record['loss']:.3f} ({per_level})  "
                       f"lr {lr:.2e}  {images_per_s:.1f} img/s")

    def evaluation(self, iteration: int, result: dict[str, Any], improved: bool) -> None:
        """One evaluation: every level's mIoU (own and merged), pixel accuracy and consistency."""
        if not self.main:
            return
        record = {"type": "eval", "iter": iteration,
                  "miou": {entry["name"]: entry["miou"] for entry in result["levels"]},
                  "merged_miou": {entry["name"]: entry["miou"] for entry in result["merged"]},
                  "pixel_acc": {entry["name"]: entry["pixel_acc"] for entry in result["levels"]},
                  "consistency": result["consistency"]}
        self._record(record)
        for group in ("miou", "merged_miou", "pixel_acc"):
            for name, value in record[group].items():
                self.events.add_scalar(f"val/{group}_{name}", value, iteration)
        self.events.add_scalar("val/consistency", result["consistency"], iteration)
        self.events.flush()
        modules = "  ".join(f"{name} {100 * value:.1f}" for name, value in record["miou"].items())
        self.print(f"iter {iteration}: val mIoU {modules}  consistency {100 * result['consistency']:.1f}%"
                   f"{'  (best)' if improved else ''}")

    def _record(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        with open(self.out / "metrics.jsonl", "a") as stream:
            stream.write(to_json(record) + "\n")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        if self.events is not None:
            self.events.close()
            self.events = None
