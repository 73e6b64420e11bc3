"""Export: ONNX (onnxruntime) and TorchScript give PyTorch's logits on real images within 1e-4 (fp32) at any batch
size; the file carries the class names; a failed parity check, missing packages and a run without samples are errors."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fastretrain as fr
from fastretrain import export as ex
from fastretrain.cli import main
from fastretrain.testing import tiny_images


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained tiny-resnet run (BN, residual blocks, a 7×7 stem) on a folder of photos; new photos beside it."""
    root = tmp_path_factory.mktemp("export")
    for split, n, seed in (("photos", 8, 0), ("new", 3, 9)):
        x, y = tiny_images(n, 3, 24, seed=seed)
        for i, (img, c) in enumerate(zip(x.numpy(), y.tolist())):
            (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(root / split / f"c{c}" / f"{i}.png")
    torch.set_num_threads(1)
    cfg = fr.make_config(data=str(root / "photos"), model="tiny-resnet", image_size=24, epochs=2, batch_size=8,
                         device="cpu", progress=False, out=str(root / "run"))  # fmt: skip
    fr.train(cfg)
    return root


def _reference(run, b):
    """PyTorch logits of the first b new photos, and those photos preprocessed (an input the exporter never saw)."""
    m = fr.load_model(run / "run")
    files = sorted((run / "new").rglob("*.png"))[:b]
    x = torch.stack([m.decode(f) for f in files])
    from fastretrain.data import prepare_images

    return m.logits(files), prepare_images(x, False, m.image_size, m.norm)


def test_onnx_parity_dynamic_batch_and_metadata(run, capsys):
    pytest.importorskip("onnxruntime")
    import onnx
    import onnxruntime

    assert main(["export", "--run", str(run / "run"), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "parity with PyTorch" in out and "6 test image(s) the run kept" in out and ": ok" in out
    path = run / "run" / "model_best.onnx"
    sess = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert isinstance(sess.get_inputs()[0].shape[0], str)  # a named, dynamic batch dimension
    for b in (1, 5):  # our own check, on photos not used by the exporter's check
        ref, x = _reference(run, b)
        got = torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])
        assert got.shape == (b, 3) and (got - ref).abs().max() <= 1e-4
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["classes"]) == ["c0", "c1", "c2"]
    assert json.loads(props["fastretrain.model_json"])["preprocessing"]["image_size"] == 24


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated upstream
def test_torchscript_parity_and_extra_files(run, capsys, tmp_path):
    out = tmp_path / "m.pt"
    facts = ex.export_run(run / "run", "torchscript", out, which="final", images=[run / "new"])
    assert facts["max_abs_logit_diff"] <= 1e-4 and set(facts["per_batch"]) == {9, 1}
    extra = {"model.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["model.json"])["classes"] == ["c0", "c1", "c2"]
    m = fr.load_model(run / "run", "final")
    for b in (1, 4):
        files = sorted((run / "new").rglob("*.png"))[:b]
        from fastretrain.data import prepare_images

        x = prepare_images(torch.stack([m.decode(f) for f in files]), False, m.image_size, m.norm)
        with torch.no_grad():
            assert (loaded(x) - m.logits(files)).abs().max() <= 1e-4


def test_parity_failure_is_an_error_and_the_file_is_kept(run, monkeypatch, tmp_path):
    real = ex.export_torchscript

    def off_by_1e_3(model, example, path, spec):
        runner, info = real(model, example, path, spec)
        return (lambda x: runner(x) + 1e-3), info

    monkeypatch.setattr(ex, "export_torchscript", off_by_1e_3)
    with pytest.raises(fr.FastRetrainError, match=r"parity check failed: max \|logit difference\| 0.001 > 0.0001"):
        ex.export_run(run / "run", "torchscript", tmp_path / "bad.pt")
    assert (tmp_path / "bad.pt").is_file()


def test_missing_onnx_packages_and_missing_samples(run, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    assert main(["export", "--run", str(run / "run"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: ONNX export needs the optional package(s) onnxruntime: pip install 'fastretrain[export]'"
    monkeypatch.undo()
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.json", "model_best.safetensors"):
        (bare / name).write_bytes((run / "run" / name).read_bytes())
    assert main(["export", "--run", str(bare), "--format", "torchscript"]) == 2
    assert "has no samples.safetensors" in capsys.readouterr().err
    x, _ = tiny_images(1, 1, 24, seed=3)
    Image.fromarray(x[0].numpy()).save(tmp_path / "one.png")
    assert main(["export", "--run", str(bare), "--format", "torchscript", "--images", str(tmp_path / "one.png")]) == 0
    assert "1 image(s) from" in capsys.readouterr().out
    assert np.isfinite((bare / "model_best.torchscript.pt").stat().st_size)
