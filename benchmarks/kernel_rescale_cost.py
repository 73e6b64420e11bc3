"""Kernel rescaling: load-independent cost of a phase-1 training step relative to a full-resolution one.

Times training steps (batch preparation from the stored images + forward + backward + SGD step) at full
resolution and at image_size/2 with the large kernels downscaled, alternating A, B, A, B, ... in one
process so the load of a shared machine hits both alike; reports the median ratio. The saving of a run
with a fraction f of its epochs in phase 1 is then about f·(1 − ratio), less the switch (BN re-estimation).

    OMP_NUM_THREADS=1 python benchmarks/kernel_rescale_cost.py
"""
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fastretrain import create_model, load_data  # noqa: E402
from fastretrain.bench import environment  # noqa: E402
from fastretrain.kernels import downscale_kernels  # noqa: E402
from fastretrain.models import normalization  # noqa: E402

CASES = [  # model, pretrained, data, image size, batch size, max_train
    ("tiny-resnet", False, "cifar10-subset", 32, 64, None),
    ("tf_efficientnet_lite0", True, "fashion-mnist", 64, 32, None),
]


def steps_seconds(model, data, size, bs, n, g) -> float:
    norm = normalization(model)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    t = time.perf_counter()
    for _ in range(n):
        idx = torch.randint(0, len(data.train), (bs,), generator=g)
        x, y = data.train.prepare(idx, True, size, norm, g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t) / n


def main(reps: int = 5, n: int = 8) -> None:
    out = {"environment": environment(), "reps": reps, "steps_per_rep": n, "cases": []}
    for name, pretrained, dname, size, bs, _ in CASES:
        data = load_data(dname, size)
        full = create_model(name, data.num_classes, pretrained=pretrained)
        low = create_model(name, data.num_classes, pretrained=pretrained)
        n_rescaled = len(downscale_kernels(low, 2.0))
        g = torch.Generator().manual_seed(0)
        steps_seconds(full, data, size, bs, 2, g), steps_seconds(low, data, size // 2, bs, 2, g)  # warm-up
        tf, tl = [], []
        for _ in range(reps):
            tf.append(steps_seconds(full, data, size, bs, n, g))
            tl.append(steps_seconds(low, data, size // 2, bs, n, g))
        ratios = [b / a for a, b in zip(tf, tl)]
        case = {"model": name, "pretrained": pretrained, "data": dname, "image_size": size, "batch_size": bs,
                "rescaled_convs": n_rescaled, "full_step_s": tf, "low_step_s": tl, "ratio_median": statistics.median(ratios),
                "ratios": ratios}  # fmt: skip
        out["cases"].append(case)
        print(f"{name} {size}->{size // 2} px: step {statistics.median(tf) * 1000:.0f} ms -> {statistics.median(tl) * 1000:.0f} ms, "
              f"ratio {case['ratio_median']:.2f} (per rep {', '.join(f'{r:.2f}' for r in ratios)})", flush=True)  # fmt: skip
    path = ROOT / "benchmarks/results/kernel_rescale/step_cost.json"
    path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
