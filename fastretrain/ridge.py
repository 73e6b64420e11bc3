"""Streaming ridge / Moore-Penrose solver for refining FC layers (docs/fast_retrain.md).

The MP refinement of Zhang, Yang et al. ("Deep Networks with Fast Retraining", arXiv 2008.07387; Yang et
al., TPAMI 2019) solves, for features H (N×d) and targets E (N×c),

    X = argmin ‖H X − E‖² + ‖X‖²/C  =  (HᵀH + I/C)⁻¹ HᵀE                      (d×c)

without ever holding H: batches are folded into A = ΣHᵢᵀHᵢ (d×d) and B = ΣHᵢᵀEᵢ (d×c), accumulated in
float64 on the features' device, then solved once (Cholesky for a fixed C; one eigendecomposition of
A when C is chosen by generalised cross-validation, which makes every grid point's solve and score
cheap). Memory is O(d² + dc), independent of N. Under DDP the sums are all-reduced before the solve.

`RecursiveRidge` is the papers' batch-by-batch recursion (same solution); it is the test oracle and an
option of the `mp-refine` strategy. `centred` / `linear_probe` turn statistics of augmented features
[H 1] into the ridge linear probe with an unpenalised bias (mp-refine's head initialisation).

On an accelerator, `accumulate(..., sync=False)` adds a batch without any host synchronisation: rows
with non-finite values are zeroed out and counted on the device; the counts reach `n` / `dropped` once,
in `settle` (called by `solve` and `all_reduce`).

Everything here is a pure function of tensors (no model, no engine). Failure paths never produce NaN:
rows with non-finite values are dropped (and counted) while accumulating; a failed factorisation is
retried with diagonal jitter, then the solve gives up with a message (`RidgeSolution.ok` is False).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

from . import distributed as dist

GCV_GRID = tuple(10.0 ** (k / 2) for k in range(-8, 9))  # C = 1e-4 … 1e4, two points per decade
JITTERS = (1e-10, 1e-8, 1e-6, 1e-4)  # relative to the mean diagonal of A, tried in turn


@dataclass
class RidgeStats:
    """Sufficient statistics of a ridge problem, summed over batches (and ranks).

    A: (d, d) ΣHᵀH; B: (d, c) ΣHᵀE; ee: (c, c) ΣEᵀE (for the GCV residual); n: rows used;
    dropped: rows skipped because H or E was not finite; pending: (2,) device counts (used, dropped) of
    `accumulate(sync=False)` not yet added to n / dropped (see `settle`).
    """

    A: torch.Tensor
    B: torch.Tensor
    ee: torch.Tensor
    n: int = 0
    dropped: int = 0
    pending: torch.Tensor | None = None

    @classmethod
    def zeros(cls, d: int, c: int, device="cpu") -> "RidgeStats":
        z = lambda *s: torch.zeros(*s, dtype=torch.float64, device=device)  # noqa: E731
        return cls(z(d, d), z(d, c), z(c, c))


def finite_rows(*mats: torch.Tensor) -> torch.Tensor:
    """(N,) bool: rows where every given (N, ·) matrix is finite."""
    ok = torch.ones(mats[0].shape[0], dtype=torch.bool, device=mats[0].device)
    for m in mats:
        ok &= torch.isfinite(m).all(1)
    return ok


def accumulate(stats: RidgeStats, H: torch.Tensor, E: torch.Tensor, rows: torch.Tensor | None = None,
               sync: bool = True) -> RidgeStats:
    """Add one batch: H (b, d) features, E (b, c) targets, in float64. Non-finite rows are dropped and counted.

    Args:
        rows: (b,) bool, the rows to use (default all); non-finite rows are dropped from them too.
        sync: False adds the batch without a host synchronisation (dropped rows are zeroed, not removed,
            and counted on the device until `settle`); the sums are the same.
    """
    H, E = H.detach().flatten(1).double(), E.detach().double()
    ok = finite_rows(H, E)
    if rows is not None:
        ok &= rows
    if sync:
        if not bool(ok.all()):
            stats.dropped += int((~ok).sum())
            H, E = H[ok], E[ok]
        stats.n += H.shape[0]
    else:
        # NaN·0 is NaN: select rather than multiply
        H, E = torch.where(ok[:, None], H, 0.0), torch.where(ok[:, None], E, 0.0)
        counts = torch.stack([ok.sum(), (~ok).sum()])
        stats.pending = counts if stats.pending is None else stats.pending + counts
    stats.A.addmm_(H.T, H)
    stats.B.addmm_(H.T, E)
    stats.ee.addmm_(E.T, E)
    return stats


def settle(stats: RidgeStats) -> RidgeStats:
    """Fold the device-side row counts of `accumulate(sync=False)` into n / dropped (one host sync)."""
    if stats.pending is not None:
        used, dropped = (int(v) for v in stats.pending.tolist())
        stats.n, stats.dropped, stats.pending = stats.n + used, stats.dropped + dropped, None
    return stats


def all_reduce(stats: RidgeStats) -> RidgeStats:
    """Sum the statistics over DDP ranks (in place), so every rank solves the same problem."""
    settle(stats)
    if dist.world() > 1:
        for t in (stats.A, stats.B, stats.ee):
            dist.all_reduce_sum(t)
        counts = dist.all_reduce_sum(torch.tensor([stats.n, stats.dropped], dtype=torch.float64, device=stats.A.device))
        stats.n, stats.dropped = (int(v) for v in counts.tolist())
    return stats


def closed_form(H: torch.Tensor, E: torch.Tensor, C: float) -> torch.Tensor:
    """Reference one-shot solution (HᵀH + I/C)⁻¹HᵀE in float64 (C = inf: minimum-norm least squares)."""
    H, E = H.double(), E.double()
    if math.isinf(C):
        return torch.linalg.pinv(H) @ E
    A = H.T @ H + torch.eye(H.shape[1], dtype=torch.float64, device=H.device) / C
    return torch.linalg.solve(A, H.T @ E)


class RecursiveRidge:
    """The papers' batch-by-batch recursion for the same ridge solution (fixed, finite C).

    K₁ = (I/C + X₁ᵀX₁)⁻¹, β₁ = K₁X₁ᵀT₁; then Kᵢ = Kᵢ₋₁ − Kᵢ₋₁Xᵢᵀ(I + XᵢKᵢ₋₁Xᵢᵀ)⁻¹XᵢKᵢ₋₁ and
    βᵢ = βᵢ₋₁ + KᵢXᵢᵀ(Tᵢ − Xᵢβᵢ₋₁). Starting from K₀ = C·I, β₀ = 0 gives exactly the first step.
    Cost per batch O(d²b): it keeps a d×d inverse, so the one-shot streaming solve is preferred.
    """

    def __init__(self, d: int, c: int, C: float, device="cpu"):
        if not (C > 0 and math.isfinite(C)):
            raise ValueError(f"the recursive ridge update needs a finite C > 0, got {C}")
        self.K = torch.eye(d, dtype=torch.float64, device=device) * C  # (d, d)
        self.beta = torch.zeros(d, c, dtype=torch.float64, device=device)  # (d, c)
        self.n = self.dropped = 0

    def update(self, H: torch.Tensor, E: torch.Tensor) -> None:
        H, E = H.detach().flatten(1).double(), E.detach().double()
        ok = finite_rows(H, E)
        if not bool(ok.all()):
            self.dropped += int((~ok).sum())
            H, E = H[ok], E[ok]
        if H.shape[0] == 0:
            return
        KH = self.K @ H.T  # (d, b)
        S = torch.eye(H.shape[0], dtype=torch.float64, device=H.device) + H @ KH  # (b, b), SPD
        self.K = self.K - KH @ torch.linalg.solve(S, KH.T)
        self.K = (self.K + self.K.T) / 2  # keep it symmetric against round-off drift
        self.beta = self.beta + self.K @ (H.T @ (E - H @ self.beta))
        self.n += H.shape[0]


def recursive_ridge(batches, C: float) -> torch.Tensor:
    """Run `RecursiveRidge` over an iterable of (H, E) batches; return β (d, c)."""
    rr = None
    for H, E in batches:
        if rr is None:
            rr = RecursiveRidge(H.flatten(1).shape[1], E.shape[1], C, H.device)
        rr.update(H, E)
    if rr is None:
        raise ValueError("no batches")
    return rr.beta


def gcv_scores(evals: torch.Tensor, Z: torch.Tensor, ee_trace: float, n: int, grid=GCV_GRID) -> torch.Tensor:
    """GCV(C) = (RSS/n) / (1 − tr(S_C)/n)² for every C of `grid`, from the eigendecomposition of A.

    With A = QΛQᵀ and Z = QᵀB: tr(S_C) = Σ λᵢ/(λᵢ+α) and RSS = ‖E‖² − Σᵢ ‖zᵢ‖² (λᵢ+2α)/(λᵢ+α)², α = 1/C.
    Grid points with n − tr(S_C) ≤ 1e-9·n (interpolation, d ≥ n) score +inf.
    """
    lam = evals.clamp_min(0)[:, None]  # (d, 1)
    alpha = 1.0 / torch.tensor(grid, dtype=torch.float64, device=evals.device)[None]  # (1, G)
    zz = (Z * Z).sum(1, keepdim=True)  # (d, 1)
    trace = (lam / (lam + alpha)).sum(0)  # (G,)
    rss = (ee_trace - (zz * (lam + 2 * alpha) / (lam + alpha) ** 2).sum(0)).clamp_min(0)
    dof = n - trace
    scores = (rss / n) / (dof / n) ** 2
    return torch.where(dof > 1e-9 * n, scores, torch.full_like(scores, math.inf))


@dataclass
class RidgeSolution:
    """X (d, c) or None when the solve gave up; the C used; jitter added to A's diagonal; a message."""

    X: torch.Tensor | None
    C: float
    jitter: float = 0.0
    message: str = ""
    gcv: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.X is not None


