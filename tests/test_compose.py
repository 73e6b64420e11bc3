"""Decomposition / composition along the width (fastretrain.compose, strategies/decompose.py).

Theorems of Gu et al. (ETNA 2022) checked numerically in float64, eval mode:
1. every hidden feature map of the composed network = channel concatenation of the sub-networks' maps;
2. composed logits = mean of the sub-networks' logits, hence (convexity of cross-entropy in the logits)
   its loss ≤ the mean of their losses, per sample and on average; and its accuracy is bounded by the
   sub-networks' predictions: a sample all K get right is right (averaging logits keeps a class that is
   every sub-network's argmax), a sample all K assign to the same wrong class is wrong, so
       frac(all correct) ≤ acc(composed) ≤ 1 − frac(all wrong with the same class).
"""
import json

import pytest
import torch
from torch import nn

from fastretrain import TrainConfig, build_engine, create_model
from fastretrain.compose import CompositionError, block_diagonal, compose, decompose
from fastretrain.strategies import decompose as decompose_strategy
from fastretrain.testing import tiny_bundle
from fastretrain.widthnets import WidthNet

TOL = 1e-10

# (model name, width, K): small widths keep the tests fast
CASES = [("vgg-small", 0.5, 2), ("vgg-small", 0.5, 4), ("resnet20", 0.5, 2), ("resnet18-cifar", 0.125, 2)]


def _trained_looking_subnets(name, width, K, seed=0):
    """K float64 sub-networks in eval mode, with non-trivial BN affine params and running statistics."""
    subs = decompose(name, K, num_classes=5, width=width, seeds=[seed + 10 * j for j in range(K)])
    g = torch.Generator().manual_seed(seed)
    for s in subs:
        s.double().train()
        with torch.no_grad():
            for _ in range(2):  # fills running stats
                s(torch.randn(8, 3, 16, 16, generator=g, dtype=torch.float64) * 2 + 0.5)
            for m in s.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g, dtype=torch.float64) + 0.5)
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=torch.float64) * 0.3)
        s.eval()
    return subs


def _outputs(model, x):
    """Output of every named module (clones: in-place ReLUs overwrite what they follow)."""
    outs, hooks = {}, []
    for name, m in model.named_modules():
        if name:
            hooks.append(m.register_forward_hook(lambda mod, i, o, name=name: outs.__setitem__(name, o.clone())))
    with torch.no_grad():
        logits = model(x)
    for h in hooks:
        h.remove()
    return outs, logits


@pytest.mark.parametrize("name,width,K", CASES)
def test_theorem1_hidden_maps_are_channel_concatenations(name, width, K):
    subs = _trained_looking_subnets(name, width, K)
    net = compose(subs)
    assert not net.training and next(net.parameters()).dtype == torch.float64
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got, _ = _outputs(net, x)
    parts = [_outputs(s, x)[0] for s in subs]
    head = [n for n, m in net.named_modules() if m is net.get_classifier()][0]
    checked = 0
    for layer, value in got.items():
        if layer == head:
            continue
        want = torch.cat([p[layer] for p in parts], 1)  # channels (dim 1) of every (B, C, ...) map
        assert value.shape == want.shape, layer
        assert (value - want).abs().max().item() <= TOL, layer
        checked += 1
    assert checked >= 15  # every conv, BN, ReLU, block, stage — not just the output


@pytest.mark.parametrize("name,width,K", CASES[:3])  # resnet18-cifar adds nothing Theorem 1 did not check
def test_theorem2_logits_loss_and_accuracy_bounds(name, width, K):
    subs = _trained_looking_subnets(name, width, K, seed=3)
    x = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():  # a common pull towards class 0 makes the sub-networks agree on about half the samples
        z = torch.stack([s(x) for s in subs])  # (K, B, c)
        gap = (z.max(2).values - z[..., 0]).flatten().quantile(0.6)
        for s in subs:
            s.get_classifier().bias[0] += gap
        z = torch.stack([s(x) for s in subs])
        net = compose(subs)
        logits = net(x)
    y = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(4))
    y[:32] = 0  # half the labels are class 0 (unanimous right where all pick 0), half random (often unanimous wrong)
    assert (logits - z.mean(0)).abs().max().item() <= TOL

    ce = nn.functional.cross_entropy
    per_sample = ce(logits, y, reduction="none")
    subs_loss = torch.stack([ce(zj, y, reduction="none") for zj in z])  # (K, B)
    assert (per_sample <= subs_loss.mean(0) + TOL).all()  # Jensen, per sample
    assert ce(logits, y).item() <= subs_loss.mean().item() + TOL

    pred, sub_pred = logits.argmax(1), z.argmax(2)  # (B,), (K, B)
    all_right = (sub_pred == y).all(0)
    same_wrong = (sub_pred == sub_pred[0]).all(0) & (sub_pred[0] != y)
    assert (pred[all_right] == y[all_right]).all()
    assert (pred[same_wrong] == sub_pred[0][same_wrong]).all()
    acc = (pred == y).double().mean().item()
    assert all_right.double().mean().item() <= acc <= 1 - same_wrong.double().mean().item()
    assert 0 < all_right.sum() and 0 < same_wrong.sum()  # both bounds are exercised on this draw


