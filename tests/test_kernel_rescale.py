"""kernel-rescale strategy: batch-norm re-estimation against the closed form, the switch policy, accuracy
right after the switch, resume across the switch (bit-exact), composition, the end of a run in phase 1,
and DDP (2 gloo processes)."""
import dataclasses
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from fastretrain import Strategy, TrainConfig, build_engine, from_arrays, train
from fastretrain.errors import FastRetrainError
from fastretrain.strategies.kernel_rescale import KernelRescale, recompute_batchnorm
from fastretrain.testing import assert_same_run, run_processes, tiny_bundle


class LargeKernelNet(nn.Module):
    """Every spatial conv large (7×7, 5×5, 5×5), so all of them are rescaled: the scaling identity holds
    for the whole network, up to the resampling error."""

    def __init__(self, num_classes: int = 4, w: int = 16):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, w, 7, 2, 3, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                      nn.Conv2d(w, w, 5, 1, 2, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                                      nn.Conv2d(w, 2 * w, 5, 2, 2, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU())  # fmt: skip
        self.fc = nn.Linear(2 * w, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


def blobs(n: int, seed: int, size: int = 24):
    """uint8 (n, size, size, 3) images of one smooth bright blob; the class is the blob's quadrant."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(4).repeat(n // 4)
    ii = torch.arange(size).float()
    cx = torch.where(y % 2 == 0, 0.3, 0.7) * size + torch.randn(len(y), generator=g) * 1.5
    cy = torch.where(y < 2, 0.3, 0.7) * size + torch.randn(len(y), generator=g) * 1.5
    d2 = (ii[None, None, :] - cx[:, None, None]) ** 2 + (ii[None, :, None] - cy[:, None, None]) ** 2
    img = 60 + 150 * torch.exp(-d2 / (2 * 3.0**2))  # (n, size, size)
    img = img[..., None] * (0.6 + 0.4 * torch.rand(len(y), 1, 1, 3, generator=g)) + torch.randn(len(y), size, size, 3, generator=g) * 10
    return img.clamp(0, 255).round().to(torch.uint8).numpy(), y.numpy()


@pytest.fixture(scope="module")
def blob_bundle():
    xtr, ytr = blobs(512, 0)
    xte, yte = blobs(400, 1)
    return from_arrays(xtr, ytr, xte, yte, 32)


def kr_cfg(tmp_path, **kw):
    base = dict(model="tiny-resnet", method="kernel-rescale", epochs=4, image_size=32, batch_size=16, lr=0.05, device="cpu",
                progress=False, out=str(tmp_path / "run"))  # fmt: skip
    return TrainConfig(**{**base, **kw})


# ------------------------------------------------------------------------------------------ numerics


def test_recompute_batchnorm_is_the_average_of_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4, momentum=0.3))
    model.eval()
    model[1].running_mean.fill_(5.0)  # stale statistics must not leak in
    batches = [(torch.randn(6, 3, 8, 8) * (i + 1) + i, None) for i in range(3)]
    assert recompute_batchnorm(model, batches) == 18
    with torch.no_grad():
        feats = [model[0](x) for x, _ in batches]  # (6, 4, 6, 6) each
    mean = torch.stack([f.mean((0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var((0, 2, 3), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(model[1].running_mean, mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model[1].running_var, var, rtol=1e-5, atol=1e-5)
    assert model[1].momentum == 0.3 and not model.training  # restored


def _fake_engine(epochs):
    return SimpleNamespace(cfg=SimpleNamespace(epochs=epochs, image_size=32), epoch=0, log={})


@pytest.mark.parametrize("losses,switch_after", [([2.0, 1.5, 1.2, 1.0, 0.9, 0.8], 4),  # always improving: the 40% cap of 10
                                                 ([2.0, 1.5, 1.49, 1.3], 3),  # < 1% better: plateau
                                                 ([2.0, 2.1, 1.0], 2)])  # fmt: skip
def test_automatic_switch_policy(losses, switch_after):
    kr = KernelRescale()
    kr._engine = engine = _fake_engine(10)
    for e, loss in enumerate(losses):
        engine.epoch, engine.log = e, {"train_loss": loss}
        kr.after_eval(engine)
        if kr.pending:
            break
    assert kr.pending and engine.epoch + 1 == switch_after
    fixed = KernelRescale(switch_epoch=2)
    fixed._engine = engine = _fake_engine(10)
    engine.epoch, engine.log = 0, {"train_loss": 1.0}
    fixed.after_eval(engine)
    assert not fixed.pending
    engine.epoch = 1
    fixed.after_eval(engine)
    assert fixed.pending


def test_automatic_switch_reads_validation_when_there_is_some():
    """Training loss still improving, validation loss flat: `auto` (and `val-loss`) switch on validation."""
    train_losses, val_losses = [2.0, 1.5, 1.2, 1.0, 0.9], [1.0, 1.0, 1.0, 1.0, 1.0]
    switched = {}
    for monitor in ("auto", "val-loss", "train-loss"):
        kr = KernelRescale(monitor=monitor)
        kr._engine = engine = _fake_engine(10)
        for e, (tl, vl) in enumerate(zip(train_losses, val_losses)):
            engine.epoch, engine.log = e, {"train_loss": tl, "val_loss": vl}
            kr.after_eval(engine)
            if kr.pending:
                break
        switched[monitor] = engine.epoch + 1
        assert engine.log["kernel_rescale_monitor"] == (tl if monitor == "train-loss" else vl)
    assert switched == {"auto": 2, "val-loss": 2, "train-loss": 4}  # 4: the 40 % cap of 10 epochs


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(FastRetrainError, match="monitor"):
        train(kr_cfg(tmp_path, options={"kernel-rescale": {"monitor": "test-loss"}}), bundle=tiny_bundle())
    with pytest.raises(FastRetrainError, match="below 8 px"):  # (each run replaces the failed one before it)
        train(kr_cfg(tmp_path, image_size=12, overwrite=True, options={"kernel-rescale": {"scale": 2}}),
              bundle=tiny_bundle())  # fmt: skip
    with pytest.raises(FastRetrainError, match="monitor=val-loss needs a validation split"):
        train(kr_cfg(tmp_path, overwrite=True, options={"kernel-rescale": {"monitor": "val-loss"}}),
              bundle=tiny_bundle(image_size=32))  # fmt: skip


# ------------------------------------------------------------------------------------------ the switch


def _train_phase1_then_switch(bundle, bn_images):
    """Train LargeKernelNet 5 epochs at 16 px, then switch; (loss, acc) on the test set before and after."""
    torch.manual_seed(0)
    cfg = TrainConfig(model="unused", epochs=5, image_size=32, batch_size=16, lr=0.05, device="cpu", progress=False, out=None)
    kr = KernelRescale(switch_epoch=5, bn_images=bn_images)  # phase 1 for the whole run; after_fit switches
    res = {}

    class Probe(Strategy):
        order = -100  # after_fit before kernel-rescale's

        def after_fit(self, engine):
            res["before"] = engine.evaluate()

    engine = build_engine(cfg, bundle, module=LargeKernelNet(), strategies=[kr, Probe()])
    engine.fit()
    assert engine.image_size == 32 and engine.model.features[0].weight.shape[-1] == 7
    res["after"] = engine.evaluate()
    return res


def test_accuracy_right_after_switch_is_close_to_low_res_accuracy(blob_bundle):
    res = _train_phase1_then_switch(blob_bundle, bn_images=256)
    (loss0, acc0), (loss1, acc1) = res["before"], res["after"]
    # measured: 16 px acc 0.7425 (loss 0.643) -> 32 px right after the switch acc 0.645 (loss 0.720); chance 0.25
    assert acc0 > 0.6
    assert acc1 >= acc0 - 0.12 and loss1 <= 1.25 * loss0
    # the batch-norm re-estimation is what keeps it close: without it, acc 0.5175 (loss 0.849)
    (_, _), (loss_nobn, acc_nobn) = _train_phase1_then_switch(blob_bundle, bn_images=0).values()
    assert acc1 > acc_nobn + 0.05 and loss1 < loss_nobn


def test_phases_image_sizes_and_final_geometry(tmp_path):
    cfg = kr_cfg(tmp_path, epochs=5, options={"kernel-rescale": {"monitor": "train-slice", "monitor_images": 20}})
    seen = []

    class Sizes(Strategy):
        def before_batch(self, engine):
            if engine.iter == 0:
                seen.append((engine.x.shape[-1], tuple(engine.model.stem[0].weight.shape[-2:])))

    engine = build_engine(cfg, tiny_bundle(image_size=32), strategies=[Sizes()])
    engine.fit()
    phases = [h["kernel_rescale_phase"] for h in engine.history]
    assert phases == [1, 1, 2, 2, 2]  # automatic: at most floor(0.4 · 5) = 2 epochs in phase 1
    assert seen == [(16, (3, 3))] * 2 + [(32, (7, 7))] * 3
    assert "kernel_rescale_switch_seconds" in engine.history[2] and "kernel_rescale_monitor" in engine.history[0]
    assert engine.model.stem[0].padding == (3, 3)
    saved = load_file(str(tmp_path / "run" / "model_final.safetensors"))
    assert saved["stem.0.weight"].shape == (8, 3, 7, 7)


def test_run_ending_in_phase1_leaves_full_size_weights(tmp_path):
    engine = build_engine(kr_cfg(tmp_path, epochs=2, options={"kernel-rescale": {"switch_epoch": 5}}), tiny_bundle(image_size=32))
    summary = engine.fit()
    assert [h["kernel_rescale_phase"] for h in engine.history] == [1, 1]
    assert engine.image_size == 32 and engine.model.stem[0].weight.shape[-1] == 7
    # no full-resolution epoch: nothing is reported or saved as best
    assert summary["best_epoch"] is None and summary["test_acc"] is None
    assert not (tmp_path / "run" / "model_best.safetensors").exists()


class LowResLooksBest(Strategy):
    """Sabotage: after kernel-rescale's after_eval, make every phase-1 epoch look perfect on validation."""

    order = 100

    def after_eval(self, engine):
        if engine.log["kernel_rescale_phase"] == 1:
            engine.log.update(val_acc=1.0, val_loss=0.0)


def test_best_is_never_low_resolution_and_eval_loads_every_weight_file(tmp_path, capsys):
    from fastretrain.cli import main
    from fastretrain.testing import tiny_images

    x, y = tiny_images(8, 3, 24, seed=0)
    xt, yt = tiny_images(4, 3, 24, seed=5)
    np.savez(tmp_path / "d.npz", x_train=x.numpy(), y_train=y.numpy(), x_test=xt.numpy(), y_test=yt.numpy())
    cfg = kr_cfg(tmp_path, data=str(tmp_path / "d.npz"), epochs=4, val_fraction=0.25,
                 options={"kernel-rescale": {"switch_epoch": 2, "bn_images": 8}})  # fmt: skip
    engine = build_engine(cfg, strategies=[LowResLooksBest()])
    s = engine.fit()
    phases = [h["kernel_rescale_phase"] for h in engine.history]
    assert phases == [1, 1, 2, 2] and [h["val_acc"] for h in engine.history[:2]] == [1.0, 1.0]
    assert s["best_epoch"] in (3, 4) and s["test_acc"] == engine.history[s["best_epoch"] - 1]["test_acc"]
    best = load_file(str(tmp_path / "run" / "model_best.safetensors"))
    assert best["stem.0.weight"].shape == (8, 3, 7, 7)  # full-size kernels
    capsys.readouterr()
    for which, expected in (("best", s["test_acc"]), ("final", s["final_test_acc"])):
        assert main(["eval", "--run", str(tmp_path / "run"), "--which", which, "--device", "cpu", "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["test_acc"] == pytest.approx(expected, abs=1e-6)  # the saved weights give the logged number
        assert res["test_set_id"] == s["test_set_id"]


def test_switch_epoch_zero_is_plain_training(tmp_path):
    engine = build_engine(kr_cfg(tmp_path, epochs=1, options={"kernel-rescale": {"switch_epoch": 0}}), tiny_bundle(image_size=32))
    engine.fit()
    assert engine.history[0]["kernel_rescale_phase"] == 2


def test_composes_with_freeze_unfreeze(tmp_path):
    """freeze-unfreeze rebuilds the optimizer every epoch and freezes the stem in epoch 1; the resized
    stem keeps its requires_grad and trains once thawed."""
    options = {"kernel-rescale": {"switch_epoch": 1}, "freeze-unfreeze": {"random_backbone": True}}
    cfg = kr_cfg(tmp_path, method="kernel-rescale,freeze-unfreeze", epochs=3, options=options)
    engine = build_engine(cfg, tiny_bundle(image_size=32))
    w0 = {}

    class Snap(Strategy):
        order = 10

        def before_epoch(self, engine):
            w0[engine.epoch] = (engine.model.stem[0].weight.detach().clone(), engine.model.stem[0].weight.requires_grad)

    engine.strategies.append(Snap())
    engine.fit()
    assert w0[0][1] is False and w0[1][1] is True  # frozen during phase 1, trainable after
    assert w0[1][0].shape[-1] == 7 and not torch.equal(engine.model.stem[0].weight.detach(), w0[1][0])


# ------------------------------------------------------------------------------------------ resume


class Interrupt(Strategy):
    def __init__(self, at):
        self.at = at

    def before_epoch(self, engine):
        if engine.epoch == self.at:
            raise KeyboardInterrupt


@pytest.mark.parametrize("at", [2, 3])  # checkpoint of phase 1 with the switch pending / of phase 2
def test_resume_across_the_switch_is_bit_exact(tmp_path, at):
    bundle = tiny_bundle(image_size=32)
    cfg = kr_cfg(tmp_path, epochs=4, deterministic=True, options={"kernel-rescale": {"switch_epoch": 2, "bn_images": 24}})
    train(dataclasses.replace(cfg, out=str(tmp_path / "straight")), bundle=bundle)
    broken = dataclasses.replace(cfg, out=str(tmp_path / "broken"))
    with pytest.raises(KeyboardInterrupt):
        train(broken, bundle=bundle, strategies=[Interrupt(at)])
    train(dataclasses.replace(broken, resume=True), bundle=bundle)
    lines = assert_same_run(tmp_path / "straight", tmp_path / "broken")
    assert [x["kernel_rescale_phase"] for x in lines] == [1, 1, 2, 2]


# ------------------------------------------------------------------------------------------ DDP


def test_ddp_ranks_stay_identical_across_the_switch(tmp_path):
    run_processes(_ddp_worker, 2, args=(str(tmp_path / "ddp"),))
    w0 = torch.load(tmp_path / "ddp" / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "ddp" / "weights_rank1.pt", weights_only=True)
    assert w0["stem.0.weight"].shape == (8, 3, 7, 7)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    lines = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [x["kernel_rescale_phase"] for x in lines] == [1, 2]


def _ddp_worker(rank, out):
    cfg = TrainConfig(model="tiny-resnet", method="kernel-rescale", epochs=2, image_size=32, batch_size=8, lr=0.05, device="cpu",
                      progress=False, out=out, options={"kernel-rescale": {"switch_epoch": 1, "bn_images": 16}})  # fmt: skip
    engine = build_engine(cfg, tiny_bundle(image_size=32))
    engine.fit()
    torch.save({k: v.clone() for k, v in engine.model.state_dict().items()}, os.path.join(out, f"weights_rank{rank}.pt"))