def _eig_solve(A, B, ee_trace, n, C, grid, score=None):
    evals, Q = torch.linalg.eigh(A)
    if not (torch.isfinite(evals).all() and torch.isfinite(Q).all()):
        raise torch.linalg.LinAlgError("eigendecomposition not finite")
    Z = Q.T @ B  # (d, c)
    scores = []
    if score is not None:  # every grid point's solution, kept by its score; ties go to the smaller C
        lam, best = evals.clamp_min(0), None
        for c in sorted(grid):
            X = Q @ (Z / (lam + 1.0 / c)[:, None])
            key = score(X)
            scores.append(key[0] if isinstance(key, tuple) else key)
            if torch.isfinite(X).all() and (best is None or key > best[0]):
                best = (key, X, float(c))
        if best is None:
            raise torch.linalg.LinAlgError("no grid value of C gives a finite solution")
        return best[1], best[2], scores
    if C == "gcv":
        s = gcv_scores(evals, Z, ee_trace, n, grid)
        scores = s.tolist()
        if not torch.isfinite(s).any():
            raise torch.linalg.LinAlgError("no grid value of C gives a finite GCV score")
        C = float(grid[int(torch.argmin(torch.nan_to_num(s, nan=math.inf)))])
    lam = evals.clamp_min(0)
    if math.isinf(C):  # minimum-norm least squares: invert only the numerically non-zero eigenvalues
        tol = lam.max().clamp_min(1e-300) * A.shape[0] * torch.finfo(torch.float64).eps
        inv = torch.where(lam > tol, 1.0 / lam.clamp_min(1e-300), torch.zeros_like(lam))
    else:
        inv = 1.0 / (lam + 1.0 / C)
    return Q @ (inv[:, None] * Z), C, scores


