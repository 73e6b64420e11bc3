"""How noisy is suite v3's same-work control by itself? (issue 22, item 3: timing that resolves ratios)

Suite v3 times `evidence.control_work` before and after every cell; the spread of those timings over a comparison
is the noise a time ratio must beat. This script, run on a quiet machine (no cell, no test beside it), separates
the control's own repeatability from the machine's drift between cells:
  1. the control (0.13-0.25 s of float32 matrix products) timed N times back to back;
  2. a longer control (the same work x 10) timed N times back to back;
  3. a training-like control: `steps` SGD steps of timm's EfficientNet-Lite0 (random init, no download) on a fixed
     random batch at 64 px, timed N times back to back (what the cells actually do).
For each: min, median, max and max/min. A spread near 1 here and wide across a comparison's cells means the
machine's speed moved between cells; a wide spread here means the control itself cannot resolve ratios.

Usage: python benchmarks/control_noise.py [--repeats 12] [--steps 5]   (about 2 minutes on 2 cores)
Writes benchmarks/results/control_noise.json (with the environment) and prints a table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fastretrain import evidence as ev  # noqa: E402
from fastretrain.bench import environment  # noqa: E402
from fastretrain.checkpoint import atomic_json  # noqa: E402

OUT = HERE / "results" / "control_noise.json"


def train_steps(steps: int, size: int = 64, batch: int = 32):
    """A callable timing `steps` SGD steps of Lite0 on one fixed batch (seconds)."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def run() -> float:
        t = time.perf_counter()
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
        return time.perf_counter() - t

    run()  # warm-up: the first steps allocate and start the thread pool
    return run


def summary(times: list[float]) -> dict:
    return {"n": len(times), "min": min(times), "median": statistics.median(times), "max": max(times),
            "spread": max(times) / min(times), "times": times}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args(argv)
    steps = train_steps(args.steps)
    probes = {"control (suite v3's)": lambda: ev.control_work(),
              "control x 10": lambda: sum(ev.control_work() for _ in range(10)),
              f"Lite0 {args.steps} SGD steps, 64 px, batch 32": steps}
    rows = {name: summary([fn() for _ in range(args.repeats)]) for name, fn in probes.items()}
    atomic_json({"environment": environment(), "repeats": args.repeats, "rows": rows}, OUT)
    print(f"{'work':<40} {'min s':>8} {'median s':>9} {'max s':>8} {'max/min':>8}")
    for name, r in rows.items():
        print(f"{name:<40} {r['min']:8.3f} {r['median']:9.3f} {r['max']:8.3f} {r['spread']:8.2f}x")
    print(f"written {OUT}")


if __name__ == "__main__":
    main()
