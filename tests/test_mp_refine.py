"""MP refinement against closed forms: residual / replace forms, multi-FC pull-back (through BatchNorm1d on
vgg-small against a float64 reference), GCV, the recursive solver, online features, guards, logged metrics, the
ridge head before epoch 1 (= the closed-form linear probe), the refinement schedule (until / every / min_gain),
the fast-retrain recipe, and 2-process gloo DDP."""
import copy
import math
import os
import socket
import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import fastretrain as fr
from fastretrain import ridge
from fastretrain.data import DataBundle, FeatureTensors
from fastretrain.engine import Strategy
from fastretrain.strategies.mp_refine import SCALE_GRID, MPRefine, targets
from fastretrain.strategies.random_freeze import RandomFreeze

REL = 1e-6


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def features(n=60, d=8, c=3, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    centers = torch.randn(c, d, generator=g) * 3
    H = centers[y] + spread * torch.randn(n, d, generator=g)
    return H, y


def feature_engine(model, H, y, strategies=(), epochs=1, lr=0.01, **kw):
    """An engine whose 'images' are feature vectors: the forward is the FC head itself."""
    cfg = fr.make_config(method="sgdm", model="tiny-cnn", epochs=epochs, batch_size=16, lr=lr, progress=False,
                         device="cpu", **kw)
    cfg.out = None
    classes = [str(i) for i in range(int(y.max()) + 1)]
    data = DataBundle(FeatureTensors(H, y), FeatureTensors(H[:20], y[:20]), classes, "features")
    return fr.Engine(model, data, cfg, list(strategies))


def linear(d=8, c=3, seed=1):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, c))


def mlp(d=8, h=6, c=3, seed=1):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c))


def test_targets():
    y = torch.tensor([0, 2])
    assert targets(y, 3).tolist() == [[1, -1, -1], [-1, -1, 1]]
    assert targets(y, 3, "01").tolist() == [[1, 0, 0], [0, 0, 1]]


@pytest.mark.parametrize("C,lam,target", [(4.0, 0.5, "pm1"), (0.1, 1.0, "01"), (1e3, 0.3, "pm1")])
def test_residual_form_is_the_closed_form_increment(C, lam, target):
    H, y = features()
    model = linear()
    W0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    info = MPRefine(lam=lam, C=C, target=target, batch_size=7).refine(feature_engine(model, H, y))
    E = targets(y, 3, target) - (H.double() @ W0.double().T + b0.double())
    expect = W0.double() + lam * ridge.closed_form(H, E, C).T
    assert rel(model[0].weight, expect) <= REL
    assert torch.equal(model[0].bias, b0)  # the bias is left unchanged
    assert info["refine_C"] == C


def test_replace_lambda1_least_squares_on_separable_features():
    H, y = features(spread=0.3)
    model = linear()
    b0 = model[0].bias.detach().clone()
    e = feature_engine(model, H, y)
    MPRefine(lam=1.0, C=math.inf, form="replace").refine(e)
    T = targets(y, 3)
    X = torch.linalg.pinv(H.double()) @ (T - b0.double())  # least squares with the bias kept
    assert rel(model[0].weight, X.T) <= REL
    ls_pred = (H.double() @ X + b0.double()).argmax(1)
    with torch.no_grad():
        head_pred = model(H).argmax(1)
    assert torch.equal(head_pred, ls_pred)
    _, acc = e.evaluate(e.train_data)
    assert acc == pytest.approx(float((ls_pred == y).double().mean())) and acc == 1.0


def test_replace_with_lambda_blends():
    H, y = features()
    model = linear()
    W0, b0 = model[0].weight.detach().clone().double(), model[0].bias.detach().clone().double()
    MPRefine(lam=0.5, C=2.0, form="replace").refine(feature_engine(model, H, y))
    X = ridge.closed_form(H, targets(y, 3) - b0, 2.0)
    assert rel(model[0].weight, 0.5 * W0 + 0.5 * X.T) <= REL


