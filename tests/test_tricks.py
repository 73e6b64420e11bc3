"""The five tricks RIFLE is compared with: DisturbLabel's rate and uniformity (binomial / chi-square),
DropConnect and Dropout identity in eval and the exact masked layer in train, drop-path only in train
(with timm's rate rule, and a clear error for models without residual slots), cyclic LR in closed form."""
import copy
import dataclasses
import math

import pytest
import torch
from scipy import stats
from torch import nn
from torch.nn import functional as F

from fastretrain import FastRetrainError, Strategy, build_engine, create_model
from fastretrain.engine import seed_from
from fastretrain.strategies.cyclic_lr import CyclicLR
from fastretrain.strategies.disturblabel import DisturbLabel, disturb_labels
from fastretrain.strategies.dropconnect import DropConnect, dropconnect_mask
from fastretrain.strategies.dropout import Dropout
from fastretrain.strategies.rifle import reset_boundaries
from fastretrain.strategies.stochastic_depth import StochasticDepth, set_drop_path


class ResBlock(nn.Module):
    """A residual block with timm's `drop_path` slot (nn.Identity when the rate is 0)."""

    def __init__(self, c):
        super().__init__()
        self.conv, self.bn, self.drop_path = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.Identity()

    def forward(self, x):
        return x + self.drop_path(torch.relu(self.bn(self.conv(x))))


class TinyResidual(nn.Module):
    def __init__(self, num_classes=3, c=8, blocks=4):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, 2, 1)
        self.blocks = nn.Sequential(*[ResBlock(c) for _ in range(blocks)])
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


class FakeEngine:
    """The parts of the engine a strategy's before_fit touches, around a bare model."""

    def __init__(self, model, seed=0, epoch=0):
        self.model, self.cfg, self.epoch, self._rngs = model, type("C", (), {"seed": seed, "epochs": 8})(), epoch, {}

    def rng(self, tag, per_rank=False):
        key = f"{tag}/0"
        if key not in self._rngs:
            self._rngs[key] = torch.Generator().manual_seed(seed_from(self.cfg.seed, self.epoch, key))
        return self._rngs[key]


# ------------------------------------------------------------------ DisturbLabel
def test_disturblabel_rate_and_uniform_replacements():
    n, c, alpha = 200_000, 10, 0.1
    y = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(1))
    new, replaced = disturb_labels(y, c, alpha, torch.Generator().manual_seed(2))
    # replacement rate: binomial(n, alpha), tolerance 5 standard deviations (~0.33 pt)
    sd = math.sqrt(alpha * (1 - alpha) / n)
    assert abs(replaced.float().mean().item() - alpha) < 5 * sd
    # labels that did change: alpha (c-1)/c of them (a uniform draw may pick the true class again)
    changed = (new != y).float().mean().item()
    assert abs(changed - alpha * (c - 1) / c) < 5 * sd
    assert torch.equal(new[~replaced], y[~replaced])
    # replaced labels are uniform over all c classes: chi-square goodness of fit, p > 1e-3
    counts = torch.bincount(new[replaced], minlength=c).double()
    chi2 = (((counts - counts.mean()) ** 2) / counts.mean()).sum().item()
    assert chi2 < stats.chi2.ppf(0.999, df=c - 1)
    # and independent of the original label: the new label of replaced class-0 samples is uniform too
    counts0 = torch.bincount(new[replaced & (y == 0)], minlength=c).double()
    assert (((counts0 - counts0.mean()) ** 2) / counts0.mean()).sum().item() < stats.chi2.ppf(0.999, df=c - 1)
    # seeded: the same generator state gives the same draw
    again, _ = disturb_labels(y, c, alpha, torch.Generator().manual_seed(2))
    assert torch.equal(again, new)
    # alpha 0 and 1
    assert torch.equal(disturb_labels(y, c, 0.0, torch.Generator())[0], y)
    assert disturb_labels(y, c, 1.0, torch.Generator())[1].all()


def test_disturblabel_in_training_changes_only_the_batch_labels(cfg, bundle):
    seen = []

    class Labels(Strategy):
        order = 100

        def before_batch(self, engine):
            seen.append((engine.y.clone(), engine.train_data.y.clone()))

    cfg = dataclasses.replace(cfg, out=None, epochs=2)
    engine = build_engine(cfg, bundle, strategies=[DisturbLabel(alpha=0.5), Labels()])
    engine.fit()
    assert torch.equal(engine.train_data.y, bundle.train.y)  # the data set itself is never modified
    total = sum(len(y) for y, _ in seen)
    replaced = sum(h["disturbed_labels"] for h in engine.history)
    assert 0.3 < replaced / total < 0.7  # alpha 0.5 on 96 labels
    with pytest.raises(FastRetrainError, match="alpha"):
        DisturbLabel(alpha=1.5).before_fit(engine)


# ------------------------------------------------------------------ DropConnect
def test_dropconnect_identity_in_eval_masked_in_train():
    fc = nn.Linear(20, 4)
    model = nn.Sequential(nn.Flatten(), fc)
    eng = FakeEngine(model, seed=7)
    dc = DropConnect(p=0.5)
    dc.before_fit(eng)
    x = torch.randn(16, 20)
    model.eval()
    assert torch.equal(model(x), F.linear(x, fc.weight, fc.bias))  # identity in eval
    model.train()
    out = model(x)
    mask = dropconnect_mask(fc.weight.shape, 0.5, torch.Generator().manual_seed(seed_from(7, 0, "dropconnect/0")))
    assert torch.allclose(out, F.linear(x, fc.weight * mask, fc.bias), atol=1e-6)
    assert set(mask.unique().tolist()) <= {0.0, 2.0}  # kept weights scaled by 1/(1-p)
    out.sum().backward()
    assert (fc.weight.grad[mask == 0] == 0).all() and (fc.weight.grad[mask != 0] != 0).all()
    assert not torch.equal(model(x), out)  # a new mask at the next step
    dc.after_fit(eng)
    assert torch.equal(model(x), F.linear(x, fc.weight, fc.bias))  # hook removed


