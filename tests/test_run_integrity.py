"""A run folder is one run (issue 24, part 1): a new run refuses a folder holding another run's files unless told
(--resume continues it, --overwrite replaces it and removes its files first); every file carries the run's id; and
predict, eval and export refuse a folder whose files disagree on the id or whose run never finished an epoch.
Runs are interrupted (KeyboardInterrupt from a strategy hook) at several points and the folder is then used."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import fastretrain as fr
from fastretrain.cli import main
from fastretrain.integrity import run_ids
from fastretrain.testing import tiny_images

POINTS = ("before_fit", "mid_epoch_1", "after_epoch_1")


def photos(root: Path, classes) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png of tiny images."""
    for split, n, seed in (("train", 8, 0), ("test", 3, 7)):
        x, y = tiny_images(n, len(classes), 16, seed=seed)
        for i, (img, c) in enumerate(zip(x.numpy(), y.tolist())):
            d = root / split / classes[c]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    return photos(root / "ants_bees", ["ants", "bees"]), photos(root / "cats_dogs", ["cats", "dogs"])


def config(data: Path, out: Path, **kw):
    fields = dict(model="tiny-cnn", image_size=16, batch_size=8, epochs=2, lr=0.05, device="cpu", progress=False)
    return fr.make_config(data=str(data), out=str(out), **{**fields, **kw})


class Interrupt(fr.Strategy):
    """Ctrl-C at one point of a run."""

    def __init__(self, at: str):
        self.at = at

    def before_fit(self, engine):
        if self.at == "before_fit":
            raise KeyboardInterrupt

    def after_step(self, engine):
        if self.at == "mid_epoch_1" and engine.epoch == 0 and engine.iter == 1:
            raise KeyboardInterrupt

    def before_epoch(self, engine):
        if self.at == "after_epoch_1" and engine.epoch == 1:
            raise KeyboardInterrupt


def interrupted(cfg, at: str) -> None:
    with pytest.raises(KeyboardInterrupt):
        fr.build_engine(cfg, strategies=[Interrupt(at)]).fit()


def one_id(folder: Path) -> str:
    """The run id every file of the folder carries (fails when one differs or carries none)."""
    ids = [v for vs in run_ids(folder).values() for v in (vs if isinstance(vs, list) else [vs])]
    assert len(set(ids)) == 1 and ids[0], run_ids(folder)
    return ids[0]


def cli(capsys, *args) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def refused(capsys, *args) -> str:
    code, err = cli(capsys, *args)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err  # one line, exit 2
    return err


def commands(folder: Path, test: Path) -> list[list]:
    """predict, eval and export of the folder."""
    return [["predict", "--run", folder, test], ["eval", "--run", folder],
            ["export", "--run", folder, "--format", "torchscript"]]  # fmt: skip


def uses(folder: Path, test: Path, capsys, which="best") -> list[int]:
    """Exit statuses of predict, eval and export of the folder."""
    return [cli(capsys, "predict", "--run", folder, test, "--which", which, "--device", "cpu")[0],
            cli(capsys, "eval", "--run", folder, "--which", which, "--device", "cpu", "--json")[0],
            cli(capsys, "export", "--run", folder, "--which", which, "--format", "torchscript",
                "--out", folder.parent / f"{folder.name}.pt")[0]]  # fmt: skip


def test_every_file_of_a_finished_run_carries_its_id(data, tmp_path):
    out = tmp_path / "run"
    fr.train(config(data[0], out))
    rid = one_id(out)
    assert json.loads((out / "config.json").read_text())["run_id"] == rid and len(rid) == 16
    assert torch.load(out / "checkpoint.pt", weights_only=True)["run_id"] == rid
    assert json.loads((out / "test_report" / "metrics.json").read_text())["run_id"] == rid
    assert {r.split(",")[-1] for r in (out / "metrics.csv").read_text().splitlines()[1:]} == {rid}
    best = json.loads((out / "summary.json").read_text())["best_epoch"]
    for name, epoch in (("model_best", best), ("model_final", 2)):
        with safe_open(str(out / f"{name}.safetensors"), "pt") as f:
            assert f.metadata() == {"run_id": rid, "epoch": str(epoch)}
    other = tmp_path / "other"
    fr.train(config(data[0], other))
    assert one_id(other) != rid  # a new id per run


