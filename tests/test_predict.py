"""Predict: folders, zips, bad files, top-k order, labelled accuracy equal to `fastretrain eval` and to the engine's
own number; the bundle: model.json, logits equal to the engine's and identical in a fresh process."""

import csv
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fastretrain as fr
from fastretrain.cli import main
from fastretrain.data import store_size
from fastretrain.evaluation import collect_logits
from fastretrain.models import IMAGENET_MEAN, IMAGENET_STD
from fastretrain.testing import tiny_images

CLASSES = ["cat", "dog", "fox"]
FAST = ["--model", "tiny-cnn", "--image-size", "16", "--batch-size", "8", "--device", "cpu", "--no-progress"]


def write_folder(root: Path, n_train=10, n_test=6) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png of 20×14 tiny images (not square: resize + crop apply)."""
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 7)):
        x, y = tiny_images(n, 3, 20, seed=seed)
        for i, (img, c) in enumerate(zip(x.numpy(), y.tolist())):
            d = root / split / CLASSES[c]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[:, 3:17]).save(d / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained tiny run on an image folder: (run folder, photos folder, summary, engine)."""
    root = tmp_path_factory.mktemp("predict")
    photos = write_folder(root / "photos")
    torch.set_num_threads(1)
    cfg = fr.make_config(data=str(photos), model="tiny-cnn", image_size=16, batch_size=8, epochs=3, lr=0.05,
                         device="cpu", progress=False, out=str(root / "run"))  # fmt: skip
    engine = fr.build_engine(cfg)
    summary = engine.fit()
    return root / "run", photos, summary, engine


