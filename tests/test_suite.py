"""Benchmark suite runner (benchmarks/run.py): every branch of the verdict rules on synthetic paired records, the
overall counts, combination and overview tables, headline/appendix routing, the committed report re-rendered
byte-identically from the committed results, the time budget, and the GPU data preparation's zip subset."""
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


def cells(method, finals, walls, curves, test=None):
    """One record per seed: `curves[k]` = per-epoch (test acc, cumulative wall s); legacy summaries unless `test`."""
    out = []
    for seed, (final, wall, curve) in enumerate(zip(finals, walls, curves)):
        summary = {"final_test_acc": final, "wall_seconds": wall, "images_per_second": 1.0, "data": "cifar10-subset"}
        if test is not None:
            summary.update(test_acc=test[seed], test_set_id="one")
        out.append({"method": method, "seed": seed, "summary": summary,
                    "history": [{"test_acc": a, "wall_seconds": w} for a, w in curve]})
    return out


def flat(method, final, wall, reach_at=None, first=None, n=3):
    """n seeds with the same final accuracy and wall time; reaching `final` at `reach_at` s (default: the end)."""
    curve = [(first if first is not None else final - 0.1, wall / 2), (final, reach_at or wall), (final, wall)]
    return cells(method, [final] * n, [wall] * n, [curve] * n)


SGDM = flat("sgdm", 0.80, 100)  # reaches its final 0.80 at 100 s in every seed


def comp(records, data="cifar10-subset", size=32, pretrained=True, cid="c1"):
    records = json.loads(json.dumps(records))  # SGDM is shared between tests
    for r in records:
        r["summary"]["data"] = data
    return suite.make_comparison(cid, records, {"image_size": size, "pretrained": pretrained, "data": data})


def verdicts(key, records, **kw):
    return [v for _, v in suite.CHECKS[key](comp(records, **kw))]


def test_criteria_by_hand():
    assert suite.gain([1.0, 1.2, 0.8])  # mean 1.0 > std 0.2
    assert not suite.gain([2.0, 0.0, -0.5])  # mean 0.5 < std 1.32: inside the noise
    assert not suite.gain([5.0])  # one seed has no std: a gain cannot be shown
    assert not suite.gain([0.4, 0.4], at_least=0.5) and suite.gain([0.6, 0.6], at_least=0.5)
    assert suite.no_loss([-0.3, -0.3]) and not suite.no_loss([-0.31, -0.31])
    p = {"median_time_ratio": 0.5}
    assert suite.faster(p, 0.5) and not suite.faster(p, 0.5, strict=True)
    assert not suite.faster({"median_time_ratio": None}, 10.0)  # never


def test_fast_retrain_rules():
    # +2.0 ± 0.5 pt, reaching SGDM's final at 40 of SGDM's 100 s (0.4x <= 1/1.5): reproduced
    fast = cells("fast-retrain", [0.82, 0.815, 0.825], [70] * 3, [[(0.80, 40), (0.82, 70)]] * 3)
    mp = flat("mp-refine", 0.82, 100)
    (t1, v1), (t2, v2) = suite.check_fast(comp(SGDM + fast + mp))
    assert v1 == v2 == "reproduced"
    assert "+2.00 ± 0.50 pt vs SGDM (gain beyond one std: yes)" in t1 and "0.40× (3 of 3 reached)" in t1
    assert "30.0% less time (± 0.0%)" in t2 and "(≥ 15%: yes)" in t2 and "+0.00 ± 0.50 pt (≥ −0.3: yes)" in t2
    # a gain inside one paired std is not a gain: +1.0 ± 1.73 pt
    noisy = cells("fast-retrain", [0.82, 0.82, 0.79], [70] * 3, [[(0.80, 40), (0.82, 70)]] * 2 + [[(0.79, 70)]])
    assert verdicts("fast", SGDM + noisy)[0] == "not reproduced"
    # faster convergence needs the median over seeds, never-reached seeds counted: 1 of 3 reached -> never
    late = cells("fast-retrain", [0.83, 0.79, 0.79], [70] * 3, [[(0.83, 40)], [(0.79, 70)], [(0.79, 70)]])
    t, v = suite.check_fast(comp(SGDM + late))[0]
    assert v == "not reproduced" and "never (1 of 3 reached)" in t
    # a 0.7x median time ratio is not the claimed 1.5x
    slow = cells("fast-retrain", [0.82, 0.815, 0.825], [70] * 3, [[(0.80, 70), (0.82, 71)]] * 3)
    assert verdicts("fast", SGDM + slow)[0] == "not reproduced"
    # the time saving against mp-refine also needs the accuracy: 30% less time at -1 pt is not reproduced
    mp_better = flat("mp-refine", 0.83, 100)
    assert verdicts("fast", SGDM + fast + mp_better)[1] == "not reproduced"
    # and the saving itself: 10% less time
    mp_fast = flat("mp-refine", 0.82, 78)
    assert verdicts("fast", SGDM + fast + mp_fast)[1] == "not reproduced"