def test_gcv_choice_matches_the_solver():
    H, y = features(spread=2.0)
    model = linear()
    W0, b0 = model[0].weight.detach().clone().double(), model[0].bias.detach().clone().double()
    info = MPRefine().refine(feature_engine(model, H, y))  # defaults: C by GCV, λ = 0.5
    E = targets(y, 3) - (H.double() @ W0.T + b0)
    s = ridge.accumulate(ridge.RidgeStats.zeros(8, 3), H, E)
    sol = ridge.solve(s, "gcv")
    assert info["refine_C"] == sol.C and sol.C in ridge.GCV_GRID
    assert rel(model[0].weight, W0 + 0.5 * sol.X.T) <= REL


def expected_two_layer(model, H, y, C, lam):
    """Last to first by hand: ΔW₂ = ridge(H₁ → E); e₁ = λ(W₂ᵀW₂ + I/C)⁻¹W₂ᵀe₂ with the refined W₂."""
    W1, b1 = model[0].weight.detach().double(), model[0].bias.detach().double()
    W2, b2 = model[2].weight.detach().double(), model[2].bias.detach().double()
    H0 = H.double()
    H1 = torch.relu(H0 @ W1.T + b1)
    E = targets(y, 3) - (H1 @ W2.T + b2)
    W2n = W2 + lam * ridge.closed_form(H1, E, C).T
    M = torch.linalg.inv(W2n.T @ W2n + torch.eye(W2n.shape[1], dtype=torch.float64) / C) @ W2n.T
    e1 = lam * E @ M.T
    W1n = W1 + lam * ridge.closed_form(H0, e1, C).T
    return W1n, W2n


def test_two_fc_layers_refined_last_to_first_with_pullback():
    H, y = features()
    model = mlp()
    W1n, W2n = expected_two_layer(model, H, y, C=4.0, lam=0.5)
    MPRefine(lam=0.5, C=4.0, batch_size=9).refine(feature_engine(model, H, y))
    assert rel(model[2].weight, W2n) <= REL
    assert rel(model[0].weight, W1n) <= REL


def test_layers_option_refines_only_the_last():
    H, y = features()
    model = mlp()
    W1 = model[0].weight.detach().clone()
    MPRefine(C=4.0, layers=1).refine(feature_engine(model, H, y))
    assert torch.equal(model[0].weight, W1)


def test_recursive_solver_agrees_with_direct():
    H, y = features()
    a, b = mlp(), mlp()
    MPRefine(C=4.0, batch_size=7).refine(feature_engine(a, H, y))
    MPRefine(C=4.0, batch_size=7, solver="recursive").refine(feature_engine(b, H, y))
    for p, q in zip(a.parameters(), b.parameters()):
        assert rel(q, p) <= REL


def test_options_are_checked():
    for bad in ({"lam": 0}, {"C": -1.0}, {"form": "x"}, {"features": "x"}, {"target": "x"}, {"solver": "recursive"}):
        with pytest.raises(fr.FastRetrainError):
            MPRefine(**bad)


def test_online_statistics_are_exact_for_the_final_weights():
    g = torch.Generator().manual_seed(0)
    H, y = torch.randn(50, 6, generator=g, dtype=torch.float64), torch.arange(50) % 4
    layer = nn.Linear(6, 4).double()
    T = targets(y, 4)
    Hx = torch.cat([H, torch.ones(50, 1, dtype=torch.float64)], 1)
    aug = ridge.RidgeStats.zeros(7, 4)
    for h, t in zip(Hx.split(8), T.split(8)):
        ridge.accumulate(aug, h, t)
    s = MPRefine()._online_stats(layer, aug)
    E = T - layer(H).detach()
    assert rel(s.A, H.T @ H) <= 1e-12 and rel(s.B, H.T @ E) <= 1e-10 and rel(s.ee, E.T @ E) <= 1e-10


