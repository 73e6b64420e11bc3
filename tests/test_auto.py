"""--method auto: its choices on constructed cases (the head wins: it stops early; features must move: it
fine-tunes), its plan from the budget, and the budget kept."""
import pytest
import torch

from fastretrain import TrainConfig, build_engine
from fastretrain.data import from_arrays
from fastretrain.strategies.auto import MIN_EPOCHS, PLANS, choose
from fastretrain.testing import tiny_images


def bundle(n=48, seed=0, noise=0.3):
    """Tiny learnable images; a fraction `noise` of the training labels (validation's too) drawn at random, so
    that no model is perfect on validation."""
    x, y = tiny_images(n, 3, 12, seed)
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(len(y), generator=g) < noise
    y = torch.where(flip, torch.randint(0, 3, (len(y),), generator=g), y)
    xt, yt = tiny_images(8, 3, 12, seed + 1000)
    return from_arrays(x.numpy(), y.numpy(), xt.numpy(), yt.numpy(), 16, name="tiny", val_fraction=0.25)


def cfg(tmp_path, **kw):
    base = dict(model="tiny-cnn", method="auto", epochs=4, image_size=16, batch_size=8, lr=0.05, device="cpu",
                progress=False, out=str(tmp_path / "run"))
    return TrainConfig(**{**base, **kw})


def test_the_plan_is_the_deepest_that_fits_min_epochs():
    full = 10.0  # seconds per full-depth epoch
    assert choose(None, full)[0] == PLANS[0][0]  # no budget: fast-retrain's schedule
    assert choose(MIN_EPOCHS * 0.71 * full + 1, full)[0] == "fast-retrain schedule"
    assert choose(MIN_EPOCHS * 0.53 * full + 1, full)[0] == "bottom half frozen"
    assert choose(MIN_EPOCHS * 0.41 * full + 1, full)[0] == "bottom three quarters frozen"
    assert choose(1.5 * 0.41 * full, full)[0] == "bottom three quarters frozen"  # at least one epoch fits
    assert choose(0.5 * 0.41 * full, full) is None  # not even one: the head alone


def test_when_fine_tuning_does_not_pay_it_stops_and_returns_the_head(tmp_path, capsys):
    # an LR far too high wrecks every fine-tuned epoch; validation sees it, and auto stops at half the run
    c = cfg(tmp_path, lr=20.0, epochs=6)
    e = build_engine(c, bundle())
    s = e.fit()
    out = capsys.readouterr().out
    assert "ridge head fitted" in out and "stopping, returning the head" in out
    assert s["best_epoch"] == 0 and s["epochs"] == 3  # judged at half of 6 epochs: stopped there
    assert s["test_acc"] == e.history[0]["test_acc"]


def test_a_head_perfect_on_validation_is_kept_without_fine_tuning(tmp_path, capsys, monkeypatch):
    from fastretrain.strategies import auto

    monkeypatch.setattr(auto.MPRefine, "fit_head", lambda self, engine: {"init_head_C": 1.0})
    real = auto.Auto._decide

    def perfect(self, engine):  # the head scored 1.0 on validation
        engine.history[-1]["val_acc"] = 1.0
        return real(self, engine)

    monkeypatch.setattr(auto.Auto, "_decide", perfect)
    s = build_engine(cfg(tmp_path), bundle()).fit()
    assert "no fine-tuning" in capsys.readouterr().out
    assert s["best_epoch"] == 0 and s["epochs"] == 0


def test_when_features_must_move_it_fine_tunes(tmp_path, capsys, monkeypatch):
    # features that carry nothing for a linear head (constructed: the head comes out zero, chance on validation);
    # fine-tuning moves the features and beats it on validation, so auto keeps fine-tuning to the end
    from fastretrain.strategies import auto

    def useless_head(self, engine):
        engine.model.fc.weight.data.zero_()
        engine.model.fc.bias.data.zero_()
        return {"init_head_C": 1.0}

    monkeypatch.setattr(auto.MPRefine, "fit_head", useless_head)
    e = build_engine(cfg(tmp_path, epochs=6), bundle(noise=0.0))
    s = e.fit()
    out = capsys.readouterr().out
    head = e.history[0]
    assert "fine-tune with fast-retrain schedule" in out and "stopping" not in out
    assert s["epochs"] == 6 and s["best_epoch"] > 0 and s["best_val_acc"] > head["val_acc"]


def test_under_a_budget_it_plans_and_keeps_it(tmp_path, capsys):
    s = build_engine(cfg(tmp_path, budget="3s"), bundle()).fit()
    out = capsys.readouterr().out
    assert "s left" in out and s["wall_seconds"] <= 3 * 1.05
