"""Baselines: linear probe (features cached once, backbone untouched) and freeze-then-unfreeze."""
import pytest
import torch

from fastretrain import build_engine


def test_linear_probe_runs_the_backbone_once_per_image(cfg, bundle):
    cfg.method, cfg.epochs, cfg.out, cfg.lr = "linear-probe", 8, None, 0.5
    engine = build_engine(cfg, bundle)
    seen = []
    engine.model.features.register_forward_hook(lambda m, i, o: seen.append(len(i[0])))
    before = {k: v.clone() for k, v in engine.model.state_dict().items()}
    summary = engine.fit()
    assert sum(seen) == len(bundle.train) + len(bundle.test)  # one forward per image, whatever the epoch count
    after = engine.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}  # backbone (and its BN statistics) untouched
    assert summary["test_acc"] > 0.6  # the head learned on the cache (3 classes, chance 0.33)
    assert engine.history[-1]["train_loss"] < engine.history[0]["train_loss"]


def test_linear_probe_eval_matches_full_model(cfg, bundle):
    cfg.method, cfg.out = "linear-probe", None
    engine = build_engine(cfg, bundle)
    engine.fit()  # after_fit hands back the image data and the whole model
    loss, acc = engine.evaluate()
    assert acc == pytest.approx(engine.history[-1]["test_acc"])


def test_freeze_unfreeze_trains_head_first_then_all_with_discriminative_lr(cfg, bundle):
    cfg.method, cfg.epochs, cfg.out = "freeze-unfreeze", 2, None
    engine = build_engine(cfg, bundle)
    snaps, scales = [], []

    class Snap:
        order = 100

        def after_epoch(self, engine):
            snaps.append({k: v.clone() for k, v in engine.model.named_parameters()})
            scales.append(sorted({g["lr_scale"] for g in engine.optimizer.param_groups}))

    engine.strategies.append(Snap())
    start = {k: v.clone() for k, v in engine.model.named_parameters()}
    engine.fit()
    moved0 = {k for k in start if not torch.equal(start[k], snaps[0][k])}
    assert moved0 == {"fc.weight", "fc.bias"}
    moved1 = {k for k in start if not torch.equal(snaps[0][k], snaps[1][k])}
    assert moved1 == set(start)
    assert scales[0] == [1.0]
    assert scales[1][0] == pytest.approx(0.01) and scales[1][-1] == 1.0 and len(scales[1]) == 4  # 3 body groups + head
