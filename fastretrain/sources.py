"""Data from files: image folders (plain or zipped, `train/` + `test/` or `val/`, or class folders alone) and CSV/TSV
lists of files (`path,label[,split]`), decoded once into a uint8 canvas through the decode cache (cache.py), and the
checks for odd files (byte-identical copies across splits, placeholder images among photos).

A cache entry larger than IN_MEMORY_BYTES stays on disk and is read a batch at a time (`DiskImages`), so memory does
not grow with the number of images. The splits' rules are bundle.py's; `data.load_data` dispatches here.
"""
from __future__ import annotations

import collections
import csv
import hashlib
import os
import re
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .bundle import (DataBundle, DiskImages, ImageTensors, SplitFiles, carve_validation, digest,
                     need_two_classes, stratified_split, too_few)  # fmt: skip
from .cache import FileImages, Source, cached_decode, decode_in_memory
from .errors import FastRetrainError, FastRetrainWarning
from .transforms import store_size

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
IN_MEMORY_BYTES = 64 << 20  # a cache entry up to this size is read into memory; larger ones are read per batch
PLACEHOLDER_SIDE = 32  # px: an image with both sides below this, among larger photos, is taken for a placeholder
SMALL_FILE = 8 << 10  # bytes: only files this small are opened to read their size (a 31x31 image is smaller)


# --------------------------------------------------------------------------------------------------
# folders and zips of class folders


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


def _class_files(files: _Files, prefix: str, classes: list[str] | None) -> tuple[list[str], list[int], list[str]]:
    found = files.dirs(prefix)
    if classes is None and len(found) == 1:
        need_two_classes(found, f"{files.path}/{prefix}".rstrip("/"), "one folder of images each")
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
                   cache_dir: str | Path | None = None) -> tuple[ImageTensors | DiskImages, list[int]]:  # fmt: skip
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


def _check_class_counts(y: torch.Tensor, classes: list[str], where: str, drawn_test: bool) -> None:
    """Every class keeps training images, and test images when the test split is drawn from training."""
    counts = torch.bincount(y.cpu(), minlength=len(classes)).tolist()
    none = too_few(counts, classes, 1, "readable training image")
    if none:
        raise FastRetrainError(f"{where}: {none}: every class needs training images")
    few = too_few(counts, classes, 2, "image") if drawn_test else None
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
    need_two_classes(train_labels, str(path), "labels of training rows")
    source = Source(str(base), key=str(path.resolve()))  # one cache entry per list, not per folder
    splits = {sp: ([p for _, p, _, q in rows if q == sp], [index[lab] for _, _, lab, q in rows if q == sp])
              for sp in SPLITS if any(r[3] == sp for r in rows)}  # fmt: skip
    return _parts_bundle(source, splits, train_labels, store_size(image_size), skip_bad, str(base), path.stem, "",
                         cache_dir, "test", test_fraction, split_seed, val_fraction)  # fmt: skip


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