class Snapshot(Strategy):
    order = 0  # after_epoch before mp-refine (50): the model as SGD left it

    def after_epoch(self, engine):
        self.model = copy.deepcopy(engine.model)
        self.acc = engine.evaluate()[1]


def trained(engine):
    """The logs of the training epochs (without the ridge head's epoch-0 line)."""
    return [h for h in engine.history if h["epoch"] > 0]


def test_online_mode_equals_pass_mode_on_the_same_features():
    """With features that have no augmentation or train/eval difference, online = an extra pass."""
    H, y = features()
    snap = Snapshot()
    model = linear()
    e = feature_engine(model, H, y, [MPRefine(features="online", C=4.0), snap], epochs=1, lr=0.05)
    e.fit()
    ref = snap.model
    MPRefine(C=4.0).refine(feature_engine(ref, H, y))
    assert rel(model[0].weight, ref[0].weight) <= REL
    assert trained(e)[0]["refine_seconds"] > 0


def test_nan_features_are_skipped_never_written():
    H, y = features()
    Hb = H.clone()
    Hb[[2, 5]] = math.nan
    model, ref = linear(), linear()
    with pytest.warns(RuntimeWarning, match="2 row"):
        MPRefine(C=4.0).refine(feature_engine(model, Hb, y))
    keep = torch.ones(60, dtype=torch.bool)
    keep[[2, 5]] = False
    MPRefine(C=4.0).refine(feature_engine(ref, H[keep], y[keep]))
    assert rel(model[0].weight, ref[0].weight) <= REL
    # nothing finite at all: skipped with a warning, weights untouched
    model = linear()
    W0 = model[0].weight.detach().clone()
    with pytest.warns(RuntimeWarning, match="skipped"):
        info = MPRefine().refine(feature_engine(model, torch.full_like(H, math.nan), y))
    assert "refine_skipped" in info and torch.equal(model[0].weight, W0)


def image_bundle(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 255, (n, 12, 12, 3), dtype=np.uint8)
    y = np.arange(n) % 3
    return fr.from_arrays(x, y, x[:12], y[:12], image_size=12)


def test_metrics_are_logged_in_a_fit():
    snap = Snapshot()
    cfg = fr.make_config(method="fast-retrain", model="tiny-cnn", epochs=2, image_size=12, batch_size=16, lr=0.05,
                         progress=False, device="cpu")  # fmt: skip
    cfg.out = None
    e = fr.build_engine(cfg, bundle=image_bundle(), strategies=[snap])
    e.fit()
    for h in trained(e):
        assert 0 < h["refine_seconds"] < h["epoch_seconds"]
        assert {"test_acc_before_refine", "trainable_ratio", "frozen_layers", "refine_C"} <= set(h)
    assert e.history[-1]["test_acc_before_refine"] == snap.acc  # the evaluation just before the refinement
    assert [h["trainable_ratio"] for h in trained(e)] == [1.0, 0.5]


def test_fast_retrain_recipe():
    plain = fr.make_config(method="fast-retrain")  # the method changes no optimisation setting
    assert (plain.lr, plain.schedule) == (fr.TrainConfig.lr, fr.TrainConfig.schedule)
    cfg = fr.make_config(method="fast-retrain", recipe="authors")
    got = (cfg.optimizer, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.epochs, cfg.lr)
    assert got == ("sgd", 0.9, 1e-4, 32, 8, 1e-3)
    assert cfg.schedule == "piecewise:1x3,0.1x3,0.01x2"
    from fastretrain.methods import build_strategies

    s = build_strategies("fast-retrain", {"mp-refine": {"lam": 1.0}})
    assert [type(x) for x in s] == [RandomFreeze, MPRefine] and s[1].lam == 1.0
    # the default is the combination; the authors' freezing and refinement are options
    assert (s[0].policy, s[1].init_head, s[1].until) == ("bottom", True, 2)
    authors = {"random-freeze": {"policy": "uniform"}, "mp-refine": {"init_head": False, "until": None, "C": 4.0}}
    a = build_strategies("fast-retrain", authors)
    assert (a[0].policy, a[1].init_head, a[1].until, a[1].C) == ("uniform", False, None, 4.0)
    assert all(a[1].due(e) for e in range(8)) and [s[1].due(e) for e in range(4)] == [True, True, False, False]
    sched = __import__("fastretrain.schedules", fromlist=["parse_schedule"]).parse_schedule(cfg.schedule, 8)
    assert [sched(e) for e in range(8)] == [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01]


