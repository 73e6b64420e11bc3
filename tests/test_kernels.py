"""Kernel resampling (fastretrain.kernels): the resampling map against numerical integration, gain
preservation, the scaling identity the method relies on, and the model-level geometry (tiny-resnet's 7×7
stem, Lite0's 5×5 depthwise convs incl. timm's Conv2dSame)."""
import pytest
import torch
import torch.nn.functional as F

from fastretrain.kernels import (
    downscale_kernels,
    follow_loaded_shapes,
    large_convs,
    matching_padding,
    resample_kernel,
    resample_matrix,
    resampled_size,
    upscale_kernels,
)
from fastretrain.models import create_model


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian low-pass filter, circular boundary: (B, C, H, W) -> same."""
    r = int(3 * sigma) + 1
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="circular"), g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="circular"), g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def test_resampled_size_nearest_with_parity():
    assert [resampled_size(k, 2) for k in (5, 7, 9, 11, 13)] == [3, 3, 5, 5, 7]
    assert resampled_size(6, 2) == 4  # even stays even; a tie goes to the larger size
    assert resampled_size(7, 3) == 3 and resampled_size(3, 2) == 1
    assert matching_padding(7, 3, 3) == 1 and matching_padding(5, 2, 3) == 1 and matching_padding(7, 0, 3) == 0


def _numeric_matrix(k_old, k_new, scale, mode, n=20001):
    """Reference: integrate the basis functions over each new cell with the midpoint rule (cells clipped
    to a wide window instead of ±∞)."""
    c = torch.arange(k_old, dtype=torch.float64) - (k_old - 1) / 2
    lo, hi = -(k_old + 2.0), k_old + 2.0
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    dx = x[1] - x[0]
    d = x[:, None] - c[None, :]
    phi = (d.abs() <= 0.5).double() if mode == "area" else (1 - d.abs()).clamp(min=0)
    edges = (torch.arange(k_new + 1, dtype=torch.float64) - k_new / 2) * scale
    edges[0], edges[-1] = lo - 1, hi + 1
    cell = ((x[:, None] >= edges[None, :-1]) & (x[:, None] < edges[None, 1:])).double()  # (n, k_new)
    return cell.T @ phi * dx


@pytest.mark.parametrize("k_old,k_new,scale", [(7, 3, 2.0), (5, 3, 2.0), (13, 7, 2.0), (3, 7, 0.5), (3, 5, 0.5), (7, 3, 7 / 3)])
@pytest.mark.parametrize("mode", ["area", "bilinear"])
def test_resample_matrix_matches_numerical_integration(k_old, k_new, scale, mode):
    r = resample_matrix(k_old, k_new, scale, mode)
    assert r.shape == (k_new, k_old)
    assert (r >= 0).all()
    torch.testing.assert_close(r.sum(0), torch.ones(k_old, dtype=torch.float64), rtol=0, atol=1e-14)  # mass kept
    torch.testing.assert_close(r, _numeric_matrix(k_old, k_new, scale, mode), rtol=0, atol=2e-3)


def test_area_downscale_is_block_sum_when_cells_align():
    # 8 taps -> 4 at scale 2: each new tap is exactly the sum of two old taps
    k = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    expect = k.reshape(3, 2, 4, 2, 4, 2).sum((3, 5))
    torch.testing.assert_close(resample_kernel(k, (4, 4), 2.0, "area"), expect)


def test_round_trip_keeps_sum_exactly_and_smooth_kernel_approximately():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 4, 7, 7, generator=g, dtype=torch.float64)  # rough kernels, any sign
    down = resample_kernel(w, (3, 3), 2.0, "area")
    up = resample_kernel(down, (7, 7), 0.5, "bilinear")
    for v in (down, up):
        torch.testing.assert_close(v.sum((-1, -2)), w.sum((-1, -2)), rtol=0, atol=1e-12)
    w32 = w.float()
    up32 = resample_kernel(resample_kernel(w32, (3, 3), 2.0), (7, 7), 0.5, "bilinear")
    torch.testing.assert_close(up32.sum((-1, -2)), w32.sum((-1, -2)), rtol=0, atol=1e-5)
    # a smooth kernel comes back close, the closer the smoother (13 -> 7 -> 13, Gaussians)
    t = torch.arange(13, dtype=torch.float64) - 6
    errs = []
    for sigma in (1.5, 3.0):
        k = torch.exp(-(t[:, None] ** 2 + t[None] ** 2) / (2 * sigma**2))
        back = resample_kernel(resample_kernel(k, (7, 7), 2.0), (13, 13), 0.5, "bilinear")
        errs.append(float((back - k).norm() / k.norm()))
        assert float(back.sum()) == pytest.approx(float(k.sum()), rel=1e-13)
    assert errs[1] < errs[0] and errs[1] < 0.12 and errs[0] < 0.3  # measured 0.110, 0.247


def test_scaling_identity_on_smooth_images():
    """conv(f↓, k↓) upsampled ≈ conv(f, k) for smooth f and k; the error shrinks as smoothness grows."""
    g = torch.Generator().manual_seed(0)
    errs = []
    for sigma in (1.0, 2.0, 4.0):
        f = blur(torch.randn(2, 1, 128, 128, generator=g, dtype=torch.float64), sigma)
        k = blur(torch.randn(1, 1, 21, 21, generator=g, dtype=torch.float64), sigma)[..., 4:-4, 4:-4]  # smooth 13×13
        full = F.conv2d(f, k, padding=6)  # (2, 1, 128, 128)
        low = F.conv2d(F.avg_pool2d(f, 2), resample_kernel(k, (7, 7), 2.0, "area"), padding=3)  # (2, 1, 64, 64)
        up = F.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
        b = 16  # away from the zero-padded border
        errs.append(float((up - full)[..., b:-b, b:-b].norm() / full[..., b:-b, b:-b].norm()))
    assert errs[0] > errs[1] > errs[2]
    assert errs[1] < 0.15 and errs[2] < 0.06, errs  # measured ≈ 0.31, 0.09, 0.03


def test_tiny_resnet_stem_geometry_and_state_dict_in_both_phases():
    torch.manual_seed(0)
    model = create_model("tiny-resnet", 3)
    full_sd = {k: v.clone() for k, v in model.state_dict().items()}
    w = model.stem[0].weight
    geo = downscale_kernels(model, 2.0)
    assert list(geo) == ["stem.0"]  # only the 7×7 stem; the 3×3 and 1×1 convs stay
    stem = model.stem[0]
    assert stem.weight.shape == (8, 3, 3, 3) and stem.padding == (1, 1) and stem.stride == (2, 2) and stem.kernel_size == (3, 3)
    assert stem.weight is not w and stem.weight.requires_grad
    torch.testing.assert_close(stem.weight.sum((-1, -2)), w.sum((-1, -2)), rtol=1e-5, atol=1e-5)
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_features(x[..., ::2, ::2]).shape[-1] * 2 == create_model("tiny-resnet", 3).forward_features(x).shape[-1]
    small_sd = {k: v.clone() for k, v in model.state_dict().items()}
    handles = follow_loaded_shapes(model, geo)
    model.load_state_dict(full_sd)  # a full-size checkpoint into the downscaled model: it follows
    assert stem.kernel_size == (7, 7) and model.stem[0].padding == (3, 3)
    torch.testing.assert_close(model.stem[0].weight, full_sd["stem.0.weight"])
    model.load_state_dict(small_sd)  # and back
    assert model.stem[0].weight.shape == (8, 3, 3, 3) and model.stem[0].padding == (1, 1)
    for h in handles:
        h.remove()
    upscale_kernels(model, geo, 2.0)
    assert model.stem[0].weight.shape == (8, 3, 7, 7) and model.stem[0].padding == (3, 3)
    torch.testing.assert_close(model.stem[0].weight.sum((-1, -2)), w.sum((-1, -2)), rtol=1e-5, atol=1e-5)
    assert model.forward_features(x).shape == create_model("tiny-resnet", 3).forward_features(x).shape


def test_threshold_is_configurable():
    model = create_model("tiny-resnet", 3)
    assert [n for n, _ in large_convs(model, 3)] == ["stem.0", "layer1.conv1", "layer1.conv2", "layer2.conv1", "layer2.conv2"]
    geo = downscale_kernels(model, 2.0, min_kernel=3)
    assert model.layer1.conv1.weight.shape[-2:] == (1, 1) and model.layer1.conv1.padding == (0, 0)
    assert len(geo) == 5
    assert downscale_kernels(create_model("tiny-resnet", 3), 2.0, min_kernel=9) == {}


def test_lite0_depthwise_5x5_and_conv2d_same():
    """tf_efficientnet_lite0: stride-1 5×5 depthwise convs have static padding 2 (-> 1); stride-2 ones are
    timm's Conv2dSame, whose TF 'SAME' padding follows the weight's shape at run time."""
    from timm.layers.conv2d_same import Conv2dSame

    model = create_model("tf_efficientnet_lite0", 5).eval()
    big = large_convs(model)
    assert len(big) == 9 and all(m.kernel_size == (5, 5) and m.groups == m.in_channels for _, m in big)
    same = [n for n, m in big if isinstance(m, Conv2dSame)]
    assert same == ["blocks.2.0.conv_dw", "blocks.5.0.conv_dw"]
    sums = {n: m.weight.detach().sum((-1, -2)) for n, m in big}
    sizes = {}
    for n, m in model.named_modules():
        if n in ("blocks.2", "blocks.4", "blocks.5"):
            m.register_forward_hook(lambda mod, i, o, n=n: sizes.__setitem__(n, o.shape[-1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
        full = dict(sizes)
        geo = downscale_kernels(model, 2.0)
        model(torch.randn(1, 3, 32, 32))
    assert len(geo) == 9 and all(m.weight.shape[-2:] == (3, 3) for _, m in big)
    for n, m in big:  # gain per channel kept
        torch.testing.assert_close(m.weight.detach().sum((-1, -2)), sums[n], rtol=1e-5, atol=1e-6)
    assert dict(model.named_modules())["blocks.2.1.conv_dw"].padding == (1, 1)
    assert all(dict(model.named_modules())[n].padding == (0, 0) for n in same)  # dynamic: untouched
    assert sizes == {k: v // 2 for k, v in full.items()}  # every feature map exactly half as large
    # Conv2dSame with the small kernel pads like TF 'SAME' would: compare with explicit padding
    m = dict(model.named_modules())["blocks.2.0.conv_dw"]
    x = torch.randn(1, m.in_channels, 8, 8)
    ref = F.conv2d(F.pad(x, (0, 1, 0, 1)), m.weight, None, 2, 0, 1, m.groups)  # in 8, k 3, s 2: pad total 1, at the end
    torch.testing.assert_close(m(x), ref)
