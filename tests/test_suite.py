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


sys.path.insert(0, str(ROOT / "benchmarks"))  # the runner's modules; benchmarks/run.py is its command line
import findings  # noqa: E402
import pages  # noqa: E402
import report  # noqa: E402
import suites  # noqa: E402
import verdicts as rules  # noqa: E402  (`verdicts` below is a helper of these tests)

cli = _load("run")
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
    return suites.make_comparison(cid, records, {"image_size": size, "pretrained": pretrained, "data": data})


def verdicts(key, records, **kw):
    return [v for _, v in rules.CHECKS[key](comp(records, **kw))]


def test_criteria_by_hand():
    assert rules.gain([1.0, 1.2, 0.8])  # mean 1.0 > std 0.2
    assert not rules.gain([2.0, 0.0, -0.5])  # mean 0.5 < std 1.32: inside the noise
    assert not rules.gain([5.0])  # one seed has no std: a gain cannot be shown
    assert not rules.gain([0.4, 0.4], at_least=0.5) and rules.gain([0.6, 0.6], at_least=0.5)
    assert rules.no_loss([-0.3, -0.3]) and not rules.no_loss([-0.31, -0.31])
    p = {"median_time_ratio": 0.5}
    assert rules.faster(p, 0.5) and not rules.faster(p, 0.5, strict=True)
    assert not rules.faster({"median_time_ratio": None}, 10.0)  # never


def test_fast_retrain_rules():
    # +2.0 ± 0.5 pt, reaching SGDM's final at 40 of SGDM's 100 s (0.4x <= 1/1.5): reproduced
    fast = cells("fast-retrain", [0.82, 0.815, 0.825], [70] * 3, [[(0.80, 40), (0.82, 70)]] * 3)
    mp = flat("mp-refine", 0.82, 100)
    (t1, v1), (t2, v2) = rules.check_fast(comp(SGDM + fast + mp))
    assert v1 == v2 == "reproduced"
    assert "+2.00 ± 0.50 pt vs SGDM (gain beyond one std: yes)" in t1 and "0.40× (3 of 3 reached)" in t1
    assert "30.0% less time (± 0.0%)" in t2 and "(≥ 15%: yes)" in t2 and "+0.00 ± 0.50 pt (≥ −0.3: yes)" in t2
    # a gain inside one paired std is not a gain: +1.0 ± 1.73 pt
    noisy = cells("fast-retrain", [0.82, 0.82, 0.79], [70] * 3, [[(0.80, 40), (0.82, 70)]] * 2 + [[(0.79, 70)]])
    assert verdicts("fast", SGDM + noisy)[0] == "not reproduced"
    # faster convergence needs the median over seeds, never-reached seeds counted: 1 of 3 reached -> never
    late = cells("fast-retrain", [0.83, 0.79, 0.79], [70] * 3, [[(0.83, 40)], [(0.79, 70)], [(0.79, 70)]])
    t, v = rules.check_fast(comp(SGDM + late))[0]
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
    text = "\n".join(findings.goal_text([comp(SGDM + fast + probe, size=128)]))
    assert "0.50× (3 of 3 reached)" in text and "-0.20 ± 0.10" in text and "**met**" in text
    assert "ahead: `fast-retrain`" in text and "Goal met in 1 of 1" in text
    # 0.4 pt below SGDM is outside the tolerance, however fast
    lower = cells("fast-retrain", [0.796] * 3, [60] * 3, [[(0.80, 10), (0.796, 60)]] * 3)
    assert "**not met**" in "\n".join(findings.goal_text([comp(SGDM + lower + probe, size=128)]))
    # 0.6x is too slow; a seed that never reaches SGDM's final counts as never
    slow = cells("fast-retrain", [0.80] * 3, [60] * 3, [[(0.80, 60)]] * 3)
    assert "**not met**" in "\n".join(findings.goal_text([comp(SGDM + slow, size=128)]))
    never = cells("fast-retrain", [0.81, 0.79, 0.79], [60] * 3, [[(0.81, 10)], [(0.79, 60)], [(0.79, 60)]])
    text = "\n".join(findings.goal_text([comp(SGDM + never, size=128)]))
    assert "never (1 of 3 reached)" in text and "**not met**" in text
    # only headline comparisons (>= 96 px) count
    assert "No headline comparison" in "\n".join(findings.goal_text([comp(SGDM + fast, size=32)]))


