"""The comparison protocol (issue 12, METHODS.md §6): a test split fixed by split_seed (not the run seed) and
named by test_set_id; a stratified validation split disjoint from test; the best epoch chosen on validation
only (tie rule included); recipes that change settings only when asked, loudly, and never over a user's flag."""
import dataclasses
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from fastretrain import (DataBundle, FastRetrainError, StopFit, Strategy, TrainConfig, build_engine, from_arrays,
                         load_data, train)  # fmt: skip
from fastretrain.cli import main
from fastretrain.data import FeatureTensors
from fastretrain.run import make_config, resolve_config


def _folder(root, classes=("a", "b", "c"), per_class=20):
    """Class folders of distinct single-colour images: pixel (0, 0) identifies each image."""
    for c, cls in enumerate(classes):
        for i in range(per_class):
            (root / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 12), (10 * i, 80 * c, 7)).save(root / cls / f"{i}.png")
    return root


def _ids(images) -> set:
    """The (R, G) colour of each image: its identity in `_folder` data."""
    return {tuple(v) for v in images.x[:, :2, 0, 0].tolist()}


# ------------------------------------------------------------------------------------------------ splits


def test_two_run_seeds_see_one_test_set(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTRETRAIN_CACHE", str(tmp_path / "cache"))
    data = str(_folder(tmp_path / "d"))
    engines = [build_engine(TrainConfig(data=data, model="tiny-cnn", image_size=16, seed=s, device="cpu", out=None))
               for s in (0, 1)]  # fmt: skip
    a, b = (e.data for e in engines)
    assert torch.equal(a.test.x, b.test.x) and torch.equal(a.test.y, b.test.y)
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.train.x, b.train.x)
    assert a.test_set_id == b.test_set_id
    other = load_data(data, 16, split_seed=1, cache_dir=None)
    assert other.test_set_id != a.test_set_id and _ids(other.test) != _ids(a.test)


def test_test_set_id_names_the_images_not_the_container(tmp_path):
    d = _folder(tmp_path / "d")
    z = tmp_path / "d.zip"
    with zipfile.ZipFile(z, "w") as f:
        for p in sorted(d.rglob("*.png")):
            f.write(p, "wrapped/" + p.relative_to(d).as_posix())
    folder, zipped = load_data(str(d), 16, cache_dir=None), load_data(str(z), 24, cache_dir=None)
    assert folder.test_set_id == zipped.test_set_id  # same files and labels; container and image size do not matter
    cached = [load_data(str(d), 16, cache_dir=tmp_path / "cache") for _ in range(2)]  # built, then read from the cache
    assert cached[0].test_set_id == cached[1].test_set_id == folder.test_set_id
    assert torch.equal(cached[1].test.x, folder.test.x)


def test_val_and_test_are_disjoint_stratified_and_fixed(tmp_path):
    d = str(_folder(tmp_path / "d"))
    b = load_data(d, 16, test_fraction=0.2, val_fraction=0.25, cache_dir=None)
    # 20 per class: 4 test, then 25 % of the remaining 16 = 4 validation, 12 training
    assert torch.bincount(b.test.y).tolist() == [4, 4, 4] and torch.bincount(b.val.y).tolist() == [4, 4, 4]
    assert torch.bincount(b.train.y).tolist() == [12, 12, 12]
    tr, va, te = _ids(b.train), _ids(b.val), _ids(b.test)
    assert len(tr) + len(va) + len(te) == 60 and not (tr & va or tr & te or va & te)
    again = load_data(d, 16, test_fraction=0.2, val_fraction=0.25, cache_dir=None)
    assert _ids(again.val) == va and _ids(again.test) == te


def test_max_train_then_validation_drawn_with_split_seed():
    full = load_data("fashion-mnist", 16)
    b = load_data("fashion-mnist", 16, max_train=500, val_fraction=0.1)
    assert len(b.train) + len(b.val) == 500 and torch.bincount(b.val.y).tolist() == [5] * 10
    assert b.test_set_id == full.test_set_id and torch.equal(b.test.x, full.test.x)  # given test split kept
    same = load_data("fashion-mnist", 16, max_train=500, val_fraction=0.1)
    assert torch.equal(same.train.x, b.train.x) and torch.equal(same.val.x, b.val.x)
    other = load_data("fashion-mnist", 16, max_train=500, val_fraction=0.1, split_seed=1)
    assert not torch.equal(other.train.x, b.train.x) and other.test_set_id == b.test_set_id


