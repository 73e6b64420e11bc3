"""--budget: a run plans its epochs from measured step costs, anneals its LR to the budget, scores validation at
least 4 times, stops within budget x 1.05 and returns the validation-best model; also after a resume and under
2 gloo processes. The ridge head (epoch 0) is a model the run can return."""
import copy
import json
import os
import time

import pytest
import torch

from fastretrain import Strategy, StopFit, TrainConfig, build_engine
from fastretrain.config import parse_duration
from fastretrain.errors import FastRetrainError
from fastretrain.testing import run_processes, tiny_images
from fastretrain.data import from_arrays

SLACK = 1.05  # the budget's promise: training time <= budget x 1.05


def val_bundle(n_per_class=48):
    x, y = tiny_images(n_per_class, 3, 12, 0)
    xt, yt = tiny_images(8, 3, 12, 1000)
    return from_arrays(x.numpy(), y.numpy(), xt.numpy(), yt.numpy(), 16, name="tiny", val_fraction=0.25)


class Slow(Strategy):
    """Makes every step cost about `seconds` (a tiny model's steps are too cheap to plan a budget from)."""

    def __init__(self, seconds=0.01):
        self.seconds = seconds

    def after_step(self, engine):
        time.sleep(self.seconds)


def budget_cfg(tmp_path, budget, **kw):
    return TrainConfig(model="tiny-cnn", epochs=2, image_size=16, batch_size=8, lr=0.05, device="cpu",
                       progress=False, out=str(tmp_path / "run"), budget=budget, **kw)


def test_parse_duration():
    assert [parse_duration(v) for v in ("90s", "10m", "1h", "1.5h", 300, "2 min", None)] == \
        [90, 600, 3600, 5400, 300, 120, None]
    for bad in ("x", "-3s", "0", "10d", "1h30"):
        with pytest.raises(FastRetrainError, match="--budget"):
            parse_duration(bad)


def test_a_budget_is_filled_and_kept(tmp_path):
    cfg = budget_cfg(tmp_path, "2s")
    e = build_engine(cfg, val_bundle(), strategies=[Slow(0.01)])
    s = e.fit()
    epochs = [h for h in e.history if h["epoch"] > 0]
    assert s["budget_seconds"] == 2.0 and 0.6 * 2.0 <= s["wall_seconds"] <= 2.0 * SLACK
    assert len(epochs) >= 4  # validation scored often enough to choose
    assert e.cfg.epochs >= len(epochs) > cfg.epochs  # planned from the measured cost, not the given 2 epochs
    assert epochs[-1]["lr"] < 0.1 * cfg.lr  # the cosine schedule reached its end with the budget
    # the LR follows elapsed time over the budget, not epochs: at half the time it is about half the peak (cosine)
    mid = min(epochs, key=lambda h: abs(h["wall_seconds"] - 1.0))
    assert abs(mid["lr"] / cfg.lr - 0.5 * (1 + torch.cos(torch.tensor(torch.pi * mid["wall_seconds"] / 2.0)).item())) < 0.25
    assert s["best_epoch"] in [h["epoch"] for h in epochs]
    assert s["cpu_seconds"] > 0


def test_a_short_budget_shortens_epochs_to_score_four_models(tmp_path):
    # one epoch is ~18 steps of ~40 ms (~0.7 s); a 1.2 s budget fits less than two: epochs become shorter
    e = build_engine(budget_cfg(tmp_path, "1.2s"), val_bundle(), strategies=[Slow(0.04)])
    s = e.fit()
    assert e.max_batches is not None and e.max_batches < e.num_batches()
    assert s["epochs"] >= 4 and s["wall_seconds"] <= 1.2 * SLACK


class Interrupt(Strategy):
    def after_epoch(self, engine):
        if engine.epoch == 1:
            raise KeyboardInterrupt


