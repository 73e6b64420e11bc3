"""Protocol v3: the delivered-model curve, equal budgets, timing resolution and the seed-count rule."""
import math

import pytest

from fastretrain import evidence as ev


def h(epoch, wall, val, test=None, val_loss=1.0, **kw):
    d = {"epoch": epoch, "wall_seconds": wall, "val_acc": val, "val_loss": val_loss, **kw}
    if test is not None:
        d["test_acc"] = test
    return d


def test_a_head_that_reaches_the_target_then_falls_counts_only_if_validation_returns_it():
    # the head (epoch 0) scores 0.90 on test; SGD then falls to 0.60 and ends at 0.80
    falls = [h(0, 2.0, 0.70, 0.90), h(1, 10.0, 0.75, 0.60), h(2, 20.0, 0.80, 0.80)]
    # validation prefers epoch 1 to the head, so from 10 s on the run returns the 0.60 model
    assert ev.delivered(falls) == [(2.0, 0.90), (10.0, 0.60), (20.0, 0.80)]
    assert ev.time_to(falls, 0.85) == 2.0  # the head was returnable at 2 s (scored on validation, eligible)
    assert ev.acc_at(falls, 15.0) == 0.60 and ev.final(falls) == 0.80
    # validation keeps preferring the head: the run keeps delivering it
    kept = [h(0, 2.0, 0.90, 0.90), h(1, 10.0, 0.75, 0.60), h(2, 20.0, 0.80, 0.80)]
    assert ev.delivered(kept) == [(2.0, 0.90), (10.0, 0.90), (20.0, 0.90)]
    # a head logged the old way (init_head_test_acc inside epoch 1, never eligible) is no point at all
    old = [{"epoch": 1, "wall_seconds": 10.0, "val_acc": 0.75, "val_loss": 1.0, "test_acc": 0.60,
            "init_head_test_acc": 0.90, "init_head_seconds": 1.0, "epoch_seconds": 9.0}]
    assert ev.delivered(old) == [(10.0, 0.60)] and ev.time_to(old, 0.85) is None


def test_delivered_curve_follows_the_engines_selection_rule():
    # ties on val_acc go to the lower val_loss, then to the earlier epoch; ineligible epochs are never chosen
    hist = [h(1, 1.0, 0.5, 0.50, 0.9), h(2, 2.0, 0.5, 0.55, 0.8), h(3, 3.0, 0.5, 0.70, 0.8),
            h(4, 4.0, 0.9, 0.99, 0.1, eligible=False), h(5, 5.0, 0.6, 0.65, 0.9)]
    assert [a for _, a in ev.delivered(hist)] == [0.50, 0.55, 0.55, 0.55, 0.65]
    # test scored only when validation improved (test_eval="improved"): the delivered accuracy carries over
    sparse = [h(1, 1.0, 0.5, 0.50), h(2, 2.0, 0.4), h(3, 3.0, 0.7, 0.72)]
    assert ev.delivered(sparse) == [(1.0, 0.50), (2.0, 0.50), (3.0, 0.72)]
    assert ev.acc_at(sparse, 0.5) is None  # nothing delivered before the first scored model


def test_verdict_rules_and_seed_count():
    assert ev.verdict([1.0, 2.0, 3.0]) == "gain"  # mean 2, std 1
    # mean -0.27, std 1.1: the floor -1.37 fails "no loss"; mean + std > 0: not a loss beyond one std either
    assert ev.verdict([-0.27 + d for d in (-1.1, 0.0, 1.1)]) == "inconclusive"
    assert ev.verdict([0.67 + d for d in (-1.89, 0.0, 1.89)]) == "inconclusive"  # a positive mean, floor -1.22
    assert ev.verdict([-0.2, -0.1, 0.0]) == "no loss"
    assert ev.verdict([-0.5, -0.4, -0.3]) == "loss"  # mean below -0.3, mean + std -0.3 < 0
    assert ev.verdict([-0.2, -2.0, 1.0]) == "inconclusive"  # mean -0.4, std 1.5: mean + std > 0
    assert ev.verdict([5.0, 6.0]) is None  # two seeds: no verdict, counted nowhere


def test_timing_inside_the_controls_spread_is_unresolved():
    s = ev.spread([1.0, 1.1, 0.95, 1.05])
    assert s == pytest.approx(1.1 / 0.95)
    assert ev.resolved(0.95, s) == "unresolved" and ev.resolved(1.1, s) == "unresolved"
    assert ev.resolved(0.5, s) == "faster" and ev.resolved(2.0, s) == "slower"
    assert ev.resolved(math.inf, s) == "never" and ev.resolved(0.5, None) == "unresolved"
    assert ev.spread([1.0]) is None


def test_binomial_standard_error():
    assert ev.binomial_se_pt(0.9, 1000) == pytest.approx(100 * math.sqrt(0.09 / 1000))
    assert ev.binomial_se_pt(1.0, 10) == 0.0


def test_control_work_is_timed():
    assert 0 < ev.control_work(repeats=1) < 60


def test_mean_curve_and_time_ratio():
    from fastretrain import evidence as ev

    a = [{"epoch": 1, "wall_seconds": 1.0, "val_acc": 0.5, "val_loss": 1.0, "test_acc": 0.6},
         {"epoch": 2, "wall_seconds": 2.0, "val_acc": 0.7, "val_loss": 1.0, "test_acc": 0.8}]
    b = [{"epoch": 1, "wall_seconds": 1.5, "val_acc": 0.5, "val_loss": 1.0, "test_acc": 0.4}]
    ys = ev.mean_curve([a, b], [0.5, 1.2, 1.6, 3.0])
    assert math.isnan(ys[0]) and math.isnan(ys[1])  # b has delivered nothing yet
    assert ys[2] == pytest.approx(0.5) and ys[3] == pytest.approx(0.6)
    assert ev.time_ratio(5.0, 10.0) == 0.5 and ev.time_ratio(5.0, None) == 0.0
    assert ev.time_ratio(None, 10.0) == math.inf and ev.time_ratio(None, None) is None
