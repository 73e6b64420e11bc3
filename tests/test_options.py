"""A bad method option (-o METHOD.NAME=VALUE) stops `fastretrain train` in one line, exit status 2, before any
data or model is loaded: every strategy checks its options when it is built (methods.check_options)."""
import pytest

from fastretrain import FastRetrainError, check_options
from fastretrain.cli import main

BAD = [
    ("rifle", "rifle.period=0", "rifle.period must be > 0"),
    ("rifle", "rifle.resets=-1", "rifle.resets must be >= 0"),
    ("dropout", "dropout.p=1.5", "dropout.p must be in [0, 1)"),
    ("dropconnect", "dropconnect.p=1", "dropconnect.p must be in [0, 1)"),
    ("disturblabel", "disturblabel.alpha=2", "disturblabel.alpha must be in [0, 1]"),
    ("stochastic-depth", "stochastic-depth.rate=1", "stochastic-depth.rate must be in [0, 1)"),
    ("cyclic-lr", "cyclic-lr.period=0", "cyclic-lr.period must be > 0"),
    ("decompose", "decompose.shards=halves", "decompose.shards must be whole or disjoint"),
    ("decompose", "decompose.subnets=1", "decompose.subnets must be >= 2"),
    ("random-freeze", "random-freeze.policy=top", "random-freeze.policy must be one of"),
    ("mp-refine", "mp-refine.lam=0", "mp-refine.lam must be > 0"),
    ("fast-retrain", "mp-refine.solver=lu", "mp-refine.solver must be direct or recursive"),
    ("freeze-unfreeze", "freeze-unfreeze.groups=1", "freeze-unfreeze.groups must be >= 2"),
    ("kernel-rescale", "kernel-rescale.monitor=test-loss", "kernel-rescale.monitor must be"),
    ("kernel-rescale", "kernel-rescale.scale=1", "kernel-rescale.scale must be > 1"),
]


@pytest.mark.parametrize("method,option,message", BAD)
def test_bad_option_fails_before_data_and_model_load(tmp_path, capsys, monkeypatch, method, option, message):
    def never(*a, **k):
        raise AssertionError("data or model loaded before the options were checked")

    monkeypatch.setattr("fastretrain.run.load_data", never)
    monkeypatch.setattr("fastretrain.run.create_model", never)
    args = ["train", "--method", method, "-o", option, "--data", str(tmp_path / "absent.npz"), "--model", "tiny-cnn",
            "--device", "cpu", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_check_options_names_the_method_and_the_first_failing_check():
    check_options("m", [(True, "a fine")])
    with pytest.raises(FastRetrainError, match=r"^m\.b must be 2$"):
        check_options("m", [(True, "a fine"), (False, "b must be 2"), (False, "c never reached")])


def test_every_strategy_with_options_checks_them_when_built():
    import dataclasses
    import inspect

    from fastretrain.methods import load_all

    for name, method in load_all().items():
        cls = method.strategy
        if cls is None or not dataclasses.is_dataclass(cls) or not dataclasses.fields(cls):
            continue
        post = getattr(cls, "__post_init__", None)
        assert post is not None and "check_options(" in inspect.getsource(post), f"{name}: options not checked"
