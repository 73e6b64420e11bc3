"""Engine overhead: training images/s of the fastretrain engine vs a minimal hand-written PyTorch loop.

Same model (ImageNet-pretrained EfficientNet-Lite0), same data (bundled Fashion-MNIST 2k), same batch
size, same batch preparation (crop/flip/normalise) and optimizer; the two alternate A, B, A, B, ... in
one process so machine noise hits both alike. Reports the median of each and their ratio.

    python benchmarks/engine_overhead.py [--image-size 32] [--reps 3] [--max-train N]
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fastretrain import TrainConfig, build_engine, create_model, load_data  # noqa: E402
from fastretrain.bench import environment  # noqa: E402
from fastretrain.models import normalization  # noqa: E402


def hand_loop(model, data, cfg) -> float:
    """One epoch of the plainest loop with the same work per batch; returns images/s."""
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    norm = normalization(model)
    g = torch.Generator().manual_seed(0)
    model.train()
    perm = torch.randperm(len(data.train), generator=g)
    t = time.perf_counter()
    n = 0
    for idx in perm.split(cfg.batch_size):
        x, y = data.train.prepare(idx, True, cfg.image_size, norm, g)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n += len(idx)
    return n / (time.perf_counter() - t)


def engine_epoch(model, data, cfg) -> float:
    engine = build_engine(cfg, data, model)
    engine.fit()
    return engine.history[-1]["images_per_second"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-train", type=int, default=None, help="use this many training images (stratified)")
    ap.add_argument("--out", default="benchmarks/results/engine_overhead.json")
    args = ap.parse_args()
    cfg = TrainConfig(model="tf_efficientnet_lite0", pretrained=True, data="fashion-mnist", epochs=1, image_size=args.image_size,
                      batch_size=32, lr=0.01, device="cpu", progress=False, out=None, save_checkpoint=False)  # fmt: skip
    data = load_data(cfg.data, cfg.image_size, max_train=args.max_train)
    hand, eng = [], []
    for rep in range(args.reps):
        torch.manual_seed(rep)
        hand.append(hand_loop(create_model(cfg.model, 10, pretrained=True), data, cfg))
        torch.manual_seed(rep)
        eng.append(engine_epoch(create_model(cfg.model, 10, pretrained=True), data, cfg))
        print(f"rep {rep}: hand loop {hand[-1]:.1f} img/s, engine {eng[-1]:.1f} img/s", flush=True)
    res = {"hand_loop_images_per_second": hand, "engine_images_per_second": eng,
           "median_hand": statistics.median(hand), "median_engine": statistics.median(eng),
           "ratio_engine_over_hand": statistics.median(eng) / statistics.median(hand),
           "config": {"model": cfg.model, "data": cfg.data, "image_size": cfg.image_size, "batch_size": cfg.batch_size,
                      "train_images": len(data.train), "reps": args.reps},
           "environment": environment()}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"engine / hand loop = {res['ratio_engine_over_hand']:.3f}  (medians {res['median_engine']:.1f} / {res['median_hand']:.1f} img/s)")


if __name__ == "__main__":
    main()
