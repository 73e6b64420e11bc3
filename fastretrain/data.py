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
~/.cache/fastretrain) and reused by later runs; a cache entry larger than IN_MEMORY_BYTES stays on disk and is
read a batch at a time (DiskImages), so memory does not grow with the number of images. Arrays are resized in
memory the same way (ImageTensors). Augmentation then runs on whole batches of tensors (on the model's
device): a per-sample random resized crop of the whole image + horizontal flip for training, the centre crop for
evaluation (the central 87.5 % of the central square, as before for square stores), both through
`torchvision.ops.roi_align` or one gather, which resample every box of a batch in one call (bilinear, averaging
several samples per output pixel when shrinking, i.e. antialiased).

Class imbalance: `class_weights` (loss weights) and `balanced_indices` (class-balanced sampling) serve the
engine's `--balance`; `class_count_lines` is what a run prints at its start.
"""
from __future__ import annotations

import collections
import gzip
import hashlib
import math
import os
import re
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from .cache import FileImages, Source, cached_decode, cap_side, decode_bytes, decode_in_memory, fit_pil, full_long_side
from .errors import FastRetrainError, FastRetrainWarning, unknown_name

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
CROP_PCT = 0.875  # eval crop covers this fraction of the stored square
IN_MEMORY_BYTES = 64 << 20  # a cache entry up to this size is read into memory; larger ones are read per batch
PACKAGE_DATA = Path(__file__).parent / "datasets"
PLACEHOLDER_SIDE = 32  # px: an image with both sides below this, among larger photos, is taken for a placeholder
SMALL_FILE = 8 << 10  # bytes: only files this small are opened to read their size (a 31x31 image is smaller)


class _Images:
    """What every stored-image set answers: labels `y`, `hw` (upright (height, width) per image, or None: every
    image fills the canvas upright), `read(idx)`, the batch transforms (`prepare`), views (`subset`)."""

    y: torch.Tensor
    hw: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.y)

    def read(self, idx) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 canvas rows (B, 3, S, L) of images `idx`, and their hw (B, 2) or None."""
        raise NotImplementedError

    def prepare(self, idx, train: bool, size: int, norm, generator=None, device="cpu"):
        """(normalised float (B, 3, size, size) on `device`, labels (B,)): see `prepare_images`."""
        x, hw = self.read(idx)
        x = x.to(device, non_blocking=True)
        return prepare_images(x, train, size, norm, generator, hw), self.y[idx].to(device, non_blocking=True)

    def central(self, idx) -> torch.Tensor:
        """uint8 (B, 3, S, S): the central square of each image, upright (what `decode_image` gives)."""
        x, hw = self.read(idx)
        return square_crops(x, hw, min(_regions(x, hw)[2]), 0)


@dataclass
class ImageTensors(_Images):
    """Decoded images in memory: x (N, 3, S, L) uint8 canvas, y (N,) int64, hw (N, 2) or None (see cache.py)."""

    x: torch.Tensor
    y: torch.Tensor
    hw: torch.Tensor | None = None

    def read(self, idx):
        return self.x[idx], (self.hw[idx] if self.hw is not None else None)

    def subset(self, idx) -> "ImageTensors":
        """The images `idx` (a copy: in-memory sets are small)."""
        return ImageTensors(self.x[idx], self.y[idx], self.hw[idx] if self.hw is not None else None)

    def with_labels(self, y: torch.Tensor) -> "ImageTensors":
        return ImageTensors(self.x, y, self.hw)


