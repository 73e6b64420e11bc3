"""Random layer freezing: schedule, exact counts, reproducible draws, frozen parameters untouched (weight
decay and momentum included), momentum kept across thawing, autograd off below the lowest trainable
conv (with unchanged gradients above it), resume; the bottom-block policy: exact frozen blocks, drawn
depths whose mean follows the schedule, nothing below the block trains or is reached by backward."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

import fastretrain as fr
from fastretrain.engine import StopFit, Strategy
from fastretrain.models import conv_layers
from fastretrain.strategies.random_freeze import (DEFAULT_RATIOS, RandomFreeze, draw_depth, draw_frozen,
                                                  execution_order, num_frozen, ratio_for_epoch)


class Chain(nn.Module):
    """8 conv-BN-ReLU layers, pooled, one FC: enough convs for meaningful draws."""

    def __init__(self, num_classes=3, width=4, depth=8):
        super().__init__()
        layers, cin = [], 3
        for i in range(depth):
            layers += [nn.Conv2d(cin, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            cin = width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def bundle(n=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 255, (n, 12, 12, 3), dtype=np.uint8)
    y = np.arange(n) % 3
    return fr.from_arrays(x, y, x[:12], y[:12], image_size=12)


def engine(ratios, epochs, seed=0, extra=(), out=None, model=None, policy="uniform", **kw):
    cfg = fr.make_config(method="sgdm", model="tiny-cnn", epochs=epochs, image_size=12, batch_size=16, lr=0.05,
                         weight_decay=1e-2, momentum=0.9, seed=seed, progress=False, device="cpu", schedule="constant")
    cfg.out = str(out) if out else None
    cfg.save_checkpoint = out is not None
    torch.manual_seed(seed)
    strategy = RandomFreeze(ratios=ratios, policy=policy, **kw)
    return fr.Engine(model or Chain(), bundle(), cfg, [strategy, *extra], out_dir=out)


def test_ratio_schedule_stretches_and_accepts_callables():
    assert [ratio_for_epoch(DEFAULT_RATIOS, e, 8) for e in range(8)] == DEFAULT_RATIOS
    assert [ratio_for_epoch(DEFAULT_RATIOS, e, 4) for e in range(4)] == [1, 0.75, 0.5, 0.25]
    assert [ratio_for_epoch(DEFAULT_RATIOS, e, 16) for e in range(16)] == [r for r in DEFAULT_RATIOS for _ in (0, 1)]
    assert [ratio_for_epoch([0.5], e, 3) for e in range(3)] == [0.5] * 3
    assert ratio_for_epoch(lambda e, n: 1 - e / n, 2, 4) == 0.5
    with pytest.raises(fr.FastRetrainError):
        ratio_for_epoch([1.5], 0, 1)


def test_num_frozen_and_draws():
    assert [num_frozen(50, r) for r in (1, 0.75, 0.5, 0.25, 0)] == [0, 13, 25, 38, 50]  # 12.5 -> 13 (halves up)
    g = torch.Generator().manual_seed(0)
    d = draw_frozen(50, 0.5, g)
    assert len(d) == len(set(d)) == 25 and all(0 <= i < 50 for i in d)
    # uniform: every conv frozen about half of the time over many draws
    counts = np.zeros(10)
    for _ in range(2000):
        counts[draw_frozen(10, 0.7, g)] += 1
    assert np.allclose(counts / 2000, 0.3, atol=0.05)


class Probe(Strategy):
    """Records, per epoch, which convs are frozen, parameter snapshots and momentum buffers."""

    order = 0  # after RandomFreeze (-10)

    def __init__(self):
        self.frozen, self.before, self.after, self.momentum, self.thaw_checks = [], [], [], [], 0

    def before_epoch(self, engine):
        convs = conv_layers(engine.model)
        self.frozen.append(sorted(n for n, m in convs if not m.weight.requires_grad))
        self.before.append({n: p.detach().clone() for n, p in engine.model.named_parameters()})
        # momentum survives thawing: every trainable parameter's buffer is the one it had last
        if self.momentum:
            last = {}
            for m in self.momentum:
                last.update(m)
            for n, p in engine.model.named_parameters():
                if p.requires_grad and n in last:
                    assert torch.equal(engine.optimizer.state[p]["momentum_buffer"], last[n])
                    self.thaw_checks += 1

    def after_epoch(self, engine):
        self.after.append({n: p.detach().clone() for n, p in engine.model.named_parameters()})
        self.momentum.append({n: p.grad is not None and engine.optimizer.state[p]["momentum_buffer"].clone()
                              for n, p in engine.model.named_parameters() if p in engine.optimizer.state})  # fmt: skip


def test_frozen_counts_and_frozen_params_untouched():
    probe = Probe()
    e = engine([1, 0.5, 0.5, 0.25, 1], 5, extra=[probe])
    e.fit()
    assert [h["frozen_layers"] for h in e.history] == [0, 4, 4, 6, 0]
    assert [h["trainable_ratio"] for h in e.history] == [1, 0.5, 0.5, 0.25, 1]
    assert [len(f) for f in probe.frozen] == [0, 4, 4, 6, 0]
    assert probe.frozen[1] != probe.frozen[2]  # independent draws per epoch
    for ep in range(5):
        for name in probe.frozen[ep]:  # unchanged bit for bit: no weight decay, no momentum step
            assert torch.equal(probe.before[ep][name + ".weight"], probe.after[ep][name + ".weight"])
        assert not torch.equal(probe.before[ep]["fc.weight"], probe.after[ep]["fc.weight"])  # the head trains
        trained = [n for n, _ in conv_layers(e.model) if n not in probe.frozen[ep]]
        moved = lambda n: not torch.equal(probe.before[ep][n + ".weight"], probe.after[ep][n + ".weight"])  # noqa: E731
        changed = [n for n in trained if moved(n)]
        prefix = e.history[ep]["frozen_prefix_params"]
        assert len(changed) == len(trained) or prefix > 0
    assert probe.thaw_checks > 0
    assert all(p.requires_grad for p in e.model.parameters())  # after_fit leaves the model as it came


@pytest.mark.parametrize("policy", ["uniform", "bottom"])
def test_draws_reproducible_by_seed(policy):
    runs = []
    for seed in (0, 0, 1):
        probe = Probe()
        engine([0.5], 3, seed=seed, extra=[probe], policy=policy, depth_jitter=0.5).fit()
        runs.append(probe.frozen)
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


class GradModeRecorder(Strategy):
    """A forward hook on every module records torch.is_grad_enabled() during the first training forward."""

    def __init__(self):
        self.modes, self.handles, self.exec_order = {}, [], []

    def before_epoch(self, engine):
        self.exec_order = execution_order(engine.model, 12, "cpu")  # (a no-grad forward: before the hooks)
        self.modes = {}

        def hook(n):
            def record(mod, args, out):
                self.modes.setdefault(n, torch.is_grad_enabled())

            return record

        for n, m in engine.model.named_modules():
            if n:
                self.handles.append(m.register_forward_hook(hook(n)))

    def after_loss(self, engine):
        for h in self.handles:
            h.remove()
        self.handles = []
        self.first = dict(self.modes)


def test_autograd_is_off_below_the_lowest_trainable_conv():
    rec = GradModeRecorder()
    e = engine([0.5], 1, seed=3, extra=[rec])
    e.fit()
    probe_frozen = None
    rf = e.strategies[0]
    probe_frozen = set(rf.frozen)
    convs = [n for n, _ in conv_layers(e.model)]
    first = next(n for n in convs if n not in probe_frozen)
    k = convs.index(first)
    assert k >= 1, "seed 3 should freeze the first conv(s); pick another seed"
    mods = dict(e.model.named_modules())
    cut = rec.exec_order.index(first)
    for name in rec.exec_order[:cut]:  # below: no autograd
        assert rec.first[name] is False, name
    for name in rec.exec_order[cut:]:  # from the lowest trainable conv on: autograd on
        assert rec.first[name] is True, name
    assert rec.first["features"] is True  # the container is re-enabled inside, the hook sees the restored state
    assert e.history[0]["frozen_prefix_params"] == 2 * k  # the BN weight and bias below the cut
    assert torch.is_grad_enabled()  # restored after the forward
    assert isinstance(mods[rec.exec_order[cut - 1]], (nn.BatchNorm2d, nn.Conv2d))


def test_prefix_does_not_change_gradients():
    """Gradients of the trainable parameters equal those of a plain forward with the same frozen set."""
    e = engine([0.5], 1, seed=3)
    rf = e.strategies[0]
    rf.before_fit(e)
    e.epoch = 0
    rf.before_epoch(e)
    assert rf._prefix is not None
    ref = copy.deepcopy(e.model)  # deepcopy drops no hooks: remove them from the copy
    for m in ref.modules():
        m._forward_pre_hooks.clear()
        m._forward_hooks.clear()
    x, y = next(e.batches(train=True))
    for model in (e.model, ref):
        model.train()
        nn.functional.cross_entropy(model(x), y).backward()
    for (n, p), (_, q) in zip(e.model.named_parameters(), ref.named_parameters()):
        assert p.requires_grad == q.requires_grad
        if p.requires_grad:
            assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), n
        else:
            assert p.grad is None and q.grad is None
    rf.after_fit(e)
    assert not e.model._forward_pre_hooks


def test_no_prefix_option_keeps_grad_on():
    rec = GradModeRecorder()
    e = engine([0.5], 1, seed=3, extra=[rec], no_grad_prefix=False)
    e.fit()
    assert all(rec.first.values())
    assert e.history[0]["frozen_prefix_params"] == 0


def test_bn_eval_option_keeps_running_stats_of_frozen_neighbours():
    e = engine([0.5], 1, seed=3, bn_eval_frozen=True)
    before = {n: b.clone() for n, b in e.model.named_buffers() if n.endswith("running_mean")}
    e.fit()
    frozen = e.strategies[0].frozen
    for conv in frozen:
        i = int(conv.split(".")[1])
        bn = f"features.{i + 1}.running_mean"
        assert torch.equal(before[bn], dict(e.model.named_buffers())[bn])
    trained = [n for n, _ in conv_layers(e.model) if n not in frozen]
    bn = f"features.{int(trained[-1].split('.')[1]) + 1}.running_mean"
    assert not torch.equal(before[bn], dict(e.model.named_buffers())[bn])


class EvaluateEveryBatch(Strategy):
    """Evaluates on the test data after every step (as a strategy's feature pass would: the model goes to eval
    mode and back to train mode) and records whether any BN layer was in train mode at the next forward."""

    def __init__(self):
        self.bn_training = []

    def before_step(self, engine):
        self.bn_training.append(any(m.training for m in engine.model.modules() if isinstance(m, nn.BatchNorm2d)))

    def after_step(self, engine):
        engine.evaluate(engine.test_data)


def test_frozen_bn_statistics_stay_the_pretrained_ones_while_weights_and_affine_train():
    probe = EvaluateEveryBatch()
    e = engine([1.0], 2, seed=1, extra=[probe], policy="bottom", bn_stats="frozen")
    before = {n: b.clone() for n, b in e.model.named_buffers() if "running" in n}
    params = {n: p.detach().clone() for n, p in e.model.named_parameters()}
    e.fit()
    after = dict(e.model.named_buffers())
    assert all(torch.equal(before[n], after[n]) for n in before)  # statistics never updated
    assert probe.bn_training and not any(probe.bn_training)  # eval mode at every step, evaluations in between
    moved = [n for n, p in e.model.named_parameters() if not torch.equal(params[n], p.detach())]
    assert "features.1.weight" in moved and "features.0.weight" in moved  # BN affine and convs still train
    plain = engine([1.0], 1, seed=1, policy="bottom")
    plain.fit()
    assert any(not torch.equal(before[n], b) for n, b in plain.model.named_buffers() if n in before)


class StopAfter(Strategy):
    def __init__(self, n):
        self.n = n

    def after_epoch(self, engine):
        if engine.epoch + 1 == self.n:
            raise StopFit  # the engine still evaluates and checkpoints this epoch


@pytest.mark.parametrize("policy", ["uniform", "bottom"])
def test_resume_restores_the_frozen_sets(tmp_path, policy):
    full = Probe()
    kw = {"policy": policy, "depth_jitter": 0.5}
    e = engine(DEFAULT_RATIOS[:4], 4, out=tmp_path / "a", extra=[full], **kw)
    e.fit()
    part = engine(DEFAULT_RATIOS[:4], 4, out=tmp_path / "b", extra=[StopAfter(2)], **kw)
    part.fit()  # "interrupted" after 2 of 4 epochs
    assert len(part.history) == 2
    resumed = Probe()
    r = engine(DEFAULT_RATIOS[:4], 4, out=tmp_path / "b", extra=[resumed], **kw)
    r.cfg.resume = True
    r.fit()
    assert resumed.frozen == full.frozen[2:]
    assert [h["frozen_layers"] for h in r.history] == [h["frozen_layers"] for h in e.history]
    for (n, p), (_, q) in zip(e.model.named_parameters(), r.model.named_parameters()):
        assert torch.allclose(p, q, atol=1e-6), n


# ------------------------------------------------------------------------------------ bottom-block policy


def test_bottom_depth_is_drawn_around_the_schedule():
    g = torch.Generator().manual_seed(0)
    counts = np.bincount([draw_depth(50, 0.5, g, 0.1) for _ in range(11000)], minlength=51)
    assert counts[:20].sum() == 0 and counts[31:].sum() == 0  # 25 ± round(0.1 · 50)
    assert np.allclose(counts[20:31] / 11000, 1 / 11, atol=0.012)  # uniform on {20, ..., 30}
    # the expected frozen count is the schedule's exactly: the window narrows near 0 and N
    for n, r, jitter in ((50, 0.75, 0.1), (50, 0.96, 0.1), (8, 0.25, 0.5), (8, 0.5, 0.5)):
        k, w = num_frozen(n, r), min(round(jitter * n), num_frozen(n, r), n - num_frozen(n, r))
        draws = {draw_depth(n, r, g, jitter) for _ in range(400)}
        assert draws == set(range(k - w, k + w + 1)), (n, r)
    assert {draw_depth(50, 1.0, g, 0.1) for _ in range(50)} == {0}  # nothing frozen at r = 1
    assert {draw_depth(50, 0.0, g, 0.1) for _ in range(50)} == {50}
    assert {draw_depth(50, 0.5, g, 0.0) for _ in range(50)} == {25}  # no jitter: a fixed depth


def test_bottom_policy_freezes_the_first_convs_in_execution_order():
    probe = Probe()
    e = engine([1, 0.5, 0.25], 3, extra=[probe], policy="bottom", depth_jitter=0.0)
    e.fit()
    convs = [f"features.{3 * i}" for i in range(8)]  # Chain: conv, BN, ReLU per layer
    assert probe.frozen == [[], sorted(convs[:4]), sorted(convs[:6])]
    assert [h["trainable_conv_fraction"] for h in e.history] == [1.0, 0.5, 0.25]
    assert [h["frozen_prefix_params"] for h in e.history] == [0, 8, 12]  # every BN weight and bias below the block


def _step_with_records(model, policy_kw, x_seed=0):
    """One training forward/backward under the bottom policy; per module: does its output require grad."""
    e = engine([0.5], 1, model=model, policy="bottom", depth_jitter=0.0, **policy_kw)
    rf = e.strategies[0]
    rf.before_fit(e)
    e.epoch = 0
    rf.before_epoch(e)
    needs = {}

    def record(name):
        def hook(mod, args, out):
            needs.setdefault(name, out.requires_grad)  # (a hook that returns a value replaces the output)

        return hook

    hooks = [m.register_forward_hook(record(n)) for n, m in e.model.named_modules() if n and not list(m.children())]
    x, y = next(e.batches(train=True))
    e.model.train()
    nn.functional.cross_entropy(e.model(x), y).backward()
    for h in hooks:
        h.remove()
    return e, rf, needs


@pytest.mark.parametrize("model_name", ["chain", "tiny-resnet"])
def test_bottom_block_stops_autograd_at_the_lowest_trainable_conv(model_name):
    torch.manual_seed(0)
    model = Chain() if model_name == "chain" else fr.create_model("tiny-resnet", 3)
    e, rf, needs = _step_with_records(model, {})
    order = execution_order(e.model, 12, "cpu")
    convs = [n for n in order if isinstance(dict(e.model.named_modules())[n], nn.Conv2d)]
    k = num_frozen(len(convs), 0.5)
    assert rf.frozen == convs[:k]
    cut = order.index(convs[k])  # the lowest trainable conv
    below, above = order[:cut], order[cut:]
    params = dict(e.model.named_modules())
    for name in below:  # nothing below trains: no parameter, no gradient (stem and BN affine included)
        for p in params[name].parameters(recurse=False):
            assert not p.requires_grad and p.grad is None, name
        assert needs[name] is False, name  # its output is not part of the graph: backward never reaches it
    for name in above:  # everything from the lowest trainable conv up trains and gets a gradient
        for p in params[name].parameters(recurse=False):
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        assert needs[name] is True, name
    if model_name == "tiny-resnet":  # a block's shortcut reads the block's input: from below, so no grad there
        assert convs[k] == "layer2.conv1" and "layer1.conv2" in below
    rf.after_fit(e)
    assert all(p.requires_grad for p in e.model.parameters())


def test_bottom_block_gradients_equal_a_plain_model_with_the_same_frozen_parameters():
    e, rf, _ = _step_with_records(Chain(), {})
    ref = copy.deepcopy(e.model)
    for m in ref.modules():
        m._forward_pre_hooks.clear()
        m._forward_hooks.clear()
    ref.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    x, y = torch.randn(8, 3, 12, 12), torch.arange(8) % 3
    e.model.zero_grad(set_to_none=True)
    for model in (e.model, ref):
        nn.functional.cross_entropy(model(x), y).backward()
    for (n, p), (_, q) in zip(e.model.named_parameters(), ref.named_parameters()):
        assert (p.grad is None) == (q.grad is None), n
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), n


def test_options_are_checked_and_reachable_by_name():
    for bad in ({"policy": "top"}, {"depth_jitter": 0.7}, {"ratios": [1.2]}, {"ratios": []}):
        with pytest.raises(fr.FastRetrainError):
            RandomFreeze(**bad)
    assert RandomFreeze().policy == "bottom"
    from fastretrain.cli import parse_options
    from fastretrain.methods import build_strategies

    opts = parse_options(["random-freeze.policy=uniform", "random-freeze.depth_jitter=0.2", "random-freeze.ratios=0.5"])
    rf = build_strategies("fast-retrain", opts)[0]
    assert isinstance(rf, RandomFreeze) and (rf.policy, rf.depth_jitter, tuple(rf.ratios)) == ("uniform", 0.2, (0.5,))