def test_a_new_run_refuses_a_folder_holding_another_run(data, tmp_path, capsys):
    out = tmp_path / "run"
    fr.train(config(data[0], out))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    flags = ["--model", "tiny-cnn", "--image-size", "16", "--epochs", "1", "--device", "cpu", "--no-progress"]
    err = refused(capsys, "train", "--data", data[1], *flags, "--out", out)
    assert err == (f"error: {out} holds another run's files: --resume continues that run, --overwrite replaces it "
                   "(its files are removed first)\n")  # fmt: skip
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing written
    with pytest.raises(fr.FastRetrainError, match="holds another run's files"):
        fr.train(config(data[1], out))  # the Python API too
    assert "not both" in refused(capsys, "train", "--data", data[1], *flags, "--out", out, "--resume", "--overwrite")
    # --overwrite: a new run, none of the old one's files left (a user's own file stays)
    (out / "notes.txt").write_text("mine")
    assert cli(capsys, "eval", "--run", out, "--device", "cpu", "--json")[0] == 0  # writes out/eval_best/
    assert main(["train", "--data", str(data[1]), *flags, "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "model.json").read_text())["classes"] == ["cats", "dogs"]
    assert not (out / "eval_best").exists() and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1
    one_id(out)


def test_the_issue_case_an_overwriting_run_killed_in_epoch_1_leaves_nothing_to_use(data, tmp_path, capsys):
    """Issue 24: a run on ants/bees, then one on cats/dogs into the same folder killed in epoch 1: predict used to
    label ants 'cats' with the old model's probability. Now the old files are gone and the folder is refused."""
    out = tmp_path / "run"
    fr.train(config(data[0], out))
    old_id = one_id(out)
    interrupted(config(data[1], out, overwrite=True), "mid_epoch_1")
    left = sorted(p.name for p in out.iterdir() if p.name != "tensorboard")  # (when tensorboard is installed)
    assert left == ["config.json", "metrics.jsonl", "model.json", "samples.safetensors"]
    assert one_id(out) != old_id
    test = data[0] / "test"
    for cmd in commands(out, test):
        assert "never finished an epoch" in refused(capsys, *cmd)


@pytest.mark.parametrize("at", POINTS)
def test_an_interrupted_run_is_refused_or_used_and_resumes(data, tmp_path, capsys, at):
    out, test = tmp_path / "run", data[0] / "test"
    interrupted(config(data[0], out), at)
    rid = one_id(out)
    if at == "after_epoch_1":  # epoch 1 finished: its weights are the run's, the final ones do not exist yet
        assert not (out / "summary.json").exists() and not (out / "model_final.safetensors").exists()
        assert uses(out, test, capsys) == [0, 0, 0]
        assert uses(out, test, capsys, "final") == [2, 2, 2]
    else:
        for cmd in commands(out, test):
            err = refused(capsys, *cmd)
            assert err == (f"error: {out}: its run ({rid}) never finished an epoch (interrupted?), so it holds no "
                           "trained model; continue it with `fastretrain train ... --resume`, or train again\n")
    with pytest.raises(fr.FastRetrainError, match="holds another run's files"):
        fr.train(config(data[0], out))  # not told what to do with it
    summary = fr.train(config(data[0], out, resume=True))
    assert summary["epochs"] == 2
    assert one_id(out) == rid  # the same run, continued from its checkpoint or (no epoch finished) from the start
    assert uses(out, test, capsys) == [0, 0, 0] and uses(out, test, capsys, "final") == [0, 0, 0]


def test_a_ridge_head_offered_as_epoch_0_is_not_a_finished_epoch(data, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = config(data[0], out, method="mp-refine", options={"mp-refine": {"C": 4.0}})
    interrupted(cfg, "mid_epoch_1")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [0] and (out / "model_best.safetensors").is_file()  # the head is saved
    with safe_open(str(out / "model_best.safetensors"), "pt") as f:
        assert f.metadata()["epoch"] == "0"
    assert "never finished an epoch" in refused(capsys, "predict", "--run", out, data[0] / "test")
    with pytest.raises(fr.FastRetrainError, match="never finished an epoch"):
        fr.load_model(out)


def test_files_of_another_run_are_named(data, tmp_path, capsys):
    a, b, test = tmp_path / "a", tmp_path / "b", data[0] / "test"
    fr.train(config(data[0], a))
    fr.train(config(data[0], b))
    id_a, id_b = one_id(a), one_id(b)
    shutil.copy(b / "model_best.safetensors", a / "model_best.safetensors")  # same classes: it would load
    for cmd in commands(a, test):
        err = refused(capsys, *cmd)
        assert err == (f"error: {a} mixes files of different runs: run {id_a}, but model_best.safetensors "
                       f"(run {id_b}); train into a new folder, or again with --overwrite\n")  # fmt: skip
    save_file(load_file(str(b / "model_best.safetensors")), str(a / "model_best.safetensors"))  # no metadata
    assert "model_best.safetensors (no run id)" in refused(capsys, "predict", "--run", a, test)
    shutil.copy(b / "model_final.safetensors", a / "model_best.safetensors")  # ...and the config of another run:
    cfg = json.loads((a / "config.json").read_text())
    (a / "config.json").write_text(json.dumps({**cfg, "run_id": id_b}))
    err = refused(capsys, "eval", "--run", a)
    assert f"mixes files of different runs: run {id_b}, but model.json (run {id_a})" in err


def test_resume_without_a_checkpoint_after_finished_epochs_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    fr.train(config(data[0], out, save_checkpoint=False))
    with pytest.raises(fr.FastRetrainError, match="no checkpoint to continue from; --overwrite replaces it"):
        fr.train(config(data[0], out, resume=True))
    fr.train(config(data[0], tmp_path / "fresh", resume=True))  # an empty folder: --resume starts from scratch


def test_a_folder_written_before_run_ids_is_read_as_it_is(data, tmp_path, capsys):
    out = tmp_path / "run"
    engine = fr.build_engine(config(data[0], out))
    engine.run_id = None  # the files as fastretrain wrote them before run ids
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "run_id"}))
    engine.fit()
    assert all(v in (None, [None]) for v in run_ids(out).values())
    assert uses(out, data[0] / "test", capsys) == [0, 0, 0]
