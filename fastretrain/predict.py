"""Use a fine-tuned model: load a run folder as a model bundle and classify new images.

`load_model(run)` rebuilds the model from the run's model.json (model name, constructor arguments, class
names) and weights, in eval mode, and returns a `Predictor` whose preprocessing is the training run's
evaluation transform, reused from data.py: `decode_image` brings an image to the stored square exactly as
training images were (files and PIL images as an image folder, arrays as `from_arrays`), then
`prepare_images(train=False)` takes the centre crop and normalises. The same image therefore gives the same
logits as the engine's evaluation of it.

`fastretrain predict` runs a Predictor over image files, folders (recursively) and zips in batches, with
the decoding of the next batch overlapping the model's work on this one (timm's `inference.py` does the
same with a DataLoader). Unreadable files are named and skipped. A folder (or zip) whose sub-folders are all
class names of the run is labelled: each image's class is its sub-folder, and accuracy is reported.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .artifacts import read_spec
from .data import IMAGE_EXTS, decode_image, prepare_images
from .distributed import resolve_device
from .errors import FastRetrainError
from .evaluation import tta_logits
from .integrity import check_run_folder
from .models import create_model


@dataclass
class Prediction:
    """The top-k classes of one image, most probable first, and their softmax probabilities."""

    classes: list[str]
    probs: list[float]

    @property
    def label(self) -> str:
        """The predicted class."""
        return self.classes[0]


class Predictor:
    """A run's model in eval mode with its preprocessing and class names.

    Attributes:
        model: the nn.Module, in eval mode, on `device`.
        classes: class names; logit i is class `classes[i]`.
        spec: the run's model.json.
        weights: the weight file it was loaded from.
        tta: average the softmax over each image and its horizontal flip (`tta_logits`): the "logits" are then
            log-probabilities.
    """

    def __init__(
        self, model: torch.nn.Module, spec: dict[str, Any], device: torch.device | str = "cpu", weights: str = "",
        tta: bool = False,
    ):
        self.spec = spec
        self.classes: list[str] = list(spec["classes"])
        pre = spec["preprocessing"]
        self.image_size: int = int(pre["image_size"])
        self.store_size: int = int(pre["store_size"])
        self.norm = (tuple(pre["mean"]), tuple(pre["std"]))
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.weights = weights
        self.tta = tta

    def decode(self, image) -> torch.Tensor:
        """One image (path, bytes, PIL image or array) -> uint8 (3, S, S) as training stored it."""
        if isinstance(image, (str, Path)):
            try:
                image = Path(image).read_bytes()
            except OSError as e:
                raise FastRetrainError(f"cannot read image {image}: {e.strerror or e}") from e
        return decode_image(image, self.store_size)

    def _images(self, images) -> list:
        """A single image or a sequence of them -> a list; a 4-d array or tensor is a batch (N, ...)."""
        if isinstance(images, (np.ndarray, torch.Tensor)):
            return list(images) if images.ndim == 4 else [images]
        if isinstance(images, (str, Path, bytes)) or not isinstance(images, Sequence):
            return [images]
        return list(images)

    @torch.inference_mode()
    def logits_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) float32 on the CPU of stored-size uint8 images (B, 3, S, S) (with `tta`: flip-averaged
        log-probabilities)."""
        x = prepare_images(x.to(self.device), False, self.image_size, self.norm)  # (B, 3, size, size)
        return (tta_logits(self.model, x) if self.tta else self.model(x).float()).cpu()

    def logits(self, images, batch_size: int = 64) -> torch.Tensor:
        """Logits (N, C) float32 on the CPU of images: paths, PIL images, uint8 arrays (or a list of them)."""
        items = self._images(images)
        out = [self.logits_uint8(torch.stack([self.decode(im) for im in items[i : i + batch_size]]))
               for i in range(0, len(items), batch_size)]  # fmt: skip
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def predict(self, images, topk: int = 1, batch_size: int = 64) -> list[Prediction]:
        """The top-k classes of each image (paths, PIL images or uint8 arrays; one or a list)."""
        return [Prediction(c, p) for c, p in top_classes(self.logits(images, batch_size), self.classes, topk)]


def top_classes(logits: torch.Tensor, classes: list[str], k: int) -> list[tuple[list[str], list[float]]]:
    """Per row: the k most probable classes (highest first) and their softmax probabilities."""
    probs = torch.softmax(logits.double(), 1)
    p, i = probs.topk(min(k, len(classes)), dim=1)  # sorted, highest first
    return [([classes[j] for j in row_i], [float(v) for v in row_p]) for row_i, row_p in zip(i.tolist(), p)]


