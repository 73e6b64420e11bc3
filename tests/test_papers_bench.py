"""benchmarks/papers.py (issue 26): the cell plan of each paper's regime, resuming (finished cells skipped, cells that
did not get their cores rerun), the --dry-run estimate as a formula over the committed cells it names, and the fixed
rules on synthetic cells whose answers are known by hand. Nothing here trains."""
import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import evidence_v3 as v3  # noqa: E402
import papers  # noqa: E402
import papers_report as report  # noqa: E402

from fastretrain.methods import build_strategies  # noqa: E402
from fastretrain.run import make_config  # noqa: E402


def write_cell(folder, epochs, *, epoch_seconds=10.0, train_images=900, cpu_share=1.0, first=None, config=None,
               val=None, test=None, classes=10, summary=None, extra=None):
    """A finished cell: one metrics line per epoch (val/test accuracies from the lists when given; `extra`:
    {epoch: fields} added to that epoch's line)."""
    folder.mkdir(parents=True)
    lines = []
    for e in range(1, epochs + 1):
        line = {"epoch": e, "epoch_seconds": epoch_seconds, "wall_seconds": e * epoch_seconds, "val_loss": 1.0,
                "val_acc": val[e - 1] if val else 0.5}
        if test:
            line["test_acc"] = test[e - 1]
        line.update((extra or {}).get(e, {}))
        lines.append(line)
    if first:
        lines[0].update(first)
    wall = lines[-1]["wall_seconds"] + (first or {}).get("subnet_seconds", 0.0)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (folder / "summary.json").write_text(json.dumps({
        "wall_seconds": wall, "cpu_seconds": cpu_share * 2 * wall, "train_images": train_images, "test_images": 3000,
        "val_images": 100, "num_classes": classes, "load": {"end": {"threads": 2, "cpu_count": 2}}, **(summary or {})}))
    (folder / "config.json").write_text(json.dumps(config or {"epochs": epochs}))
    (folder / "environment.json").write_text(json.dumps({"control_seconds": [1.0, 1.02]}))


def test_the_cell_plan():
    rifle, kr, dec = papers.RIFLE, papers.KERNEL_RESCALE, papers.decompose_regime(0.89)
    assert [r.label for r in rifle.rows] == ["sgdm", "dropout", "dropconnect", "stochastic-depth", "disturblabel",
                                             "cyclic-lr", "rifle", "linear-probe"]
    assert {r.epochs for r in rifle.rows} == {40}  # the paper's schedule: resets at 10, 20, 30
    v3_base = next(b for c, b, _ in v3.COMPARISONS if c == "cifar10-96-lite0")
    assert rifle.base == {**v3_base, "test_eval": "improved"} and rifle.base["image_size"] == 96
    cells = papers.plan(rifle, 3)
    assert len(cells) == 24 and [s for _, s, _ in cells[:8]] == [0] * 8 and cells[8][1] == 1  # a seed's group whole
    assert cells[22][2] == papers.ROOT / "rifle" / "rifle" / "seed2"
    assert [(row.label, s) for row, s, _ in cells[7::8]] == [("linear-probe", s) for s in range(3)]  # after its core

    assert [(r.label, r.epochs) for r in kr.rows] == [("sgdm-e16", 16), ("sgdm-e13", 13), ("kernel-rescale", 16),
                                                      ("resize-only", 16)]
    assert kr.base["model"] == "resnet18" and kr.base["pretrained"] is False and 64 <= kr.base["image_size"] <= 128
    order = [(row.label, s) for row, s, _ in papers.plan(kr, 3)]
    assert order[3::4] == [("resize-only", 0), ("resize-only", 1), ("resize-only", 2)]  # the ablation after the core

    assert [(r.label, r.epochs) for r in dec.rows] == [("random-init-e16", 16), ("composed-K2", 16)]  # 4 x 0.89 <= 4
    assert papers.decompose_regime(1.3).rows[1].epochs == 4 + 16 - 6  # 4 sub-epochs x 1.3 = 5.2 -> 10 global
    # every planned cell is a valid config whose method options exist (checked at construction, before data loads)
    for regime in (rifle, kr, dec):
        for row in regime.rows:
            cfg = make_config(**papers.fields(regime, row, 2), out="x")
            assert cfg.seed == 2 and cfg.epochs == row.epochs and cfg.image_size >= 64
            build_strategies(cfg.method, cfg.options)
    opts = make_config(**papers.fields(dec, dec.rows[1], 0), out="x").options["decompose"]
    assert opts == {"subnets": 2, "sub_epochs": 4, "parallel": "processes"}


