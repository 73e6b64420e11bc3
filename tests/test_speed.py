"""GPU speed options, checked for correctness on the CPU (speed.py): torch.compile keeps training a layer that a
strategy thaws (against eager PyTorch), compiles once per trainable set, and float16 autocast with a GradScaler
steps exactly as PyTorch's own AMP recipe does. The compile test with Inductor (code generation, about a minute
on a CPU) is marked slow and runs only with FASTRETRAIN_SLOW_TESTS=1; the recompile logic is checked fast with
the aot_eager backend (AOTAutograd's traced joint graph, the part a stale trainable set breaks)."""
import copy
import os

import pytest
import torch
from torch import nn

from fastretrain import FastRetrainError, Strategy, TrainConfig, build_engine
from fastretrain.speed import CompiledForward, compile_options, resolve_amp


def _freeze(module, frozen: bool):
    for p in module.parameters():
        p.requires_grad_(not frozen)


def test_compiled_forward_recompiles_when_a_layer_is_thawed():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    ref = copy.deepcopy(model)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    cf = CompiledForward(backend="aot_eager")

    def grads(net, run):
        net.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(run(x), y).backward()
        return [p.grad for p in net.parameters()]

    for frozen in (True, False, True):  # frozen, thawed, frozen again
        _freeze(model[0], frozen)
        _freeze(ref[0], frozen)
        got, want = grads(model, lambda v: cf(model, v)), grads(ref, ref)
        assert [g is None for g in got] == [g is None for g in want] == [frozen, frozen, False, False]
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, want) if b is not None)
    assert cf.compiles == 2  # the frozen set's graph was reused


class _ThawAfterOneEpoch(Strategy):
    """Trains only the head in epoch 1, everything from epoch 2 (fastai's freeze-unfreeze in miniature)."""

    def before_fit(self, engine):
        _freeze(engine.model, True)
        _freeze(engine.model.fc, False)
        engine.rebuild_optimizer()

    def before_epoch(self, engine):
        if engine.epoch == 1:
            _freeze(engine.model, False)
            engine.rebuild_optimizer()


def _thaw_run(cfg, bundle, compile):
    cfg = copy.copy(cfg)
    cfg.compile, cfg.epochs, cfg.out, cfg.lr = compile, 2, None, 0.05
    torch.manual_seed(0)
    engine = build_engine(cfg, bundle, strategies=[_ThawAfterOneEpoch()])
    before = copy.deepcopy(engine.model.state_dict())
    engine.fit()
    return engine, before


def _check_thawed_layers_train_as_in_eager(cfg, bundle, compile):
    eager, before = _thaw_run(cfg, bundle, None)
    compiled, before_c = _thaw_run(cfg, bundle, compile)
    stem = "features.0.0.weight"
    assert torch.equal(before[stem], before_c[stem])
    assert not torch.equal(compiled.model.state_dict()[stem], before[stem])  # the thawed layer trained
    for k, v in eager.model.state_dict().items():
        assert torch.allclose(compiled.model.state_dict()[k].float(), v.float(), atol=1e-4), k
    assert compiled._compiled.compiles == 2  # head only, then everything


def test_engine_compile_trains_a_thawed_layer_aot_eager(cfg, bundle):
    _check_thawed_layers_train_as_in_eager(cfg, bundle, "aot_eager")


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("FASTRETRAIN_SLOW_TESTS"), reason="Inductor on a CPU: FASTRETRAIN_SLOW_TESTS=1")
def test_engine_compile_trains_a_thawed_layer_inductor(cfg, bundle):
    _check_thawed_layers_train_as_in_eager(cfg, bundle, "on")


def test_fp16_autocast_with_grad_scaler_follows_pytorchs_recipe(cfg, bundle):
    """The engine's float16 steps equal PyTorch's AMP recipe on the same batches, and before_step hooks see
    the unscaled gradients."""
    seen = []

    class Record(Strategy):
        def before_batch(self, engine):
            seen.append((engine.x.clone(), engine.y.clone()))

        def before_step(self, engine):
            seen[-1] += (engine.model.fc.weight.grad.clone(),)

    cfg.amp, cfg.epochs, cfg.out, cfg.schedule, cfg.weight_decay = "fp16", 1, None, "constant", 0.0
    torch.manual_seed(0)
    engine = build_engine(cfg, bundle, strategies=[Record()])
    assert engine.amp_dtype == torch.float16 and engine.scaler is not None
    ref = copy.deepcopy(engine.model)
    engine.fit()
    opt = torch.optim.SGD(ref.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    scaler = torch.amp.GradScaler("cpu")
    ref.train()
    for x, y, hook_grad in seen:  # torch.amp docs, "Typical Mixed Precision Training"
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(ref(x).float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        assert torch.equal(hook_grad, ref.fc.weight.grad)
        scaler.step(opt)
        scaler.update()
    for a, b in zip(engine.model.state_dict().values(), ref.state_dict().values()):
        assert torch.equal(a, b)
    assert engine.scaler.get_scale() == scaler.get_scale()


def test_amp_and_compile_values():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_amp(None, cpu) is None and resolve_amp(True, cpu) is None  # the CPU: off unless a dtype is named
    assert resolve_amp("fp16", cpu) == torch.float16 and resolve_amp("bf16", cpu) == torch.bfloat16
    assert resolve_amp("off", cuda) is None and resolve_amp(False, cuda) is None
    assert compile_options("on") == {} and compile_options("max-autotune") == {"mode": "max-autotune"}
    assert compile_options(False) is None and compile_options("off") is None
    with pytest.raises(FastRetrainError, match="--amp must be on, off, bf16 or fp16; got 'fp8'"):
        TrainConfig(amp="fp8").validate()
    with pytest.raises(FastRetrainError, match="--compile must be off or one of on, reduce-overhead"):
        TrainConfig(compile="fast").validate()
