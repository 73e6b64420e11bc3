"""Engine: event order, composition, control exceptions, optimizer rebuild, resume exactness, NaN guard."""
import ast
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

import pytest
import torch

import fastretrain
from fastretrain import SkipBatch, StopFit, Strategy, build_engine, train
from fastretrain.engine import EVENTS, check_hooks
from fastretrain.errors import FastRetrainError, NonFiniteLossError
from fastretrain.methods import load_all
from fastretrain.testing import assert_same_run


class Recorder(Strategy):
    def __init__(self, log, tag="r", order=0):
        self.events, self.tag, self.order = log, tag, order

    def __getattr__(self, name):
        if name in EVENTS:
            return lambda engine: self.events.append((self.tag, name))
        raise AttributeError(name)


def test_event_order(cfg, bundle):
    log = []
    cfg.epochs, cfg.out = 2, None
    engine = build_engine(cfg, bundle, strategies=[Recorder(log)])
    n = engine.num_batches()
    engine.fit()
    names = [e for _, e in log]
    per_batch = ["before_batch", "after_loss", "before_step", "after_step"]
    per_epoch = ["before_epoch", *per_batch * n, "after_epoch", "after_eval"]
    assert names == ["before_fit", *per_epoch * 2, "after_fit"]


def test_strategies_run_by_order_and_compose(cfg, bundle):
    log = []
    cfg.epochs, cfg.out = 1, None
    build_engine(cfg, bundle, strategies=[Recorder(log, "late", order=10), Recorder(log, "early", order=-5)]).fit()
    assert log[:2] == [("early", "before_fit"), ("late", "before_fit")]
    assert sum(1 for t, e in log if e == "after_step") == 2 * sum(1 for t, e in log if e == "after_step" and t == "late")


class SkipOdd(Strategy):
    def before_batch(self, engine):
        if engine.iter % 2:
            raise SkipBatch


class StopAfterFirstEpoch(Strategy):
    def after_epoch(self, engine):
        raise StopFit


def test_skip_batch_and_stop_fit(cfg, bundle):
    steps = []

    class Count(Strategy):
        order = 1

        def after_step(self, engine):
            steps.append(engine.iter)

    cfg.epochs, cfg.out = 3, None
    engine = build_engine(cfg, bundle, strategies=[SkipOdd(), StopAfterFirstEpoch(), Count()])
    summary = engine.fit()
    assert steps == list(range(0, engine.num_batches(), 2))  # odd batches skipped: no step
    assert summary["epochs"] == 1 and len(engine.history) == 1  # stopped after the first epoch, which was evaluated


def test_stop_fit_before_an_epoch_records_nothing_for_it(cfg, bundle):
    class StopAtSecond(Strategy):
        def before_epoch(self, engine):
            if engine.epoch == 1:
                raise StopFit

    cfg.epochs, cfg.out = 3, None
    engine = build_engine(cfg, bundle, strategies=[StopAtSecond()])
    assert engine.fit()["epochs"] == 1 and [h["epoch"] for h in engine.history] == [1]


def test_rebuild_keeps_momentum_of_kept_and_returning_params(cfg, bundle):
    cfg.out = None
    engine = build_engine(cfg, bundle)
    engine.fit()
    named = dict(engine.model.named_parameters())
    before = {n: engine.optimizer.state[p]["momentum_buffer"].clone() for n, p in named.items()}
    frozen = "features.0.0.weight"
    named[frozen].requires_grad_(False)
    engine.rebuild_optimizer()
    opt_params = {id(p) for g in engine.optimizer.param_groups for p in g["params"]}
    assert id(named[frozen]) not in opt_params
    for n, p in named.items():
        if n != frozen:
            assert torch.equal(engine.optimizer.state[p]["momentum_buffer"], before[n]), n
    named[frozen].requires_grad_(True)  # thaws: its buffer comes back
    engine.rebuild_optimizer()
    assert torch.equal(engine.optimizer.state[named[frozen]]["momentum_buffer"], before[frozen])


def test_frozen_param_gets_no_update_not_even_weight_decay(cfg, bundle):
    cfg.out, cfg.weight_decay, cfg.epochs = None, 0.1, 1
    engine = build_engine(cfg, bundle)
    p = engine.model.features[0][0].weight
    p.requires_grad_(False)
    engine.rebuild_optimizer()
    w0 = p.detach().clone()
    engine.fit()
    assert torch.equal(p, w0)