def test_ablation_goal_column_and_tally_against_the_default():
    """Each ablation row carries the goal rule's verdict (n < 3 below the goal's seeds); a variant beats the default
    only with more goals met, or as many and a higher mean final accuracy."""
    fast = cells("fast-retrain", [0.80] * 3, [60] * 3, [[(0.80, 60)]] * 3)  # 0.6x: not met
    quick = cells("fast-retrain[mp-refine.until=0]", [0.80] * 3, [60] * 3, [[(0.80, 10)]] * 3)  # 0.1x: met
    two = cells("fast-retrain[mp-refine.init_head=False]", [0.80] * 2, [60] * 2, [[(0.80, 10)]] * 2)
    text = "\n".join(findings.ablation_text([comp(SGDM + fast + quick + two, size=128)]))
    assert "| 0.60× (3 of 3 reached) | 0.60 ± 0.00× | not met |" in text
    assert "| 0.10× (3 of 3 reached) | 0.60 ± 0.00× | met |" in text and "| n < 3 |" in text
    assert "| `fast-retrain[mp-refine.until=0]` | 1 | 1 | 0 | +0.00 ± 0.00 | 1.00 ± 0.00× | yes |" in text
    assert "init_head=False]` | 1 |" not in text  # 2 seeds: not in the tally
    # as many goals met: better only with a final-accuracy gain over the default above one paired std
    up = cells("fast-retrain[mp-refine.until=0]", [0.81, 0.812, 0.808], [60] * 3, [[(0.80, 60)]] * 3)
    noisy = cells("fast-retrain[mp-refine.until=0]", [0.81, 0.79, 0.81], [60] * 3, [[(0.80, 60)]] * 3)
    for variant, better in ((up, "yes"), (noisy, "no")):
        v = rules.better_than_default([comp(SGDM + fast + variant, size=128)], "fast-retrain[mp-refine.until=0]")
        assert v["met"] == v["met_default"] == 0 and v["better"] == (better == "yes")


def test_timing_control_compares_the_same_work_in_two_cells():
    """Epochs with nothing frozen do SGDM's work: their SGD seconds (head and refinement out) over SGDM's."""
    summary = {"data": "x", "final_test_acc": 0.8, "images_per_second": 1.0}
    base = [{"method": "sgdm", "seed": 0, "summary": {**summary, "wall_seconds": 20},
             "history": [{"epoch_seconds": 10, "test_acc": 0.8, "wall_seconds": 10}] * 2}]
    hist = [{"epoch_seconds": 15, "init_head_seconds": 2, "refine_seconds": 1, "trainable_ratio": 1,
             "test_acc": 0.8, "wall_seconds": 15},
            {"epoch_seconds": 4, "trainable_ratio": 0.5, "frozen_layers": 3, "test_acc": 0.8, "wall_seconds": 19}]
    fast = [{"method": "fast-retrain", "seed": 0, "summary": {**summary, "wall_seconds": 19}, "history": hist}]
    assert rules.timing_control([comp(base + fast, size=128)]) == [1.2]  # (15 - 2 - 1) / 10; epoch 2 is frozen
    assert rules.timing_control([comp(base + fast, size=32)]) == []  # headline comparisons only
    assert "1.20–1.20× SGDM's time" in "\n".join(findings.timing_control_text([comp(base + fast, size=128)]))


def test_rifle_rule_needs_half_a_point_over_every_trick():
    tricks = flat("dropout", 0.80, 100) + flat("cyclic-lr", 0.79, 100)
    assert verdicts("rifle", SGDM + tricks + flat("rifle", 0.806, 100)) == ["reproduced"]  # +0.6 / +1.6 pt
    assert verdicts("rifle", SGDM + tricks + flat("rifle", 0.804, 100)) == ["not reproduced"]  # +0.4 vs dropout
    text = rules.check_rifle(comp(SGDM + tricks + flat("rifle", 0.804, 100)))[0][0]
    assert "vs `dropout` +0.40 ± 0.00 pt (no), vs `cyclic-lr` +1.40 ± 0.00 pt (yes); vs SGDM +0.40" in text
    assert rules.check_rifle(comp(SGDM + flat("rifle", 0.9, 100))) == []  # no trick ran: nothing to check


