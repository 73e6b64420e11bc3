"""RIFLE: reset schedule (exact epochs, settle window), each reset is a fresh seeded default init of the
head and leaves the backbone alone, options, resume bit-for-bit, DDP agreement, composition."""
import dataclasses

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from fastretrain import FastRetrainError, Strategy, StopFit, build_engine, make_config
from fastretrain.engine import seed_from
from fastretrain.strategies.dropout import Dropout
from fastretrain.strategies.rifle import Rifle, reinit_, reset_boundaries


# ------------------------------------------------------------------ the schedule (pure function)
def test_default_boundaries_are_quarters_with_settle_window():
    assert reset_boundaries(8) == [2, 4, 6]
    assert reset_boundaries(40) == [10, 20, 30]
    assert reset_boundaries(10) == [2.5, 5.0, 7.5]
    for e in range(1, 50):
        b = reset_boundaries(e)
        assert len(b) == 3 and max(b) <= 0.75 * e + 1e-9  # none in the last quarter


def test_boundaries_from_options():
    assert reset_boundaries(8, period=1) == [1, 2, 3, 4, 5, 6]  # every epoch up to 3E/4
    assert reset_boundaries(8, period=3) == [3, 6]
    assert reset_boundaries(8, resets=2) == [3, 6]  # spread over the first 3E/4
    assert reset_boundaries(8, resets=0) == []
    assert reset_boundaries(8, resets=7, period=1) == [1, 2, 3, 4, 5, 6, 7]  # both given: as asked
    with pytest.raises(FastRetrainError, match="reach epoch 8"):
        reset_boundaries(8, resets=4, period=2)
    with pytest.raises(FastRetrainError, match="period"):
        reset_boundaries(8, period=0)


# ------------------------------------------------------------------ resets inside a run
class Probe(Strategy):
    """Runs after RIFLE in every batch: compares the model with its state after the previous step."""

    order = 100

    def __init__(self):
        self.prev = None
        self.changes = []  # (epoch, iter, {param name: new value}) where something moved between steps
        self.momentum = {}  # (epoch, iter) -> head weight's momentum buffer or None, right after a reset

    def after_step(self, engine):
        self.prev = {k: v.detach().clone() for k, v in engine.model.state_dict().items()}

    def before_batch(self, engine):
        if self.prev is None:
            return
        now = engine.model.state_dict()
        moved = {k: now[k].clone() for k in self.prev if not torch.equal(now[k], self.prev[k])}
        if moved:
            self.changes.append((engine.epoch, engine.iter, moved))
            st = engine.optimizer.state.get(engine.model.fc.weight, {})
            self.momentum[(engine.epoch, engine.iter)] = st.get("momentum_buffer")


def _run(cfg, bundle, strategies, **kw):
    cfg = dataclasses.replace(cfg, out=None, **kw)
    engine = build_engine(cfg, bundle, strategies=strategies)
    engine.fit()
    return engine


def _fresh_linear(seed: int, epoch: int, draws: int, d: int, c: int) -> nn.Linear:
    """nn.Linear's default init drawn from the run's 'rifle' generator of `epoch` (the draws-th draw)."""
    g = torch.Generator().manual_seed(seed_from(seed, epoch, "rifle/0"))
    for _ in range(draws):
        s = int(torch.randint(0, 2**62, (1,), generator=g))
    torch.manual_seed(s)
    return nn.Linear(d, c)