def test_arrays_and_npz_get_validation_and_an_id(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8), np.arange(40) % 4
    xt, yt = rng.integers(0, 255, (12, 8, 8, 3), dtype=np.uint8), np.arange(12) % 4
    b = from_arrays(x, y, xt, yt, 16, val_fraction=0.2)
    assert torch.bincount(b.val.y).tolist() == [2] * 4 and len(b.train) == 32
    assert b.test_set_id == from_arrays(x[:20], y[:20], xt, yt, 8).test_set_id  # the test arrays alone decide it
    assert b.test_set_id != from_arrays(x, y, xt, (yt + 1) % 4, 16).test_set_id  # labels are part of it
    np.savez(tmp_path / "a.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    n = load_data(str(tmp_path / "a.npz"), 16, val_fraction=0.2)
    assert n.test_set_id == b.test_set_id and torch.equal(n.val.x, b.val.x)
    with pytest.raises(FastRetrainError, match="val_fraction must be in"):
        from_arrays(x, y, xt, yt, 16, val_fraction=1.0)


def test_val_fraction_zero_means_no_validation_and_last_epoch_is_best(tmp_path):
    cfg = TrainConfig(data="fashion-mnist", model="tiny-cnn", image_size=16, max_train=60, val_fraction=0.0, epochs=2,
                      batch_size=16, device="cpu", progress=False, out=str(tmp_path / "run"))  # fmt: skip
    s = train(cfg)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("val_acc" not in x and "val_loss" not in x for x in lines)
    assert s["val_images"] == 0 and s["best_val_acc"] is None and s["final_val_acc"] is None
    assert s["best_epoch"] == 2 and s["test_acc"] == lines[-1]["test_acc"] == s["final_test_acc"]
    assert s["train_images"] == 60


def test_old_config_files_map_onto_the_split_fields():
    cfg = TrainConfig.from_dict({"val_split": 0.3, "seed": 2})
    assert (cfg.test_fraction, cfg.split_seed, cfg.val_fraction) == (0.3, 2, 0.0)  # the split that run used


# ------------------------------------------------------------------------------------------------ selection


class Scripted(Strategy):
    """Overwrites the linear model after each epoch's training with a scripted bias: the epoch predicts
    class `cls` with margin `m` for every input (weights zero), so val/test accuracies are known exactly."""

    def __init__(self, script):
        self.script = script

    def after_epoch(self, engine):
        cls, m = self.script[engine.epoch]
        with torch.no_grad():
            engine.model.weight.zero_()
            engine.model.bias.copy_(torch.nn.functional.one_hot(torch.tensor(cls), 3).float() * m)


def _feature_bundle(val=True):
    def f(n, c):  # n random 2-d inputs, all of class c
        return FeatureTensors(torch.randn(n, 2, generator=torch.Generator().manual_seed(n)), torch.full((n,), c))

    return DataBundle(f(12, 0), f(6, 2), ["a", "b", "c"], "scripted", val=f(6, 1) if val else None)


# epoch 1: class 1, margin 1; 2: class 1, margin 3 (same val acc, lower loss); 3: same as 2 (a full tie);
# 4: class 2 (val acc 0, test acc 1). Validation is all class 1, test all class 2.
SCRIPT = [(1, 1.0), (1, 3.0), (1, 3.0), (2, 3.0)]


def _scripted_run(tmp_path, bundle, **kw):
    cfg = TrainConfig(model="x", epochs=4, batch_size=4, lr=1e-3, device="cpu", progress=False,
                      out=str(tmp_path / "run"), **kw)  # fmt: skip
    return build_engine(cfg, bundle, module=nn.Linear(2, 3), strategies=[Scripted(SCRIPT)])


def test_best_epoch_follows_validation_never_test(tmp_path):
    engine = _scripted_run(tmp_path, _feature_bundle())
    s = engine.fit()
    assert [h["val_acc"] for h in engine.history] == [1, 1, 1, 0]
    assert [h["test_acc"] for h in engine.history] == [0, 0, 0, 1]
    # val_acc ties on epochs 1-3; epoch 2 has the lower val_loss; epoch 3 ties on both, so the earlier stays
    assert engine.history[1]["val_loss"] < engine.history[0]["val_loss"] == pytest.approx(-np.log(np.e / (np.e + 2)))
    assert s["best_epoch"] == 2 and s["best_val_acc"] == 1 and s["test_acc"] == 0 and s["final_test_acc"] == 1
    best = load_file(str(tmp_path / "run" / "model_best.safetensors"))
    assert torch.equal(best["bias"], torch.tensor([0.0, 3.0, 0.0]))  # epoch 2's weights


def test_without_validation_the_last_epoch_is_best(tmp_path):
    s = _scripted_run(tmp_path, _feature_bundle(val=False)).fit()
    assert s["best_epoch"] == 4 and s["test_acc"] == 1 and s["best_val_acc"] is None


class NotEligible(Strategy):
    def __init__(self, epochs):
        self.epochs = epochs

    def after_eval(self, engine):
        if engine.epoch + 1 in self.epochs:
            engine.best_eligible = False


def test_ineligible_epochs_are_never_best(tmp_path):
    engine = _scripted_run(tmp_path, _feature_bundle())
    engine.strategies.append(NotEligible({2}))
    assert engine.fit()["best_epoch"] == 3  # epoch 2 excluded: epoch 3 (same val acc as 1, lower loss) is best
    engine = _scripted_run(tmp_path / "none", _feature_bundle())
    engine.strategies.append(NotEligible({1, 2, 3, 4}))
    s = engine.fit()
    assert s["best_epoch"] is None and s["test_acc"] is None and s["final_test_acc"] == 1
    assert not (tmp_path / "none" / "run" / "model_best.safetensors").exists()


def test_stop_in_after_eval_keeps_the_epoch(tmp_path):
    class StopAtTwo(Strategy):
        def after_eval(self, engine):  # e.g. early stopping on validation
            if engine.epoch == 1:
                raise StopFit

    engine = _scripted_run(tmp_path, _feature_bundle())
    engine.strategies.append(StopAtTwo())
    s = engine.fit()
    assert s["epochs"] == 2 and s["best_epoch"] == 2
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


class Interrupt(Strategy):
    def before_epoch(self, engine):
        if engine.epoch == 2:
            raise KeyboardInterrupt


def test_resume_keeps_the_best_epoch(tmp_path):
    straight = _scripted_run(tmp_path / "a", _feature_bundle()).fit()
    broken = _scripted_run(tmp_path / "b", _feature_bundle())
    broken.strategies.append(Interrupt())
    with pytest.raises(KeyboardInterrupt):
        broken.fit()
    cfg = dataclasses.replace(broken.cfg, resume=True)
    resumed = build_engine(cfg, _feature_bundle(), module=nn.Linear(2, 3), strategies=[Scripted(SCRIPT)]).fit()
    assert resumed["best_epoch"] == straight["best_epoch"] == 2
    a, b = (load_file(str(tmp_path / d / "run" / "model_best.safetensors")) for d in ("a", "b"))
    assert torch.equal(a["bias"], b["bias"])
    drop = ("wall_seconds", "cpu_seconds", "images_per_second", "load", "load_warning", "run_id")
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in straight.items() if k not in drop}


