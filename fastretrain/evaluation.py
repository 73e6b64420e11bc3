"""Evaluation a user can act on: per-class precision, recall, F1 and support, top-k accuracy and the
confusion matrix (CSV and a PNG with class names), computed with torchmetrics from a model's logits.

Definitions (torchmetrics' multiclass metrics, the prediction of an image being its arg-max class):
precision_c = TP_c / (TP_c + FP_c), recall_c = TP_c / (TP_c + FN_c), F1_c their harmonic mean, each 0 where
its denominator is 0 (a class never predicted has precision 0); support_c = the number of images of class c;
top-k accuracy = the fraction of images whose class is among the k highest logits; macro = the plain mean
over classes, weighted = the mean weighted by support. The confusion matrix has one row per true class and
one column per predicted class.

Used at the end of `fastretrain train` (the test split, best-by-validation weights, in RUN/test_report/) and
by `fastretrain eval` (eval_run.py). `tta_logits` (flip averaging) serves both and the Predictor.
"""

from __future__ import annotations

import csv
import math
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
    `tta`: flip averaging (`tta_logits`, log of the mean softmax of each image and its horizontal flip).
    """
    was = model.training
    model.eval()
    out = []
    for idx in torch.arange(len(data)).split(batch_size):
        x, _ = data.prepare(idx, False, image_size, norm, None, device)
        out.append((tta_logits(model, x) if tta else model(x).float()).cpu())
    model.train(was)
    return torch.cat(out) if out else torch.zeros(0, 0)


def tta_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Test-time augmentation by flip averaging: log of the mean softmax of `model` on the preprocessed batch `x`
    (B, 3, H, W) and on its horizontal flip, float32 (B, C).

    Returned as log-probabilities so that everything downstream of logits works unchanged: their softmax is the
    mean probability, their arg-max the TTA prediction, their cross-entropy -log of the mean probability.
    """
    logp = torch.stack([torch.log_softmax(model(v).float(), 1) for v in (x, x.flip(3))])  # (2, B, C)
    return torch.logsumexp(logp, 0) - math.log(len(logp))


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
