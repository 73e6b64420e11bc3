"""The streaming ridge solver against closed forms (float64), the papers' recursion, a brute-force GCV,
and its failure paths (d > N, duplicated columns, zero features, NaN, failed Cholesky)."""
import math
import warnings

import pytest
import torch

from fastretrain import ridge

REL = 1e-6  # issue 4: streaming = closed form to 1e-6 relative in float64


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def problem(n=103, d=12, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(n, d, generator=g, dtype=torch.float64) * torch.linspace(0.1, 3, d, dtype=torch.float64)
    E = torch.randn(n, c, generator=g, dtype=torch.float64)
    return H, E


def stream(H, E, bs):
    s = ridge.RidgeStats.zeros(H.shape[1], E.shape[1])
    for h, e in zip(H.split(bs), E.split(bs)):
        ridge.accumulate(s, h, e)
    return s


@pytest.mark.parametrize("bs", [1, 7, 25, 50, 103, 500])  # 103 = 4*25+3: a final partial batch
@pytest.mark.parametrize("C", [1e-3, 4.0, 1e4])
def test_streaming_equals_closed_form(bs, C):
    H, E = problem()
    s = stream(H, E, bs)
    assert s.n == 103 and s.dropped == 0
    ref = ridge.closed_form(H, E, C)
    sol = ridge.solve(s, C)
    assert sol.ok and sol.C == C and sol.jitter == 0
    assert rel(sol.X, ref) <= REL
    # the A, B sums themselves
    assert rel(s.A, H.T @ H) <= 1e-12 and rel(s.B, H.T @ E) <= 1e-12 and rel(s.ee, E.T @ E) <= 1e-12


@pytest.mark.parametrize("bs", [1, 10, 25, 103])
@pytest.mark.parametrize("C", [0.01, 4.0, 100.0])
def test_recursive_update_agrees(bs, C):
    H, E = problem()
    ref = ridge.closed_form(H, E, C)
    beta = ridge.recursive_ridge(zip(H.split(bs), E.split(bs)), C)
    assert rel(beta, ref) <= REL
    assert rel(beta, ridge.solve(stream(H, E, bs), C).X) <= REL


def test_recursive_first_step_is_papers_K1():
    H, E = problem(n=20)
    C = 4.0
    rr = ridge.RecursiveRidge(12, 3, C)
    rr.update(H[:8], E[:8])
    K1 = torch.linalg.inv(torch.eye(12, dtype=torch.float64) / C + H[:8].T @ H[:8])
    assert rel(rr.K, K1) <= 1e-10
    assert rel(rr.beta, K1 @ H[:8].T @ E[:8]) <= 1e-10


def brute_gcv(H, E, grid):
    n, d = H.shape
    scores = []
    for C in grid:
        Ainv = torch.linalg.inv(H.T @ H + torch.eye(d, dtype=torch.float64) / C)
        X = Ainv @ H.T @ E
        rss = float(((E - H @ X) ** 2).sum())
        tr = float(torch.trace(H @ Ainv @ H.T))
        scores.append((rss / n) / (1 - tr / n) ** 2)
    return scores


@pytest.mark.parametrize("seed,noise", [(0, 0.1), (1, 1.0), (2, 5.0)])
def test_gcv_picks_brute_force_minimum(seed, noise):
    g = torch.Generator().manual_seed(seed)
    H = torch.randn(60, 20, generator=g, dtype=torch.float64)
    H[:, 10:] *= 1e-2  # a spread spectrum so the choice of C matters
    W = torch.randn(20, 4, generator=g, dtype=torch.float64)
    E = H @ W + noise * torch.randn(60, 4, generator=g, dtype=torch.float64)
    brute = brute_gcv(H, E, ridge.GCV_GRID)
    sol = ridge.solve(stream(H, E, 16), "gcv")
    assert sol.ok
    assert max(abs(a - b) / b for a, b in zip(sol.gcv, brute)) <= 1e-8
    best = ridge.GCV_GRID[min(range(len(brute)), key=brute.__getitem__)]
    assert sol.C == best
    assert rel(sol.X, ridge.closed_form(H, E, best)) <= REL


def test_gcv_grid_is_1e_minus4_to_1e4():
    assert ridge.GCV_GRID[0] == pytest.approx(1e-4) and ridge.GCV_GRID[-1] == pytest.approx(1e4)
    assert len(ridge.GCV_GRID) >= 9


def test_more_features_than_rows():
    H, E = problem(n=10, d=40)  # d > N: HᵀH singular
    for C in (4.0, 1e4):
        sol = ridge.solve(stream(H, E, 3), C)
        assert sol.ok and rel(sol.X, ridge.closed_form(H, E, C)) <= REL
    sol = ridge.solve(stream(H, E, 3), "gcv")  # interpolating grid points score inf, others compete
    assert sol.ok and torch.isfinite(sol.X).all() and rel(sol.X, ridge.closed_form(H, E, sol.C)) <= REL
    sol = ridge.solve(stream(H, E, 3), math.inf)  # minimum-norm least squares
    assert sol.ok and rel(sol.X, torch.linalg.pinv(H) @ E) <= REL


def test_duplicated_columns():
    H, E = problem(d=6)
    H = torch.cat([H, H[:, :3]], 1)  # rank 6 of 9
    for C in (4.0, 1e4, "gcv"):
        sol = ridge.solve(stream(H, E, 10), C)
        assert sol.ok and rel(sol.X, ridge.closed_form(H, E, sol.C)) <= REL
    sol = ridge.solve(stream(H, E, 10), math.inf)
    assert sol.ok and rel(sol.X, torch.linalg.pinv(H) @ E) <= 1e-6
    assert torch.allclose(sol.X[:3], sol.X[6:], atol=1e-9)  # minimum norm splits the weight evenly


def test_all_zero_features():
    E = problem()[1]
    H = torch.zeros(103, 8, dtype=torch.float64)
    for C in (4.0, "gcv", math.inf):
        sol = ridge.solve(stream(H, E, 10), C)
        assert sol.ok and torch.equal(sol.X, torch.zeros(8, 3, dtype=torch.float64))


def test_nan_rows_are_dropped_and_counted():
    H, E = problem()
    Hb, Eb = H.clone(), E.clone()
    Hb[[3, 50]] = math.nan
    Eb[77, 1] = math.inf
    s = stream(Hb, Eb, 25)
    assert s.n == 100 and s.dropped == 3
    keep = torch.ones(103, dtype=torch.bool)
    keep[[3, 50, 77]] = False
    with pytest.warns(RuntimeWarning, match="3 row"):
        sol = ridge.solve_or_warn(s, 4.0)
    assert rel(sol.X, ridge.closed_form(H[keep], E[keep], 4.0)) <= REL


def test_all_nan_is_skipped_with_warning():
    H = torch.full((20, 5), math.nan, dtype=torch.float64)
    s = stream(H, torch.ones(20, 2, dtype=torch.float64), 8)
    with pytest.warns(RuntimeWarning, match="skipped"):
        sol = ridge.solve_or_warn(s, "gcv")
    assert not sol.ok and sol.X is None


def test_non_finite_statistics_are_skipped():
    s = stream(*problem(), 25)
    s.A[0, 0] = math.inf  # e.g. overflow
    sol = ridge.solve(s, 4.0)
    assert not sol.ok and "not finite" in sol.message


def test_failed_cholesky_retried_with_jitter():
    s = ridge.RidgeStats.zeros(3, 2)
    s.A = torch.diag(torch.tensor([1.0, 1.0, -1e-9], dtype=torch.float64))  # round-off made A indefinite
    s.B = torch.ones(3, 2, dtype=torch.float64)
    s.ee = torch.eye(2, dtype=torch.float64) * 3
    s.n = 3
    with pytest.warns(RuntimeWarning, match="jitter"):
        sol = ridge.solve_or_warn(s, 1e12)
    assert sol.ok and sol.jitter > 0 and torch.isfinite(sol.X).all()


def test_hopeless_matrix_gives_up_without_nan():
    s = ridge.RidgeStats.zeros(3, 2)
    s.A = -torch.eye(3, dtype=torch.float64)  # negative definite: no jitter in range fixes it
    s.n = 3
    sol = ridge.solve(s, 1e12)
    assert not sol.ok and sol.X is None and "failed" in sol.message
    assert not ridge.solve(ridge.RidgeStats.zeros(3, 2), 4.0).ok  # nothing accumulated


def test_bad_C_is_an_error():
    with pytest.raises(ValueError):
        ridge.solve(stream(*problem(), 25), -1.0)
    with pytest.raises(ValueError):
        ridge.RecursiveRidge(3, 2, math.inf)


def test_pullback_matrix():
    g = torch.Generator().manual_seed(3)
    W = torch.randn(4, 9, generator=g, dtype=torch.float64)  # out 4, in 9
    for C in (0.5, 4.0):
        ref = torch.linalg.inv(W.T @ W + torch.eye(9, dtype=torch.float64) / C) @ W.T
        assert rel(ridge.pullback_matrix(W, C), ref) <= 1e-10
    assert rel(ridge.pullback_matrix(W, math.inf), torch.linalg.pinv(W)) <= 1e-10


def test_float32_input_is_accumulated_in_float64():
    H, E = problem()
    s = stream(H.float(), E.float(), 10)
    assert s.A.dtype == torch.float64
    assert rel(ridge.solve(s, 4.0).X, ridge.closed_form(H.float().double(), E.float().double(), 4.0)) <= REL


def test_all_reduce_is_identity_on_one_process():
    s = stream(*problem(), 25)
    A = s.A.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ridge.all_reduce(s)
    assert torch.equal(s.A, A) and s.n == 103


@pytest.mark.parametrize("bs", [7, 103])
def test_accumulate_without_host_sync_equals_the_synced_one(bs):
    H, E = problem()
    Hb, Eb = H.clone(), E.clone()
    Hb[[3, 50]] = math.nan
    Eb[77, 1] = math.inf
    rows = torch.ones(103, dtype=torch.bool)
    rows[10] = False  # a row the caller leaves out
    a, b = ridge.RidgeStats.zeros(12, 3), ridge.RidgeStats.zeros(12, 3)
    for h, e, r in zip(Hb.split(bs), Eb.split(bs), rows.split(bs)):
        ridge.accumulate(a, h, e, rows=r)
        ridge.accumulate(b, h, e, rows=r, sync=False)
    assert b.pending is not None and b.n == 0  # counted on the device until settled
    keep = rows.clone()
    keep[[3, 50, 77]] = False
    ref = ridge.closed_form(H[keep], E[keep], 4.0)
    for s in (a, b):
        sol = ridge.solve(s, 4.0)  # solve settles the counts
        assert (s.n, s.dropped, s.pending) == (99, 4, None)
        assert rel(sol.X, ref) <= REL and rel(s.ee, E[keep].T @ E[keep]) <= 1e-12


def test_linear_probe_has_an_unpenalised_bias():
    H, E = problem()
    H = H + 5.0  # features far from zero: a penalised bias would be visibly off
    aug = ridge.RidgeStats.zeros(13, 3)
    Hx = torch.cat([H, torch.ones(103, 1, dtype=torch.float64)], 1)
    for h, e in zip(Hx.split(10), E.split(10)):
        ridge.accumulate(aug, h, e, sync=False)
    for C in (0.01, 4.0):
        sol, b = ridge.linear_probe(aug, C)
        # reference: minimise ‖HW + 1b − E‖² + ‖W‖²/C by one solve with an unpenalised last column
        P = torch.eye(13, dtype=torch.float64) / C
        P[12, 12] = 0
        ref = torch.linalg.solve(Hx.T @ Hx + P, Hx.T @ E)
        assert rel(sol.X, ref[:12]) <= REL and rel(b, ref[12]) <= REL
    sol, b = ridge.linear_probe(aug, "gcv")
    mean_h, mean_e = H.mean(0), E.mean(0)
    X = ridge.closed_form(H - mean_h, E - mean_e, sol.C)
    assert sol.C in ridge.GCV_GRID and rel(sol.X, X) <= REL and rel(b, mean_e - mean_h @ X) <= REL


def test_solve_on_validation_keeps_the_best_scoring_grid_solution():
    H, E = problem()
    Hv, Ev = problem(n=40, seed=1)
    s = stream(H, E, 16)
    score = lambda X: -float(((Hv @ X - Ev) ** 2).sum())  # noqa: E731
    sol = ridge.solve_on_validation(s, score)
    brute = [score(ridge.solve(s, C).X) for C in ridge.GCV_GRID]  # one Cholesky solve per C: the reference
    best = ridge.GCV_GRID[max(range(len(brute)), key=brute.__getitem__)]
    assert sol.C == best and rel(sol.X, ridge.solve(s, best).X) <= 1e-8
    assert max(abs(a - b) / abs(b) for a, b in zip(sol.gcv, brute)) <= 1e-8  # every C scored, C ascending


def test_solve_on_validation_ties_go_to_the_strongest_ridge_and_bad_input_gives_no_solution():
    H, E = problem()
    assert ridge.solve_on_validation(stream(H, E, 16), lambda X: 1.0).C == min(ridge.GCV_GRID)
    bad = stream(H, E, 16)
    bad.A[0, 0] = math.nan
    sol = ridge.solve_on_validation(bad, lambda X: 1.0)
    assert not sol.ok and "not finite" in sol.message