# ------------------------------------------------------------------------------- ridge head before epoch 1


def probe_reference(H, y, C, c=3):
    """[W b] minimising ‖HWᵀ + 1bᵀ − T‖² + ‖W‖²/C, by one dense solve (bias column unpenalised)."""
    H = H.double()
    Hx = torch.cat([H, torch.ones(len(H), 1, dtype=torch.float64)], 1)
    P = torch.eye(Hx.shape[1], dtype=torch.float64) / C
    P[-1, -1] = 0
    X = torch.linalg.solve(Hx.T @ Hx + P, Hx.T @ targets(y, c))
    return X[:-1].T, X[-1]


@pytest.mark.parametrize("C", [0.05, 4.0, "gcv"])
def test_ridge_head_is_the_closed_form_linear_probe_in_float64(C):
    H, y = features(n=90, spread=2.0)
    H = H.double() + 3.0  # features far from zero: a penalised bias would be visibly off
    model = linear().double()
    e = feature_engine(model, H, y)
    info = MPRefine(C=C, batch_size=16).fit_head(e)  # 16 rows a batch: streamed in 6 batches
    used = info["init_head_C"]
    assert used == C or (C == "gcv" and used in ridge.GCV_GRID)
    W, b = probe_reference(H, y, used)
    assert rel(model[0].weight, W) <= REL and rel(model[0].bias, b) <= REL
    if C == "gcv":  # GCV on the centred problem picks the brute-force minimum of the same scores
        Hc = H - H.mean(0)
        Tc = targets(y, 3) - targets(y, 3).mean(0)
        s = ridge.accumulate(ridge.RidgeStats.zeros(8, 3), Hc, Tc)
        assert ridge.solve(s, "gcv").C == used


def test_ridge_head_C_chosen_on_validation_is_the_brute_force_best_probe():
    H, y = features(n=150, spread=1.2, seed=3)
    H = H.double() + 3.0
    model = linear().double()
    e = feature_engine(model, H[:90], y[:90])
    e.val_data = FeatureTensors(H[90:], y[90:])
    info = MPRefine(batch_size=16, init_scale="val").fit_head(e)  # C="val" is the default

    def key(C):  # (validation accuracy, −mean squared error to the ±1 targets) of the closed-form probe
        W, b = probe_reference(H[:90], y[:90], C)
        out = H[90:] @ W.T + b
        return float((out.argmax(1) == y[90:]).double().mean()), -float(((out - targets(y[90:], 3)) ** 2).mean())

    keys = [key(C) for C in sorted(ridge.GCV_GRID)]
    best = sorted(ridge.GCV_GRID)[max(range(len(keys)), key=keys.__getitem__)]  # first maximum: the smaller C
    assert info["init_head_C"] == best
    W, b = probe_reference(H[:90], y[:90], best)
    # the logits are then scaled by the factor of the grid with the lowest validation cross-entropy
    ce = [float(nn.functional.cross_entropy(s * (H[90:] @ W.T + b), y[90:])) for s in SCALE_GRID]
    s = SCALE_GRID[min(range(len(ce)), key=ce.__getitem__)]
    assert info["init_head_scale"] == s and s > 1  # ±1 targets give logits too flat for cross-entropy
    assert rel(model[0].weight, s * W) <= REL and rel(model[0].bias, s * b) <= REL
    model1 = linear().double()
    MPRefine(batch_size=16, init_scale=1).fit_head(feature_engine(model1, H[:90], y[:90]))  # no val split: GCV
    W1, b1 = probe_reference(H[:90], y[:90], MPRefine(C="gcv", batch_size=16).fit_head(
        feature_engine(linear().double(), H[:90], y[:90]))["init_head_C"])
    assert rel(model1[0].weight, W1) <= REL and rel(model1[0].bias, b1) <= REL  # init_scale=1: the plain probe


