"""Throughput (issue 14, part 4): training images/s of the fastretrain engine against a minimal hand-written
PyTorch loop on the same model, data, batches and precision, and images/s of each method's extra work, per
input size and device.

Per image size, in `--reps` interleaved repeats (every quantity once per repeat, in one process, so the load of
a shared machine hits all of them alike; the report takes each one's median):
- `engine`: images/s of the second of two SGDM epochs through `fastretrain.Engine` (the first warms up), as its
  metrics.jsonl would report it (training time only; nothing is evaluated here);
- `hand loop`: the same two epochs written out plainly, timing the second: the engine's sampler order,
  augmentation generator and seeding, loss, optimizer, autocast dtype and memory format (as the engine resolves
  them for the device), so both do the same work (tests/test_suite.py checks that after an epoch its weights
  equal the engine's bit for bit);
- each method's extra work on the same N training images, as images/s (images / seconds):
  `ridge head` (mp-refine before epoch 1: a feature pass, then the GCV ridge solve of the head),
  `refinement` (mp-refine after an epoch: a feature pass with the residuals, then the solve),
  `linear-probe cache` (the backbone pass that caches features; the method runs it over the training,
  validation and test images), `kernel-rescale switch` (kernels rescaled up, then the batch-norm statistics
  re-estimated at full size on min(bn_images, N) images: images/s over those).

    OMP_NUM_THREADS=2 python benchmarks/engine_overhead.py               # CPU: 128 and 224 px (see --help)
    python benchmarks/engine_overhead.py --device cuda --max-train 1024  # GPU (benchmarks/gpu_run.sh runs it)

Writes benchmarks/results/throughput/<cpu|gpu>.json and .md (with command, code version and hardware);
`python benchmarks/run.py --render` tabulates them in docs/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DistributedSampler

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fastretrain import TrainConfig, build_engine, create_model, load_data  # noqa: E402
from fastretrain.bench import environment  # noqa: E402
from fastretrain.checkpoint import atomic_json  # noqa: E402
from fastretrain.engine import seed_from  # noqa: E402
from fastretrain.models import normalization  # noqa: E402
from fastretrain.strategies.kernel_rescale import KernelRescale  # noqa: E402
from fastretrain.strategies.linear_probe import LinearProbe  # noqa: E402
from fastretrain.strategies.mp_refine import MPRefine  # noqa: E402

EXTRA = ("ridge head", "refinement", "linear-probe cache", "kernel-rescale switch")  # each method's extra work
QUANTITIES = ("hand loop", "engine") + EXTRA


def config(args, size: int) -> TrainConfig:
    """The run measured: SGDM, constant LR (so both loops step alike), no validation split, nothing saved."""
    return TrainConfig(model=args.model, data=args.data, image_size=size, epochs=2, batch_size=args.batch_size,
                       lr=0.01, schedule="constant", val_fraction=0.0, device=args.device, progress=False, out=None,
                       save_checkpoint=False, save_weights=False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def engine_for(model: nn.Module, data, cfg: TrainConfig, strategies=()):
    """An engine on `data` that evaluates nothing (no validation, no test): only training is run or timed."""
    engine = build_engine(cfg, bundle=data, module=model, strategies=list(strategies))
    engine.val_data = engine.test_data = None
    return engine


def engine_epochs(model: nn.Module, data, cfg: TrainConfig) -> float:
    """Images/s of the engine's last epoch (cfg.epochs of SGDM)."""
    engine = engine_for(model, data, cfg)
    engine.fit()
    return engine.history[-1]["images_per_second"]


