"""benchmarks/aids.py (issue 24, item 5): one seed's cells run for real on a tiny model and data (the TTA cell
evaluates the baseline's delivered weights: its plain pass must reproduce the baseline's test accuracy), a resumed
run skips finished cells and reruns only interrupted or contended ones, and the rendered block carries the cells'
numbers: paired deltas, verdicts only from 3 seeds, time ratios against the same seed's baseline."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from fastretrain import evidence as ev
from fastretrain.testing import tiny_images

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import aids  # noqa: E402
import aids_report as report  # noqa: E402

TINY = {"model": "tiny-cnn", "image_size": 16, "batch_size": 8, "lr": 0.05, "device": "cpu", "val_fraction": 0.25,
        "progress": False, "save_checkpoint": False, "save_weights": False}


@pytest.fixture
def bench(tmp_path, monkeypatch):
    """The script pointed at tiny data (48 train images, 3 classes, 16 px), 2 epochs, its cells and doc in tmp_path;
    the same-work control instant, and no cell counted as contended (the test machine is busy)."""
    xtr, ytr = tiny_images(16, 3, 12, 0)
    xte, yte = tiny_images(8, 3, 12, 1000)
    np.savez(tmp_path / "tiny.npz", x_train=xtr.numpy(), y_train=ytr.numpy(), x_test=xte.numpy(), y_test=yte.numpy())
    doc = tmp_path / "training_aids.md"
    doc.write_text(f"# Training aids\n\n{aids.BEGIN}\nstale text\n{aids.END}\n\n## Example\n")
    monkeypatch.setattr(aids, "BASE", {**TINY, "data": str(tmp_path / "tiny.npz")})
    monkeypatch.setattr(aids, "ROOT", tmp_path / "cells")
    monkeypatch.setattr(aids, "DOC", doc)
    monkeypatch.setattr(aids, "EPOCHS", 2)
    monkeypatch.setattr(aids, "LR_FIND", {"start_lr": 1e-4, "end_lr": 10.0, "steps": 20})
    monkeypatch.setattr(aids, "control", lambda: 1.0)
    monkeypatch.setattr(aids, "contended", lambda record: None)
    monkeypatch.setenv("FASTRETRAIN_CACHE", str(tmp_path / "cache"))
    return tmp_path


def config(label, seed=0):
    return json.loads((aids.cell(label, seed) / "config.json").read_text())


def test_a_seed_runs_every_cell_and_a_resumed_run_skips_finished_ones(bench, monkeypatch):
    aids.run_seed(0, {"commit": "test"})
    assert all(aids.done(aids.cell(label, 0)) for label in aids.LABELS)
    cells = report.load()
    assert sorted(cells) == sorted(aids.LABELS)
    base = config(aids.BASELINE)
    assert (base["method"], base["epochs"], base["test_eval"], base["lr"]) == ("sgdm", 2, "improved", 0.05)
    assert config("+ema")["ema"] == aids.EMA_DECAY and config("+mixup")["mixup"] == aids.MIXUP_ALPHA
    assert config("+cutmix")["cutmix"] == aids.CUTMIX_ALPHA and config("+patience")["patience"] == 1
    own = {"+ema": {"ema"}, "+mixup": {"mixup"}, "+cutmix": {"cutmix"}, "+patience": {"patience"}, "lr-find": {"lr"}}
    for label, keys in own.items():  # each aid's cell differs from the baseline's in its own setting only
        assert {k for k in base if config(label)[k] != base[k]} - {"out", "run_id"} == keys
    sweep = cells["lr-find"][0]["extra"]
    assert config("lr-find")["lr"] == sweep["suggested"] and 1e-4 <= sweep["suggested"] <= 10
    assert sweep["steps"] <= 20 and sweep["wall_seconds"] > 0 and (aids.cell("lr-find", 0) / "lr_find.png").is_file()
    tta = cells["+tta"][0]["summary"]
    delivered = ev.final(cells[aids.BASELINE][0]["history"])  # the baseline's validation-best model's test accuracy
    assert tta["plain_acc"] == pytest.approx(delivered, abs=1e-9) == tta["baseline_test_acc"]
    assert tta["test_images"] == 24 and tta["evaluations"]["tta"]["seconds"] > 0 and 0 <= tta["test_acc"] <= 1

    calls = []
    real = aids.run_cell
    monkeypatch.setattr(aids, "run_cell", lambda path, env, work: calls.append(path) or real(path, env, work))
    aids.run_seed(0, {"commit": "test"})
    assert calls == []  # everything finished: nothing runs again
    (aids.cell("+mixup", 0) / "environment.json").unlink()  # interrupted before its last file
    monkeypatch.setattr(aids, "contended", lambda record: record.get("competed"))
    summary = aids.cell("+cutmix", 0) / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "competed": "another process competed"}))
    (aids.cell(aids.BASELINE, 0) / aids.DELIVERED).unlink()  # the TTA cell has its result: the baseline stays done
    aids.run_seed(0, {"commit": "test"})
    assert calls == [aids.cell("+mixup", 0), aids.cell("+cutmix", 0)]
    assert not json.loads(summary.read_text()).get("competed")


def write(label, seed, acc, wall, cpu=None, epochs=2, best=2, early=False, extra=None, summary=None):
    """A finished cell by hand: one scored epoch per `epochs`, the last (and delivered) test accuracy `acc`."""
    folder = aids.cell(label, seed)
    folder.mkdir(parents=True)
    lines = [{"epoch": i + 1, "wall_seconds": wall * (i + 1) / epochs, "val_acc": 0.5 + 0.1 * (i + 1 == best),
              "val_loss": 1.0, "test_acc": acc if i + 1 == best else acc - 0.1} for i in range(epochs)]
    lines[-1]["early_stopped"] = early
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    s = summary or {"wall_seconds": wall, "cpu_seconds": cpu or 2 * wall, "epochs": epochs, "best_epoch": best,
                    "test_images": 400, "test_acc": acc}
    (folder / "summary.json").write_text(json.dumps(s))
    if extra:
        (folder / aids.EXTRA[label]).write_text(json.dumps(extra))
    (folder / "environment.json").write_text(json.dumps({"control_seconds": [1.0, 1.25], "commit": "abc"}))


def synthetic(seeds):
    """Baseline 0.80 + s/100 in 100 + 10 s s; +ema +1, +2, +3 pt at 1.1x; +mixup -2 pt; +cutmix +-0.1 pt;
    +patience stops after epoch 1 of 2 at half the time; lr-find's sweep 50 s; TTA 2.5x the plain evaluation."""
    for s in seeds:
        b = 0.80 + s / 100
        write(aids.BASELINE, s, b, 100 + 10 * s)
        write("+ema", s, b + (s + 1) / 100, 1.1 * (100 + 10 * s))
        write("+mixup", s, b - 0.02, 100 + 10 * s)
        write("+cutmix", s, b + (0.001 if s % 2 else -0.001), 100 + 10 * s)
        write("+patience", s, b, (100 + 10 * s) / 2, epochs=1, best=1, early=True)
        write("lr-find", s, b, 100 + 10 * s, extra={"suggested": 0.02 + s / 1000, "steep": 0.02, "min_div10": 0.05,
                                                     "stopped": "diverged", "steps": 80, "wall_seconds": 50.0,
                                                     "cpu_seconds": 100.0})
        evals = {"plain": {"acc": b, "seconds": 4.0, "cpu_seconds": 8.0}, "tta": {"acc": b, "seconds": 10.0,
                                                                                 "cpu_seconds": 20.0}}
        write("+tta", s, b, 0, summary={"test_acc": b + 0.005, "plain_acc": b, "baseline_test_acc": b,
                                        "evaluations": evals, "test_images": 400})