def _predict(capsys, *args):
    code = main(["predict", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_model_json_describes_the_bundle(run):
    folder, _, summary, engine = run
    spec = json.loads((folder / "model.json").read_text())
    assert spec["classes"] == CLASSES and spec["num_classes"] == 3 and spec["model"] == "tiny-cnn"
    pre = spec["preprocessing"]
    assert pre["image_size"] == 16 and pre["store_size"] == store_size(16) == 18
    assert tuple(pre["mean"]) == IMAGENET_MEAN and tuple(pre["std"]) == IMAGENET_STD == engine.norm[1]
    assert spec["started_from"].startswith("random initialisation")
    samples = fr.load_model(folder).spec  # loads
    assert samples["weights"] == {"best": "model_best.safetensors", "final": "model_final.safetensors"}


def test_load_model_gives_the_engines_logits(run):
    """Files decoded by the Predictor give bit-identical logits to the engine's evaluation of the same images."""
    folder, photos, _, engine = run
    m = fr.load_model(folder, which="final")  # the engine's model holds the final weights
    assert not m.model.training
    files = sorted((photos / "test").rglob("*.png"))
    ref = collect_logits(engine.model, engine.data.test, 16, engine.norm, "cpu")
    assert engine.data.test.y.tolist() == [CLASSES.index(f.parent.name) for f in files]  # same order
    assert torch.equal(m.logits(files), ref)
    # PIL images and paths as strings give the same (compared at the same batch size: the float sums of a batch of
    # 4 and of 18 may differ in the last bit)
    four = m.logits(files[:4])
    assert torch.equal(m.logits([Image.open(f) for f in files[:4]]), four) and torch.equal(
        m.logits(list(map(str, files[:4]))), four
    )
    assert torch.allclose(four, ref[:4], rtol=0, atol=1e-6)
    preds = m.predict(files[:3], topk=2)
    assert [p.label for p in preds] == [CLASSES[i] for i in ref[:3].argmax(1).tolist()]


def test_arrays_are_decoded_as_from_arrays(tmp_path):
    """A run trained on arrays (.npz): Predictor on the raw uint8 arrays = the engine on the stored test images."""
    x, y = tiny_images(8, 3, 12, seed=0)
    xt, yt = tiny_images(4, 3, 12, seed=5)
    np.savez(tmp_path / "a.npz", x_train=x.numpy(), y_train=y.numpy(), x_test=xt.numpy(), y_test=yt.numpy())
    cfg = fr.make_config(data=str(tmp_path / "a.npz"), model="tiny-cnn", image_size=16, epochs=1, batch_size=8,
                         device="cpu", progress=False, out=str(tmp_path / "r"))  # fmt: skip
    engine = fr.build_engine(cfg)
    engine.fit()
    m = fr.load_model(tmp_path / "r", "final")
    ref = collect_logits(engine.model, engine.data.test, 16, engine.norm, "cpu")
    assert torch.equal(m.logits(xt.numpy()), ref)  # (N, H, W, 3) uint8 batch
    assert torch.equal(m.logits(list(xt.numpy())), ref)  # a list of (H, W, 3) arrays
    assert m.classes == ["0", "1", "2"]


def test_fresh_process_gives_identical_logits(run, tmp_path):
    folder, photos, _, _ = run
    files = [str(f) for f in sorted((photos / "test").rglob("*.png"))]
    here = fr.load_model(folder).logits(files)
    code = ("import sys, torch, fastretrain as fr; torch.set_num_threads(1); "
            "torch.save(fr.load_model(sys.argv[1]).logits(sys.argv[3:]), sys.argv[2])")  # fmt: skip
    subprocess.run([sys.executable, "-c", code, str(folder), str(tmp_path / "l.pt"), *files], check=True)
    assert torch.equal(torch.load(tmp_path / "l.pt"), here)


def test_labelled_folder_accuracy_equals_eval_and_the_run(run, capsys, tmp_path):
    folder, photos, summary, _ = run
    code, _, err = _predict(capsys, "--run", str(folder), str(photos / "test"), "--out", str(tmp_path / "p.csv"))
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 18 and all(r["true_class"] == Path(r["path"]).parent.name for r in rows)
    correct = sum(r["class_1"] == r["true_class"] for r in rows)
    assert f"accuracy {correct / 18:.4f} ({correct}/18 labelled images" in err
    accs = []
    for data in (photos / "test", photos):  # all images of a labelled folder; a dataset's test split (load_data)
        assert main(["eval", "--run", str(folder), "--data", str(data), "--json"]) == 0
        accs.append(json.loads(capsys.readouterr().out)["test_acc"])
    assert main(["eval", "--run", str(folder), "--json"]) == 0  # the run's own test split
    own = json.loads(capsys.readouterr().out)
    assert own["test_set_id"] == summary["test_set_id"]
    # predict = eval (both ways) = the engine's test accuracy at the best epoch, logged during training
    assert accs == [pytest.approx(correct / 18, abs=1e-6)] * 2
    assert own["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-6) == pytest.approx(correct / 18, abs=1e-6)


def test_zip_gives_the_folder_predictions(run, capsys, tmp_path):
    folder, photos, _, _ = run
    zpath = tmp_path / "photos.zip"
    with zipfile.ZipFile(zpath, "w") as z:  # wrapped in one folder, as zipping a folder does
        for f in sorted((photos / "test").rglob("*.png")):
            z.write(f, f"test_images/{f.relative_to(photos / 'test').as_posix()}")
    outs = []
    for target in (photos / "test", zpath):
        code, out, err = _predict(
            capsys, "--run", str(folder), str(target), "--topk", "3", "--out", str(tmp_path / "p.json")
        )
        assert code == 0 and "accuracy" in err  # the zip's class folders are found under its wrapping folder
        outs.append(json.loads((tmp_path / "p.json").read_text())["predictions"])
    assert [r["topk"] for r in outs[0]] == [r["topk"] for r in outs[1]]
    assert [r["true_class"] for r in outs[0]] == [r["true_class"] for r in outs[1]]
    assert outs[1][0]["path"].startswith(str(zpath) + "/test_images/")


def test_topk_order_and_probabilities(run, capsys, tmp_path):
    folder, photos, _, _ = run
    files = sorted((photos / "test").rglob("*.png"))[:5]
    code, out, _ = _predict(capsys, "--run", str(folder), *map(str, files), "--topk", "3")  # CSV on stdout
    assert code == 0
    rows = list(csv.DictReader(out.splitlines()))
    probs = torch.softmax(fr.load_model(folder).logits(files).double(), 1)
    for row, p in zip(rows, probs):
        order = p.argsort(descending=True).tolist()
        assert [row[f"class_{i}"] for i in (1, 2, 3)] == [CLASSES[j] for j in order]
        got = [float(row[f"prob_{i}"]) for i in (1, 2, 3)]
        assert got == sorted(got, reverse=True) and got == pytest.approx(p[order].tolist(), abs=1e-6)
        assert sum(got) == pytest.approx(1.0, abs=1e-5)
    assert "true_class" not in rows[0]  # files named one by one carry no label


def test_bad_files_are_named_and_skipped(run, capsys, tmp_path):
    folder, photos, _, _ = run
    mixed = tmp_path / "mixed"
    shutil.copytree(photos / "test", mixed)
    (mixed / "cat" / "broken.jpg").write_bytes(b"not an image")
    (mixed / "dog" / "notes.txt").write_text("ignored: not an image extension")
    code, out, err = _predict(capsys, "--run", str(folder), str(mixed))
    assert code == 0 and len(out.strip().splitlines()) == 1 + 18
    assert "skipped unreadable image" in err and "broken.jpg" in err and "1 unreadable file(s) skipped" in err
    assert "notes.txt" not in out + err
    (tmp_path / "junk.png").write_bytes(b"junk")
    code, _, err = _predict(capsys, "--run", str(folder), str(tmp_path / "junk.png"))
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: none of the 1 image file(s) could be read")
    code, _, err = _predict(capsys, "--run", str(folder), str(tmp_path / "missing.jpg"))
    assert code == 2 and err.strip() == f"error: not found: {tmp_path / 'missing.jpg'}"
    code, _, err = _predict(capsys, "--run", str(tmp_path), str(mixed))
    assert code == 2 and "no model.json" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _predict(capsys, "--run", str(folder), str(empty))
    assert code == 2 and "no images found" in err


def test_a_model_given_in_python_is_not_rebuilt(tmp_path, bundle):
    cfg = fr.make_config(model="tiny-cnn", image_size=16, epochs=1, batch_size=8, device="cpu", progress=False,
                         out=str(tmp_path / "r"))  # fmt: skip
    fr.build_engine(cfg, bundle, module=fr.create_model("tiny-resnet", 3)).fit()
    with pytest.raises(fr.FastRetrainError, match="trained a model given in Python"):
        fr.load_model(tmp_path / "r")


def test_eval_of_a_run_folder_without_model_json(run, capsys, tmp_path):
    """Run folders written before model bundles: eval rebuilds the model from config.json and the data's classes."""
    folder, _, summary, _ = run
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    (old / "model.json").unlink()
    assert main(["eval", "--run", str(old), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-6) and res["test_set_id"] == summary["test_set_id"]