def solve(stats: RidgeStats, C: float | str = "gcv", grid=GCV_GRID, score=None) -> RidgeSolution:
    """Solve (A + I/C) X = B for the accumulated statistics.

    Args:
        C: a ridge strength (> 0; inf = plain least squares) solved by Cholesky, or "gcv" to choose it
            from `grid` by generalised cross-validation (one eigendecomposition of A).
        score: instead of C, keep the grid point whose solution ranks highest by `score(X)` (see
            `solve_on_validation`); the `gcv` field of the result then holds the scores, C ascending.
    Returns a RidgeSolution; `X` is None (with a message) when A/B are not finite, nothing was
    accumulated, or the factorisation failed even with jitter. The result never contains NaN.
    """
    settle(stats)
    A, B = stats.A, stats.B
    if stats.n == 0:
        return RidgeSolution(None, math.nan, message=f"no finite rows to fit ({stats.dropped} dropped)")
    if not (torch.isfinite(A).all() and torch.isfinite(B).all() and torch.isfinite(stats.ee).all()):
        return RidgeSolution(None, math.nan, message="accumulated statistics are not finite")
    if C != "gcv" and not (isinstance(C, (int, float)) and C > 0):
        raise ValueError(f"C must be a number > 0 or 'gcv', got {C!r}")
    d = A.shape[0]
    eye = torch.eye(d, dtype=torch.float64, device=A.device)
    scale = float(A.diagonal().mean().clamp_min(1e-12))  # jitter is relative to A's size
    ee_trace = float(stats.ee.trace())
    last = ""
    for jitter in (0.0, *(j * scale for j in JITTERS)):
        Aj = A + jitter * eye if jitter else A
        try:
            if score is not None or C == "gcv" or math.isinf(C):
                X, used, scores = _eig_solve(Aj, B, ee_trace, stats.n, C, grid, score)
            else:
                L, info = torch.linalg.cholesky_ex(Aj + eye / C)
                if int(info) != 0:
                    raise torch.linalg.LinAlgError(f"Cholesky failed (leading minor {int(info)} not positive)")
                X, used, scores = torch.cholesky_solve(B, L), float(C), []
        except (torch.linalg.LinAlgError, RuntimeError) as e:
            last = str(e).splitlines()[0]
            continue
        if torch.isfinite(X).all():
            return RidgeSolution(X, used, jitter, "" if not jitter else f"solved with jitter {jitter:.3g}", scores)
        last = "solution not finite"
    msg = f"ridge solve failed after jitter up to {JITTERS[-1]:g}×mean diag: {last}"
    return RidgeSolution(None, math.nan, message=msg)


