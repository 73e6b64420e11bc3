"""Comparison harness: cells are run once and reused; paired statistics, protocol and recipe detection are computed
right (hand-computed references), for results written under the protocol and before it (legacy)."""
import json
import math

import pytest

from fastretrain.bench import (
    CURRENT,
    LEGACY,
    NOT_COMPARABLE,
    aggregate,
    compare,
    comparison_recipe,
    curve,
    markdown_table,
    median_ratio,
    paired,
    pm,
    protocol,
    recipe_text,
    time_to,
)


def rec(method, seed, final, wall, curve, test=None, test_set_id="abc", data="fashion-mnist-5k"):
    """A finished cell: `curve` = per-epoch (test_acc, cumulative wall seconds); `test` = test acc at the val-best
    epoch (a current-protocol summary, with `test_set_id`), None for a legacy summary (with `best_test_acc`)."""
    summary = {"final_test_acc": final, "wall_seconds": wall, "images_per_second": 10.0, "data": data}
    if test is None:
        summary["best_test_acc"] = max(a for a, _ in curve)
    else:
        summary.update(test_acc=test, test_set_id=test_set_id)
    return {"method": method, "seed": seed, "summary": summary,
            "history": [{"test_acc": a, "wall_seconds": w} for a, w in curve]}


def test_time_to():
    hist = [{"test_acc": 0.5, "wall_seconds": 1.0}, {"test_acc": 0.8, "wall_seconds": 2.0},
            {"test_acc": 0.9, "wall_seconds": 3.0}]
    assert time_to(hist, 0.8) == 2.0 and time_to(hist, 0.95) is None


def test_time_to_ignores_a_head_no_run_could_return():
    # a run written before the head was eligible: it logged the head's accuracy, but could never return it
    hist = [{"test_acc": 0.6, "wall_seconds": 5.0, "epoch_seconds": 4.0, "init_head_seconds": 1.5,
             "init_head_test_acc": 0.85}, {"test_acc": 0.9, "wall_seconds": 8.0}]
    assert curve(hist) == [(5.0, 0.6), (8.0, 0.9)]
    assert time_to(hist, 0.8) == 8.0 and time_to(hist, 0.86) == 8.0


def test_paired_statistics_by_hand():
    # baseline finals 0.80 / 0.90 / 0.70, reached at 4 s / 3 s / 2 s (its last epoch)
    recs = [rec("sgdm", 0, 0.80, 4.0, [(0.6, 2.0), (0.80, 4.0)]),
            rec("sgdm", 1, 0.90, 3.0, [(0.7, 1.5), (0.90, 3.0)]),
            rec("sgdm", 2, 0.70, 2.0, [(0.5, 1.0), (0.70, 2.0)]),
            rec("x", 0, 0.82, 2.0, [(0.80, 1.0), (0.82, 2.0)]),  # reaches 0.80 at 1 s: ratio 1/4
            rec("x", 1, 0.88, 6.0, [(0.85, 3.0), (0.88, 6.0)]),  # never reaches 0.90
            rec("x", 2, 0.74, 1.0, [(0.74, 1.0)])]  # reaches 0.70 at 1 s: ratio 1/2
    p = paired(recs, "x", "sgdm")
    assert p["seeds"] == [0, 1, 2] and p["n"] == 3
    assert p["d_final_test_acc"] == pytest.approx([2.0, -2.0, 4.0])
    assert p["d_test_acc"] is None  # legacy summaries have no test_acc
    assert p["time_ratio"] == [0.25, None, 0.5] and p["reached"] == 2
    assert p["median_time_ratio"] == 0.5  # median of (0.25, 0.5, +inf)
    assert p["wall_ratio"] == pytest.approx([0.5, 2.0, 0.5])
    assert p["d_first_acc"] == pytest.approx([20.0, 15.0, 24.0])
    # mean 4/3, sample std sqrt(((2/3)^2 + (10/3)^2 + (8/3)^2) / 2) = sqrt(28/3) = 3.055
    assert pm(p["d_final_test_acc"]) == "+1.33 ± 3.06"
    # a never-reached seed is never dropped: with two of three never, the median is never
    assert median_ratio([0.1, None, None]) == math.inf
    assert paired(recs, "x", "missing") is None


def test_paired_current_protocol_uses_test_acc():
    recs = [rec("sgdm", s, 0.80, 4.0, [(0.80, 4.0)], test=0.79) for s in (0, 1)]
    recs += [rec("x", 0, 0.81, 4.0, [(0.81, 4.0)], test=0.82), rec("x", 1, 0.80, 4.0, [(0.80, 4.0)], test=0.80)]
    p = paired(recs, "x", "sgdm")
    assert p["d_test_acc"] == pytest.approx([3.0, 1.0]) and p["d_final_test_acc"] == pytest.approx([1.0, 0.0])
    assert protocol(recs)["kind"] == CURRENT and protocol(recs)["metric"] == "test_acc"


