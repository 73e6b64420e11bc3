"""Odd data (issue 24): one class, classes too small for the splits, symlinked class folders (and loops), files
copied across splits, placeholder images among photos. Each is one clear line: an error (exit status 2 from the
CLI) where training cannot be right, a warning otherwise; valid data loads exactly as before."""
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastretrain import FastRetrainError, FastRetrainWarning, from_arrays, load_data
from fastretrain.cli import main
from fastretrain.data import stratified_split
from fastretrain.sources import _walk
from fastretrain.errors import format_warning


def _photo(path: Path, seed: int, size=(80, 60), fmt=None) -> Path:
    """A noise image: every file's bytes differ, and an 80x60 PNG of noise is over 8 KB (a 'photo')."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, fmt)
    return path


def _folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    for c, (cls, n) in enumerate(counts.items()):
        for i in range(n):
            _photo(root / cls / f"{i}.png", seed + 100 * c + i)
    return root


def _train_cli(data, tmp_path, *extra) -> list[str]:
    return ["train", "--data", str(data), "--model", "tiny-cnn", "--image-size", "16", "--epochs", "1", "--device",
            "cpu", "--no-progress", "--out", str(tmp_path / "run"), *extra]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _load(path, **kw):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bundle = load_data(str(path), 16, cache_dir=None, **kw)
    return bundle, [str(w.message) for w in caught if issubclass(w.category, FastRetrainWarning)]


# ----------------------------------------------------------------------------------- fewer than 2 classes


def test_one_class_folder_is_refused_naming_the_path_exit_2(tmp_path, capsys):
    data = _folder(tmp_path / "d", {"ants": 4})
    assert main(_train_cli(data, tmp_path)) == 2
    line = _one_error_line(capsys)
    assert f"{data}: only one class ('ants') found; a classifier needs at least 2 classes" in line, line
    assert not (tmp_path / "run" / "summary.json").exists()
    _folder(tmp_path / "e" / "train", {"ants": 3})
    _folder(tmp_path / "e" / "test", {"ants": 2})
    with pytest.raises(FastRetrainError, match=r"e/train: only one class \('ants'\)"):
        load_data(str(tmp_path / "e"), 16, cache_dir=None)


def test_one_label_csv_and_arrays_are_refused(tmp_path):
    _folder(tmp_path / "img", {"ants": 3})
    (tmp_path / "list.csv").write_text("".join(f"img/ants/{i}.png,ants\n" for i in range(3)))
    with pytest.raises(FastRetrainError, match=r"list\.csv: only one class \('ants'\) found"):
        load_data(str(tmp_path / "list.csv"), 16, cache_dir=None)
    x = np.zeros((4, 8, 8), np.uint8)
    with pytest.raises(FastRetrainError, match=r"^arrays: only one class \('0'\) found"):
        from_arrays(x, [0, 0, 0, 0], x, [0, 0, 0, 0], 16)


# ------------------------------------------------------------------------- classes too small for the splits


def test_class_too_small_for_the_test_split_is_named_with_its_count(tmp_path, capsys):
    data = _folder(tmp_path / "d", {"ants": 5, "bees": 1})
    with pytest.raises(FastRetrainError, match=r"class 'bees' has 1 image: holding out a test split .* at least 2"):
        load_data(str(data), 16, cache_dir=None)
    assert main(_train_cli(data, tmp_path)) == 2
    assert "class 'bees' has 1 image" in _one_error_line(capsys)


def test_class_too_small_for_the_validation_split(tmp_path, capsys):
    data = _folder(tmp_path / "d", {"ants": 5, "bees": 2, "wasps": 2})  # 1 test + 1 training image each
    b, _ = _load(data)  # no validation split asked for: fine
    assert torch.bincount(b.train.y).tolist() == [4, 1, 1] and torch.bincount(b.test.y).tolist() == [1, 1, 1]
    with pytest.raises(FastRetrainError, match=r"2 classes have fewer than 2 training images: 'bees' \(1\), "
                                               r"'wasps' \(1\) .*--val-fraction 0.1 .* or give --val-fraction 0"):
        load_data(str(data), 16, cache_dir=None, val_fraction=0.1)
    assert main(_train_cli(data, tmp_path)) == 2  # a training run's default validation split is 10 %
    assert "'bees' (1), 'wasps' (1)" in _one_error_line(capsys)
    assert main(_train_cli(data, tmp_path, "--val-fraction", "0")) == 0  # the way out the message names


def test_class_left_without_readable_images_by_skip_bad(tmp_path):
    data = _folder(tmp_path / "d", {"ants": 4})
    (data / "bees").mkdir()
    (data / "bees" / "0.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(FastRetrainError, match="class 'bees' has 0 readable training images"):
        _load(data, skip_bad=True)


# --------------------------------------------------------------------------------------------- symlinks


def test_symlinked_class_folders_are_followed_and_load_as_copies_do(tmp_path):
    real = _folder(tmp_path / "real", {"ants": 5, "bees": 5})
    (tmp_path / "linked").mkdir()
    for cls in ("ants", "bees"):
        os.symlink(real / cls, tmp_path / "linked" / cls, target_is_directory=True)
    a, _ = _load(real, val_fraction=0.25)
    b, _ = _load(tmp_path / "linked", val_fraction=0.25)
    assert b.classes == ["ants", "bees"] and len(b.train) + len(b.val) + len(b.test) == 10
    assert a.test_set_id == b.test_set_id  # the same file names, split the same way
    for part in ("train", "val", "test"):
        pa, pb = getattr(a, part), getattr(b, part)
        assert torch.equal(pa.x, pb.x) and torch.equal(pa.y, pb.y)
    assert b.files.names == a.files.names


def test_symlink_loop_is_refused_naming_the_link(tmp_path, capsys):
    data = _folder(tmp_path / "d", {"ants": 3, "bees": 3})
    os.symlink(data, data / "ants" / "again", target_is_directory=True)
    with pytest.raises(FastRetrainError, match=r"symlink loop: .*ants/again leads back to .*d, a folder above it"):
        load_data(str(data), 16, cache_dir=None)
    assert main(_train_cli(data, tmp_path)) == 2
    assert "symlink loop" in _one_error_line(capsys)


def test_file_listing_without_symlinks_is_the_listing_of_before(tmp_path):
    data = _folder(tmp_path / "d", {"a": 3, "b": 2})
    _photo(data / "a" / "deeper" / "x.png", 99)
    (data / ".hidden").mkdir()
    (data / ".hidden" / "h.png").write_bytes(b"")
    before = sorted(p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file())  # the old listing
    assert _walk(data) == [n for n in before if not n.startswith(".")]


def test_valid_folder_splits_as_before(tmp_path):
    """The checks read files but change nothing: the splits are the stratified draws of before, in file order."""
    data = _folder(tmp_path / "d", {"a": 6, "b": 7})
    b, warned = _load(data, val_fraction=0.2, split_seed=3)
    assert warned == []
    names = sorted(f"{c}/{i}.png" for c, n in (("a", 6), ("b", 7)) for i in range(n))
    y = torch.tensor([0] * 6 + [1] * 7)
    tr, te = stratified_split(y, 0.2, 3)
    assert b.files.names["test"] == [names[i] for i in te.tolist()] and torch.equal(b.test.y, y[te])
    assert len(b.train) + len(b.val) == len(tr) and sorted(b.files.names["train"] + b.files.names["val"]) == sorted(
        names[i] for i in tr.tolist())


# ------------------------------------------------------------------------------------- copies across splits


def test_byte_identical_files_across_splits_are_counted_in_one_warning(tmp_path):
    data = tmp_path / "d"
    _folder(data / "train", {"cat": 4, "dog": 4})
    _folder(data / "test", {"cat": 2, "dog": 2}, seed=500)
    (data / "test" / "cat" / "copy.png").write_bytes((data / "train" / "cat" / "1.png").read_bytes())
    (data / "test" / "dog" / "copy.png").write_bytes((data / "train" / "cat" / "2.png").read_bytes())  # other label
    (data / "train" / "dog" / "twin.png").write_bytes((data / "train" / "dog" / "0.png").read_bytes())  # same split
    _, warned = _load(data)
    assert len(warned) == 1, warned
    assert warned[0].startswith(f"{data}: 2 validation/test image(s) are byte-identical to an image of another split")
    assert "e.g. test/cat/copy.png (test) = train/cat/1.png (train)" in warned[0]


def test_copies_in_a_zip_and_no_warning_without_copies(tmp_path):
    import zipfile

    data = tmp_path / "d"
    _folder(data / "train", {"cat": 3, "dog": 3})
    _folder(data / "test", {"cat": 2, "dog": 2}, seed=500)
    assert _load(data)[1] == []
    (data / "test" / "dog" / "copy.png").write_bytes((data / "train" / "dog" / "2.png").read_bytes())
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as z:
        for p in sorted(data.rglob("*.png")):
            z.write(p, p.relative_to(data).as_posix())
    (warned,) = _load(tmp_path / "d.zip")[1]
    assert "d.zip: 1 validation/test image(s)" in warned and "test/dog/copy.png (test) = train/dog/2.png" in warned


# ---------------------------------------------------------------------------------------------- placeholders


def test_placeholders_among_photos_are_named_with_a_count(tmp_path):
    data = _folder(tmp_path / "d", {"ants": 5, "bees": 5})
    Image.new("P", (120, 40), 3).save(data / "ants" / "image_not_found.gif")  # large, but a GIF
    _photo(data / "bees" / "icon.png", 7, size=(16, 16))  # both sides under 32 px
    _photo(data / "bees" / "strip.png", 8, size=(31, 90))  # one side over: a photo
    _, warned = _load(data)
    assert warned == [f"{data}: 2 image(s) look like placeholders, not photos (a GIF, or both sides under 32 px, "
                      "among larger photos): ants/image_not_found.gif, bees/icon.png; check them or remove them"]


def test_a_dataset_of_small_images_is_not_a_dataset_of_placeholders(tmp_path):
    data = tmp_path / "d"
    for c in ("a", "b"):
        for i in range(4):
            _photo(data / c / f"{i}.png", 10 * ord(c) + i, size=(28, 28))  # MNIST-sized: all small
    assert _load(data)[1] == []


# ------------------------------------------------------------------------------------- warnings: one line


def test_warnings_print_as_one_line_without_a_source_line(tmp_path):
    data = _folder(tmp_path / "d", {"ants": 4, "bees": 4})
    (data / "bees" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    code = f"import fastretrain; fastretrain.load_data({str(data)!r}, 16, skip_bad=True, cache_dir=None)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    (line,) = res.stderr.splitlines()
    assert line.startswith(f"warning: {data}: skipped 1 unreadable image(s), e.g. bees/broken.jpg (")
    assert "warnings.warn" not in res.stderr and ".py:" not in res.stderr


def test_format_warning_is_one_line_for_the_package_only():
    import fastretrain

    ours = format_warning("a\nb", FastRetrainWarning, "/anywhere/x.py", 3, "source line")
    assert ours == "warning: a b\n"
    inside = os.path.join(os.path.dirname(fastretrain.__file__), "ridge.py")
    assert format_warning("ridge", RuntimeWarning, inside, 9, "warnings.warn(...)") == "warning: ridge\n"
    theirs = format_warning("deprecated", DeprecationWarning, "/site/other.py", 7, "x = 1")
    assert "/site/other.py:7" in theirs and "x = 1" in theirs
    assert warnings.formatwarning is format_warning  # installed by `import fastretrain`