def _cross_blocks(net, subs):
    """Per hidden conv/linear: the entries of the cross blocks (off the block diagonal)."""
    out = {}
    sub_mods = dict(subs[0].named_modules())
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not net.get_classifier():
            w = m.weight.detach()
            o, i = sub_mods[name].weight.shape[:2]
            if w.shape[1] == i:  # first conv: input shared, no cross blocks
                continue
            mask = torch.ones(w.shape[:2], dtype=torch.bool)
            for j in range(len(subs)):
                mask[j * o : (j + 1) * o, j * i : (j + 1) * i] = False
            out[name] = w[mask]
    return out


def test_cross_blocks_start_at_zero_and_learn():
    subs = _trained_looking_subnets("resnet20", 0.5, 2)
    net = compose(subs).train()
    before = _cross_blocks(net, subs)
    assert before and all(v.abs().max() == 0 for v in before.values())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)  # no weight decay: only the gradient can move them
    x = torch.randn(16, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    y = torch.arange(16) % 5
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    after = _cross_blocks(net, subs)
    moved = {k: v.abs().max().item() for k, v in after.items()}
    assert all(v > 1e-8 for v in moved.values()), moved
    assert len(moved) == 2 * 9 + 2  # resnet20: 18 block convs + 2 shortcut 1×1 convs (stem is shared-input)


def test_block_diagonal_matches_torch_block_diag():
    ws = [torch.randn(2, 3), torch.randn(4, 1), torch.randn(1, 2)]
    assert torch.equal(block_diagonal(ws), torch.block_diag(*ws))
    k = [torch.randn(2, 3, 3, 3), torch.randn(2, 3, 3, 3)]
    bd = block_diagonal(k)
    assert bd.shape == (4, 6, 3, 3)
    assert torch.equal(bd[:2, :3], k[0]) and torch.equal(bd[2:, 3:], k[1])
    assert bd[:2, 3:].abs().sum() == 0 and bd[2:, :3].abs().sum() == 0


def test_errors_are_clear():
    with pytest.raises(CompositionError, match="not divisible by K=3"):
        decompose("resnet20", 3, num_classes=10)  # 16 channels
    with pytest.raises(CompositionError, match="not divisible by K=4"):
        decompose(create_model("vgg-small", 10, width=0.3125), 4)  # 10 channels
    with pytest.raises(CompositionError, match="width-parametrised"):
        decompose(create_model("tiny-cnn", 10), 2)
    with pytest.raises(CompositionError, match=">= 2"):
        decompose("resnet20", 1, num_classes=10)
    a, b = decompose("resnet20", 2, num_classes=10), decompose("resnet20", 4, num_classes=10)
    with pytest.raises(CompositionError, match="differ"):
        compose([a[0], b[0]])
    with pytest.raises(CompositionError, match="at least 2"):
        compose(a[:1])

    class Grouped(WidthNet):
        WIDTH_KEYS = ("c",)

        def __init__(self, num_classes=3, c=4):
            super().__init__()
            self.config = {"c": c}
            self.conv = nn.Conv2d(3, c, 3)
            self.dw = nn.Conv2d(c, c, 3, groups=c)
            self.num_features, self.fc = c, nn.Linear(c, num_classes)

        def forward_features(self, x):
            return self.dw(self.conv(x))

    class Normed(Grouped):
        def __init__(self, num_classes=3, c=4):
            super().__init__(num_classes, c)
            self.dw = nn.GroupNorm(2, c)

    with pytest.raises(CompositionError, match="grouped / depthwise"):
        compose(decompose(Grouped(c=4), 2))
    with pytest.raises(CompositionError, match="GroupNorm.*not supported"):
        compose(decompose(Normed(c=4), 2))


def _cfg(tmp_path, **kw):
    base = dict(model="vgg-small", epochs=3, image_size=16, batch_size=8, lr=0.05, device="cpu", progress=False,
                out=str(tmp_path / "run"), method="decompose")  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_parallel_phase_two_gloo_processes_then_compose(tmp_path):
    """K=2 spawned processes (gloo group, final barrier) train the sub-networks; the engine composes and goes on."""
    bundle = tiny_bundle()
    opts = {"decompose": {"subnets": 2, "sub_epochs": 1, "parallel": "processes"}}
    engine = build_engine(_cfg(tmp_path, options=opts), bundle)
    engine.fit()
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]  # 3 epochs = 1 sub-network epoch + 2 global ones
    first = lines[0]
    assert first["subnet_seconds"] > 0 and first["wall_seconds"] >= first["subnet_seconds"] + first["epoch_seconds"] - 1e-6
    assert len(first["subnet_train_seconds"]) == 2
    # the composition is reproducible from the saved sub-network checkpoints
    subs = decompose(engine.model, 2)
    for j, s in enumerate(subs):
        s.load_state_dict(torch.load(run / "subnets" / f"subnet{j}" / "checkpoint.pt", weights_only=True)["model"])
        assert json.loads((run / "subnets" / f"subnet{j}" / "result.json").read_text())["epochs"] == 1
    net = compose(subs).eval()
    engine.model.load_state_dict(net.state_dict())
    loss, acc = engine.evaluate()
    assert acc == pytest.approx(first["test_acc_at_composition"]) and loss == pytest.approx(first["test_loss_at_composition"])


