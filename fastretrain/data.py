"""Data: image folders (plain or zipped), in-memory arrays, and the bundled real datasets by name.

Splits (METHODS.md §6, the comparison protocol): data that ships a test split keeps it; data without
one (a folder of class folders, a `train/` folder alone) has `test_fraction` of each class held out as
test, drawn with `split_seed`, never with the run's `--seed`, so every method and seed of a comparison is
scored on the same images (`DataBundle.test_set_id` names them). `max_train` subsets the training images
with `split_seed` too, and `val_fraction` of each class of what remains becomes the validation split
(again drawn from `split_seed`), which is what every choice during training reads.

Every source is decoded once into a uint8 tensor (N, 3, S, S) held in memory, with S = image_size/0.875
(short side resized, centre-cropped square). Augmentation then runs on whole batches of tensors (on the
model's device): a per-sample random resized crop + horizontal flip for training, the centre crop for
evaluation, both through `torchvision.ops.roi_align`, which resamples every box of a batch in one call
(bilinear, averaging several samples per output pixel when shrinking, i.e. antialiased).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from .errors import FastRetrainError, unknown_name

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CROP_PCT = 0.875  # eval crop covers this fraction of the stored square
PACKAGE_DATA = Path(__file__).parent / "datasets"


@dataclass
class ImageTensors:
    """Decoded images kept in memory: x (N, 3, S, S) uint8, y (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def prepare(self, idx, train: bool, size: int, norm, generator=None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
        x = self.x[idx].to(device, non_blocking=True)
        return prepare_images(x, train, size, norm, generator), self.y[idx].to(device, non_blocking=True)


@dataclass
class FeatureTensors:
    """Precomputed inputs (e.g. cached backbone features) used as they are: x (N, d) float."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def prepare(self, idx, train: bool, size: int, norm, generator=None, device="cpu"):
        return self.x[idx].to(device), self.y[idx].to(device)


@dataclass
class DataBundle:
    """Training, validation (None: no validation split) and test data of one dataset.

    `test_set_id` names the test images (a digest of their identities, file names or pixel bytes, with
    their labels); when not given it is computed from the test tensors.
    """

    train: ImageTensors
    test: ImageTensors
    classes: list[str]
    name: str
    val: ImageTensors | None = None
    test_set_id: str = ""

    def __post_init__(self):
        if not self.test_set_id:
            x = self.test.x.detach().cpu().contiguous()
            self.test_set_id = digest(str(x.dtype), tuple(x.shape), x.numpy().tobytes(), _label_bytes(self.test.y))

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def digest(*parts) -> str:
    """A short hex digest (sha256, 16 hex digits) of strings, bytes and reprs of anything else."""
    h = hashlib.sha256()
    for p in parts:
        b = p if isinstance(p, bytes) else (p if isinstance(p, str) else repr(p)).encode()
        h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()[:16]


def _label_bytes(y) -> bytes:
    return np.asarray(torch.as_tensor(np.asarray(y)).long().flatten().cpu().numpy(), dtype="<i8").tobytes()


# --------------------------------------------------------------------------------------------------
# batch transforms


def _boxes_random_resized(n: int, s: int, generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """(n, 4) boxes x1, y1, x2, y2 in pixels of an s×s image: random area fraction and aspect ratio."""
    u = torch.rand(n, 4, generator=generator)
    area = (scale[0] + (scale[1] - scale[0]) * u[:, 0]) * s * s
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    w = torch.sqrt(area * torch.exp(logr)).clamp(max=s)
    h = torch.sqrt(area / torch.exp(logr)).clamp(max=s)
    x1 = (s - w) * u[:, 2]
    y1 = (s - h) * u[:, 3]
    return torch.stack([x1, y1, x1 + w, y1 + h], 1)


def prepare_images(x: torch.Tensor, train: bool, size: int, norm, generator=None) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> normalised float (B, 3, size, size).

    train: per-sample random resized crop + horizontal flip. Eval: the central 87.5% (exactly `size`
    pixels when S = size/0.875, else resized to `size`, antialiased).
    """
    b, _, s, _ = x.shape
    if train:
        boxes = _boxes_random_resized(b, s, generator)
        rois = torch.cat([torch.arange(b, dtype=torch.float32)[:, None], boxes], 1).to(x.device)
        out = roi_align(x.float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        out[flip] = out[flip].flip(-1)
    else:
        c = size if store_size(size) == s else min(s, int(round(s * CROP_PCT)))
        t = (s - c) // 2
        out = x[..., t : t + c, t : t + c].float()
        if c != size:
            out = F.interpolate(out, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean, std = norm
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1) * 255
    return (out - mean) / std  # (B, 3, size, size)


# --------------------------------------------------------------------------------------------------
# decoding


def store_size(image_size: int) -> int:
    return int(round(image_size / CROP_PCT))


def resize_square(x: torch.Tensor, s: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, s, s): short side to s (bicubic, antialiased), centre crop."""
    out = []
    for chunk in x.split(512):
        h, w = chunk.shape[-2:]
        k = s / min(h, w)
        nh, nw = max(s, round(h * k)), max(s, round(w * k))
        c = chunk.float()
        if (nh, nw) != (h, w):
            c = F.interpolate(c, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        t, l = (nh - s) // 2, (nw - s) // 2
        out.append(c[..., t : t + s, l : l + s].round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def _to_nchw_uint8(x) -> torch.Tensor:
    x = torch.as_tensor(np.array(x))
    if x.dtype != torch.uint8:
        if x.is_floating_point() and float(x.max()) <= 1.0:
            x = x * 255
        x = x.round().clamp(0, 255).to(torch.uint8)
    if x.ndim == 3:  # (N, H, W) grey
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4):
        raise FastRetrainError(f"image array must be (N,H,W), (N,H,W,C) or (N,C,H,W) with C in 1/3/4; got {tuple(x.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x[:, :3].contiguous()


def _labels(y, num_classes: int | None, what: str) -> torch.Tensor:
    y = torch.as_tensor(np.array(y)).long().flatten()
    if len(y) == 0:
        raise FastRetrainError(f"{what}: dataset is empty")
    if num_classes is not None and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        bad = int(y[(y < 0) | (y >= num_classes)][0])
        raise FastRetrainError(f"{what}: label {bad} out of range for {num_classes} classes")
    return y


def from_arrays(x_train, y_train, x_test, y_test, image_size: int, classes: list[str] | None = None, name="arrays",
                val_fraction: float = 0.0, split_seed: int = 0) -> DataBundle:  # fmt: skip
    """A DataBundle from in-memory arrays (uint8 or float in [0,1]; grey, RGB or RGBA).

    The test arrays are the test set as given (its id: a digest of their bytes and labels);
    `val_fraction` > 0 carves a stratified validation split from the training arrays (see `carve_validation`).
    """
    ytr = _labels(y_train, len(classes) if classes else None, "training labels")
    n = len(classes) if classes else int(ytr.max()) + 1
    yte = _labels(y_test, n, "test labels")
    ytr = _labels(ytr, n, "training labels")
    classes = classes or [str(i) for i in range(n)]
    counts = torch.bincount(ytr, minlength=n)
    if (counts == 0).any():
        raise FastRetrainError(f"class {classes[int((counts == 0).nonzero()[0])]!r} has no training images")
    xtr, xte = _to_nchw_uint8(x_train), _to_nchw_uint8(x_test)
    for what, xx, yy in (("training", xtr, ytr), ("test", xte, yte)):
        if len(xx) != len(yy):
            raise FastRetrainError(f"{what} images ({len(xx)}) and labels ({len(yy)}) differ in number")
    raw = np.ascontiguousarray(np.asarray(x_test))
    test_id = digest("arrays", str(raw.dtype), raw.shape, raw.tobytes(), _label_bytes(yte), classes)
    s = store_size(image_size)
    train, test = ImageTensors(resize_square(xtr, s), ytr), ImageTensors(resize_square(xte, s), yte)
    bundle = DataBundle(train, test, classes, name, test_set_id=test_id)
    return carve_validation(bundle, val_fraction, split_seed)


def _decode(data: bytes, s: int) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return _fit(img, s)


def _fit(img, s: int) -> np.ndarray:
    """A PIL image -> uint8 (s, s, 3) RGB: short side to s (bicubic), centre square."""
    from PIL import Image, ImageOps

    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return np.asarray(ImageOps.fit(img.convert("RGB"), (s, s), Image.Resampling.BICUBIC), dtype=np.uint8)


def decode_image(image, s: int) -> torch.Tensor:
    """One image -> uint8 (3, s, s), decoded exactly as training images are (used to predict on new images).

    Encoded bytes or a PIL image: as in an image folder (PIL, bicubic, centre square). An array (H, W),
    (H, W, C) or (C, H, W), uint8 or float in [0, 1]: as `from_arrays` (torch bicubic, antialiased).
    """
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        rgb = _decode(bytes(image), s)
    elif isinstance(image, Image.Image):
        rgb = _fit(image, s)
    else:
        return resize_square(_to_nchw_uint8(np.asarray(image)[None]), s)[0]
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).contiguous()  # PIL's array is read-only


class _Files:
    """A folder tree or a zip file, seen as relative POSIX paths -> bytes."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix.lower() == ".zip":
            try:
                self.zip = zipfile.ZipFile(path)
            except zipfile.BadZipFile as e:
                raise FastRetrainError(f"not a readable zip file: {path}") from e
            self.names = [n for n in self.zip.namelist() if not n.endswith("/")]
        else:
            self.zip = None
            self.names = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        self.names = [n for n in self.names if not any(part.startswith((".", "__MACOSX")) for part in n.split("/"))]

    def read(self, name: str) -> bytes:
        return self.zip.read(name) if self.zip else (self.path / name).read_bytes()

    def dirs(self, prefix: str) -> list[str]:
        """Immediate sub-folder names under prefix (which ends with '/' or is '')."""
        subs = {n[len(prefix) :].split("/")[0] for n in self.names if n.startswith(prefix) and "/" in n[len(prefix) :]}
        return sorted(subs)


def _class_files(files: _Files, prefix: str, classes: list[str] | None) -> tuple[list[str], list[int], list[str]]:
    found = files.dirs(prefix)
    classes = classes or found
    if not classes:
        raise FastRetrainError(f"no class folders found in {files.path}/{prefix}")
    names, labels = [], []
    for c, cls in enumerate(classes):
        imgs = [n for n in files.names if n.startswith(f"{prefix}{cls}/") and Path(n).suffix.lower() in IMAGE_EXTS]
        if not imgs:
            raise FastRetrainError(f"class folder {files.path}/{prefix}{cls} has no images")
        names += imgs
        labels += [c] * len(imgs)
    return names, labels, classes


def _decode_all(files: _Files, names: list[str], s: int, skip_bad: bool) -> tuple[torch.Tensor, list[int]]:
    def one(name):
        try:
            return _decode(files.read(name), s)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
            if not skip_bad:
                raise FastRetrainError(f"cannot read image {files.path}/{name}: {e} (use --skip-bad-images to skip)") from e
            return None

    workers = 1 if files.zip else min(4, os.cpu_count() or 1)  # ZipFile is not thread-safe
    with ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(one, names))
    keep = [i for i, a in enumerate(arrays) if a is not None]
    if len(keep) < len(names):
        bad = [names[i] for i, a in enumerate(arrays) if a is None]
        warnings.warn(f"skipped {len(bad)} unreadable image(s), e.g. {bad[0]}", stacklevel=2)
    if not keep:
        raise FastRetrainError(f"no readable images in {files.path}")
    x = torch.from_numpy(np.stack([arrays[i] for i in keep])).permute(0, 3, 1, 2).contiguous()
    return x, keep


def stratified_split(y: torch.Tensor, frac: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, held_out) indices: `frac` of each class held out (at least one where a class has ≥ 2)."""
    g = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in torch.unique(y):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = min(max(int(round(frac * len(idx))), 1 if len(idx) > 1 else 0), len(idx) - 1)
        held.append(idx[:k])
        keep.append(idx[k:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def from_folder(path: str | Path, image_size: int, test_fraction: float = 0.2, split_seed: int = 0,
                skip_bad: bool = False, val_fraction: float = 0.0) -> DataBundle:  # fmt: skip
    """Image folder or .zip: `train/` + `test/` or `val/` class subfolders (that folder is the test set; with
    both, `val/` is the validation split), or
    class subfolders (a `train/` folder alone too) with `test_fraction` of each class held out as test,
    drawn with `split_seed`. The test set's id digests its file names (below the dataset's top folder) and
    classes, so a folder and its zip give the same id. `val_fraction` > 0 carves validation from training.
    """
    path = Path(path)
    files = _Files(path)
    if not files.names:
        raise FastRetrainError(f"dataset is empty: {path}")
    prefix = ""
    top = files.dirs("")
    while len(top) == 1 and top[0] not in ("train", "val", "test") and not files.dirs(f"{prefix}{top[0]}/") == []:
        prefix += top[0] + "/"  # a zip that wraps everything in one folder
        top = files.dirs(prefix)
    s = store_size(image_size)
    if "train" in top:
        # the held-out folder is the test set: `test/`, else `val/` (ImageNet's convention); with both,
        # `val/` is the validation split
        split = next((d for d in ("test", "val") if d in top), None)
        names, labels, classes = _class_files(files, f"{prefix}train/", None)
        if split is None:
            bundle = _split_bundle(files, names, labels, classes, s, test_fraction, split_seed, skip_bad, path, prefix)
            return carve_validation(bundle, val_fraction, split_seed)
        tnames, tlabels, _ = _class_files(files, f"{prefix}{split}/", classes)
        xtr, keep = _decode_all(files, names, s, skip_bad)
        xte, tkeep = _decode_all(files, tnames, s, skip_bad)
        ytr, yte = torch.tensor(labels)[keep], torch.tensor(tlabels)[tkeep]
        test_id = _names_id(files, [tnames[i] for i in tkeep], tlabels, classes, prefix, tkeep)
        bundle = DataBundle(ImageTensors(xtr, ytr), ImageTensors(xte, yte), classes, path.name, test_set_id=test_id)
        if split == "test" and "val" in top:
            vnames, vlabels, _ = _class_files(files, f"{prefix}val/", classes)
            xva, vkeep = _decode_all(files, vnames, s, skip_bad)
            bundle.val = ImageTensors(xva, torch.tensor(vlabels)[vkeep])
        return carve_validation(bundle, val_fraction, split_seed)
    names, labels, classes = _class_files(files, prefix, None)
    bundle = _split_bundle(files, names, labels, classes, s, test_fraction, split_seed, skip_bad, path, prefix)
    return carve_validation(bundle, val_fraction, split_seed)


def _names_id(files, names, labels, classes, prefix, keep=None) -> str:
    """Digest of test file names (the wrapping top folder of a zip removed) and their class names."""
    labels = [labels[i] for i in keep] if keep is not None else labels
    return digest("files", *(f"{n[len(prefix):]}\t{classes[c]}" for n, c in zip(names, labels)))


def _split_bundle(files, names, labels, classes, s, test_fraction, split_seed, skip_bad, path, prefix) -> DataBundle:
    x, keep = _decode_all(files, names, s, skip_bad)
    y = torch.tensor(labels)[keep]
    tr, te = stratified_split(y, test_fraction, split_seed)
    kept = [names[i] for i in keep]
    test_id = _names_id(files, [kept[i] for i in te.tolist()], y[te].tolist(), classes, prefix)
    return DataBundle(ImageTensors(x[tr], y[tr]), ImageTensors(x[te], y[te]), classes, path.name, test_set_id=test_id)


def _val_seed(split_seed: int) -> int:
    """The validation draw's seed: derived from split_seed, a stream apart from the test split's."""
    return zlib.crc32(f"validation/{split_seed}".encode())


def carve_validation(bundle: DataBundle, val_fraction: float, split_seed: int = 0) -> DataBundle:
    """Move `val_fraction` of each training class (stratified, drawn from `split_seed`) into `bundle.val`.

    0 leaves the bundle as it is (no validation split); so does a validation split the data ships (a
    `val/` folder beside `test/`). A class with a single training image keeps it.
    """
    if not 0 <= val_fraction < 1:
        raise FastRetrainError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not val_fraction or bundle.val is not None:
        return bundle
    tr, va = stratified_split(bundle.train.y, val_fraction, _val_seed(split_seed))
    data = bundle.train
    bundle.train, bundle.val = type(data)(data.x[tr], data.y[tr]), type(data)(data.x[va], data.y[va])
    return bundle


def subset_train(bundle: DataBundle, max_train: int | None, split_seed: int = 0) -> DataBundle:
    """Keep at most `max_train` training images, stratified, drawn from `split_seed` (not the run seed)."""
    if max_train is not None and max_train < len(bundle.train):
        keep, _ = stratified_split(bundle.train.y, 1 - max_train / len(bundle.train), split_seed)
        bundle.train = type(bundle.train)(bundle.train.x[keep], bundle.train.y[keep])
    return bundle


# --------------------------------------------------------------------------------------------------
# named datasets

FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


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
    f = {k: _idx(d / f"{k}-idx{3 if 'images' in k else 1}-ubyte.gz") for k in ("train-images", "train-labels", "t10k-images", "t10k-labels")}
    return from_arrays(f["train-images"], f["train-labels"], f["t10k-images"], f["t10k-labels"], image_size, FASHION_CLASSES)


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
    """Load a dataset by name (see DATASETS) or path (folder, .zip, .npz with x_train/y_train/x_test/y_test).

    Splits: the data's own test split, else `test_fraction` per class drawn with `split_seed`; then
    `max_train` (stratified, `split_seed`), then `val_fraction` of each class as validation (`split_seed`).
    A training run passes its config's values (validation 10 % by default); called directly, the default
    `val_fraction=0` returns no validation split. Decoded folders/zips are cached as tensors in `cache_dir`
    (default ~/.cache/fastretrain; None disables).
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
    if path.is_dir() and (path / "train-images-idx3-ubyte.gz").is_file():
        bundle = _idx_bundle(path, image_size)
    elif path.suffix.lower() == ".npz":
        bundle = _npz(path, image_size, name, classes)
    else:
        bundle = _cached(path, image_size, test_fraction, split_seed, skip_bad, cache_dir)
    bundle.name = name
    return carve_validation(subset_train(bundle, max_train, split_seed), val_fraction, split_seed)


def _cached(path: Path, image_size: int, test_fraction: float, split_seed: int, skip_bad: bool, cache_dir):
    """from_folder (train/test only), memoised on disk as uint8 tensors keyed by the files' names, sizes and times."""
    if cache_dir == "auto":
        cache_dir = os.environ.get("FASTRETRAIN_CACHE", Path.home() / ".cache" / "fastretrain")
    if not cache_dir:
        return from_folder(path, image_size, test_fraction, split_seed, skip_bad)
    files = [path] if path.is_file() else sorted(path.rglob("*"))
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    what = ("v2", str(path.resolve()), stats, image_size, test_fraction, split_seed, skip_bad)
    file = Path(cache_dir) / f"data-{hashlib.sha1(repr(what).encode()).hexdigest()[:16]}.pt"
    if file.is_file():
        try:
            d = torch.load(file, weights_only=True)
            val = ImageTensors(d["xva"], d["yva"]) if "xva" in d else None
            train, test = ImageTensors(d["xtr"], d["ytr"]), ImageTensors(d["xte"], d["yte"])
            return DataBundle(train, test, d["classes"], d["name"], val=val, test_set_id=d["test_set_id"])
        except Exception:  # noqa: BLE001 - a broken cache entry is rebuilt
            pass
    bundle = from_folder(path, image_size, test_fraction, split_seed, skip_bad)
    from .checkpoint import atomic_torch_save

    d = {"xtr": bundle.train.x, "ytr": bundle.train.y, "xte": bundle.test.x, "yte": bundle.test.y,
         "classes": bundle.classes, "name": bundle.name, "test_set_id": bundle.test_set_id}  # fmt: skip
    if bundle.val is not None:
        d.update(xva=bundle.val.x, yva=bundle.val.y)
    atomic_torch_save(d, file)
    return bundle
