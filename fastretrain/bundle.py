"""What a dataset is once loaded: the stored-image sets (`ImageTensors` in memory, `DiskImages` read a batch at a
time from a cache file), `FeatureTensors`, the `DataBundle` of train/validation/test splits, `from_arrays`, and the
splits' rules: stratified draws from `split_seed` (never the run's `--seed`), validation carved from training,
`max_train` subsets, class balance (`class_weights`, `balanced_indices`) and the per-class counts a run prints.
Loading from files and by name is sources.py and data.py; the batch transforms, transforms.py.
"""
from __future__ import annotations

import collections
import hashlib
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from .cache import FileImages, Source
from .errors import FastRetrainError
from .transforms import central_squares, prepare_images, resize_short, store_size, to_nchw_uint8


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
        return central_squares(*self.read(idx))


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


def need_two_classes(classes: list[str], where: str, what: str) -> None:
    if len(classes) < 2:
        found = f"only one class ({classes[0]!r})" if classes else "no class"
        raise FastRetrainError(f"{where}: {found} found; a classifier needs at least 2 classes ({what})")


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
    need_two_classes(classes, name, "training labels of at least two values")
    counts = torch.bincount(ytr, minlength=n)
    if (counts == 0).any():
        raise FastRetrainError(f"class {classes[int((counts == 0).nonzero()[0])]!r} has no training images")
    xtr, xte = to_nchw_uint8(x_train), to_nchw_uint8(x_test)
    for what, xx, yy in (("training", xtr, ytr), ("test", xte, yte)):
        if len(xx) != len(yy):
            raise FastRetrainError(f"{what} images ({len(xx)}) and labels ({len(yy)}) differ in number")
    raw = np.ascontiguousarray(np.asarray(x_test))
    test_id = digest("arrays", str(raw.dtype), raw.shape, raw.tobytes(), _label_bytes(yte), classes)
    s = store_size(image_size)
    train, test = ImageTensors(resize_short(xtr, s), ytr), ImageTensors(resize_short(xte, s), yte)
    bundle = DataBundle(train, test, classes, name, test_set_id=test_id)
    return carve_validation(bundle, val_fraction, split_seed)


# --------------------------------------------------------------------------------------------------
# splits, subsets, class balance


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


def too_few(counts: list[int], classes: list[str], need: int, unit: str) -> str | None:
    """Which classes have fewer than `need` images ("class 'a' has 1 image", up to 3 named), or None."""
    few = [(classes[i], n) for i, n in enumerate(counts) if n < need]
    if not few:
        return None
    if len(few) == 1:
        c, n = few[0]
        return f"class {c!r} has {n} {unit}{'' if n == 1 else 's'}"
    shown = ", ".join(f"{c!r} ({n})" for c, n in few[:3]) + (f" and {len(few) - 3} more" if len(few) > 3 else "")
    return f"{len(few)} classes have fewer than {need} {unit}s: {shown}"


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
    few = too_few(counts, bundle.classes, 2, "training image")
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
