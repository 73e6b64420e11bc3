"""MP / ridge refinement of the FC layer(s) after SGD epochs (stage 2 of fast retraining; Zhang, Yang et al.,
"Deep Networks with Fast Retraining", arXiv 2008.07387; Yang et al., TPAMI 2019; docs/fast_retrain.md), with a
closed-form ridge head before the first epoch and a schedule that refines only while it pays (issue 13).
Alone, `mp-refine` is "SGD + refinement" (≈ Yang 2019 with `init_head=False, until=None`).

Refinement, after a due SGD epoch: features H of every training image (eval mode, eval transform), targets T
one-hot in {−1, +1}, residual E = T − (H Wᵀ + b); ΔWᵀ = (HᵀH + I/C)⁻¹HᵀE solved by the streaming solver of
`fastretrain.ridge` (A, B summed in float64 batch by batch without host syncs, all-reduced under DDP, C chosen
as below unless fixed); W ← W + λ·ΔW, bias untouched. Heads of several FC layers are refined last to first: the error
is pulled back through the refined layer, e_{k−1} = λ·(W_kᵀW_k + I/C)⁻¹W_kᵀ e_k, taken as is through a
parameter-free activation (ReLU, dropout: the papers' rule) and divided by the per-feature scale
γ/√(running_var + ε) through an eval-mode BatchNorm1d (exact: in eval mode the BN is the affine map
z ↦ s⊙z + const, so a change Δz of its input moves its output by s⊙Δz). Layer k−1 is then fitted to it. A
module between two FC layers that is neither (e.g. LayerNorm, a BN without running statistics) is not an
elementwise affine map: the refinement stops above it (refines only the layers it can handle exactly) and
warns once. The pull-back is linear, so one pass collects every layer's statistics (A_k = ΣH_{k−1}ᵀH_{k−1},
G_k = ΣH_{k−1}ᵀE_L) and B_k = G_k R_kᵀ afterwards.

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
the SGD epoch's own forward passes (train mode, augmented images), in an augmented form (Ĥ = [H 1],
Â = ΣĤᵀĤ, Ŝ = ΣĤᵀT) from which the residual statistics are exact for the weights at the end of the epoch:
B = Ŝ − ÂŴᵀ with Ŵ = [W b]. Only the last FC layer is refined in that mode.

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

CHOOSERS = ("val", "gcv")  # how C is chosen when it is not fixed
SCALE_GRID = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)  # ridge-head logit scales to choose from
FEATURE_BATCH = 256  # images per batch of the feature passes: no autograd, so far larger than a training batch


def targets(y: torch.Tensor, c: int, kind: str = "pm1") -> torch.Tensor:
    """One-hot targets (b, c) float64: entries {−1, +1} ("pm1") or {0, 1} ("01")."""
    t = torch.nn.functional.one_hot(y.long(), c).double()
    return 2 * t - 1 if kind == "pm1" else t


def passable(module: nn.Module) -> bool:
    """Whether the error can be pulled back through `module` (in eval mode) exactly or by the papers' rule:
    a BatchNorm1d with running statistics (an elementwise affine map), or a module without parameters or
    buffers (an activation, dropout, flatten: taken as is)."""
    if isinstance(module, nn.BatchNorm1d):
        return module.track_running_stats and module.running_var is not None
    return next(module.parameters(recurse=False), None) is None and next(module.buffers(recurse=False), None) is None


def between(model: nn.Module, layers: list[tuple[str, nn.Linear]]) -> list[list[nn.Module]]:
    """For each layer k ≥ 1: the leaf modules registered between layer k−1 and layer k (empty list for k = 0)."""
    leaves = [(n, m) for n, m in model.named_modules() if not any(True for _ in m.children())]
    pos = {n: i for i, (n, _) in enumerate(leaves)}
    out: list[list[nn.Module]] = [[]]
    for (a, _), (b, _) in zip(layers, layers[1:]):
        out.append([m for _, m in leaves[pos[a] + 1 : pos[b]]])
    return out


@torch.no_grad()
def input_scale(modules: list[nn.Module]) -> torch.Tensor | None:
    """Per-feature factor s (float64) with which a change of the first module's input reaches the last one's
    output, for eval-mode BatchNorm1d layers (s = γ/√(running_var + ε)); None when there is none."""
    s = None
    for m in modules:
        if isinstance(m, nn.BatchNorm1d):
            f = (m.running_var.double() + m.eps).rsqrt()
            if m.weight is not None:
                f = f * m.weight.double()
            s = f if s is None else s * f
    return s


@dataclass
class _Validation:
    """Validation inputs H (n, d) float64 of an FC layer, labels y, ±1 (or 0/1) targets T."""

    H: torch.Tensor
    y: torch.Tensor
    T: torch.Tensor
    layer: nn.Linear

    def out(self, W: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        bias = b if b is not None else (self.layer.bias.double() if self.layer.bias is not None else 0.0)
        return self.H @ W.T + bias

    def __call__(self, W: torch.Tensor, b: torch.Tensor | None) -> tuple[float, float]:
        """(accuracy, −mean squared error to the targets) of the layer with weights W (out, in), bias b (None: the
        layer's own): the key C is chosen by."""
        out = self.out(W, b)
        return float((out.argmax(1) == self.y).double().mean()), -float(((out - self.T) ** 2).mean())

    def scale(self, W: torch.Tensor, b: torch.Tensor | None, grid=SCALE_GRID) -> float:
        """The factor s of `grid` whose logits s·(HWᵀ + b) have the lowest cross-entropy (ties: the smaller s)."""
        out = self.out(W, b)
        losses = [float(nn.functional.cross_entropy(s * out, self.y)) for s in grid]
        return float(grid[min(range(len(grid)), key=losses.__getitem__)])


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
        Hx = torch.cat([H, torch.ones(len(H), 1, dtype=torch.float64, device=H.device)], 1)  # (b, d+1)
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
        return {"stopped": self.stopped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stopped = state.get("stopped")

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
                Hx = torch.cat([H, torch.ones(len(H), 1, dtype=torch.float64, device=H.device)], 1)  # (b, d+1)
                ridge.accumulate(aug, Hx, targets(y, c, self.target), sync=False)
        for m in norms:  # each rank saw its shard: average the statistics so every rank holds the same
            for buf in (m.running_mean, m.running_var):
                dist.all_reduce_sum(buf).div_(dist.world())
        ridge.all_reduce(aug)
        grid = tuple(self.grid or ridge.GCV_GRID)
        val = self._val_features(engine, name, layer, self.C == "val" or self.init_scale == "val")
        score = (lambda X, b: val(X.T, b)) if self.C == "val" and val is not None else None
        if layer.bias is None:  # no bias to fit: the plain ridge on H (drop the column of ones)
            d = layer.in_features
            plain = ridge.RidgeStats(aug.A[:d, :d], aug.B[:d], aug.ee, aug.n, aug.dropped)
            sol = ridge.solve(plain, self._c(), grid, score and (lambda X: score(X, None)))
            b = None
        else:
            sol, b = ridge.linear_probe(aug, self._c(), grid, score)
        if not sol.ok:
            warnings.warn(f"mp-refine: ridge head of {name} skipped: {sol.message}", RuntimeWarning, stacklevel=2)
            return {"init_head_skipped": sol.message}
        W = sol.X.T
        scale = float(self.init_scale) if self.init_scale != "val" else (val.scale(W, b) if val is not None else 1.0)
        layer.weight.copy_((scale * W).to(layer.weight.dtype))
        if b is not None:
            layer.bias.copy_((scale * b).to(layer.bias.dtype))
        for p in layer.parameters():
            if dist.world() > 1:  # every rank solved the same all-reduced problem; make it bitwise so
                torch.distributed.broadcast(p.data, 0)
        return {"init_head_C": sol.C, "init_head_scale": scale}

    # ------------------------------------------------------------------ the refinement
    @torch.no_grad()
    def refine(self, engine) -> dict[str, Any]:
        """Refine the FC head in place from this epoch's statistics; return what to log."""
        layers = self.head(engine)
        if self.features == "online":
            if self._online is None:
                return {"refine_skipped": "no online features were collected"}
            stats = self._online_stats(layers[-1][1], ridge.all_reduce(self._online))
            self._online = None
            return self._apply(engine, layers, [None], stats)
        if self.solver == "recursive":
            return self._refine_recursive(engine, layers)
        stats, G = self._collect(engine, layers)
        return self._apply(engine, layers, G, stats)

    def _c(self) -> float | str:
        """The C for `ridge.solve`: "val" without a usable validation split falls back to GCV."""
        return "gcv" if self.C == "val" else self.C

    @torch.no_grad()
    def _val_features(self, engine, name: str, layer: nn.Linear, needed: bool):
        """When `needed` and there is a validation split: the validation images' inputs of `layer`, from one
        forward pass (every rank sees all of them), as a `_Validation`; None otherwise.

        The pass is part of the method's work, so it is training time like the feature pass itself."""
        if not needed or engine.val_data is None:
            return None
        feats = [(Hs[0], y) for Hs, y in self._forward_features(engine, [(name, layer)], engine.val_data, shard=False)]
        H, y = torch.cat([h for h, _ in feats]), torch.cat([y for _, y in feats])
        return _Validation(H, y, targets(y, layer.out_features, self.target), layer)

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

    def _residual(self, layer: nn.Linear, H: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = H @ layer.weight.double().T
        if layer.bias is not None:
            out = out + layer.bias.double()
        return targets(y, layer.out_features, self.target) - out

    def _collect(self, engine, layers):
        """One pass: stats of the last layer (A, B = ΣHᵀE, ee) and G_k = ΣH_{k−1}ᵀE_L for earlier layers."""
        last = layers[-1][1]
        c = last.out_features
        dev = last.weight.device
        stats = ridge.RidgeStats.zeros(last.in_features, c, dev)
        G = [ridge.RidgeStats.zeros(m.in_features, c, dev) for _, m in layers[:-1]]
        for Hs, y in self._forward_features(engine, layers):
            E = self._residual(last, Hs[-1], y)
            ok = ridge.finite_rows(E, *Hs)  # a row is used by every layer or by none (no host sync)
            ridge.accumulate(stats, Hs[-1], E, rows=ok, sync=False)
            for g, H in zip(G, Hs[:-1]):
                ridge.accumulate(g, H, E, rows=ok, sync=False)  # g.B = ΣH_{k−1}ᵀE_L; g.ee is unused (= stats.ee)
        for s in (stats, *G):
            ridge.all_reduce(s)
        return stats, G + [None]

    def _online_stats(self, layer: nn.Linear, aug: ridge.RidgeStats) -> ridge.RidgeStats:
        """Residual statistics for the current weights from the augmented sums (Â, Ŝ = ΣĤᵀT, ΣTᵀT)."""
        d = layer.in_features
        W = layer.weight.double()
        b = layer.bias.double() if layer.bias is not None else torch.zeros(W.shape[0], dtype=W.dtype, device=W.device)
        Wx = torch.cat([W, b[:, None]], 1)
        B = aug.B - aug.A @ Wx.T  # ΣĤᵀ(T − ĤŴᵀ), (d+1, c)
        WS = Wx @ aug.B  # (c, c) = ŴΣĤᵀT
        ee = aug.ee - WS - WS.T + Wx @ aug.A @ Wx.T
        return ridge.RidgeStats(aug.A[:d, :d].clone(), B[:d].clone(), ee, aug.n, aug.dropped)

    def _apply(self, engine, layers, G=None, stats: ridge.RidgeStats | None = None, betas=None) -> dict[str, Any]:
        """Solve last to first, update W (never with non-finite values), pull the error back.

        `betas`: per-layer solutions for targets E_L already computed (recursive solver) instead of stats.
        """
        info: dict[str, Any] = {}
        mods = between(engine.model, layers)
        val = self._val_features(engine, *layers[-1], self.C == "val") if len(layers) == 1 and betas is None else None
        R = None  # e_k = E_L R_kᵀ (error at layer k's output); None = identity (the last layer)
        for k in range(len(layers) - 1, -1, -1):
            name, layer = layers[k]
            W = layer.weight
            if betas is not None:
                s = None
            elif R is None:
                s = stats
                if self.form == "replace":  # fit T − b: B' = B + A Wᵀ, ee' = Σ(E + HWᵀ)ᵀ(E + HWᵀ)
                    Wd = W.double()
                    GW = Wd @ s.B
                    s = ridge.RidgeStats(s.A, s.B + s.A @ Wd.T, s.ee + GW + GW.T + Wd @ s.A @ Wd.T, s.n, s.dropped)
            else:
                s = ridge.RidgeStats(G[k].A, G[k].B @ R.T, R @ stats.ee @ R.T, G[k].n, G[k].dropped)
            if betas is not None:
                X = betas[k] if R is None else betas[k] @ R.T
                sol = ridge.RidgeSolution(X, float(self.C), message="recursive solution not finite")
            else:
                score = None
                if val is not None:  # one layer: C chosen on validation by the refined layer's accuracy
                    keep = 1 - self.lam if self.form == "replace" else 1.0
                    score = lambda X: val(keep * W.double() + self.lam * X.T, None)  # noqa: E731
                sol = ridge.solve_or_warn(s, self._c(), tuple(self.grid or ridge.GCV_GRID), f"mp-refine of {name}",
                                          score)
            if k == len(layers) - 1:
                info["refine_C"] = sol.C
            if not sol.ok or not torch.isfinite(sol.X).all():
                info["refine_skipped"] = f"{name}: {sol.message or 'non-finite solution'}"
                break
            dW = sol.X.T  # (out, in)
            if self.form == "replace" and R is None:
                new = (1 - self.lam) * W.double() + self.lam * dW
            else:
                new = W.double() + self.lam * dW
            W.copy_(new.to(W.dtype))
            if dist.world() > 1:  # every rank solved the same all-reduced problem; make it bitwise so
                torch.distributed.broadcast(W.data, 0)
            if k > 0:
                M = ridge.pullback_matrix(W.detach(), sol.C)  # (in_k, out_k)
                R = self.lam * (M if R is None else M @ R)  # the error at layer k's input
                scale = input_scale(mods[k])  # through eval-mode BN1d: Δout = s ⊙ Δin, so e_in = e_out / s
                if scale is not None:
                    tol = 1e-12 * float(scale.abs().max().clamp_min(1e-300))
                    inv = torch.where(scale.abs() > tol, 1.0 / scale, torch.zeros_like(scale))  # dead unit: no error
                    R = inv[:, None] * R
        return info

    def _refine_recursive(self, engine, layers):
        """The papers' batch-by-batch recursion (fixed C): β_k = ridge(H_{k−1} → E_L) for every layer, in
        one pass; the pulled-back targets are E_L R_kᵀ and ridge is linear in its targets, so X_k = β_k R_kᵀ.

        The recursion is sequential over batches: under DDP each rank runs it on its shard and the β are
        averaged, which is not the exact all-data solution (the default direct solver is).
        """
        last = layers[-1][1]
        c, dev = last.out_features, last.weight.device
        rr = [ridge.RecursiveRidge(m.in_features, c, float(self.C), dev) for _, m in layers]
        for Hs, y in self._forward_features(engine, layers):
            E = self._residual(last, Hs[-1], y)
            for r, H in zip(rr, Hs):
                r.update(H, E)
        betas = [dist.all_reduce_sum(r.beta) / dist.world() for r in rr]
        return self._apply(engine, layers, betas=betas)


HELP = ("ridge linear-probe head before epoch 1, then after SGD epochs 1-2 a refinement of the FC layer(s) by a "
        "streaming ridge (Moore-Penrose) solve on all training features, C chosen on validation, step lam=0.5 "
        "(Yang 2019: -o mp-refine.init_head=False -o mp-refine.until=None)")
register_method("mp-refine", MPRefine, help=HELP)
