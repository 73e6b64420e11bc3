"""Precision and memory layout check (issue 14, part 2): training images/s of Lite0 at 224 px through the engine in
float32 and in bfloat16 autocast (`--amp`), each with channels-last on and off (`--channels-last`).

Each of the four settings trains two SGDM epochs on the same N images (the first warms up: cuDNN algorithm
choice, allocator); the second epoch's images/s is recorded, as the engine's metrics report it. The settings
alternate within each of `--reps` repeats, and the report takes medians, each against float32 with
contiguous (NCHW) tensors. On CUDA the peak memory of each run is recorded too. float32 convolutions on Ampere
and later may use TF32 (PyTorch's default for cuDNN); the flags in force are recorded.

    python benchmarks/gpu_precision.py --device cuda        # benchmarks/gpu_run.sh runs it first
    python benchmarks/gpu_precision.py --device cpu --model tiny-cnn --data fashion-mnist --image-size 16 \\
        --max-train 40 --out /tmp/p.json                      # the pipeline on CPU (numbers meaningless)

Writes benchmarks/results/throughput/gpu-precision.json and .md (command, code version, hardware).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from engine_overhead import engine_for  # noqa: E402

from fastretrain import TrainConfig, create_model, load_data  # noqa: E402
from fastretrain.bench import environment  # noqa: E402
from fastretrain.checkpoint import atomic_json  # noqa: E402

# label -> (amp, channels_last): the engine's own options
SETTINGS = {"float32": ("off", False), "float32, channels-last": ("off", True),
            "bf16 autocast": ("bf16", False), "bf16 autocast, channels-last": ("bf16", True)}
REFERENCE = "float32"


def config(args, amp: str, channels_last: bool) -> TrainConfig:
    return TrainConfig(model=args.model, data=args.data, image_size=args.image_size, epochs=2,
                       batch_size=args.batch_size, lr=0.01, schedule="constant", val_fraction=0.0,
                       device=args.device, amp=amp, channels_last=channels_last, progress=False, out=None,
                       save_checkpoint=False, save_weights=False)


def run_setting(base, data, cfg: TrainConfig) -> tuple[float, float | None, dict]:
    """(images/s of the second epoch, peak GPU memory in GiB or None, what the engine resolved)."""
    engine = engine_for(copy.deepcopy(base), data, cfg)
    cuda = engine.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(engine.device)
    engine.fit()
    peak = torch.cuda.max_memory_allocated(engine.device) / 2**30 if cuda else None
    conv = next(m for m in engine.model.modules() if isinstance(m, torch.nn.Conv2d))
    resolved = {"autocast": str(engine.amp_dtype).replace("torch.", "") if engine.amp_dtype else None,
                "channels_last": conv.weight.is_contiguous(memory_format=torch.channels_last)
                and not conv.weight.is_contiguous()}
    return engine.history[-1]["images_per_second"], peak, resolved


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--data", default="flowers5")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-train", type=int, default=512, help="training images per epoch")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/throughput/gpu-precision.json"))
    args = ap.parse_args(argv)
    data = load_data(args.data, args.image_size, max_train=args.max_train)
    probe = config(args, "off", False)
    torch.manual_seed(0)
    base = create_model(args.model, data.num_classes, pretrained=probe.use_pretrained())
    runs = {k: [] for k in SETTINGS}
    peaks, resolved = {}, {}
    for rep in range(args.reps):
        for label, (amp, cl) in SETTINGS.items():
            rate, peak, resolved[label] = run_setting(base, data, config(args, amp, cl))
            runs[label].append(rate)
            peaks[label] = peak if peak is None else max(peak, peaks.get(label) or 0.0)
        print(f"repeat {rep + 1}/{args.reps}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in runs.items()) + " img/s",
              flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    flags = {"cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
             "cuda.matmul.allow_tf32": torch.backends.cuda.matmul.allow_tf32}
    res = {"config": {"model": args.model, "data": args.data, "image_size": args.image_size,
                      "batch_size": args.batch_size, "train_images": len(data.train), "reps": args.reps,
                      "pretrained": probe.use_pretrained()},
           "environment": environment(), "tf32": flags, "images_per_second": runs, "median": med,
           "relative_to_float32": {k: v / med[REFERENCE] for k, v in med.items()}, "peak_memory_gib": peaks,
           "resolved": resolved}
    out = Path(args.out)
    atomic_json(res, out)
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return res


def markdown(res: dict) -> str:
    env, c = res["environment"], res["config"]
    where = f"GPU {env['gpu']}" if env.get("gpu") else f"{env.get('cpu_count')} CPU cores"
    title = f"# Precision and memory layout: {c['model']} at {c['image_size']} px, batch {c['batch_size']}, {where}\n"
    lines = [title,
             f"Command: `{env['command']}`  ", f"Code: {env['commit']}, torch {env['torch']}; {c['reps']} "
             f"interleaved repeats of two epochs on {c['train_images']} images (the second timed); TF32 flags "
             f"{res['tf32']}.\n", "| setting | images/s (median) | vs float32 | peak memory (GiB) |",
             "|---|---|---|---|"]
    for k, v in res["median"].items():
        peak = res["peak_memory_gib"].get(k)
        lines.append(f"| {k} | {v:.1f} | {res['relative_to_float32'][k]:.2f}× | "
                     f"{'—' if peak is None else f'{peak:.2f}'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
