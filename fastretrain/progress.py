"""What a run shows while it trains: a tqdm bar per epoch (on a terminal only) and one line per finished epoch.

Both only on the main process and with `cfg.progress`. The bar counts batches (skipped ones too) and shows the
running training loss and accuracy, images per second and, under a budget, the training time left.
"""
from __future__ import annotations

import sys
import time

import torch
from tqdm.auto import tqdm

from . import distributed as dist


class EpochBar:
    """The current epoch's bar; `t0` is the perf_counter when the epoch's clock started."""

    def __init__(self, engine, t0: float):
        self.engine, self.t0 = engine, t0
        shown = engine.cfg.progress and dist.is_main() and sys.stderr.isatty()
        total = min(engine.num_batches(), engine.max_batches or engine.num_batches())
        self.bar = tqdm(total=total, desc=f"epoch {engine.epoch + 1}/{engine.cfg.epochs}", unit="batch",
                        leave=False, dynamic_ncols=True, disable=not shown)

    def advance(self) -> None:
        self.bar.update(1)

    def show(self, sums: torch.Tensor) -> None:
        """Every 10th batch: the running (summed loss, correct, count) of this rank's epoch so far."""
        e = self.engine
        if e.iter % 10 or self.bar.disable:
            return
        loss, correct, count = sums.tolist()
        speed = count * dist.world() / (time.perf_counter() - self.t0)
        left = {} if e.budget is None else {"left": f"{e.budget - e.elapsed():.0f}s"}
        self.bar.set_postfix(loss=f"{loss / count:.3f}", acc=f"{correct / count:.3f}", img_s=f"{speed:.0f}", **left)

    def close(self) -> None:
        self.bar.close()


def epoch_line(engine) -> str:
    """The finished epoch in one line: its losses and accuracies, seconds and speed."""
    log = engine.log
    accs = "".join(f"{k} {log[k]:.4f}  " for k in ("train_loss", "train_acc", "val_acc", "test_acc") if k in log)
    return (f"epoch {engine.epoch + 1}/{engine.cfg.epochs}  {accs}{log['epoch_seconds']:.1f}s  "
            f"{log['images_per_second']:.0f} img/s")


def report_epoch(engine) -> None:
    """Print the finished epoch's line (above the bar, if one is open)."""
    if dist.is_main() and engine.cfg.progress:
        tqdm.write(epoch_line(engine))