def test_mp_refine_reports_validation_before_refining(tmp_path):
    class ValSnapshot(Strategy):
        order = 0  # after_epoch before mp-refine's (50): the model as SGD left it

        def after_epoch(self, engine):
            self.acc = engine.evaluate(engine.val_data)[1]

    from fastretrain.testing import tiny_images

    x, y = tiny_images(12, 3, 12, seed=0)
    bundle = from_arrays(x.numpy(), y.numpy(), x[:9].numpy(), y[:9].numpy(), 16, val_fraction=0.25)
    snap = ValSnapshot()
    cfg = TrainConfig(model="tiny-cnn", method="mp-refine", epochs=1, image_size=16, batch_size=8, lr=0.05,
                      device="cpu", progress=False, out=None)  # fmt: skip
    engine = build_engine(cfg, bundle, strategies=[snap])
    engine.fit()
    assert engine.history[-1]["val_acc_before_refine"] == snap.acc


# ------------------------------------------------------------------------------------------------ recipes


def test_methods_change_no_settings_only_recipes_do():
    plain = TrainConfig()
    for method in ("fast-retrain", "linear-probe", "sgdm"):
        cfg = make_config(method=method)
        assert dataclasses.replace(cfg, method=plain.method) == plain, method
    cfg, lines = resolve_config(method="fast-retrain", recipe="authors", lr=0.05)
    assert (cfg.lr, cfg.epochs, cfg.schedule, cfg.recipe) == (0.05, 8, "piecewise:1x3,0.1x3,0.01x2", "authors")
    assert "recipe authors: --lr 0.05 as given (the recipe has 0.001)" in lines
    assert resolve_config(method="fast-retrain")[1] == []


def test_fastai_recipe_and_its_freeze_epochs_option():
    cfg, lines = resolve_config(method="freeze-unfreeze", recipe="fastai")
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.schedule) == ("adamw", 2e-3, 0.01, "onecycle")
    assert cfg.options == {"freeze-unfreeze": {"freeze_epochs": 1}}  # equal to the option's default: no line for it
    assert not any("freeze_epochs" in x for x in lines) and "recipe fastai: --optimizer adamw (default sgd)" in lines
    assert make_config(method="sgdm", recipe="fastai").options == {}  # options only for methods that run
    mine = {"freeze-unfreeze": {"freeze_epochs": 2}}
    cfg, lines = resolve_config(method="freeze-unfreeze", recipe="fastai", options=mine)
    assert cfg.options == {"freeze-unfreeze": {"freeze_epochs": 2}}
    assert "recipe fastai: -o freeze-unfreeze.freeze_epochs 2 as given (the recipe has 1)" in lines


def test_adam_optimizer_matches_torch_adam(tmp_path):
    bundle = _feature_bundle()
    cfg = TrainConfig(model="x", optimizer="adam", epochs=1, batch_size=12, lr=0.01, weight_decay=0.1,
                      schedule="constant", device="cpu", progress=False, out=None)  # fmt: skip
    torch.manual_seed(0)
    model, ref = nn.Linear(2, 3), nn.Linear(2, 3)
    ref.load_state_dict(model.state_dict())
    engine = build_engine(cfg, bundle, module=model)
    assert type(engine.optimizer) is torch.optim.Adam
    engine.fit()  # one batch of all 12 training rows, no augmentation (features)
    opt = torch.optim.Adam(ref.parameters(), lr=0.01, weight_decay=0.1)
    nn.functional.cross_entropy(ref(bundle.train.x), bundle.train.y).backward()
    opt.step()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-7)
