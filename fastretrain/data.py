"""Data: image folders (plain or zipped), CSV/TSV file lists, in-memory arrays, and the bundled real datasets by name.

Splits (the comparison protocol, docs/BENCHMARKS.md): data that ships a test split keeps it; data without
one (a folder of class folders, a `train/` folder alone) has `test_fraction` of each class held out as
test, drawn with `split_seed`, never with the run's `--seed`, so every method and seed of a comparison is
scored on the same images (`DataBundle.test_set_id` names them). `max_train` subsets the training images
with `split_seed` too, and `val_fraction` of each class of what remains becomes the validation split
(again drawn from `split_seed`), which is what every choice during training reads.

Every file source (folder, zip, CSV) is decoded once into a uint8 canvas (cache.py): EXIF orientation applied,
short side resized to S = image_size/0.875, aspect ratio kept up to cache.MAX_ASPECT, portrait images stored
transposed, each image's upright size in `hw`. The decoded images are cached on disk (`cache_dir`, default
~/.cache/fastretrain) and reused by later runs. Arrays are resized in memory the same way (ImageTensors).
Augmentation then runs on whole batches of tensors on the model's device (transforms.py).

Class imbalance: `class_weights` (loss weights) and `balanced_indices` (class-balanced sampling) serve the
engine's `--balance`; `class_count_lines` is what a run prints at its start.

Where each part lives (every name below stays importable from here): this module, the named datasets and
`load_data`; bundle.py, the image sets, `DataBundle`, `from_arrays` and the splits; sources.py, folders, zips, CSV
lists and the odd-file checks; transforms.py, the batch transforms, resizes and `decode_image`.
"""
from __future__ import annotations

import gzip
import os
import warnings
from pathlib import Path

import numpy as np

# the package's data API, importable from here as before; each name lives in the module of its concern
from .bundle import (DataBundle, DiskImages, FeatureTensors, ImageTensors, SplitFiles, balanced_indices,  # noqa: F401
                     carve_validation, class_count_lines, class_weights, digest, from_arrays, stratified_split,
                     subset_train)  # fmt: skip
from .errors import FastRetrainError, FastRetrainWarning, unknown_name
from .sources import (IMAGE_EXTS, decoded_images, default_cache_dir, from_csv, from_folder,  # noqa: F401
                      odd_file_warnings)  # fmt: skip
from .transforms import (CROP_PCT, decode_image, prepare_images, resize_short, resize_square,  # noqa: F401
                         square_crops, store_size)  # fmt: skip

PACKAGE_DATA = Path(__file__).parent / "datasets"


# --------------------------------------------------------------------------------------------------
# named datasets

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


def data_roots(data_root: str | None = None) -> list[Path]:
    """Where named datasets are looked for, in order."""
    roots = [data_root, os.environ.get("FASTRETRAIN_DATA")]
    repo = Path(__file__).resolve().parent.parent
    roots += [str(repo / "gpu_data"), str(repo.parent / "shared" / "data"), "../shared/data"]
    return [Path(r) for r in roots if r]


def _find(rel: str, data_root: str | None) -> Path:
    for root in data_roots(data_root):
        if (root / rel).exists():
            return root / rel
    where = ", ".join(str(r) for r in data_roots(data_root))
    raise FastRetrainError(f"dataset file {rel} not found in: {where} (set --data-root or FASTRETRAIN_DATA)")


def _npz(path: Path, image_size: int, name: str, classes=None) -> DataBundle:
    """An .npz with arrays x_train, y_train, x_test, y_test."""
    with np.load(path) as z:
        return from_arrays(z["x_train"], z["y_train"], z["x_test"], z["y_test"], image_size, classes, name)


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _fashion_full(root) -> Path:
    d = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
    if not d.is_dir():
        raise FastRetrainError(f"{d} not found: apt-get install dataset-fashion-mnist")
    return d


def _idx_bundle(d: Path, image_size: int) -> DataBundle:
    parts = ("train-images", "train-labels", "t10k-images", "t10k-labels")
    f = {k: _idx(d / f"{k}-idx{3 if 'images' in k else 1}-ubyte.gz") for k in parts}
    return from_arrays(*(f[k] for k in parts), image_size, FASHION_CLASSES)


# name -> where its files are (given --data-root); see ../shared/data/README.md
DATASETS = {
    "fashion-mnist": lambda root: PACKAGE_DATA / "fashion_mnist_2k.npz",  # shipped: 2,000 train / 1,000 test
    "fashion-mnist-5k": lambda root: _find("fashion_mnist_train5k_test1k.npz", root),  # 5,000 / 1,000
    "fashion-mnist-full": _fashion_full,  # 60,000 / 10,000 (Debian's dataset-fashion-mnist)
    "flowers5": lambda root: _find("flowers5", root),  # 4,317 photos, 5 classes, no split: test_fraction applies
    "cifar10-subset": lambda root: _find("cifar10_jpeg.zip", root),  # 15,000 / 3,000, zipped JPEG folders
}


def load_data(
    spec: str,
    image_size: int,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    skip_bad: bool = False,
    data_root: str | None = None,
    max_train: int | None = None,
    cache_dir: str | Path | None = "auto",
    val_fraction: float = 0.0,
) -> DataBundle:
    """Load a dataset by name (see DATASETS) or path: folder, .zip, .csv/.tsv (`path,label[,split]`), or .npz
    with x_train/y_train/x_test/y_test.

    Splits: the data's own test split, else `test_fraction` per class drawn with `split_seed`; then
    `max_train` (stratified, `split_seed`), then `val_fraction` of each class as validation (`split_seed`).
    A training run passes its config's values (validation 10 % by default); called directly, the default
    `val_fraction=0` returns no validation split. Decoded folders/zips/CSV lists are cached in `cache_dir`
    ("auto": $FASTRETRAIN_CACHE, else ~/.cache/fastretrain; None: decoded into memory every time).
    """
    if spec in DATASETS:
        path, name = DATASETS[spec](data_root), spec
    else:
        path, name = Path(spec), Path(spec).stem
        if not path.exists():
            if os.sep not in spec and "." not in spec:
                raise unknown_name("dataset", spec, DATASETS)
            raise FastRetrainError(f"data path not found: {spec}")
    classes = FASHION_CLASSES if name.startswith("fashion-mnist") else None
    if cache_dir == "auto":
        cache_dir = default_cache_dir()
    if path.is_dir() and (path / "train-images-idx3-ubyte.gz").is_file():
        bundle = _idx_bundle(path, image_size)
    elif path.suffix.lower() == ".npz":
        bundle = _npz(path, image_size, name, classes)
    elif path.suffix.lower() in (".csv", ".tsv"):
        bundle = from_csv(path, image_size, test_fraction, split_seed, skip_bad, cache_dir=cache_dir)
    else:
        bundle = from_folder(path, image_size, test_fraction, split_seed, skip_bad, cache_dir=cache_dir)
    bundle.name = name
    bundle = carve_validation(subset_train(bundle, max_train, split_seed), val_fraction, split_seed)
    for line in odd_file_warnings(bundle, str(path)):
        warnings.warn(line, FastRetrainWarning, stacklevel=2)
    return bundle
