"""Fast-retrain ablation variants are reachable from a suite's method list: a cell label carries options in the
`-o` syntax (`fast-retrain[random-freeze.policy=uniform;mp-refine.until=None]`), and options in a comparison's
base config reach only the methods a cell runs (an sgdm cell beside a fast-retrain one is not refused)."""
import json

from fastretrain import bench
from fastretrain.testing import tiny_bundle


def test_cell_config_parses_variant_labels_and_filters_base_options():
    base = {"model": "tiny-cnn", "epochs": 1, "options": {"mp-refine": {"C": 4.0}, "rifle": {"period": 2}}}
    plain = bench.cell_config(base, "sgdm")
    assert plain["method"] == "sgdm" and plain["options"] == {}
    fr = bench.cell_config(base, "fast-retrain")
    assert fr["options"] == {"mp-refine": {"C": 4.0}}
    label = "fast-retrain[random-freeze.policy=uniform;mp-refine.until=None;mp-refine.init_head=False]"
    v = bench.cell_config(base, label, per_method={label: {"lr": 0.5}})
    assert v["method"] == "fast-retrain" and v["lr"] == 0.5
    assert v["options"] == {"mp-refine": {"C": 4.0, "until": None, "init_head": False},
                            "random-freeze": {"policy": "uniform"}}
    assert base["options"] == {"mp-refine": {"C": 4.0}, "rifle": {"period": 2}}  # not modified


def test_a_comparison_runs_variant_cells(tmp_path, monkeypatch):
    import fastretrain.run as run

    real = run.build_engine
    monkeypatch.setattr(run, "build_engine", lambda cfg, bundle=None, *a, **k: real(cfg, tiny_bundle(), *a, **k))
    base = {"model": "tiny-cnn", "image_size": 16, "epochs": 1, "batch_size": 8, "lr": 0.05, "device": "cpu",
            "progress": False, "save_checkpoint": False, "save_weights": False, "options": {"mp-refine": {"C": 4.0}}}
    labels = ["sgdm", "fast-retrain", "fast-retrain[random-freeze.policy=uniform;mp-refine.init_head=False]"]
    bench.run_cells(base, labels, [0], tmp_path)
    configs = {lab: json.loads((bench.cell_dir(tmp_path, lab, 0) / "config.json").read_text()) for lab in labels}
    assert configs["sgdm"]["options"] == {}
    assert configs["fast-retrain"]["options"] == {"mp-refine": {"C": 4.0}}
    assert configs[labels[2]]["method"] == "fast-retrain"
    assert configs[labels[2]]["options"] == {"mp-refine": {"C": 4.0, "init_head": False},
                                             "random-freeze": {"policy": "uniform"}}
    lines = (bench.cell_dir(tmp_path, labels[2], 0) / "metrics.jsonl").read_text().splitlines()
    metrics = [json.loads(x) for x in lines]
    assert "init_head_seconds" not in metrics[0] and "refine_C" in metrics[0]


def test_cell_label_may_name_its_own_recipe():
    """`freeze-unfreeze@fastai`: the preset's optimisation settings replace the comparison's for that row only."""
    from fastretrain.methods import RECIPES

    base = {"model": "tiny-cnn", "lr": 0.01, "schedule": "cosine", "optimizer": "sgd", "weight_decay": 1e-4,
            "epochs": 3}
    cfg = bench.cell_config(base, "freeze-unfreeze@fastai")
    assert cfg["method"] == "freeze-unfreeze" and cfg["recipe"] == "fastai"
    for key in RECIPES["fastai"].fields:
        assert key not in cfg or key == "options"  # the recipe, not the comparison, sets these
    assert cfg["epochs"] == 3 and cfg["model"] == "tiny-cnn"  # what the recipe does not set stays
    from fastretrain.run import make_config

    made = make_config(**{**cfg, "out": None})
    for key, value in RECIPES["fastai"].fields.items():
        if key != "options":
            assert getattr(made, key) == value
    assert bench.cell_config(base, "sgdm")["lr"] == 0.01 and "recipe" not in bench.cell_config(base, "sgdm")