def test_resets_exactly_at_scheduled_epochs_fresh_seeded_head_backbone_untouched(cfg, bundle):
    probe, rifle = Probe(), Rifle()
    engine = _run(cfg, bundle, [rifle, probe], epochs=8, seed=3)
    # between steps nothing moves except at the three scheduled resets: before epoch 3, 5, 7 trains
    # (0-based epoch 2, 4, 6), i.e. after epochs 2, 4, 6 of 8 and never in the last quarter (7-8)
    assert [(e, i) for e, i, _ in probe.changes] == [(2, 0), (4, 0), (6, 0)]
    assert rifle.history == [(2, 0), (4, 0), (6, 0)]
    assert [h.get("rifle_resets", 0) for h in engine.history] == [0, 0, 1, 0, 1, 0, 1, 0]
    fc = engine.model.fc
    for epoch, _, moved in probe.changes:
        assert set(moved) == {"fc.weight", "fc.bias"}  # the backbone (and BN buffers) untouched
        ref = _fresh_linear(3, epoch, 1, fc.in_features, fc.out_features)
        assert torch.equal(moved["fc.weight"], ref.weight.detach())
        assert torch.equal(moved["fc.bias"], ref.bias.detach())
        bound = fc.in_features**-0.5  # nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert moved["fc.weight"].abs().max() <= bound and moved["fc.weight"].abs().max() > 0.8 * bound
    draws = [m["fc.weight"] for _, _, m in probe.changes]
    assert not torch.equal(draws[0], draws[1])  # a new draw at every reset
    # the default keeps the head's momentum through a reset
    assert all(v is not None for v in probe.momentum.values())


def test_reset_at_fractional_period_is_mid_epoch(cfg, bundle):
    rifle = Rifle(period=1.5)  # boundaries 1.5, 3.0, 4.5 (= 3E/4, the last one allowed)
    engine = _run(cfg, bundle, [rifle], epochs=6)
    n = engine.num_batches()
    assert n == 6 and rifle.history == [(1, 3), (3, 0), (4, 3)]  # first batch at progress >= 1.5, 3.0, 4.5


def test_weight_only_and_optimizer_state_reset(cfg, bundle):
    probe = Probe()
    _run(cfg, bundle, [Rifle(weight_only=True, reset_optimizer_state=True), probe], epochs=4)
    assert [(e, i) for e, i, _ in probe.changes] == [(1, 0), (2, 0), (3, 0)]
    assert all(set(m) == {"fc.weight"} for _, _, m in probe.changes)  # bias kept
    assert all(v is None for v in probe.momentum.values())  # momentum cleared right after each reset


def test_named_modules_and_errors(cfg, bundle):
    probe = Probe()
    _run(cfg, bundle, [Rifle(modules="features.2.0,fc", resets=1), probe], epochs=4)
    (_, _, moved), = probe.changes
    assert set(moved) == {"fc.weight", "fc.bias", "features.2.0.weight"}
    with pytest.raises(FastRetrainError, match="no module 'head'"):
        _run(cfg, bundle, [Rifle(modules="head")], epochs=2)


def test_reinit_uses_each_modules_own_initialiser():
    seq = nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Linear(5, 3))
    with torch.no_grad():
        for p in seq.parameters():
            p.fill_(7.0)
    reinit_(seq, torch.Generator().manual_seed(0))
    assert torch.equal(seq[1].weight, torch.ones(5)) and torch.equal(seq[1].bias, torch.zeros(5))  # LayerNorm's init
    assert seq[0].weight.abs().max() <= 6**-0.5 and seq[2].weight.abs().max() <= 5**-0.5
    with pytest.raises(FastRetrainError, match="reset_parameters"):
        reinit_(nn.ReLU(), torch.Generator())


# ------------------------------------------------------------------ resume
class StopAt(Strategy):
    order = 200  # keeps RIFLE's checkpoint key the same with and without it

    def __init__(self, epoch):
        self.epoch = epoch

    def after_epoch(self, engine):
        if engine.epoch + 1 == self.epoch:
            raise StopFit