def test_a_resumed_run_keeps_the_remaining_budget(tmp_path):
    cfg = budget_cfg(tmp_path, "2s")
    with pytest.raises(KeyboardInterrupt):
        build_engine(cfg, val_bundle(), strategies=[Slow(0.01), Interrupt()]).fit()
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ck["epoch"] == 1 and ck["config"]["epochs"] > 2  # the plan made before the interruption was saved
    cfg.resume = True
    e = build_engine(cfg, val_bundle(), strategies=[Slow(0.01)])
    s = e.fit()
    assert e.start_epoch == 1 and s["wall_seconds"] <= 2.0 * SLACK and s["wall_seconds"] > ck["wall_seconds"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == list(range(1, s["epochs"] + 1))


def _worker(rank, out):
    torch.manual_seed(0)
    cfg = TrainConfig(model="tiny-cnn", epochs=2, image_size=16, batch_size=8, lr=0.05, device="cpu",
                      progress=False, out=out, budget="2s")
    # rank 1's steps are slower: the ranks must still agree on the plan and on when to stop
    e = build_engine(cfg, val_bundle(), strategies=[Slow(0.01 if rank == 0 else 0.02)])
    s = e.fit()
    json.dump({"epochs": s["epochs"], "wall": s["wall_seconds"], "max_batches": e.max_batches,
               "fc": e.model.fc.weight.sum().item()}, open(os.path.join(out, f"rank{rank}.json"), "w"))


def two_ranks(tmp_path, worker) -> tuple[dict, dict]:
    """Run `worker(rank, out)` in 2 gloo processes; what each rank wrote to out/rank<k>.json."""
    out = tmp_path / "ddp"
    out.mkdir()
    run_processes(worker, 2, args=(str(out),))
    return tuple(json.loads((out / f"rank{k}.json").read_text()) for k in (0, 1))


def test_two_gloo_processes_agree_on_the_plan_and_the_stop(tmp_path):
    r0, r1 = two_ranks(tmp_path, _worker)
    assert r0["epochs"] == r1["epochs"] and r0["max_batches"] == r1["max_batches"] and r0["fc"] == r1["fc"]
    assert max(r0["wall"], r1["wall"]) <= 2.0 * SLACK


class Spoil(Strategy):
    """After the head: snapshot it; after epoch 1's SGD pass, overwrite the head with noise (a bad epoch)."""

    order = 60

    def before_epoch(self, engine):
        if engine.epoch == 0:
            self.head = copy.deepcopy(engine.model.state_dict())

    def after_epoch(self, engine):
        with torch.no_grad():
            engine.model.fc.weight.copy_(torch.randn_like(engine.model.fc.weight) * 10)


def test_the_ridge_head_is_returned_when_validation_prefers_it(tmp_path):
    from safetensors.torch import load_file

    cfg = budget_cfg(tmp_path, None, method="mp-refine", options={"mp-refine": {"C": 4.0, "until": 0}})
    cfg.epochs = 1
    spoil = Spoil()
    e = build_engine(cfg, val_bundle(), strategies=[spoil])
    s = e.fit()
    head, ep1 = e.history
    assert head["epoch"] == 0 and head["model"] == "ridge head" and head["val_acc"] > ep1["val_acc"]
    assert s["best_epoch"] == 0 and s["test_acc"] == head["test_acc"]  # the run returns its head
    best = load_file(tmp_path / "run" / "model_best.safetensors")
    assert torch.equal(best["fc.weight"], spoil.head["fc.weight"])  # and model_best holds the head's weights
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0, 1]


class Reserve(Strategy):
    """End-of-epoch work (as mp-refine's refinement): from epoch 2 on it reserves more than the budget has left."""

    def __init__(self, reserve, work=0.3):
        self.reserve, self.work, self.calls = reserve, work, 0

    def before_epoch(self, engine):
        engine.epoch_end_reserve = self.reserve if engine.epoch >= 1 else 0.0

    def after_epoch(self, engine):
        self.calls += 1
        time.sleep(self.work)


def test_an_epoch_stopped_before_its_first_step_does_no_end_of_epoch_work(tmp_path):
    # epoch 2 reserves 10 s of a 2 s budget: it stops before its first step, and its end-of-epoch work (a
    # refinement of a model that did not train) must not run on the clock
    reserve = Reserve(10.0)
    e = build_engine(budget_cfg(tmp_path, "2s"), val_bundle(), strategies=[Slow(0.01), reserve])
    s = e.fit()
    assert [h["epoch"] for h in e.history] == [1]
    assert reserve.calls == 1  # once, for the epoch that trained
    assert s["wall_seconds"] <= 2.0 * SLACK


def test_mp_refine_keeps_its_reserve_across_a_resume():
    from fastretrain.strategies.mp_refine import MPRefine

    a = MPRefine(init_head=True)
    a._pass_seconds = 3.5  # the last measured feature pass
    b = MPRefine(init_head=True)
    b.load_state_dict(a.state_dict())
    assert b._pass_seconds == 3.5
    b.load_state_dict({"stopped": None})  # a checkpoint written before it was kept
    assert b._pass_seconds == 0.0


def _auto_worker(rank, out):
    torch.manual_seed(0)
    cfg = TrainConfig(model="tiny-cnn", epochs=2, image_size=16, batch_size=8, lr=0.05, device="cpu",
                      progress=False, out=out, budget="3s", method="auto")
    e = build_engine(cfg, val_bundle(), strategies=[Slow(0.01 if rank == 0 else 0.03)])
    s = e.fit()
    auto = next(x for x in e.strategies if type(x).__name__ == "Auto")
    json.dump({"plan": auto.plan, "epochs": s["epochs"], "best": s["best_epoch"], "wall": s["wall_seconds"],
               "fc": e.model.fc.weight.sum().item()}, open(os.path.join(out, f"rank{rank}.json"), "w"))


def test_auto_under_two_gloo_processes_decides_alike(tmp_path):
    r0, r1 = two_ranks(tmp_path, _auto_worker)
    assert r0["plan"] == r1["plan"] and r0["epochs"] == r1["epochs"] and r0["best"] == r1["best"]
    assert r0["fc"] == r1["fc"] and max(r0["wall"], r1["wall"]) <= 3.0 * SLACK
