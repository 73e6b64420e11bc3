"""Timing you can trust (issue 24, part 3): a run records the load average and CPU count at its start and end, and
warns in one line when another process competed for the cores."""

import json
import warnings
from pathlib import Path

import pytest

import fastretrain as fr
import fastretrain.cli
from fastretrain import load
from fastretrain.cli import main
from fastretrain.errors import FastRetrainWarning


def test_competing_load_rule():
    # 2 cores, the run's 2 threads: its own load is no competition, another process's 1.5 threads are
    assert load.competing_load(2.0, 2.4, cpu_count=2, threads=2) is None
    line = load.competing_load(0.3, 3.6, cpu_count=2, threads=2)
    assert line is not None and "\n" not in line
    assert "0.3 at the start and 3.6 at the end on 2 CPU(s)" in line and "2 thread(s)" in line
    assert "another process competed" in line
    # load from before the run (the 1-minute average lags) counts too
    assert load.competing_load(4.7, 2.1, cpu_count=2, threads=2) is not None
    # one thread on 16 cores beside 8 busy ones: the cores were not oversubscribed
    assert load.competing_load(9.0, 9.0, cpu_count=16, threads=1) is None
    # all 16 cores used by the run and 2 more threads wanting them
    assert load.competing_load(18.5, 18.5, cpu_count=16, threads=16) is not None
    assert load.competing_load(16.5, 16.5, cpu_count=16, threads=16) is None  # within the margin
    assert load.competing_load(None, None, cpu_count=2, threads=2) is None  # no load average on this platform
    assert "3.0 at the end" in load.competing_load(None, 3.0, cpu_count=1, threads=1)


def test_snapshot_and_warning_of_two_snapshots(monkeypatch):
    monkeypatch.setattr(load.os, "getloadavg", lambda: (0.5, 0.25, 0.125))
    monkeypatch.setattr(load.os, "cpu_count", lambda: 2)
    s = load.load_snapshot(threads=2)
    assert s == {"load_average": [0.5, 0.25, 0.12], "cpu_count": 2, "threads": 2}
    busy = {**s, "load_average": [3.9, 1.0, 0.5]}
    assert load.run_load_warning(s, s) is None
    assert "0.5 at the start and 3.9 at the end" in load.run_load_warning(s, busy)
    monkeypatch.delattr(load.os, "getloadavg")
    assert load.load_snapshot(threads=1)["load_average"] is None
    assert load.run_load_warning(load.load_snapshot(threads=1), load.load_snapshot(threads=1)) is None


def test_a_run_records_the_load_and_warns_once_when_contended(cfg, bundle, monkeypatch):
    cfg.epochs, cfg.progress = 1, True
    summary = fr.train(cfg, bundle=bundle)
    written = json.loads((Path(cfg.out) / "summary.json").read_text())
    for when in ("start", "end"):
        snap = written["load"][when]
        assert snap["cpu_count"] >= 1 and snap["threads"] == 1  # conftest runs tests on one thread
        assert snap["load_average"] is None or len(snap["load_average"]) == 3
    assert summary["load"] == written["load"]

    loads = iter([(0.2, 0.2, 0.2), (5.0, 2.0, 1.0)])  # the start, then the end of the run
    monkeypatch.setattr(load.os, "getloadavg", lambda: next(loads))
    monkeypatch.setattr(load.os, "cpu_count", lambda: 2)
    cfg.out = str(Path(cfg.out).parent / "busy")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = fr.train(cfg, bundle=bundle)
    ours = [w for w in caught if issubclass(w.category, FastRetrainWarning)]
    assert len(ours) == 1 and str(ours[0].message) == summary["load_warning"]
    assert "0.2 at the start and 5.0 at the end on 2 CPU(s)" in summary["load_warning"]
    assert json.loads((Path(cfg.out) / "summary.json").read_text())["load_warning"] == summary["load_warning"]


def test_demo_names_the_cells_that_ran_under_load(monkeypatch, capsys):
    quiet, busy = {"summary": {}}, {"summary": {"load_warning": "the 1-minute load average was ..."}}
    records = [{"method": "sgdm", **busy}, {"method": "linear-probe", **quiet}, {"method": "rifle", **busy}]
    monkeypatch.setattr(fastretrain.cli, "compare", lambda *a, **k: {"table": "| table |", "records": records})
    assert main(["demo", "--quick", "--out", "demo"]) == 0
    out = capsys.readouterr().out
    assert "warning: another process competed for the cores during sgdm, rifle: their times" in out
    records[0], records[2] = ({"method": m, **quiet} for m in ("sgdm", "rifle"))
    assert main(["demo", "--quick", "--out", "demo"]) == 0
    assert "competed" not in capsys.readouterr().out


@pytest.mark.parametrize("start,end", [(0.0, 0.0), (1.0, 2.9)])
def test_no_warning_without_competition_on_one_core_per_thread(start, end):
    assert load.competing_load(start, end, cpu_count=4, threads=4) is None