def test_resume_does_not_retrain_subnets(tmp_path, monkeypatch):
    bundle = tiny_bundle()
    opts = {"decompose": {"subnets": 2, "sub_epochs": 1, "parallel": "sequential", "shards": "disjoint"}}
    build_engine(_cfg(tmp_path, epochs=2, options=opts), bundle).fit()  # 1 sub-network epoch, 1 global epoch

    def boom(*a, **k):
        raise AssertionError("sub-networks retrained on resume")

    monkeypatch.setattr(decompose_strategy, "run_subnets", boom)
    engine = build_engine(_cfg(tmp_path, epochs=3, resume=True, options=opts), bundle)
    engine.fit()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2] and "test_acc_at_composition" in lines[0]
    assert engine.strategies[0].info["subnets"] == 2  # the phase's record came back from the checkpoint


def test_option_errors(tmp_path):
    bundle = tiny_bundle()
    with pytest.raises(Exception, match="width-parametrised"):
        build_engine(_cfg(tmp_path, model="tiny-cnn"), bundle).fit()
    with pytest.raises(Exception, match="sub_epochs"):  # (each run replaces the failed one before it)
        build_engine(_cfg(tmp_path, overwrite=True, options={"decompose": {"sub_epochs": 3}}), bundle).fit()
    with pytest.raises(Exception, match="not divisible"):
        build_engine(_cfg(tmp_path, overwrite=True, options={"decompose": {"subnets": 3}}), bundle).fit()


