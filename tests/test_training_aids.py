"""Training aids (fastretrain/training_aids.py, docs/training_aids.md): early stopping stops at the right epoch of a
scripted validation sequence; the option's failure path is one line, exit 2."""
import json

import pytest

from fastretrain import FastRetrainError, Strategy, build_engine
from fastretrain.cli import main
from fastretrain.data import from_arrays
from fastretrain.engine import EVENTS
from fastretrain.testing import tiny_images
from fastretrain.training_aids import EarlyStopping, epochs_without_improvement


def val_bundle(n_per_class=16):
    """The tiny learnable data with a validation split (tiny_bundle has none)."""
    xtr, ytr = tiny_images(n_per_class, 3, 12, 0)
    xte, yte = tiny_images(8, 3, 12, 1000)
    return from_arrays(xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy(), 16, name="tiny", val_fraction=0.25)


def aids(engine, cls):
    return [s for s in engine.strategies if isinstance(s, cls)]


# ------------------------------------------------------------------ early stopping
class ScriptedVal(Strategy):
    """Replaces each epoch's validation accuracy by the next value of a script (before the aids read it)."""

    def __init__(self, accs, ineligible=()):
        self.accs, self.ineligible = list(accs), set(ineligible)

    def after_eval(self, engine):
        engine.log["val_acc"] = self.accs[engine.epoch]
        if engine.epoch + 1 in self.ineligible:
            engine.best_eligible = False


def test_epochs_without_improvement_counts_ties_as_no_improvement():
    assert epochs_without_improvement([]) == 0
    assert epochs_without_improvement([0.5, 0.6, 0.6, 0.55]) == 2
    assert epochs_without_improvement([0.5, 0.6, 0.6, 0.55, 0.7]) == 0


def test_early_stopping_stops_at_the_right_epoch(cfg):
    script = [0.5, 0.6, 0.6, 0.55, 0.7, 0.6, 0.6, 0.6, 0.9, 0.9, 0.9, 0.9]
    cfg.epochs, cfg.patience, cfg.val_fraction = 12, 3, 0.25
    engine = build_engine(cfg, val_bundle(), strategies=[ScriptedVal(script)])
    summary = engine.fit()
    # epochs 6, 7, 8 do not beat epoch 5's 0.7: the run ends after epoch 8, which is evaluated and saved
    assert summary["epochs"] == 8
    assert [h["epochs_without_improvement"] for h in engine.history] == [0, 0, 1, 2, 0, 1, 2, 3]
    assert engine.history[-1]["early_stopped"] is True
    assert summary["best_epoch"] == 5
    lines = [json.loads(x) for x in open(f"{cfg.out}/metrics.jsonl")]
    assert len(lines) == 8 and lines[-1]["early_stopped"]


def test_early_stopping_skips_ineligible_epochs(cfg):
    # epochs 2 and 3 are kept out of the choice (as kernel-rescale's low-resolution phase): they do not count
    script = [0.5, 0.4, 0.4, 0.4, 0.4, 0.9]
    cfg.epochs, cfg.patience, cfg.val_fraction = 6, 2, 0.25
    engine = build_engine(cfg, val_bundle(), strategies=[ScriptedVal(script, ineligible={2, 3})])
    assert engine.fit()["epochs"] == 5
    assert [h["epochs_without_improvement"] for h in engine.history] == [0, 0, 0, 1, 2]


def test_early_stopping_continues_its_count_on_resume(cfg):
    script = [0.5, 0.6, 0.55, 0.55, 0.55, 0.55]
    cfg.val_fraction, cfg.patience = 0.25, 3
    cfg.epochs = 3  # epochs 1-3: one epoch without improvement so far
    build_engine(cfg, val_bundle(), strategies=[ScriptedVal(script)]).fit()
    cfg.epochs, cfg.resume = 6, True
    engine = build_engine(cfg, val_bundle(), strategies=[ScriptedVal(script)])
    assert engine.fit()["epochs"] == 5  # epochs 3, 4, 5 without improvement
    assert [h["epochs_without_improvement"] for h in engine.history] == [0, 0, 1, 2, 3]


def test_patience_without_validation_is_one_clear_error(cfg, bundle, capsys):
    cfg.patience = 2
    with pytest.raises(FastRetrainError, match="--patience reads validation accuracy.*no validation split"):
        build_engine(cfg, bundle).fit()  # a given bundle without a validation split
    cfg.val_fraction = 0.0
    with pytest.raises(FastRetrainError, match="needs a validation split"):
        build_engine(cfg, bundle)
    assert main(["train", "--model", "tiny-cnn", "--patience", "2", "--val-fraction", "0", "--device", "cpu"]) == 2
    assert main(["train", "--model", "tiny-cnn", "--patience", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --patience reads validation accuracy: it needs a validation split (--val-fraction > 0)",
                   "error: --patience must be >= 1, got 0"]


def test_aids_are_off_by_default_and_hooks_are_events(cfg, bundle):
    cfg.out = None
    engine = build_engine(cfg, bundle)
    assert not aids(engine, EarlyStopping)
    for cls in (EarlyStopping,):
        hooks = [n for n in dir(cls) if n.startswith(("before_", "after_"))]
        assert hooks and set(hooks) <= set(EVENTS)
