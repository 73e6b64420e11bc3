"""benchmarks/rerun_cell.py: a finished cell re-run from its config.json reproduces its metrics bit for bit, and a
changed number is reported (issue 25's "behaviour does not change" check)."""
import json
import sys
from pathlib import Path

import pytest
import torch

import fastretrain as fr
from fastretrain.testing import write_photo_folders

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import rerun_cell  # noqa: E402


@pytest.fixture
def cell(tmp_path):
    photos, _ = write_photo_folders(tmp_path, per_class=8, new_per_class=2)
    out = tmp_path / "cell"
    fr.train(fr.make_config(data=photos, model="tiny-cnn", image_size=16, batch_size=8, epochs=2, lr=0.05,
                            device="cpu", progress=False, out=str(out), seed=3))
    return out


def test_a_cell_reproduces_and_a_changed_number_is_named(cell):
    assert rerun_cell.rerun(cell) == []
    lines = [json.loads(x) for x in (cell / "metrics.jsonl").read_text().splitlines()]
    lines[1]["val_acc"] += 1e-9  # the smallest change counts
    (cell / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    diffs = rerun_cell.rerun(cell)
    assert len(diffs) == 1 and diffs[0].startswith("metrics[1].val_acc:")


def test_time_and_identity_are_not_compared():
    assert rerun_cell.differences({"wall_seconds": 1.0, "run_id": "a", "acc": 0.5},
                                  {"wall_seconds": 2.0, "run_id": "b", "acc": 0.5}) == []


def test_budgeted_cells_and_other_thread_counts_are_refused(cell):
    config = json.loads((cell / "config.json").read_text())
    summary = json.loads((cell / "summary.json").read_text())
    other = {"load": {"end": {"threads": torch.get_num_threads() + 1}}}
    (cell / "summary.json").write_text(json.dumps({**summary, **other}))
    with pytest.raises(SystemExit, match="threads"):
        rerun_cell.rerun(cell)
    (cell / "config.json").write_text(json.dumps({**config, "budget": 30.0}))
    with pytest.raises(SystemExit, match="budgeted"):
        rerun_cell.rerun(cell)
