"""Evaluation a user can act on: per-class precision, recall, F1 and support, top-k accuracy and the
confusion matrix (CSV and a PNG with class names), computed with torchmetrics from a model's logits.

Definitions (torchmetrics' multiclass metrics, the prediction of an image being its arg-max class):
precision_c = TP_c / (TP_c + FP_c), recall_c = TP_c / (TP_c + FN_c), F1_c their harmonic mean, each 0 where
its denominator is 0 (a class never predicted has precision 0); support_c = the number of images of class c;
top-k accuracy = the fraction of images whose class is among the k highest logits; macro = the plain mean
over classes, weighted = the mean weighted by support. The confusion matrix has one row per true class and
one column per predicted class.

Used at the end of `fastretrain train` (the test split, best-by-validation weights, in RUN/test_report/) and
by `fastretrain eval`.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .checkpoint import atomic_json
from .errors import FastRetrainError

REPORT_FILES = ("metrics.json", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png")


@torch.no_grad()
def collect_logits(model: torch.nn.Module, data, image_size: int, norm, device, batch_size: int = 64,
                   tta: bool = False) -> torch.Tensor:  # fmt: skip
    """Logits (N, C) float32 on the CPU of `model` in eval mode on ImageTensors `data`, in order.

    The images go through the engine's evaluation transform (`ImageTensors.prepare(..., train=False)`).
    `tta`: flip averaging (`predict.tta_logits`, log of the mean softmax of each image and its horizontal flip).
    """
    from .predict import tta_logits

    was = model.training
    model.eval()
    out = []
    for idx in torch.arange(len(data)).split(batch_size):
        x, _ = data.prepare(idx, False, image_size, norm, None, device)
        out.append((tta_logits(model, x) if tta else model(x).float()).cpu())
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, 0)


def classification_report(
    logits: torch.Tensor, targets: torch.Tensor, classes: list[str], topk: int = 5
) -> dict[str, Any]:
    """Loss, accuracy, top-k accuracy, per-class precision/recall/F1/support and the confusion matrix.

    Args:
        logits: (N, C) scores; the prediction is the arg-max.
        targets: (N,) true class indices.
        topk: also report top-k accuracy for this k when k < C (top-C accuracy is always 1).
    """
    from torchmetrics.functional import classification as M

    n, c = len(targets), len(classes)
    if n == 0:
        raise FastRetrainError("no images to evaluate")
    if logits.shape != (n, c):
        raise FastRetrainError(f"logits of shape {tuple(logits.shape)} do not fit {n} images and {c} classes")
    logits, targets = logits.float(), targets.long()
    args = dict(num_classes=c, validate_args=False)
    metrics = (("precision", M.multiclass_precision), ("recall", M.multiclass_recall), ("f1", M.multiclass_f1_score))
    per = {name: fn(logits, targets, average=None, **args) for name, fn in metrics}
    cm = M.multiclass_confusion_matrix(logits, targets, **args)  # (C, C): rows true, columns predicted
    support = cm.sum(1)
    ks = sorted({1} | ({topk} if 1 < topk < c else set()))
    report = {
        "images": n,
        "loss": float(F.cross_entropy(logits, targets)),
        "accuracy": float(M.multiclass_accuracy(logits, targets, average="micro", top_k=1, **args)),
        "top_k_accuracy": {
            str(k): float(M.multiclass_accuracy(logits, targets, average="micro", top_k=k, **args)) for k in ks
        },
        "classes": list(classes),
        "per_class": [
            {"class": name, **{m: float(per[m][i]) for m in per}, "support": int(support[i])}
            for i, name in enumerate(classes)
        ],
        "confusion_matrix": cm.tolist(),
    }
    for avg in ("macro", "weighted"):
        report[avg] = {name: float(fn(logits, targets, average=avg, **args)) for name, fn in metrics}
    return report


def report_text(report: dict[str, Any]) -> str:
    """The per-class table with the averages and the accuracy lines, for the terminal."""
    width = max(12, *(len(r["class"]) for r in report["per_class"]))
    lines = [f"{'class':<{width}}  precision  recall      f1  support"]
    for r in report["per_class"]:
        lines.append(
            f"{r['class']:<{width}}  {r['precision']:9.4f}  {r['recall']:6.4f}  {r['f1']:6.4f}  {r['support']:7d}"
        )
    for avg in ("macro", "weighted"):
        a = report[avg]
        lines.append(
            f"{avg + ' avg':<{width}}  {a['precision']:9.4f}  {a['recall']:6.4f}  {a['f1']:6.4f}  {report['images']:7d}"
        )
    topk = ", ".join(f"top-{k} {v:.4f}" for k, v in report["top_k_accuracy"].items() if k != "1")
    lines.append(f"accuracy {report['accuracy']:.4f}" + (f" ({topk})" if topk else "") +
                 f" on {report['images']} images, loss {report['loss']:.4f}")  # fmt: skip
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path, title: str = "", extra: dict | None = None) -> Path:
    """metrics.json, per_class.csv, confusion_matrix.csv and confusion_matrix.png in folder `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_json({**(extra or {}), **report}, out / "metrics.json")
    with open(out / "per_class.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["class", "precision", "recall", "f1", "support"])
        for r in report["per_class"]:
            w.writerow([r["class"], f"{r['precision']:.6f}", f"{r['recall']:.6f}", f"{r['f1']:.6f}", r["support"]])
    with open(out / "confusion_matrix.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *report["classes"]])
        for name, row in zip(report["classes"], report["confusion_matrix"]):
            w.writerow([name, *row])
    plot_confusion(report["confusion_matrix"], report["classes"], out / "confusion_matrix.png", title)
    return out


def plot_confusion(cm, classes: list[str], path: Path, title: str = "") -> None:
    """The confusion matrix as a PNG: cells coloured by the fraction of their row (the true class), with counts."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

    cm = torch.as_tensor(cm, dtype=torch.float64)
    c = len(classes)
    frac = cm / cm.sum(1, keepdim=True).clamp(min=1)
    side = min(4 + 0.45 * c, 30)
    label = 0.09 * max(len(n) for n in classes) + 0.6  # inches the class names and axis label take
    width, height = side + label + 1.6, side + label
    # fixed margins from the label lengths (one draw; tight_layout would lay the figure out twice): the colour
    # bar and its label take the 1.6 inches on the right
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=label / width, bottom=label / height, right=1 - 0.9 / width, top=1 - 0.5 / height)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(frac.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(c), classes, rotation=45 if c > 3 else 0, ha="right" if c > 3 else "center")
    ax.set_yticks(range(c), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    if c <= 30:  # beyond that the numbers do not fit in the cells
        for i in range(c):
            for j in range(c):
                ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                        color="white" if frac[i, j] > 0.5 else "black")  # fmt: skip
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------------------------------
# `fastretrain eval`


def _remap(images, data_classes: list[str], classes: list[str], what: str):
    """ImageTensors with labels renumbered from `data_classes` to the run's `classes` (matched by name)."""
    if list(data_classes) == list(classes):
        return images
    index = {c: i for i, c in enumerate(classes)}
    unknown = [c for c in data_classes if c not in index]
    if unknown:
        raise FastRetrainError(f"{what} has classes the run does not know: {', '.join(unknown[:5])} "
                               f"(the run's: {', '.join(classes[:10])})")  # fmt: skip
    table = torch.tensor([index[c] for c in data_classes])
    return images.with_labels(table[images.y])


def _legacy_predictor(run: Path, cfg, classes: list[str], which: str, device):
    """A Predictor for a run folder written before model.json existed, from its config and the data's classes."""
    from safetensors.torch import load_file

    from .artifacts import model_spec
    from .models import create_model, normalization
    from .predict import Predictor
    from .run import model_kwargs

    weights = run / f"model_{which}.safetensors"
    if not weights.is_file():
        raise FastRetrainError(f"weights not found: {weights}")
    model = create_model(cfg.model, len(classes), **model_kwargs(cfg))
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as e:
        raise FastRetrainError(
            f"{weights} does not fit {cfg.model} with {len(classes)} classes: {str(e).splitlines()[0]}"
        ) from e
    return Predictor(model, model_spec(cfg, classes, normalization(model)), device, str(weights))


def evaluate_run(run: str | Path, which: str = "best", data: str | None = None, device: str | None = None,
                 topk: int = 5, batch_size: int = 64, tta: bool = False,
                 ) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """(report, facts) of a run's weights on its own test split, or on `data`; `tta`: with flip averaging.

    `data` may be a named dataset, an .npz, or a folder/zip with a test split (its test split is used), or a
    folder/zip of class folders only (all its images are used; a folder name is the class, matched to the
    run's class names). Without `data`: the run's own test split (its test fraction, split seed, ...).
    """
    from .artifacts import MODEL_JSON
    from .config import TrainConfig
    from .data import load_data
    from .predict import find_images, load_model, predict_sources
    from .integrity import check_run_folder
    from .run import resolve_device

    run = Path(run)
    check_run_folder(run)  # one run's files, and a finished epoch (also for folders without model.json)
    cfg = TrainConfig.load(run / "config.json") if (run / "config.json").is_file() else None
    if cfg is None and not (run / MODEL_JSON).is_file():
        raise FastRetrainError(f"not a run folder (no config.json or {MODEL_JSON}): {run}")
    if data is None and cfg is None:
        raise FastRetrainError(f"{run} has no config.json naming its data: give --data")
    dev = resolve_device(device or (cfg.device if cfg else "auto"))
    predictor = load_model(run, which, dev, tta=tta) if (run / MODEL_JSON).is_file() else None
    facts: dict[str, Any] = {"run": str(run), "data": data or cfg.data, "test_set_id": None, "val_acc": None,
                             "tta": "flip" if tta else None}  # fmt: skip
    if data is not None and predictor is not None and Path(data).exists() and not Path(data).suffix.lower() == ".npz":
        sources, bad = find_images([data], predictor.classes)
        if sources and all(s.label is not None for s in sources):  # a labelled folder: every image is evaluated
            for name, why in bad:
                print(f"skipped {name}: {why}", file=sys.stderr)
            res = predict_sources(predictor, sources, batch_size, progress=True, unreadable=bad)
            if not res.names:
                raise FastRetrainError(f"none of the {len(sources)} image file(s) in {data} could be read")
            facts.update(split="all images (class = folder name)", unreadable=len(res.unreadable))
            report = classification_report(res.logits, res.labels, predictor.classes, topk)
            return report, {**facts, "weights": Path(predictor.weights).name}
    if data is None:  # the run's own splits, drawn as training drew them
        splits = dict(max_train=cfg.max_train, val_fraction=cfg.val_fraction)
        bundle = load_data(
            cfg.data, cfg.image_size, cfg.test_fraction, cfg.split_seed, cfg.skip_bad_images, cfg.data_root, **splits
        )
    else:
        size = predictor.image_size if predictor else cfg.image_size
        split = (cfg.test_fraction, cfg.split_seed) if cfg else (0.2, 0)
        bundle = load_data(data, size, *split, skip_bad=True, data_root=cfg.data_root if cfg else None)
    if predictor is None:
        predictor = _legacy_predictor(run, cfg, bundle.classes, which, dev)
    test = _remap(bundle.test, bundle.classes, predictor.classes, f"data {facts['data']}")
    how = (predictor.image_size, predictor.norm, predictor.device, batch_size, tta)
    logits = collect_logits(predictor.model, test, *how)
    report = classification_report(logits, test.y, predictor.classes, topk)
    if data is None and bundle.val is not None:
        val = _remap(bundle.val, bundle.classes, predictor.classes, "validation split")
        vl = collect_logits(predictor.model, val, *how)
        facts["val_acc"] = float((vl.argmax(1) == val.y).double().mean())
    facts.update(split="test", test_set_id=bundle.test_set_id, weights=Path(predictor.weights).name)
    return report, facts


def eval_command(args) -> int:
    """`fastretrain eval --run RUN [--which best|final] [--data PATH] [--topk K] [--out DIR] [--json]`."""
    tta = getattr(args, "tta", False)
    report, facts = evaluate_run(args.run, args.which, args.data, args.device, args.topk, args.batch_size, tta)
    name = (
        ""
        if args.data is None
        else "_" + "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(args.data).name)
    )
    name += "_tta" if tta else ""
    out = Path(args.out) if args.out else Path(args.run) / f"eval_{args.which}{name}"
    title = f"{facts['weights']} on {facts['data']} ({facts['split']}{', TTA flip' if tta else ''})"
    write_report(report, out, title, facts)
    if args.json:
        print(json.dumps({**facts, "test_images": report["images"], "test_loss": round(report["loss"], 6),
                          "test_acc": round(report["accuracy"], 6), "top_k_accuracy": report["top_k_accuracy"],
                          "macro_f1": round(report["macro"]["f1"], 6), "report": str(out)}))  # fmt: skip
    else:
        where = f", test set {facts['test_set_id']}" if facts.get("test_set_id") else ""
        tta_text = ", TTA: mean softmax of each image and its horizontal flip" if tta else ""
        print(f"{facts['weights']} of {facts['run']} on {facts['data']} ({facts['split']}{where}{tta_text}):")
        print(report_text(report))
        if facts.get("val_acc") is not None:
            print(f"validation accuracy {facts['val_acc']:.4f}")
        print(f"per-class metrics and confusion matrix: {out}/")
    return 0