def test_resume_skips_finished_cells_and_reruns_contended_ones(tmp_path):
    regime = papers.decompose_regime(0.89)
    ran, calls = [], []

    def runner(path, fields, env):
        ran.append((path.parent.name, fields["seed"]))
        calls.append(path)
        shutil.rmtree(path, ignore_errors=True)  # as evidence_v3.run_cell: a rerun cell starts afresh
        share = 0.5 if fields["seed"] == 1 and len(calls) <= 6 else 1.0  # seed 1's first cells lost half their cores
        write_cell(path, 2, cpu_share=share)
        return True

    assert papers.run_regime(regime, 3, {}, None, out=tmp_path, runner=runner)
    assert len(ran) == 6
    ran.clear()
    papers.run_regime(regime, 3, {}, None, out=tmp_path, runner=runner)
    assert ran == [("random-init-e16", 1), ("composed-K2", 1)]  # only the contended cells ran again
    ran.clear()
    papers.run_regime(regime, 3, {}, None, out=tmp_path, runner=runner)
    assert ran == []  # everything finished with its cores: nothing to do
    assert not papers.run_regime(regime, 4, {}, 0.0, out=tmp_path, runner=runner) and ran == []  # past the deadline


def test_a_composed_run_is_judged_on_its_global_phase(tmp_path):
    # 100 s of sub-networks in child processes (no CPU time recorded here), then 2 x 50 s global epochs on 2 threads
    cell = tmp_path / "c"
    write_cell(cell, 2, epoch_seconds=50.0, first={"subnet_seconds": 100.0},
               summary={"cpu_seconds": 2 * 100.0})
    assert not v3.done(cell)  # evidence_v3's rule over the whole wall time: 50% of 2 threads
    assert papers.finished(cell)
    (cell / "summary.json").write_text(json.dumps({**json.loads((cell / "summary.json").read_text()),
                                                   "cpu_seconds": 0.8 * 2 * 100.0}))
    assert not papers.finished(cell)  # the global phase itself lost its cores


@pytest.fixture
def committed(tmp_path):
    """A results tree with the committed cells the estimates read, with round numbers."""
    v3_dir = tmp_path / "suite-v3" / "cifar10-96-lite0"
    for s in (0, 1, 2):
        write_cell(v3_dir / "sgdm-e8" / f"seed{s}", 4, epoch_seconds=9.0 + s, train_images=900,
                   test=[0.5] * 4 if s == 0 else None)  # test scored on 4 of the suite's 16 epochs
    write_cell(v3_dir / "sgdm-e8" / "seed3", 4, epoch_seconds=99.0, cpu_share=0.5)  # contended: never read
    for cid in papers.RATIO_SUITE:
        for s in (0, 1, 2):
            write_cell(tmp_path / "suite-cpu" / cid / "sgdm" / f"seed{s}", 2, epoch_seconds=10.0)
            write_cell(tmp_path / "suite-cpu" / cid / "stochastic-depth" / f"seed{s}", 2, epoch_seconds=12.0)
            write_cell(tmp_path / "suite-cpu" / cid / "dropout" / f"seed{s}", 2, epoch_seconds=9.0)
    scratch = tmp_path / "suite-cpu" / "cifar10-subset-resnet20-scratch"
    for s in (0, 1, 2):
        write_cell(scratch / "sgdm" / f"seed{s}", 3, epoch_seconds=5.0, train_images=5000)
        write_cell(scratch / "decompose" / f"seed{s}", 5, epoch_seconds=5.0, train_images=5000,
                   first={"subnet_seconds": 25.0}, config={"epochs": 10, "options": {}})  # 5 sub-epochs, 1x
    return tmp_path