def hand_loop(model: nn.Module, data, cfg: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None,
              channels_last: bool, epochs: int | None = None) -> float:
    """cfg.epochs (or `epochs`) of the plainest loop doing the engine's work; images/s of the last epoch.

    The same per-epoch seeding (dropout draws), sampler order, augmentation generator, batch preparation,
    autocast dtype, memory format, loss and optimizer as the engine, nothing else: no hooks, no metrics,
    no finiteness checks.
    """
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    norm = normalization(model)
    model.train()
    rate = 0.0
    for epoch in range(cfg.epochs if epochs is None else epochs):
        torch.manual_seed(seed_from(cfg.seed, epoch, "global"))
        sampler = DistributedSampler(data.train, 1, 0, shuffle=True, seed=cfg.seed)
        sampler.set_epoch(epoch)
        chunks = list(torch.tensor(list(sampler)).split(cfg.batch_size))
        if len(chunks) > 1 and len(chunks[-1]) == 1:  # as the engine: no batch of one (batch norm)
            chunks.pop()
        gen = torch.Generator().manual_seed(seed_from(cfg.seed, epoch, "augment/0"))
        sync(device)
        t, n = time.perf_counter(), 0
        for idx in chunks:
            x, y = data.train.prepare(idx, True, cfg.image_size, norm, gen, device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = loss_fn(model(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(idx)
        sync(device)
        rate = n / (time.perf_counter() - t)
    return rate


def timed(engine, fn) -> float:
    """Wall seconds of fn(), the device synchronised before and after."""
    engine.sync()
    t = time.perf_counter()
    fn()
    engine.sync()
    return time.perf_counter() - t


def extra_work(model: nn.Module, data, cfg: TrainConfig, bn_images: int) -> dict[str, float]:
    """Images/s of each method's extra work on the N training images of `data` (see the module docstring)."""
    n = len(data.train)
    engine = engine_for(copy.deepcopy(model), data, cfg)
    refine = MPRefine(log_before=False)
    out = {"ridge head": n / timed(engine, lambda: refine.fit_head(engine)),
           "refinement": n / timed(engine, lambda: refine.refine(engine))}
    probe = engine_for(copy.deepcopy(model), data, cfg)
    probe.test_data = probe.train_data  # before_fit caches training and test images: here N + N, no validation
    out["linear-probe cache"] = 2 * n / timed(probe, lambda: LinearProbe().before_fit(probe))
    kr = KernelRescale(bn_images=bn_images)
    switching = engine_for(copy.deepcopy(model), data, cfg, [kr])
    kr.before_fit(switching)  # phase 1: kernels down, inputs at half size (what the switch undoes)
    out["kernel-rescale switch"] = min(bn_images, n) / timed(switching, lambda: kr.switch(switching))
    return out


def measure(args, size: int) -> dict:
    """Every quantity `args.reps` times, interleaved; per-repeat images/s and their medians."""
    cfg = config(args, size)
    data = load_data(cfg.data, size, max_train=args.max_train, split_seed=cfg.split_seed)
    torch.manual_seed(0)
    base = create_model(cfg.model, data.num_classes, pretrained=cfg.use_pretrained())
    probe = engine_for(copy.deepcopy(base), data, cfg)  # how the engine resolves precision and layout here
    amp_dtype, channels_last, device = probe.amp_dtype, probe.channels_last, probe.device
    del probe
    runs: dict[str, list[float]] = {q: [] for q in QUANTITIES}
    for rep in range(args.reps):
        runs["hand loop"].append(hand_loop(copy.deepcopy(base), data, cfg, device, amp_dtype, channels_last))
        runs["engine"].append(engine_epochs(copy.deepcopy(base), data, cfg))
        for k, v in extra_work(base, data, cfg, args.bn_images).items():
            runs[k].append(v)
        print(f"{size} px, repeat {rep + 1}/{args.reps}: " + ", ".join(f"{q} {runs[q][-1]:.1f}" for q in QUANTITIES)
              + " img/s", flush=True)
    medians = {q: statistics.median(v) for q, v in runs.items()}
    return {"image_size": size, "train_images": len(data.train), "device": str(device),
            "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "float32", "channels_last": channels_last,
            "pretrained": cfg.use_pretrained(), "images_per_second": runs, "median": medians,
            "engine_over_hand_loop": medians["engine"] / medians["hand loop"]}


def markdown(res: dict) -> str:
    env = res["environment"]
    where = f"GPU {env['gpu']}" if env.get("gpu") else f"{env.get('cpu_count')} CPU cores"
    c = res["config"]
    lines = [f"# Throughput: {c['model']} on {c['data']}, batch {c['batch_size']}, {where}\n",
             f"Command: `{env['command']}`  ", f"Code: {env['commit']}, torch {env['torch']}, {env['torch_threads']} "
             f"torch threads; {c['reps']} interleaved repeats, medians (images/s).\n",
             "| px | train images | precision | hand loop | engine | engine / hand loop | "
             + " | ".join(EXTRA) + " |", "|" + "---|" * (6 + len(EXTRA))]
    for s in res["sizes"]:
        m = s["median"]
        prec = f"{s['amp']}{', channels-last' if s['channels_last'] else ''}"
        lines.append(f"| {s['image_size']} | {s['train_images']} | {prec} | {m['hand loop']:.1f} | {m['engine']:.1f} | "
                     f"{s['engine_over_hand_loop']:.3f} | " + " | ".join(f"{m[k]:.1f}" for k in EXTRA) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--data", default="flowers5", help="dataset name or path (default: Flowers-5 photos)")
    ap.add_argument("--model", default="tf_efficientnet_lite0", help="pretrained when its weights are here")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--max-train", type=int, default=96, help="training images N (stratified; GPU: e.g. 1024)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--bn-images", type=int, default=256, help="kernel-rescale's batch-norm images at the switch")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", help="result file (default benchmarks/results/throughput/<cpu|gpu>.json)")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else ROOT / "benchmarks/results/throughput" / (
        "gpu.json" if args.device.startswith("cuda") else "cpu.json")
    res = {"config": {"model": args.model, "data": args.data, "batch_size": args.batch_size,
                      "max_train": args.max_train, "bn_images": args.bn_images, "reps": args.reps},
           "environment": environment(), "sizes": [measure(args, s) for s in args.image_sizes]}
    atomic_json(res, out)
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
