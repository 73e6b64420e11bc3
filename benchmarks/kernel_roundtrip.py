"""Kernel rescaling on a pretrained depthwise network (issue 26, item 2): what the 5x5 -> 3x3 -> 5x5 round trip
alone does to pretrained ImageNet tf_efficientnet_lite0, with no training.

Phase 1 of `kernel-rescale` resamples every kernel of side >= 5 down (area, s = 2) and the switch resamples it back
up (bilinear, gain preserved). On a pretrained network that round trip replaces each pretrained kernel by a
smoothed copy before any step is taken. This measures, per rescaled conv, the relative change of its weights
||W' - W|| / ||W|| (float64), and on held-out Flowers-5 photos at full resolution (no low-resolution phase at all)
how often the round-tripped network's ImageNet top-1 class differs from the original's and the cosine similarity
of their pooled features. A large change here is a cost the method pays on a pretrained depthwise network before
the low resolution itself costs anything.

    python benchmarks/kernel_roundtrip.py [--images 64] [--size 128]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fastretrain import create_model, load_data  # noqa: E402
from fastretrain.bench import environment  # noqa: E402
from fastretrain.checkpoint import atomic_json  # noqa: E402
from fastretrain.kernels import downscale_kernels, upscale_kernels  # noqa: E402
from fastretrain.models import normalization  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "kernel_rescale" / "roundtrip.json"


def round_trip(model: torch.nn.Module, scale: float = 2.0, min_kernel: int = 5) -> tuple[torch.nn.Module, dict]:
    """A copy of `model` whose large kernels went down and back up as in `kernel-rescale`, and per rescaled conv
    the relative change of its weight (float64)."""
    twin = copy.deepcopy(model)
    geometry = downscale_kernels(twin, scale, min_kernel)
    upscale_kernels(twin, geometry, scale)
    before, after = dict(model.named_modules()), dict(twin.named_modules())
    change = {}
    for name in geometry:
        w, w2 = before[name].weight.detach().double(), after[name].weight.detach().double()
        change[name] = float((w2 - w).norm() / w.norm())
    return twin, change


@torch.no_grad()
def agreement(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> dict:
    """Top-1 agreement of two classifiers and the cosine similarity of their pooled features on `x` (B, 3, H, W)."""
    out = []
    for net in (a, b):
        net.eval()
        feats = net.forward_features(x)
        out.append((net.forward_head(feats, pre_logits=True), net.forward_head(feats).argmax(1)))
    (fa, ya), (fb, yb) = out
    same = ya == yb
    cos = torch.nn.functional.cosine_similarity(fa, fb, dim=1)
    return {"top1_agreement": float(same.float().mean()), "feature_cosine_median": float(cos.median()),
            "feature_cosine_min": float(cos.min())}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64, help="held-out Flowers-5 photos scored")
    ap.add_argument("--size", type=int, default=128, help="input size (Flowers-5's photos: 128 px short side)")
    args = ap.parse_args(argv)
    model = create_model("tf_efficientnet_lite0", 1000, pretrained=True)  # 1000 classes: the ImageNet head kept
    twin, change = round_trip(model)
    data = load_data("flowers5", args.size, max_train=200)  # the fixed held-out photos; few training images
    g = torch.Generator().manual_seed(0)
    idx = torch.arange(min(args.images, len(data.test)))
    x, _ = data.test.prepare(idx, False, args.size, normalization(model), g)  # eval preprocessing
    result = {"environment": environment(), "model": "tf_efficientnet_lite0 (ImageNet)", "scale": 2.0,
              "rescaled_convs": len(change), "relative_change": change,
              "relative_change_median": statistics.median(change.values()), "images": len(idx), "size": args.size,
              **agreement(model, twin, x)}
    atomic_json(result, OUT)
    print(json.dumps({k: v for k, v in result.items() if k not in ("environment", "relative_change")}, indent=1))
    print("per conv:", ", ".join(f"{k} {v:.3f}" for k, v in change.items()))


if __name__ == "__main__":
    main()