def test_dry_run_estimate_is_a_formula_over_the_named_cells(committed):
    est = papers.estimate(papers.RIFLE, committed)
    per_image = 10.0 / 900  # median over the three uncontended cells of epoch 9 / 10 / 11 s
    assert est["epoch_seconds"] == pytest.approx(per_image * 900)
    assert est["eval_seconds"] == pytest.approx(0.27 * per_image * (100 + 3000 * 4 / 16))  # 4 of 16 epochs
    minutes = (40 * (est["epoch_seconds"] + est["eval_seconds"]) + papers.CELL_SETUP_S) / 60
    rows = est["rows"]
    assert rows["sgdm"]["minutes"] == pytest.approx(minutes)
    assert rows["stochastic-depth"]["minutes"] == pytest.approx(minutes + 40 * 0.2 * est["epoch_seconds"] / 60)
    assert rows["dropout"]["minutes"] == pytest.approx(minutes)  # 0.9x SGDM: floored at 1 (the same work)
    assert rows["rifle"]["note"].startswith("rifle: no suite-cpu cells")
    named = " ".join(est["sources"])
    assert "suite-v3/cifar10-96-lite0/sgdm-e8/seed2" in named and "seed3" not in named

    dec = papers.estimate(papers.decompose_regime(papers.subnet_ratio(committed / papers.DECOMPOSE_SOURCE)), committed)
    assert est["scale"] == 1.0 and dec["scale"] == pytest.approx(4.0, rel=0.01)  # resnet20: 64 px is 4x 32 px
    epoch = dec["scale"] * 5.0 / 5000 * 9000
    assert dec["epoch_seconds"] == pytest.approx(epoch)
    composed = dec["rows"]["composed-K2"]
    assert composed["train_minutes"] == pytest.approx((4 * 1.0 + 12) * epoch / 60)  # sub-epoch = 1 global epoch
    assert papers.decompose_regime(1.0).rows[1].epochs == 16

    doubled = committed / "suite-v3" / "cifar10-96-lite0" / "sgdm-e8"
    for s in (0, 1, 2):
        m = doubled / f"seed{s}" / "metrics.jsonl"
        lines = [json.loads(x) for x in m.read_text().splitlines()]
        m.write_text("".join(json.dumps({**x, "epoch_seconds": 2 * x["epoch_seconds"]}) + "\n" for x in lines))
    again = papers.estimate(papers.RIFLE, committed)
    assert again["epoch_seconds"] == pytest.approx(2 * est["epoch_seconds"])  # the estimate follows the cells

    own = committed / "papers" / "decompose" / "random-init-e16"  # the regime's own baseline, once one finished
    write_cell(own / "seed0", 3, epoch_seconds=27.0, train_images=9000)
    write_cell(own / "seed1", 2, epoch_seconds=99.0, train_images=9000, cpu_share=0.5)  # contended: never read
    measured = papers.estimate(papers.decompose_regime(1.0), committed)
    assert measured["scale"] == 1.0 and measured["epoch_seconds"] == pytest.approx(27.0)  # no FLOP scaling
    assert measured["sources"][0].startswith("per-image training cost 3.00 ms: papers/decompose/random-init-e16")


def test_the_estimate_runs_at_this_machines_speed_unless_its_cells_ran_here(committed, monkeypatch):
    monkeypatch.setattr(papers.v3, "machine_speed", lambda boot: 2.0 if boot == "here" else 1.0)
    base = papers.estimate(papers.RIFLE, committed)
    here = papers.estimate(papers.RIFLE, committed, boot="here")  # its source cells ran elsewhere
    assert here["epoch_seconds"] == pytest.approx(2 * base["epoch_seconds"])
    assert "x 2.00: this machine's speed" in " ".join(here["sources"])
    for s in (0, 1, 2):  # the same cells, run here: their time is this machine's already
        (committed / "suite-v3" / "cifar10-96-lite0" / "sgdm-e8" / f"seed{s}" / "environment.json").write_text(
            json.dumps({"control_seconds": [1.0, 1.02], "boot_id": "here"}))
    assert papers.estimate(papers.RIFLE, committed, boot="here")["epoch_seconds"] == pytest.approx(
        base["epoch_seconds"])