def test_kernel_rule_time_and_accuracy():
    assert verdicts("kernel", SGDM + flat("kernel-rescale", 0.798, 75)) == ["reproduced"]  # 25% less, -0.2 pt
    assert verdicts("kernel", SGDM + flat("kernel-rescale", 0.79, 75)) == ["not reproduced"]  # -1 pt
    assert verdicts("kernel", SGDM + flat("kernel-rescale", 0.80, 90)) == ["not reproduced"]  # 10% less
    text = rules.check_kernel(comp(SGDM + flat("kernel-rescale", 0.80, 110)))[0][0]
    assert "10.0% more time" in text
    # legacy results whose test split came from the run seed are shown but not comparable
    assert verdicts("kernel", SGDM + flat("kernel-rescale", 0.798, 75), data="flowers5") == ["not comparable"]


def test_decompose_rule():
    good = flat("decompose", 0.81, 100, reach_at=60, first=0.75)  # starts better; reaches 0.80 sooner; +1 pt
    assert verdicts("decompose", SGDM + good) == ["reproduced"]
    t = rules.check_decompose(comp(SGDM + good))[0][0]
    assert "after the first epoch +5.00 ± 0.00 pt (gain beyond one std: yes)" in t and "0.60× (3 of 3" in t
    assert verdicts("decompose", SGDM + flat("decompose", 0.80, 100, first=0.75)) == ["not reproduced"]  # not sooner
    assert verdicts("decompose", SGDM + flat("decompose", 0.81, 100, reach_at=60, first=0.70)) == ["not reproduced"]
    assert verdicts("decompose", SGDM + flat("decompose", 0.79, 100, first=0.75)) == ["not reproduced"]  # never


def test_current_protocol_compares_test_acc_at_the_val_best_epoch():
    base = cells("sgdm", [0.80] * 3, [100] * 3, [[(0.80, 100)]] * 3, test=[0.80] * 3)
    kr = cells("kernel-rescale", [0.80] * 3, [75] * 3, [[(0.80, 75)]] * 3, test=[0.78] * 3)  # -2 pt at val-best
    c = comp(base + kr)
    assert c["protocol"]["kind"] == "current"
    text, verdict = rules.check_kernel(c)[0]
    assert verdict == "not reproduced" and "test acc -2.00 ± 0.00 pt" in text


def test_a_claim_check_with_fewer_than_three_seeds_gets_no_verdict_and_counts_nowhere():
    base = cells("sgdm", [0.80] * 3, [100] * 3, [[(0.80, 100)]] * 3, test=[0.80] * 3)
    kr = cells("kernel-rescale", [0.80], [75], [[(0.80, 75)]], test=[0.60])  # one seed: -20 pt, 25% less time
    text, verdict = rules.check_kernel(comp(base + kr))[0]
    assert verdict == rules.FEW_SEEDS and "test acc -20.00 pt" in text
    R, N = "reproduced", "not reproduced"
    assert rules.overall([R, rules.FEW_SEEDS]) == "**reproduced** (reproduced in 1 of 1; 1 with fewer than 3 seeds, " \
        "not counted)"
    assert rules.overall([rules.FEW_SEEDS]) == "**not measured** (1 with fewer than 3 seeds, not counted)"
    assert rules.overall([N]) == "**not reproduced** (reproduced in 0 of 1)"


