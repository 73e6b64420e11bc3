"""Decoded images: photos decoded once (EXIF orientation applied, aspect ratio kept) into a uint8 canvas, held
in memory for small sets or in a memory-mapped cache file that later runs reuse.

Geometry, for a stored size S (= image_size / 0.875, the short side): each image is resized so that its short
side is S (bicubic, antialiased: PIL's resize, as `ImageOps.fit` did before) and its long side keeps the aspect
ratio up to `MAX_ASPECT`·S (a longer side keeps its centre). JPEGs are decoded at the smallest DCT scale that is
still at least twice the target (PIL's `draft`, as `Image.thumbnail` does), which makes 12-megapixel phone photos
several times faster to decode at no visible cost. A dataset's images share one canvas (N, 3, S, L), L being
the longest stored side among them: landscape images are stored as they are and portrait ones transposed, so
that every short side runs down the S rows; each is left-aligned and the rest of its row of the canvas is zero.
`hw` (N, 2) holds every image's upright (height, width) as stored; (0, 0) marks a file that could not be read.
Square images give L = S: exactly the square store of before.

Cache entries (`cache_dir/images-KEY.u8` + `.json`, KEY from the source's path, S and the cap): the .u8 file is
the raw canvas, row after row (3·S·L bytes each), written once with `pwrite` by decoder processes (a fork pool;
each worker decodes a run of files and writes its rows itself, so the parent never holds the images). The .json
lists the files with their fingerprints (size and mtime for a folder, size and CRC for a zip member), `hw`, the
errors of unreadable files, and the identity of the .u8 file (inode, size, mtime). Building is atomic: the .u8
is written under a temporary name and renamed, then the .json is written and renamed; a lock file serialises
builders (two ranks of one job build once). An entry is reused when its .json parses, matches the requested
files and fingerprints, and the .u8 is the file it describes with the right size; otherwise it is rebuilt,
copying the rows of unchanged files from the old entry when the canvas width allows (so adding a few photos
decodes only those). Bit flips inside the .u8 are not detected (no checksum pass over gigabytes at every start).

Reading (`FileImages.read`) uses `os.preadv` into a fresh buffer, not the memory map: pages stay in the
kernel's page cache, shared between processes and runs, and the process's resident memory does not grow with
the number of images.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FastRetrainError

MAX_ASPECT = 1.5  # the stored long side is at most 1.5 x the short side (3:2 photos whole, 16:9 keeps its centre)
FORMAT = 3  # cache entry format; a different one is rebuilt
PROCESS_MIN_IMAGES = 256  # below this many images to decode, threads in this process (no pool start-up)
REDUCING_GAP = 2.0  # JPEG draft scale keeps at least this multiple of the target size (PIL's thumbnail default)


def cap_side(s: int) -> int:
    """The longest stored side for short side `s`."""
    return int(round(s * MAX_ASPECT))


# --------------------------------------------------------------------------------------------------
# decoding one image


def _open(data):
    from PIL import Image

    return Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data)


def _upright_size(img) -> tuple[int, int]:
    """(height, width) after the EXIF orientation is applied, from the header alone."""
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is ignored, as exif_transpose does
        orientation = 1
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)  # 5-8 turn the image by 90 degrees


def full_long_side(h: int, w: int, s: int) -> int:
    """The long side of an upright (h, w) image resized to short side `s` (at least s)."""
    return max(s, int(round(max(h, w) * s / min(h, w))))


def fit_pil(img, s: int, cap: int) -> tuple[np.ndarray, tuple[int, int]]:
    """A PIL image -> (uint8 (s, l, 3) with l <= cap, stored orientation; its upright (height, width)).

    EXIF orientation applied; short side to s (bicubic), long side to scale up to `cap`, its centre kept such
    that the central s x s square is the one of the uncapped resize. Portrait images come back transposed.
    """
    from PIL import Image, ImageOps

    if getattr(img, "format", None) == "JPEG" and img.mode in ("RGB", "L", "YCbCr", "CMYK"):
        w, h = img.size
        k = REDUCING_GAP * s / min(w, h)
        if k < 1:
            img.draft(img.mode if img.mode != "YCbCr" else "RGB", (math.ceil(w * k), math.ceil(h * k)))
    img = ImageOps.exif_transpose(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    img = img.convert("RGB")
    w, h = img.size
    full = full_long_side(h, w, s)
    long = min(full, cap)
    off = (full - s) // 2 - (long - s) // 2  # where the kept part starts in the uncapped resize
    if w >= h:
        scale = w / full  # source pixels per output pixel along the long side, as in the uncapped resize
        out = img.resize((long, s), Image.Resampling.BICUBIC, box=(off * scale, 0, (off + long) * scale, h))
        return np.asarray(out, dtype=np.uint8), (s, long)
    scale = h / full
    out = img.resize((s, long), Image.Resampling.BICUBIC, box=(0, off * scale, w, (off + long) * scale))
    return np.asarray(out, dtype=np.uint8).transpose(1, 0, 2), (long, s)


def decode_bytes(data, s: int, cap: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded image (bytes or a binary file) -> `fit_pil` of it."""
    with _open(data) as img:
        return fit_pil(img, s, cap)


