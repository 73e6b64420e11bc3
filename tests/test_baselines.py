"""Baselines: linear probe (features cached once, backbone untouched) and freeze-then-unfreeze."""
import pytest
import torch

from fastretrain import build_engine

RANDOM_OK = {"linear-probe": {"random_backbone": True}}  # the tests' tiny models start from random weights


def test_linear_probe_runs_the_backbone_once_per_image(cfg, bundle):
    cfg.method, cfg.epochs, cfg.out, cfg.lr = "linear-probe", 8, None, 0.5
    cfg.options = RANDOM_OK  # tiny-cnn has no pretrained weights
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


def test_linear_probe_caches_validation_and_test_features_off_the_clock(cfg, bundle, monkeypatch):
    """Caching the training features is the method's cost; caching validation and test features stands for the
    evaluation passes that are off the clock for every method, so they are excluded alike."""
    import contextlib

    from fastretrain.engine import Engine
    from fastretrain.strategies.linear_probe import LinearProbe

    depth, seen = [0], []
    real_untimed, real_cache = Engine.untimed, LinearProbe._cache

    @contextlib.contextmanager
    def untimed(self):
        depth[0] += 1
        try:
            with real_untimed(self):
                yield
        finally:
            depth[0] -= 1

    def cache(engine, data, head):
        seen.append((data, depth[0] > 0))
        return real_cache(engine, data, head)

    monkeypatch.setattr(Engine, "untimed", untimed)
    monkeypatch.setattr(LinearProbe, "_cache", staticmethod(cache))
    from fastretrain.data import from_arrays
    from fastretrain.testing import tiny_images

    (xtr, ytr), (xte, yte) = tiny_images(16, 3, 12, 0), tiny_images(8, 3, 12, 1000)
    with_val = from_arrays(xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy(), 16, val_fraction=0.25)
    cfg.method, cfg.out, cfg.options = "linear-probe", None, RANDOM_OK
    engine = build_engine(cfg, with_val)
    train, val, test = engine.train_data, engine.val_data, engine.test_data
    assert val is not None
    engine.fit()
    assert [(d is train, d is val, d is test, off) for d, off in seen] == [
        (True, False, False, False), (False, True, False, True), (False, False, True, True)]


def test_linear_probe_eval_matches_full_model(cfg, bundle):
    cfg.method, cfg.out, cfg.options = "linear-probe", None, RANDOM_OK
    engine = build_engine(cfg, bundle)
    engine.fit()  # after_fit hands back the image data and the whole model
    loss, acc = engine.evaluate()
    assert acc == pytest.approx(engine.history[-1]["test_acc"])


@pytest.mark.parametrize("groups", [2, 3])
def test_freeze_unfreeze_is_fastai_fine_tune(cfg, bundle, groups):
    """Epoch 1: head (x1) and the body's BN (x1/10, fastai's slice(base_lr)) train, nothing else moves; then all
    layers train with fastai's even_mults(base/200, base/2, groups): the body's groups /100 apart, all halved."""
    cfg.method, cfg.epochs, cfg.out = "freeze-unfreeze", 2, None
    cfg.options = {"freeze-unfreeze": {"groups": groups, "random_backbone": True}}
    engine = build_engine(cfg, bundle)
    snaps, scales = [], []

    class Snap:
        order = 100

        def after_epoch(self, engine):
            snaps.append({k: v.clone() for k, v in engine.model.named_parameters()})
            trained = [n for n, p in engine.model.named_parameters() if p.requires_grad]
            scales.append({n: engine.lr_scale.get(n, 1.0) for n in trained})

    engine.strategies.append(Snap())
    start = {k: v.clone() for k, v in engine.model.named_parameters()}
    engine.fit()
    bns = [n for n, m in engine.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    bn = {f"{n}.{w}" for n in bns for w in ("weight", "bias")}
    assert len(bn) == 6
    moved0 = {k for k in start if not torch.equal(start[k], snaps[0][k])}
    assert moved0 == {"fc.weight", "fc.bias"} | bn  # convs frozen, their BN trains (fastai's train_bn)
    assert scales[0] == {"fc.weight": 1.0, "fc.bias": 1.0, **{k: 0.1 for k in bn}}
    moved1 = {k for k in start if not torch.equal(snaps[0][k], snaps[1][k])}
    assert moved1 == set(start)
    body = [k for k in start if not k.startswith("fc.")]
    expect = [0.5 * 100 ** -((groups - 1 - g) / (groups - 1)) for g in range(groups - 1)]  # fastai's even_mults / 2
    got = [scales[1][k] for k in body]
    assert sorted(set(got)) == pytest.approx(sorted(expect))
    assert got == sorted(got)  # first layers slowest: contiguous groups in order
    assert scales[1]["fc.weight"] == scales[1]["fc.bias"] == 0.5
    assert all(p.requires_grad for p in engine.model.parameters())


def test_freeze_unfreeze_with_the_fastai_recipe(bundle):
    from fastretrain.run import make_config

    cfg = make_config(method="freeze-unfreeze", recipe="fastai", model="tiny-cnn", epochs=2, image_size=16,
                      batch_size=8, device="cpu", progress=False,
                      options={"freeze-unfreeze": {"random_backbone": True}})
    cfg.out = None
    assert (cfg.lr, cfg.schedule) == (2e-3, "onecycle") and cfg.optimizer in ("adam", "adamw")
    from fastretrain.strategies.freeze_unfreeze import FreezeUnfreeze

    engine = build_engine(cfg, bundle)
    (fu,) = [s for s in engine.strategies if isinstance(s, FreezeUnfreeze)]
    assert (fu.freeze_epochs, fu.lr_mult, fu.groups) == (1, 100.0, 2)
    engine.fit()
    assert isinstance(engine.optimizer, (torch.optim.Adam, torch.optim.AdamW))


def test_freeze_unfreeze_options_are_checked():
    from fastretrain import FastRetrainError
    from fastretrain.strategies.freeze_unfreeze import FreezeUnfreeze

    for bad in ({"groups": 1}, {"lr_mult": 0.5}, {"freeze_epochs": -1}, {"unfrozen_lr": 0}):
        with pytest.raises(FastRetrainError):
            FreezeUnfreeze(**bad)