class Interrupt(Strategy):
    def before_epoch(self, engine):
        if engine.epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_resume_is_bit_exact(tmp_path, cfg, bundle, optimizer):
    cfg.epochs, cfg.optimizer, cfg.deterministic = 3, optimizer, True
    straight = dataclasses.replace(cfg, out=str(tmp_path / "straight"))
    train(straight, bundle=bundle)
    broken = dataclasses.replace(cfg, out=str(tmp_path / "broken"))
    with pytest.raises(KeyboardInterrupt):
        train(broken, bundle=bundle, strategies=[Interrupt()])
    assert len((tmp_path / "broken" / "metrics.jsonl").read_text().splitlines()) == 1
    train(dataclasses.replace(broken, resume=True), bundle=bundle)
    lines = assert_same_run(tmp_path / "straight", tmp_path / "broken")
    assert [x["epoch"] for x in lines] == [1, 2, 3]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, cfg, bundle):
    class Poison(Strategy):
        def after_loss(self, engine):
            if engine.epoch == 1:
                engine.loss = engine.loss * float("nan")

    cfg.epochs = 3
    with pytest.raises(NonFiniteLossError, match="training loss is nan at epoch 2"):
        train(cfg, bundle=bundle, strategies=[Poison()])
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_metrics_and_outputs(cfg, bundle, tmp_path):
    summary = train(cfg, bundle=bundle)
    out = tmp_path / "run"
    for f in ("config.json", "metrics.jsonl", "summary.json", "model_final.safetensors", "model_best.safetensors", "checkpoint.pt"):
        assert (out / f).is_file(), f
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    keys = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds", "wall_seconds", "images_per_second"}
    assert all(keys <= set(x) for x in lines)
    assert all(0 <= x["test_acc"] <= 1 and 0 <= x["train_acc"] <= 1 for x in lines)
    assert lines[-1]["wall_seconds"] == pytest.approx(sum(x["epoch_seconds"] for x in lines), rel=0.05, abs=0.5)
    on_disk = json.loads((out / "summary.json").read_text())
    for k in ("test_acc", "final_test_acc", "wall_seconds", "epochs", "method", "model", "best_epoch", "test_set_id"):
        assert on_disk[k] == summary[k]
    # no validation split in this bundle: the best epoch is the last one, and its test accuracy is reported
    assert summary["best_epoch"] == len(lines) and summary["test_acc"] == lines[-1]["test_acc"]
    assert "best_test_acc" not in summary and summary["best_val_acc"] is None


def test_save_weights_off_keeps_only_metrics(cfg, bundle, tmp_path):
    cfg.save_weights, cfg.save_checkpoint = False, False
    train(cfg, bundle=bundle)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "metrics.jsonl", "summary.json"]


# ---------------------------------------------------------------- typo-proof hooks, untimed setup, public surface
@pytest.mark.parametrize("typo,closest", [("after_stp", "after_step"), ("before_epoc", "before_epoch"),
                                          ("after_evaluation", "after_eval"), ("before_fitting", "before_fit")])
def test_misspelt_hook_is_refused_naming_the_closest_event(cfg, bundle, typo, closest):
    bad = type("Typo", (Strategy,), {typo: lambda self, engine: None})
    with pytest.raises(FastRetrainError, match=rf"Typo\.{typo} is not an engine event \(did you mean {closest}\?\)"):
        build_engine(cfg, bundle, strategies=[bad()])


def test_events_private_helpers_and_attributes_pass_the_hook_check(cfg, bundle):
    class Fine(Strategy):
        after_step_count = 0  # a public attribute, not a method

        def _before_anything(self, engine):  # private helper
            pass

        def after_step(self, engine):
            self.after_step_count += 1

    cfg.out, cfg.epochs = None, 1
    engine = build_engine(cfg, bundle, strategies=[Fine()])
    engine.fit()
    assert engine.strategies[0].after_step_count == engine.num_batches()


def _before_fit_seconds(cfg, bundle, untimed: bool) -> float:
    """wall_seconds minus the epochs' training time: what before_fit added to the clock."""
    class Setup(Strategy):
        def before_fit(self, engine):
            with engine.untimed() if untimed else contextlib.nullcontext():
                time.sleep(0.5)

    cfg.out, cfg.epochs = None, 1
    engine = build_engine(cfg, bundle, strategies=[Setup()])
    summary = engine.fit()
    return summary["wall_seconds"] - sum(h["epoch_seconds"] for h in engine.history)


