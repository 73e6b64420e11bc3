"""Every pair of registered methods, in either order, either trains for one epoch on a tiny model (with a validation
split and a run folder, so the best-epoch choice and the run's files are exercised) or is refused when the strategies
are built, in one line naming both (a strategy's declared `conflicts`)."""
import itertools

import pytest
import torch
from torch import nn

from fastretrain import TrainConfig, build_engine
from fastretrain.errors import FastRetrainError
from fastretrain.cli import main
from fastretrain.methods import METHODS, build_strategies, load_all, method_names
from fastretrain.models import BasicBlock, TinyResNet
from fastretrain.testing import tiny_bundle

# options that make each method act within one epoch of a tiny run (its defaults spread over 8 or more epochs)
ACTIVE = {
    "random-freeze": {"ratios": (0.5,)},  # the default trains everything in epoch 1
    "kernel-rescale": {"switch_epoch": 1},  # phase 1 for the epoch, the switch at the end
    "decompose": {"subnets": 2, "sub_epochs": 1, "parallel": "sequential", "threads": 1},
    "linear-probe": {"random_backbone": True},
    "freeze-unfreeze": {"random_backbone": True},
}
PAIRS = list(itertools.permutations(sorted(load_all()), 2))


class DropPathBlock(BasicBlock):
    """tiny-resnet's block with timm's `drop_path` slot, so stochastic-depth has somewhere to act."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(cin, cout, stride)
        self.drop_path = nn.Identity()

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.drop_path(self.bn2(self.conv2(out))) + self.shortcut(x))


def tiny_resnet(classes: int) -> nn.Module:
    torch.manual_seed(0)
    model = TinyResNet(classes)
    model.layer1, model.layer2 = DropPathBlock(8, 8), DropPathBlock(8, 16, 2)
    return model


@pytest.mark.parametrize("a,b", PAIRS, ids=[f"{a}+{b}" for a, b in PAIRS])
def test_every_pair_trains_or_is_refused_in_one_line(a, b, tmp_path):
    spec = f"{a},{b}"
    options = {m: ACTIVE[m] for m in method_names(spec) if m in ACTIVE}
    try:
        build_strategies(spec, options)
    except FastRetrainError as e:
        message = str(e)
        assert "\n" not in message and "cannot be combined" in message, message
        assert a in message and b in message, message
        return
    bundle = tiny_bundle(n_per_class=12, size=12, image_size=16)
    bundle.val = tiny_bundle(n_per_class=4, size=12, image_size=16, seed=7).test
    cfg = TrainConfig(model="tiny-resnet", epochs=1, image_size=16, batch_size=12, lr=0.05, device="cpu",
                      progress=False, out=str(tmp_path), method=spec, options=options)
    module = tiny_resnet(bundle.num_classes)
    if "decompose" in (a, b):  # decompose splits a width-parametrised model: its epochs go to sub-networks first
        cfg.model, cfg.width, cfg.epochs, module = "vgg-small", 0.25, 2, None
    engine = build_engine(cfg, bundle, module=module)
    summary = engine.fit()
    assert engine.history and all(torch.isfinite(p).all() for p in engine.model.parameters())
    assert summary["epochs"] >= 1 or "auto" in (a, b)  # auto may deliver its ridge head alone (epoch 0)


def test_declared_conflicts_name_registered_methods_with_a_reason():
    for name, method in load_all().items():
        for other, why in getattr(method.strategy, "conflicts", {}).items():
            assert other in METHODS and other != name and why, (name, other)


def test_the_cli_refuses_a_conflict_in_one_line_before_loading_anything(capsys, tmp_path):
    code = main(["train", "--method", "linear-probe,fast-retrain", "--data", str(tmp_path / "nothing-here"),
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err, err
    assert "linear-probe and random-freeze (part of fast-retrain) cannot be combined" in err
    assert not (tmp_path / "run").exists()