@pytest.mark.parametrize("stop", [2, 3])  # checkpoint right before a reset, and right after one
def test_resumed_run_reproduces_uninterrupted_bit_for_bit(cfg, bundle, tmp_path, stop):
    kw = dict(method="rifle", epochs=6, model="tiny-cnn", image_size=16, batch_size=8, lr=0.05, device="cpu", progress=False)
    full = build_engine(make_config(**kw, out=str(tmp_path / "full")), bundle, strategies=[StopAt(0)])
    full.fit()
    build_engine(make_config(**kw, out=str(tmp_path / "cut")), bundle, strategies=[StopAt(stop)]).fit()
    resumed = build_engine(make_config(**kw, out=str(tmp_path / "cut"), resume=True), bundle, strategies=[StopAt(0)])
    assert resumed.strategies[0].name == "rifle"
    resumed.fit()
    a, b = load_file(str(tmp_path / "full/model_final.safetensors")), load_file(str(tmp_path / "cut/model_final.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [h["test_acc"] for h in full.history] == [h["test_acc"] for h in resumed.history]
    assert [h.get("rifle_resets", 0) for h in full.history] == [h.get("rifle_resets", 0) for h in resumed.history]


# ------------------------------------------------------------------ composition
def test_compose_with_dropout(cfg, bundle):
    probe, zeros = Probe(), {True: [], False: []}

    class Tap(Strategy):  # sees the FC input after dropout's pre-hook (registered earlier)
        order = 100

        def before_fit(self, engine):
            def hook(module, args):
                zeros[module.training].append(float((args[0] == 0).float().mean()))
            engine.model.fc.register_forward_pre_hook(hook)

    cfg = dataclasses.replace(cfg, method="rifle,dropout", epochs=4, out=None)
    engine = build_engine(cfg, bundle, strategies=[probe, Tap()])
    assert [type(s) for s in engine.strategies][:2] == [Dropout, Rifle]
    engine.fit()
    assert [(e, i) for e, i, _ in probe.changes] == [(1, 0), (2, 0), (3, 0)]  # resets unchanged by dropout
    train, test = (sum(zeros[k]) / len(zeros[k]) for k in (True, False))
    assert train > test + 0.25  # dropout p 0.5 zeroed about half of the features while training, none in eval


def test_compose_with_random_freeze(cfg, bundle):
    pytest.importorskip("fastretrain.strategies.random_freeze")
    probe = Probe()
    cfg = dataclasses.replace(cfg, method="rifle,random-freeze", epochs=8, out=None)
    engine = build_engine(cfg, bundle, strategies=[probe])
    frozen = []

    class Frozen(Strategy):
        order = 100

        def before_batch(self, engine):
            if engine.iter == 0:
                frozen.append(sum(not m.weight.requires_grad for m in engine.model.modules() if isinstance(m, nn.Conv2d)))

    engine.strategies.append(Frozen())
    engine.fit()
    # RIFLE's resets still happen exactly on schedule, and only in the head, while convs get frozen
    assert [(e, i) for e, i, moved in probe.changes if "fc.weight" in moved] == [(2, 0), (4, 0), (6, 0)]
    assert max(frozen) > 0


# ------------------------------------------------------------------ DDP
def _ddp_worker(rank, out):
    from fastretrain import TrainConfig
    from fastretrain.testing import tiny_bundle

    cfg = TrainConfig(model="tiny-cnn", method="rifle", epochs=4, image_size=16, batch_size=8, lr=0.05, device="cpu",
                      progress=False, out=None, seed=5)
    probe = Probe()
    engine = build_engine(cfg, tiny_bundle(), strategies=[probe])
    engine.fit()
    torch.save({"resets": [(e, i, m["fc.weight"]) for e, i, m in probe.changes if "fc.weight" in m],
                "fc": engine.model.fc.weight.detach().clone()}, f"{out}/rank{rank}.pt")


def test_ddp_ranks_draw_the_same_head(tmp_path):
    from fastretrain.testing import run_processes

    run_processes(_ddp_worker, 2, args=(str(tmp_path),))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert [(e, i) for e, i, _ in r0["resets"]] == [(1, 0), (2, 0), (3, 0)]
    for (e, _, w0), (_, _, w1) in zip(r0["resets"], r1["resets"]):
        assert torch.equal(w0, w1)
        assert torch.equal(w0, _fresh_linear(5, e, 1, w0.shape[1], w0.shape[0]).weight.detach())
    assert torch.equal(r0["fc"], r1["fc"])
