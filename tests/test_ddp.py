"""DDP on CPU: 2 gloo processes train the same model; ranks stay identical; only rank 0 writes."""
import json
import os
import subprocess
import sys

import numpy as np
import torch

from fastretrain import TrainConfig
from fastretrain.testing import free_port, run_processes, tiny_bundle, tiny_images


def test_two_gloo_processes_train_in_lockstep(tmp_path):
    out = str(tmp_path / "ddp")
    run_processes(_worker_weights, 2, args=(out,))
    w0 = torch.load(tmp_path / "ddp" / "weights_rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "ddp" / "weights_rank1.pt", weights_only=True)
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k  # DDP keeps the replicas identical
    lines = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]  # written once (rank 0), not twice
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["test_images"] == 24


def _worker_weights(rank, out):
    from fastretrain import build_engine

    cfg = TrainConfig(model="tiny-cnn", epochs=2, image_size=16, batch_size=8, lr=0.05, device="cpu", progress=False, out=out)
    engine = build_engine(cfg, tiny_bundle())
    engine.fit()
    torch.save({k: v.clone() for k, v in engine.model.state_dict().items()}, os.path.join(out, f"weights_rank{rank}.pt"))


def test_torchrun_cli(tmp_path):
    x, y = tiny_images(12, 3, 12, seed=0)
    xt, yt = tiny_images(6, 3, 12, seed=9)
    np.savez(tmp_path / "tiny.npz", x_train=x.numpy(), y_train=y.numpy(), x_test=xt.numpy(), y_test=yt.numpy())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "fastretrain.cli", "train", "--data", str(tmp_path / "tiny.npz"), "--model", "tiny-cnn", "--epochs", "2",
           "--image-size", "16", "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / "run")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count("done: test acc") == 1  # only rank 0 reports
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2


def _decompose_cfg(out: str) -> TrainConfig:
    opts = {"decompose": {"subnets": 2, "sub_epochs": 1, "parallel": "sequential", "threads": 1}}
    return TrainConfig(model="vgg-small", width=0.25, epochs=2, image_size=16, batch_size=8, lr=0.05, device="cpu",
                       progress=False, out=out, method="decompose", options=opts)


def _worker_decompose(rank, out):
    from fastretrain import build_engine

    build_engine(_decompose_cfg(out), tiny_bundle()).fit()


def test_decompose_trains_one_subnetwork_per_rank_as_if_alone(tmp_path):
    """In a 2-process group, rank r trains sub-network r with an engine of its own under single_process() (world 1:
    every training image, no DDP): the same weights as one process training them one after another."""
    from fastretrain import build_engine

    run_processes(_worker_decompose, 2, args=(str(tmp_path / "ranks"),))
    build_engine(_decompose_cfg(str(tmp_path / "one")), tiny_bundle()).fit()
    for j in range(2):
        got, want = (torch.load(tmp_path / d / "subnets" / f"subnet{j}" / "checkpoint.pt", weights_only=True)
                     for d in ("ranks", "one"))
        assert got["model"].keys() == want["model"].keys()
        assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"]), j
        assert json.loads((tmp_path / "ranks" / "subnets" / f"subnet{j}" / "summary.json").read_text())["world_size"] == 1
    assert json.loads((tmp_path / "ranks" / "summary.json").read_text())["world_size"] == 2  # the global phase: DDP
