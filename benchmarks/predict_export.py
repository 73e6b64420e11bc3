"""Predict throughput and export parity of a real fine-tuned model (issue 15's closing numbers).

A Lite0 run at 224 px on Flowers-5 (shipped ImageNet weights, linear probe on 300 training images: a head trained
on real features, so the logits are a real model's), then:
- `fastretrain predict`'s path (`predict_files`: JPEG decoding in threads one batch ahead, batch 64) over a labelled
  folder of 640 Flowers-5 photos (128 per class), end to end, and its two halves alone: decoding only, model only;
- ONNX (onnxruntime) and TorchScript export, with the largest |logit difference| against PyTorch fp32 on the run's 8
  kept test images and on 64 of the 640 photos.
Writes benchmarks/results/predict_export.json with the command, code version and hardware.

    python benchmarks/predict_export.py [--data-root ../shared/data] [--reps 3] [--work DIR]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fastretrain as fr  # noqa: E402
from fastretrain.bench import environment  # noqa: E402
from fastretrain.data import DATASETS  # noqa: E402
from fastretrain.export import export_run  # noqa: E402
from fastretrain.predict import decoded_batches, find_images, predict_files  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "predict_export.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions (median reported)")
    ap.add_argument("--work", help="folder of an earlier invocation: reuse its run instead of training again")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    env = environment()
    work = Path(args.work or tempfile.mkdtemp(prefix="predict-export-"))
    print(f"working in {work}")
    cfg = fr.make_config(data="flowers5", data_root=args.data_root, image_size=224, method="linear-probe", epochs=3,
                         max_train=300, batch_size=32, device="cpu", progress=False, out=str(work / "run"))  # fmt: skip
    t = time.perf_counter()
    summary = fr.train(cfg) if not (work / "run" / "summary.json").is_file() else None
    train_s = time.perf_counter() - t if summary else None
    summary = summary or json.loads((work / "run" / "summary.json").read_text())
    photos = work / "photos"  # a labelled folder of 128 photos per class (links to the dataset's files)
    flowers = DATASETS["flowers5"](args.data_root)
    for cls in sorted(p.name for p in flowers.iterdir() if p.is_dir()):
        (photos / cls).mkdir(parents=True, exist_ok=True)
        for f in sorted((flowers / cls).glob("*.jpg"))[:128]:
            if not (photos / cls / f.name).exists():
                (photos / cls / f.name).symlink_to(f)
    model = fr.load_model(work / "run")
    sources, _ = find_images([photos], model.classes)
    end_to_end, decode_only, model_only, accuracy = [], [], [], None
    for _ in range(args.reps):
        res = predict_files(model, [photos], args.batch_size)
        end_to_end.append(len(res.names) / res.seconds)
        accuracy = res.accuracy()
        t = time.perf_counter()
        batches = [x for _, x, _ in decoded_batches(sources, model.store_size, args.batch_size)]
        decode_only.append(len(sources) / (time.perf_counter() - t))
        t = time.perf_counter()
        for x in batches:
            model.logits_uint8(x)
        model_only.append(len(sources) / (time.perf_counter() - t))
    parity = {}
    for fmt in ("onnx", "torchscript"):
        kept = export_run(work / "run", fmt, work / f"m.{fmt}")
        photos64 = export_run(work / "run", fmt, work / f"m64.{fmt}", images=[photos])
        parity[fmt] = {"kept_test_images": kept["per_batch"], "photos_64": photos64["per_batch"],
                       "bytes": kept["bytes"], "info": kept["info"]}  # fmt: skip
    result = {
        "environment": env, "config": cfg.to_dict(), "train_seconds": train_s, "test_acc": summary["test_acc"],
        "predict": {"images": len(sources), "batch_size": args.batch_size, "reps": args.reps, "accuracy": accuracy,
                    "images_per_second": statistics.median(end_to_end), "all_reps": end_to_end,
                    "decode_only_images_per_second": statistics.median(decode_only),
                    "model_only_images_per_second": statistics.median(model_only)},
        "export_max_abs_logit_diff": parity,
    }  # fmt: skip
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("predict", "export_max_abs_logit_diff")}, indent=2))


if __name__ == "__main__":
    main()