def test_overall_counts():
    R, N, X = "reproduced", "not reproduced", "not comparable"
    assert rules.overall([R, N, N, N, N, N, N]) == "**not reproduced** (reproduced in 1 of 7)"
    assert rules.overall([R, R, N, N]) == "**partly** (reproduced in 2 of 4)"
    assert rules.overall([R, N, N]) == "**not reproduced** (reproduced in 1 of 3)"
    assert rules.overall([R, R, X]) == "**reproduced** (reproduced in 2 of 2; 1 not comparable, re-run pending)"
    assert rules.overall([X, X]) == "**not measured** (2 not comparable, re-run pending)"
    assert rules.overall([]) == "**not measured**"


def test_claims_are_split_by_input_size():
    small = comp(SGDM + flat("kernel-rescale", 0.798, 75), cid="small")
    big = comp(SGDM + flat("kernel-rescale", 0.79, 75), size=224, cid="big")
    out = rules.claims([small, big])["kernel"]
    assert [(x["id"], x["tier"], x["verdict"]) for x in out] == [("small", "appendix", "reproduced"),
                                                                   ("big", "headline", "not reproduced")]


def test_combinations_and_overview():
    recs = SGDM + flat("fast-retrain", 0.81, 70) + flat("rifle", 0.79, 100) + flat("fast-retrain,rifle", 0.82, 72)
    recs += flat("kernel-rescale", 0.798, 75) + flat("rifle,kernel-rescale", 0.70, 80)
    c = comp(recs)
    lines = report.combinations([c])
    assert len(lines) == 2
    assert "`fast-retrain,rifle`: final acc 82.00% in 72 s vs `fast-retrain` 81.00% in 70 s" in lines[0]
    assert "better than either part (+1.00 ± 0.00 pt vs `fast-retrain`, paired)" in lines[0]
    assert "worse than either part" in lines[1]
    table = report.overview([c])
    assert table[0] == "| method | `c1` (legacy) |"
    assert "| `fast-retrain` | 81.0 (+1.0 pt), 0.70× time |" in table
    assert "| `sgdm` | 80.0, 1.00× time |" in table


def test_render_routes_headline_and_appendix(tmp_path, monkeypatch):
    monkeypatch.setitem(suites.SUITES, "t", [("small", {}, ["sgdm", "kernel-rescale"], 3),
                                           ("big", {}, ["sgdm", "kernel-rescale"], 3)])
    small = comp(SGDM + flat("kernel-rescale", 0.798, 75), cid="small")
    big = comp(SGDM + flat("kernel-rescale", 0.79, 75), size=224, cid="big")
    for c in (small, big):
        c["suite"] = "t"
    text = report.render_text([small, big], tmp_path / "B.md", {"t": tmp_path / "res"}, "cmd", standard=False)
    head, appendix = text.split("## Appendix: small inputs")
    assert "### big" in head.split("## Headline")[1] and "### small" in appendix
    for title, *_ in rules.PAPERS.values():
        assert f"### {title}" in text
    assert f"- Headline (≥ {suites.HEADLINE_PX} px), `big` (legacy protocol: final acc):" in text
    assert "- Overall, small-input appendix: **reproduced** (reproduced in 1 of 1)" in text
    assert f"- Headline (≥ {suites.HEADLINE_PX} px): no comparison has run yet" in text  # e.g. decomposition
    assert "](res/small/accuracy_vs_time.png)" in text and "Recipe (every method):" in text
    assert "## How to reproduce" not in text  # only the standard report carries the how-to


def test_committed_report_rerenders_identically():
    """docs/BENCHMARKS.md and the README's result tables are exactly what the committed results give."""
    texts, comps, _ = pages.report_texts()
    assert comps, "no committed suite results found"
    for path, text in texts.items():
        assert path.read_text() == text, f"{path.name} differs: run python benchmarks/run.py --render"