def test_refinement_C_chosen_on_validation_by_the_refined_layer():
    H, y = features(n=150, spread=1.0, seed=4)
    model = linear().double()
    e = feature_engine(model, H[:90].double(), y[:90])
    e.val_data = FeatureTensors(H[90:].double(), y[90:])
    W0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    info = MPRefine(lam=0.5).refine(e)
    Hd = H[:90].double()
    E = targets(y[:90], 3) - (Hd @ W0.T + b0)

    def refined(C):  # W + λΔW with ΔWᵀ = (HᵀH + I/C)⁻¹HᵀE, bias untouched
        return W0 + 0.5 * torch.linalg.solve(Hd.T @ Hd + torch.eye(8, dtype=torch.float64) / C, Hd.T @ E).T

    def key(C):
        out = H[90:].double() @ refined(C).T + b0
        return float((out.argmax(1) == y[90:]).double().mean()), -float(((out - targets(y[90:], 3)) ** 2).mean())

    keys = [key(C) for C in sorted(ridge.GCV_GRID)]
    best = sorted(ridge.GCV_GRID)[max(range(len(keys)), key=keys.__getitem__)]
    assert info["refine_C"] == best and rel(model[0].weight, refined(best)) <= REL


class AfterInit(Strategy):
    order = 60  # before_epoch after mp-refine's (50): the head as the initialisation wrote it

    def before_epoch(self, engine):
        if engine.epoch == 0:
            self.model = copy.deepcopy(engine.model)


def test_ridge_head_in_a_fit_on_images_is_training_time():
    snap = AfterInit()
    cfg = fr.make_config(method="mp-refine", model="tiny-cnn", epochs=1, image_size=12, batch_size=16, lr=0.05,
                         progress=False, device="cpu", options={"mp-refine": {"C": 4.0}})
    cfg.out = None
    torch.manual_seed(0)
    e = fr.build_engine(cfg, bundle=image_bundle(), strategies=[snap])
    start = copy.deepcopy(e.model)
    e.fit()
    from fastretrain.models import pooled_features

    start.eval()
    H = torch.cat([pooled_features(start, x).double() for x, _ in e.batches(train=False)])
    y = torch.cat([y for _, y in e.batches(train=False)])
    W, b = probe_reference(H, y, 4.0)
    assert rel(snap.model.fc.weight, W) <= REL and rel(snap.model.fc.bias, b) <= REL  # float32 weights
    head, h = e.history[0], trained(e)[0]
    assert h["init_head_C"] == 4.0 and 0 < h["init_head_seconds"] < h["epoch_seconds"] <= h["wall_seconds"]
    # the ridge head is epoch 0: a model the run can return, scored as it stood before the first SGD step, at the
    # training time it was ready
    _, acc = e.evaluate(e.test_data, module=snap.model.to(e.device))
    assert head["epoch"] == 0 and head["test_acc"] == acc
    assert 0 < head["wall_seconds"] < h["wall_seconds"] and head["init_head_seconds"] == h["init_head_seconds"]


