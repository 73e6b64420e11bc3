"""One owner of what trains: Engine.set_trainable keeps each strategy's freezes and LR multipliers apart (a thaw
releases only its caller's holds, multipliers multiply), forget_optimizer_state, and the composition the issue
names: random-freeze's block stays frozen through freeze-unfreeze's thaw, also across a resume."""
import dataclasses

import pytest
import torch

from fastretrain import Strategy, StopFit, TrainConfig, build_engine, train
from fastretrain.errors import FastRetrainError
from fastretrain.strategies.random_freeze import RandomFreeze
from fastretrain.testing import assert_same_run, tiny_bundle
from fastretrain.trainable import TrainableSet


def test_holds_are_per_owner_and_scales_multiply():
    t = TrainableSet()
    t.update("a", freeze=["x", "y"], lr_scale={"x": 0.5, "z": 3.0})
    t.update("b", freeze=["y"], lr_scale={"x": 0.1})
    t.update("a", thaw=["x", "y"])
    assert not t.is_frozen("x") and t.is_frozen("y")  # b still holds y
    assert t.lr_scale() == pytest.approx({"x": 0.05, "z": 3.0})
    t.update("a", thaw=["q"], freeze=["q"])  # thaw first, then freeze: a name in both stays held
    assert t.is_frozen("q")
    t.update("b", lr_scale={})  # an owner's multipliers are replaced, not merged with its earlier ones
    assert t.lr_scale() == pytest.approx({"x": 0.5, "z": 3.0})
    u = TrainableSet()
    u.load_state_dict(t.state_dict())
    assert u.frozen == t.frozen and u.scales == t.scales


def _cfg(tmp_path=None, **kw):
    opts = {"freeze-unfreeze": {"random_backbone": True}, "random-freeze": {"ratios": (0.5,), "depth_jitter": 0.0}}
    return TrainConfig(model="tiny-resnet", epochs=3, image_size=16, batch_size=8, lr=0.05, device="cpu",
                       progress=False, out=str(tmp_path) if tmp_path else None, method="random-freeze,freeze-unfreeze",
                       options=opts, **kw)


class Snap(Strategy):
    order = 1000

    def __init__(self):
        self.params, self.frozen, self.scales = [], [], []

    def before_epoch(self, engine):
        self.params.append({n: p.detach().clone() for n, p in engine.model.named_parameters()})
        self.frozen.append({n for n, p in engine.model.named_parameters() if not p.requires_grad})
        self.scales.append(dict(engine.lr_scale))


def test_freeze_unfreeze_does_not_thaw_random_freezes_block():
    snap = Snap()
    engine = build_engine(_cfg(), tiny_bundle(), strategies=[snap])
    (rf,) = [s for s in engine.strategies if isinstance(s, RandomFreeze)]
    engine.fit()
    assert rf.frozen and all(p.requires_grad for p in engine.model.parameters())  # as it came, at the end
    # epoch 2: freeze-unfreeze has thawed its body; random-freeze's bottom block (and the prefix) stay frozen
    block = {n for n in snap.frozen[1] if n.split(".")[0] in ("stem", "layer1")}
    assert block and snap.frozen[1] == block
    assert not any(torch.equal(snap.params[1][n], snap.params[2][n]) for n in snap.params[1] if n not in block)
    assert all(torch.equal(snap.params[1][n], snap.params[2][n]) for n in block)
    assert snap.scales[1]["fc.weight"] == 0.5 and snap.scales[1]["stem.0.weight"] == pytest.approx(0.005)


def test_lr_multipliers_of_two_owners_multiply(cfg, bundle):
    class Double(Strategy):
        order = 10  # after freeze-unfreeze, whose multipliers change at epoch 2

        def before_fit(self, engine):
            engine.set_trainable(self, lr_scale={"fc.weight": 2.0})

    snap = Snap()
    cfg.method, cfg.out = "freeze-unfreeze", None
    cfg.options = {"freeze-unfreeze": {"random_backbone": True}}
    build_engine(cfg, bundle, strategies=[Double(), snap]).fit()
    assert snap.scales[0]["fc.weight"] == 2.0 and snap.scales[1]["fc.weight"] == 2.0 * 0.5


def test_forget_optimizer_state_by_module_and_name(cfg, bundle):
    cfg.out, cfg.epochs = None, 1
    engine = build_engine(cfg, bundle)
    engine.fit()
    fc = engine.model.fc
    engine.forget_optimizer_state([fc, "features.0.0.weight"])
    state = engine.optimizer_state_by_name()
    assert state["fc.weight"] == {} and state["fc.bias"] == {} and state["features.0.0.weight"] == {}
    assert "momentum_buffer" in state["features.1.0.weight"]
    with pytest.raises(FastRetrainError, match="no parameter 'fc.nope'"):
        engine.forget_optimizer_state(["fc.nope"])
    with pytest.raises(FastRetrainError, match="not a parameter"):
        engine.set_trainable("me", freeze=[torch.zeros(1)])


class StopAfterFirst(Strategy):
    def after_epoch(self, engine):
        raise StopFit


def test_resume_keeps_each_owners_holds(tmp_path):
    """Interrupted after epoch 1 (random-freeze's block inside freeze-unfreeze's frozen body) and resumed: the
    same run as one straight through."""
    straight = _cfg(tmp_path / "straight", deterministic=True)
    train(straight, bundle=tiny_bundle())
    broken = dataclasses.replace(straight, out=str(tmp_path / "broken"))
    train(broken, bundle=tiny_bundle(), strategies=[StopAfterFirst()])
    held = torch.load(tmp_path / "broken" / "checkpoint.pt", weights_only=True)["trainable_by"]["frozen"]
    assert set(held) == {"random-freeze", "freeze-unfreeze"}  # the checkpoint knows who holds what
    train(dataclasses.replace(broken, resume=True), bundle=tiny_bundle())
    assert [x["epoch"] for x in assert_same_run(tmp_path / "straight", tmp_path / "broken")] == [1, 2, 3]
