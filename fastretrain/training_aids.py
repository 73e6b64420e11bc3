"""Training aids any method can use, each a strategy switched on by one flag (docs/training_aids.md):

- `--patience N` (`EarlyStopping`): end the run once validation accuracy has not improved for N epochs.

None of them is a method of its own: they change no optimisation setting and compose with the methods.
Their effect on accuracy has not been measured yet.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import distributed as dist
from .engine import StopFit, Strategy
from .errors import FastRetrainError


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise FastRetrainError(message)


# ---------------------------------------------------------------------------------------------- early stopping
def epochs_without_improvement(accs: list[float]) -> int:
    """How many of the last values of `accs` (validation accuracies, oldest first) came after the best one
    without beating it (a tie is no improvement)."""
    best, bad = None, 0
    for a in accs:
        if best is None or a > best:
            best, bad = a, 0
        else:
            bad += 1
    return bad


@dataclass
class EarlyStopping(Strategy):
    """End the run once validation accuracy has not improved for `patience` epochs in a row.

    Reads only `val_acc` (never test). Epochs a method keeps out of the best-epoch choice (`engine.best_eligible`
    False, e.g. kernel-rescale's low-resolution phase) neither improve nor count; a model offered before epoch 1
    (a ridge head, epoch 0) is the first value to beat. Stateless: the count comes from `engine.history`, so a
    resumed run continues it exactly. The stopped epoch is evaluated and saved as every epoch is.
    """

    order = 9_000  # after every method's after_eval (one may mark its epoch ineligible)
    patience: int = 3  # epochs without a higher validation accuracy before the run ends

    def __post_init__(self) -> None:
        _check(isinstance(self.patience, int) and self.patience >= 1, f"--patience must be >= 1, got {self.patience}")

    def before_fit(self, engine) -> None:
        if engine.val_data is None:
            raise FastRetrainError("--patience reads validation accuracy, and this run has no validation split "
                                   "(give --val-fraction > 0)")

    def after_eval(self, engine) -> None:
        if "val_acc" not in engine.log:
            return
        accs = [h["val_acc"] for h in engine.history if "val_acc" in h and h.get("eligible", True)]
        if engine.best_eligible:
            accs.append(engine.log["val_acc"])
        bad = epochs_without_improvement(accs)
        engine.log["epochs_without_improvement"] = bad
        if bad >= self.patience:
            engine.log["early_stopped"] = True
            if engine.cfg.progress and dist.is_main():
                print(f"early stopping after epoch {engine.epoch + 1}: validation accuracy has not improved for "
                      f"{bad} epochs (--patience {self.patience}); best {max(accs):.4f}")
            raise StopFit


# ---------------------------------------------------------------------------------------------- wiring
def aid_strategies(cfg, methods: list[str] | None = None) -> list[Strategy]:
    """The strategies of the aids `cfg` switches on (none by default)."""
    out: list[Strategy] = []
    if cfg.patience is not None:
        out.append(EarlyStopping(cfg.patience))
    return out
