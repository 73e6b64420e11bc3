"""`fastretrain eval`: a run folder's weights on its own test split (drawn again as training drew it) or on other
data, as per-class metrics, top-k accuracy and the confusion matrix (evaluation.py), optionally with flip TTA.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .artifacts import MODEL_JSON, model_spec
from .config import TrainConfig
from .data import load_data
from .distributed import resolve_device
from .errors import FastRetrainError
from .evaluation import classification_report, collect_logits, report_text, write_report
from .integrity import check_run_folder
from .models import create_model, model_kwargs, normalization
from .predict import Predictor, find_images, load_model, predict_sources


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
