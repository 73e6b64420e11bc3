"""benchmarks/kernel_roundtrip.py: the 7x7 -> 3x3 -> 7x7 round trip of kernel rescaling measured on a tiny model whose
stem kernel is set by hand (smooth: small change; random: large), and the agreement of two classifiers."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import kernel_roundtrip as rt  # noqa: E402

from fastretrain.kernels import large_convs  # noqa: E402
from fastretrain.models import create_model  # noqa: E402


def stem_model(kernel: torch.Tensor) -> torch.nn.Module:
    model = create_model("tiny-resnet", 4)
    (name, conv), = large_convs(model, 5)  # tiny-resnet: one 7x7 stem
    with torch.no_grad():
        conv.weight.copy_(kernel.expand_as(conv.weight))
    return model


def test_round_trip_changes_a_rough_kernel_and_keeps_a_smooth_one():
    r = torch.arange(7) - 3.0
    gauss = torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * 3.0 ** 2))  # sigma 3 px
    smooth = stem_model(gauss)
    twin, change = rt.round_trip(smooth)
    (name, value), = change.items()
    assert value < 0.15 and twin is not smooth
    assert dict(smooth.named_modules())[name].weight.shape == dict(twin.named_modules())[name].weight.shape
    rough = stem_model(torch.randn(7, 7, generator=torch.Generator().manual_seed(0)))
    _, rough_change = rt.round_trip(rough)
    assert rough_change[name] > 0.5  # white-noise taps do not survive a 3x3 resampling
    torch.testing.assert_close(dict(rough.named_modules())[name].weight[0, 0],
                               torch.randn(7, 7, generator=torch.Generator().manual_seed(0)))  # original untouched


def test_agreement_of_a_model_with_itself_and_with_its_round_trip():
    model = stem_model(torch.randn(7, 7, generator=torch.Generator().manual_seed(1)))
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    same = rt.agreement(model, model, x)
    assert same["top1_agreement"] == 1.0 and abs(same["feature_cosine_min"] - 1.0) < 1e-5
    other = rt.agreement(model, rt.round_trip(model)[0], x)
    assert other["feature_cosine_median"] < 0.9999
