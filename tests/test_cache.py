"""Decoded-image store (cache.py) and what data.py builds on it: EXIF orientation, aspect-preserving storage and
the batch transforms on it (checked against the same crops taken from the upright image directly), the cache file
(reused, invalidated when a file changes, a corrupt or partial entry rebuilt, the process pool's rows equal the
threads'), disk-backed batches equal in-memory ones, CSV/TSV input and its errors, class balance."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.ops import roi_align

from fastretrain import FastRetrainError, load_data
from fastretrain import cache as cache_mod
from fastretrain import sources as data_mod
from fastretrain.cache import Source, cached_decode, decode_bytes, decode_in_memory
from fastretrain.data import (DiskImages, ImageTensors, balanced_indices, class_count_lines, class_weights,
                              decode_image, prepare_images)  # fmt: skip
from fastretrain.transforms import _boxes_random_resized

NORM = ((0.0,) * 3, (1 / 255,) * 3)  # (x - 0) / (1/255 * 255): prepare_images returns raw pixel values


def _pattern(h, w, seed=0) -> np.ndarray:
    """A smooth RGB image whose every region differs (so crops, rotations and flips are told apart)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.5, 2, 3)
    img = np.stack([127 + 120 * np.sin(a[c] * (xx / w * 3 + 2 * yy / h) + c) for c in range(3)], -1)
    return img.round().astype(np.uint8)


def _png(arr, path=None, orientation=None) -> bytes:
    img = Image.fromarray(arr)
    kw = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kw["exif"] = exif
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, format="PNG", **kw)
        return path.read_bytes()
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ decoding


@pytest.mark.parametrize("orientation,to_raw", [(6, lambda a: np.rot90(a, 1)), (3, lambda a: np.rot90(a, 2)),
                                                (8, lambda a: np.rot90(a, -1)), (2, lambda a: a[:, ::-1])])  # fmt: skip
def test_exif_orientation_is_applied_on_decode(orientation, to_raw):
    upright = _pattern(30, 20)  # portrait
    raw = np.ascontiguousarray(to_raw(upright))  # how a camera stores it, with the tag saying how to turn it
    got, hw = decode_bytes(_png(raw, orientation=orientation), 16, 24)
    want, want_hw = decode_bytes(_png(upright), 16, 24)
    assert hw == want_hw == (24, 16)  # upright portrait: 30x20 -> 24x16
    assert np.array_equal(got, want)
    assert not np.array_equal(decode_bytes(_png(raw), 16, 24)[0], want)  # without the tag: another picture


def test_aspect_preserving_storage_keeps_the_whole_photo():
    landscape = _pattern(20, 30)
    arr, hw = decode_bytes(_png(landscape), 16, 24)
    ref = np.asarray(Image.fromarray(landscape).resize((24, 16), Image.Resampling.BICUBIC))
    assert hw == (16, 24) and np.array_equal(arr, ref)  # short side 16, long side 24: all of it
    portrait = np.ascontiguousarray(landscape.transpose(1, 0, 2))
    parr, phw = decode_bytes(_png(portrait), 16, 24)
    pref = np.asarray(Image.fromarray(portrait).resize((16, 24), Image.Resampling.BICUBIC))
    assert phw == (24, 16) and np.array_equal(parr, pref.transpose(1, 0, 2))  # stored transposed: 16 rows
    wide = _pattern(10, 40)  # 4:1, above the cap: the centre 24 of the 64 resized columns is kept
    warr, whw = decode_bytes(_png(wide), 16, 24)
    full = np.asarray(Image.fromarray(wide).resize((64, 16), Image.Resampling.BICUBIC)).astype(int)
    assert whw == (16, 24) and np.abs(warr.astype(int) - full[:, 20:44]).max() <= 1  # resampled on a box: +-1


def _canvas(images):
    """Decode upright arrays into one canvas as a folder would be (widest stored side, portrait transposed)."""
    blobs = [_png(a) for a in images]
    out = [decode_bytes(b, 16, 24) for b in blobs]
    width = max(a.shape[1] for a, _ in out)
    x = torch.zeros(len(out), 3, 16, width, dtype=torch.uint8)
    for i, (a, _) in enumerate(out):
        x[i, :, :, : a.shape[1]] = torch.from_numpy(a.transpose(2, 0, 1).copy())
    upright = [torch.from_numpy(np.array(a if hw[0] <= hw[1] else a.transpose(1, 0, 2))).permute(2, 0, 1).float()
               for a, hw in out]  # fmt: skip
    return x, torch.tensor([hw for _, hw in out]), upright


