"""CLI: train/eval round trip, --help, and one clear line + exit 2 for each kind of bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest

from fastretrain.cli import main, parse_options
from fastretrain.testing import tiny_images

FAST = ["--image-size", "16", "--batch-size", "8", "--device", "cpu", "--no-progress"]


@pytest.fixture
def npz(tmp_path):
    def make(classes=3, name="tiny.npz"):
        x, y = tiny_images(8, classes, 12, seed=0)
        xt, yt = tiny_images(4, classes, 12, seed=5)
        path = tmp_path / name
        np.savez(path, x_train=x.numpy(), y_train=y.numpy(), x_test=xt.numpy(), y_test=yt.numpy())
        return str(path)

    return make


def _tiny(*args):
    return [*args, *FAST] if "--model" in args else [*args, "--model", "tiny-cnn", *FAST]


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_train_then_eval(tmp_path, npz, capsys):
    out = str(tmp_path / "run")
    assert main(_tiny("train", "--data", npz(), "--epochs", "2", "--out", out)) == 0
    assert "done: test acc" in capsys.readouterr().out
    assert main(["eval", "--run", out, "--which", "final"]) == 0
    res = json.loads(capsys.readouterr().out)
    final = json.loads((tmp_path / "run" / "summary.json").read_text())["final_test_acc"]
    assert res["test_acc"] == pytest.approx(final, abs=1e-6)  # the saved weights reproduce the run's number


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, npz, capsys):
    assert main(_tiny("train", "--data", str(tmp_path / "missing/dir"))) == 2
    assert "data path not found" in _err(capsys)
    assert main(_tiny("train", "--data", npz(), "--method", "rifel,sgdm")) == 2
    assert "unknown method 'rifel'" in _err(capsys)
    assert main(_tiny("train", "--data", npz(), "--model", "resnet19", "--out", str(tmp_path / "x"))) == 2
    assert "did you mean: resnet18" in _err(capsys)
    assert main(_tiny("train", "--data", npz(), "--epochs", "0")) == 2
    assert "--epochs must be >= 1" in _err(capsys)
    assert main(_tiny("train", "--data", npz(), "-o", "freeze-unfreeze.bogus=1", "--method", "freeze-unfreeze")) == 2
    assert "unknown option(s) for freeze-unfreeze: bogus" in _err(capsys)
    assert main(_tiny("train", "--data", npz(), "--lr", "1e6", "--epochs", "2", "--out", str(tmp_path / "nan"))) == 2
    assert "training loss is" in _err(capsys)


def test_resume_with_other_num_classes_is_refused(tmp_path, npz, capsys):
    out = str(tmp_path / "run")
    assert main(_tiny("train", "--data", npz(3, "a.npz"), "--epochs", "1", "--out", out)) == 0
    assert main(_tiny("train", "--data", npz(4, "b.npz"), "--epochs", "2", "--out", out, "--resume")) == 2
    assert "it has 3 classes, the data has 4" in _err(capsys)


def test_options_parsing():
    assert parse_options(["rifle.period=2", "mp-refine.lam=0.5", "x.name=abc", "x.ls=[1,2]"]) == {
        "rifle": {"period": 2}, "mp-refine": {"lam": 0.5}, "x": {"name": "abc", "ls": [1, 2]}}  # fmt: skip


def test_console_script_help_and_error_without_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "fastretrain.cli", "train", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for flag in ("--data", "--model", "--pretrained", "--weights", "--method", "--epochs", "--batch-size", "--lr",
                 "--image-size", "--seed", "--device", "--out", "--resume"):  # fmt: skip
        assert flag in res.stdout
    res = subprocess.run([sys.executable, "-m", "fastretrain.cli", "train", "--data", str(tmp_path / "nothing")],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr and "data path not found" in res.stderr
