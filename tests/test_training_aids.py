"""Training aids (fastretrain/training_aids.py, docs/training_aids.md): early stopping stops at the right epoch of a
scripted validation sequence; the weight EMA equals a hand-computed EMA and is what is evaluated, saved and resumed;
mixup/CutMix change the loss and give soft targets summing to 1; each option's failure path is one line, exit 2."""
import json

import pytest
import torch
from safetensors.torch import load_file

from fastretrain import FastRetrainError, Strategy, build_engine
from fastretrain.cli import main
from fastretrain.data import from_arrays
from fastretrain.engine import EVENTS
from fastretrain.testing import tiny_images
from fastretrain.training_aids import (EarlyStopping, MixupCutmix, WeightEMA, WeightEMARestore,
                                       epochs_without_improvement)


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


# ------------------------------------------------------------------ weight EMA
class WeightLog(Strategy):
    """Records the model's state at the start, after every step, and after every evaluation (copies, float64)."""

    order = 9_500  # after the EMA's hooks

    def __init__(self):
        self.start, self.steps, self.evaluated = None, [], []

    @staticmethod
    def snap(model):
        return {k: v.detach().clone().double() if v.is_floating_point() else v.detach().clone()
                for k, v in model.state_dict().items()}

    def before_fit(self, engine):
        self.start = self.snap(engine.model)

    def after_step(self, engine):
        self.steps.append(self.snap(engine.model))

    def after_eval(self, engine):
        self.evaluated.append(self.snap(engine.model))


def hand_ema(start, steps, decay):
    """ema_0 = the starting weights; ema_k = decay * ema_(k-1) + (1 - decay) * w_k; integer buffers: copied."""
    ema = {k: v.clone() for k, v in start.items()}
    for w in steps:
        for k, v in w.items():
            ema[k] = decay * ema[k] + (1 - decay) * v if v.is_floating_point() else v.clone()
    return ema