def test_ridge_head_on_target_bn_statistics():
    """head_bn="target": BN layers run on batch statistics in the head's pass, their running statistics become the
    average over the pass's batches, and the head is the closed-form probe of those batch-normalised features."""
    cfg = fr.make_config(method="mp-refine", model="tiny-cnn", epochs=1, image_size=12, batch_size=16, lr=0.05,
                         progress=False, device="cpu", options={"mp-refine": {"C": 4.0, "head_bn": "target"}})
    cfg.out = None
    torch.manual_seed(0)
    e = fr.build_engine(cfg, bundle=image_bundle(), strategies=[])
    ref = copy.deepcopy(e.model)
    strat = MPRefine(C=4.0, head_bn="target", batch_size=16)  # 48 images: 3 batches
    pretrained = ref.features[0][1].running_mean.clone()
    modes = [m.training for m in e.model.modules()]
    strat.fit_head(e)
    from fastretrain.models import pooled_features

    ref.eval()
    bn = ref.features[0][1]
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    batches = list(e.batches(train=False, batch_size=16))
    means, H = [], []
    for x, _ in batches:
        conv_out = ref.features[0][0](x)
        means.append(conv_out.mean((0, 2, 3)))
        with torch.no_grad():
            H.append(pooled_features(ref, x).double())
    y = torch.cat([y for _, y in batches])
    got = e.model.features[0][1]
    assert torch.allclose(got.running_mean, torch.stack(means).mean(0), atol=1e-6)  # the average, not momentum 0.1
    assert not torch.allclose(got.running_mean, pretrained) and got.momentum == bn.momentum  # momentum restored
    W, b = probe_reference(torch.cat(H), y, 4.0)
    assert rel(e.model.fc.weight, W) <= 1e-5 and rel(e.model.fc.bias, b) <= 1e-5  # float32 model
    assert [m.training for m in e.model.modules()] == modes  # the caller's modes are back
    with pytest.raises(fr.FastRetrainError, match="head_bn"):
        MPRefine(head_bn="imagenet")


def test_ridge_head_option_off_leaves_the_head():
    snap = AfterInit()
    H, y = features()
    model = linear()
    W0 = model[0].weight.detach().clone()
    e = feature_engine(model, H, y, [MPRefine(init_head=False), snap])
    e.fit()
    assert torch.equal(snap.model[0].weight, W0) and "init_head_seconds" not in e.history[0]


# ------------------------------------------------------------------------------------- the schedule


def test_due_follows_until_every_and_stop():
    assert [MPRefine().due(e) for e in range(5)] == [True, True, False, False, False]  # default: epochs 1-2
    assert [MPRefine(until=None).due(e) for e in range(5)] == [True] * 5
    assert [MPRefine(until=None, every=2).due(e) for e in range(5)] == [False, True, False, True, False]
    assert [MPRefine(until=5, every=2).due(e) for e in range(7)] == [False, True, False, True, False, False, False]
    assert not any(MPRefine(until=0).due(e) for e in range(3))  # the ridge head only
    m = MPRefine(until=None)
    m.stopped = 2
    assert not any(m.due(e) for e in range(5))
    m2 = MPRefine()
    m2.load_state_dict(m.state_dict())
    assert m2.stopped == 2


def test_refinements_follow_the_schedule_in_a_fit():
    H, y = features()
    e = feature_engine(linear(), H, y, [MPRefine(C=4.0, until=3, every=2)], epochs=5)
    e.fit()
    assert [("refine_seconds" in h, "refine_C" in h) for h in trained(e)] == [(i == 1, i == 1) for i in range(5)]


def val_engine(strategies, epochs):
    H, y = features(n=90, spread=2.5)
    e = feature_engine(linear(), H[:60], y[:60], strategies, epochs=epochs, lr=0.02)
    e.val_data = FeatureTensors(H[60:], y[60:])  # (set explicitly: does not depend on how the engine splits)
    return e


class ValAround(Strategy):
    """Validation accuracy just before (order 0) or just after (order 100) mp-refine's after_epoch."""

    def __init__(self, order):
        self.order, self.acc = order, []

    def after_epoch(self, engine):
        self.acc.append(engine.evaluate(engine.val_data)[1])