def test_train_crops_equal_crops_of_the_upright_images():
    x, hw, upright = _canvas([_pattern(20, 30, 1), _pattern(30, 20, 2), _pattern(20, 20, 3), _pattern(20, 24, 4)])
    g = torch.Generator().manual_seed(5)
    got = prepare_images(x, True, 12, NORM, g, hw)
    g = torch.Generator().manual_seed(5)  # the same draws, taken on each upright image directly
    boxes = _boxes_random_resized(4, hw[:, 0], hw[:, 1], g)
    flip = torch.rand(4, generator=g) < 0.5
    for i, img in enumerate(upright):
        h, w = img.shape[-2:]
        assert 0 <= boxes[i, 0] and boxes[i, 2] <= w + 1e-4 and 0 <= boxes[i, 1] and boxes[i, 3] <= h + 1e-4
        ref = roi_align(img[None], torch.cat([torch.zeros(1), boxes[i]])[None], 12, 1.0, -1, True)[0]
        ref = ref.flip(-1) if flip[i] else ref
        assert torch.allclose(got[i], ref, atol=1e-3), i


def test_random_crops_reach_beyond_the_central_square():
    x, hw, _ = _canvas([_pattern(20, 30)])  # stored 16 x 24
    boxes = _boxes_random_resized(2000, hw[:, 0].expand(2000), hw[:, 1].expand(2000), torch.Generator().manual_seed(0))
    assert boxes[:, 0].min() < 4 and boxes[:, 2].max() > 20  # the square store kept only columns 4..20


def test_eval_is_the_centre_crop_of_the_upright_image_and_predict_agrees():
    x, hw, upright = _canvas([_pattern(20, 30, 1), _pattern(30, 20, 2), _pattern(20, 20, 3)])
    s = 16  # store size of image_size 14 (14 / 0.875)
    got = prepare_images(x, False, 14, NORM, None, hw)
    for i, img in enumerate(upright):
        h, w = img.shape[-2:]
        t, l = (h - s) // 2 + 1, (w - s) // 2 + 1  # central square, then its central 14 pixels
        assert torch.equal(got[i], img[:, t : t + 14, l : l + 14]), i
    blobs = [_png(a) for a in (_pattern(20, 30, 1), _pattern(30, 20, 2))]
    squares = torch.stack([decode_image(b, 16) for b in blobs])  # what `fastretrain predict` feeds the model
    assert torch.equal(prepare_images(squares, False, 14, NORM), got[:2])


def test_square_data_takes_the_exact_old_path():
    """Square images fill the canvas (hw None): the transforms are the square store's, draw for draw."""
    x = torch.randint(0, 256, (5, 3, 18, 18), dtype=torch.uint8)
    hw = torch.full((5, 2), 18)
    for train in (False, True):
        a = prepare_images(x, train, 16, NORM, torch.Generator().manual_seed(3) if train else None)
        b = prepare_images(x, train, 16, NORM, torch.Generator().manual_seed(3) if train else None, hw)
        assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------ the cache


def _folder(root, n=6, sizes=((20, 30), (30, 20), (20, 20))):
    for i in range(n):
        cls = "ab"[i % 2]
        _png(_pattern(*sizes[i % len(sizes)], seed=i), root / cls / f"{i}.png")
    return root