def solve_on_validation(stats: RidgeStats, score, grid=GCV_GRID) -> RidgeSolution:
    """Solve (A + I/C) X = B for every C of `grid` from one eigendecomposition of A and keep the C whose
    solution `score(X)` ranks highest (a tuple or number, e.g. (validation accuracy, −validation loss)); ties go
    to the smaller C (the stronger ridge). The GCV alternative chooses C from the training statistics alone and
    is unreliable when d ≥ n (near interpolation its RSS is a difference of nearly equal sums).

    `solve(stats, grid=grid, score=score)`: the same guards, jitter and result; the solution's `gcv` field holds
    the scores' first components, C ascending.
    """
    return solve(stats, grid=grid, score=score)


def solve_or_warn(stats: RidgeStats, C: float | str = "gcv", grid=GCV_GRID, what: str = "ridge solve",
                  score=None) -> RidgeSolution:
    """`solve`, warning (RuntimeWarning) when rows were dropped, jitter was needed, or the solve gave up."""
    if stats.dropped:
        msg = f"{what}: {stats.dropped} row(s) with non-finite features or targets were skipped"
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
    sol = solve(stats, C, grid, score)
    if not sol.ok:
        warnings.warn(f"{what} skipped: {sol.message}", RuntimeWarning, stacklevel=2)
    elif sol.jitter:
        warnings.warn(f"{what}: {sol.message}", RuntimeWarning, stacklevel=2)
    return sol


def centred(aug: RidgeStats) -> tuple[RidgeStats, torch.Tensor, torch.Tensor]:
    """Statistics of the centred problem from those of augmented features Ĥ = [H 1] (last column of ones).

    Returns (stats of H − h̄ → T − t̄, h̄ (d,), t̄ (c,)): A = ΣHᵀH − n h̄h̄ᵀ, B = ΣHᵀT − n h̄t̄ᵀ,
    ee = ΣTᵀT − n t̄t̄ᵀ. Fitting the centred problem is ridge with an unpenalised bias.
    """
    settle(aug)
    d, n = aug.A.shape[0] - 1, max(aug.n, 1)
    hbar, tbar = aug.A[:d, d] / n, aug.B[d] / n  # ΣH / n, ΣT / n
    A = aug.A[:d, :d] - n * torch.outer(hbar, hbar)
    B = aug.B[:d] - n * torch.outer(hbar, tbar)
    ee = aug.ee - n * torch.outer(tbar, tbar)
    return RidgeStats(A, B, ee, aug.n, aug.dropped), hbar, tbar


def linear_probe(aug: RidgeStats, C: float | str = "gcv", grid=GCV_GRID,
                 score=None) -> tuple[RidgeSolution, torch.Tensor | None]:
    """The ridge linear probe [W b] = argmin ‖HWᵀ + 1bᵀ − T‖² + ‖W‖²/C (bias not penalised).

    Args:
        aug: statistics of Ĥ = [H 1] and the targets T (`accumulate(aug, [H 1], T)`).
        score: instead of C, keep the grid point whose probe ranks highest by `score(X, b)` (`solve`).
    Returns (solution with X = Wᵀ (d, c) and the C used, b (c,)); b is None when the solve gave up.
    """
    stats, hbar, tbar = centred(aug)
    bias = lambda X: tbar - hbar @ X  # noqa: E731  (the unpenalised bias of the centred solution X)
    sol = solve(stats, C, grid, None if score is None else lambda X: score(X, bias(X)))
    return sol, (bias(sol.X) if sol.ok else None)


def pullback_matrix(W: torch.Tensor, C: float) -> torch.Tensor:
    """M = (WᵀW + I/C)⁻¹Wᵀ (in × out) for a layer W (out × in): maps an output error to an input error.

    Computed as Wᵀ(WWᵀ + I/C)⁻¹ (the same matrix; the out×out system is the smaller one); C = inf gives
    the pseudo-inverse W⁺.
    """
    W = W.double()
    if math.isinf(C):
        return torch.linalg.pinv(W)
    G = W @ W.T + torch.eye(W.shape[0], dtype=torch.float64, device=W.device) / C
    return torch.linalg.solve(G, W).T