def load_model(
    run: str | Path, which: str = "best", device: str | torch.device = "cpu", tta: bool = False
) -> Predictor:
    """Load a run folder as a model: the `model_best` or `model_final` weights, in eval mode.

    Returns a Predictor: `.model` is the nn.Module, `.predict(images, topk)` classifies PIL images, paths
    or uint8 arrays, `.logits(images)` gives the raw scores, `.classes` the class names. `tta`: average the
    softmax over each image and its horizontal flip (`tta_logits`). A folder whose files come from different runs,
    or whose run never finished an epoch, is refused (`integrity.check_run_folder`).
    """
    from safetensors.torch import load_file

    run = Path(run)
    check_run_folder(run)  # one run's files, and a finished epoch (integrity.py)
    spec = read_spec(run)
    if spec.get("custom_model"):
        raise FastRetrainError(f"{run} trained a model given in Python (build_engine(module=...)); build that "
                               f"model and load {run}/model_{which}.safetensors into it")  # fmt: skip
    if which not in spec["weights"]:
        raise FastRetrainError(f"which must be one of {', '.join(spec['weights'])}; got {which!r}")
    weights = run / spec["weights"][which]
    if not weights.is_file():
        raise FastRetrainError(f"weights not found: {weights}")
    model = create_model(spec["model"], spec["num_classes"], **spec.get("model_kwargs", {}))
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as e:
        raise FastRetrainError(f"{weights} does not fit {spec['model']} with {spec['num_classes']} classes: "
                               f"{str(e).splitlines()[0]}") from e  # fmt: skip
    dev = resolve_device(device) if isinstance(device, str) else device
    return Predictor(model, spec, dev, str(weights), tta=tta)


# --------------------------------------------------------------------------------------------------
# image files, folders and zips


@dataclass
class ImageSource:
    """One image to classify: its name in reports, how to read its bytes, its class index if labelled."""

    name: str
    read: Callable[[], bytes]
    label: int | None = None


def _visible(rel: str) -> bool:
    return not any(part.startswith((".", "__MACOSX")) for part in rel.split("/"))


def _labels(rel: list[str], classes: list[str] | None) -> list[int] | None:
    """Class indices from the first folder of each relative path when every image sits in a folder named
    after a class (single wrapping folders, as in a zip of a folder, are looked through); else None."""
    if not classes or not rel:
        return None
    index = {c: i for i, c in enumerate(classes)}
    prefix = ""
    while True:
        rest = [r[len(prefix) :] for r in rel]
        if any("/" not in r for r in rest):
            return None  # an image outside any class folder
        tops = {r.split("/", 1)[0] for r in rest}
        if len(tops) == 1 and next(iter(tops)) not in index:
            prefix += next(iter(tops)) + "/"
            continue
        if not tops <= index.keys():
            return None
        return [index[r.split("/", 1)[0]] for r in rest]


def find_images(
    paths: Sequence[str | Path], classes: list[str] | None = None
) -> tuple[list[ImageSource], list[tuple[str, str]]]:
    """(images, unreadable) under `paths`: image files, folders (recursively) and zip files.

    A file named directly is tried whatever its extension; inside folders and zips, files with an image
    extension are taken. A folder or zip is labelled when all its images sit in class-named folders.
    Unreadable zips are returned as (path, reason) pairs.
    """
    sources: list[ImageSource] = []
    bad: list[tuple[str, str]] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FastRetrainError(f"not found: {p}")
        if p.is_file() and p.suffix.lower() == ".zip":
            try:
                zf = zipfile.ZipFile(p)
            except (zipfile.BadZipFile, OSError) as e:
                bad.append((str(p), f"not a readable zip file ({e})"))
                continue
            lock = threading.Lock()  # ZipFile is not thread-safe

            def read(name, zf=zf, lock=lock):
                with lock:
                    return zf.read(name)

            rel = sorted(
                n for n in zf.namelist() if not n.endswith("/") and _visible(n) and Path(n).suffix.lower() in IMAGE_EXTS
            )
            labels = _labels(rel, classes) or [None] * len(rel)
            sources += [ImageSource(f"{p}/{n}", lambda n=n, read=read: read(n), y) for n, y in zip(rel, labels)]
        elif p.is_file():
            sources.append(ImageSource(str(p), p.read_bytes))
        else:
            files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTS)
            rel = [f.relative_to(p).as_posix() for f in files]
            keep = [i for i, r in enumerate(rel) if _visible(r)]
            files, rel = [files[i] for i in keep], [rel[i] for i in keep]
            labels = _labels(rel, classes) or [None] * len(rel)
            sources += [ImageSource(str(f), f.read_bytes, y) for f, y in zip(files, labels)]
    return sources, bad


