"""What a run shows while it trains: a tqdm bar per epoch (on a terminal only) and one line per finished epoch.

`Progress` is a built-in strategy (the engine installs it, docs/strategies.md "Built-in strategies": swap or drop it
by its name, "progress"). Both only on the main process and with `cfg.progress`. The bar counts batches (skipped
ones too) and shows the running training loss and accuracy, images per second and, under a budget, the training
time left.
"""
from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

from . import distributed as dist
from .events import Strategy


class Progress(Strategy):
    """The epoch's bar (before_epoch to after_epoch) and the finished epoch's line (after_log)."""

    order = 10_000  # after every method's hooks (ahead of the run folder, which is given after it)
    name = "progress"

    def __init__(self):
        self.bar = None
        self.t0 = 0.0  # perf_counter when the epoch's bar opened

    def before_epoch(self, engine) -> None:
        self._close()
        self.t0 = time.perf_counter()
        shown = engine.cfg.progress and dist.is_main() and sys.stderr.isatty()
        total = min(engine.num_batches(), engine.max_batches or engine.num_batches())
        self.bar = tqdm(total=total, desc=f"epoch {engine.epoch + 1}/{engine.cfg.epochs}", unit="batch",
                        leave=False, dynamic_ncols=True, disable=not shown)

    def after_batch(self, engine) -> None:
        """Count the batch; every 10th batch show the running (summed loss, correct, count) of this rank's epoch."""
        if self.bar is None:
            return
        self.bar.update(1)
        if engine.iter % 10 or self.bar.disable:
            return
        loss, correct, count = engine.sums.tolist()
        if not count:  # only skipped batches so far
            return
        speed = count * dist.world() / (time.perf_counter() - self.t0)
        left = {} if engine.budget is None else {"left": f"{engine.budget - engine.elapsed():.0f}s"}
        self.bar.set_postfix(loss=f"{loss / count:.3f}", acc=f"{correct / count:.3f}", img_s=f"{speed:.0f}", **left)

    def after_epoch(self, engine) -> None:
        self._close()

    def after_eval(self, engine) -> None:
        self._close()  # a StopFit ended the training pass before after_epoch

    def after_log(self, engine) -> None:
        """Print the finished epoch's line (not for a model offered as epoch 0)."""
        if engine.history[-1]["epoch"] > 0 and dist.is_main() and engine.cfg.progress:
            tqdm.write(epoch_line(engine))

    def after_fit(self, engine) -> None:
        self._close()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def epoch_line(engine) -> str:
    """The finished epoch in one line: its losses and accuracies, seconds and speed."""
    log = engine.log
    accs = "".join(f"{k} {log[k]:.4f}  " for k in ("train_loss", "train_acc", "val_acc", "test_acc") if k in log)
    return (f"epoch {engine.epoch + 1}/{engine.cfg.epochs}  {accs}{log['epoch_seconds']:.1f}s  "
            f"{log['images_per_second']:.0f} img/s")
