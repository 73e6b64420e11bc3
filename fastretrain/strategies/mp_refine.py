"""MP / ridge refinement of the FC layer(s) after every SGD epoch (stage 2 of fast retraining; Zhang,
Yang et al., "Deep Networks with Fast Retraining", arXiv 2008.07387; Yang et al., TPAMI 2019;
METHODS.md §1b). Alone, `mp-refine` is "SGD + refinement" (≈ Yang 2019).

After the epoch's SGD pass: features H of every training image (eval mode, eval transform), targets T
one-hot in {−1, +1}, residual E = T − (H Wᵀ + b); ΔWᵀ = (HᵀH + I/C)⁻¹HᵀE solved by the streaming
solver of `fastretrain.ridge` (A, B summed in float64 batch by batch, all-reduced under DDP, C by GCV
unless fixed); W ← W + λ·ΔW, bias untouched. Heads of several FC layers are refined last to first:
the error is pulled back through the refined layer, e_{k−1} = λ·(W_kᵀW_k + I/C)⁻¹W_kᵀ e_k (taken as is
through the activation), and layer k−1 is fitted to it. The pull-back is linear, so one pass collects
every layer's statistics (A_k = ΣH_{k−1}ᵀH_{k−1}, G_k = ΣH_{k−1}ᵀE_L) and B_k = G_k R_kᵀ afterwards.

`features="online"` skips the extra pass: it sums the detached features entering the last FC layer
during the SGD epoch's own forward passes (train mode, augmented images), in an augmented form
(Ĥ = [H 1], Â = ΣĤᵀĤ, Ŝ = ΣĤᵀT) from which the residual statistics are exact for the weights at the
end of the epoch: B = Ŝ − ÂŴᵀ with Ŵ = [W b]. Only the last FC layer is refined in that mode.

Logged per epoch: `refine_seconds` (wall time of the refinement, also inside `wall_seconds`; in online
mode it includes the per-batch accumulation), `test_acc_before_refine` (evaluated off the clock),
`refine_C` (the C used for the last layer), `refine_skipped` when a guard fired.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import distributed as dist
from .. import ridge
from ..engine import Strategy
from ..errors import FastRetrainError
from ..methods import register_method
from ..models import FeatureTap, final_linears


def targets(y: torch.Tensor, c: int, kind: str = "pm1") -> torch.Tensor:
    """One-hot targets (b, c) float64: entries {−1, +1} ("pm1") or {0, 1} ("01")."""
    t = torch.nn.functional.one_hot(y.long(), c).double()
    return 2 * t - 1 if kind == "pm1" else t


@dataclass
class MPRefine(Strategy):
    order = 50  # refine after other strategies' end-of-epoch work
    lam: float = 0.5  # MP learning rate λ: W ← W + λ·ΔW
    C: float | str = "gcv"  # ridge strength, or "gcv": chosen per refinement from `grid`
    grid: tuple[float, ...] | None = None  # C values GCV chooses from (default: 1e-4 … 1e4, 2 per decade)
    target: str = "pm1"  # one-hot targets in {-1,+1} ("pm1") or {0,1} ("01")
    form: str = "residual"  # "residual": fit T − current output; "replace": fit T itself
    features: str = "pass"  # "pass": extra eval-mode pass over the training set; "online": reuse the epoch's forwards
    solver: str = "direct"  # "direct": streaming A, B + one solve; "recursive": the papers' batch recursion (fixed C)
    layers: int | None = None  # refine the last `layers` FC layers (default: the whole trailing FC head)
    every: int = 1  # refine after every `every`-th epoch
    log_before: bool = True  # log test_acc_before_refine (an extra evaluation, off the clock)
    batch_size: int | None = None  # batch size of the feature pass (default: the evaluation batch size)

    def __post_init__(self):
        if isinstance(self.C, str) and self.C != "gcv":  # from the CLI: -o mp-refine.C=inf
            try:
                self.C = float(self.C)
            except ValueError:
                pass
        checks = [
            (self.lam > 0, f"mp-refine.lam must be > 0, got {self.lam}"),
            (self.C == "gcv" or (isinstance(self.C, (int, float)) and self.C > 0), f"mp-refine.C must be > 0 or 'gcv', got {self.C!r}"),
            (self.target in ("pm1", "01"), f"mp-refine.target must be pm1 or 01, got {self.target!r}"),
            (self.form in ("residual", "replace"), f"mp-refine.form must be residual or replace, got {self.form!r}"),
            (self.features in ("pass", "online"), f"mp-refine.features must be pass or online, got {self.features!r}"),
            (self.solver in ("direct", "recursive"), f"mp-refine.solver must be direct or recursive, got {self.solver!r}"),
            (self.solver == "direct" or (self.C != "gcv" and math.isfinite(self.C) and self.features == "pass" and self.form == "residual"),
             "mp-refine.solver=recursive needs a fixed finite C (e.g. -o mp-refine.C=4), features=pass and form=residual"),
            (self.every >= 1, f"mp-refine.every must be >= 1, got {self.every}"),
        ]  # fmt: skip
        for ok, msg in checks:
            if not ok:
                raise FastRetrainError(msg)
        self._online: dict[str, Any] | None = None
        self._tap: FeatureTap | None = None
        self._online_seconds = 0.0

    # ------------------------------------------------------------------ which layers
    def head(self, engine) -> list[tuple[str, nn.Linear]]:
        fcs = final_linears(engine.model)
        if self.features == "online" or self.layers == 1:
            return fcs[-1:]
        return fcs[-self.layers :] if self.layers else fcs

    def _due(self, engine) -> bool:
        return (engine.epoch + 1) % self.every == 0

    # ------------------------------------------------------------------ events
    def before_fit(self, engine) -> None:
        if self.features == "online":
            if len(final_linears(engine.model)) > 1:
                warnings.warn("mp-refine features=online refines only the last FC layer", stacklevel=2)
            last = self.head(engine)[-1][1]
            self._tap, self._classes = FeatureTap(last), last.out_features

    def before_epoch(self, engine) -> None:
        self._online, self._online_seconds = None, 0.0

    def after_loss(self, engine) -> None:
        if self._tap is None or not self._due(engine) or self._tap.value is None:
            return
        t0 = time.perf_counter()
        H = self._tap.value.flatten(1).double()
        Hx = torch.cat([H, torch.ones(len(H), 1, dtype=torch.float64, device=H.device)], 1)  # (b, d+1)
        T = targets(engine.y, self._classes, self.target)
        if self._online is None:
            self._online = {"stats": ridge.RidgeStats.zeros(Hx.shape[1], T.shape[1], H.device)}
        ridge.accumulate(self._online["stats"], Hx, T)  # A = ΣĤᵀĤ, B = ΣĤᵀT, ee = ΣTᵀT
        self._online_seconds += time.perf_counter() - t0

    def after_epoch(self, engine) -> None:
        if not self._due(engine):
            return
        if self.log_before:  # reports only: nothing is chosen on them
            with engine.untimed():
                engine.log["test_acc_before_refine"] = engine.evaluate(engine.test_data)[1]
                if engine.val_data is not None:
                    engine.log["val_acc_before_refine"] = engine.evaluate(engine.val_data)[1]
        engine.sync()
        t0 = time.perf_counter()
        info = self.refine(engine)
        engine.sync()
        engine.log["refine_seconds"] = time.perf_counter() - t0 + self._online_seconds
        engine.log.update(info)

    def after_fit(self, engine) -> None:
        if self._tap is not None:
            self._tap.close()
            self._tap = None

    # ------------------------------------------------------------------ the refinement
    @torch.no_grad()
    def refine(self, engine) -> dict[str, Any]:
        """Refine the FC head in place from this epoch's statistics; return what to log."""
        layers = self.head(engine)
        if self.features == "online":
            if self._online is None:
                return {"refine_skipped": "no online features were collected"}
            stats = self._online_stats(layers[-1][1], ridge.all_reduce(self._online["stats"]))
            self._online = None
            return self._apply(engine, layers, [None], stats)
        if self.solver == "recursive":
            return self._refine_recursive(engine, layers)
        stats, G = self._collect(engine, layers)
        return self._apply(engine, layers, G, stats)

    def _forward_features(self, engine, layers):
        """Yield (inputs of each refined layer as (b, d_k) float64, labels), the model in eval mode."""
        net = getattr(engine, "_net", engine.model)  # the unwrapped training forward (may be a head only)
        taps = [FeatureTap(m) for _, m in layers]
        was = net.training
        net.eval()
        try:
            for x, y in engine.batches(train=False, batch_size=self.batch_size):
                with engine.autocast():
                    net(x)
                yield [t.value.flatten(1).double() for t in taps], y
        finally:
            net.train(was)
            for t in taps:
                t.close()

    def _residual(self, layer: nn.Linear, H: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        T = targets(y, layer.out_features, self.target)
        return T - (H @ layer.weight.double().T + layer.bias.double()) if layer.bias is not None else T - H @ layer.weight.double().T

    def _collect(self, engine, layers):
        """One pass: stats of the last layer (A, B = ΣHᵀE, ee) and G_k = ΣH_{k−1}ᵀE_L for earlier layers."""
        last = layers[-1][1]
        c = last.out_features
        dev = last.weight.device
        stats = ridge.RidgeStats.zeros(last.in_features, c, dev)
        G = [ridge.RidgeStats.zeros(m.in_features, c, dev) for _, m in layers[:-1]]
        for Hs, y in self._forward_features(engine, layers):
            E = self._residual(last, Hs[-1], y)
            ok = ridge.finite_rows(E, *Hs)
            if not bool(ok.all()):
                stats.dropped += int((~ok).sum())
                Hs, E = [h[ok] for h in Hs], E[ok]
            ridge.accumulate(stats, Hs[-1], E)
            for g, H in zip(G, Hs[:-1]):
                ridge.accumulate(g, H, E)  # g.B = ΣH_{k−1}ᵀE_L; g.ee is unused (= stats.ee)
        for s in (stats, *G):
            ridge.all_reduce(s)
        return stats, G + [None]

    def _online_stats(self, layer: nn.Linear, aug: ridge.RidgeStats) -> ridge.RidgeStats:
        """Residual statistics for the current weights from the augmented sums (Â, Ŝ = ΣĤᵀT, ΣTᵀT)."""
        d = layer.in_features
        W = layer.weight.double()
        Wx = torch.cat([W, (layer.bias.double() if layer.bias is not None else torch.zeros(W.shape[0], dtype=W.dtype, device=W.device))[:, None]], 1)
        B = aug.B - aug.A @ Wx.T  # ΣĤᵀ(T − ĤŴᵀ), (d+1, c)
        WS = Wx @ aug.B  # (c, c) = ŴΣĤᵀT
        ee = aug.ee - WS - WS.T + Wx @ aug.A @ Wx.T
        return ridge.RidgeStats(aug.A[:d, :d].clone(), B[:d].clone(), ee, aug.n, aug.dropped)

    def _apply(self, engine, layers, G=None, stats: ridge.RidgeStats | None = None, betas=None) -> dict[str, Any]:
        """Solve last to first, update W (never with non-finite values), pull the error back.

        `betas`: per-layer solutions for targets E_L already computed (recursive solver) instead of stats.
        """
        info: dict[str, Any] = {}
        R = None  # e_k = E_L R_kᵀ; None = identity (the last layer)
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
                sol = ridge.RidgeSolution(betas[k] if R is None else betas[k] @ R.T, float(self.C), message="recursive solution not finite")
            else:
                sol = ridge.solve_or_warn(s, self.C, tuple(self.grid or ridge.GCV_GRID), what=f"mp-refine of {name}")
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
                R = self.lam * (M if R is None else M @ R)
        return info

    def _refine_recursive(self, engine, layers):
        """The papers' batch-by-batch recursion (fixed C): β_k = ridge(H_{k−1} → E_L) for every layer, in
        one pass; the pulled-back targets are E_L R_kᵀ and ridge is linear in its targets, so X_k = β_k R_kᵀ.

        The recursion is sequential over batches: under DDP each rank runs it on its shard and the β are
        averaged, which is not the exact all-data solution (the default direct solver is).
        """
        last = layers[-1][1]
        rr = [ridge.RecursiveRidge(m.in_features, last.out_features, float(self.C), last.weight.device) for _, m in layers]
        for Hs, y in self._forward_features(engine, layers):
            E = self._residual(last, Hs[-1], y)
            for r, H in zip(rr, Hs):
                r.update(H, E)
        betas = [dist.all_reduce_sum(r.beta) / dist.world() for r in rr]
        return self._apply(engine, layers, betas=betas)

register_method("mp-refine", MPRefine,
                help="after each SGD epoch, refine the FC layer(s) by a streaming ridge (Moore-Penrose) solve on all "
                     "training features, C by GCV, step lam=0.5 (SGD + refinement, ~Yang 2019)")  # fmt: skip