def test_cache_is_reused_invalidated_and_rebuilt(tmp_path):
    root = _folder(tmp_path / "d")
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    src, cdir = Source(str(root)), tmp_path / "cache"
    first = cached_decode(src, names, 16, cdir)
    assert first.decoded == 6 and first.images.shape == (6, 3, 16, 24)
    ref = decode_in_memory(src, names, 16)
    assert np.array_equal(first.images.read(range(6)), ref.images) and np.array_equal(first.hw, ref.hw)
    assert cached_decode(src, names, 16, cdir).decoded == 0  # reused
    # one file changes (content and size): only it is decoded again, the others' rows are copied
    _png(_pattern(24, 20, seed=99), root / names[1])
    changed = cached_decode(src, names, 16, cdir)
    now = decode_in_memory(src, names, 16).images
    assert changed.decoded == 1 and np.array_equal(changed.images.read(range(6)), now)
    # a partial data file (a crash, a full disk) and a corrupt index are both rebuilt from scratch
    data_file = next(cdir.glob("*.u8"))
    with open(data_file, "r+b") as f:
        f.truncate(data_file.stat().st_size // 2)
    assert cached_decode(src, names, 16, cdir).decoded == 6
    next(cdir.glob("*.json")).write_text("{not json")
    again = cached_decode(src, names, 16, cdir)
    assert again.decoded == 6 and np.array_equal(again.images.read(range(6)), now)
    assert sorted(p.suffix for p in cdir.iterdir()) == [".json", ".lock", ".u8"]  # no temporary files left


def test_decoder_processes_write_the_same_rows_as_threads(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d", n=8)
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    monkeypatch.setattr(cache_mod, "PROCESS_MIN_IMAGES", 1)
    pooled = cached_decode(Source(str(root)), names, 16, tmp_path / "c", processes=2)
    threads = decode_in_memory(Source(str(root)), names, 16)
    assert np.array_equal(pooled.images.read(range(8)), threads.images) and np.array_equal(pooled.hw, threads.hw)


def test_disk_backed_batches_equal_in_memory_batches(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d", n=12)
    mem = load_data(str(root), 14, test_fraction=0.25, val_fraction=0.2, cache_dir=None)
    monkeypatch.setattr(data_mod, "IN_MEMORY_BYTES", 0)  # every cache entry stays on disk
    disk = load_data(str(root), 14, test_fraction=0.25, val_fraction=0.2, cache_dir=tmp_path / "c")
    assert isinstance(disk.train, DiskImages) and isinstance(mem.train, ImageTensors)
    assert disk.test_set_id == mem.test_set_id
    for part in ("train", "val", "test"):
        a, b = getattr(mem, part), getattr(disk, part)
        assert torch.equal(a.y, b.y) and torch.equal(a.x, b.x) and torch.equal(a.hw, b.hw)
    idx = torch.tensor([2, 0, 3])
    chunks = [idx, torch.tensor([1])]
    disk.train.read_ahead(chunks)  # what the engine does: the same batches come back, read ahead
    for train in (True, False):
        xa, ya = mem.train.prepare(idx, train, 14, NORM, torch.Generator().manual_seed(1))
        xb, yb = disk.train.prepare(idx, train, 14, NORM, torch.Generator().manual_seed(1))
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_unreadable_files_are_named_or_skipped_and_remembered(tmp_path):
    root = _folder(tmp_path / "d")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(FastRetrainError, match="cannot read image .*broken.png"):
        load_data(str(root), 14, cache_dir=tmp_path / "c")
    with pytest.warns(UserWarning, match="skipped 1 unreadable image"):
        b = load_data(str(root), 14, skip_bad=True, cache_dir=tmp_path / "c")
    assert len(b.train) + len(b.test) == 6
    with pytest.raises(FastRetrainError, match="cannot read image .*broken.png"):  # from the cache's record
        load_data(str(root), 14, cache_dir=tmp_path / "c")


# ------------------------------------------------------------------------------------------------ CSV


def _csv_photos(root):
    for i in range(8):
        _png(_pattern(20, 26, seed=i), root / "photos" / f"{i}.png")
    return root


def test_csv_with_header_and_split_column(tmp_path):
    root = _csv_photos(tmp_path)
    lines = ["path,label,split"] + [f"photos/{i}.png,{'cat' if i % 2 else 'dog'},{'test' if i >= 6 else 'train'}"
                                    for i in range(8)]  # fmt: skip
    (root / "list.csv").write_text("\n".join(lines) + "\n")
    b = load_data(str(root / "list.csv"), 14, cache_dir=None)
    assert b.classes == ["cat", "dog"] and b.name == "list" and len(b.train) == 6 and len(b.test) == 2
    assert b.test.y.tolist() == [1, 0]  # photos 6 (dog), 7 (cat)
    want = decode_image((root / "photos" / "6.png").read_bytes(), 16)
    assert torch.equal(b.test.central([0])[0], want)
    assert b.test_set_id == data_mod._names_id(["photos/6.png", "photos/7.png"], [1, 0], ["cat", "dog"])


def test_csv_val_rows_and_one_cache_entry_per_list(tmp_path):
    root = _csv_photos(tmp_path / "x")
    rows = [f"photos/{i}.png,{i % 2},{'val' if i < 2 else 'train'}" for i in range(8)]
    (root / "a.csv").write_text("\n".join(rows) + "\n")
    (root / "b.csv").write_text("\n".join(r.replace(",val", ",train") for r in rows[:6]) + "\n")
    a = load_data(str(root / "a.csv"), 14, test_fraction=0.34, val_fraction=0.5, cache_dir=tmp_path / "c")
    assert len(a.val) == 2 and a.val.y.tolist() == [0, 1]  # the val rows, not carved from training
    assert (len(a.train), len(a.test)) == (4, 2)  # test drawn from the 6 training rows
    load_data(str(root / "b.csv"), 14, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c").glob("*.u8"))) == 2  # two lists of one folder: two entries


def test_tsv_without_header_draws_the_test_split(tmp_path):
    root = _csv_photos(tmp_path / "x")
    (root / "l.tsv").write_text("".join(f"photos/{i}.png\t{i % 2}\n" for i in range(8)))
    b = load_data(str(root / "l.tsv"), 14, test_fraction=0.25, val_fraction=0.34, cache_dir=tmp_path / "c")
    assert b.classes == ["0", "1"] and (len(b.train), len(b.val), len(b.test)) == (4, 2, 2)


@pytest.mark.parametrize("rows,message", [
    (["photos/0.png,cat", "photos/missing.png,dog"], r"1 listed file\(s\) not found, e.g. line 2: photos/missing.png"),
    (["photos/0.png,cat,train", "photos/1.png,zebra,test"], r"line 2: unknown label 'zebra' of a test image"),
    (["photos/0.png,cat,train", "photos/1.png,cat,holdout"], r"line 2: unknown split 'holdout' \(use train, val or"),
    (["photos/0.png,cat", "photos/0.png,dog"], r"line 2: photos/0.png is listed again \(first on line 1\)"),
    (["photos/0.png"], r"line 1: expected path,label\[,split\]"),
    (["path,label,colour", "photos/0.png,cat,red"], r"unknown column 'colour'"),
    ([], r"lists no images"),
])  # fmt: skip
def test_csv_errors_name_the_line(tmp_path, rows, message):
    root = _csv_photos(tmp_path)
    (root / "l.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(FastRetrainError, match=message):
        load_data(str(root / "l.csv"), 14, cache_dir=None)


# ------------------------------------------------------------------------------------------------ class balance


def test_balanced_sampling_draws_every_class_equally():
    y = torch.tensor([0] * 90 + [1] * 9 + [2] * 1)
    idx = balanced_indices(y, 30000, torch.Generator().manual_seed(0))
    frac = torch.bincount(y[idx], minlength=3).double() / 30000
    sd = (1 / 3 * 2 / 3 / 30000) ** 0.5  # binomial standard deviation of each fraction
    assert ((frac - 1 / 3).abs() < 5 * sd).all()
    inside = torch.bincount(idx[y[idx] == 1], minlength=100)[90:99].double()  # uniform within a class too
    assert (inside - inside.mean()).abs().max() < 5 * inside.mean() ** 0.5
    w = class_weights(y, 3)  # N / (C n_c): each class's weights sum to N / C
    assert torch.allclose(torch.bincount(y, weights=w[y].double()), torch.full((3,), 100 / 3, dtype=torch.float64))


def test_engine_balance_options(bundle, cfg):
    from fastretrain import Strategy, build_engine

    keep = torch.cat([torch.arange(0, 16), torch.tensor([16, 17, 32, 33])])  # class 0: 16 images, 1 and 2: 2 each
    bundle.train = bundle.train.subset(keep)
    seen, losses = [], []

    class Record(Strategy):
        def before_batch(self, engine):
            seen.append(engine.y.clone())

        def after_loss(self, engine):
            w = class_weights(bundle.train.y, 3)
            ref = torch.nn.functional.cross_entropy(engine.logits.float(), engine.y, weight=w)
            losses.append((engine.loss.item(), ref.item()))

    cfg.out, cfg.epochs, cfg.batch_size = None, 40, 10
    build_engine(cfg, bundle, strategies=[Record()]).fit()  # plain shuffling: each image once per epoch
    assert torch.bincount(torch.cat(seen), minlength=3).tolist() == [16 * 40, 2 * 40, 2 * 40]
    seen.clear()
    cfg.balance = "sampler"
    build_engine(cfg, bundle, strategies=[Record()]).fit()
    counts = torch.bincount(torch.cat(seen), minlength=3).double()
    sd = (counts.sum() * 2 / 9) ** 0.5  # binomial standard deviation of a count at p = 1/3
    assert counts.sum() == 20 * 40 and ((counts - counts.sum() / 3).abs() < 5 * sd).all()
    losses.clear()
    cfg.balance, cfg.epochs = "loss", 1
    build_engine(cfg, bundle, strategies=[Record()]).fit()
    assert losses and all(abs(a - b) < 1e-6 for a, b in losses)


def test_class_counts_are_printed_at_the_start(bundle, cfg, capsys):
    from fastretrain import build_engine

    cfg.progress, cfg.out, cfg.epochs = True, None, 1
    bundle.val = bundle.test.subset(torch.tensor([0, 8, 9]))
    build_engine(cfg, bundle)
    out = capsys.readouterr().out
    assert "data: tiny, 3 classes; images per class (train/val/test):" in out
    assert "\n  0  16/1/8\n  1  16/2/8\n  2  16/0/8" in out
    assert class_count_lines(bundle)[1:] == ["  0  16/1/8", "  1  16/2/8", "  2  16/0/8"]


def test_cache_entry_records_fingerprints(tmp_path):
    root = _folder(tmp_path / "d", n=2)
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    cached_decode(Source(str(root)), names, 16, tmp_path / "c")
    meta = json.loads(next((tmp_path / "c").glob("*.json")).read_text())
    st = os.stat(root / names[0])
    assert meta["names"] == names and meta["fingerprints"][0] == [st.st_size, st.st_mtime_ns]
