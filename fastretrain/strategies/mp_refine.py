"""MP / ridge refinement of the FC layer(s) after SGD epochs (stage 2 of fast retraining; Zhang, Yang et al.,
"Deep Networks with Fast Retraining", arXiv 2008.07387; Yang et al., TPAMI 2019; docs/fast_retrain.md), with a
closed-form ridge head before the first epoch and a schedule that refines only while it pays (issue 13).
Alone, `mp-refine` is "SGD + refinement" (≈ Yang 2019 with `init_head=False, until=None`).

Refinement, after a due SGD epoch: features H of every training image (eval mode, eval transform), ±1 one-hot
targets T, residual E = T − (H Wᵀ + b); ΔWᵀ = (HᵀH + I/C)⁻¹HᵀE by the streaming solver of `fastretrain.ridge`,
W ← W + λ·ΔW, bias untouched; a head of several FC layers is refined last to first, the error pulled back through
each refined layer. The maths (and the rule for the modules between FC layers) is in `fastretrain.refine`; a
module the error cannot be pulled back through exactly stops the refinement above it, with one warning.

How C is chosen (`C`): "val" (default) solves for every C of the grid from one eigendecomposition and keeps
the one whose result scores best on the validation split (accuracy, ties to the lower squared error, then to
the smaller C), at the cost of one forward pass over the validation images (training time). GCV ("gcv") uses
the training statistics alone; it is the fallback without a validation split and for heads of several FC
layers. GCV is unreliable when features outnumber images (d ≥ n): on Lite0's 1,280 features of 900
Fashion-MNIST images it chose C = 1e4, a near-interpolating head at 0.687 test accuracy, where C chosen on
validation (1e-3) gives 0.84.

The ridge head's logit scale (`init_scale`): a ridge fit to ±1 targets gives logits of order 1, right in
argmax but flat for cross-entropy, so the first SGD steps see large gradients on correctly classified images
and pull the pretrained features (and the head) away. With "val" the fitted W, b are multiplied by
the factor of `SCALE_GRID` with the lowest validation cross-entropy (1 without a validation split); a number
fixes it. The default is 1 (the plain probe): in a pilot (Fashion-MNIST 96 px, Lite0, seed 0) the chosen
scale (4) did not keep SGD from pulling the head down (0.841 before epoch 1, 0.497 after it, against 0.569
unscaled); what does is the BN layers re-estimating their statistics on the new images (random-freeze.bn_stats).
`head_bn="target"` fits the head on those statistics instead: its feature pass runs the BN layers in train mode
(batch statistics) and leaves their running statistics at the average over the training images.

When it runs (`init_head`, `until`, `every`, `min_gain`):
- `init_head` (default on): before the first SGD epoch, one feature pass over the pretrained backbone (eval
  mode, eval transform) and the ridge linear probe [W b] = argmin ‖HWᵀ + 1bᵀ − T‖² + ‖W‖²/C (bias not
  penalised; C chosen as below unless fixed) is written into the last FC layer, so SGD starts from a fitted head (the
  LP-then-FT idea). It runs inside epoch 1's clock (training time, logged as `init_head_seconds`).
- a refinement follows epoch e (1-based) when e ≤ `until` (default 2; None: no limit), e is a multiple of
  `every`, and no earlier refinement stopped the schedule: with `min_gain` set, the validation accuracy
  is measured before and after each refinement (`refine_val_gain`; both evaluations count as training
  time) and refining stops for the rest of the run once a gain is below `min_gain`.

`features="online"` skips the extra pass: it sums the detached features entering the last FC layer during
the SGD epoch's own forward passes (train mode, augmented images), from which `refine.online_stats` gives the
residual statistics exactly for the weights at the end of the epoch. Only the last FC layer is refined in that mode.

Logged per epoch: `refine_seconds` (wall time of the refinement, also inside `wall_seconds`; in online
mode it includes the per-batch accumulation), `test_acc_before_refine` and, with a validation split,
`val_acc_before_refine` (evaluated off the clock, for reporting only; with `min_gain` the latter is the
schedule's own timed measurement), `refine_C` (the C used for the last layer), `refine_skipped` when a guard fired,
`refine_val_gain` with `min_gain`; in epoch 1 with `init_head`: `init_head_seconds`, `init_head_C`,
`init_head_scale`. The ridge head is a model the run can return: it is offered to the engine as epoch 0
(`engine.offer_model`: scored on validation off the clock, logged as its own metrics line at the time it was
ready, saved as model_best when validation prefers it), so the run never returns a model that validation ranks
below its own head.
"""
from __future__ import annotations

