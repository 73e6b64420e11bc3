"""Comparison harness: cells are run once and reused, the table and time-to-target are computed right."""
import json

from fastretrain.bench import aggregate, compare, markdown_table, time_to


def test_time_to_and_aggregate():
    hist = [{"test_acc": 0.5, "wall_seconds": 1.0}, {"test_acc": 0.8, "wall_seconds": 2.0}, {"test_acc": 0.9, "wall_seconds": 3.0}]
    assert time_to(hist, 0.8) == 2.0 and time_to(hist, 0.95) is None
    recs = [{"method": m, "seed": s, "summary": {"best_test_acc": b, "final_test_acc": b, "wall_seconds": 3.0, "images_per_second": 10.0},
             "history": [{"test_acc": b, "wall_seconds": w}]}
            for m, s, b, w in [("sgdm", 0, 0.8, 3.0), ("sgdm", 1, 0.9, 3.0), ("x", 0, 0.86, 1.0), ("x", 1, 0.84, 1.5)]]  # fmt: skip
    rows = aggregate(recs, "sgdm")
    assert abs(rows[0]["target"] - 0.85) < 1e-12
    assert rows[1]["time_to_target"] == [1.0, None] and rows[1]["reached"] == 1
    table = markdown_table(rows, "sgdm")
    assert "0.8500 ± 0.0707" in table and "(1/2 reached)" in table


def test_compare_runs_cells_once_and_writes_outputs(tmp_path, capsys):
    base = {"model": "tiny-cnn", "data": "fashion-mnist", "image_size": 16, "epochs": 1, "max_train": 60, "progress": False,
            "save_checkpoint": False, "device": "cpu"}  # fmt: skip
    res = compare(base, ["sgdm", "linear-probe"], [0], tmp_path / "b")
    for f in ("results.json", "results.md", "accuracy_vs_time.png"):
        assert (tmp_path / "b" / f).is_file()
    assert [r["method"] for r in res["rows"]] == ["sgdm", "linear-probe"]
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert saved["environment"]["cpu_count"] >= 1 and saved["runs"][0]["summary"]["epochs"] == 1
    cell_env = json.loads((tmp_path / "b" / "sgdm" / "seed0" / "environment.json").read_text())
    assert cell_env["commit"] == saved["environment"]["commit"] and "command" in cell_env and "torch" in cell_env
    saved["environment"]["command"] = "the command that ran the cells"
    (tmp_path / "b" / "results.json").write_text(json.dumps(saved))
    capsys.readouterr()
    compare(base, ["sgdm", "linear-probe"], [0], tmp_path / "b")  # finished cells are reused, not rerun
    assert "== " not in capsys.readouterr().out
    # a re-aggregation keeps the record of the run that produced the cells
    assert json.loads((tmp_path / "b" / "results.json").read_text())["environment"]["command"] == "the command that ran the cells"
