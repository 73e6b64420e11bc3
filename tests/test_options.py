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


# ------------------------------------------------------------------------------ typos: the closest option named

HINTS = [
    ("mp-refine", "mp-refine.lamda=1", "unknown option(s) for mp-refine: lamda; did you mean mp-refine.lam?"),
    ("fast-retrain", "fast-retrain.lam=1",
     "fast-retrain takes no options of its own; lam is an option of mp-refine: -o mp-refine.lam=..."),
    ("fast-retrain", "fast-retrain.polcy=bottom", "fast-retrain takes no options of its own; did you mean "
     "random-freeze.policy?"),
    ("rifle", "rifle.lam=1", "unknown option(s) for rifle: lam; lam is an option of mp-refine, which --method does "
     "not include"),
    ("rifle,mp-refine", "rifle.lam=1", "lam is an option of mp-refine: -o mp-refine.lam=..."),
    ("mp-refine", "mp-refin.lam=1", "-o mp-refin.lam: unknown method 'mp-refin'; did you mean: mp-refine"),
    ("sgdm", "sgdm.lr=1", "sgdm takes no options of its own"),
]


@pytest.mark.parametrize("method,option,message", HINTS)
def test_option_typos_name_the_closest_option_and_its_method(tmp_path, capsys, monkeypatch, method, option, message):
    monkeypatch.setattr("fastretrain.run.load_data", lambda *a, **k: pytest.fail("data loaded"))
    args = ["train", "--method", method, "-o", option, "--data", "fashion-mnist", "--model", "tiny-cnn", "--device",
            "cpu", "--out", str(tmp_path / "run")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


# ------------------------------------------------------------------- frozen backbone, random initialisation


def _frozen_run(tmp_path, method, *extra):
    return ["train", "--method", method, "--data", "fashion-mnist", "--model", "tiny-cnn", "--device", "cpu",
            "--out", str(tmp_path / "run"), *extra]


@pytest.fixture
def data_reached(monkeypatch):
    """load_data replaced by an error: a run that gets that far has passed the backbone check."""

    def reached(*a, **k):
        raise FastRetrainError("reached data loading")

    monkeypatch.setattr("fastretrain.run.load_data", reached)


@pytest.mark.parametrize("method", ["linear-probe", "freeze-unfreeze", "linear-probe,rifle"])
def test_frozen_backbone_methods_refuse_a_random_backbone(tmp_path, capsys, data_reached, method):
    name = method.split(",")[0]
    assert main(_frozen_run(tmp_path, method)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert (f"error: {name} trains on a frozen backbone, and tiny-cnn's would be randomly initialised (no pretrained "
            f"weights for it on this machine): give --pretrained-file FILE or --weights FILE, or -o "
            f"{name}.random_backbone=True to run it anyway") in err, err
    assert main(_frozen_run(tmp_path, method, "--no-pretrained")) == 2
    assert "(--no-pretrained)" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [
    ["-o", "linear-probe.random_backbone=True"],  # asked for explicitly
    ["--weights", "w.safetensors"],  # the user's own weights
])
def test_random_backbone_runs_when_asked_for_or_with_weights(tmp_path, capsys, data_reached, extra):
    assert main(_frozen_run(tmp_path, "linear-probe", *extra)) == 2
    assert "reached data loading" in capsys.readouterr().err


def test_freeze_unfreeze_without_frozen_epochs_and_sgdm_are_not_refused(tmp_path, capsys, data_reached):
    assert main(_frozen_run(tmp_path, "freeze-unfreeze", "-o", "freeze-unfreeze.freeze_epochs=0")) == 2
    assert "reached data loading" in capsys.readouterr().err
    assert main(_frozen_run(tmp_path, "sgdm")) == 2
    assert "reached data loading" in capsys.readouterr().err


def test_random_backbone_option_is_checked():
    from fastretrain.methods import build_strategies

    with pytest.raises(FastRetrainError, match=r"linear-probe\.random_backbone must be True or False"):
        build_strategies("linear-probe", {"linear-probe": {"random_backbone": "yes"}})


def test_pretrained_backbone_is_not_refused(tmp_path, capsys, data_reached):
    from fastretrain.models import pretrained_available

    if not pretrained_available("tf_efficientnet_lite0"):
        pytest.skip("no shipped EfficientNet-Lite0 weights on this machine")
    args = _frozen_run(tmp_path, "linear-probe")
    args[args.index("tiny-cnn")] = "tf_efficientnet_lite0"
    assert main(args) == 2
    assert "reached data loading" in capsys.readouterr().err
