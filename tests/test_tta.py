"""--tta for `eval` and `predict` (issue 24, part 5): the probabilities are the mean of the softmax of the image and of
its horizontal flip, compared with two plain passes of the model (1e-6)."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import fastretrain as fr
from fastretrain.cli import main
from fastretrain.data import prepare_images
from fastretrain.evaluation import collect_logits
from fastretrain.predict import tta_logits
from fastretrain.testing import tiny_images

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny trained run on an image folder of asymmetric images (a flip changes the logits)."""
    root = tmp_path_factory.mktemp("tta")
    for split, n, seed in (("train", 8, 0), ("test", 4, 7)):
        x, y = tiny_images(n, 3, 20, seed=seed)
        for i, (img, c) in enumerate(zip(x.numpy(), y.tolist())):
            d = root / "photos" / split / CLASSES[c]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[:, 3:17]).save(d / f"{i:02d}.png")
    torch.set_num_threads(1)
    cfg = fr.make_config(data=str(root / "photos"), model="tiny-cnn", image_size=16, batch_size=8, epochs=1, lr=0.05,
                         device="cpu", progress=False, out=str(root / "run"))  # fmt: skip
    engine = fr.build_engine(cfg)
    engine.fit()
    return root / "run", root / "photos", engine


def _two_passes(model, x):
    """The mean softmax of the plain and the flipped input, computed the naive way."""
    with torch.no_grad():
        return (torch.softmax(model(x), 1) + torch.softmax(model(torch.flip(x, dims=[3])), 1)) / 2


def test_tta_logits_are_the_log_of_the_mean_softmax_of_the_two_passes():
    torch.manual_seed(0)
    model = fr.create_model("tiny-cnn", 5).eval()
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        got = tta_logits(model, x)
    want = _two_passes(model, x)
    assert got.shape == (6, 5) and got.dtype == torch.float32
    assert torch.allclose(torch.softmax(got, 1), want, atol=1e-6, rtol=0)
    assert torch.allclose(got.exp().sum(1), torch.ones(6), atol=1e-6)  # log-probabilities
    with torch.no_grad():
        plain = model(x)
    assert not torch.allclose(torch.softmax(plain, 1), want, atol=1e-4)  # the flip changed something


def test_predictor_and_collect_logits_with_tta(run):
    folder, photos, engine = run
    files = sorted((photos / "test").rglob("*.png"))
    plain, tta = fr.load_model(folder), fr.load_model(folder, tta=True)
    assert not plain.tta and tta.tta
    x = prepare_images(torch.stack([plain.decode(f) for f in files]), False, plain.image_size, plain.norm)
    want = _two_passes(plain.model, x)
    assert torch.allclose(torch.softmax(tta.logits(files), 1), want, atol=1e-6, rtol=0)
    assert torch.equal(plain.logits(files), plain.logits(files))  # without --tta: unchanged, one pass
    got = collect_logits(tta.model, engine.data.test, 16, tta.norm, "cpu", tta=True)  # eval's path
    assert torch.allclose(torch.softmax(got, 1), want, atol=1e-6, rtol=0)
    p = tta.predict(files[:2], topk=3)
    got_p = torch.tensor([q.probs for q in p], dtype=torch.float64)
    assert torch.allclose(got_p, want[:2].sort(1, descending=True).values.double(), atol=1e-6, rtol=0)


def test_predict_and_eval_cli_with_tta(run, tmp_path, capsys):
    folder, photos, _ = run
    out = tmp_path / "p.json"
    assert main(["predict", "--run", str(folder), str(photos / "test"), "--tta", "--topk", "3", "--device", "cpu",
                 "--out", str(out)]) == 0  # fmt: skip
    assert "TTA: mean softmax of each image and its flip" in capsys.readouterr().err
    rows = json.loads(out.read_text())
    assert rows["tta"] == "flip"
    m = fr.load_model(folder)
    files = [Path(r["path"]) for r in rows["predictions"]]
    x = prepare_images(torch.stack([m.decode(f) for f in files]), False, m.image_size, m.norm)
    want = _two_passes(m.model, x)
    for row, w in zip(rows["predictions"], want):
        for t in row["topk"]:
            assert t["prob"] == pytest.approx(float(w[CLASSES.index(t["class"])]), abs=1e-6)

    assert main(["eval", "--run", str(folder), "--tta", "--json", "--device", "cpu"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["tta"] == "flip" and line["report"].endswith("eval_best_tta")
    labels = torch.tensor([CLASSES.index(f.parent.name) for f in files])
    acc = float((want.argmax(1) == labels).double().mean())
    assert line["test_acc"] == pytest.approx(acc, abs=1e-6)  # the run's test split is this folder's test/
    assert line["test_loss"] == pytest.approx(float(-want[range(len(labels)), labels].log().mean()), abs=1e-5)
    assert json.loads((folder / "eval_best_tta" / "metrics.json").read_text())["tta"] == "flip"
    assert main(["eval", "--run", str(folder), "--json", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["tta"] is None
