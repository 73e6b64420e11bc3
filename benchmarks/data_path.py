"""The data path at photo-collection scale (issue 16): peak memory, cache-writer throughput, loader vs training step.

Synthetic photos: JPEGs (quality 90) with a 256 px short side in three shapes, 256x256, 341x256 and 256x341
(landscape and portrait 4:3), smooth colour patterns plus noise, in 10 class folders.

    python benchmarks/data_path.py make --n 1000 8000          # the folders, under --root
    python benchmarks/data_path.py rss --n 1000 8000           # peak RSS of a 1-epoch run (cold and warm cache)
    python benchmarks/data_path.py decode --n 8000             # cache writer images/s, 1 and 2 decoder processes
    python benchmarks/data_path.py loader --n 1000             # loader images/s vs training-step images/s

`rss` runs `fastretrain train` (tiny-cnn, 224 px, batch 32, 1 epoch, validation 10 %, test 20 %) in a fresh
process per measurement and reports that process's peak resident set (ru_maxrss) and the largest of its decoder
processes; "cold" builds the cache entry, "warm" reuses it. `loader` alternates loader and step measurements so
that load on the shared machine hits both alike, and reports medians. Results go to --out (JSON), with the
command, commit and hardware.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = ((256, 256), (341, 256), (256, 341))  # (width, height)


def make(root: Path, n: int, classes: int = 10) -> Path:
    """A folder of `n` synthetic JPEG photos in `classes` class folders (kept when already complete)."""
    from PIL import Image

    folder = root / f"photos{n}"
    done = folder / ".complete"
    if done.is_file():
        return folder
    rng = np.random.default_rng(n)
    for i in range(n):
        w, h = SHAPES[i % len(SHAPES)]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a = rng.uniform(0.5, 3, 3)
        img = np.stack([127 + 100 * np.sin(a[c] * (xx / w * 4 + yy / h * 3) + c + i) for c in range(3)], -1)
        img += rng.normal(0, 12, img.shape)
        path = folder / f"c{i % classes}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    done.write_text("")
    return folder


RUN = """
import json, resource, sys, time
t = time.perf_counter()
from fastretrain.cli import main
rc = main(sys.argv[1:])
print("RESULT " + json.dumps({"rc": rc, "seconds": time.perf_counter() - t,
      "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "children_maxrss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def rss(folder: Path, cache: Path, out: Path) -> dict:
    env = {**os.environ, "FASTRETRAIN_CACHE": str(cache), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    args = ["train", "--data", str(folder), "--model", "tiny-cnn", "--image-size", "224", "--epochs", "1",
            "--batch-size", "32", "--device", "cpu", "--no-progress", "--out", str(out), "--no-save-checkpoint"]
    p = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, env=env, check=False)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"run failed:\n{p.stdout}\n{p.stderr}")
    res = json.loads(line[7:])
    summary = json.loads((out / "summary.json").read_text())
    res.update(train_images=summary["train_images"], images_per_second=summary["images_per_second"])
    return res


def cmd_rss(args) -> dict:
    results = {}
    for n in args.n:
        folder = make(args.root, n)
        with tempfile.TemporaryDirectory(dir=args.root) as tmp:
            cache = Path(tmp) / "cache"
            cold = rss(folder, cache, Path(tmp) / "run-cold")
            warm = rss(folder, cache, Path(tmp) / "run-warm")
            entry = sum(f.stat().st_size for f in cache.glob("*.u8"))
        results[n] = {"cold": cold, "warm": warm, "cache_entry_mb": entry / 2**20}
        print(f"{n} photos: cache entry {entry / 2**20:.0f} MB; peak RSS cold {cold['maxrss_mb']:.0f} MB "
              f"(decoder processes {cold['children_maxrss_mb']:.0f} MB), warm {warm['maxrss_mb']:.0f} MB; "
              f"{cold['seconds']:.0f} s / {warm['seconds']:.0f} s", flush=True)
    a, b = min(args.n), max(args.n)
    for kind in ("cold", "warm"):
        d = results[b][kind]["maxrss_mb"] - results[a][kind]["maxrss_mb"]
        print(f"peak RSS {b} - {a} photos ({kind} cache): {d:+.0f} MB")
    return results


def cmd_decode(args) -> dict:
    from fastretrain.cache import Source, cached_decode
    from fastretrain.sources import _Files

    results = {}
    for n in args.n:
        files = _Files(make(args.root, n))
        names = [x for x in files.names if x.endswith(".jpg")]
        for procs in args.processes:
            with tempfile.TemporaryDirectory(dir=args.root) as tmp:
                t = time.perf_counter()
                d = cached_decode(Source(str(files.path)), names, 256, tmp, processes=procs)
                sec = time.perf_counter() - t
            results[f"{n}/{procs}"] = {"images": len(names), "processes": procs, "seconds": sec,
                                       "images_per_second": len(names) / sec, "decoded": d.decoded}  # fmt: skip
            how = f"{procs} decoder processes" if procs > 1 else "threads in one process"
            print(f"{n} photos, {how}: {len(names) / sec:.0f} images/s ({sec:.1f} s)", flush=True)
    return results


def cmd_loader(args) -> dict:
    import torch

    from fastretrain import create_model, load_data
    from fastretrain import data as data_mod
    from fastretrain.models import normalization

    device = torch.device(args.device)
    folder = make(args.root, args.n[0])
    with tempfile.TemporaryDirectory(dir=args.root) as tmp:
        limit = data_mod.IN_MEMORY_BYTES
        data_mod.IN_MEMORY_BYTES = 0  # the disk-backed path, whatever the entry's size
        disk = load_data(str(folder), 224, cache_dir=tmp).train
        data_mod.IN_MEMORY_BYTES = 1 << 62
        ram = load_data(str(folder), 224, cache_dir=tmp).train
        data_mod.IN_MEMORY_BYTES = limit
        results = {"device": str(device), "train_images": len(disk)}
        for model_name in args.models:
            model = create_model(model_name, 10).to(device).train()
            norm = normalization(model)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            g = torch.Generator().manual_seed(0)
            order = torch.randperm(len(disk), generator=g)
            batches = order[: (len(order) // 32) * 32].split(32)[: args.batches]
            x0, y0 = disk.prepare(batches[0], True, 224, norm, g, device)
            amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

            def sync():
                if device.type == "cuda":
                    torch.cuda.synchronize()

            def loader(images):
                sync()
                t = time.perf_counter()
                if hasattr(images, "read_ahead"):
                    images.read_ahead(batches)
                for b in batches:
                    images.prepare(b, True, 224, norm, g, device)
                sync()
                return len(batches) * 32 / (time.perf_counter() - t)

            def step():
                sync()
                t = time.perf_counter()
                for _ in batches:
                    with amp:
                        loss = torch.nn.functional.cross_entropy(model(x0).float(), y0)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                sync()
                return len(batches) * 32 / (time.perf_counter() - t)

            step()  # warm-up (allocator, cudnn autotune)
            runs = {"loader_disk": [], "loader_ram": [], "step": []}
            for _ in range(args.reps):
                runs["loader_disk"].append(loader(disk))
                runs["loader_ram"].append(loader(ram))
                runs["step"].append(step())
            med = {k: statistics.median(v) for k, v in runs.items()}
            results[model_name] = {"runs": runs, "median": med, "disk_over_step": med["loader_disk"] / med["step"],
                                   "disk_over_ram": med["loader_disk"] / med["loader_ram"]}  # fmt: skip
            ratio = med["loader_disk"] / med["step"]
            print(f"{model_name} on {device}: loader {med['loader_disk']:.0f} img/s from disk, {med['loader_ram']:.0f} "
                  f"from RAM; training step {med['step']:.0f} img/s; loader/step {ratio:.2f}", flush=True)
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["make", "rss", "decode", "loader"])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 8000], help="folder sizes (photos)")
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "fastretrain-data-path")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="decode: decoder processes")
    ap.add_argument("--models", nargs="+", default=["tiny-cnn", "mobilenetv3_small_050"], help="loader: models")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, default=20, help="loader: batches of 32 per measurement")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", type=Path, help="JSON results (default: benchmarks/results/data_path/WHAT.json)")
    args = ap.parse_args()
    args.root.mkdir(parents=True, exist_ok=True)
    if args.what == "make":
        for n in args.n:
            print(make(args.root, n))
        return
    res = {"rss": cmd_rss, "decode": cmd_decode, "loader": cmd_loader}[args.what](args)
    from fastretrain.bench import environment

    out = args.out or Path(__file__).parent / "results" / "data_path" / f"{args.what}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    env = environment()
    env["note"] = "2-core CPU shared with other jobs during the run" if env.get("gpu") is None else ""
    out.write_text(json.dumps({"results": res, "environment": env}, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
