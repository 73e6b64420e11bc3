"""MP refinement against closed forms: residual / replace forms, multi-FC pull-back, GCV, the recursive
solver, online features, guards, logged metrics, the fast-retrain recipe, and 2-process gloo DDP."""
import copy
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import fastretrain as fr
from fastretrain import ridge
from fastretrain.data import DataBundle, FeatureTensors
from fastretrain.engine import Strategy
from fastretrain.strategies.mp_refine import MPRefine, targets
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
    cfg = fr.make_config(method="sgdm", model="tiny-cnn", epochs=epochs, batch_size=16, lr=lr, progress=False, device="cpu", **kw)
    cfg.out = None
    data = DataBundle(FeatureTensors(H, y), FeatureTensors(H[:20], y[:20]), [str(i) for i in range(int(y.max()) + 1)], "features")
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
    assert e.history[0]["refine_seconds"] > 0


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
    for h in e.history:
        assert 0 < h["refine_seconds"] < h["epoch_seconds"]
        assert {"test_acc_before_refine", "trainable_ratio", "frozen_layers", "refine_C"} <= set(h)
    assert e.history[-1]["test_acc_before_refine"] == snap.acc  # the evaluation just before the refinement
    assert [h["trainable_ratio"] for h in e.history] == [1.0, 0.5]


def test_fast_retrain_recipe():
    cfg = fr.make_config(method="fast-retrain", recipe="authors")
    assert (cfg.optimizer, cfg.momentum, cfg.weight_decay, cfg.batch_size, cfg.epochs, cfg.lr) == ("sgd", 0.9, 1e-4, 32, 8, 1e-3)
    assert cfg.schedule == "piecewise:1x3,0.1x3,0.01x2"
    from fastretrain.methods import build_strategies

    s = build_strategies("fast-retrain", {"mp-refine": {"lam": 1.0}})
    assert [type(x) for x in s] == [RandomFreeze, MPRefine] and s[1].lam == 1.0
    sched = __import__("fastretrain.schedules", fromlist=["parse_schedule"]).parse_schedule(cfg.schedule, 8)
    assert [sched(e) for e in range(8)] == [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01]


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
        torch.save({"init": init, "final": net.state_dict(), "frozen": rf.frozen, "log": e.history[0]}, f"{out}/epoch{rank}.pt")
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