def probe(data, s: int) -> int:
    """The uncapped stored long side of an encoded image, from its header (EXIF orientation counted)."""
    with _open(data) as img:
        h, w = _upright_size(img)
    return full_long_side(h, w, s)


# --------------------------------------------------------------------------------------------------
# where encoded files come from


@dataclass(frozen=True)
class Source:
    """Files by name: relative to a folder (or absolute), or members of a zip. Picklable for decoder processes."""

    path: str
    is_zip: bool = False
    key: str = ""  # what names the cache entry when not the path (a CSV list: its own path, not its folder's)

    def open(self, name: str):
        """A binary file object for `name` (a zip member is read whole: ZipFile is not thread-safe)."""
        if self.is_zip:
            with _zip_lock(self.path):
                return io.BytesIO(_zip(self.path).read(name))
        return open(os.path.join(self.path, name), "rb")

    def fingerprints(self, names: list[str]) -> list[list[int]]:
        """Per file what changes when its content does: (size, mtime_ns), or (size, CRC) in a zip."""
        if self.is_zip:
            z = _zip(self.path)
            return [[z.getinfo(n).file_size, z.getinfo(n).CRC] for n in names]
        out = []
        for n in names:
            try:
                st = os.stat(os.path.join(self.path, n))
                out.append([st.st_size, st.st_mtime_ns])
            except OSError:
                out.append([-1, -1])  # missing: read (and reported) at decode time
        return out


_ZIPS: dict[tuple[int, str], zipfile.ZipFile] = {}
_ZIP_LOCKS: dict[str, threading.Lock] = {}


def _zip(path: str) -> zipfile.ZipFile:
    key = (os.getpid(), path)  # a forked worker opens its own handle
    if key not in _ZIPS:
        _ZIPS[key] = zipfile.ZipFile(path)
    return _ZIPS[key]


def _zip_lock(path: str) -> threading.Lock:
    return _ZIP_LOCKS.setdefault(path, threading.Lock())


# --------------------------------------------------------------------------------------------------
# decoding many images into a canvas (an array in memory, or a file)


def _probe_many(source: Source, names: list[str], s: int) -> list[int | str]:
    """Uncapped long side per name, or the error text of an unreadable file."""
    out: list[int | str] = []
    for n in names:
        try:
            with source.open(n) as f:
                out.append(probe(f, s))
        except Exception as e:  # noqa: BLE001 - PIL and the file system raise many types for a bad file
            out.append(f"{type(e).__name__}: {e}")
    return out


def _decode_many(source: Source, names: list[str], rows: list[int], s: int, cap: int, sink) -> list:
    """Decode `names` into canvas rows `rows` of `sink` (an array, or a file path); [h, w] or an error each."""
    out = []
    fd = os.open(sink, os.O_WRONLY) if isinstance(sink, str) else None
    try:
        rec = np.zeros((3, s, cap), np.uint8)
        for n, r in zip(names, rows):
            try:
                with source.open(n) as f:
                    arr, hw = decode_bytes(f, s, cap)
            except Exception as e:  # noqa: BLE001 - PIL and the file system raise many types for a bad file
                out.append(f"{type(e).__name__}: {e}")
                continue
            rec[:] = 0
            rec[:, :, : arr.shape[1]] = arr.transpose(2, 0, 1)
            if fd is None:
                sink[r] = rec
            else:
                os.pwrite(fd, rec.data, r * rec.nbytes)
            out.append(list(hw))
    finally:
        if fd is not None:
            os.close(fd)
    return out


def _pool(processes: int):
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # fork: workers start at once and need only PIL and numpy (no torch calls); spawn where fork is missing
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return ProcessPoolExecutor(processes, mp_context=mp.get_context(method))


