"""--accumulate N: N batches of B give the update of one batch of N·B (a model without batch norm, float64), with
DDP's no_sync on the accumulating batches; `engine.accumulating` cancels a step from a strategy."""
import os

import pytest
import torch
from torch import nn

from fastretrain import Strategy, TrainConfig, build_engine
from fastretrain.data import DataBundle, FeatureTensors
from fastretrain.errors import FastRetrainError
from fastretrain.testing import run_processes

D, C = 6, 3  # feature dimension, classes


def _bundle(n: int) -> DataBundle:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % C
    x = torch.randn(n, D, generator=g, dtype=torch.float64) + nn.functional.one_hot(y, D).double()
    test = FeatureTensors(torch.randn(12, D, generator=g, dtype=torch.float64), torch.arange(12) % C)
    return DataBundle(FeatureTensors(x, y), test, [str(c) for c in range(C)], "features")


def _model() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(D, 8), nn.Tanh(), nn.Linear(8, C)).double()  # no batch norm


class CountSteps(Strategy):
    def __init__(self):
        self.steps, self.lrs = 0, []

    def after_step(self, engine):
        self.steps += 1
        self.lrs.append(engine.optimizer.param_groups[0]["lr"])


def _train(n, batch_size, accumulate=1, strategies=(), **kw):
    cfg = TrainConfig(model="tiny-cnn", batch_size=batch_size, accumulate=accumulate, lr=0.2, weight_decay=1e-3,
                      device="cpu", progress=False, out=None, **{"epochs": 1, **kw})
    count = CountSteps()
    engine = build_engine(cfg, _bundle(n), module=_model(), strategies=[*strategies, count])
    engine.fit()
    return engine, count


def _assert_same_params(a, b):
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6), (name, (p - q).abs().max())
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), _model().parameters()))  # something trained


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_n_batches_of_b_equal_one_batch_of_n_times_b(optimizer):
    """4 batches of 4, accumulated 4 at a time, over 2 epochs of 32 images: every step (and its cosine LR) is the
    batch-of-16 run's."""
    small, count = _train(32, 4, accumulate=4, optimizer=optimizer, epochs=2)
    big, big_count = _train(32, 16, optimizer=optimizer, epochs=2)
    assert count.steps == big_count.steps == 4
    assert count.lrs == pytest.approx(big_count.lrs, abs=1e-15)  # the schedule counts optimizer steps
    _assert_same_params(small.model, big.model)
    for a, b in zip(small.history, big.history):  # the logged loss is the batches' own, not the scaled one
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)


def test_a_short_last_group_is_the_big_runs_short_last_batch():
    """5 batches of 4 accumulated 2 at a time: groups of 2, 2 and 1, as batches of 8, 8 and 4."""
    small, count = _train(20, 4, accumulate=2, schedule="constant")
    big, big_count = _train(20, 8, schedule="constant")
    assert count.steps == big_count.steps == 3
    _assert_same_params(small.model, big.model)


def test_accumulate_one_is_the_plain_loop_bit_for_bit():
    a, _ = _train(20, 4, accumulate=1)
    b, _ = _train(20, 4)
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_a_strategy_cancels_steps_by_accumulating():
    class EveryOther(Strategy):
        def before_batch(self, engine):
            engine.accumulating = engine.iter % 2 == 0

        def after_loss(self, engine):
            engine.loss = engine.loss / 2

    engine, count = _train(16, 4, strategies=[EveryOther()], schedule="constant")
    big, _ = _train(16, 8, schedule="constant")
    assert count.steps == 2
    _assert_same_params(engine.model, big.model)


def test_accumulating_set_in_before_step_is_refused():
    class Late(Strategy):
        def before_step(self, engine):
            engine.accumulating = True

    with pytest.raises(FastRetrainError, match="before_step"):
        _train(16, 4, strategies=[Late()])


def test_accumulate_is_a_flag_and_is_checked():
    from fastretrain.cli import build_parser

    args = build_parser().parse_args(["train", "--accumulate", "3"])
    assert args.accumulate == 3
    with pytest.raises(FastRetrainError, match="--accumulate must be >= 1"):
        TrainConfig(accumulate=0).validate()


def _worker(rank, out):
    from torch.nn.parallel import DistributedDataParallel as DDP

    entered = []
    no_sync = DDP.no_sync

    def counting(self):
        entered.append(1)
        return no_sync(self)

    DDP.no_sync = counting
    engine, count = _train(32, 4, accumulate=2, epochs=2)
    torch.save({"params": [p.detach().clone() for p in engine.model.parameters()], "no_sync": len(entered),
                "steps": count.steps}, os.path.join(out, f"rank{rank}.pt"))


def test_ddp_accumulation_keeps_replicas_identical_and_equals_the_big_batch(tmp_path):
    """2 gloo processes, 4 images a batch, 2 batches a step: each step all-reduces once (no_sync on the first
    batch) and is the single-process step over the same 16 images (the sampler's shards interleave)."""
    run_processes(_worker, 2, args=(str(tmp_path),))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(p, q) for p, q in zip(r0["params"], r1["params"]))  # the replicas stay identical
    assert r0["steps"] == 4 and r0["no_sync"] == 4  # per epoch: 4 batches per rank, 2 steps, 2 accumulating
    big, _ = _train(32, 16, epochs=2)
    for p, q in zip(r0["params"], big.model.parameters()):
        assert torch.allclose(p, q, rtol=0, atol=1e-6), (p - q).abs().max()
