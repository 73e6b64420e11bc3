"""Command line: `fastretrain train | lr-find | eval | predict | export | bench | demo | models | methods | datasets`.

Every `train` option maps one-to-one onto a TrainConfig field; errors in the user's input end the
program with one line naming the problem and exit status 2.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import sys

from . import distributed
from .bench import compare
from .config import TrainConfig, read_config_file
from .data import DATASETS
from .errors import FastRetrainError
from .eval_run import eval_command
from .export import export_command
from .lr_find import UNUSED, LRSweep, lr_find, report
from .methods import RECIPES, load_all
from .models import MODELS, PRETRAINED_FILES, list_models
from .options import parse_options
from .predict import predict_command
from .run import resolve_config, train

# common method options with their own flags: flag -> (method, field, type)
SHORTHANDS = {"--subnets": ("decompose", "subnets", int), "--sub-epochs": ("decompose", "sub_epochs", int)}
DEMO_METHODS = ["sgdm", "linear-probe", "freeze-unfreeze", "fast-retrain", "rifle", "kernel-rescale"]


def _add_config_args(p: argparse.ArgumentParser, skip=()) -> None:
    """One --flag per TrainConfig field (default None: 'not given', so a --recipe can apply)."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip or f.name == "options":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f"{f.metadata.get('help', '')} (default: {default})"
        if f.type in ("bool | str | None", "bool | str"):  # --amp / --compile: a bare flag (on), a value, or --no-X
            p.add_argument(flag, nargs="?", const="on", default=None, metavar="MODE", help=help_text)
            p.add_argument("--no-" + flag[2:], dest=f.name, action="store_const", const="off", help=f"{flag} off")
        elif isinstance(default, bool) or f.type in ("bool | None", "bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            kind = {"int": int, "float": float}.get(type(default).__name__, str)
            if f.type == "int | None":
                kind = int
            elif f.type == "float | None":
                kind = float
            p.add_argument(flag, type=kind, default=None, help=help_text)
    p.add_argument("-o", "--option", action="append", metavar="METHOD.FIELD=VALUE",
                   help="a method's option, e.g. -o rifle.period=2 (repeatable; see `fastretrain methods`)")  # fmt: skip
    p.add_argument("--config", metavar="FILE", help="YAML/JSON file of TrainConfig fields; command-line flags override it")
    for flag, (method, name, kind) in SHORTHANDS.items():
        p.add_argument(flag, type=kind, default=None, help=f"shorthand for -o {method}.{name}=VALUE")


def _config_from_args(args, skip=(), announce: bool = False) -> TrainConfig:
    """The config the flags and --config file give; `announce`: print what a --recipe changed."""
    # only what the file states explicitly, so a recipe still applies to the rest
    given = read_config_file(args.config) if args.config else {}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in skip and f.name != "options" and getattr(args, f.name, None) is not None:
            given[f.name] = getattr(args, f.name)
    opts = parse_options(args.option)
    for flag, (method, name, _) in SHORTHANDS.items():
        value = getattr(args, flag[2:].replace("-", "_"), None)
        if value is not None:
            opts.setdefault(method, {})[name] = value
    if opts:
        merged = dict(given.get("options") or {})
        for k, v in opts.items():
            merged[k] = {**merged.get(k, {}), **v}
        given["options"] = merged
    cfg, changes = resolve_config(**given)
    if announce and distributed.is_main():
        for line in changes:
            print(line)
    return cfg


def cmd_train(args) -> int:
    cfg = _config_from_args(args, announce=True)
    s = train(cfg)
    if distributed.is_main():
        print(f"done: {_done_line(s)}, training wall time {s['wall_seconds']:.1f}s -> {cfg.out}")
    return 0


def _done_line(s: dict) -> str:
    """Test accuracy at the epoch chosen on validation (or the last), then at the end."""
    if s["best_epoch"] is None:
        return f"final test acc {s['final_test_acc']:.4f} (no epoch eligible as best)"
    how = f"best val acc {s['best_val_acc']:.4f}" if s["best_val_acc"] is not None else "no validation split: the last"
    return f"test acc {s['test_acc']:.4f} at epoch {s['best_epoch']} ({how}), final test acc {s['final_test_acc']:.4f}"


def cmd_eval(args) -> int:
    return eval_command(args)


def cmd_predict(args) -> int:
    return predict_command(args)


def cmd_export(args) -> int:
    return export_command(args)


def cmd_lr_find(args) -> int:
    LRSweep(args.start_lr, args.end_lr, args.steps)  # bad sweep options fail before anything loads
    given = [f for f in UNUSED if getattr(args, f, None) is not None]
    cfg = _config_from_args(args, announce=True)
    if given:
        flags = ", ".join("--" + f.replace("_", "-") for f in given)
        print(f"note: lr-find does not use {flags} (it sets the LR and the length, evaluates nothing, writes the plot)")
    print(report(lr_find(cfg, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps, plot=args.plot)))
    return 0


def cmd_bench(args) -> int:

    cfg = _config_from_args(args, skip=("method", "seed", "out"))
    base = {k: v for k, v in cfg.to_dict().items() if k not in ("method", "seed", "out", "resume")}
    base["progress"] = False
    res = compare(base, args.methods, list(range(args.seeds)), args.out, baseline=args.baseline)
    print(res["table"])
    print(f"\nwritten: {args.out}/results.md, results.json, accuracy_vs_time.png")
    return 0


def cmd_demo(args) -> int:

    methods = [m for m in DEMO_METHODS if m in load_all()]
    base = {"data": "fashion-mnist", "model": "tf_efficientnet_lite0", "pretrained": True, "image_size": 32,
            "epochs": 2 if args.quick else 4, "batch_size": 32, "lr": 0.01, "schedule": "cosine", "device": args.device,
            "progress": True}  # fmt: skip
    print(f"demo: fine-tuning ImageNet-pretrained EfficientNet-Lite0 on the bundled Fashion-MNIST subset "
          f"(2,000 train / 1,000 test, {base['image_size']} px, {base['epochs']} epochs) with: {', '.join(methods)}\n")  # fmt: skip
    res = compare(base, methods, [0], args.out, baseline="sgdm", title="demo: Lite0 on Fashion-MNIST (2k/1k)")
    print("\n" + res["table"])
    loaded = [r["method"] for r in res["records"] if r["summary"].get("load_warning")]
    if loaded:  # each cell warned as it ended (fastretrain.load); the table's times for these are too slow
        print(f"\nwarning: another process competed for the cores during {', '.join(loaded)}: their times in the table "
              "are slower than this machine gives (load average in each run's summary.json)")
    print(f"\nplot: {args.out}/accuracy_vs_time.png   table: {args.out}/results.md")
    return 0


def cmd_list(args) -> int:
    if args.command == "models":
        names = [n for n in list_models() if not args.filter or args.filter in n]
        print("with shipped ImageNet weights (--pretrained): " + ", ".join(PRETRAINED_FILES))
        print("this package's: " + ", ".join(sorted(MODELS)))
        print(f"{len(names)} models" + (f" matching {args.filter!r}" if args.filter else "") + ":")
        print("\n".join(names[:200]) + ("\n..." if len(names) > 200 else ""))
    elif args.command == "methods":
        for m in load_all().values():
            opts = ""
            if m.strategy is not None and dataclasses.is_dataclass(m.strategy):
                opts = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(m.strategy))
            parts = f" = {' + '.join(m.parts)}" if m.parts else ""
            print(f"{m.name}{parts}: {m.help}" + (f"\n    options: {opts}" if opts else ""))
        print("\nrecipes (--recipe NAME; flags given explicitly beat them):")
        for r in RECIPES.values():
            print(f"{r.name}: {r.help}\n    sets: " + ", ".join(f"{k}={v!r}" for k, v in r.fields.items()))
    else:
        print("\n".join(DATASETS))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastretrain", description="Faster and better fine-tuning of image CNNs.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one model with one or more methods")
    _add_config_args(t)
    t.set_defaults(fn=cmd_train)
    lf = sub.add_parser("lr-find", help="LR range test: train a few hundred steps at most with an exponentially "
                        "growing LR, plot the loss, suggest an LR (the weights are left as they were)")
    _add_config_args(lf)
    lf.add_argument("--start-lr", type=float, default=1e-7, help="first LR of the sweep (default: 1e-7)")
    lf.add_argument("--end-lr", type=float, default=10.0, help="last LR of the sweep (default: 10)")
    lf.add_argument("--steps", type=int, default=100, help="training steps of the sweep, at most (default: 100)")
    lf.add_argument("--plot", default="lr_find.png", help="where to write the plot (default: lr_find.png)")
    lf.set_defaults(fn=cmd_lr_find)
    e = sub.add_parser("eval", help="per-class metrics and confusion matrix of a run's weights on its test set")
    e.add_argument("--run", required=True, help="run folder written by `fastretrain train`")
    e.add_argument("--which", choices=["best", "final"], default="best", help="which weights (default: best)")
    e.add_argument("--data", help="instead of the run's test split: a dataset's test split, or every image of a folder "
                   "of class folders")  # fmt: skip
    e.add_argument("--device", help="auto, cpu, cuda (default: the run's)")
    e.add_argument("--topk", type=int, default=5, help="also report top-K accuracy (default: 5)")
    e.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    e.add_argument("--out", help="folder for metrics.json, per_class.csv, confusion_matrix.csv/.png "
                   "(default: RUN/eval_WHICH[_DATA])")
    e.add_argument("--json", action="store_true", help="print one JSON line instead of the table")
    e.add_argument("--tta", action="store_true", help="test-time augmentation: average the softmax of each image "
                   "and its horizontal flip (report in RUN/eval_WHICH[_DATA]_tta)")  # fmt: skip
    e.set_defaults(fn=cmd_eval)
    pr = sub.add_parser("predict", help="classify images, folders (recursively) and zips with a run's model")
    pr.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders, .zip files")
    pr.add_argument("--run", required=True, help="run folder written by `fastretrain train`")
    pr.add_argument("--which", choices=["best", "final"], default="best", help="which weights (default: best)")
    pr.add_argument("--topk", type=int, default=1, help="classes per image, most probable first (default: 1)")
    pr.add_argument("--out", help="write the rows to FILE.csv or FILE.json (default: CSV on stdout)")
    pr.add_argument("--batch-size", type=int, default=64, help="images per batch (default: 64)")
    pr.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    pr.add_argument("--tta", action="store_true", help="test-time augmentation: average the softmax of each image "
                    "and its horizontal flip (two forward passes)")  # fmt: skip
    pr.set_defaults(fn=cmd_predict)
    x = sub.add_parser("export", help="export a run's model to ONNX or TorchScript, checked against PyTorch")
    x.add_argument("--run", required=True, help="run folder written by `fastretrain train`")
    x.add_argument("--format", required=True, choices=["onnx", "torchscript"],
                   help="onnx (needs fastretrain[export]) or torchscript")
    x.add_argument("--out", help="output file (default: RUN/model_WHICH.onnx or .torchscript.pt)")
    x.add_argument("--which", choices=["best", "final"], default="best", help="which weights (default: best)")
    x.add_argument("--images", nargs="+", metavar="PATH",
                   help="check parity on these images (default: the test images the run kept)")
    x.add_argument("--tol", type=float, default=1e-4, help="largest accepted |logit difference| (default: 1e-4)")
    x.set_defaults(fn=cmd_export)
    b = sub.add_parser("bench", help="run several methods side by side (seeds × methods) and write table + plot")
    b.add_argument("--methods", nargs="+", required=True, help="methods to compare; `a,b` composes a and b")
    b.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default: 3)")
    b.add_argument("--baseline", default="sgdm", help="method whose best accuracy is the time-to-target (default: sgdm)")
    b.add_argument("--out", default="runs/bench", help="output folder (finished cells are reused)")
    _add_config_args(b, skip=("method", "seed", "out"))
    b.set_defaults(fn=cmd_bench)
    d = sub.add_parser("demo", help="the main job on the bundled data: compare methods, print a table, write a plot")
    d.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    d.add_argument("--quick", action="store_true", help="2 epochs instead of 4")
    d.add_argument("--device", default="auto", help="auto, cpu or cuda")
    d.set_defaults(fn=cmd_demo)
    lists = (("models", "list model names"), ("methods", "list methods, their options and the recipes"),
             ("datasets", "list named datasets"))  # fmt: skip
    for name, text in lists:
        m = sub.add_parser(name, help=text)
        if name == "models":
            m.add_argument("filter", nargs="?", help="substring to filter by")
        m.set_defaults(fn=cmd_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except FastRetrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last finished epoch is in the checkpoint (resume with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