def test_protocol_kinds():
    cur = [rec("a", s, 0.5, 1.0, [(0.5, 1.0)], test=0.5) for s in (0, 1)]
    assert protocol(cur)["kind"] == CURRENT
    other = [rec("a", 2, 0.5, 1.0, [(0.5, 1.0)], test=0.5, test_set_id="zzz")]
    assert protocol(cur + other)["kind"] == NOT_COMPARABLE  # two test sets
    legacy = [rec("a", 0, 0.5, 1.0, [(0.5, 1.0)], data="cifar10-subset")]
    assert protocol(legacy)["kind"] == LEGACY and protocol(legacy)["metric"] == "final_test_acc"
    seeded = [rec("a", 0, 0.5, 1.0, [(0.5, 1.0)], data="flowers5")]  # its test split came from the run seed
    assert protocol(seeded)["kind"] == NOT_COMPARABLE and "re-running" in protocol(seeded)["note"]
    assert protocol(cur + legacy)["kind"] == NOT_COMPARABLE  # mixed


def test_recipe_shared_and_differing_cells():
    cfg = {"optimizer": "sgd", "momentum": 0.9, "lr": 0.01, "schedule": "cosine", "weight_decay": 1e-4,
           "batch_size": 32, "epochs": 5, "image_size": 48, "recipe": None}
    recs = [{**rec(m, 0, 0.5, 1.0, [(0.5, 1.0)]), "config": dict(cfg)} for m in ("a", "b", "c")]
    recs[2]["config"]["lr"] = 0.001
    r = comparison_recipe(recs)
    assert r["recipe"]["lr"] == 0.01 and r["differs"] == {"c seed 0": {"lr": 0.001}}
    assert recipe_text(r["recipe"]) == ("SGD momentum 0.9, LR 0.01 cosine, weight decay 0.0001, batch 32, 5 epochs, "
                                        "48 px (no preset)")
    assert recipe_text({"optimizer": "adam", "lr": 2e-3, "schedule": "onecycle", "recipe": "fastai"}) == (
        "Adam, LR 0.002 onecycle (preset `fastai`)")
    assert comparison_recipe(recs[:2])["differs"] == {}


def test_aggregate_and_table():
    recs = [rec(m, s, f, 3.0, [(f, w)]) for m, s, f, w in
            [("sgdm", 0, 0.8, 3.0), ("sgdm", 1, 0.9, 3.0), ("x", 0, 0.86, 1.0), ("x", 1, 0.84, 1.5)]]
    rows = aggregate(recs, "sgdm")
    assert rows[1]["paired"]["time_ratio"] == [1 / 3, None] and rows[1]["paired"]["reached"] == 1
    assert rows[0]["test_acc"] is None  # legacy: no val-best test accuracy
    table = markdown_table(rows, "sgdm")
    assert "0.8500 ± 0.0707" in table and "never (1 of 2 reached)" in table  # median of (1/3, +inf) = +inf
    assert "+0.00 ± 8.49" in table  # paired differences +6 and -6 pt: mean 0, sample std 6·√2
    assert "test acc (val-best epoch)" not in table


def test_compare_runs_cells_once_and_writes_outputs(tmp_path, capsys):
    base = {"model": "tiny-cnn", "data": "fashion-mnist", "image_size": 16, "epochs": 1, "max_train": 60,
            "progress": False, "save_checkpoint": False, "device": "cpu",
            "options": {"linear-probe": {"random_backbone": True}}}  # tiny-cnn has no pretrained weights
    res = compare(base, ["sgdm", "linear-probe"], [0], tmp_path / "b")
    for f in ("results.json", "results.md", "accuracy_vs_time.png"):
        assert (tmp_path / "b" / f).is_file()
    assert [r["method"] for r in res["rows"]] == ["sgdm", "linear-probe"]
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert saved["environment"]["cpu_count"] >= 1 and saved["runs"][0]["summary"]["epochs"] == 1
    assert saved["recipe"]["recipe"]["epochs"] == 1 and saved["recipe"]["recipe"]["optimizer"] == "sgd"
    assert saved["protocol"]["kind"] in (CURRENT, LEGACY)
    assert "Recipe (every method):" in (tmp_path / "b" / "results.md").read_text()
    cell_env = json.loads((tmp_path / "b" / "sgdm" / "seed0" / "environment.json").read_text())
    assert cell_env["commit"] == saved["environment"]["commit"] and "command" in cell_env and "torch" in cell_env
    saved["environment"]["command"] = "the command that ran the cells"
    (tmp_path / "b" / "results.json").write_text(json.dumps(saved))
    capsys.readouterr()
    compare(base, ["sgdm", "linear-probe"], [0], tmp_path / "b")  # finished cells are reused, not rerun
    assert "== " not in capsys.readouterr().out
    # a re-aggregation keeps the record of the run that produced the cells
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert saved["environment"]["command"] == "the command that ran the cells"