def _decode_source(src: ImageSource, s: int):
    try:
        return decode_image(src.read(), s)
    except Exception as e:  # noqa: BLE001 - PIL and zipfile raise many types for a bad file
        return e


def decoded_batches(sources: list[ImageSource], s: int, batch_size: int, workers: int | None = None) -> Iterator:
    """Yield (sources, uint8 (B, 3, s, s) or None, [(name, reason) of unreadable ones]) per batch.

    Decoding runs in a thread pool one batch ahead of the caller (PIL releases the GIL while decoding).
    """
    workers = workers or min(4, os.cpu_count() or 1)
    chunks = [sources[i : i + batch_size] for i in range(0, len(sources), batch_size)]
    with ThreadPoolExecutor(workers) as pool:
        ahead = [pool.submit(_decode_source, src, s) for src in chunks[0]] if chunks else []
        for i, chunk in enumerate(chunks):
            futures = ahead
            if i + 1 < len(chunks):
                ahead = [pool.submit(_decode_source, src, s) for src in chunks[i + 1]]
            results = [f.result() for f in futures]
            ok = [(src, r) for src, r in zip(chunk, results) if torch.is_tensor(r)]
            bad = [(src.name, _reason(r)) for src, r in zip(chunk, results) if not torch.is_tensor(r)]
            yield [src for src, _ in ok], (torch.stack([r for _, r in ok]) if ok else None), bad


def _reason(e: Exception) -> str:
    """One line on why a file could not be decoded (PIL names a BytesIO object where the file name would be)."""
    text = re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", (str(e).splitlines() or [""])[0])
    return text or type(e).__name__


@dataclass
class Predictions:
    """What a prediction over files gives: rows in file order (unreadable files left out)."""

    names: list[str]
    logits: torch.Tensor  # (N, C)
    labels: torch.Tensor  # (N,) class index, -1 where unlabelled
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def labelled(self) -> torch.Tensor:
        return self.labels >= 0

    def accuracy(self, k: int = 1) -> float | None:
        """Top-k accuracy over the labelled images (None when none is labelled)."""
        from torchmetrics.functional.classification import multiclass_accuracy

        m = self.labelled
        if not bool(m.any()):
            return None
        c = self.logits.shape[1]  # the same computation as `fastretrain eval` (evaluation.classification_report)
        return float(
            multiclass_accuracy(
                self.logits[m], self.labels[m], c, average="micro", top_k=min(k, c), validate_args=False
            )
        )


def predict_sources(predictor: Predictor, sources: list[ImageSource], batch_size: int = 64, progress: bool = False,
                    unreadable: list | None = None) -> Predictions:  # fmt: skip
    """Logits of every readable image of `sources`, in batches; unreadable ones are listed, not raised."""
    from tqdm.auto import tqdm

    names, logits, labels, bad = [], [], [], list(unreadable or [])
    bar = tqdm(total=len(sources), unit="img", desc="predict", leave=False, dynamic_ncols=True,
               disable=not (progress and sys.stderr.isatty() and len(sources) > batch_size))  # fmt: skip
    t0 = time.perf_counter()
    try:
        for chunk, x, chunk_bad in decoded_batches(sources, predictor.store_size, batch_size):
            for name, why in chunk_bad:
                print(f"skipped unreadable image {name}: {why}", file=sys.stderr)
            bad += chunk_bad
            if x is not None:
                logits.append(predictor.logits_uint8(x))
                names += [s.name for s in chunk]
                labels += [-1 if s.label is None else s.label for s in chunk]
            bar.update(len(chunk) + len(chunk_bad))
    finally:
        bar.close()
    out = torch.cat(logits) if logits else torch.zeros(0, len(predictor.classes))
    return Predictions(names, out, torch.tensor(labels, dtype=torch.long), bad, time.perf_counter() - t0)