def assert_close(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for k in a:
        diff = (a[k].double() - b[k].double()).abs().max()
        assert diff <= atol, (k, diff)


def test_ema_equals_hand_computed_ema_and_is_evaluated_and_saved(cfg):
    cfg.epochs, cfg.ema, cfg.val_fraction = 3, 0.9, 0.25
    log = WeightLog()
    engine = build_engine(cfg, val_bundle(), strategies=[log])
    ema, = aids(engine, WeightEMA)
    engine.fit()
    n = engine.num_batches()
    assert len(log.steps) == 3 * n and ema.updates == 3 * n
    # after every epoch the evaluated weights are the EMA of the steps so far
    for e, seen in enumerate(log.evaluated):
        assert_close(seen, hand_ema(log.start, log.steps[: (e + 1) * n], 0.9))
    final = hand_ema(log.start, log.steps, 0.9)
    assert_close(ema.averaged_state(engine), final)
    assert_close(dict(engine.model.state_dict()), final)  # after the run the model holds the average
    assert_close(load_file(f"{cfg.out}/model_final.safetensors"), final)
    best = engine.best_epoch
    assert_close(load_file(f"{cfg.out}/model_best.safetensors"), log.evaluated[best - 1])
    # the logged val_acc is that of the averaged weights
    assert all(h["ema_evaluated"] for h in engine.history)
    # training moved the trained weights away from the average
    assert not torch.allclose(log.steps[-1]["fc.weight"], final["fc.weight"])


def test_ema_swaps_the_trained_weights_back_before_each_epoch(cfg, bundle):
    cfg.epochs, cfg.ema = 2, 0.5
    seen = []

    class FirstToLook(Strategy):
        order = -900  # after WeightEMARestore (-1000), before any method

        def before_epoch(self, engine):
            seen.append(WeightLog.snap(engine.model))

    log = WeightLog()
    engine = build_engine(cfg, bundle, strategies=[log, FirstToLook()])
    assert [type(s) for s in engine.strategies][0] is WeightEMARestore
    engine.fit()
    n = engine.num_batches()
    # epoch 2 starts from the trained weights of epoch 1's last step, not from the average
    assert_close(seen[1], log.steps[n - 1], atol=0)


class Interrupt(Strategy):
    """Ctrl-C during epoch 3 (after epoch 2's checkpoint); in both runs, so that strategies keep their places."""

    def __init__(self, active=True):
        self.active = active

    def before_batch(self, engine):
        if self.active and engine.epoch == 2:
            raise KeyboardInterrupt


def test_ema_resume_continues_exactly(cfg, tmp_path):
    cfg.ema, cfg.val_fraction, cfg.epochs, cfg.deterministic = 0.8, 0.25, 3, True
    cfg.out = str(tmp_path / "whole")
    build_engine(cfg, val_bundle()).fit()
    cfg.out = str(tmp_path / "parts")
    with pytest.raises(KeyboardInterrupt):
        build_engine(cfg, val_bundle(), strategies=[Interrupt()]).fit()
    cfg.resume = True
    engine = build_engine(cfg, val_bundle(), strategies=[Interrupt(active=False)])
    engine.fit()
    a, b = (load_file(str(tmp_path / d / "model_final.safetensors")) for d in ("whole", "parts"))
    assert_close(a, b, atol=0)
    whole = [json.loads(x) for x in open(tmp_path / "whole" / "metrics.jsonl")]
    assert [h["val_acc"] for h in engine.history] == [h["val_acc"] for h in whole]


def test_ema_options_fail_in_one_line(cfg, bundle, capsys):
    for bad in (0.0, 1.0, 1.5):
        cfg.ema = bad
        with pytest.raises(FastRetrainError, match=r"--ema must be in \(0, 1\)"):
            build_engine(cfg, bundle)
    cfg.ema, cfg.method = 0.99, "kernel-rescale"
    with pytest.raises(FastRetrainError, match="--ema cannot be used with kernel-rescale"):
        build_engine(cfg, bundle)
    assert main(["train", "--model", "tiny-cnn", "--ema", "1", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip() == "error: --ema must be in (0, 1), e.g. 0.999; got 1.0"


def test_ema_warns_when_the_run_is_shorter_than_its_span(cfg, bundle):
    cfg.epochs, cfg.ema, cfg.out = 1, 0.999, None
    with pytest.warns(UserWarning, match=r"--ema 0.999 averages over about 1000 steps but this run plans 6: the "
                      r"average will still weigh the starting weights by 99% at the end; a smaller decay follows"):
        build_engine(cfg, bundle).fit()
    cfg.epochs = 4  # 24 steps
    with pytest.warns(UserWarning, match=r"plans 24: .* 98% at the end; a smaller decay \(such as 0.583\) follows"):
        build_engine(cfg, bundle).fit()


# ------------------------------------------------------------------ mixup / CutMix
class FirstBatch(Strategy):
    """Keeps the first batch's inputs, loss and (when mixing) soft targets, then stops the run."""

    order = 9_500

    def __init__(self):
        self.loss = self.targets = self.x = None

    def after_loss(self, engine):
        mix = [s for s in engine.strategies if isinstance(s, MixupCutmix)]
        self.x, self.loss = engine.x.clone(), float(engine.loss.detach())
        self.targets = mix[0].targets.clone() if mix else None
        self.y = engine.y.clone()
        raise StopFitNow


class StopFitNow(Exception):
    pass


def first_batch(cfg, bundle, **aids):
    for k, v in aids.items():
        setattr(cfg, k, v)
    cfg.out, probe = None, FirstBatch()
    engine = build_engine(cfg, bundle, strategies=[probe])
    with pytest.raises(StopFitNow):
        engine.fit()
    return probe


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "both"])
def test_mixup_cutmix_mix_inputs_and_targets_and_change_the_loss(cfg, bundle, kind):
    plain = first_batch(cfg, bundle)
    alphas = {"mixup": 0.4 if kind != "cutmix" else 0.0, "cutmix": 1.0 if kind != "mixup" else 0.0}
    mixed = first_batch(cfg, bundle, **alphas)
    assert torch.equal(mixed.y, plain.y)  # the hard labels (train accuracy) stay the images' own
    t = mixed.targets
    assert t.shape == (len(plain.y), 3)
    assert torch.allclose(t.sum(1), torch.ones(len(t)), atol=1e-6)
    assert (t >= 0).all() and (t < 1).any()  # soft
    # each row mixes its own label with the label of its partner (the reversed batch) and nothing else
    lam = t[0, plain.y[0]] if plain.y[0] != plain.y[-1] else None
    if lam is not None:
        assert torch.allclose(t[0, plain.y[-1]], 1 - lam, atol=1e-6)
    assert not torch.equal(mixed.x, plain.x)
    assert mixed.loss != pytest.approx(plain.loss, rel=1e-4)


def test_mixup_loss_is_the_soft_target_cross_entropy(cfg, bundle):
    cfg.mixup, cfg.label_smoothing = 0.4, 0.1
    seen = {}

    class Check(Strategy):
        order = 9_500

        def after_loss(self, engine):
            mix, = [s for s in engine.strategies if isinstance(s, MixupCutmix)]
            logp = torch.log_softmax(engine.logits.detach().float(), 1)
            t = mix.targets * (1 - 0.1) + 0.1 / 3  # the engine's label smoothing applied to the soft targets
            seen["want"], seen["got"] = float(-(t * logp).sum(1).mean()), float(engine.loss.detach())
            raise StopFitNow

    cfg.out = None
    with pytest.raises(StopFitNow):
        build_engine(cfg, bundle, strategies=[Check()]).fit()
    assert seen["got"] == pytest.approx(seen["want"], abs=1e-5)


def test_mixup_odd_batch_leaves_the_last_image_unmixed(cfg, bundle):
    cfg.batch_size = 7
    plain, mixed = first_batch(cfg, bundle), first_batch(cfg, bundle, mixup=0.4)
    assert torch.equal(mixed.x[-1], plain.x[-1])
    assert torch.equal(mixed.targets[-1], torch.nn.functional.one_hot(plain.y[-1], 3).float())


def test_mixup_trains_and_is_reproducible(cfg, bundle, tmp_path):
    cfg.mixup, cfg.cutmix = 0.4, 1.0
    runs = []
    for name in ("a", "b"):
        cfg.out = str(tmp_path / name)
        runs.append(build_engine(cfg, bundle).fit())
    assert runs[0]["final_test_acc"] == runs[1]["final_test_acc"]
    a, b = (load_file(str(tmp_path / d / "model_final.safetensors")) for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_mixup_options_fail_in_one_line(cfg, bundle, capsys):
    cfg.mixup = -1.0
    with pytest.raises(FastRetrainError, match="--mixup and --cutmix must be >= 0"):
        build_engine(cfg, bundle)
    cfg.mixup, cfg.cutmix, cfg.method = 0.0, 1.0, "linear-probe"
    with pytest.raises(FastRetrainError, match="--cutmix cannot be used with linear-probe"):
        build_engine(cfg, bundle)
    assert main(["train", "--model", "tiny-cnn", "--cutmix", "-0.5", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: --mixup and --cutmix must be >= 0")


def test_aids_are_off_by_default_and_hooks_are_events(cfg, bundle):
    cfg.out = None
    engine = build_engine(cfg, bundle)
    assert not aids(engine, (EarlyStopping, WeightEMA, WeightEMARestore, MixupCutmix))
    for cls in (EarlyStopping, WeightEMA, MixupCutmix):
        hooks = [n for n in dir(cls) if n.startswith(("before_", "after_"))]
        assert hooks and set(hooks) <= set(EVENTS)


# ------------------------------------------------------------------ lr-find
def test_sweep_smoothing_and_suggestion_rules():
    from fastretrain.lr_find import beta_for, smooth, suggest, sweep_lr

    lrs = [sweep_lr(i, 5, 1e-4, 1.0) for i in range(5)]
    assert lrs == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    # bias-corrected EMA: the first value is the loss itself, the second (b l0 (1-b) + (1-b) l1) / (1 - b^2)
    s = smooth([2.0, 1.0], beta=0.9)
    assert s == pytest.approx([2.0, (0.9 * 0.1 * 2.0 + 0.1 * 1.0) / (1 - 0.81)])
    # a loss that falls fastest between 1e-2 and 1e-1, is lowest at 1e-1 and then rises
    loss = [3.0, 2.9, 2.0, 1.0, 4.0]
    got = suggest(lrs, loss)
    assert got["steep"] == pytest.approx(1e-2) and got["min_div10"] == pytest.approx(1e-2)
    assert got["suggested"] == got["steep"]
    # a loss that only rises: no steepest descent; the minimum / 10 clipped into the swept range
    rising = suggest(lrs, [1.0, 1.1, 1.2, 1.3, 1.4])
    assert rising["steep"] is None and rising["suggested"] == pytest.approx(1e-4)
    assert beta_for(100) == beta_for(400) == 0.98 and beta_for(20) == pytest.approx(0.9)  # fastai's from 100 steps
    # skipped points are no candidates: the drop after the first point does not count
    assert suggest(lrs, [9.0, 3.0, 2.9, 2.0, 1.0], skip=1)["steep"] == pytest.approx(1e-1)
    assert suggest(lrs, [9.0, 3.0, 2.9, 2.0, 1.0])["steep"] == pytest.approx(1e-4)


def test_lr_find_suggests_within_the_range_writes_the_plot_and_restores_the_model(cfg, bundle, tmp_path):
    from fastretrain.lr_find import lr_find, report
    from fastretrain.models import create_model

    torch.manual_seed(0)
    model = create_model("tiny-cnn", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plot = tmp_path / "sweep" / "lr.png"
    res = lr_find(cfg, bundle, module=model, start_lr=1e-5, end_lr=10.0, steps=60, plot=plot)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # weights and BN statistics
    assert all(p.requires_grad for p in model.parameters())
    assert 1e-5 <= res["suggested"] <= 10.0 and 1e-5 <= res["min_div10"] <= 10.0
    assert res["lrs"][0] == pytest.approx(1e-5)
    ratios = [b / a for a, b in zip(res["lrs"], res["lrs"][1:])]
    assert ratios == pytest.approx([(10.0 / 1e-5) ** (1 / 59)] * len(ratios))  # exponential, every step
    assert res["steps"] <= 60 and len(res["losses"]) == res["steps"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"suggested LR: {res['suggested']:.3g}" in report(res)
    assert not (tmp_path / "run").exists()  # nothing else written: no run folder


def test_lr_find_stops_when_the_loss_diverges(cfg, bundle):
    from fastretrain.lr_find import DIVERGED, lr_find

    res = lr_find(cfg, bundle, start_lr=1e-3, end_lr=1e6, steps=200, plot=None)
    assert res["stopped"] in ("diverged", "not finite") and res["steps"] < 200
    if res["stopped"] == "diverged":
        from fastretrain.lr_find import smooth

        s = smooth(res["losses"])
        assert s[-1] > DIVERGED * min(s) and all(v <= DIVERGED * min(s[: i + 1]) for i, v in enumerate(s[:-1]))
    assert res["lrs"][0] <= res["suggested"] < res["lrs"][-1]


def test_lr_find_runs_all_steps_across_epochs_with_the_method(cfg, bundle):
    from fastretrain.lr_find import lr_find

    cfg.method, cfg.mixup = "random-freeze", 0.4  # the run's method and aids take part
    res = lr_find(cfg, bundle, start_lr=1e-6, end_lr=1e-3, steps=12, plot=None)  # 5 batches an epoch
    assert res["stopped"] == "steps" and res["steps"] == 12
    assert res["lrs"][-1] == pytest.approx(1e-3)


def test_lr_find_cli(tmp_path, capsys):
    import numpy as np

    x, y = tiny_images(8, 3, 12, seed=0)
    xt, yt = tiny_images(4, 3, 12, seed=5)
    np.savez(tmp_path / "tiny.npz", x_train=x.numpy(), y_train=y.numpy(), x_test=xt.numpy(), y_test=yt.numpy())
    fast = ["--model", "tiny-cnn", "--image-size", "16", "--batch-size", "8", "--device", "cpu", "--no-progress"]
    args = ["lr-find", "--data", str(tmp_path / "tiny.npz"), *fast, "--steps", "20", "--plot", str(tmp_path / "p.png")]
    assert main([*args, "--lr", "0.1", "--epochs", "3"]) == 0
    out = capsys.readouterr().out
    assert "note: lr-find does not use --lr, --epochs" in out and "suggested LR: " in out
    assert (tmp_path / "p.png").is_file()
    assert main([*args, "--start-lr", "1", "--end-lr", "0.1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --end-lr must be above --start-lr (1.0), got 0.1"
    assert main([*args, "--steps", "5000"]) == 2
    assert capsys.readouterr().err.strip() == "error: --steps must be in [5, 500], got 5000"


def test_the_docs_example_commands_parse_to_the_settings_they_show():
    import re
    from pathlib import Path

    from dataclasses import fields

    from fastretrain import TrainConfig, make_config
    from fastretrain.cli import build_parser

    def config(argv):
        args = build_parser().parse_args(argv)
        given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if f.name != "options"}
        return make_config(**{k: v for k, v in given.items() if v is not None})

    text = (Path(__file__).resolve().parent.parent / "docs" / "training_aids.md").read_text()
    block = re.search(r"## Example.*?```bash\n(.*?)```", text, re.S).group(1).replace("\\\n", " ")
    commands = [line.split()[1:] for line in block.splitlines() if line.startswith("fastretrain ")]
    assert [c[0] for c in commands] == ["lr-find", "train"]
    cfgs = [config(c) for c in commands]
    assert (cfgs[1].patience, cfgs[1].ema, cfgs[1].mixup, cfgs[1].cutmix) == (3, 0.99, 0.2, 0.0)
    assert cfgs[0].data == cfgs[1].data == "fashion-mnist" and cfgs[0].max_train == cfgs[1].max_train == 500