def rifle_cells(tmp_path, gain_pt):
    """RIFLE's regime where every row delivers 0.80 + s/1000 at the end (seed s) and RIFLE 0.80 + gain + 2s/1000."""
    for label in [r.label for r in papers.RIFLE.rows]:
        for s in range(3):
            final = 0.80 + (gain_pt / 100 + 2 * s / 1000 if label == "rifle" else s / 1000)
            write_cell(tmp_path / "rifle" / label / f"seed{s}", 2, val=[0.5, 0.6], test=[0.7, final])
    return report.load(papers.RIFLE, tmp_path)


@pytest.mark.parametrize("gain_pt, result", [(1.0, "reproduced (5 of 5 tricks)"),
                                             (0.3, "not reproduced (0 of 5 tricks)")])
def test_rifle_claim_by_the_fixed_rule(tmp_path, gain_pt, result):
    a = report.analyse(papers.RIFLE, rifle_cells(tmp_path, gain_pt))
    assert a["claim"]["result"] == result
    d = a["claim"]["criteria"]["rifle vs cyclic-lr"]["diffs"]
    assert d == pytest.approx([gain_pt, gain_pt + 0.1, gain_pt + 0.2])
    assert a["rows"]["rifle"]["verdict"] == "gain" and a["rows"]["dropout"]["verdict"] == "no loss"


def test_kernel_rescale_claim_and_what_the_kernels_add(tmp_path):
    """No loss against SGDM-16 and 0.8x its time (outside the control's 1.02x spread): reproduced. The paired
    difference against resize-only (-2 pt here) and against SGDM-13 are reported beside it and judge nothing."""
    kr = tmp_path / "kernel-rescale"
    for s in range(3):
        ramp = [0.30 + 0.02 * i for i in range(15)]
        write_cell(kr / "sgdm-e16" / f"seed{s}", 16, val=[i / 100 for i in range(16)], test=ramp + [0.60])
        write_cell(kr / "sgdm-e13" / f"seed{s}", 13, val=[i / 100 for i in range(13)], test=ramp[:12] + [0.57])
        write_cell(kr / "kernel-rescale" / f"seed{s}", 16, epoch_seconds=8.0, val=[i / 100 for i in range(16)],
                   test=ramp + [0.60])
        write_cell(kr / "resize-only" / f"seed{s}", 16, epoch_seconds=8.0, val=[i / 100 for i in range(16)],
                   test=ramp + [0.62])
    a = report.analyse(papers.KERNEL_RESCALE, report.load(papers.KERNEL_RESCALE, tmp_path))
    crit = a["claim"]["criteria"]
    assert crit["no loss vs SGDM, same epochs"]["diffs"] == pytest.approx([0.0] * 3)
    assert crit["time ratio"]["ratio"] == pytest.approx(0.8) and crit["time ratio"]["holds"]
    same_time = crit["vs SGDM in the same time (sgdm-e13; reported, not part of the claim)"]
    assert same_time["diffs"] == pytest.approx([3.0] * 3) and same_time["holds"] is None
    kernels = next(c for k, c in crit.items() if k.startswith("vs resize-only"))
    assert kernels["diffs"] == pytest.approx([-2.0] * 3) and kernels["verdict"] == "loss" and kernels["holds"] is None
    assert a["claim"]["result"] == "reproduced"