def test_goal_rule_half_the_time_and_at_most_a_third_of_a_point_below():
    """Issue 13's goal on a headline comparison: median time ratio <= 0.5 and final acc >= SGDM - 0.3 pt."""
    probe = flat("linear-probe", 0.78, 20)
    fast = cells("fast-retrain", [0.798, 0.797, 0.799], [60] * 3, [[(0.80, 50), (0.798, 60)]] * 3)
    text = "\n".join(suite.goal_text([comp(SGDM + fast + probe, size=128)]))
    assert "0.50× (3 of 3 reached)" in text and "-0.20 ± 0.10" in text and "**met**" in text
    assert "ahead: `fast-retrain`" in text and "Goal met in 1 of 1" in text
    # 0.4 pt below SGDM is outside the tolerance, however fast
    lower = cells("fast-retrain", [0.796] * 3, [60] * 3, [[(0.80, 10), (0.796, 60)]] * 3)
    assert "**not met**" in "\n".join(suite.goal_text([comp(SGDM + lower + probe, size=128)]))
    # 0.6x is too slow; a seed that never reaches SGDM's final counts as never
    slow = cells("fast-retrain", [0.80] * 3, [60] * 3, [[(0.80, 60)]] * 3)
    assert "**not met**" in "\n".join(suite.goal_text([comp(SGDM + slow, size=128)]))
    never = cells("fast-retrain", [0.81, 0.79, 0.79], [60] * 3, [[(0.81, 10)], [(0.79, 60)], [(0.79, 60)]])
    text = "\n".join(suite.goal_text([comp(SGDM + never, size=128)]))
    assert "never (1 of 3 reached)" in text and "**not met**" in text
    # only headline comparisons (>= 96 px) count
    assert "No headline comparison" in "\n".join(suite.goal_text([comp(SGDM + fast, size=32)]))


def test_rifle_rule_needs_half_a_point_over_every_trick():
    tricks = flat("dropout", 0.80, 100) + flat("cyclic-lr", 0.79, 100)
    assert verdicts("rifle", SGDM + tricks + flat("rifle", 0.806, 100)) == ["reproduced"]  # +0.6 / +1.6 pt
    assert verdicts("rifle", SGDM + tricks + flat("rifle", 0.804, 100)) == ["not reproduced"]  # +0.4 vs dropout
    text = suite.check_rifle(comp(SGDM + tricks + flat("rifle", 0.804, 100)))[0][0]
    assert "vs `dropout` +0.40 ± 0.00 pt (no), vs `cyclic-lr` +1.40 ± 0.00 pt (yes); vs SGDM +0.40" in text
    assert suite.check_rifle(comp(SGDM + flat("rifle", 0.9, 100))) == []  # no trick ran: nothing to check


def test_kernel_rule_time_and_accuracy():
    assert verdicts("kernel", SGDM + flat("kernel-rescale", 0.798, 75)) == ["reproduced"]  # 25% less, -0.2 pt
    assert verdicts("kernel", SGDM + flat("kernel-rescale", 0.79, 75)) == ["not reproduced"]  # -1 pt
    assert verdicts("kernel", SGDM + flat("kernel-rescale", 0.80, 90)) == ["not reproduced"]  # 10% less
    text = suite.check_kernel(comp(SGDM + flat("kernel-rescale", 0.80, 110)))[0][0]
    assert "10.0% more time" in text
    # legacy results whose test split came from the run seed are shown but not comparable
    assert verdicts("kernel", SGDM + flat("kernel-rescale", 0.798, 75), data="flowers5") == ["not comparable"]


def test_decompose_rule():
    good = flat("decompose", 0.81, 100, reach_at=60, first=0.75)  # starts better; reaches 0.80 sooner; +1 pt
    assert verdicts("decompose", SGDM + good) == ["reproduced"]
    t = suite.check_decompose(comp(SGDM + good))[0][0]
    assert "after the first epoch +5.00 ± 0.00 pt (gain beyond one std: yes)" in t and "0.60× (3 of 3" in t
    assert verdicts("decompose", SGDM + flat("decompose", 0.80, 100, first=0.75)) == ["not reproduced"]  # not sooner
    assert verdicts("decompose", SGDM + flat("decompose", 0.81, 100, reach_at=60, first=0.70)) == ["not reproduced"]
    assert verdicts("decompose", SGDM + flat("decompose", 0.79, 100, first=0.75)) == ["not reproduced"]  # never


def test_current_protocol_compares_test_acc_at_the_val_best_epoch():
    base = cells("sgdm", [0.80] * 3, [100] * 3, [[(0.80, 100)]] * 3, test=[0.80] * 3)
    kr = cells("kernel-rescale", [0.80] * 3, [75] * 3, [[(0.80, 75)]] * 3, test=[0.78] * 3)  # -2 pt at val-best
    c = comp(base + kr)
    assert c["protocol"]["kind"] == "current"
    text, verdict = suite.check_kernel(c)[0]
    assert verdict == "not reproduced" and "test acc -2.00 ± 0.00 pt" in text