def test_untimed_in_before_fit_is_off_the_clock(cfg, bundle):
    assert _before_fit_seconds(cfg, bundle, untimed=False) >= 0.5  # setup work is training time
    assert _before_fit_seconds(cfg, bundle, untimed=True) < 0.5  # unless the strategy says it is not


def _strategy_sources():
    root = Path(fastretrain.__file__).parent
    paths = sorted((root / "strategies").glob("*.py")) + [root / "run_folder.py", root / "progress.py"]  # built-ins
    return [(p, ast.parse(p.read_text())) for p in paths]


def test_strategies_use_only_the_declared_public_engine_surface(cfg, bundle):
    """No `engine._x` or getattr(engine, "_x"), no hand edits of wall_seconds, and every engine attribute a
    strategy reads exists once the engine is built (declared in Engine.__init__, or a method)."""
    cfg.out = None
    engine = build_engine(cfg, bundle)
    used = set()
    for path, tree in _strategy_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "engine":
                assert not node.attr.startswith("_"), f"{path.name}:{node.lineno} reaches into engine.{node.attr}"
                used.add(node.attr)
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr" and node.args:
                target = node.args[0]
                if isinstance(target, ast.Name) and target.id == "engine":
                    raise AssertionError(f"{path.name}:{node.lineno}: getattr(engine, ...)")
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(getattr(t, "attr", None) == "wall_seconds" for t in targets):
                raise AssertionError(f"{path.name}:{node.lineno} changes wall_seconds by hand (use engine.untimed())")
    assert {"y", "net", "model", "cfg", "log", "rng"} <= used  # the scan sees what strategies really use
    missing = sorted(a for a in used if not hasattr(engine, a))
    assert not missing, f"engine attributes strategies use but Engine.__init__ does not declare: {missing}"


def test_no_private_names_imported_across_modules():
    root = Path(fastretrain.__file__).parent
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__" and (node.module or "").find("torch") < 0:
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{path.relative_to(root)}:{node.lineno} imports {private} from {node.module}"


def test_load_all_registers_every_strategy_module_and_the_package_imports_nothing_itself():
    root = Path(fastretrain.__file__).parent / "strategies"
    init = ast.parse((root / "__init__.py").read_text())
    assert not [n for n in ast.walk(init) if isinstance(n, (ast.Import, ast.ImportFrom))]  # no side-effect imports
    methods = load_all()
    modules = {p.stem for p in root.glob("*.py") if p.stem != "__init__"}
    assert all(f"fastretrain.strategies.{m}" in sys.modules for m in modules)
    registered = {m.strategy.__module__.rsplit(".", 1)[-1] for m in methods.values() if m.strategy is not None}
    assert registered == modules - {"fast_retrain"}  # fast-retrain is made of parts, it has no class of its own
    for m in methods.values():
        if m.strategy is not None:
            check_hooks(m.strategy())  # the built-in strategies' hooks are all events


# ---------------------------------------------------------------- built-in strategies
def test_builtins_are_installed_by_default_and_swapped_or_dropped_by_name(cfg, bundle, tmp_path, capsys):
    engine = build_engine(cfg, bundle)
    assert list(engine.builtins) == ["progress", "run-folder"] and engine.builtins["run-folder"].bundle
    assert all(any(s is b for s in engine.strategies) for b in engine.builtins.values())
    engine.fit()
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert not [k for k in ck["strategies"] if k.endswith(("RunFolder", "Progress"))]  # built-ins keep no state

    cfg.out, cfg.progress = str(tmp_path / "quiet"), True
    lines = []

    class Lines(Strategy):
        def after_log(self, engine):
            lines.append(engine.history[-1]["epoch"])

    train(cfg, bundle=bundle, builtins={"run-folder": None, "progress": Lines()})
    assert sorted(p.name for p in (tmp_path / "quiet").iterdir()) == ["config.json"]  # build_engine's, as it starts
    assert lines == [1, 2] and "epoch 1/2" not in capsys.readouterr().out


def test_record_events_come_after_the_loops_own(cfg, bundle):
    log = []

    class Records(Strategy):
        def __getattr__(self, name):
            if name.startswith(("before_", "after_")):
                return lambda engine: log.append(name)
            raise AttributeError(name)

    cfg.epochs, cfg.out = 1, None
    engine = build_engine(cfg, bundle, strategies=[Records()])
    n = engine.num_batches()
    engine.fit()
    assert log[:2] == ["before_fit", "after_setup"] and log[-3:] == ["after_log", "after_fit", "after_summary"]
    assert log.count("after_batch") == n and log[-5:-3] == ["after_epoch", "after_eval"]