def test_decompose_claim_reads_the_delivered_curves(tmp_path):
    regime = papers.decompose_regime(1.0)
    for s in range(3):  # random init: 10 s epochs, 16 of them, test accuracy climbing 0.30 -> 0.60
        write_cell(tmp_path / "decompose" / "random-init-e16" / f"seed{s}", 16, val=[i / 100 for i in range(16)],
                   test=[0.30 + 0.02 * i for i in range(16)])
        # composed: 40 s of sub-networks, then 12 global epochs of 10 s: 0.50 rising to 0.59, then 0.61 + s/100
        write_cell(tmp_path / "decompose" / "composed-K2" / f"seed{s}", 12, val=[i / 100 for i in range(12)],
                   test=[0.50 + 0.009 * i for i in range(11)] + [0.61 + s / 100], first={"subnet_seconds": 40.0},
                   summary={"cpu_seconds": 2 * 120.0})
    for s in range(3):  # the composed runs' history times start after the sub-networks
        m = tmp_path / "decompose" / "composed-K2" / f"seed{s}" / "metrics.jsonl"
        lines = [json.loads(x) for x in m.read_text().splitlines()]
        m.write_text("".join(json.dumps({**x, "wall_seconds": x["wall_seconds"] + 40.0}) + "\n" for x in lines))
    a = report.analyse(regime, report.load(regime, tmp_path))
    crit = a["claim"]["criteria"]
    start = crit["starts better (delivered at its first global epoch vs random init at that time)"]
    assert start["diffs"] == pytest.approx([12.0] * 3) and start["holds"]  # 0.50 at 50 s vs 0.38 (epoch 5)
    assert a["rows"]["composed-K2"]["diffs"] == pytest.approx([1.0, 2.0, 3.0])  # 0.61 + s/100 vs 0.60 at 160 s
    assert crit["no loss at the budget"]["holds"] and a["target"] == pytest.approx(0.595)
    assert a["rows"]["composed-K2"]["reach_times"] == {0: 160.0, 1: 160.0, 2: 160.0}  # random init: 160 s too
    assert crit["reaches the target sooner"]["holds"] is False
    assert a["claim"]["result"] == "not reproduced (reaches the target sooner)"


def test_a_seed_begun_on_another_machine_runs_again_whole(tmp_path):
    regime = papers.decompose_regime(0.89)
    ran = []

    def runner(path, fields, env):
        ran.append((path.parent.name, fields["seed"]))
        shutil.rmtree(path, ignore_errors=True)
        write_cell(path, 2)
        env_f = path / "environment.json"
        env_f.write_text(json.dumps({**json.loads(env_f.read_text()), "boot_id": env["boot_id"]}))
        return True

    papers.run_regime(regime, 1, {"boot_id": "elsewhere"}, None, out=tmp_path, runner=runner)
    assert len(ran) == 2
    shutil.rmtree(papers.cell_path(regime, "composed-K2", 0, tmp_path))  # the seed is left unfinished there
    ran.clear()
    papers.run_regime(regime, 1, {"boot_id": "here"}, None, out=tmp_path, runner=runner)
    assert sorted(ran) == [("composed-K2", 0), ("random-init-e16", 0)]  # the baseline again too: its time is the budget
    ran.clear()
    papers.run_regime(regime, 1, {"boot_id": "yet another"}, None, out=tmp_path, runner=runner)
    assert ran == []  # complete on one machine: nothing to do anywhere
    cell = papers.cell_path(regime, "composed-K2", 0, tmp_path)
    env_f = cell / "environment.json"
    env_f.write_text(json.dumps({**json.loads(env_f.read_text()), "boot_id": "elsewhere"}))
    assert not papers.counts(regime, cell, tmp_path) and "composed-K2" not in report.load(regime, tmp_path)


def test_a_seed_group_that_would_not_finish_before_the_deadline_is_not_started(tmp_path):
    import time
    regime = papers.decompose_regime(0.89)
    ran = []

    def runner(path, fields, env):
        ran.append(path.parent.name)
        write_cell(path, 2)
        return True

    minutes = {"random-init-e16": 5.0, "composed-K2": 6.0}  # 11 minutes per seed
    assert not papers.run_regime(regime, 1, {}, time.monotonic() + 600, out=tmp_path, runner=runner, minutes=minutes)
    assert ran == []
    assert papers.run_regime(regime, 1, {}, time.monotonic() + 700, out=tmp_path, runner=runner, minutes=minutes)
    assert ran == ["random-init-e16", "composed-K2"]


