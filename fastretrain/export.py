"""Export a run's model to ONNX or TorchScript, checked against PyTorch on real images.

ONNX: torch.onnx's exporter built on torch.export (`dynamo=True`), with a dynamic batch dimension, one
self-contained file (no external weight file), and the run's model.json (class names, preprocessing) in the
file's metadata (`metadata_props`: `fastretrain.model_json`). The check runs the saved file in onnxruntime.
TorchScript: a trace (`torch.jit.trace`; PyTorch deprecates TorchScript in favour of torch.export, but many
C++ and mobile runtimes still load it), model.json stored as the extra file `model.json`; the check loads the
saved file back. Both take the preprocessed input, float32 (batch, 3, size, size), and return logits.

The parity check compares the exported model's logits with PyTorch's, both fp32 on the CPU, on real images
(the test images the run kept in samples.safetensors, or files given with --images), at the full batch and
at batch 1 (which also shows the batch dimension is dynamic). timm's onnx_export.py/onnx_validate.py make the
same comparison; the limit is 1e-4 on the largest absolute logit difference.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import Any

import torch

from .artifacts import SAMPLES
from .data import prepare_images
from .errors import FastRetrainError
from .predict import decoded_batches, find_images, load_model  # the file handling of `fastretrain predict`

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
TOLERANCE = 1e-4  # max |logit difference| accepted in fp32
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")


def require_onnx() -> None:
    """Raise a one-line error naming the optional packages ONNX export needs when one is missing."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise FastRetrainError(f"ONNX export needs the optional package(s) {', '.join(missing)}: "
                               "pip install 'fastretrain[export]'")  # fmt: skip


def parity_images(predictor, run: Path, images=None) -> tuple[torch.Tensor, str]:
    """Preprocessed real images (B, 3, size, size) for the check, and where they came from."""
    if images:
        sources, _ = find_images(images, predictor.classes)
        xs = [x for _, x, _ in decoded_batches(sources[:64], predictor.store_size, 64) if x is not None]
        if not xs:
            raise FastRetrainError(f"no readable image in {', '.join(map(str, images))} for the parity check")
        x, what = torch.cat(xs), f"{sum(len(t) for t in xs)} image(s) from {', '.join(map(str, images))}"
    elif (run / SAMPLES).is_file():
        from safetensors.torch import load_file

        x = load_file(str(run / SAMPLES))["images"]
        what = f"{len(x)} test image(s) the run kept ({SAMPLES})"
    else:
        raise FastRetrainError(f"{run} has no {SAMPLES} (runs with --no-save-weights keep none): give --images PATH "
                               "to check the export on real images")  # fmt: skip
    return prepare_images(x, False, predictor.image_size, predictor.norm), what


def _quiet():
    """Silence torch's deprecation and tracer notes (the parity check is the test of the result)."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", message=r".*(deprecated|TracerWarning|might cause the trace).*")
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    return ctx


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, spec: dict[str, Any]):
    """Write `model` as ONNX with a dynamic batch; return a function running the saved file in onnxruntime."""
    require_onnx()
    import onnx
    import onnxruntime

    ctx = _quiet()
    try:
        torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False,
                          verbose=False)  # fmt: skip
    except Exception as e:  # noqa: BLE001 - the exporter raises many types; the user needs the one line
        raise FastRetrainError(f"ONNX export of {spec['model']} failed: {str(e).splitlines()[0]}") from e
    finally:
        ctx.__exit__(None, None, None)
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    onnx.helper.set_model_props(m, {"fastretrain.model_json": json.dumps(spec), "classes": json.dumps(spec["classes"])})
    onnx.save(m, str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    info = f"ONNX opset {next(o.version for o in m.opset_import if o.domain in ('', 'ai.onnx'))}"
    return (lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])), info


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path, spec: dict[str, Any]):
    """Write a TorchScript trace of `model`; return a function running the file loaded back."""
    ctx = _quiet()
    try:
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(path), _extra_files={"model.json": json.dumps(spec)})
        loaded = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001
        raise FastRetrainError(f"TorchScript export of {spec['model']} failed: {str(e).splitlines()[0]}") from e
    finally:
        ctx.__exit__(None, None, None)

    def run(x):
        with torch.no_grad():
            return loaded(x)

    return run, "TorchScript (traced)"


@torch.no_grad()
def export_run(run: str | Path, fmt: str = "onnx", out: str | Path | None = None, which: str = "best", images=None,
               tol: float = TOLERANCE) -> dict[str, Any]:  # fmt: skip
    """Export a run's weights; check the logits against PyTorch (fp32, CPU) on real images; return the facts.

    Raises FastRetrainError when the largest absolute logit difference exceeds `tol` (the file is kept).
    """
    if fmt not in FORMATS:
        raise FastRetrainError(f"--format must be {' or '.join(FORMATS)}, got {fmt!r}")
    if fmt == "onnx":
        require_onnx()  # before any work
    run = Path(run)
    predictor = load_model(run, which, "cpu")
    model = predictor.model.float().eval()
    x, what = parity_images(predictor, run, images)
    path = Path(out) if out else run / f"model_{which}{FORMATS[fmt]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    example = x[:2] if len(x) >= 2 else x.repeat(2, 1, 1, 1)  # batch 2: torch.export would fix a batch of 1
    exporter = export_onnx if fmt == "onnx" else export_torchscript
    runner, info = exporter(model, example, path, {**predictor.spec, "exported_weights": Path(predictor.weights).name})
    diffs = {}
    for b in dict.fromkeys((len(x), 1)):
        diffs[b] = float((runner(x[:b]).float() - model(x[:b]).float()).abs().max())
    facts = {"path": str(path), "format": fmt, "info": info, "bytes": path.stat().st_size, "images": what,
             "max_abs_logit_diff": max(diffs.values()), "per_batch": diffs, "tolerance": tol,
             "input": f"images: float32 (batch, 3, {predictor.image_size}, {predictor.image_size})",
             "output": f"logits: float32 (batch, {len(predictor.classes)})"}  # fmt: skip
    if not facts["max_abs_logit_diff"] <= tol:
        worst = facts["max_abs_logit_diff"]
        raise FastRetrainError(f"parity check failed: max |logit difference| {worst:.3g} > {tol:g} on {what}; "
                               f"the exported file is kept at {path}")  # fmt: skip
    return facts


def export_command(args) -> int:
    """`fastretrain export --run RUN --format onnx|torchscript [--out FILE] [--which best|final] [--images PATH...]`."""
    f = export_run(args.run, args.format, args.out, args.which, args.images, args.tol)
    size = f"{f['bytes'] / 1e6:.1f} MB" if f["bytes"] >= 1e5 else f"{f['bytes'] / 1e3:.0f} kB"
    print(f"exported {f['path']} ({f['info']}, {size}): input {f['input']}, output {f['output']}; "
          "preprocessing and class names in model.json (also inside the file)")  # fmt: skip
    per = ", ".join(f"{d:.2g} at batch {b}" for b, d in f["per_batch"].items())
    print(
        f"parity with PyTorch (fp32, CPU) on {f['images']}: max |logit difference| {per} (limit {f['tolerance']:g}): ok"
    )
    return 0
