"""Run configuration: one dataclass whose fields map one-to-one onto the CLI options."""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import FastRetrainError

OPTIMIZERS = ("sgd", "adam", "adamw")
BALANCE = ("none", "sampler", "loss")
TEST_EVAL = ("every", "improved")
_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(text: str | float | None) -> float | None:
    """Seconds of a duration such as '90s', '10m', '1.5h' or 300 (None stays None); anything else is refused."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in _UNITS or float(m.group(1)) * _UNITS[m.group(2)] <= 0:
        raise FastRetrainError(f"--budget {text!r}: give a positive duration such as 90s, 10m or 1h")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _f(default, help: str):
    """A dataclass field with the CLI help text kept next to it."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # data
    data: str = _f("fashion-mnist", "dataset name (see `fastretrain datasets`) or a path: image folder, .zip, or .npz")
    data_root: str | None = _f(None, "folder holding the named datasets (default: $FASTRETRAIN_DATA, then ../shared/data)")
    image_size: int = _f(64, "input size in pixels (square); images are stored at size/0.875 and cropped")
    test_fraction: float = _f(0.2, "fraction of each class held out as the test set when the data has no test split")
    split_seed: int = _f(0, "seed of the test split, the validation split and the max-train subset (not --seed)")
    max_train: int | None = _f(None, "keep at most this many training images (stratified, drawn with --split-seed)")
    val_fraction: float = _f(0.1, "fraction of each class of the training images held out for validation (0: none)")
    skip_bad_images: bool = _f(False, "warn about and skip unreadable images instead of stopping")
    # model
    model: str = _f("tf_efficientnet_lite0", "model name: this package's, timm's, or tv:NAME for torchvision (see `fastretrain models`)")
    pretrained: bool | None = _f(None, "start from --model's pretrained weights found on this machine (shipped for "
                                 "tf_efficientnet_lite0/1/2; timm's in the Hugging Face or torch hub cache; tv:NAME's in "
                                 "the torch hub cache); None (default): on when they exist and no --weights is given")
    weights: str | None = _f(None, "load a weight file (.safetensors or .pt state_dict); a head of another size is skipped")
    pretrained_file: str | None = _f(None, "a file of the model's pretrained weights, read by timm's pretrained loader "
                                     "(original formats converted, ImageNet head dropped; tv:NAME: a torchvision "
                                     "state_dict); implies --pretrained")
    width: float | None = _f(None, "width multiplier of models with a width argument (vgg-small, resnet20, resnet32, resnet18-cifar)")
    # method
    method: str = _f("sgdm", "training method(s), comma separated, e.g. fast-retrain,rifle (see `fastretrain methods`)")
    options: dict[str, dict[str, Any]] = _f({}, "per-method options {method: {field: value}}; CLI: -o method.field=value")
    # optimisation
    epochs: int = _f(5, "training epochs (with --budget: only the first plan, which the measured step cost replaces)")
    budget: str | None = _f(None, "training time budget, e.g. 90s, 10m, 1h (a bare number: seconds): the run measures its "
                            "step cost, plans its epochs to fill the budget, anneals the LR schedule to it, stops "
                            "within it and returns the validation-best model (docs/budget.md)")
    batch_size: int = _f(32, "images per batch, per process")
    accumulate: int = _f(1, "gradient accumulation: add up the gradients of N batches (each loss x 1/N) before each "
                         "optimizer step, an effective batch of N x --batch-size per process; the LR schedule follows "
                         "the steps as it would with that batch")
    lr: float = _f(0.01, "base learning rate (peak of the schedule)")
    optimizer: str = _f("sgd", "sgd (with momentum), adam or adamw")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(1e-4, "weight decay (L2 for SGD and Adam, decoupled for AdamW)")
    schedule: str = _f("cosine", "LR schedule: constant, cosine, onecycle, step:E1,E2, piecewise:MxE,..., cyclic:P")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy loss")
    balance: str = _f("none", "class imbalance: sampler (class-balanced sampling with replacement), loss (class "
                      "weights N/(C*n_c) in the training loss) or none")
    recipe: str | None = _f(None, "named preset of optimisation settings: authors, fastai (see `fastretrain methods`)")
    # training aids (docs/training_aids.md)
    patience: int | None = _f(None, "early stopping: end the run once validation accuracy has not improved for this "
                              "many epochs (needs a validation split)")
    ema: float | None = _f(None, "an exponential moving average of the weights with this decay per step (e.g. 0.999): "
                           "validation, test, model_best and model_final use the averaged weights")
    mixup: float = _f(0.0, "mixup of training images and labels, weight ~ Beta(ALPHA, ALPHA) (timm's Mixup; 0: off)")
    cutmix: float = _f(0.0, "CutMix of training images and labels with area ~ Beta(ALPHA, ALPHA) (0: off; with --mixup "
                       "each batch uses one of the two)")
    # run
    seed: int = _f(0, "seed of the run: head init, shuffling, augmentation, strategies (splits: --split-seed)")
    device: str = _f("auto", "auto, cpu, cuda or cuda:N")
    amp: bool | str | None = _f(None, "mixed precision: on (bf16 where the GPU has it, else fp16 with a gradient "
                                "scaler), bf16, fp16 or off (default: on for CUDA, off for CPU)")
    compile: bool | str = _f(False, "torch.compile the training forward (recompiled when the trainable set changes): "
                             "on, reduce-overhead, max-autotune, or the debug backend aot_eager")
    channels_last: bool | None = _f(None, "channels-last memory format (default: on for CUDA, off for CPU)")
    deterministic: bool = _f(False, "use deterministic algorithms only (slower on GPU)")
    out: str = _f("runs/latest", "output folder: config, metrics.jsonl, summary.json, weights, checkpoint")
    resume: bool = _f(False, "continue the run in --out from its checkpoint")
    overwrite: bool = _f(False, "replace the run in --out, removing its files first (without --resume or --overwrite "
                         "a folder holding another run's files is refused)")
    progress: bool = _f(True, "show a progress bar per epoch and a line per epoch")
    save_checkpoint: bool = _f(True, "write a checkpoint after every epoch")
    save_weights: bool = _f(True, "write model_best.safetensors and model_final.safetensors")
    test_eval: str = _f("every", "when the test split is scored: every (after every epoch) or improved (only when "
                        "validation prefers the new weights, i.e. when the delivered model changes, and at the end)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        d = {k: v for k, v in _legacy(d).items() if k != "run_id"}  # a run's config.json names its run
        names = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - names)
        if bad:
            raise FastRetrainError(f"unknown config key(s): {', '.join(bad)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(read_config_file(path))

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.accumulate >= 1, f"--accumulate must be >= 1, got {self.accumulate}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.image_size >= 8, f"--image-size must be >= 8, got {self.image_size}"),
            (0 < self.test_fraction < 1, f"--test-fraction must be in (0, 1), got {self.test_fraction}"),
            (0 <= self.val_fraction < 1, f"--val-fraction must be in [0, 1), got {self.val_fraction}"),
            (self.max_train is None or self.max_train >= 1, f"--max-train must be >= 1, got {self.max_train}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be sgd, adam or adamw, got {self.optimizer!r}"),
            (not ((self.pretrained or self.pretrained_file) and self.weights), "give --pretrained or --weights, not both"),
            (not (self.pretrained is False and self.pretrained_file), "--pretrained-file contradicts --no-pretrained"),
            (self.balance in BALANCE, f"--balance must be {', '.join(BALANCE)}; got {self.balance!r}"),
            (self.width is None or self.width > 0, f"--width must be > 0, got {self.width}"),
            (self.test_eval in TEST_EVAL, f"--test-eval must be {' or '.join(TEST_EVAL)}, got {self.test_eval!r}"),
            (self.patience is None or self.patience >= 1, f"--patience must be >= 1, got {self.patience}"),
            (self.patience is None or self.val_fraction > 0, "--patience reads validation accuracy: it needs a "
             "validation split (--val-fraction > 0)"),
            (self.ema is None or 0 < self.ema < 1, f"--ema must be in (0, 1), e.g. 0.999; got {self.ema}"),
            (self.mixup >= 0 and self.cutmix >= 0, f"--mixup and --cutmix must be >= 0 (0: off), got "
             f"{self.mixup} and {self.cutmix}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise FastRetrainError(msg)
        parse_duration(self.budget)
        from .speed import check_amp, compile_options  # lazy: they import torch

        check_amp(self.amp)
        compile_options(self.compile)
        if self.pretrained and not self.pretrained_file:
            from .models import pretrained_available, pretrained_missing

            if not pretrained_available(self.model):
                raise FastRetrainError(pretrained_missing(self.model))

    def use_pretrained(self) -> bool:
        """Whether the run starts from pretrained weights: --pretrained as given (--pretrained-file: yes), else
        (None) exactly when weights for the model are on this machine (models.pretrained_available) and no
        --weights file is given."""
        if self.pretrained_file:
            return True
        if self.pretrained is not None:
            return self.pretrained
        from .models import pretrained_available  # lazy: models imports torch

        return self.weights is None and pretrained_available(self.model)


def _legacy(d: dict[str, Any]) -> dict[str, Any]:
    """A config saved before the split fields existed (`val_split`, test split drawn with `seed`), in today's terms.

    Such a run held out `val_split` as test with its run seed and had no validation split; mapping it so
    lets `fastretrain eval` of an old run folder see the test images that run saw.
    """
    if "val_split" not in d:
        return d
    d = dict(d)
    old = d.pop("val_split")
    d.setdefault("test_fraction", old)
    d.setdefault("split_seed", d.get("seed", 0))
    d.setdefault("val_fraction", 0.0)
    return d


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The fields a YAML/JSON config file sets (checked against TrainConfig)."""
    path = Path(path)
    if not path.is_file():
        raise FastRetrainError(f"config file not found: {path}")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            d = yaml.safe_load(path.read_text()) or {}
        else:
            d = json.loads(path.read_text())
    except Exception as e:  # noqa: BLE001 - any parse error is the file's
        raise FastRetrainError(f"cannot parse config file {path}: {e}") from e
    if not isinstance(d, dict):
        raise FastRetrainError(f"config file {path} must hold a mapping of TrainConfig fields")
    TrainConfig.from_dict(d)  # validates the keys
    return d