def _chunks(n: int, parts: int) -> list[range]:
    size = max(16, math.ceil(n / max(parts * 4, 1)))  # a few chunks per worker: balance without much overhead
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def decode_canvas(source: Source, names: list[str], s: int, sink_factory, processes: int = 1,
                  reuse: dict[int, int] | None = None, copier=None) -> tuple[np.ndarray, dict, int, int]:
    """Decode `names` into a canvas made by `sink_factory(width)`; return (hw (N, 2), {index: error}, width, decoded).

    processes > 1: a fork pool whose workers write into a file sink themselves; else threads in this process.
    `reuse` {index: old row}, copied by `copier(index, old_row)` -> hw instead of decoded, provided no other
    image needs a wider canvas than the old one (`copier.width`); otherwise everything is decoded.
    """
    n = len(names)
    cap = cap_side(s)
    use_pool = processes > 1 and n - len(reuse or {}) >= PROCESS_MIN_IMAGES
    pool = _pool(processes) if use_pool else ThreadPoolExecutor(min(4, os.cpu_count() or 1))
    errors: dict[int, str] = {}
    hw = np.zeros((n, 2), np.int64)

    def run(fn, index, extra):  # fn(source, names of a chunk, *extra(chunk)) on the pool; results in index order
        parts = _chunks(len(index), processes)
        jobs = [pool.submit(fn, source, [names[index[i]] for i in p], *extra(p)) for p in parts]
        return [v for job in jobs for v in job.result()]

    with pool:
        todo = [i for i in range(n) if not reuse or i not in reuse]
        longs = dict(zip(todo, run(_probe_many, todo, lambda p: (s,))))
        widest = max([min(v, cap) for v in longs.values() if not isinstance(v, str)], default=s)
        if reuse and widest > copier.width:  # a new image needs a wider canvas: old rows do not fit
            rest = sorted(reuse)
            longs.update(zip(rest, run(_probe_many, rest, lambda p: (s,))))
            widest = max([min(v, cap) for v in longs.values() if not isinstance(v, str)], default=s)
            reuse, todo = None, list(range(n))
        width = copier.width if reuse else widest
        errors = {i: v for i, v in longs.items() if isinstance(v, str)}
        sink = sink_factory(width)
        ok = [i for i in todo if i not in errors]
        for i, v in zip(ok, run(_decode_many, ok, lambda p: ([ok[i] for i in p], s, width, sink))):
            if isinstance(v, str):
                errors[i] = v
            else:
                hw[i] = v
    for i, old in (reuse or {}).items():
        hw[i] = copier(i, old)
    return hw, errors, width, len(todo)


# --------------------------------------------------------------------------------------------------
# the cache file


class FileImages:
    """A canvas file (N, 3, S, L) uint8 read by rows with `os.preadv` (no memory map, no resident growth)."""

    def __init__(self, path: str | Path, count: int, s: int, width: int):
        self.path, self.count, self.s, self.width = str(path), count, s, width
        self.record = 3 * s * width
        self._fd: int | None = None
        self._pid = -1

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.count, 3, self.s, self.width)

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():  # a forked process opens its own descriptor
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, rows) -> np.ndarray:
        """uint8 (len(rows), 3, S, L) of these rows, in this order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), 3, self.s, self.width), np.uint8)
        fd = self._file()
        flat = out.reshape(len(rows), -1)
        for i, r in enumerate(rows.tolist()):
            got = os.preadv(fd, [flat[i]], r * self.record)
            if got != self.record:
                raise FastRetrainError(f"image cache {self.path} is truncated (row {r}); delete it to rebuild")
        return out

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": -1}

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)


@dataclass
class Decoded:
    """The decoded images of a list of files: `images` (an array (N, 3, S, L) in memory, or FileImages),
    `hw` (N, 2) upright sizes, `errors` {index: text} of unreadable files, `decoded` (how many were decoded now,
    not reused from a cache)."""

    images: object
    hw: np.ndarray
    errors: dict[int, str]
    decoded: int


def decode_in_memory(source: Source, names: list[str], s: int) -> Decoded:
    """Decode `names` into an in-memory canvas (threads)."""
    box: dict[str, np.ndarray] = {}

    def make(width):
        box["x"] = np.zeros((len(names), 3, s, width), np.uint8)
        return box["x"]

    hw, errors, _, decoded = decode_canvas(source, names, s, make, processes=1)
    return Decoded(box["x"], hw, errors, decoded)


def _entry_paths(cache_dir: Path, source: Source, s: int) -> tuple[Path, Path, Path]:
    what = source.key or str(Path(source.path).resolve())
    key = hashlib.sha1(repr((FORMAT, what, s, MAX_ASPECT)).encode()).hexdigest()[:16]
    base = cache_dir / f"images-{key}"
    return base.with_suffix(".u8"), base.with_suffix(".json"), base.with_suffix(".lock")


def _file_id(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _read_meta(meta_path: Path, data_path: Path, s: int) -> dict | None:
    """The entry's metadata when the entry is whole (parses, right format, its data file is the one it names)."""
    try:
        meta = json.loads(meta_path.read_text())
        ok = meta["format"] == FORMAT and meta["s"] == s and meta["data_id"] == _file_id(data_path)
        ok = ok and meta["data_id"][1] == len(meta["names"]) * 3 * s * meta["width"]
        return meta if ok else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def _locked(path: Path):
    try:
        import fcntl
    except ImportError:  # no advisory locks (Windows): concurrent builders still end atomic, just not once
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def default_processes() -> int:
    """Decoder processes for the cache writer: the CPUs this process may use, at most 8 ($FASTRETRAIN_DECODERS)."""
    env = os.environ.get("FASTRETRAIN_DECODERS")
    if env:
        return max(1, int(env))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus))


