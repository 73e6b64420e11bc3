"""Benchmark suite runner (benchmarks/run.py): claim verdicts by their rules, combination and overview tables,
the report, the time budget, and the GPU data preparation's zip subset."""
import importlib.util
import json
import sys
import time
import zipfile
from pathlib import Path

import pytest

from fastretrain.bench import compare, run_cells

ROOT = Path(__file__).resolve().parent.parent


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


suite = _load("run")
prep = _load("prepare_gpu_data")


def row(method, final, wall, reach=None, best=None, seeds=3):
    reach = [reach] * seeds if reach is not None else [None] * seeds
    return {"method": method, "seeds": seeds, "best_test_acc": [best or final] * seeds, "final_test_acc": [final] * seeds,
            "wall_seconds": [wall] * seeds, "images_per_second": [1.0] * seeds, "time_to_target": reach,
            "reached": sum(r is not None for r in reach), "target": 0.8}  # fmt: skip


def results():
    rows = [row("sgdm", 0.80, 100, reach=90), row("fast-retrain", 0.81, 70, reach=50), row("mp-refine", 0.81, 90, reach=60),
            row("rifle", 0.79, 100), row("dropout", 0.80, 100), row("cyclic-lr", 0.785, 100),
            row("kernel-rescale", 0.798, 75), row("fast-retrain,rifle", 0.82, 72), row("rifle,kernel-rescale", 0.70, 80)]  # fmt: skip
    return {"c1": {"rows": rows, "table": "| t |", "config": {"model": "m"}, "environment": {"cpu_count": 2, "torch": "x"}}}


def test_claim_verdicts_follow_their_rules():
    out = suite.claims(results())
    # +1 pt final, 50/90 = 0.56x SGDM's time to target (<= 1/1.5): reproduced; 1 - 70/90 = 22% less time than mp-refine
    assert out["fast"][0][1] == "reproduced" and "0.56× SGDM" in out["fast"][0][0] and "3/3 seeds" in out["fast"][0][0]
    assert out["fast"][1][1] == "reproduced" and "22.2% less time" in out["fast"][1][0]
    # rifle 0.79 vs best trick dropout 0.80: -1 pt
    assert out["rifle"] == [("`c1`: best acc -1.00 pt vs the best trick (`dropout`), -1.00 pt vs SGDM", "not reproduced")]
    # 25% less time at -0.2 pt: reproduced (rule: >= 20% and >= -0.3 pt)
    assert out["kernel"][0][1] == "reproduced" and "25.0% less time" in out["kernel"][0][0]
    assert out["decompose"] == []
    assert suite.overall(["reproduced", "reproduced"]) == "reproduced"
    assert suite.overall(["reproduced", "not reproduced"]) == "partly" and suite.overall([]) == "not measured"


def test_combinations_and_overview():
    lines = suite.combinations(results())
    assert len(lines) == 2
    assert "`fast-retrain,rifle`: final 82.00%" in lines[0] and "better than either part (+1.00 pt" in lines[0]
    assert "worse than either part" in lines[1]
    table = suite.overview(results())
    assert table[0] == "| method | `c1` |"
    assert "| `fast-retrain` | 81.0 (+1.0 pt), 0.70× time |" in table
    assert "| `sgdm` | 80.0, 1.00× time |" in table


def test_render_writes_every_paper_section(tmp_path):
    doc = suite.render("cpu", results(), tmp_path / "res", doc=tmp_path / "B.md", command="python benchmarks/run.py --suite cpu")
    text = doc.read_text()
    for title, *_ in suite.PAPERS.values():
        assert f"### {title}" in text
    assert "Overall in this suite: **not measured**" in text  # decomposition: no comparison ran it
    assert "## Do combinations help?" in text and "## Overview: every method against SGDM" in text
    assert "](res/c1/accuracy_vs_time.png)" in text


def test_suite_configs_are_valid():
    from fastretrain.run import make_config

    for name, comparisons in suite.SUITES.items():
        for cid, base, methods, seeds in comparisons:
            assert seeds >= 1
            for m in methods:
                make_config(**{**base, "method": m})  # raises on an unknown field, method or bad value


def test_time_budget_stops_new_cells_and_keeps_finished(tmp_path, capsys):
    base = {"model": "tiny-cnn", "data": "fashion-mnist", "image_size": 16, "epochs": 1, "max_train": 40, "progress": False,
            "save_checkpoint": False, "save_weights": False, "device": "cpu"}  # fmt: skip
    compare(base, ["sgdm"], [0], tmp_path / "c")
    recs = run_cells(base, ["sgdm", "linear-probe"], [0], tmp_path / "c", deadline=time.monotonic() - 1)
    assert [r["method"] for r in recs] == ["sgdm"]
    assert "time budget reached: linear-probe seed 0" in capsys.readouterr().out
    assert not (tmp_path / "c" / "linear-probe").exists()


def test_main_override_and_budget(tmp_path, monkeypatch, capsys):
    """--override changes every comparison's config; a spent budget renders what exists and starts nothing."""
    monkeypatch.setitem(suite.SUITES, "t", [("a", {"model": "tiny-cnn", "data": "fashion-mnist", "image_size": 16, "epochs": 3,
                                                  "max_train": 40, "progress": False, "save_checkpoint": False,
                                                  "save_weights": False}, ["sgdm"], 1)])  # fmt: skip
    suite.main(["--suite", "t", "--out", str(tmp_path / "o"), "--override", "epochs=1", "device=cpu"])
    summary = json.loads((tmp_path / "o" / "a" / "sgdm" / "seed0" / "summary.json").read_text())
    assert summary["epochs"] == 1
    assert (tmp_path / "o" / "BENCHMARKS.md").is_file() and (tmp_path / "o" / "a" / "time_to_target.png").is_file()
    with pytest.raises(SystemExit):
        suite.main(["--suite", "t", "--out", str(tmp_path / "o"), "--override", "epochs"])


def test_subset_zip_keeps_first_n_per_class(tmp_path):
    src = tmp_path / "src.zip"
    with zipfile.ZipFile(src, "w") as z:
        for split in ("train", "test"):
            for cls in ("cat", "dog"):
                for i in range(5):
                    z.writestr(f"wrap/{split}/{cls}/{i:03d}.jpg", f"{split}{cls}{i}")
    n = prep.subset_zip(src, tmp_path / "dst.zip", {"train": 3, "test": 1})
    assert n == {"train": 6, "test": 2}
    with zipfile.ZipFile(tmp_path / "dst.zip") as z:
        names = sorted(z.namelist())
        assert "wrap/train/cat/002.jpg" in names and "wrap/train/cat/003.jpg" not in names
        assert z.read("wrap/test/dog/000.jpg") == b"testdog0"


def test_status_counts_each_comparisons_own_seeds(tmp_path, monkeypatch):
    monkeypatch.setitem(suite.SUITES, "t", [("a", {}, ["sgdm"], 1), ("b", {}, ["sgdm", "rifle"], 2)])
    (tmp_path / "b" / "rifle" / "seed1").mkdir(parents=True)
    (tmp_path / "b" / "rifle" / "seed1" / "summary.json").write_text("{}")
    assert suite.status("t", tmp_path) == ["- `a`: 0 of 1 cells finished", "- `b`: 1 of 4 cells finished"]
    assert suite.status("t", tmp_path, seeds=1) == ["- `a`: 0 of 1 cells finished", "- `b`: 0 of 2 cells finished"]