def test_min_gain_stops_refining_on_validation_gain():
    pre, post = ValAround(0), ValAround(100)
    refine = MPRefine(C=4.0, until=None, min_gain=1.0, init_head=False)
    e = val_engine([refine, pre, post], 3)
    e.fit()
    h = e.history
    assert h[0]["refine_val_gain"] == pytest.approx(post.acc[0] - pre.acc[0])  # measured on validation
    assert h[0]["val_acc_before_refine"] == pre.acc[0]
    assert [("refine_seconds" in x) for x in h] == [True, False, False]  # a gain below 1.0 stops it for good
    assert refine.stopped == 1 and refine.state_dict()["stopped"] == 1
    keep = val_engine([MPRefine(C=4.0, until=None, min_gain=-1.0, init_head=False)], 3)  # any gain is enough
    keep.fit()
    assert all("refine_val_gain" in x for x in keep.history)


def test_min_gain_without_validation_is_an_error():
    H, y = features()
    e = feature_engine(linear(), H, y, [MPRefine(min_gain=0.01)])
    e.val_data = None
    with pytest.raises(fr.FastRetrainError, match="validation"):
        e.fit()


def test_feature_pass_uses_large_batches():
    H, y = features(n=300)
    model = linear()
    sizes = []
    model.register_forward_pre_hook(lambda m, a: sizes.append(len(a[0])))
    MPRefine(C=4.0).refine(feature_engine(model, H, y))
    assert sizes == [256, 44]  # not the training batch (16)


# ------------------------------------------------------------------------- pull-back through BatchNorm1d


def vgg_reference(model, x, y, C, lam):
    """vgg-small's head refined last to first in float64 by hand: fc by ridge on the residual, then the error
    pulled back through fc (refined), the ReLU (as is) and the eval-mode BN1d (divided by γ/√(var + ε)), and
    the hidden layer fitted to it. Returns (hidden W, fc W, the hidden W of a pull-back that ignores the BN)."""
    lin, bn, fc = model.hidden[0], model.hidden[1], model.fc
    with torch.no_grad():
        H0 = torch.flatten(nn.functional.adaptive_avg_pool2d(model.features(x), 1), 1)
        H1 = torch.relu(bn(lin(H0)))
        E = targets(y, 3) - fc(H1)
        W2 = fc.weight + lam * ridge.closed_form(H1, E, C).T
        M = torch.linalg.solve(W2.T @ W2 + torch.eye(W2.shape[1], dtype=torch.float64) / C, W2.T)  # (in, out)
        e_h1 = lam * E @ M.T  # the error at fc's input
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        inv = torch.where(s != 0, 1 / s, torch.zeros_like(s))  # a dead unit (γ = 0) passes no error back
        W1 = lin.weight + lam * ridge.closed_form(H0, e_h1 * inv, C).T
        W1_naive = lin.weight + lam * ridge.closed_form(H0, e_h1, C).T
    return W1, W2, W1_naive


def vgg_small_float64(seed=0):
    torch.manual_seed(seed)
    model = fr.create_model("vgg-small", 3, width=0.25).double().eval()
    bn = model.hidden[1]
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # BN statistics and affine parameters far from the identity
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g, dtype=torch.float64) * 4 + 0.1)
        bn.weight.copy_(torch.randn(bn.num_features, generator=g, dtype=torch.float64) * 2)
        bn.weight[0] = 0.0
        bn.bias.copy_(torch.randn(bn.num_features, generator=g, dtype=torch.float64))
    return model