def test_suite_configs_are_valid():
    from fastretrain.run import make_config

    for name, comparisons in suites.SUITES.items():
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
    monkeypatch.setitem(suites.SUITES, "t", [("a", {"model": "tiny-cnn", "data": "fashion-mnist", "image_size": 16,
                                                  "epochs": 3, "max_train": 40, **suites.NO_FILES}, ["sgdm"], 1)])
    cli.main(["--suite", "t", "--out", str(tmp_path / "o"), "--override", "epochs=1", "device=cpu"])
    summary = json.loads((tmp_path / "o" / "a" / "sgdm" / "seed0" / "summary.json").read_text())
    assert summary["epochs"] == 1
    assert (tmp_path / "o" / "BENCHMARKS.md").is_file() and (tmp_path / "o" / "a" / "time_to_target.png").is_file()
    with pytest.raises(SystemExit):
        cli.main(["--suite", "t", "--out", str(tmp_path / "o"), "--override", "epochs"])


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
    monkeypatch.setitem(suites.SUITES, "t", [("a", {}, ["sgdm"], 1), ("b", {}, ["sgdm", "rifle"], 2)])
    (tmp_path / "b" / "rifle" / "seed1").mkdir(parents=True)
    (tmp_path / "b" / "rifle" / "seed1" / "summary.json").write_text("{}")
    assert suites.status("t", tmp_path) == ["- `a`: 0 of 1 cells finished", "- `b`: 1 of 4 cells finished"]
    assert suites.status("t", tmp_path, seeds=1) == ["- `a`: 0 of 1 cells finished", "- `b`: 0 of 2 cells finished"]


# ---------------------------------------------------------------------------------------------------------------
# Issue 14: the recommendation table, the GPU run's stages, the throughput and precision scripts

def test_recommendation_rules_pick_by_paired_statistics():
    mp = cells("mp-refine", [0.81, 0.812, 0.808], [130] * 3, [[(0.81, 130)]] * 3)  # +1.0 ± 0.2 pt: ahead
    noisy = cells("rifle", [0.85, 0.80, 0.77], [100] * 3, [[(0.85, 100)], [(0.80, 100)], [(0.77, 100)]])  # +0.7 ± 4.0
    probe = flat("linear-probe", 0.795, 10)  # -0.5 pt in 0.1x the time
    cheap_bad = flat("random-freeze", 0.77, 5)  # -3 pt in 0.05x the time
    quick = cells("fast-retrain", [0.80] * 3, [90] * 3, [[(0.80, 40), (0.80, 90)]] * 3)  # SGDM's final at 0.4x
    c = comp(SGDM + mp + noisy + probe + cheap_bad + quick)
    assert rules.most_accurate(c) == ("mp-refine", "`mp-refine`: +1.0 ± 0.2 pt, 1.30× time")  # not the noisy rifle
    m, text = rules.soonest(c)  # linear-probe reaches 0.795 only: never; fast-retrain at 40 of SGDM's 100 s
    assert m == "fast-retrain" and text == "`fast-retrain`: 0.40× (3 of 3 reached), +0.0 ± 0.0 pt"
    assert rules.cheapest(c) == ("linear-probe", "`linear-probe`: 0.10× time, -0.5 ± 0.0 pt")  # not random-freeze
    assert rules.avoid(c) == [("random-freeze", pytest.approx(-3.0))]
    # nothing ahead, nothing sooner, nothing cheap within a point: SGDM / none, naming the cheapest and its cost
    c = comp(SGDM + noisy + cheap_bad)
    assert rules.most_accurate(c)[0] == rules.soonest(c)[0] == rules.cheapest(c)[0] == "sgdm"
    assert rules.cheapest(c)[1] == "none (cheapest: `random-freeze` 0.05× time at -3.0 ± 0.0 pt)"
    # a loss of 1 pt is avoided only beyond one paired std
    wobbly = cells("dropout", [0.78, 0.80, 0.76], [100] * 3, [[(0.78, 100)], [(0.80, 100)], [(0.76, 100)]])
    assert rules.avoid(comp(SGDM + wobbly)) == []  # -2.0 ± 2.0 pt


