import pytest
import torch

from fastretrain.config import TrainConfig
from fastretrain.testing import tiny_bundle


@pytest.fixture
def bundle():
    return tiny_bundle()


@pytest.fixture
def cfg(tmp_path):
    """A fast CPU config for a tiny model; tests override fields as needed."""
    return TrainConfig(model="tiny-cnn", epochs=2, image_size=16, batch_size=8, lr=0.05, device="cpu",
                       progress=False, out=str(tmp_path / "run"))  # fmt: skip


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Tests never write into the repository (a default --out would land in ./runs)."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread, and the test machine is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
