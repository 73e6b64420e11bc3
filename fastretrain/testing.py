"""Helpers for tests and examples: tiny learnable image data, and running a function on K gloo processes."""
from __future__ import annotations

import os
import socket
import tempfile

import torch

from .data import FASHION_CLASSES, PACKAGE_DATA, DataBundle, from_arrays


def tiny_images(n_per_class: int = 16, classes: int = 3, size: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, size, size, 3) images whose class sets a colour and a stripe orientation, plus noise."""
    y = torch.arange(classes).repeat_interleave(n_per_class)
    base = torch.rand(classes, 3, generator=torch.Generator().manual_seed(1234)) * 200 + 20  # per-class colour, fixed
    g = torch.Generator().manual_seed(seed)  # the noise
    ii = torch.arange(size).float()
    xs = []
    for c in y.tolist():
        stripes = torch.sin(ii[:, None] * (1 + c) * 0.9 + ii[None, :] * 0.3 * c) * 40  # (size, size)
        img = base[c][None, None, :] + stripes[..., None] + torch.randn(size, size, 3, generator=g) * 20
        xs.append(img.clamp(0, 255))
    return torch.stack(xs).round().to(torch.uint8), y


def tiny_bundle(n_per_class: int = 16, classes: int = 3, size: int = 12, image_size: int = 16, seed: int = 0) -> DataBundle:
    """A small learnable DataBundle for tests (test set drawn with another seed)."""
    xtr, ytr = tiny_images(n_per_class, classes, size, seed)
    xte, yte = tiny_images(max(n_per_class // 2, 2), classes, size, seed + 1000)
    return from_arrays(xtr.numpy(), ytr.numpy(), xte.numpy(), yte.numpy(), image_size, name="tiny")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world: int, port: int, fn, args) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, *args)
    finally:
        torch.distributed.destroy_process_group()


def run_processes(fn, world: int = 2, args=()) -> None:
    """Run fn(rank, *args) in `world` spawned processes joined in a gloo process group on 127.0.0.1.

    `fn` must be importable (a module-level function). Raises if any process fails.
    """
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(world, free_port(), fn, args), nprocs=world, join=True)


def scratch_dir() -> str:
    return tempfile.mkdtemp(prefix="fastretrain-test-")


def assert_same_run(dir_a, dir_b) -> list[dict]:
    """Two run folders hold bit-identical final weights and per-epoch test accuracies; returns b's metrics."""
    from pathlib import Path

    from safetensors.torch import load_file

    from .integrity import metrics_lines

    a, b = (load_file(str(Path(d) / "model_final.safetensors")) for d in (dir_a, dir_b))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la, lb = (metrics_lines(Path(d)) for d in (dir_a, dir_b))
    assert [x["test_acc"] for x in lb] == [x["test_acc"] for x in la]
    return lb


def write_photo_folders(root: str | os.PathLike = ".", per_class: int = 30, new_per_class: int = 10,
                        classes: tuple[str, ...] = ("Trouser", "Sneaker", "Bag")) -> tuple[str, str]:  # fmt: skip
    """Write real images as a user's photo folders would be: `my_photos/<class>/*.png` (from the shipped
    Fashion-MNIST subset's training images) and `new_photos/<class>/*.png` (from its test images), for the
    README walkthrough and tests. Returns the two folder paths."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    folders = (Path(root) / "my_photos", Path(root) / "new_photos")
    with np.load(PACKAGE_DATA / "fashion_mnist_2k.npz") as z:
        for folder, x, y, n in ((folders[0], z["x_train"], z["y_train"], per_class),
                                (folders[1], z["x_test"], z["y_test"], new_per_class)):  # fmt: skip
            for name in classes:
                (folder / name).mkdir(parents=True, exist_ok=True)
                for i in np.flatnonzero(y == FASHION_CLASSES.index(name))[:n]:
                    Image.fromarray(x[i]).save(folder / name / f"{name.lower()}_{i:04d}.png")
    return str(folders[0]), str(folders[1])