class DiskImages(_Images):
    """Images in a cache file (cache.FileImages), rows `rows` of it, read a batch at a time.

    Views (`subset`) copy only indices. `read_ahead(chunks)` starts reading the next batches of an epoch in a
    background thread (the engine calls it), so reading overlaps the training step.
    """

    def __init__(self, images: FileImages, rows: torch.Tensor, y: torch.Tensor, hw: torch.Tensor | None):
        self.images, self.rows, self.y, self.hw = images, rows, y, hw
        self._plan: collections.deque = collections.deque()
        self._pending: collections.deque = collections.deque()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def x(self) -> torch.Tensor:
        """All these images as one uint8 tensor (N, 3, S, L) in memory: for small subsets and tests."""
        return torch.from_numpy(self.images.read(self.rows.numpy()))

    def subset(self, idx) -> "DiskImages":
        idx = torch.as_tensor(idx)
        return DiskImages(self.images, self.rows[idx], self.y[idx], self.hw[idx] if self.hw is not None else None)

    def with_labels(self, y: torch.Tensor) -> "DiskImages":
        return DiskImages(self.images, self.rows, y, self.hw)

    def read_ahead(self, chunks, depth: int = 3) -> None:
        """Read these index chunks, in order, up to `depth` batches ahead of `read` (one thread)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1)
        self._plan, self._pending = collections.deque(chunks), collections.deque()
        self._fill(depth)

    def _fill(self, depth: int = 3) -> None:
        while self._plan and len(self._pending) < depth:
            c = self._plan.popleft()
            self._pending.append((c, self._pool.submit(self.images.read, self.rows[c].numpy())))

    def read(self, idx):
        idx = torch.as_tensor(idx)
        hw = self.hw[idx] if self.hw is not None else None
        if self._pending and torch.equal(self._pending[0][0], idx):
            _, job = self._pending.popleft()
            self._fill()
            return torch.from_numpy(job.result()), hw
        self._plan.clear()  # read out of plan: drop the schedule (what is in flight finishes unused)
        self._pending.clear()
        return torch.from_numpy(self.images.read(self.rows[idx].numpy())), hw

    def __getstate__(self):
        return {"images": self.images, "rows": self.rows, "y": self.y, "hw": self.hw}

    def __setstate__(self, state):
        self.__init__(**state)


@dataclass
class FeatureTensors:
    """Precomputed inputs (e.g. cached backbone features) used as they are: x (N, d) float."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def prepare(self, idx, train: bool, size: int, norm, generator=None, device="cpu"):
        return self.x[idx].to(device), self.y[idx].to(device)

    def subset(self, idx) -> "FeatureTensors":
        return FeatureTensors(self.x[idx], self.y[idx])

    def central(self, idx) -> torch.Tensor:
        """The inputs as they are (the image sets' central squares have no meaning here)."""
        return self.x[idx]

    def with_labels(self, y: torch.Tensor) -> "FeatureTensors":
        return FeatureTensors(self.x, y)


@dataclass
class DataBundle:
    """Training, validation (None: no validation split) and test data of one dataset.

    `test_set_id` names the test images (a digest of their identities, file names or pixel bytes, with
    their labels); when not given it is computed from the test tensors.
    """

    train: _Images
    test: _Images
    classes: list[str]
    name: str
    val: _Images | None = None
    test_set_id: str = ""
    files: SplitFiles | None = field(default=None, repr=False)  # file sources: which file each image is

    def __post_init__(self):
        if not self.test_set_id:
            x = self.test.x.detach().cpu().contiguous()
            self.test_set_id = digest(str(x.dtype), tuple(x.shape), x.numpy().tobytes(), _label_bytes(self.test.y))

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass
class SplitFiles:
    """The file of each image of a bundle's splits (folders, zips, CSV lists), in the splits' order: what the
    checks for duplicate files and placeholders read (`odd_file_warnings`)."""

    source: Source
    names: dict[str, list[str]]  # split ("train", "val", "test") -> file names, one per image

    def split(self, part: str, parts: dict[str, torch.Tensor]) -> None:
        """Split the images of `part` as a subset does: {new part: indices into it}."""
        old = self.names.pop(part)
        for p, idx in parts.items():
            self.names[p] = [old[i] for i in idx.tolist()]


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


