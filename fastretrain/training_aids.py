"""Training aids any method can use, each a strategy switched on by one flag (docs/training_aids.md):

- `--patience N` (`EarlyStopping`): end the run once validation accuracy has not improved for N epochs.
- `--ema DECAY` (`WeightEMA`): an exponential moving average of the weights (timm's `ModelEmaV3`), updated after
  every optimizer step; evaluation, `model_best` and `model_final` use the averaged weights.
- `--mixup ALPHA` / `--cutmix ALPHA` (`MixupCutmix`): mixup (Zhang et al., ICLR 2018) and CutMix (Yun et al.,
  ICCV 2019) of the training batches by timm's `Mixup`, trained on the mixed soft targets.

None of them is a method of its own: they change no optimisation setting and compose with the methods, except
where a method cannot carry them (`check_composition`, refused before data and model load). Their effect on
accuracy has not been measured yet.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import distributed as dist
from .engine import StopFit, Strategy
from .errors import FastRetrainError, FastRetrainWarning

# what a method does that an aid cannot follow: (aid flag, method) -> why
INCOMPATIBLE = {
    ("--ema", "kernel-rescale"): "it changes the kernels' shapes mid-run, which an average of weights cannot follow",
    ("--cutmix", "linear-probe"): "it trains on cached feature vectors, which have no image area to cut and paste",
}


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


# ---------------------------------------------------------------------------------------------- weight EMA
@dataclass
class WeightEMA(Strategy):
    """An exponential moving average of the model's state (parameters and floating-point buffers, i.e. batch-norm
    statistics too; integer buffers are copied), by timm's `ModelEmaV3`.

    The average starts as the weights at the first training step (after any set-up such as a ridge head) and after
    every optimizer step becomes `decay * average + (1 - decay) * weights`. After each epoch's training pass the
    average is swapped into the model, so the engine's validation and test evaluations, the best-epoch choice,
    `model_best`, the checkpoint's `model` and (after the run) `model_final` are the averaged weights; the trained
    weights are held here and swapped back before the next epoch (by `WeightEMARestore`, which runs before every
    other strategy's before_epoch, while this one runs after every other strategy's after_step and after_epoch).
    Training loss and accuracy are those of the trained weights. Resume: the checkpoint holds the averaged weights
    as the model and the trained ones in this strategy's state.
    """

    order = 9_000  # after every other after_step (the step's weights are final) and after_epoch (e.g. a refit head)
    decay: float = 0.999  # weight of the old average at each step: it averages over about 1 / (1 - decay) steps

    def __post_init__(self) -> None:
        _check(0 < self.decay < 1, f"--ema must be in (0, 1), e.g. 0.999; got {self.decay}")
        self._ema = None  # timm.utils.ModelEmaV3 holding a copy of the model (None: before the first step)
        self.swapped = False  # the model holds the average, and the copy the trained weights
        self.updates = 0  # optimizer steps averaged in
        self._pending: dict[str, Any] | None = None  # a checkpoint's state, applied at the next before_epoch

    def before_fit(self, engine) -> None:
        steps = engine.cfg.epochs * engine.num_batches()
        span = 1 / (1 - self.decay)
        if engine.budget is None and steps < span:
            better = f"a smaller decay (such as {1 - 10 / steps:.3g})" if steps >= 20 else "a smaller decay"
            warnings.warn(f"--ema {self.decay} averages over about {span:.0f} steps but this run plans {steps}: the "
                          f"average will still weigh the starting weights by {self.decay ** steps:.0%} at the end; "
                          f"{better} follows training more closely", FastRetrainWarning, stacklevel=2)

    def before_batch(self, engine) -> None:
        if self._ema is None:  # the first step: the average starts as the weights it starts from
            from timm.utils import ModelEmaV3

            self._ema = ModelEmaV3(engine.model, decay=self.decay)

    def after_step(self, engine) -> None:
        self._ema.update(engine.model)
        self.updates += 1

    def after_epoch(self, engine) -> None:
        if self._ema is not None and not self.swapped:
            self._swap(engine)

    def after_eval(self, engine) -> None:
        engine.log["ema_evaluated"] = self.swapped  # False only when a hook stopped the epoch before after_epoch
        engine.log["ema_updates"] = self.updates

    def after_fit(self, engine) -> None:
        if self._ema is not None and not self.swapped:  # model_final (saved after this) is the average
            self._swap(engine)

    def restore_live(self, engine) -> None:
        """Before an epoch: apply a resumed checkpoint's state, and put the trained weights back into the model."""
        if self._pending is not None:
            from timm.utils import ModelEmaV3

            state, self._pending = self._pending, None
            self._ema = ModelEmaV3(engine.model, decay=self.decay)
            self._ema.module.load_state_dict(state["held"])
            self.swapped, self.updates = bool(state["swapped"]), int(state["updates"])
        if self.swapped:
            self._swap(engine)

    @torch.no_grad()
    def _swap(self, engine) -> None:
        """Exchange, in place, the model's state with the copy's (the optimizer keeps its parameter objects)."""
        held = self._ema.module.state_dict()
        for name, mine in engine.model.state_dict().items():
            other = held[name]
            if mine.shape != other.shape:
                raise FastRetrainError(f"--ema: {name} changed shape during training ({tuple(other.shape)} -> "
                                       f"{tuple(mine.shape)}); the average cannot follow it")
            tmp = mine.clone()
            mine.copy_(other)
            other.copy_(tmp)
        self.swapped = not self.swapped

    def state_dict(self) -> dict[str, Any]:
        if self._ema is None:
            return dict(self._pending or {})
        held = {k: v.detach().cpu().clone() for k, v in self._ema.module.state_dict().items()}
        return {"held": held, "swapped": self.swapped, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = dict(state) if state else None

    def averaged_state(self, engine) -> dict[str, torch.Tensor]:
        """The averaged weights now, whichever side of the swap they are on (for tests and tools)."""
        source = engine.model if self.swapped else self._ema.module
        return {k: v.detach().clone() for k, v in source.state_dict().items()}


class WeightEMARestore(Strategy):
    """The half of `WeightEMA` that must run before every other strategy's before_epoch: it puts the trained
    weights back into the model, so no other strategy sees or changes the average by mistake."""

    order = -1_000

    def __init__(self, ema: WeightEMA):
        self.ema = ema

    def before_epoch(self, engine) -> None:
        self.ema.restore_live(engine)


# ---------------------------------------------------------------------------------------------- mixup / cutmix
@dataclass
class MixupCutmix(Strategy):
    """Mix each training batch with its reverse (timm's `Mixup`, one mixing weight λ ~ Beta(α, α) per batch) and
    train on the mixed soft targets: mixup blends whole images, CutMix pastes a box of the partner image (λ is then
    corrected to the pasted area); with both, each batch uses one of them with probability 1/2.

    The loss is the engine's own `loss_fn` (its class weights and label smoothing included) on the soft targets;
    the training accuracy in the metrics is measured against each image's own original label. In a batch of odd
    size the last image is left unmixed. Draws come from numpy's global generator, which the engine seeds per epoch:
    reproducible and resumable.
    """

    order = 100  # after every method's before_batch that changes the labels (disturblabel)
    mixup: float = 0.0  # α of mixup (0: off)
    cutmix: float = 0.0  # α of CutMix (0: off)

    def __post_init__(self) -> None:
        _check(self.mixup >= 0, f"--mixup must be >= 0 (0: off), got {self.mixup}")
        _check(self.cutmix >= 0, f"--cutmix must be >= 0 (0: off), got {self.cutmix}")
        _check(self.mixup > 0 or self.cutmix > 0, "MixupCutmix needs --mixup or --cutmix > 0")
        self._mix = None
        self.targets: torch.Tensor | None = None  # this batch's soft targets (B, classes), rows summing to 1

    def before_fit(self, engine) -> None:
        from timm.data import Mixup

        # label smoothing stays with the engine's loss_fn (applied to the soft targets there), not here
        self._mix = Mixup(mixup_alpha=self.mixup, cutmix_alpha=self.cutmix, label_smoothing=0.0,
                          num_classes=engine.data.num_classes, mode="batch")

    def before_batch(self, engine) -> None:
        x, y = engine.x, engine.y
        if self.cutmix > 0 and x.ndim != 4:
            raise FastRetrainError(f"--cutmix needs image batches (B, C, H, W); this run trains on {x.ndim}-d inputs")
        n = len(y) - len(y) % 2  # timm mixes pairs (i, n-1-i): an even count
        targets = nn.functional.one_hot(y, engine.data.num_classes).float()
        if n < 2:
            self.targets = targets
            return
        x = x.clone()  # the batch may be a view of cached data
        part, soft = self._mix(x[:n], y[:n])
        x[:n] = part
        targets[:n] = soft.to(targets.dtype)
        engine.x, self.targets = x, targets

    def after_loss(self, engine) -> None:
        with engine.autocast():
            engine.loss = engine.loss_fn(engine.logits.float(), self.targets)


# ---------------------------------------------------------------------------------------------- wiring
def check_composition(cfg, methods: list[str]) -> None:
    """Refuse, in one line, an aid that a method of `methods` cannot carry."""
    given = {"--ema": cfg.ema is not None, "--cutmix": bool(cfg.cutmix)}
    for (flag, method), why in INCOMPATIBLE.items():
        if given[flag] and method in methods:
            raise FastRetrainError(f"{flag} cannot be used with {method}: {why}")


def aid_strategies(cfg, methods: list[str] | None = None) -> list[Strategy]:
    """The strategies of the aids `cfg` switches on (none by default), checked against the run's `methods`."""
    check_composition(cfg, methods or [])
    out: list[Strategy] = []
    if cfg.patience is not None:
        out.append(EarlyStopping(cfg.patience))
    if cfg.ema is not None:
        ema = WeightEMA(cfg.ema)
        out += [ema, WeightEMARestore(ema)]
    if cfg.mixup or cfg.cutmix:
        out.append(MixupCutmix(cfg.mixup, cfg.cutmix))
    return out
