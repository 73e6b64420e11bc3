"""Per-class metrics against a hand computation on a small fixed example; the report files; the end-of-train
report equals the engine's own test accuracy at the best epoch."""

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from fastretrain import train
from fastretrain.data import carve_validation
from fastretrain.evaluation import classification_report, report_text, write_report

CLASSES = ["cat", "dog", "fox", "owl"]
# (true class, arg-max class, second-highest class) of 10 images; owl is never predicted
ROWS = [(0, 0, 1), (0, 0, 2), (0, 1, 0), (1, 1, 0), (1, 2, 3), (2, 2, 1), (2, 2, 0), (2, 0, 2), (3, 2, 3), (3, 1, 0)]


def _example():
    logits = torch.zeros(len(ROWS), 4)
    for i, (_, first, second) in enumerate(ROWS):
        logits[i, first], logits[i, second] = 3.0, 2.0
    return logits, torch.tensor([t for t, _, _ in ROWS])


def test_per_class_metrics_match_a_hand_computation():
    r = classification_report(*_example(), CLASSES, topk=2)
    # confusion matrix by hand (rows true, columns predicted)
    assert r["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [1, 0, 2, 0], [0, 1, 1, 0]]
    # TP = diagonal (2, 1, 2, 0); predicted counts = column sums (3, 3, 4, 0); support = row sums (3, 2, 3, 2)
    precision = [2 / 3, 1 / 3, 2 / 4, 0.0]  # owl: 0/0 counts as 0
    recall = [2 / 3, 1 / 2, 2 / 3, 0.0]
    f1 = [2 * p * q / (p + q) if p + q else 0.0 for p, q in zip(precision, recall)]  # 2/3, 0.4, 4/7, 0
    support = [3, 2, 3, 2]
    for i, row in enumerate(r["per_class"]):
        assert row["class"] == CLASSES[i] and row["support"] == support[i]
        assert row["precision"] == pytest.approx(precision[i], abs=1e-6)
        assert row["recall"] == pytest.approx(recall[i], abs=1e-6)
        assert row["f1"] == pytest.approx(f1[i], abs=1e-6)
    assert r["accuracy"] == pytest.approx(5 / 10) and r["images"] == 10
    assert r["top_k_accuracy"] == pytest.approx({"1": 0.5, "2": 8 / 10})  # images 2, 7 and 8 have the class second
    assert r["macro"]["precision"] == pytest.approx(sum(precision) / 4, abs=1e-6)
    assert r["macro"]["recall"] == pytest.approx(sum(recall) / 4, abs=1e-6)
    assert r["macro"]["f1"] == pytest.approx(sum(f1) / 4, abs=1e-6)
    assert r["weighted"]["f1"] == pytest.approx(sum(f * s for f, s in zip(f1, support)) / 10, abs=1e-6)
    lse = math.log(math.exp(3) + math.exp(2) + 2)  # every row holds 3, 2, 0, 0
    target_logit = [3, 3, 2, 3, 0, 3, 3, 2, 2, 0]
    assert r["loss"] == pytest.approx(lse - sum(target_logit) / 10, abs=1e-6)


def test_topk_only_below_the_number_of_classes_and_bad_shapes():
    logits, y = _example()
    assert list(classification_report(logits, y, CLASSES, topk=4)["top_k_accuracy"]) == ["1"]  # top-4 of 4 is always 1
    with pytest.raises(Exception, match="do not fit"):
        classification_report(logits[:, :3], y, CLASSES)
    with pytest.raises(Exception, match="no images"):
        classification_report(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), CLASSES)


def test_report_files(tmp_path):
    r = classification_report(*_example(), CLASSES, topk=2)
    write_report(r, tmp_path / "rep", "title", {"split": "test"})
    rows = list(csv.reader(open(tmp_path / "rep" / "per_class.csv")))
    assert rows[0] == ["class", "precision", "recall", "f1", "support"]
    assert [row[0] for row in rows[1:]] == CLASSES and [int(row[4]) for row in rows[1:]] == [3, 2, 3, 2]
    cm = list(csv.reader(open(tmp_path / "rep" / "confusion_matrix.csv")))
    assert cm[0][1:] == CLASSES and [[int(v) for v in row[1:]] for row in cm[1:]] == r["confusion_matrix"]
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert saved["split"] == "test" and saved["accuracy"] == r["accuracy"]
    with Image.open(tmp_path / "rep" / "confusion_matrix.png") as png:
        assert png.format == "PNG" and min(png.size) >= 300
    text = report_text(r)
    assert "owl" in text and "accuracy 0.5000 (top-2 0.8000) on 10 images" in text


def test_train_writes_the_test_report_of_the_best_epoch(cfg, bundle):
    cfg.epochs = 3
    s = train(cfg, bundle=carve_validation(bundle, 0.2, 0))
    rep = json.loads((Path(cfg.out) / "test_report" / "metrics.json").read_text())
    assert rep["best_epoch"] == s["best_epoch"] and rep["weights"] == "model_best.safetensors"
    # the report's accuracy (torchmetrics on the saved best weights) is the engine's test accuracy at that epoch
    assert rep["accuracy"] == pytest.approx(s["test_acc"], abs=1e-6)
    assert rep["test_set_id"] == s["test_set_id"] and sum(c["support"] for c in rep["per_class"]) == s["test_images"]
    assert (Path(cfg.out) / "test_report" / "confusion_matrix.png").is_file()
