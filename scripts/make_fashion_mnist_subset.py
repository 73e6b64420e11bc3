"""Build the Fashion-MNIST subset shipped in fastretrain/datasets from Debian's dataset-fashion-mnist.

    apt-get install -y dataset-fashion-mnist && python scripts/make_fashion_mnist_subset.py

Takes the first 200 training images of each class and the first 100 test images of each class, in the
original order (2,000 / 1,000 images, 28×28 grey, uint8).
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fastretrain.data import _idx  # noqa: E402

SRC = Path("/usr/share/datasets/fashion-mnist")
OUT = Path(__file__).resolve().parent.parent / "fastretrain" / "datasets" / "fashion_mnist_2k.npz"


def first_per_class(x, y, k):
    idx = np.concatenate([np.flatnonzero(y == c)[:k] for c in range(10)])
    idx.sort()
    return x[idx], y[idx]


xtr, ytr = first_per_class(_idx(SRC / "train-images-idx3-ubyte.gz"), _idx(SRC / "train-labels-idx1-ubyte.gz"), 200)
xte, yte = first_per_class(_idx(SRC / "t10k-images-idx3-ubyte.gz"), _idx(SRC / "t10k-labels-idx1-ubyte.gz"), 100)
np.savez_compressed(OUT, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB): train {xtr.shape}, test {xte.shape}")