def test_recommendation_prefers_headline_and_says_when_only_small():
    small = comp(SGDM + flat("linear-probe", 0.795, 10), cid="small")
    big = comp(SGDM + flat("mp-refine", 0.81, 120), size=224, cid="big")
    hidden = comp(SGDM + flat("rifle", 0.7, 100), data="flowers5", cid="legacy-flowers")  # not comparable
    text = "\n".join(findings.recommendation_lines([small, big, hidden]))
    assert "| `big` (legacy protocol: final acc) |" in text and "| `small`" not in text and "Only small" not in text
    assert "Not used (not comparable, re-run pending): `legacy-flowers`" in text
    text = "\n".join(findings.recommendation_lines([small, hidden]))
    assert "**Only small-input evidence exists so far**: every comparable comparison has 32 px inputs" in text
    row = next(line for line in text.splitlines() if line.startswith("| `small`"))
    assert row == ("| `small` (legacy protocol: final acc) | cifar10-subset | 32 px | SGDM 100 s | CPU | SGDM (none "
                   "ahead beyond one paired std) | SGDM (none reaches its final acc sooner within 0.3 pt) | "
                   "`linear-probe`: 0.10× time, -0.5 ± 0.0 pt | — |")
    assert findings.recommendation_lines([hidden]) == ["No comparable comparison with SGDM has finished yet."]


def test_gpu_suite_runs_the_core_rows_first_at_224_px():
    comps = {cid: (base, methods) for cid, base, methods, _ in suites.SUITES["gpu"]}
    assert all(base["image_size"] == 224 and base.get("val_fraction", 0.1) > 0 for base, _ in comps.values())
    first = next((cid, rows) for name, cid, rows in suites.GPU_STAGES if cid)
    assert first == ("flowers5-224-lite0", suites.GPU_CORE)
    assert comps["flowers5-224-lite0"][1][: len(suites.GPU_CORE)] == suites.GPU_CORE
    assert {"sgdm", "linear-probe", "fast-retrain", suites.FR_AUTHORS, "mp-refine", "freeze-unfreeze@fastai", "rifle",
            "kernel-rescale"} == set(suites.GPU_CORE)


TINY = {"model": "tiny-cnn", "data": "fashion-mnist", "image_size": 16, "epochs": 1, "max_train": 40,
        "device": "cpu", **suites.NO_FILES}


def test_gpu_run_records_a_crashed_cell_and_starts_nothing_after_the_budget(tmp_path, monkeypatch):
    run = _load("gpu_run")
    monkeypatch.setitem(run.suite.SUITES, "gpu", [("t", TINY, ["sgdm", "linear-probe", "rifle"], 1)])
    monkeypatch.setattr(run.suite, "default_root", lambda s: tmp_path / s)
    real = run.run_cells

    def broken(base, methods, *a, **kw):
        if methods == ["linear-probe"]:
            raise RuntimeError("CUDA out of memory\nmore")
        return real(base, methods, *a, **kw)

    monkeypatch.setattr(run, "run_cells", broken)
    out = run.run_comparison("t", None, {}, None, time.monotonic() + 600)
    assert out == {"cells_run": 2, "cells_not_started": 0,
                   "failed": {"linear-probe": "crashed: RuntimeError: CUDA out of memory"}}
    res = json.loads((tmp_path / "gpu" / "t" / "results.json").read_text())
    assert [r["method"] for r in res["rows"]] == ["sgdm", "rifle"] and "linear-probe" in res["failed"]
    # the budget spent: the unfinished cell is not started, the finished ones are kept
    monkeypatch.setattr(run, "run_cells", real)
    assert run.run_comparison("t", None, {}, None, time.monotonic() - 1)["cells_not_started"] == 1
    # main: with no budget left the measurement stages are skipped and no cell starts
    monkeypatch.setattr(run, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(run.suite, "GPU_STAGES", [("precision", None, None), ("t", "t", None)])
    assert run.main(["--budget-minutes", "0"]) == 0
    stages = json.loads((tmp_path / "results" / "gpu_run" / "stages.json").read_text())["calls"][-1]["stages"]
    assert stages[0]["skipped"].endswith("estimated 60 s") and stages[1]["cells_not_started"] == 1


def test_throughput_hand_loop_does_exactly_the_engines_work():
    """The hand-written loop is the engine's work without the engine: the same weights after an epoch, bit for
    bit, so the throughput ratio measures the engine's overhead alone."""
    import copy

    import torch

    from fastretrain import TrainConfig, create_model, load_data

    eo = _load("engine_overhead")
    cfg = TrainConfig(**{**TINY, "epochs": 2, "batch_size": 8, "schedule": "constant", "val_fraction": 0.0,
                         "out": None, "max_train": None})
    data = load_data(cfg.data, cfg.image_size, max_train=41)  # 41 = 5 batches of 8 and one of 1 (dropped)
    torch.manual_seed(0)
    base = create_model(cfg.model, data.num_classes)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    eo.engine_for(a, data, cfg).fit()
    eo.hand_loop(b, data, cfg, torch.device("cpu"), None, False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), base.state_dict().values()))
    assert set(eo.extra_work(base, data, cfg, 16)) == set(eo.EXTRA)