def cached_decode(source: Source, names: list[str], s: int, cache_dir: str | Path,
                  processes: int | None = None) -> Decoded:
    """The decoded images of `names`, from the cache entry of `source` at size `s` (built or rebuilt as needed)."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    data_path, meta_path, lock_path = _entry_paths(cache_dir, source, s)
    fps = source.fingerprints(names)
    with _locked(lock_path):
        old = _read_meta(meta_path, data_path, s)
        if old is not None and old["names"] == names and old["fingerprints"] == fps:
            return _entry(old, data_path, s, decoded=0)
        for stale in cache_dir.glob(data_path.name + ".tmp-*"):  # left by a builder that died (we hold the lock)
            stale.unlink(missing_ok=True)
        tmp = data_path.with_name(f"{data_path.name}.tmp-{os.getpid()}")
        reuse, copier = _reusable(old, data_path, names, fps, s, tmp)

        todo = len(names) - len(reuse or {})
        if todo >= PROCESS_MIN_IMAGES:  # minutes for a large collection: say what is happening
            print(f"decoding {todo} images of {source.key or source.path} into the cache in {cache_dir}", flush=True)

        def make(width):
            with open(tmp, "wb") as f:
                f.truncate(len(names) * 3 * s * width)  # sparse until written; rows of bad files stay zero
            return str(tmp)

        try:
            hw, errors, width, decoded = decode_canvas(source, names, s, make, processes or default_processes(), reuse,
                                                       copier)  # fmt: skip
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, data_path)
        finally:
            tmp.unlink(missing_ok=True)
            if copier is not None:
                copier.close()
        meta = {"format": FORMAT, "source": source.path, "s": s, "width": width, "names": names,
                "fingerprints": fps, "hw": hw.tolist(), "errors": {str(k): v for k, v in errors.items()},
                "data_id": _file_id(data_path)}
        tmp_meta = meta_path.with_name(f"{meta_path.name}.tmp-{os.getpid()}")
        tmp_meta.write_text(json.dumps(meta))
        os.replace(tmp_meta, meta_path)
        return _entry(meta, data_path, s, decoded=decoded)


class _RowCopier:
    """Copies rows of unchanged files from the previous entry into the new file (same canvas width)."""

    def __init__(self, old: FileImages, old_hw: list, new_path: Path):
        self.old, self.old_hw, self.width = old, old_hw, old.width
        self.new_path = new_path
        self._fd: int | None = None

    def __call__(self, index: int, old_row: int) -> list[int]:
        if self._fd is None:
            self._fd = os.open(self.new_path, os.O_WRONLY)
        os.pwrite(self._fd, self.old.read([old_row]).data, index * self.old.record)
        return self.old_hw[old_row]

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _reusable(old, data_path, names, fps, s, tmp):
    """({new index: old row}, copier) for files unchanged since the previous entry, or (None, None)."""
    if old is None:
        return None, None
    before = {n: (i, fp) for i, (n, fp) in enumerate(zip(old["names"], old["fingerprints"]))}
    errs = {int(k) for k in old["errors"]}
    reuse = {}
    for i, (n, fp) in enumerate(zip(names, fps)):
        j = before.get(n)
        if j is not None and j[1] == fp and j[0] not in errs:
            reuse[i] = j[0]
    if not reuse:
        return None, None
    return reuse, _RowCopier(FileImages(data_path, len(old["names"]), s, old["width"]), old["hw"], tmp)


def _entry(meta: dict, data_path: Path, s: int, decoded: int) -> Decoded:
    images = FileImages(data_path, len(meta["names"]), s, meta["width"])
    hw = np.asarray(meta["hw"], dtype=np.int64).reshape(-1, 2)
    return Decoded(images, hw, {int(k): v for k, v in meta["errors"].items()}, decoded)