def test_dropconnect_mask_statistics():
    m = dropconnect_mask((1000, 1000), 0.5, torch.Generator().manual_seed(0))
    assert abs((m == 0).float().mean().item() - 0.5) < 5 * math.sqrt(0.25 / 1e6)
    assert abs(m.mean().item() - 1.0) < 0.005  # unbiased: E[mask] = 1


def test_dropout_before_fc_identity_in_eval():
    fc = nn.Linear(30, 3)
    model = nn.Sequential(fc)
    d = Dropout(p=0.5)
    d.before_fit(FakeEngine(model))
    x = torch.rand(64, 30) + 0.1
    model.eval()
    assert torch.equal(model(x), F.linear(x, fc.weight, fc.bias))
    model.train()
    torch.manual_seed(3)
    out = model(x)
    torch.manual_seed(3)
    assert torch.equal(out, F.linear(F.dropout(x, 0.5, True), fc.weight, fc.bias))


# ------------------------------------------------------------------ stochastic depth
def test_drop_path_rates_follow_timm_rule_and_only_act_in_train():
    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", 3)
    plain = copy.deepcopy(model)
    blocks = set_drop_path(model, 0.2)
    n = len(blocks)
    assert n == 16 and [p for _, p in blocks] == pytest.approx([0.2 * i / n for i in range(n)])
    assert model.blocks[5][1].drop_path.drop_prob == pytest.approx(0.2 * 12 / 16)
    # timm's own constructor argument gives the same rates
    timm_model = create_model("tf_efficientnet_lite0", 3, drop_path_rate=0.2)
    ref = [getattr(m.drop_path, "drop_prob", 0.0) for m in timm_model.modules() if hasattr(m, "drop_path")]
    assert ref == pytest.approx([p for _, p in blocks])
    x = torch.randn(8, 3, 32, 32)
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))  # eval: no path dropped
        model.train(), plain.train()
        torch.manual_seed(1)
        a = model(x)
        b = plain(x)
        c = model(x)
    assert not torch.allclose(a, b) and not torch.allclose(a, c)  # train: random whole-branch drops
    # per sample: a dropped branch zeroes that sample's residual update, so some samples differ, not via noise
    assert (a - b).abs().flatten(1).amax(1).gt(0).any()


def test_drop_path_is_set_on_a_running_model_and_refused_without_slots(cfg, bundle):
    seen = []

    class Watch(Strategy):
        order = 100

        def before_batch(self, engine):  # per-sample drops: some samples' block output equals its input
            x = engine.model.stem(engine.x)
            blk = engine.model.blocks[3]
            seen.append(bool((blk(x) == x).flatten(1).all(1).any()))

    cfg = dataclasses.replace(cfg, out=None, epochs=3, method="stochastic-depth", options={"stochastic-depth": {"rate": 0.9}})
    torch.manual_seed(0)
    engine = build_engine(cfg, bundle, module=TinyResidual(), strategies=[Watch()])
    engine.fit()
    sd = next(s for s in engine.strategies if isinstance(s, StochasticDepth))
    assert [p for _, p in sd.blocks] == pytest.approx([0, 0.225, 0.45, 0.675])
    assert any(seen)  # branches were dropped while training (p 0.675 at block 3)
    engine.model.eval()
    x = torch.randn(4, 3, 16, 16)
    x = engine.model.stem(x)
    assert not (engine.model.blocks[3](x) == x).flatten(1).all(1).any()  # never in eval
    with pytest.raises(FastRetrainError, match="TinyCNN has no residual blocks"):
        StochasticDepth().before_fit(FakeEngine(create_model("tiny-cnn", 3)))
    with pytest.raises(FastRetrainError, match="rate"):
        StochasticDepth(rate=1.0).before_fit(FakeEngine(TinyResidual()))
    tv = create_model("tv:resnet18", 3)  # no slots in torchvision's ResNet: refused, named
    with pytest.raises(FastRetrainError, match="ResNet has no residual blocks"):
        set_drop_path(tv, 0.1)
    from torchvision.ops import StochasticDepth as TVSD

    tv = create_model("tv:efficientnet_b0", 3)  # torchvision StochasticDepth modules are set
    set_drop_path(tv, 0.1)
    ps = [m.p for m in tv.modules() if isinstance(m, TVSD)]
    assert ps[0] == 0.0 and ps[-1] == pytest.approx(0.1 * (len(ps) - 1) / len(ps))


# ------------------------------------------------------------------ cyclic LR
def test_cyclic_lr_restarts_with_rifles_period(cfg, bundle):
    lrs = []

    class LR(Strategy):
        def after_step(self, engine):
            lrs.append((engine.epoch, engine.iter, engine.lr))

    cfg = dataclasses.replace(cfg, out=None, epochs=8, lr=0.1)
    engine = build_engine(cfg, bundle, strategies=[CyclicLR(), LR()])
    n = engine.num_batches()
    engine.fit()
    for e, i, lr in lrs:
        t = e + i / n
        p = 8 / 4
        assert lr == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * (t % p) / p)))
    # warm restarts (LR back to its peak) exactly where RIFLE's default resets are
    restarts = [e for e, i, lr in lrs if lr == pytest.approx(0.1)]
    assert restarts == [0, 2, 4, 6] and reset_boundaries(8) == [2, 4, 6]
    with pytest.raises(FastRetrainError, match="period"):
        CyclicLR(period=0).before_fit(engine)
