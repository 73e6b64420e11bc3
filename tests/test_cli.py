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
    assert main(["eval", "--run", out, "--which", "final", "--json"]) == 0
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


def test_recipe_changes_are_printed_and_given_flags_win(tmp_path, npz, capsys):
    out = tmp_path / "run"
    assert main(_tiny("train", "--data", npz(), "--recipe", "authors", "--epochs", "1", "--out", str(out))) == 0
    printed = [x for x in capsys.readouterr().out.splitlines() if x.startswith("recipe ")]
    # authors = sgd, momentum .9, wd 1e-4, batch 32, 8 epochs, lr 1e-3, piecewise: the first three are the defaults
    assert sorted(printed) == sorted([
        "recipe authors: --lr 0.001 (default 0.01)",
        "recipe authors: --schedule piecewise:1x3,0.1x3,0.01x2 (default cosine)",
        "recipe authors: --epochs 1 as given (the recipe has 8)",
        "recipe authors: --batch-size 8 as given (the recipe has 32)"])  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["lr"], cfg["schedule"], cfg["epochs"], cfg["batch_size"]) == (0.001, "piecewise:1x3,0.1x3,0.01x2", 1, 8)
    assert json.loads((out / "summary.json").read_text())["recipe"] == "authors"
    assert main(_tiny("train", "--data", npz(), "--method", "fast-retrain", "--epochs", "1",
                      "--out", str(tmp_path / "b"))) == 0
    out_b = capsys.readouterr().out.splitlines()
    assert not any(x.startswith("recipe") for x in out_b)  # a method changes nothing by itself: nothing to print
    assert json.loads((tmp_path / "b" / "config.json").read_text())["lr"] == 0.01
    assert main(_tiny("train", "--data", npz(), "--recipe", "autors")) == 2
    assert "unknown recipe 'autors'; did you mean: authors?" in _err(capsys)


def test_split_flags_reach_the_run_and_eval_loads_best_and_final(tmp_path, npz, capsys):
    out = tmp_path / "run"
    args = _tiny("train", "--data", npz(), "--epochs", "2", "--out", str(out), "--val-fraction", "0",
                 "--split-seed", "3")
    assert main(args) == 0
    assert "(no validation split: the last)" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    s = json.loads((out / "summary.json").read_text())
    assert (cfg["val_fraction"], cfg["split_seed"], s["val_images"], s["best_epoch"]) == (0.0, 3, 0, 2)
    for which, key in (("best", "test_acc"), ("final", "final_test_acc")):
        assert main(["eval", "--run", str(out), "--which", which, "--json"]) == 0
        res = json.loads(capsys.readouterr().out)
        assert res["test_acc"] == pytest.approx(s[key], abs=1e-6) and res["test_set_id"] == s["test_set_id"]
    assert main(_tiny("train", "--data", npz(), "--val-fraction", "1")) == 2
    assert "--val-fraction must be in [0, 1)" in _err(capsys)


def test_methods_lists_the_recipes(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert "authors: fast-retrain's published recipe" in text and "fastai: fastai fine_tune defaults" in text
    assert "\n    defaults:" not in text  # methods carry no settings of their own