def test_overall_counts():
    R, N, X = "reproduced", "not reproduced", "not comparable"
    assert suite.overall([R, N, N, N, N, N, N]) == "**not reproduced** (reproduced in 1 of 7)"
    assert suite.overall([R, R, N, N]) == "**partly** (reproduced in 2 of 4)"
    assert suite.overall([R, N, N]) == "**not reproduced** (reproduced in 1 of 3)"
    assert suite.overall([R, R, X]) == "**reproduced** (reproduced in 2 of 2; 1 not comparable, re-run pending)"
    assert suite.overall([X, X]) == "**not measured** (2 not comparable, re-run pending)"
    assert suite.overall([]) == "**not measured**"


def test_claims_are_split_by_input_size():
    small = comp(SGDM + flat("kernel-rescale", 0.798, 75), cid="small")
    big = comp(SGDM + flat("kernel-rescale", 0.79, 75), size=224, cid="big")
    out = suite.claims([small, big])["kernel"]
    assert [(x["id"], x["tier"], x["verdict"]) for x in out] == [("small", "appendix", "reproduced"),
                                                                   ("big", "headline", "not reproduced")]


def test_combinations_and_overview():
    recs = SGDM + flat("fast-retrain", 0.81, 70) + flat("rifle", 0.79, 100) + flat("fast-retrain,rifle", 0.82, 72)
    recs += flat("kernel-rescale", 0.798, 75) + flat("rifle,kernel-rescale", 0.70, 80)
    c = comp(recs)
    lines = suite.combinations([c])
    assert len(lines) == 2
    assert "`fast-retrain,rifle`: final acc 82.00% in 72 s vs `fast-retrain` 81.00% in 70 s" in lines[0]
    assert "better than either part (+1.00 ± 0.00 pt vs `fast-retrain`, paired)" in lines[0]
    assert "worse than either part" in lines[1]
    table = suite.overview([c])
    assert table[0] == "| method | `c1` (legacy) |"
    assert "| `fast-retrain` | 81.0 (+1.0 pt), 0.70× time |" in table
    assert "| `sgdm` | 80.0, 1.00× time |" in table


def test_render_routes_headline_and_appendix(tmp_path, monkeypatch):
    monkeypatch.setitem(suite.SUITES, "t", [("small", {}, ["sgdm", "kernel-rescale"], 3),
                                           ("big", {}, ["sgdm", "kernel-rescale"], 3)])
    small = comp(SGDM + flat("kernel-rescale", 0.798, 75), cid="small")
    big = comp(SGDM + flat("kernel-rescale", 0.79, 75), size=224, cid="big")
    for c in (small, big):
        c["suite"] = "t"
    text = suite.render_text([small, big], tmp_path / "B.md", {"t": tmp_path / "res"}, "cmd", standard=False)
    head, appendix = text.split("## Appendix: small inputs")
    assert "### big" in head.split("## Headline")[1] and "### small" in appendix
    for title, *_ in suite.PAPERS.values():
        assert f"### {title}" in text
    assert "- Headline (≥ 96 px), `big` (legacy protocol: final acc):" in text
    assert "- Overall, small-input appendix: **reproduced** (reproduced in 1 of 1)" in text
    assert "- Headline (≥ 96 px): no comparison has run yet" in text  # e.g. decomposition
    assert "](res/small/accuracy_vs_time.png)" in text and "Recipe (every method):" in text
    assert "## How to reproduce" not in text  # only the standard report carries the how-to


def test_committed_report_rerenders_identically():
    """docs/BENCHMARKS.md and the README's result tables are exactly what the committed results give."""
    texts, comps, _ = suite.report_texts()
    assert comps, "no committed suite results found"
    for path, text in texts.items():
        assert path.read_text() == text, f"{path.name} differs: run python benchmarks/run.py --render"


def test_suite_configs_are_valid():
    from fastretrain.run import make_config

    for name, comparisons in suite.SUITES.items():
        for cid, base, methods, seeds in comparisons:
            assert seeds >= 1
            for m in methods:
                make_config(**{**base, "method": m})  # raises on an unknown field, method or bad value


def test_time_budget_stops_new_cells_and_keeps_finished(tmp_path, capsys):
    base = {"model": "tiny-cnn", "data": "fashion-mnist", "image_size": 16, "epochs": 1, "max_train": 40,
            "progress": False, "save_checkpoint": False, "save_weights": False, "device": "cpu"}
    compare(base, ["sgdm"], [0], tmp_path / "c")
    recs = run_cells(base, ["sgdm", "linear-probe"], [0], tmp_path / "c", deadline=time.monotonic() - 1)
    assert [r["method"] for r in recs] == ["sgdm"]
    assert "time budget reached: linear-probe seed 0" in capsys.readouterr().out
    assert not (tmp_path / "c" / "linear-probe").exists()


def test_main_override_and_budget(tmp_path, monkeypatch, capsys):
    """--override changes every comparison's config; a spent budget renders what exists and starts nothing."""
    monkeypatch.setitem(suite.SUITES, "t", [("a", {"model": "tiny-cnn", "data": "fashion-mnist", "image_size": 16,
                                                  "epochs": 3, "max_train": 40, **suite.NO_FILES}, ["sgdm"], 1)])
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
