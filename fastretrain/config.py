"""Run configuration: one dataclass whose fields map one-to-one onto the CLI options."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FastRetrainError


@dataclass
class TrainConfig:
    # data
    data: str = "fashion-mnist"  # dataset name (`fastretrain datasets`) or a folder / .zip / .npz path
    data_root: str | None = None  # where named datasets live (default: $FASTRETRAIN_DATA, ../shared/data)
    image_size: int = 64  # pixels, square; the engine's input size (a strategy may change it)
    val_split: float = 0.2  # fraction held out per class when the data has no test split
    max_train: int | None = None  # keep at most this many training images (stratified), for quick runs
    skip_bad_images: bool = False  # warn and skip unreadable images instead of stopping
    # model
    model: str = "tf_efficientnet_lite0"
    pretrained: bool = False  # load the shipped ImageNet weights
    weights: str | None = None  # a user's weight file (.safetensors / .pt)
    # method
    method: str = "sgdm"  # one or more method names, comma separated
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # {method: {field: value}}
    # optimisation
    epochs: int = 5
    batch_size: int = 32  # per process
    lr: float = 0.01  # base learning rate (per batch of batch_size)
    optimizer: str = "sgd"  # sgd (with momentum) | adamw
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # see fastretrain.schedules
    label_smoothing: float = 0.0
    # run
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool | None = None  # bf16 autocast; None = on for CUDA, off for CPU
    channels_last: bool | None = None  # None = on for CUDA, off for CPU
    deterministic: bool = False  # torch.use_deterministic_algorithms
    out: str = "runs/latest"
    resume: bool = False
    progress: bool = True
    save_checkpoint: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise FastRetrainError(f"unknown config key(s): {', '.join(bad)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise FastRetrainError(f"config file not found: {path}")
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            d = yaml.safe_load(text) or {}
        else:
            d = json.loads(text)
        return cls.from_dict(d)

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.image_size >= 8, f"--image-size must be >= 8, got {self.image_size}"),
            (0 < self.val_split < 1, f"--val-split must be in (0, 1), got {self.val_split}"),
            (self.optimizer in ("sgd", "adamw"), f"--optimizer must be sgd or adamw, got {self.optimizer!r}"),
            (not (self.pretrained and self.weights), "give --pretrained or --weights, not both"),
        ]
        for ok, msg in checks:
            if not ok:
                raise FastRetrainError(msg)