def test_the_analysis_pairs_each_aid_with_the_same_seeds_baseline(bench):
    synthetic(range(3))
    a = report.analyse(report.load())
    rows = {r["label"]: r for r in a["rows"]}
    assert a["seeds"] == [0, 1, 2] and a["spread"] == pytest.approx(1.25)
    assert rows["+ema"]["diffs"] == pytest.approx([1.0, 2.0, 3.0]) and rows["+ema"]["verdict"] == "gain"
    assert rows["+ema"]["wall_ratio"] == pytest.approx({0: 1.1, 1: 1.1, 2: 1.1})
    assert rows["+ema"]["timing"] == "unresolved"  # 1.1x lies inside the control's 1.25x spread
    assert rows["+mixup"]["verdict"] == "loss" and rows["+cutmix"]["verdict"] == "no loss"
    assert rows["+patience"]["median_wall_ratio"] == pytest.approx(0.5) and rows["+patience"]["timing"] == "faster"
    assert "stopped after epoch 1, 1, 1 of 2" in rows["+patience"]["notes"]
    assert rows["lr-find"]["wall_ratio"][1] == pytest.approx((110 + 50) / 110)  # its sweep counts as its cost
    assert rows["lr-find"]["cpu_ratio"][1] == pytest.approx((220 + 100) / 220)
    assert "suggested LR 0.02, 0.021, 0.022" in rows["lr-find"]["notes"]
    assert rows["+tta"]["diffs"] == pytest.approx([0.5, 0.5, 0.5]) and rows["+tta"]["verdict"] == "gain"
    assert rows["+tta"]["median_wall_ratio"] == pytest.approx(2.5) and rows["+tta"]["timing"] == "slower"
    assert "reproduces the baseline's test accuracy" in rows["+tta"]["notes"]


def test_the_rendered_block_replaces_the_old_one_and_gives_no_verdict_below_3_seeds(bench):
    synthetic(range(2))
    report.render()
    text = aids.DOC.read_text()
    assert "stale text" not in text and text.endswith(f"{aids.END}\n\n## Example\n")
    block = text.split(aids.BEGIN)[1].split(aids.END)[0]
    assert block.count(f"n=2: needs {ev.MIN_SEEDS}, no verdict") == 6 and "**gain**" not in block.split("Rules")[0]
    assert "| `+ema` | `--ema 0.94` | 0.8200 ± 0.0141 (2) | +1.50 ± 0.71 |" in block
    assert "| 1.10x (1.10, 1.10) |" in block
    synthetic([2])
    report.render()
    block = aids.DOC.read_text().split(aids.BEGIN)[1].split(aids.END)[0]
    assert "needs 3" not in block and "(3 seeds, 400 test images" in block
    assert "| +2.00 ± 1.00 | **gain** |" in block and "| -2.00 ± 0.00 | **loss** |" in block
    assert json.loads((aids.ROOT / "results.json").read_text())["seeds"] == [0, 1, 2]
    assert block in (aids.ROOT / "results.md").read_text()
    report.render()  # rendering again changes nothing
    assert aids.DOC.read_text().split(aids.BEGIN)[1].split(aids.END)[0] == block


def test_without_cells_the_block_says_nothing_was_measured(bench):
    assert report.render() == [aids.DOC] and not aids.ROOT.exists()
    assert "**Not measured yet.**" in aids.DOC.read_text()