def _boxes_random_resized(n: int, h, w, generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """(n, 4) boxes x1, y1, x2, y2 in pixels of h×w images (h, w: numbers or (n,) tensors): random area
    fraction of the image and aspect ratio, inside the image."""
    u = torch.rand(n, 4, generator=generator)
    h, w = torch.as_tensor(h, dtype=torch.float32), torch.as_tensor(w, dtype=torch.float32)
    area = (scale[0] + (scale[1] - scale[0]) * u[:, 0]) * h * w
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    bw = torch.minimum(torch.sqrt(area * torch.exp(logr)), w)
    bh = torch.minimum(torch.sqrt(area / torch.exp(logr)), h)
    x1 = (w - bw) * u[:, 2]
    y1 = (h - bh) * u[:, 3]
    return torch.stack([x1, y1, x1 + bw, y1 + bh], 1)


def _regions(x: torch.Tensor, hw: torch.Tensor | None):
    """Per image of a canvas batch: stored region (rows, cols) (B,) each, its short side, transposed? (B,)."""
    b, _, rows, cols = x.shape
    if hw is None:  # every image fills the canvas upright
        rh, rw = torch.full((b,), rows), torch.full((b,), cols)
        return rh, rw, [min(rows, cols)], torch.zeros(b, dtype=torch.bool)
    hw = hw.cpu()
    rh, rw = hw.min(1).values, hw.max(1).values
    return rh, rw, [int(rh.min()), int(rw.min())], hw[:, 0] > hw[:, 1]


def square_crops(x: torch.Tensor, hw: torch.Tensor | None, c: int, inset: int) -> torch.Tensor:
    """(B, 3, c, c) from a canvas batch: of each image's central square, the c×c pixels from `inset`, upright."""
    rh, rw, _, tr = _regions(x, hw)
    q = int(torch.minimum(rh, rw).min())
    top, left = (rh - q) // 2 + inset, (rw - q) // 2 + inset
    if bool((top == top[0]).all() and (left == left[0]).all()):
        t, l = int(top[0]), int(left[0])
        out = x[..., t : t + c, l : l + c]
    else:  # per-image offsets: one gather
        ar = torch.arange(c)
        r = (top[:, None] + ar).to(x.device)[:, None, :, None]  # (B, 1, c, 1)
        k = (left[:, None] + ar).to(x.device)[:, None, None, :]  # (B, 1, 1, c)
        b = torch.arange(len(x), device=x.device)[:, None, None, None]
        out = x[b, torch.arange(x.shape[1], device=x.device)[None, :, None, None], r, k]
    if tr.any():
        out = out.clone()
        t = tr.to(x.device)
        out[t] = out[t].transpose(-1, -2)
    return out


def prepare_images(x: torch.Tensor, train: bool, size: int, norm, generator=None, hw=None) -> torch.Tensor:
    """uint8 canvas batch (B, 3, S, L) -> normalised float (B, 3, size, size), upright.

    hw (B, 2): each image's upright (height, width) as stored (portrait images transposed, see cache.py);
    None: every image fills the canvas upright (square stores, arrays).
    train: per-sample random resized crop of the whole image + horizontal flip. Eval: the central 87.5% of
    the image's central square (exactly `size` pixels when its side is size/0.875, else resized to `size`,
    antialiased), i.e. the centre crop of a short-side resize.
    """
    b = x.shape[0]
    rh, rw, sides, tr = _regions(x, hw)
    if train:
        h, w = (rh, rw) if hw is None else (hw[:, 0].cpu(), hw[:, 1].cpu())  # upright
        boxes = _boxes_random_resized(b, h if hw is not None else x.shape[-2], w if hw is not None else x.shape[-1],
                                      generator)  # fmt: skip
        if tr.any():  # transposed storage: the box's x and y swap, and so does the crop
            boxes = torch.where(tr[:, None], boxes[:, [1, 0, 3, 2]], boxes)
        rois = torch.cat([torch.arange(b, dtype=torch.float32)[:, None], boxes], 1).to(x.device)
        out = roi_align(x.float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        if tr.any():
            t = tr.to(x.device)
            out[t] = out[t].transpose(-1, -2)
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        out[flip] = out[flip].flip(-1)
    else:
        s = min(sides)
        c = size if store_size(size) == s else min(s, int(round(s * CROP_PCT)))
        out = square_crops(x, hw, c, (s - c) // 2).float()
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


def _resize_chunks(x: torch.Tensor, size_of, crop_of) -> torch.Tensor:
    out = []
    for chunk in x.split(512):
        h, w = chunk.shape[-2:]
        nh, nw = size_of(h, w)
        c = chunk.float()
        if (nh, nw) != (h, w):
            c = F.interpolate(c, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        t, l, oh, ow = crop_of(nh, nw)
        out.append(c[..., t : t + oh, l : l + ow].round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def _short_side_to(s: int):
    return lambda h, w: (full_long_side(h, w, s) if h > w else s, full_long_side(h, w, s) if w >= h else s)


def resize_square(x: torch.Tensor, s: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, s, s): short side to s (bicubic, antialiased), centre crop."""
    return _resize_chunks(x, _short_side_to(s), lambda nh, nw: ((nh - s) // 2, (nw - s) // 2, s, s))


def resize_short(x: torch.Tensor, s: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, s, l) or (N, C, l, s): short side to s (bicubic, antialiased), the long
    side to scale up to cap_side(s) (its centre kept so that the central s×s square is `resize_square`'s)."""
    cap = cap_side(s)

    def crop(nh, nw):
        full = max(nh, nw)
        long = min(full, cap)
        off = (full - s) // 2 - (long - s) // 2
        return (off, 0, long, s) if nh > nw else (0, off, s, long)

    return _resize_chunks(x, _short_side_to(s), crop)


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
        raise FastRetrainError("image array must be (N,H,W), (N,H,W,C) or (N,C,H,W) with C in 1/3/4; "
                               f"got {tuple(x.shape)}")
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

    Images are stored with their short side at size/0.875 (non-square arrays keep their aspect up to
    cache.MAX_ASPECT). The test arrays are the test set as given (its id: a digest of their bytes and labels);
    `val_fraction` > 0 carves a stratified validation split from the training arrays (see `carve_validation`).
    """
    ytr = _labels(y_train, len(classes) if classes else None, "training labels")
    n = len(classes) if classes else int(ytr.max()) + 1
    yte = _labels(y_test, n, "test labels")
    ytr = _labels(ytr, n, "training labels")
    classes = classes or [str(i) for i in range(n)]
    _need_two_classes(classes, name, "training labels of at least two values")
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
    train, test = ImageTensors(resize_short(xtr, s), ytr), ImageTensors(resize_short(xte, s), yte)
    bundle = DataBundle(train, test, classes, name, test_set_id=test_id)
    return carve_validation(bundle, val_fraction, split_seed)


def decode_image(image, s: int) -> torch.Tensor:
    """One image -> uint8 (3, s, s), decoded exactly as training images are (used to predict on new images):
    the central square of the stored image, i.e. what the evaluation transform crops from.

    Encoded bytes or a PIL image: as in an image folder (EXIF orientation applied, PIL bicubic, see cache.py).
    An array (H, W), (H, W, C) or (C, H, W), uint8 or float in [0, 1]: as `from_arrays` (torch bicubic).
    """
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        rgb, hw = decode_bytes(bytes(image), s, cap_side(s))
    elif isinstance(image, Image.Image):
        rgb, hw = fit_pil(image, s, cap_side(s))
    else:
        return resize_square(_to_nchw_uint8(np.asarray(image)[None]), s)[0]
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]  # (1, 3, s, l), stored orientation
    return square_crops(x, torch.tensor([hw]), s, 0)[0].contiguous()


class _Files:
    """A folder tree or a zip file, seen as relative POSIX paths (`names`) of a cache.Source."""

    def __init__(self, path: Path):
        self.path = path
        if path.suffix.lower() == ".zip":
            try:
                with zipfile.ZipFile(path) as z:
                    self.names = [n for n in z.namelist() if not n.endswith("/")]
            except zipfile.BadZipFile as e:
                raise FastRetrainError(f"not a readable zip file: {path}") from e
            self.source = Source(str(path), is_zip=True)
        else:
            self.names = _walk(path)
            self.source = Source(str(path))
        self.names = [n for n in self.names if not any(_hidden(part) for part in n.split("/"))]

    def dirs(self, prefix: str) -> list[str]:
        """Immediate sub-folder names under prefix (which ends with '/' or is '')."""
        subs = {n[len(prefix) :].split("/")[0] for n in self.names if n.startswith(prefix) and "/" in n[len(prefix) :]}
        return sorted(subs)


def _hidden(part: str) -> bool:
    return part.startswith((".", "__MACOSX"))


def _walk(root: Path) -> list[str]:
    """Relative POSIX paths (sorted) of the files under `root`, following symlinked folders; a symlink that
    leads back to a folder above it (a loop) is an error naming it."""
    out = []
    chains = {os.fspath(root): (os.path.realpath(root),)}  # folder -> real paths of it and the folders above it
    for top, dirs, files in os.walk(root, followlinks=True):
        chain = chains.pop(top)
        dirs[:] = [d for d in dirs if not _hidden(d)]  # left out below anyway: no need to walk them
        for d in dirs:
            p = os.path.join(top, d)
            real = os.path.realpath(p)
            if real in chain:
                raise FastRetrainError(f"symlink loop: {p} leads back to {real}, a folder above it; remove the link")
            chains[p] = (*chain, real)
        rel = Path(os.path.relpath(top, root)).as_posix()
        out += [f if rel == "." else f"{rel}/{f}" for f in files if os.path.isfile(os.path.join(top, f))]
    return sorted(out)


def _need_two_classes(classes: list[str], where: str, what: str) -> None:
    if len(classes) < 2:
        found = f"only one class ({classes[0]!r})" if classes else "no class"
        raise FastRetrainError(f"{where}: {found} found; a classifier needs at least 2 classes ({what})")


def _class_files(files: _Files, prefix: str, classes: list[str] | None) -> tuple[list[str], list[int], list[str]]:
    found = files.dirs(prefix)
    if classes is None and len(found) == 1:
        _need_two_classes(found, f"{files.path}/{prefix}".rstrip("/"), "one folder of images each")
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


def default_cache_dir() -> Path:
    return Path(os.environ.get("FASTRETRAIN_CACHE", Path.home() / ".cache" / "fastretrain"))


def decoded_images(source: Source, names: list[str], labels: list[int], s: int, skip_bad: bool, where: str,
                   cache_dir: str | Path | None = None) -> tuple[_Images, list[int]]:  # fmt: skip
    """The images `names` of `source` decoded (see cache.py) with their labels, and the indices kept.

    cache_dir None: decoded into memory. Else through the cache entry there; an entry of at most
    IN_MEMORY_BYTES is read into memory (ImageTensors), a larger one stays on disk (DiskImages).
    Unreadable files stop with an error naming the first, or with `skip_bad` are left out with a warning.
    """
    if cache_dir:
        d = cached_decode(source, names, s, cache_dir)
    else:
        d = decode_in_memory(source, names, s)
    keep = [i for i in range(len(names)) if i not in d.errors]
    if d.errors:
        first = min(d.errors)
        if not skip_bad:
            raise FastRetrainError(f"cannot read image {where}/{names[first]}: {d.errors[first]} "
                                   "(use --skip-bad-images to skip)")
        warnings.warn(f"{where}: skipped {len(d.errors)} unreadable image(s), e.g. {names[first]} ({d.errors[first]})",
                      FastRetrainWarning, stacklevel=3)
    if not keep:
        raise FastRetrainError(f"no readable images in {where}")
    width = d.images.shape[-1]
    hw = torch.from_numpy(d.hw)
    if bool((hw[keep] == torch.tensor([s, width])).all()):
        hw = None  # every image fills the canvas upright: the plain (square) store
    y, idx = torch.tensor(labels, dtype=torch.long), torch.tensor(keep, dtype=torch.long)
    images = d.images
    if isinstance(images, FileImages) and images.count * images.record <= IN_MEMORY_BYTES:
        images = np.fromfile(images.path, np.uint8).reshape(images.shape)
    if isinstance(images, FileImages):
        return DiskImages(images, idx, y[idx], hw[idx] if hw is not None else None), keep
    x = torch.from_numpy(images)
    if len(keep) < len(names):
        x = x[idx]
    return ImageTensors(x, y[idx], hw[idx] if hw is not None else None), keep


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
                skip_bad: bool = False, val_fraction: float = 0.0,
                cache_dir: str | Path | None = None) -> DataBundle:  # fmt: skip
    """Image folder or .zip: `train/` + `test/` or `val/` class subfolders (that folder is the test set; with
    both, `val/` is the validation split), or
    class subfolders (a `train/` folder alone too) with `test_fraction` of each class held out as test,
    drawn with `split_seed`. The test set's id digests its file names (below the dataset's top folder) and
    classes, so a folder and its zip give the same id. `val_fraction` > 0 carves validation from training.
    cache_dir: where decoded images are cached (None: decode into memory, see `decoded_images`).
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
    if "train" not in top:
        names, labels, classes = _class_files(files, prefix, None)
        parts, test_part = {"train": (names, labels)}, "test"
    else:
        # the held-out folder is the test set: `test/`, else `val/` (ImageNet's convention); with both, `val/`
        # is the validation split; with neither, test_fraction of `train/` is
        test_part = next((d for d in ("test", "val") if d in top), "test")
        names, labels, classes = _class_files(files, f"{prefix}train/", None)
        parts = {"train": (names, labels)}
        for d in ("test", "val"):
            if d in top:
                parts[d] = _class_files(files, f"{prefix}{d}/", classes)[:2]
    return _parts_bundle(files.source, parts, classes, s, skip_bad, str(path), path.name, prefix, cache_dir,
                         test_part, test_fraction, split_seed, val_fraction)  # fmt: skip


def _parts_bundle(source, parts: dict, classes, s, skip_bad, where, name, prefix, cache_dir, test_part, test_fraction,
                  split_seed, val_fraction) -> DataBundle:  # fmt: skip
    """A bundle from the named parts {part: (names, labels)} of one source, decoded together (one cache entry).

    `test_part` is the test set; when there is no such part, `test_fraction` of each class of "train" is held
    out as test (drawn with `split_seed`). "val" is the validation split when it is not the test part; else
    `val_fraction` of training is carved out (`carve_validation`).
    """
    order = list(parts)
    names = [n for p in order for n in parts[p][0]]
    labels = [c for p in order for c in parts[p][1]]
    images, keep = decoded_images(source, names, labels, s, skip_bad, where, cache_dir)
    starts = dict(zip(order, np.cumsum([0] + [len(parts[p][0]) for p in order]).tolist()))
    ends = {p: starts[p] + len(parts[p][0]) for p in order}
    keep_t = torch.tensor(keep)
    views, kept_names = {}, {}
    for p in order:
        rows = ((keep_t >= starts[p]) & (keep_t < ends[p])).nonzero().flatten()
        views[p], kept_names[p] = images.subset(rows), [names[keep[i]] for i in rows.tolist()]
    train = views["train"]
    _check_class_counts(train.y, classes, where, drawn_test=test_part not in views)
    files = SplitFiles(source, {"train": kept_names["train"]})
    if test_part in views:
        test, files.names["test"] = views[test_part], kept_names[test_part]
    else:
        tr, te = stratified_split(train.y, test_fraction, split_seed)
        test, train = train.subset(te), train.subset(tr)
        files.split("train", {"train": tr, "test": te})
    if test_part != "val" and "val" in views:
        files.names["val"] = kept_names["val"]
    test_id = _names_id(files.names["test"], test.y.tolist(), classes, prefix)
    val = views.get("val") if test_part != "val" else None
    bundle = DataBundle(train, test, classes, name, val=val, test_set_id=test_id, files=files)
    return carve_validation(bundle, val_fraction, split_seed)


def _few(counts: list[int], classes: list[str], need: int, unit: str) -> str | None:
    """Which classes have fewer than `need` images ("class 'a' has 1 image", up to 3 named), or None."""
    few = [(classes[i], n) for i, n in enumerate(counts) if n < need]
    if not few:
        return None
    if len(few) == 1:
        c, n = few[0]
        return f"class {c!r} has {n} {unit}{'' if n == 1 else 's'}"
    shown = ", ".join(f"{c!r} ({n})" for c, n in few[:3]) + (f" and {len(few) - 3} more" if len(few) > 3 else "")
    return f"{len(few)} classes have fewer than {need} {unit}s: {shown}"


def _check_class_counts(y: torch.Tensor, classes: list[str], where: str, drawn_test: bool) -> None:
    """Every class keeps training images, and test images when the test split is drawn from training."""
    counts = torch.bincount(y.cpu(), minlength=len(classes)).tolist()
    none = _few(counts, classes, 1, "readable training image")
    if none:
        raise FastRetrainError(f"{where}: {none}: every class needs training images")
    few = _few(counts, classes, 2, "image") if drawn_test else None
    if few:
        raise FastRetrainError(f"{where}: {few}: holding out a test split of each class (--test-fraction) needs at "
                               "least 2 images per class (1 test, 1 training; 3 with a validation split)")


def _names_id(names, labels, classes, prefix="") -> str:
    """Digest of test file names (the wrapping top folder of a zip removed) and their class names."""
    return digest("files", *(f"{n[len(prefix):]}\t{classes[c]}" for n, c in zip(names, labels)))


# --------------------------------------------------------------------------------------------------
# a CSV/TSV list of files

PATH_COLUMNS, LABEL_COLUMNS = ("path", "file", "filename", "image"), ("label", "class")
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"validation": "val", "valid": "val"}


def _csv_rows(path: Path) -> tuple[list[tuple[int, str, str, str]], bool]:
    """[(line, path, label, split)] of a CSV/TSV (header optional), and whether it has a split column."""
    import csv

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise FastRetrainError(f"cannot read {path}: {e}") from e
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    delim = "\t" if path.suffix.lower() == ".tsv" or ("\t" in first and "," not in first) else ","
    rows = [(i + 1, [c.strip() for c in r]) for i, r in enumerate(csv.reader(lines, delimiter=delim))]
    rows = [(line, r) for line, r in rows if any(r)]
    if not rows:
        raise FastRetrainError(f"{path} lists no images (expected rows of path,label[,split])")
    head = [c.lower() for c in rows[0][1]]
    if any(h in PATH_COLUMNS for h in head) and any(h in LABEL_COLUMNS for h in head):
        unknown = [h for h in head if h not in PATH_COLUMNS + LABEL_COLUMNS + ("split",)]
        if unknown:
            raise FastRetrainError(f"{path}: unknown column {unknown[0]!r} in the header (columns: path, label, split)")
        first_of = lambda names: next(i for i, h in enumerate(head) if h in names)  # noqa: E731
        cols = (first_of(PATH_COLUMNS), first_of(LABEL_COLUMNS), head.index("split") if "split" in head else None)
        rows = rows[1:]
    else:
        cols = (0, 1, 2 if len(rows[0][1]) > 2 else None)
    width = max(c for c in cols if c is not None) + 1
    out = []
    for line, r in rows:
        if len(r) < width or not r[cols[0]] or not r[cols[1]]:
            raise FastRetrainError(f"{path} line {line}: expected path,label[,split], got {','.join(r)!r}")
        split = r[cols[2]].lower() if cols[2] is not None else "train"
        split = SPLIT_ALIASES.get(split, split)
        if split not in SPLITS:
            raise FastRetrainError(f"{path} line {line}: unknown split {r[cols[2]]!r} (use train, val or test)")
        out.append((line, r[cols[0]], r[cols[1]], split))
    if not out:
        raise FastRetrainError(f"{path} lists no images (expected rows of path,label[,split])")
    return out, cols[2] is not None


def from_csv(path: str | Path, image_size: int, test_fraction: float = 0.2, split_seed: int = 0, skip_bad: bool = False,
             val_fraction: float = 0.0, cache_dir: str | Path | None = None) -> DataBundle:  # fmt: skip
    """A CSV or TSV of `path,label[,split]` (paths relative to the file's folder; a header row naming the columns
    is optional). Classes: the training rows' labels (sorted; numerically when all are integers). Rows with split
    `test` are the test set, else `test_fraction` of each class of the training rows is held out (split_seed);
    rows with split `val` are the validation split, else `val_fraction` is carved from training. Errors name the
    line: a missing file, a label of a val/test row that no training row has, an unknown split, a file listed twice.
    """
    path = Path(path)
    rows, _ = _csv_rows(path)
    base = path.resolve().parent
    seen: dict[str, int] = {}
    for line, p, _, _ in rows:
        if p in seen:
            raise FastRetrainError(f"{path} line {line}: {p} is listed again (first on line {seen[p]})")
        seen[p] = line
    missing = [(line, p) for line, p, _, _ in rows if not (base / p).is_file()]
    if missing:
        what = f"{len(missing)} listed file(s) not found, e.g. line {missing[0][0]}: {missing[0][1]}"
        if not skip_bad:
            raise FastRetrainError(f"{path}: {what} (paths are relative to {base}; --skip-bad-images skips them)")
        warnings.warn(f"{path}: skipped {what}", FastRetrainWarning, stacklevel=2)
        gone = {p for _, p in missing}
        rows = [r for r in rows if r[1] not in gone]
    train_labels = sorted({lab for _, _, lab, sp in rows if sp == "train"})
    if not train_labels:
        raise FastRetrainError(f"{path} has no training rows (split train, or no split column)")
    if all(re.fullmatch(r"-?\d+", lab) for lab in train_labels):
        train_labels.sort(key=int)
    index = {c: i for i, c in enumerate(train_labels)}
    for line, _, lab, sp in rows:
        if lab not in index:
            known = ", ".join(train_labels[:10]) + (", ..." if len(index) > 10 else "")
            raise FastRetrainError(f"{path} line {line}: unknown label {lab!r} of a {sp} image (no training row has "
                                   f"it; labels: {known})")
    _need_two_classes(train_labels, str(path), "labels of training rows")
    source = Source(str(base), key=str(path.resolve()))  # one cache entry per list, not per folder
    splits = {sp: ([p for _, p, _, q in rows if q == sp], [index[lab] for _, _, lab, q in rows if q == sp])
              for sp in SPLITS if any(r[3] == sp for r in rows)}  # fmt: skip
    return _parts_bundle(source, splits, train_labels, store_size(image_size), skip_bad, str(base), path.stem, "",
                         cache_dir, "test", test_fraction, split_seed, val_fraction)  # fmt: skip


# --------------------------------------------------------------------------------------------------
# splits, subsets, class balance


def _val_seed(split_seed: int) -> int:
    """The validation draw's seed: derived from split_seed, a stream apart from the test split's."""
    return zlib.crc32(f"validation/{split_seed}".encode())


def carve_validation(bundle: DataBundle, val_fraction: float, split_seed: int = 0) -> DataBundle:
    """Move `val_fraction` of each training class (stratified, drawn from `split_seed`) into `bundle.val`.

    0 leaves the bundle as it is (no validation split); so does a validation split the data ships (a
    `val/` folder beside `test/`). A class with fewer than 2 training images is an error naming it.
    """
    if not 0 <= val_fraction < 1:
        raise FastRetrainError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not val_fraction or bundle.val is not None:
        return bundle
    counts = torch.bincount(bundle.train.y.cpu(), minlength=bundle.num_classes).tolist()
    few = _few(counts, bundle.classes, 2, "training image")
    if few:
        raise FastRetrainError(f"{bundle.name}: {few} (after the test split and --max-train): a validation split "
                               f"(--val-fraction {val_fraction:g} of each class) needs at least 2 per class (1 to "
                               "validate, 1 to train); add images or give --val-fraction 0")
    tr, va = stratified_split(bundle.train.y, val_fraction, _val_seed(split_seed))
    bundle.train, bundle.val = bundle.train.subset(tr), bundle.train.subset(va)
    if bundle.files is not None:
        bundle.files.split("train", {"train": tr, "val": va})
    return bundle


def subset_train(bundle: DataBundle, max_train: int | None, split_seed: int = 0) -> DataBundle:
    """Keep at most `max_train` training images, stratified, drawn from `split_seed` (not the run seed)."""
    if max_train is not None and max_train < len(bundle.train):
        keep, _ = stratified_split(bundle.train.y, 1 - max_train / len(bundle.train), split_seed)
        bundle.train = bundle.train.subset(keep)
        if bundle.files is not None:
            bundle.files.split("train", {"train": keep})
    return bundle


def class_weights(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Loss weight per class, N / (C · n_c) (scikit-learn's "balanced"): each class weighs the same in total."""
    counts = torch.bincount(y.cpu(), minlength=num_classes).double()
    return (len(y) / (num_classes * counts.clamp(min=1))).float()


def balanced_indices(y: torch.Tensor, num: int, generator: torch.Generator) -> torch.Tensor:
    """`num` indices drawn with replacement, image i with probability 1 / (C · n_{y_i}): every class equally likely."""
    counts = torch.bincount(y.cpu())
    present = int((counts > 0).sum())
    p = 1.0 / (present * counts[y.cpu()].double())
    return torch.multinomial(p, num, replacement=True, generator=generator)


def class_count_lines(bundle: DataBundle, limit: int = 30) -> list[str]:
    """Per-class image counts of train/val/test, one line per class (up to `limit` classes, else a summary)."""
    parts = [("train", bundle.train), ("val", bundle.val), ("test", bundle.test)]
    parts = [(n, d) for n, d in parts if d is not None]
    counts = {n: torch.bincount(d.y.cpu(), minlength=bundle.num_classes).tolist() for n, d in parts}
    tr = counts["train"]
    ratio = max(tr) / max(min(tr), 1)
    note = f", training classes differ up to {ratio:.1f}x (--balance sampler|loss evens them out)" if ratio >= 2 else ""
    head = f"images per class ({'/'.join(n for n, _ in parts)}){note}:"
    if bundle.num_classes <= limit:
        width = max(len(c) for c in bundle.classes)
        return [head] + [f"  {c:<{width}}  " + "/".join(str(counts[n][i]) for n, _ in parts)
                                for i, c in enumerate(bundle.classes)]  # fmt: skip
    order = sorted(range(bundle.num_classes), key=lambda i: tr[i])
    rare = ", ".join(f"{bundle.classes[i]} {tr[i]}" for i in order[:5])
    stats = "; ".join(f"{n} min {min(v)} median {sorted(v)[len(v) // 2]} max {max(v)}" for n, v in counts.items())
    return [f"{head} {stats}", f"  fewest training images: {rare}"]


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


# --------------------------------------------------------------------------------------------------
# odd files: copies across splits, placeholders


def odd_file_warnings(bundle: DataBundle, where: str) -> list[str]:
    """One line each, when found, for byte-identical files in different splits and for placeholder images among
    photos (`bundle.files`: folders, zips and CSV lists; arrays have none). `load_data` warns with them."""
    files = bundle.files
    if files is None:
        return []
    items = [(p, n) for p, names in files.names.items() for n in names]  # (split, file name) of every image
    prints = files.source.fingerprints([n for _, n in items])  # (size, mtime or CRC): no file is read for these
    lines = (_duplicates(files.source, items, prints, where), _placeholders(files.source, items, prints, where))
    return [line for line in lines if line]


def _duplicates(source: Source, items, prints, where: str) -> str | None:
    """Validation/test images byte-identical to an image of another split: files of equal size (and CRC, in a
    zip) that lie in different splits are read and hashed; nothing else is read."""
    by_size = collections.defaultdict(list)
    for item, (size, crc) in zip(items, prints):
        if size >= 0:
            by_size[(size, crc) if source.is_zip else size].append(item)
    by_hash = collections.defaultdict(list)
    for same in by_size.values():
        if len({p for p, _ in same}) > 1:
            for p, n in same:
                with source.open(n) as f:
                    by_hash[hashlib.blake2b(f.read(), digest_size=16).digest()].append((p, n))
    groups = [g for g in by_hash.values() if len({p for p, _ in g}) > 1]
    if not groups:
        return None
    count = sum(p != "train" for g in groups for p, _ in g)
    g = min(groups, key=lambda g: min(item for item in g if item[0] != "train"))  # the example: first val/test name
    g = sorted(g, key=lambda item: (item[0] != "train", item))
    (p1, n1), (p2, n2) = next((a, b) for a in g for b in g if a[0] != b[0])
    return (f"{where}: {count} validation/test image(s) are byte-identical to an image of another split, e.g. "
            f"{n2} ({p2}) = {n1} ({p1}); the score counts them as seen: remove the copies")


def _placeholders(source: Source, items, prints, where: str) -> str | None:
    """Images that look like placeholders among photos: GIFs, or images with both sides under PLACEHOLDER_SIDE,
    where most of the dataset is not (a dataset of small images or of GIFs is left alone). Only files under
    SMALL_FILE bytes are opened, to read their size from the header."""
    from PIL import Image

    n = len(items)
    gif = {i for i, (_, name) in enumerate(items) if name.lower().endswith(".gif")}
    small = [i for i, (size, _) in enumerate(prints) if 0 <= size < SMALL_FILE]
    odd = gif if 2 * len(gif) < n else set()
    if 2 * len(small) < n:
        for i in small:
            try:
                with source.open(items[i][1]) as f, Image.open(f) as img:
                    if max(img.size) < PLACEHOLDER_SIDE:
                        odd.add(i)
            except Exception:  # noqa: BLE001, S112 - an unreadable file was reported (or skipped) when decoding
                continue
    if not odd:
        return None
    names = sorted(items[i][1] for i in odd)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"{where}: {len(names)} image(s) look like placeholders, not photos (a GIF, or both sides under "
            f"{PLACEHOLDER_SIDE} px, among larger photos): {shown}; check them or remove them")