import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import distributed as dist
from .. import ridge
from ..engine import Strategy
from ..errors import FastRetrainError
from ..methods import check_options, register_method
from ..models import FeatureTap, final_linears, reestimated_batchnorm
from ..refine import SCALE_GRID, Validation, between, collect, online_stats, passable, recursive_betas  # noqa: F401
from ..refine import refine_layers, ridge_head, targets, with_ones

CHOOSERS = ("val", "gcv")  # how C is chosen when it is not fixed
FEATURE_BATCH = 256  # images per batch of the feature passes: no autograd, so far larger than a training batch


@dataclass
class MPRefine(Strategy):
    order = 50  # refine after other strategies' end-of-epoch work
    lam: float = 0.5  # MP learning rate λ: W ← W + λ·ΔW
    C: float | str = "val"  # ridge strength; "val": chosen per solve on the validation split; "gcv": by GCV
    grid: tuple[float, ...] | None = None  # C values to choose from (default: 1e-4 … 1e4, 2 per decade)
    target: str = "pm1"  # one-hot targets in {-1,+1} ("pm1") or {0,1} ("01")
    form: str = "residual"  # "residual": fit T − current output; "replace": fit T itself
    features: str = "pass"  # "pass": extra eval-mode pass over the training set; "online": reuse the epoch's forwards
    solver: str = "direct"  # "direct": streaming A, B + one solve; "recursive": the papers' batch recursion (fixed C)
    layers: int | None = None  # refine the last `layers` FC layers (default: the whole trailing FC head)
    init_head: bool = True  # ridge linear probe into the last FC layer before epoch 1
    init_scale: float | str = 1.0  # ridge head's logits × s; "val": s chosen for the lowest validation cross-entropy
    head_bn: str = "pretrained"  # "target": the head's pass re-estimates the BN statistics on the training images
    until: int | None = 2  # refine only after epochs 1 … until (None: every epoch)
    every: int = 1  # refine after every `every`-th epoch
    min_gain: float | None = None  # stop refining once a refinement raises validation accuracy by less
    log_before: bool = True  # log test_acc_before_refine (an extra evaluation, off the clock)
    batch_size: int | None = FEATURE_BATCH  # batch size of the feature passes (None: the evaluation batch size)

    def __post_init__(self):
        if isinstance(self.C, str) and self.C not in CHOOSERS:  # from the CLI: -o mp-refine.C=inf
            try:
                self.C = float(self.C)
            except ValueError:
                pass
        if isinstance(self.init_scale, int):
            self.init_scale = float(self.init_scale)
        fixed_c = self.C not in CHOOSERS and isinstance(self.C, (int, float)) and math.isfinite(self.C)
        checks = [
            (self.lam > 0, f"lam must be > 0, got {self.lam}"),
            (self.C in CHOOSERS or (isinstance(self.C, (int, float)) and self.C > 0),
             f"C must be > 0, 'val' or 'gcv', got {self.C!r}"),
            (self.target in ("pm1", "01"), f"target must be pm1 or 01, got {self.target!r}"),
            (self.form in ("residual", "replace"), f"form must be residual or replace, got {self.form!r}"),
            (self.features in ("pass", "online"), f"features must be pass or online, got {self.features!r}"),
            (self.solver in ("direct", "recursive"), f"solver must be direct or recursive, got {self.solver!r}"),
            (self.solver == "direct" or (fixed_c and self.features == "pass" and self.form == "residual"),
             "solver=recursive needs a fixed finite C (e.g. -o mp-refine.C=4), features=pass and form=residual"),
            (self.init_scale == "val" or (isinstance(self.init_scale, float) and 0 < self.init_scale < math.inf),
             f"init_scale must be 'val' or a number > 0, got {self.init_scale!r}"),
            (self.head_bn in ("pretrained", "target"), f"head_bn must be pretrained or target, got {self.head_bn!r}"),
            (self.every >= 1, f"every must be >= 1, got {self.every}"),
            (self.until is None or self.until >= 0, f"until must be >= 0 or None, got {self.until}"),
            (self.min_gain is None or math.isfinite(self.min_gain), f"min_gain must be a number, got {self.min_gain}"),
            (self.batch_size is None or self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.layers is None or self.layers >= 1, f"layers must be >= 1, got {self.layers}"),
        ]
        check_options("mp-refine", checks)
        self.stopped: int | None = None  # the epoch (1-based) after which min_gain stopped the refinements
        self._online: ridge.RidgeStats | None = None
        self._tap: FeatureTap | None = None
        self._online_seconds = 0.0
        self._pass_seconds = 0.0  # the last feature pass's cost (head or refinement): a budget's reserve
        self._warned = False

    # ------------------------------------------------------------------ which layers, when
    def head(self, engine) -> list[tuple[str, nn.Linear]]:
        """The FC layers to refine, first to last: the trailing FC head (or its last `layers`), cut above any
        module the error cannot be pulled back through exactly."""
        fcs = final_linears(engine.model)
        if self.features == "online" or self.layers == 1:
            return fcs[-1:]
        fcs = fcs[-self.layers :] if self.layers else fcs
        mods = between(engine.model, fcs)
        first = max((k for k in range(1, len(fcs)) if not all(passable(m) for m in mods[k])), default=0)
        if first and not self._warned:
            self._warned = True
            bad = ", ".join(type(m).__name__ for m in mods[first] if not passable(m))
            kept = ", ".join(n for n, _ in fcs[first:])
            msg = (f"mp-refine: the error cannot be pulled back exactly through {bad} (before {fcs[first][0]}); "
                   f"refining only {kept}")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return fcs[first:]

    def due(self, epoch: int) -> bool:
        """Whether a refinement follows 0-based `epoch`."""
        e = epoch + 1
        return (self.until is None or e <= self.until) and e % self.every == 0 and self.stopped is None

    # ------------------------------------------------------------------ events
    def before_fit(self, engine) -> None:
        if self.min_gain is not None and engine.val_data is None:
            raise FastRetrainError("mp-refine.min_gain needs a validation split (--val-fraction > 0)")
        if self.features == "online":
            if len(final_linears(engine.model)) > 1:
                warnings.warn("mp-refine features=online refines only the last FC layer", stacklevel=2)
            last = self.head(engine)[-1][1]
            self._tap, self._classes = FeatureTap(last), last.out_features

    def before_epoch(self, engine) -> None:
        self._online, self._online_seconds = None, 0.0
        if self.init_head and engine.epoch == 0:  # inside epoch 1's clock: training time
            t0 = time.perf_counter()
            info = self.fit_head(engine)
            engine.sync()
            seconds = time.perf_counter() - t0
            self._pass_seconds = self._pass_seconds or seconds
            engine.log.update(info, init_head_seconds=seconds)
            if "init_head_skipped" not in info:  # the head is a model the run can return: epoch 0 (scored off the clock)
                engine.offer_model({"model": "ridge head", "init_head_seconds": seconds})
        if self.due(engine.epoch) and self._pass_seconds:  # under a budget, keep time for the refinement's pass
            engine.epoch_end_reserve = max(engine.epoch_end_reserve, self._pass_seconds)

    def after_loss(self, engine) -> None:
        if self._tap is None or not self.due(engine.epoch) or self._tap.value is None:
            return
        t0 = time.perf_counter()
        H = self._tap.value.flatten(1).double()
        Hx = with_ones(H)  # (b, d+1)
        T = targets(engine.y, self._classes, self.target)
        if self._online is None:
            self._online = ridge.RidgeStats.zeros(Hx.shape[1], T.shape[1], H.device)
        ridge.accumulate(self._online, Hx, T, sync=False)  # A = ΣĤᵀĤ, B = ΣĤᵀT, ee = ΣTᵀT
        self._online_seconds += time.perf_counter() - t0

    def after_epoch(self, engine) -> None:
        if not self.due(engine.epoch):
            return
        if self.log_before:  # reports only: nothing is chosen on them
            with engine.untimed():
                engine.log["test_acc_before_refine"] = engine.evaluate(engine.test_data)[1]
                if engine.val_data is not None and self.min_gain is None:
                    engine.log["val_acc_before_refine"] = engine.evaluate(engine.val_data)[1]
        engine.sync()
        t0 = time.perf_counter()
        before = engine.evaluate(engine.val_data)[1] if self.min_gain is not None else None
        info = self.refine(engine)
        if before is not None:  # the schedule's decision reads validation only, and its cost is training time
            gain = engine.evaluate(engine.val_data)[1] - before
            info.update(val_acc_before_refine=before, refine_val_gain=gain)
            if gain < self.min_gain:
                self.stopped = engine.epoch + 1
        engine.sync()
        engine.log["refine_seconds"] = time.perf_counter() - t0 + self._online_seconds
        self._pass_seconds = engine.log["refine_seconds"]
        engine.log.update(info)

    def after_fit(self, engine) -> None:
        if self._tap is not None:
            self._tap.close()
            self._tap = None

    def state_dict(self) -> dict[str, Any]:
        return {"stopped": self.stopped, "pass_seconds": self._pass_seconds}  # a resumed budget keeps its reserve

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stopped = state.get("stopped")
        self._pass_seconds = state.get("pass_seconds", 0.0)

    # ------------------------------------------------------------------ the head before epoch 1
    @torch.no_grad()
    def fit_head(self, engine) -> dict[str, Any]:
        """Write the ridge linear probe on the current backbone's features into the last FC layer."""
        name, layer = final_linears(engine.model)[-1]
        c, dev = layer.out_features, layer.weight.device
        aug = ridge.RidgeStats.zeros(layer.in_features + 1, c, dev)
        # head_bn="target": the average over this pass's batches replaces the pretrained statistics
        with reestimated_batchnorm(engine.net) if self.head_bn == "target" else nullcontext([]) as norms:
            for (H,), y in self._forward_features(engine, [(name, layer)], train_norms=norms):
                ridge.accumulate(aug, with_ones(H), targets(y, c, self.target), sync=False)  # [H 1]: (b, d+1)
        for m in norms:  # each rank saw its shard: average the statistics so every rank holds the same
            for buf in (m.running_mean, m.running_var):
                dist.average(buf)
        ridge.all_reduce(aug)
        val = self._val_features(engine, name, layer, self.C == "val" or self.init_scale == "val")
        score = (lambda X, b: val(X.T, b)) if self.C == "val" and val is not None else None
        sol, b = ridge_head(aug, layer, self._c(), self._grid(), score)
        if not sol.ok:
            warnings.warn(f"mp-refine: ridge head of {name} skipped: {sol.message}", RuntimeWarning, stacklevel=2)
            return {"init_head_skipped": sol.message}
        W = sol.X.T
        scale = float(self.init_scale) if self.init_scale != "val" else (val.scale(W, b) if val is not None else 1.0)
        layer.weight.copy_((scale * W).to(layer.weight.dtype))
        if b is not None:
            layer.bias.copy_((scale * b).to(layer.bias.dtype))
        for p in layer.parameters():  # every rank solved the same all-reduced problem; make it bitwise so
            dist.broadcast(p.data)
        return {"init_head_C": sol.C, "init_head_scale": scale}

    # ------------------------------------------------------------------ the refinement
    @torch.no_grad()
    def refine(self, engine) -> dict[str, Any]:
        """Refine the FC head in place from this epoch's statistics; return what to log."""
        layers = self.head(engine)
        if self.features == "online":
            if self._online is None:
                return {"refine_skipped": "no online features were collected"}
            stats = online_stats(layers[-1][1], ridge.all_reduce(self._online))
            self._online = None
            return self._apply(engine, layers, [None], stats)
        if self.solver == "recursive":  # the papers' batch recursion (`recursive_betas`)
            betas = recursive_betas(self._forward_features(engine, layers), layers, self.C, self.target)
            return self._apply(engine, layers, betas=betas)
        stats, G = collect(self._forward_features(engine, layers), layers, self.target)
        return self._apply(engine, layers, G, stats)

    def _c(self) -> float | str:
        """The C for `ridge.solve`: "val" without a usable validation split falls back to GCV."""
        return "gcv" if self.C == "val" else self.C

    def _grid(self) -> tuple[float, ...]:
        return tuple(self.grid or ridge.GCV_GRID)

    def _online_stats(self, layer: nn.Linear, aug: ridge.RidgeStats) -> ridge.RidgeStats:
        """The online form's residual statistics for the layer's current weights (`refine.online_stats`)."""
        return online_stats(layer, aug)

    @torch.no_grad()
    def _val_features(self, engine, name: str, layer: nn.Linear, needed: bool):
        """When `needed` and there is a validation split: the validation images' inputs of `layer`, from one
        forward pass (every rank sees all of them), as a `Validation`; None otherwise.

        The pass is part of the method's work, so it is training time like the feature pass itself."""
        if not needed or engine.val_data is None:
            return None
        feats = [(Hs[0], y) for Hs, y in self._forward_features(engine, [(name, layer)], engine.val_data, shard=False)]
        H, y = torch.cat([h for h, _ in feats]), torch.cat([y for _, y in feats])
        return Validation(H, y, targets(y, layer.out_features, self.target), layer)

    def _forward_features(self, engine, layers, data=None, shard: bool = True, train_norms=()):
        """Yield (inputs of each layer as (b, d_k) float64, labels) over the training images (or `data`), the
        model in eval mode (eval transform) except the BN layers `train_norms`, in train mode (batch statistics,
        running statistics updated); the forward runs in the engine's precision, only the features become float64."""
        net = engine.net  # the training forward (the model, or e.g. a head on cached features), never DDP-wrapped
        taps = [FeatureTap(m) for _, m in layers]
        was = net.training
        net.eval()
        for m in train_norms:
            m.train()
        try:
            for x, y in engine.batches(data, train=False, shard=shard, batch_size=self.batch_size):
                with engine.autocast():
                    net(x)
                yield [t.value.flatten(1).double() for t in taps], y
        finally:
            net.train(was)
            for t in taps:
                t.close()

    def _apply(self, engine, layers, G=None, stats: ridge.RidgeStats | None = None, betas=None) -> dict[str, Any]:
        """`refine_layers` on these statistics (or `betas`), C chosen on validation for one layer."""
        val = self._val_features(engine, *layers[-1], self.C == "val") if len(layers) == 1 and betas is None else None
        return refine_layers(layers, between(engine.model, layers), stats, G, betas, lam=self.lam, C=self._c(),
                                    grid=self._grid(), form=self.form, val=val)


HELP = ("ridge linear-probe head before epoch 1, then after SGD epochs 1-2 a refinement of the FC layer(s) by a "
        "streaming ridge (Moore-Penrose) solve on all training features, C chosen on validation, step lam=0.5 "
        "(Yang 2019: -o mp-refine.init_head=False -o mp-refine.until=None)")
register_method("mp-refine", MPRefine, help=HELP)
