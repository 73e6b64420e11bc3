"""Data: folder and zip layouts, image modes, bad input, splits, batch transforms, bundled data."""
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from fastretrain import FastRetrainError, from_arrays, load_data
from fastretrain.data import prepare_images, stratified_split


def _write(path, mode="RGB", size=(20, 14), color=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new(mode, size, color if mode in ("L", "P") else (color, 50, 200) + ((128,) if mode == "RGBA" else ()))
    img.save(path)


def _tree(root, split_dirs=("train", "val"), per_class=4):
    for split in split_dirs:
        for c, cls in enumerate(["cat", "dog"]):
            for i in range(per_class):
                mode = ["RGB", "L", "P", "RGBA"][i % 4]
                ext = ".jpg" if mode in ("RGB", "L") else ".png"
                _write(root / split / cls / f"{i}{ext}", mode, size=(16 + 3 * i, 12 + 5 * c), color=40 + 80 * c)


def test_train_val_folders_with_mixed_modes_and_sizes(tmp_path):
    _tree(tmp_path / "d")
    b = load_data(str(tmp_path / "d"), image_size=16, cache_dir=None)
    assert b.classes == ["cat", "dog"]
    # stored short side 18 = 16 / 0.875; the widest photos (25x12) are capped at 1.5 x 18 = 27 columns
    assert b.train.x.shape == (8, 3, 18, 27) and b.train.x.dtype == torch.uint8
    assert len(b.test) == 8 and b.train.y.tolist() == [0] * 4 + [1] * 4


def test_one_folder_split_is_stratified_and_seeded(tmp_path):
    for c in ("a", "b", "c"):
        for i in range(10):
            _write(tmp_path / "d" / c / f"{i}.png", color=20 * i)
    b1 = load_data(str(tmp_path / "d"), 16, test_fraction=0.2, split_seed=3, cache_dir=None)
    b2 = load_data(str(tmp_path / "d"), 16, test_fraction=0.2, split_seed=3, cache_dir=None)
    assert torch.bincount(b1.test.y).tolist() == [2, 2, 2] and len(b1.train) == 24
    assert torch.equal(b1.test.x, b2.test.x)
    tr, te = stratified_split(torch.tensor([0] * 10 + [1] * 10), 0.3, seed=0)
    assert len(set(tr.tolist()) & set(te.tolist())) == 0 and len(te) == 6


@pytest.mark.parametrize("wrap", ["", "top/"])
def test_zip_layouts(tmp_path, wrap):
    _tree(tmp_path / "d", ("train", "test"))
    z = tmp_path / "d.zip"
    with zipfile.ZipFile(z, "w") as f:
        for p in sorted((tmp_path / "d").rglob("*.*")):
            f.write(p, wrap + p.relative_to(tmp_path / "d").as_posix())
    b = load_data(str(z), 16, cache_dir=None)
    assert b.classes == ["cat", "dog"] and len(b.train) == 8 and len(b.test) == 8


def test_corrupt_image_is_named_or_skipped(tmp_path):
    _tree(tmp_path / "d")
    bad = tmp_path / "d" / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(FastRetrainError, match="cannot read image .*broken.jpg"):
        load_data(str(tmp_path / "d"), 16, cache_dir=None)
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        b = load_data(str(tmp_path / "d"), 16, skip_bad=True, cache_dir=None)
    assert len(b.train) == 8


def test_bad_inputs(tmp_path):
    with pytest.raises(FastRetrainError, match="data path not found"):
        load_data(str(tmp_path / "nope/"), 16)
    with pytest.raises(FastRetrainError, match="did you mean: flowers5"):
        load_data("flowerz", 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FastRetrainError, match="dataset is empty"):
        load_data(str(tmp_path / "empty"), 16, cache_dir=None)
    _tree(tmp_path / "d")
    (tmp_path / "d" / "train" / "bird").mkdir()
    (tmp_path / "d" / "train" / "bird" / "notes.txt").write_text("no images here")
    with pytest.raises(FastRetrainError, match="class folder .*bird has no images"):
        load_data(str(tmp_path / "d"), 16, cache_dir=None)
    x = np.zeros((4, 8, 8), np.uint8)
    with pytest.raises(FastRetrainError, match="label 7 out of range for 3 classes"):
        from_arrays(x, [0, 1, 2, 7], x, [0, 1, 2, 0], 16, classes=["a", "b", "c"])
    with pytest.raises(FastRetrainError, match="class 'b' has no training images"):
        from_arrays(x, [0, 0, 2, 2], x, [0, 1, 2, 0], 16, classes=["a", "b", "c"])


def test_arrays_grey_nhwc_nchw_float():
    grey = np.random.default_rng(0).integers(0, 255, (6, 10, 12), dtype=np.uint8)
    b = from_arrays(grey, [0, 1] * 3, grey, [0, 1] * 3, 16)
    # 10x12 arrays keep their aspect: short side 18, long side round(12 * 18 / 10) = 22
    assert b.train.x.shape == (6, 3, 18, 22) and torch.equal(b.train.x[:, 0], b.train.x[:, 2])
    nhwc = np.random.default_rng(1).random((4, 9, 9, 3)).astype(np.float32)
    b2 = from_arrays(nhwc, [0, 1, 0, 1], nhwc.transpose(0, 3, 1, 2), [0, 1, 0, 1], 16)
    assert torch.equal(b2.train.x, b2.test.x)


def test_prepare_images_shapes_and_determinism():
    x = torch.randint(0, 256, (5, 3, 37, 37), dtype=torch.uint8)
    norm = ((0.5,) * 3, (0.5,) * 3)
    ev = prepare_images(x, False, 32, norm)
    assert ev.shape == (5, 3, 32, 32) and torch.equal(ev, prepare_images(x, False, 32, norm))
    # the eval crop of a 37 px store to 32 px is the exact centre crop
    assert torch.allclose(ev, (x[:, :, 2:34, 2:34].float() / 255 - 0.5) / 0.5, atol=1e-6)
    assert prepare_images(x, False, 16, norm).shape == (5, 3, 16, 16)  # another size: resized
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = prepare_images(x, True, 16, norm, g1), prepare_images(x, True, 16, norm, g2)
    assert a.shape == (5, 3, 16, 16) and torch.equal(a, b)
    assert not torch.equal(a, prepare_images(x, True, 16, norm, torch.Generator().manual_seed(2)))
    assert ev.min() >= -1 - 1e-5 and ev.max() <= 1 + 1e-5


def test_bundled_fashion_mnist_ships_with_the_package():
    b = load_data("fashion-mnist", 32)
    assert len(b.train) == 2000 and len(b.test) == 1000 and b.num_classes == 10
    assert torch.bincount(b.train.y).tolist() == [200] * 10


def test_train_val_test_folders_give_validation_and_test(tmp_path):
    _tree(tmp_path / "d", ("train", "val", "test"), per_class=4)
    b = load_data(str(tmp_path / "d"), 16, val_fraction=0.5, cache_dir=None)  # the shipped val/ is kept, not carved
    assert len(b.train) == 8 and len(b.val) == 8 and len(b.test) == 8
    only_val = tmp_path / "e"
    _tree(only_val, ("train", "val"), per_class=4)
    assert load_data(str(only_val), 16, cache_dir=None).val is None  # val/ alone is the test set (ImageNet style)