def test_precision_check_measures_the_settings_it_names(tmp_path):
    prec = _load("gpu_precision")
    res = prec.main(["--device", "cpu", "--model", "tiny-cnn", "--data", "fashion-mnist", "--image-size", "16",
                     "--max-train", "24", "--batch-size", "8", "--reps", "1", "--out", str(tmp_path / "p.json")])
    assert res["resolved"] == {"float32": {"autocast": None, "channels_last": False},
                               "float32, channels-last": {"autocast": None, "channels_last": True},
                               "bf16 autocast": {"autocast": "bfloat16", "channels_last": False},
                               "bf16 autocast, channels-last": {"autocast": "bfloat16", "channels_last": True}}
    assert res["relative_to_float32"]["float32"] == 1.0 and (tmp_path / "p.md").is_file()


def test_gpu_page_from_the_committed_files(tmp_path, monkeypatch):
    monkeypatch.setattr(pages, "THROUGHPUT", tmp_path)
    monkeypatch.setattr(pages, "GPU_RUN", tmp_path / "stages.json")
    assert pages.gpu_page([]) is None  # nothing from a GPU: no page
    env = {"gpu": "NVIDIA H100 80GB HBM3", "torch": "2.11.0", "commit": "abc1234", "command": "gpu_run.py"}
    settings = ["bf16 autocast", "float32, channels-last", "float32"]  # stored sorted: the page puts float32 first
    (tmp_path / "gpu-precision.json").write_text(json.dumps({
        "config": {"model": "lite0", "image_size": 224, "batch_size": 32, "reps": 3, "train_images": 512},
        "tf32": {}, "median": dict(zip(settings, [2000.0, 1100.0, 1000.0])),
        "relative_to_float32": dict(zip(settings, [2.0, 1.1, 1.0])), "peak_memory_gib": dict.fromkeys(settings, 3.5)}))
    stage = {"stage": "flowers: core rows", "started_s": 20.0, "seconds": 200.0, "cells_run": 2, "cells_not_started": 1,
             "failed": {"rifle": "crashed: RuntimeError: CUDA out of memory"}}
    (tmp_path / "stages.json").write_text(json.dumps({"calls": [{"budget_minutes": 7, "seconds": 230.0,
                                                                  "stages": [stage], "environment": env}]}))
    recs = SGDM + flat("mp-refine", 0.81, 130)
    for r in recs:
        r["summary"]["images_per_second"] = 1000.0 if r["method"] == "sgdm" else 500.0
    c = comp(recs, size=224, cid="flowers")
    c["suite"] = "gpu"
    page = pages.gpu_page([c])
    assert "Device: GPU NVIDIA H100 80GB HBM3; torch 2.11.0; code abc1234." in page
    assert page.index("| float32 | 1000.0 | 1.00× | 3.50 |") < page.index("| float32, channels-last | 1100.0 | 1.10×")
    assert page.index("| float32, channels-last |") < page.index("| bf16 autocast | 2000.0 | 2.00× | 3.50 |")
    assert "| SGDM | 1000 ± 0 | 1.00× | 100.0 ± 0.0 |" in page
    assert "| `mp-refine` | 500 ± 0 | 0.50× | 130.0 ± 0.0 |" in page
    assert ("| flowers: core rows | 20 | 200 | 2 cells run, 1 not started; failed: `rifle`: crashed: RuntimeError: "
            "CUDA out of memory |") in page
    assert "## Throughput: engine, hand-written loop, extra work\n\nNot measured." in page
