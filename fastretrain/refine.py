"""The maths of the MP / ridge refinement of a network's FC head (Zhang, Yang et al., "Deep Networks with Fast
Retraining", arXiv 2008.07387; Yang et al., TPAMI 2019; docs/fast_retrain.md): targets, residuals, the layer-by-layer
solve and the error's pull-back, on tensors and FC layers, with no engine. The `mp-refine` strategy
(strategies/mp_refine.py) decides when to run it and feeds it the features; the streaming solver is `ridge.py`.

Refinement: features H of every training image, targets T one-hot in {−1, +1}, residual E = T − (H Wᵀ + b);
ΔWᵀ = (HᵀH + I/C)⁻¹HᵀE solved by the streaming solver of `fastretrain.ridge` (A, B summed in float64 batch by batch
without host syncs, all-reduced under DDP); W ← W + λ·ΔW, bias untouched. Heads of several FC layers are refined
last to first: the error is pulled back through the refined layer, e_{k−1} = λ·(W_kᵀW_k + I/C)⁻¹W_kᵀ e_k, taken as
is through a parameter-free activation (ReLU, dropout: the papers' rule) and divided by the per-feature scale
γ/√(running_var + ε) through an eval-mode BatchNorm1d (exact: in eval mode the BN is the affine map
z ↦ s⊙z + const, so a change Δz of its input moves its output by s⊙Δz). Layer k−1 is then fitted to it. A module
between two FC layers that is neither (e.g. LayerNorm, a BN without running statistics) is not an elementwise
affine map (`passable`): the strategy refines only the layers above it. The pull-back is linear, so one pass
collects every layer's statistics (A_k = ΣH_{k−1}ᵀH_{k−1}, G_k = ΣH_{k−1}ᵀE_L) and B_k = G_k R_kᵀ afterwards.

Online form (`online_stats`): sums of the augmented features Ĥ = [H 1] (Â = ΣĤᵀĤ, Ŝ = ΣĤᵀT) give the residual
statistics exactly for the weights at the end of the epoch: B = Ŝ − ÂŴᵀ with Ŵ = [W b].
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import distributed as dist
from . import ridge

SCALE_GRID = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)  # ridge-head logit scales to choose from


def targets(y: torch.Tensor, c: int, kind: str = "pm1") -> torch.Tensor:
    """One-hot targets (b, c) float64: entries {−1, +1} ("pm1") or {0, 1} ("01")."""
    t = torch.nn.functional.one_hot(y.long(), c).double()
    return 2 * t - 1 if kind == "pm1" else t


def with_ones(H: torch.Tensor) -> torch.Tensor:
    """Augmented features Ĥ = [H 1]: (b, d) float64 -> (b, d+1)."""
    return torch.cat([H, torch.ones(len(H), 1, dtype=torch.float64, device=H.device)], 1)


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
class Validation:
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


def residual(layer: nn.Linear, H: torch.Tensor, y: torch.Tensor, kind: str = "pm1") -> torch.Tensor:
    """E = T − (H Wᵀ + b) (b, c) float64 for inputs H (b, d) float64 of `layer` and labels y."""
    out = H @ layer.weight.double().T
    if layer.bias is not None:
        out = out + layer.bias.double()
    return targets(y, layer.out_features, kind) - out


def collect(batches, layers: list[tuple[str, nn.Linear]], kind: str = "pm1"):
    """One pass over `batches` of (inputs of each layer as (b, d_k) float64, labels): stats of the last layer
    (A, B = ΣHᵀE, ee) and G_k = ΣH_{k−1}ᵀE_L for earlier layers, all-reduced; returns (stats, G + [None])."""
    last = layers[-1][1]
    c = last.out_features
    dev = last.weight.device
    stats = ridge.RidgeStats.zeros(last.in_features, c, dev)
    G = [ridge.RidgeStats.zeros(m.in_features, c, dev) for _, m in layers[:-1]]
    for Hs, y in batches:
        E = residual(last, Hs[-1], y, kind)
        ok = ridge.finite_rows(E, *Hs)  # a row is used by every layer or by none (no host sync)
        ridge.accumulate(stats, Hs[-1], E, rows=ok, sync=False)
        for g, H in zip(G, Hs[:-1]):
            ridge.accumulate(g, H, E, rows=ok, sync=False)  # g.B = ΣH_{k−1}ᵀE_L; g.ee is unused (= stats.ee)
    for s in (stats, *G):
        ridge.all_reduce(s)
    return stats, G + [None]


def recursive_betas(batches, layers: list[tuple[str, nn.Linear]], C: float, kind: str = "pm1") -> list[torch.Tensor]:
    """The papers' batch-by-batch recursion (fixed C): β_k = ridge(H_{k−1} → E_L) for every layer, in one pass
    over `batches` (as for `collect`); the pulled-back targets are E_L R_kᵀ and ridge is linear in its targets,
    so X_k = β_k R_kᵀ (`refine_layers(..., betas=...)`).

    The recursion is sequential over batches: under DDP each rank runs it on its shard and the β are
    averaged, which is not the exact all-data solution (the direct solver of `collect` is).
    """
    last = layers[-1][1]
    c, dev = last.out_features, last.weight.device
    rr = [ridge.RecursiveRidge(m.in_features, c, float(C), dev) for _, m in layers]
    for Hs, y in batches:
        E = residual(last, Hs[-1], y, kind)
        for r, H in zip(rr, Hs):
            r.update(H, E)
    return [dist.all_reduce_sum(r.beta) / dist.world() for r in rr]


def online_stats(layer: nn.Linear, aug: ridge.RidgeStats) -> ridge.RidgeStats:
    """Residual statistics for the current weights from the augmented sums (Â, Ŝ = ΣĤᵀT, ΣTᵀT)."""
    d = layer.in_features
    W = layer.weight.double()
    b = layer.bias.double() if layer.bias is not None else torch.zeros(W.shape[0], dtype=W.dtype, device=W.device)
    Wx = torch.cat([W, b[:, None]], 1)
    B = aug.B - aug.A @ Wx.T  # ΣĤᵀ(T − ĤŴᵀ), (d+1, c)
    WS = Wx @ aug.B  # (c, c) = ŴΣĤᵀT
    ee = aug.ee - WS - WS.T + Wx @ aug.A @ Wx.T
    return ridge.RidgeStats(aug.A[:d, :d].clone(), B[:d].clone(), ee, aug.n, aug.dropped)


@torch.no_grad()
def refine_layers(layers: list[tuple[str, nn.Linear]], mods: list[list[nn.Module]], stats=None, G=None, betas=None, *,
                  lam: float, C: float | str, grid: tuple[float, ...], form: str = "residual",
                  val: Validation | None = None) -> dict[str, Any]:  # fmt: skip
    """Solve last to first, update each W in place (never with non-finite values), pull the error back.

    Args:
        layers: the FC layers, first to last; mods: `between(model, layers)`.
        stats, G: from `collect` (or `online_stats` with G = [None]); betas: per-layer solutions for targets E_L
            already computed (`recursive_betas`) instead.
        C: a fixed C or "gcv" (with `val`: chosen on validation); grid: the C values to choose from.
        form: "residual" fits T − current output, "replace" T itself (W ← (1 − λ)W + λ·X).
        val: validation inputs of the last layer (one layer only): C chosen by the refined layer's accuracy.
    Returns what to log: `refine_C`, and `refine_skipped` when a solve gave up.
    """
    info: dict[str, Any] = {}
    R = None  # e_k = E_L R_kᵀ (error at layer k's output); None = identity (the last layer)
    for k in range(len(layers) - 1, -1, -1):
        name, layer = layers[k]
        W = layer.weight
        if betas is not None:
            s = None
        elif R is None:
            s = stats
            if form == "replace":  # fit T − b: B' = B + A Wᵀ, ee' = Σ(E + HWᵀ)ᵀ(E + HWᵀ)
                Wd = W.double()
                GW = Wd @ s.B
                s = ridge.RidgeStats(s.A, s.B + s.A @ Wd.T, s.ee + GW + GW.T + Wd @ s.A @ Wd.T, s.n, s.dropped)
        else:
            s = ridge.RidgeStats(G[k].A, G[k].B @ R.T, R @ stats.ee @ R.T, G[k].n, G[k].dropped)
        if betas is not None:
            X = betas[k] if R is None else betas[k] @ R.T
            sol = ridge.RidgeSolution(X, float(C), message="recursive solution not finite")
        else:
            score = None
            if val is not None:  # one layer: C chosen on validation by the refined layer's accuracy
                keep = 1 - lam if form == "replace" else 1.0
                score = lambda X: val(keep * W.double() + lam * X.T, None)  # noqa: E731
            sol = ridge.solve_or_warn(s, C, grid, f"mp-refine of {name}", score)
        if k == len(layers) - 1:
            info["refine_C"] = sol.C
        if not sol.ok or not torch.isfinite(sol.X).all():
            info["refine_skipped"] = f"{name}: {sol.message or 'non-finite solution'}"
            break
        dW = sol.X.T  # (out, in)
        if form == "replace" and R is None:
            new = (1 - lam) * W.double() + lam * dW
        else:
            new = W.double() + lam * dW
        W.copy_(new.to(W.dtype))
        dist.broadcast(W.data)  # every rank solved the same all-reduced problem; make it bitwise so
        if k > 0:
            M = ridge.pullback_matrix(W.detach(), sol.C)  # (in_k, out_k)
            R = lam * (M if R is None else M @ R)  # the error at layer k's input
            scale = input_scale(mods[k])  # through eval-mode BN1d: Δout = s ⊙ Δin, so e_in = e_out / s
            if scale is not None:
                tol = 1e-12 * float(scale.abs().max().clamp_min(1e-300))
                inv = torch.where(scale.abs() > tol, 1.0 / scale, torch.zeros_like(scale))  # dead unit: no error
                R = inv[:, None] * R
    return info


def ridge_head(aug: ridge.RidgeStats, layer: nn.Linear, C: float | str, grid: tuple[float, ...], score=None):
    """The ridge linear probe for `layer` from the (all-reduced) statistics of Ĥ = [H 1] and T: (solution with
    X = Wᵀ, b (None without a bias)). `score(X, b)`: choose C on validation instead (see `ridge.linear_probe`)."""
    if layer.bias is None:  # no bias to fit: the plain ridge on H (drop the column of ones)
        d = layer.in_features
        plain = ridge.RidgeStats(aug.A[:d, :d], aug.B[:d], aug.ee, aug.n, aug.dropped)
        return ridge.solve(plain, C, grid, score and (lambda X: score(X, None))), None
    return ridge.linear_probe(aug, C, grid, score)