def predict_files(
    predictor: Predictor, paths: Sequence[str | Path], batch_size: int = 64, progress: bool = False
) -> Predictions:
    """Predict every image under `paths` (files, folders, zips); raise if there is none or none is readable."""
    sources, bad = find_images(paths, predictor.classes)
    for name, why in bad:
        print(f"skipped {name}: {why}", file=sys.stderr)
    if not sources:
        raise FastRetrainError(
            f"no images found in {', '.join(map(str, paths))} (extensions: {', '.join(sorted(IMAGE_EXTS))})"
        )
    res = predict_sources(predictor, sources, batch_size, progress, bad)
    if not res.names:
        raise FastRetrainError(
            f"none of the {len(sources)} image file(s) could be read (first: {res.unreadable[0][0]})"
        )
    return res


# --------------------------------------------------------------------------------------------------
# output


def prediction_rows(res: Predictions, classes: list[str], topk: int) -> list[dict[str, Any]]:
    rows = []
    for name, label, (cls, probs) in zip(res.names, res.labels.tolist(), top_classes(res.logits, classes, topk)):
        row = {"path": name, "true_class": classes[label] if label >= 0 else None}
        row["topk"] = [{"class": c, "prob": p} for c, p in zip(cls, probs)]
        rows.append(row)
    return rows


def write_predictions(rows: list[dict[str, Any]], out, meta: dict[str, Any]) -> None:
    """Rows as CSV (path, [true_class], class_1, prob_1, ...) to a .csv file or a stream, or as JSON (.json)."""
    if isinstance(out, (str, Path)) and Path(out).suffix.lower() == ".json":
        Path(out).write_text(json.dumps({**meta, "predictions": rows}, indent=1) + "\n")
        return
    k = max((len(r["topk"]) for r in rows), default=0)
    labelled = any(r["true_class"] is not None for r in rows)
    header = (
        ["path"]
        + (["true_class"] if labelled else [])
        + [f"{w}_{i}" for i in range(1, k + 1) for w in ("class", "prob")]
    )
    f = open(out, "w", newline="") if isinstance(out, (str, Path)) else out
    try:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            top = [v for t in r["topk"] for v in (t["class"], f"{t['prob']:.6f}")]
            w.writerow([r["path"]] + ([r["true_class"] or ""] if labelled else []) + top)
    finally:
        if f is not out:
            f.close()


def predict_command(args) -> int:
    """`fastretrain predict --run RUN PATH... [--topk K] [--out FILE] [--batch-size B] [--device D]`."""
    if args.out and Path(args.out).suffix.lower() not in (".csv", ".json"):
        raise FastRetrainError(f"--out must end in .csv or .json, got {args.out}")
    if args.topk < 1 or args.batch_size < 1:
        raise FastRetrainError("--topk and --batch-size must be >= 1")
    predictor = load_model(args.run, args.which, args.device, tta=getattr(args, "tta", False))
    res = predict_files(predictor, args.paths, args.batch_size, progress=True)
    rows = prediction_rows(res, predictor.classes, args.topk)
    meta = {"run": str(args.run), "weights": Path(predictor.weights).name, "classes": predictor.classes,
            "tta": "flip" if predictor.tta else None,
            "unreadable": [{"path": n, "error": e} for n, e in res.unreadable]}  # fmt: skip
    n_lab = int(res.labelled.sum())
    if n_lab:
        meta.update(labelled_images=n_lab, accuracy=res.accuracy(1))
        meta[f"top{args.topk}_accuracy"] = res.accuracy(args.topk)
    write_predictions(rows, args.out or sys.stdout, meta)
    say = sys.stderr  # the rows may be on stdout
    n = len(res.names)
    speed = f"{n / max(res.seconds, 1e-9):.1f} images/s, batch {args.batch_size}, {predictor.device}"
    tta = " (TTA: mean softmax of each image and its flip)" if predictor.tta else ""
    print(f"predicted {n} image(s) in {res.seconds:.1f}s ({speed}) with {meta['weights']}{tta}"
          + (f" -> {args.out}" if args.out else ""), file=say)  # fmt: skip
    if res.unreadable:
        print(f"{len(res.unreadable)} unreadable file(s) skipped (named above)", file=say)
    if n_lab:
        correct = round(res.accuracy(1) * n_lab)
        top = f", top-{args.topk} {res.accuracy(args.topk):.4f}" if args.topk > 1 else ""
        print(f"accuracy {res.accuracy(1):.4f} ({correct}/{n_lab} labelled images: folder name = class{top})", file=say)
    return 0