def test_each_papers_docs_page_gets_its_regimes_state(tmp_path, monkeypatch):
    """render() fills each paper's docs block: judged with its claim and table when a baseline finished, "nothing
    judged" with its command when not; RIFLE's block adds the cpu-v2 rows' accuracy per epoch, resets marked."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for page in report.PAGES.values():
        (docs / page).write_text("# page\n\n<!-- results:papers -->\nstale\n<!-- /results:papers -->\n\nrest\n")
    cpu_v2 = tmp_path / "suite-cpu-v2" / "c"
    for s in range(3):
        write_cell(cpu_v2 / "sgdm" / f"seed{s}", 4, val=[0.5, 0.6, 0.7, 0.8], test=[0.5, 0.6, 0.7, 0.8])
        write_cell(cpu_v2 / "rifle" / f"seed{s}", 4, val=[0.5, 0.7, 0.4, 0.6], test=[0.5, 0.7, 0.4 + s / 100, 0.6],
                   extra={3: {"rifle_resets": 1}})  # the head was reset before epoch 3 trained
    monkeypatch.setattr(report, "CPU_V2", tmp_path / "suite-cpu-v2")
    out = tmp_path / "papers"
    for s in range(3):  # decompose: its baseline finished (3 seeds); the others have no cell
        write_cell(out / "decompose" / "random-init-e16" / f"seed{s}", 2, test=[0.3, 0.4])
    written = report.render(out=out, docs=docs)
    assert {docs / p for p in report.PAGES.values()} <= set(written)
    dec = (docs / "decompose.md").read_text()
    assert "stale" not in dec and dec.endswith("<!-- /results:papers -->\n\nrest\n")
    assert "3 of 6 cells finished (seeds 0, 1, 2)" in dec and "**Claim: pending" in dec and "| `composed-K2` |" in dec
    rifle = (docs / "rifle.md").read_text()
    assert "0 of 24 cells finished; no baseline cell yet: nothing judged." in rifle
    assert "`python benchmarks/papers.py --only rifle`" in rifle
    assert "| epoch | 1 | 2 | 3 ↺ | 4 |" in rifle and "| rifle test | 0.500 | 0.700 | 0.410 | 0.600 |" in rifle
    assert "| sgdm val | 0.500 | 0.600 | 0.700 | 0.800 |" in rifle
    assert "epoch |" not in (docs / "kernel_rescale.md").read_text()  # the reset table is RIFLE's alone


def test_rifle_regime_table_shows_each_reset_from_the_cells_metrics(tmp_path):
    """The regime's own reset table: columns are the first and last epochs and, per reset read from the cells'
    `rifle_resets`, the epoch before and the three from it; each value the mean over the seeds all three rows
    finished (seed 2 of cyclic-lr is missing, so seeds 0-1)."""
    val = [0.1 * (i % 10) for i in range(12)]
    for label in ("sgdm", "cyclic-lr", "rifle"):
        for s in range(3 if label != "cyclic-lr" else 2):
            reset = {"train_loss": 2.0, "rifle_resets": 1} if label == "rifle" else {"train_loss": 1.0}
            write_cell(tmp_path / "rifle" / label / f"seed{s}", 12,
                       val=[v + (s / 100 if label == "rifle" else 0) for v in val],
                       extra={e: reset if e in (4, 8) else {"train_loss": 1.0} for e in range(1, 13)})
    cells = report.load(papers.RIFLE, tmp_path)
    text = "\n".join(report.regime_resets(cells))
    assert "mean over 2 seeds (0, 1)" in text
    assert "| epoch | 1 | 3 | 4 ↺ | 5 | 6 | 7 | 8 ↺ | 9 | 10 | 12 |" in text
    assert "| rifle val | 0.005 | 0.205 | 0.305 | 0.405 | 0.505 | 0.605 | 0.705 | 0.805 | 0.905 | 0.105 |" in text
    assert "| rifle train loss | 1.000 | 1.000 | 2.000 | 1.000 | 1.000 | 1.000 | 2.000 | 1.000 | 1.000 | 1.000 |" in text
    assert report.regime_resets({"sgdm": cells["sgdm"]}) == []  # no cyclic-lr or rifle cell yet: no table


def test_the_benchmarks_claims_section_reads_each_regimes_verdict(tmp_path, monkeypatch):
    import findings

    monkeypatch.setattr(findings, "ROOT", tmp_path)
    assert findings.own_regime("decompose").startswith("no baseline cell has finished yet")
    folder = tmp_path / "benchmarks" / "results" / "papers" / "decompose"
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"seeds": [0], "claim": {"result": "pending (x)"}}))
    assert findings.own_regime("decompose").startswith("**pending (x)** (1 seed of its baseline finished;")
    assert set(findings.OWN_REGIME) <= set(findings.PAPERS) and set(findings.OWN_REGIME.values()) == set(report.PAGES)
