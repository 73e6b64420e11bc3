"""benchmarks/evidence_v3.py: the equal-budget table, time to the fixed target and the timing control, computed
from synthetic cells whose answers are known by hand."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import evidence_v3 as v3  # noqa: E402
import v3_report as rep  # noqa: E402


def write(root, label, seed, points, wall, control=(1.0, 1.0), classes=4, test_images=1000, budget=None):
    """A finished cell: `points` are (wall_seconds, val_acc, test_acc) per scored model, epochs from 1."""
    folder = root / label / f"seed{seed}"
    folder.mkdir(parents=True)
    lines = [{"epoch": i + 1, "wall_seconds": t, "val_acc": v, "val_loss": 1.0, "test_acc": a}
             for i, (t, v, a) in enumerate(points)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    cores = {"threads": 2, "cpu_count": 2}
    (folder / "summary.json").write_text(json.dumps({"wall_seconds": wall, "cpu_seconds": 2 * wall,
                                                     "test_images": test_images, "num_classes": classes,
                                                     "budget_seconds": budget, "load": {"end": cores}}))
    (folder / "environment.json").write_text(json.dumps({"control_seconds": list(control),
                                                         "load_average": [1.0, 2.0]}))


@pytest.fixture
def cells(tmp_path, monkeypatch):
    monkeypatch.setattr(v3, "ROOT", tmp_path)
    cid = tmp_path / "c"
    for s in range(3):
        t8 = 100.0 + s  # SGDM-8's training time sets the seed's budgets: t8/4, t8/2, t8
        write(cid, "sgdm-e8", s, [(t8 / 2, 0.6, 0.80), (t8, 0.7, 0.90)], t8, control=(1.0, 1.1))
        write(cid, "sgdm-e4", s, [(t8 / 4, 0.6, 0.70), (t8 / 2, 0.7, 0.85)], t8 / 2)
        write(cid, "sgdm-e2", s, [(t8 / 8, 0.6, 0.60), (t8 / 4, 0.7, 0.70)], t8 / 4)
        write(cid, "linear-probe", s, [(5.0, 0.8, 0.88)], 5.0)
        # fast-retrain: at 1/4 it returns 0.75 (its second model came 1 s past the budget x 1.05: not counted),
        # at 1/2 0.86 + s/100, at 1 nothing within the budget for seed 2 (chance), else 0.95
        write(cid, "fast-retrain#b1of4", s, [(t8 / 8, 0.6, 0.75), (t8 / 4 * 1.05 + 1, 0.9, 0.99)], t8 / 4,
              budget=t8 / 4)
        write(cid, "fast-retrain#b1of2", s, [(t8 / 2, 0.8, 0.86 + s / 100)], t8 / 2, budget=t8 / 2)
        write(cid, "fast-retrain#b1", s, [(t8 * 2 if s == 2 else t8 / 2, 0.8, 0.95)], t8, control=(0.9, 1.0),
              budget=t8)
    return v3.load("c")


def test_equal_budget_table(cells):
    a = v3.analyse("c", cells, ["fast-retrain"])
    t = a["table"]
    assert a["seeds"] == [0, 1, 2] and a["n_test"] == 1000 and a["chance"] == 0.25
    assert t[("sgdm", 0.25)]["acc"] == {0: 0.70, 1: 0.70, 2: 0.70}  # SGDM annealed to 2 epochs, its final
    assert t[("fast-retrain", 0.25)]["diffs"] == pytest.approx([5.0, 5.0, 5.0])  # 0.75 - 0.70, the late 0.99 unread
    assert t[("fast-retrain", 0.25)]["verdict"] == "gain"  # mean 5, std 0
    assert t[("fast-retrain", 0.5)]["diffs"] == pytest.approx([1.0, 2.0, 3.0])
    assert t[("fast-retrain", 0.5)]["verdict"] == "gain"  # mean 2, std 1
    assert t[("fast-retrain", 1.0)]["acc"][2] == 0.25  # nothing returned within the budget: chance
    # diffs +5, +5, -65 (seed 2 at chance): mean -18.3 fails "no loss"; mean + std > 0, so not a loss beyond one std
    assert t[("fast-retrain", 1.0)]["verdict"] == "inconclusive"
    assert t[("linear-probe", 0.25)]["acc"] == {0: 0.88, 1: 0.88, 2: 0.88}  # its one run, read at each budget


def test_time_to_target_and_timing_control(cells):
    a = v3.analyse("c", cells, ["fast-retrain"])
    assert a["target"] == pytest.approx(0.90 - 0.005)  # SGDM-8's mean delivered accuracy minus 0.5 pt
    r = a["reach"]
    assert r["sgdm"]["times"] == {0: 100.0, 1: 101.0, 2: 102.0}
    assert r["fast-retrain"]["times"] == {0: 50.0, 1: 50.5, 2: 204.0} and r["fast-retrain"]["reached"] == 3
    assert r["linear-probe"]["reached"] == 0 and r["linear-probe"]["timing"] == "never"
    assert a["spread"] == pytest.approx(1.1 / 0.9)
    assert a["seed_spreads"] == pytest.approx({0: 1.1 / 0.9, 1: 1.1 / 0.9, 2: 1.1 / 0.9})  # each seed's own cells
    assert a["sgdm_pace"] == pytest.approx({0: 1.0, 1: 1.0, 2: 1.0})  # t8/8 s per epoch in each SGDM cell
    assert "(minutes of the same training; for reading, not the rule): 1.00x / 1.00x / 1.00x" in rep.reach_md(a)
    assert a["machines"] == ["None"] and "1 machine session(s) by boot id, cells before" in rep.reach_md(a)
    assert r["fast-retrain"]["median_ratio"] == pytest.approx(0.5) and r["fast-retrain"]["timing"] == "faster"


def test_fewer_seeds_than_the_rule_needs_are_counted_nowhere(cells):
    two = {label: {s: r for s, r in runs.items() if s < 2} for label, runs in cells.items()}
    a = v3.analyse("c", two, ["fast-retrain"])
    c = a["table"][("fast-retrain", 0.5)]
    assert c["n"] == 2 and c["verdict"] is None
    assert "needs 3, counted nowhere" in rep.verdict_text(c) and "counted nowhere" in rep.table_md(a)
    assert rep.which_lines([a]) == ["- **c** (2 seeds): no verdict yet at 1/4, 1/2, 1 (fewer than 3 seeds)."]


def test_which_lines_say_where_each_wins(cells):
    (line,) = rep.which_lines([v3.analyse("c", cells, ["fast-retrain"])])
    assert "fast-retrain beats SGDM at equal budget at 1/4 (+5.00 ± 0.00 pt); 1/2 (+2.00 ± 1.00 pt)" in line
    assert "the linear probe is the right choice at 1/4 (the most accurate, +18.00 ± 0.00 pt vs SGDM); 1/2" in line
    assert "neither at 1 (SGDM is the most accurate)" in line


def test_a_cell_that_did_not_get_its_cores_is_pending(cells, tmp_path):
    summary = tmp_path / "c" / "sgdm-e2" / "seed0" / "summary.json"
    record = json.loads(summary.read_text())
    summary.write_text(json.dumps({**record, "cpu_seconds": 0.89 * 2 * record["wall_seconds"]}))
    assert "89% of 2 thread(s)" in v3.contended(json.loads(summary.read_text()))
    assert not v3.done(summary.parent) and 0 not in v3.load("c")["sgdm-e2"]
    summary.write_text(json.dumps({**record, "cpu_seconds": 0.91 * 2 * record["wall_seconds"],
                                   "load_warning": "the 1-minute load average was 3.4"}))  # niced, idle neighbours
    assert v3.done(summary.parent) and 0 in v3.load("c")["sgdm-e2"]


def test_without_cpu_time_the_load_warning_decides(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"wall_seconds": 10.0, "load_warning": "competed"}))
    assert not v3.done(tmp_path)
    (tmp_path / "summary.json").write_text(json.dumps({"wall_seconds": 10.0}))
    assert v3.done(tmp_path)


def test_a_rerun_sgdm8_makes_its_seeds_budgeted_cells_pending(cells, tmp_path):
    assert 1 in v3.load("c")["fast-retrain#b1of2"]
    summary = tmp_path / "c" / "sgdm-e8" / "seed1" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "wall_seconds": 90.0, "cpu_seconds": 180.0}))
    reloaded = v3.load("c")
    assert 1 not in reloaded["fast-retrain#b1of2"] and 0 in reloaded["fast-retrain#b1of2"]
    assert not v3.done(summary.parent.parent.parent / "fast-retrain#b1of2" / "seed1", 90.0, 0.5)


def _set_machine(folder, boot):
    env = json.loads((folder / "environment.json").read_text())
    (folder / "environment.json").write_text(json.dumps({**env, "boot_id": boot}))


def test_a_cell_counts_only_on_its_seeds_sgdm8_machine(cells, tmp_path):
    # cells recorded before the rule carry no boot id: one group, as before
    assert 1 in v3.load("c")["fast-retrain#b1of2"] and 1 in v3.load("c")["sgdm-e4"]
    _set_machine(tmp_path / "c" / "fast-retrain#b1of2" / "seed1", "other-boot")  # resumed on another machine
    _set_machine(tmp_path / "c" / "sgdm-e4" / "seed1", "other-boot")
    reloaded = v3.load("c")
    assert 1 not in reloaded["fast-retrain#b1of2"] and 1 not in reloaded["sgdm-e4"] and 0 in reloaded["sgdm-e4"]
    assert v3.pending(tmp_path / "c", ["fast-retrain"], 1) == ["sgdm-e4", "fast-retrain#b1of2"]
    assert v3.pending(tmp_path / "c", ["fast-retrain"], 0) == []


def _fake_runner(ran, boot):
    def run_cell(path, fields, env):
        ran.append(path.parent.name)
        if path.exists():
            import shutil
            shutil.rmtree(path)
        t = {8: 100.0, 4: 50.0, 2: 25.0}.get(fields.get("epochs"), 5.0) if "budget" not in fields \
            else float(fields["budget"][:-1])
        write(path.parent.parent, path.parent.name, int(path.name[4:]), [(t, 0.7, 0.8)], t,
              budget=float(fields["budget"][:-1]) if "budget" in fields else None)
        _set_machine(path, env["boot_id"])
        return True
    return run_cell


def test_a_group_begun_on_another_machine_runs_again_whole(cells, tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(v3, "run_cell", _fake_runner(ran, "here"))
    v3.run_group("c", {}, ["fast-retrain"], 0, {"boot_id": "here"}, None)
    assert ran == []  # a finished group (recorded before the rule) is left as it is, wherever it ran
    # seed 1 was only begun elsewhere: its SGDM-8 ran on another boot and its fast-retrain cells are missing
    import shutil
    for tag in ("b1", "b1of2", "b1of4"):
        shutil.rmtree(tmp_path / "c" / f"fast-retrain#{tag}" / "seed1")
    v3.run_group("c", {}, ["fast-retrain"], 1, {"boot_id": "here"}, None)
    assert ran == ["sgdm-e8", "sgdm-e4", "sgdm-e2", "linear-probe",
                   "fast-retrain#b1", "fast-retrain#b1of2", "fast-retrain#b1of4"]  # all of it, here
    assert {v3.cell_machine(tmp_path / "c" / lab / "seed1") for lab in ran} == {"here"}
    assert v3.pending(tmp_path / "c", ["fast-retrain"], 1) == [] and 1 in v3.load("c")["fast-retrain#b1"]
    ran.clear()
    v3.run_group("c", {}, ["fast-retrain"], 1, {"boot_id": "another-session"}, None)
    assert ran == []  # complete: resuming elsewhere changes nothing


def test_the_rerun_asks_what_is_pending_only_when_the_anchor_ran_elsewhere(cells, tmp_path):
    anchor = tmp_path / "c" / "sgdm-e8" / "seed0"
    _set_machine(anchor, "here")
    asked = []

    def has_pending(answer):
        return lambda: asked.append(answer) or answer

    assert not v3.begun_elsewhere(anchor, has_pending(True), "here") and asked == []  # same machine: not asked
    assert not v3.begun_elsewhere(anchor, has_pending(False), "there") and anchor.is_dir()  # complete: kept
    assert v3.replaced(tmp_path / "c") == []
    assert v3.begun_elsewhere(anchor, has_pending(True), "there") and not anchor.exists()  # removed: runs again
    (log,) = v3.replaced(tmp_path / "c")  # its time stays on record, for the machine's speed
    assert log["cell"] == "sgdm-e8/seed0" and log["boot_id"] == "here" and log["wall_seconds"] > 0
    assert asked == [False, True]
    assert not v3.begun_elsewhere(anchor, has_pending(True), "there") and asked == [False, True]  # gone: not asked


def test_a_contended_sgdm8_sets_no_budgets(cells, tmp_path, monkeypatch):
    """Its seconds would set the seed's budgets: while it did not get its cores, no budgeted cell runs (it reruns
    first, on the next resume), and sizing reads it nowhere."""
    import shutil
    for tag in ("b1", "b1of2", "b1of4"):
        shutil.rmtree(tmp_path / "c" / f"fast-retrain#{tag}" / "seed0")
    summary = tmp_path / "c" / "sgdm-e8" / "seed0" / "summary.json"
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "cpu_seconds": 0.5 * 2 * 100.0}))
    assert v3.t8s(tmp_path / "c", "sgdm-e8") == {1: 101.0, 2: 102.0}
    assert v3.t8s(tmp_path / "c", "sgdm-e8", counted=False)[0] == 100.0
    assert v3.pending(tmp_path / "c", ["fast-retrain"], 0) == ["sgdm-e8"]
    ran = []

    def contended_runner(path, fields, env):  # the rerun SGDM-8 is contended again
        ran.append(path.parent.name)
        shutil.rmtree(path)
        write(path.parent.parent, path.parent.name, 0, [(100.0, 0.7, 0.8)], 100.0)
        record = json.loads((path / "summary.json").read_text())
        (path / "summary.json").write_text(json.dumps({**record, "cpu_seconds": 0.5 * 2 * 100.0}))
        return True

    monkeypatch.setattr(v3, "run_cell", contended_runner)
    v3.run_group("c", {}, ["fast-retrain"], 0, {"boot_id": None}, None)
    assert ran == ["sgdm-e8"]  # rerun; still without its cores: no budget comes from it


def test_time_ratios_count_never_as_infinite_and_need_three_pairs(cells, tmp_path):
    # SGDM-8 seed 2 ends at 0.89: the target (mean 0.8967 - 0.5 pt) is never reached there
    m = tmp_path / "c" / "sgdm-e8" / "seed2" / "metrics.jsonl"
    lines = [json.loads(x) for x in m.read_text().splitlines()]
    lines[-1]["test_acc"] = 0.89
    m.write_text("".join(json.dumps(x) + "\n" for x in lines))
    a = v3.analyse("c", v3.load("c"), ["fast-retrain"])
    r = a["reach"]
    assert r["sgdm"]["reached"] == 2 and r["fast-retrain"]["reached"] == 3
    assert r["fast-retrain"]["pairs"] == 3  # seed 2: reached where SGDM-8 never did, a ratio of 0, not dropped
    assert r["fast-retrain"]["median_ratio"] == pytest.approx(0.5) and r["fast-retrain"]["timing"] == "faster"
    assert r["linear-probe"]["timing"] == "never"  # never reached on any of 3 seeds
    # without seed 2's cell only 2 pairs remain: no timing verdict
    import shutil
    shutil.rmtree(tmp_path / "c" / "fast-retrain#b1" / "seed2")
    a = v3.analyse("c", v3.load("c"), ["fast-retrain"])
    assert a["reach"]["fast-retrain"]["timing"] == "2 timed pairs: needs 3" and a["reach"]["fast-retrain"]["median_ratio"] is None
    assert "| 2 timed pairs: needs 3 |" in rep.reach_md(a)


def test_every_judged_budget_is_named_in_the_plain_words_line(cells):
    a = v3.analyse("c", cells, ["fast-retrain"])
    t = a["table"]
    # make fast-retrain the most accurate row at 1 with only "no loss": it must still be named
    t[("fast-retrain", 1.0)].update(acc={0: 0.905, 1: 0.897, 2: 0.917}, diffs=[0.5, -0.3, 1.7], verdict="no loss")
    t[("linear-probe", 1.0)].update(acc={0: 0.80, 1: 0.80, 2: 0.80})
    (line,) = rep.which_lines([a])
    assert "`fast-retrain` is the most accurate at 1 but not a gain over SGDM there (no loss, +0.63 ± 1.01 pt)" in line


def test_autos_goal_is_paired_and_ignores_rows_without_their_seeds(cells, tmp_path):
    for tag, acc in (("b1of4", 0.80), ("b1of2", 0.90), ("b1", 0.93)):
        for s in range(3):
            write(tmp_path / "c", f"auto#{tag}", s, [(10.0, 0.9, acc)], 20.0, budget={"b1of4": 0.25, "b1of2": 0.5,
                                                                                      "b1": 1.0}[tag] * (100.0 + s))
    # a fixed row with 2 seeds only (better than auto) must not set (a)'s bar
    for tag in ("b1of4", "b1of2", "b1"):
        for s in range(2):
            lv = {"b1of4": 0.25, "b1of2": 0.5, "b1": 1.0}[tag]
            write(tmp_path / "c", f"fast-retrain[x]#{tag}", s, [(10.0, 0.9, 0.99)], 20.0, budget=lv * (100.0 + s))
    a = v3.analyse("c", v3.load("c"), ["fast-retrain", "fast-retrain[x]", "auto"])
    assert a["table"][("fast-retrain[x]", 0.5)]["verdict"] is None
    rows = rep.auto_goal(a)
    half = next(r for r in rows if r.startswith("| 1/2 |"))
    assert "+2.00 pt vs `linear-probe`: yes" in half  # not -9 pt vs fast-retrain[x]'s two seeds at 0.99


def test_the_dry_run_sizes_pending_cells_from_measured_costs(cells, tmp_path, monkeypatch):
    import shutil
    assert v3.estimate("c", ["fast-retrain"], boot=None)["cells"] == 0  # everything counts: nothing to run
    shutil.rmtree(tmp_path / "c" / "fast-retrain#b1of2" / "seed1")
    e = v3.estimate("c", ["fast-retrain"], boot=None)
    assert e["cells"] == 1 and e["minutes"] * 60 == pytest.approx(0.5 * 101.0 + v3.CELL_OVERHEAD_S)
    # on another machine the seed's group runs again whole: SGDM at 3 budgets, the probe, 3 budgeted cells
    e = v3.estimate("c", ["fast-retrain"], boot="another machine")
    assert e["cells"] == 7 and e["minutes"] * 60 == pytest.approx(
        (1 + 0.5 + 0.25) * 101.0 + 5.0 + (1 + 0.5 + 0.25) * 101.0 + 7 * v3.CELL_OVERHEAD_S)
    monkeypatch.setattr(v3, "COMPARISONS", [("c", {}, ["fast-retrain"])])
    assert v3.dry_run(None, None, 3, None).startswith("c: 1 pending cells (1 budgeted methods), ~1 min (T8 ~101 s "
                                                      "from its own SGDM-8 cells)")


def test_a_group_that_cannot_finish_before_the_deadline_is_not_started(cells, tmp_path):
    import shutil
    import time
    shutil.rmtree(tmp_path / "c" / "fast-retrain#b1of2" / "seed1")  # ~65 s of work left in seed 1's group
    assert v3.group_cost("c", ["fast-retrain"], 1, None, 100.0) == (1, pytest.approx(0.5 * 101.0 + 15.0))
    assert v3.fits("c", ["fast-retrain"], 1, None, time.monotonic() + 120)
    assert not v3.fits("c", ["fast-retrain"], 1, None, time.monotonic() + 30)
    assert v3.fits("c", ["fast-retrain"], 0, None, time.monotonic() + 1)  # nothing pending in seed 0


def test_the_estimate_runs_at_this_machines_measured_speed(cells, tmp_path, monkeypatch):
    import shutil
    monkeypatch.setattr(v3, "COMPARISONS", [("c", {}, ["fast-retrain"])])
    assert v3.machine_speed("here") == 1.0  # no SGDM-8 cell ran here: nothing to scale by
    for envf in (tmp_path / "c").glob("*/seed0/environment.json"):  # seed 0's group ran here, seeds 1-2 elsewhere
        envf.write_text(json.dumps({**json.loads(envf.read_text()), "boot_id": "here"}))
    assert v3.machine_speed("here") == pytest.approx(100.0 / 101.5)  # its SGDM-8 over the others' mean
    (tmp_path / "c" / v3.REPLACED).write_text(json.dumps({"cell": "sgdm-e8/seed0", "boot_id": "before",
                                                          "wall_seconds": 50.0, "commit": None}) + "\n")
    assert v3.machine_speed("here") == pytest.approx(100.0 / ((101.0 + 102.0 + 50.0) / 3))  # a replaced time counts
    (tmp_path / "c" / v3.REPLACED).unlink()
    shutil.rmtree(tmp_path / "c" / "fast-retrain#b1of2" / "seed0")
    shutil.rmtree(tmp_path / "c" / "fast-retrain#b1of2" / "seed1")
    # seed 0's own SGDM-8 ran here: its pending cell costs its own budget, unscaled
    assert v3.group_cost("c", ["fast-retrain"], 0, "here", 100.0) == (1, pytest.approx(0.5 * 100.0 + 15.0))
    # seed 1's ran elsewhere: its whole group runs again here, at this machine's speed
    n, secs = v3.group_cost("c", ["fast-retrain"], 1, "here", 100.0)
    assert n == 7 and secs == pytest.approx(
        ((1 + 0.5 + 0.25) * 101.0 + 5.0 + (1 + 0.5 + 0.25) * 101.0 + 7 * 15.0) * 100.0 / 101.5)


def test_a_run_limited_by_only_still_renders_every_comparison(monkeypatch):
    """`--only c` runs c's cells, but README, docs and report.md list every comparison: rendering only c's would
    drop the others from them (2026-12-04: a `--only fashion-mnist-64-lite0` run rewrote docs/BENCHMARKS.md with
    that comparison alone). Nothing runs here (no seeds); the render is recorded, not done."""
    calls = []
    monkeypatch.setattr(rep, "render", lambda *a, **k: calls.append((a, k)) or ([], []))
    v3.main(["--only", "c", "--seeds", "0"])
    assert calls == [((), {})]