@pytest.mark.parametrize("solver", ["direct", "recursive"])
def test_pullback_through_batchnorm1d_on_vgg_small_matches_float64_reference(solver):
    model = vgg_small_float64()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 3, 16, 16, generator=g, dtype=torch.float64), torch.arange(60) % 3
    W1, W2, W1_naive = vgg_reference(model, x, y, C=4.0, lam=0.5)
    data = DataBundle(FeatureTensors(x, y), FeatureTensors(x[:10], y[:10]), ["0", "1", "2"], "vgg")
    cfg = fr.make_config(method="sgdm", model="vgg-small", epochs=1, batch_size=16, progress=False, device="cpu")
    cfg.out = None
    e = fr.Engine(model, data, cfg, [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a BN1d with running statistics is handled: no "refining only" warning
        MPRefine(lam=0.5, C=4.0, batch_size=7, solver=solver).refine(e)
    assert rel(model.fc.weight, W2) <= 1e-8
    assert rel(model.hidden[0].weight, W1) <= 1e-8
    assert rel(W1_naive, W1) > 1e-2  # (ignoring the BN would be visibly wrong here)


def test_a_module_that_is_not_elementwise_affine_stops_the_pullback():
    H, y = features()
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 6), nn.LayerNorm(6), nn.ReLU(), nn.Linear(6, 3))
    W1 = model[0].weight.detach().clone()
    ref = copy.deepcopy(model)
    with pytest.warns(RuntimeWarning, match="LayerNorm.*refining only 3"):
        MPRefine(C=4.0).refine(feature_engine(model, H, y))
    assert torch.equal(model[0].weight, W1)  # the layer below the LayerNorm is left alone
    H1 = ref[2](ref[1](ref[0](H))).detach().double()
    E = targets(y, 3) - (H1 @ ref[3].weight.double().T + ref[3].bias.double())
    assert rel(model[3].weight, ref[3].weight.double() + 0.5 * ridge.closed_form(H1, E, 4.0).T) <= REL


# ---------------------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_cnn():
    """conv-BN-ReLU ×3, pooled, FC (as tiny-cnn)."""
    layers, cin = [], 3
    for cout in (4, 8, 8):
        layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def _worker(rank, port, out):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        H, y = features()
        model = mlp()
        MPRefine(C="gcv", batch_size=7).refine(feature_engine(model, H, y))  # each rank sees half of the rows
        torch.save({k: v.clone() for k, v in model.state_dict().items()}, f"{out}/refine{rank}.pt")
        cfg = fr.make_config(method="sgdm", model="tiny-cnn", epochs=1, image_size=12, batch_size=8, lr=0.05,
                             progress=False, device="cpu")  # fmt: skip
        cfg.out = None
        torch.manual_seed(0)
        net = small_cnn()  # (not create_model: importing timm in each process costs seconds)
        init = {k: v.clone() for k, v in net.state_dict().items()}
        rf = RandomFreeze(ratios=[0.5])
        e = fr.Engine(net, image_bundle(), cfg, [rf, MPRefine()])
        e.fit()
        state = {"init": init, "final": net.state_dict(), "frozen": rf.frozen, "log": trained(e)[0]}
        torch.save(state, f"{out}/epoch{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_gloo_processes(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"refine{r}.pt") for r in (0, 1))
    H, y = features()
    single = mlp()
    MPRefine(C="gcv", batch_size=7).refine(feature_engine(single, H, y))  # one process, all rows
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # identical on both ranks
        assert rel(r0[k], single.state_dict()[k]) <= REL, k  # and equal to the all-data solution
    e0, e1 = (torch.load(tmp_path / f"epoch{r}.pt") for r in (0, 1))
    assert e0["frozen"] == e1["frozen"] and len(e0["frozen"]) == 2  # same draw on every rank (3 convs, r = 0.5)
    for k in e0["final"]:
        assert torch.equal(e0["final"][k], e1["final"][k]), k
    for name in e0["frozen"]:
        assert torch.equal(e0["final"][name + ".weight"], e0["init"][name + ".weight"])
    assert "refine_C" in e0["log"] and "refine_skipped" not in e0["log"]