def test_cli_width_and_decompose_round_trip(tmp_path, capsys):
    import numpy as np

    from fastretrain.cli import main
    from fastretrain.testing import tiny_images

    x, y = tiny_images(12, 3, 12, seed=0)
    xt, yt = tiny_images(6, 3, 12, seed=9)
    np.savez(tmp_path / "tiny.npz", x_train=x.numpy(), y_train=y.numpy(), x_test=xt.numpy(), y_test=yt.numpy())
    out = tmp_path / "cli"
    args = ["train", "--model", "vgg-small", "--width", "0.25", "--data", str(tmp_path / "tiny.npz"), "--image-size", "16",
            "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--no-progress", "--method", "decompose",
            "-o", "decompose.parallel=sequential", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "sub-network phase" in printed and "global phase" in printed
    from safetensors.torch import load_file

    w = load_file(str(out / "model_final.safetensors"))
    assert w["features.0.weight"].shape == (8, 3, 3, 3) and w["fc.weight"].shape == (3, 64)  # width 0.25: 32 -> 8, 256 -> 64
    assert main(["eval", "--run", str(out)]) == 0  # eval rebuilds the model with the run's width
    assert main(["train", "--model", "tiny-cnn", "--method", "decompose", "--data", str(tmp_path / "tiny.npz"),
                 "--image-size", "16", "--epochs", "2", "--device", "cpu", "--out", str(tmp_path / "bad")]) == 2  # fmt: skip
    assert "width-parametrised" in capsys.readouterr().err


def test_decompose_has_no_training_loop_of_its_own():
    """Sub-networks train through the engine: decompose.py makes no optimizer, backward, step or checkpoint write."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(decompose_strategy.__file__).read_text())
    attrs = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not attrs & {"backward", "step", "zero_grad", "optim", "save", "autocast", "GradScaler"}
    assert not names & {"atomic_torch_save", "parse_schedule", "optim"}
    assert "Engine" in names and "single_process" in attrs  # it runs engines, each as if alone


def test_subnetworks_are_engine_runs_of_the_run_config(tmp_path):
    """Each sub-network folder is an engine run of the run's config with the sub-network's epochs, LR, seed and
    shard; nothing is evaluated in it (its whole time is training, counted by the parent)."""
    from fastretrain.engine import seed_from

    bundle = tiny_bundle()
    opts = {"decompose": {"subnets": 2, "sub_epochs": 2, "sub_lr": 0.02, "shards": "disjoint", "parallel": "sequential"}}
    build_engine(_cfg(tmp_path, epochs=3, schedule="constant", options=opts), bundle).fit()
    sizes = []
    for j in range(2):
        folder = tmp_path / "run" / "subnets" / f"subnet{j}"
        ck = torch.load(folder / "checkpoint.pt", weights_only=True)
        assert ck["epoch"] == 2 and ck["config"]["epochs"] == 2 and ck["config"]["lr"] == 0.02
        assert ck["config"]["seed"] == seed_from(0, "subnet", j)  # the seed decompose() initialised it with
        assert ck["config"]["batch_size"] == 8 and ck["config"]["optimizer"] == "sgd"  # the run's own settings
        lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [x["epoch"] for x in lines] == [1, 2] and all(x["lr"] == 0.02 for x in lines)  # constant schedule
        assert not any(k.startswith(("val_", "test_")) for x in lines for k in x)
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["world_size"] == 1 and summary["test_images"] == 0
        sizes.append(summary["train_images"])
    assert sizes == [len(bundle.train) // 2] * 2  # disjoint halves of the training images


def test_interrupted_subnetwork_phase_resumes_from_the_engines_checkpoints(tmp_path, monkeypatch):
    """Sub-network 2 is interrupted after its first epoch; --resume skips the finished sub-network 1, continues
    sub-network 2 from its engine checkpoint, and ends bit-identical to an uninterrupted run."""
    from fastretrain.testing import assert_same_run

    bundle = tiny_bundle()
    opts = {"decompose": {"subnets": 2, "sub_epochs": 2, "parallel": "sequential"}}
    straight = _cfg(tmp_path, epochs=3, progress=True, deterministic=True, options=opts, out=str(tmp_path / "a"))
    build_engine(straight, bundle).fit()

    def stop(self, engine):
        if self.index == 1 and engine.epoch == 1:
            raise KeyboardInterrupt

    broken = _cfg(tmp_path, epochs=3, progress=True, deterministic=True, options=opts, out=str(tmp_path / "b"))
    with monkeypatch.context() as m:
        m.setattr(decompose_strategy.SubnetLines, "before_epoch", stop, raising=False)
        with pytest.raises(KeyboardInterrupt):
            build_engine(broken, bundle).fit()
    ck = torch.load(tmp_path / "b" / "subnets" / "subnet1" / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 1 and not (tmp_path / "b" / "checkpoint.pt").exists()
    trained = []
    real = decompose_strategy.train_subnet
    monkeypatch.setattr(decompose_strategy, "train_subnet", lambda job: trained.append(job.index) or real(job))
    import dataclasses

    build_engine(dataclasses.replace(broken, resume=True), bundle).fit()
    assert trained == [1]  # sub-network 1 had finished; only sub-network 2 trains again
    lines = [json.loads(x) for x in (tmp_path / "b" / "subnets" / "subnet1" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]  # continued, not restarted
    first = assert_same_run(tmp_path / "a", tmp_path / "b")[0]
    want = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["test_acc_at_composition"] == want["test_acc_at_composition"]
