"""Kernel resampling for kernel rescaling (de Gusmão et al., "Fast Training of Convolutional Neural
Networks via Kernel Rescaling", arXiv 1610.03623): pure tensor functions that resample conv kernels to
another spatial size with their gain preserved, the matching conv geometry, and the same applied to
every large conv of a model.

Convention (one axis; the 2-D map is the same map applied to rows and columns):
- A kernel of K taps is a *mass* distribution on the line, in units of its own pixels: tap i holds the
  mass k[i] and is centred at c_i = i − (K−1)/2. Between taps, the mass is spread by a basis function
  φ of unit integral:
    * "area":     φ = box of width 1 (the tap's own pixel cell) — piecewise-constant density;
    * "bilinear": φ = hat of half-width 1 — the density is the linear interpolation of the kernel
                  zero-padded by one tap on each side.
- Resampling to K' taps whose pixels are `scale` old pixels wide (scale = s to go down to an image
  downscaled by s, 1/s to go back up): new tap j covers the cell [(j − K'/2)·scale, (j + 1 − K'/2)·scale]
  (centred, like the old kernel), the two outermost cells extended to ±∞, and receives the mass of the
  density over its cell:  R[j, i] = ∫_{cell j} φ(x − c_i) dx,   k' = R k  (2-D: K' = R_h K R_wᵀ).
- Every column of R sums to exactly 1 (the cells tile the whole line), so the kernel sum of every
  (output, input) channel pair is preserved — up to float rounding; the map is built in float64.
  Keeping mass (not values) is what makes the scaling identity hold: on an image downscaled by s with
  area averaging, conv(f↓, k↓) ≈ (conv(f, k))↓ with no extra factor — the continuous identity's s⁻²
  is absorbed because each low-res tap holds the mass of s² fine taps.

Geometry: the stride is kept (every feature map of the network is simply s times smaller); the new size
is the integer nearest K/s with the parity of K (so the kernel keeps its centre tap) — 7→3, 5→3, 9→5,
11→5 at s = 2; symmetric padding P becomes P − (K − K')/2 (same-padding stays same-padding), at least 0.
timm's `Conv2dSame` (TF 'SAME' padding, used by tf_efficientnet_lite* for stride-2 convs) computes its
padding at run time from the weight's shape, so it needs no change; nor does a string padding
('same'/'valid'). Dilated convs are left alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


def resampled_size(k: int, scale: float) -> int:
    """Taps after resampling a k-tap kernel by `scale`: the integer nearest k/scale with k's parity (≥ 1)."""
    target = k / scale
    cands = [n for n in range(k % 2 or 2, int(math.ceil(target)) + 3, 2)]  # same parity as k
    return min(cands, key=lambda n: (abs(n - target), -n))


def _antiderivative(x: torch.Tensor, mode: str) -> torch.Tensor:
    """∫_{-∞}^{x} φ for the unit-integral basis φ centred at 0."""
    if mode == "area":
        return (x + 0.5).clamp(0.0, 1.0)
    if mode == "bilinear":
        xc = x.clamp(-1.0, 1.0)
        return torch.where(xc <= 0, (xc + 1) ** 2 / 2, 1 - (1 - xc) ** 2 / 2)
    raise ValueError(f"mode must be 'area' or 'bilinear', got {mode!r}")


def resample_matrix(k_old: int, k_new: int, scale: float, mode: str = "area") -> torch.Tensor:
    """(k_new, k_old) float64 map R with k_new = R @ k_old along one axis; columns sum to 1.

    Args:
        scale: width of a new tap in old taps (s when downscaling by s, 1/s when upscaling).
        mode: "area" (box basis) or "bilinear" (hat basis), see the module docstring.
    """
    c = torch.arange(k_old, dtype=torch.float64) - (k_old - 1) / 2  # old tap centres
    edges = (torch.arange(k_new + 1, dtype=torch.float64) - k_new / 2) * scale  # new cell boundaries
    edges[0], edges[-1] = -math.inf, math.inf  # the outer taps take the mass beyond the new support
    F = _antiderivative(edges[:, None] - c[None, :], mode)  # (k_new + 1, k_old)
    return F[1:] - F[:-1]


def resample_kernel(weight: torch.Tensor, size: tuple[int, int], scale: float | tuple[float, float], mode: str = "area") -> torch.Tensor:
    """Resample conv weights (..., kh, kw) to (..., size[0], size[1]), gain-preserving (see module doc).

    Args:
        scale: new tap width in old taps, per axis or one for both.
    """
    sh, sw = (scale, scale) if isinstance(scale, (int, float)) else scale
    rh = resample_matrix(weight.shape[-2], size[0], sh, mode).to(weight.device)
    rw = resample_matrix(weight.shape[-1], size[1], sw, mode).to(weight.device)
    out = torch.einsum("ai,...ij,bj->...ab", rh, weight.double(), rw)  # (..., size[0], size[1])
    return out.to(weight.dtype)


def matching_padding(kernel: int, padding: int, new_kernel: int) -> int:
    """Padding that keeps a conv's centre tap where it was when its kernel goes from `kernel` to `new_kernel` taps."""
    return max(0, padding - (kernel - new_kernel) // 2)


# ---------------------------------------------------------------------------------------------- models


@dataclass
class ConvGeometry:
    """Kernel size and padding of one conv at full size and rescaled (padding None: computed at run time)."""

    kernel: tuple[int, int]
    padding: tuple[int, int] | None
    small_kernel: tuple[int, int]
    small_padding: tuple[int, int] | None


def large_convs(model: nn.Module, min_kernel: int = 5) -> list[tuple[str, nn.Conv2d]]:
    """Every undilated nn.Conv2d (depthwise and timm's Conv2dSame included) with a kernel side ≥ min_kernel."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and max(m.kernel_size) >= min_kernel and tuple(m.dilation) == (1, 1)]  # fmt: skip


def conv_geometry(conv: nn.Conv2d, scale: float) -> ConvGeometry:
    """Full-size and rescaled geometry of `conv` for inputs downscaled by `scale`."""
    k = tuple(conv.kernel_size)
    small = tuple(resampled_size(n, scale) for n in k)
    if isinstance(conv.padding, str):  # 'same' / 'valid': torch derives it from the weight at run time
        return ConvGeometry(k, None, small, None)
    pad = tuple(conv.padding)
    return ConvGeometry(k, pad, small, tuple(matching_padding(a, p, b) for a, p, b in zip(k, pad, small)))


def set_conv_kernel(conv: nn.Conv2d, weight: torch.Tensor, padding: tuple[int, int] | None) -> None:
    """Give `conv` a weight of another spatial size: a new nn.Parameter under the same name, with the old
    one's requires_grad, dtype, device and memory format. (A new Parameter, not `p.data = ...`: autograd
    caches a leaf's gradient accumulator with its shape while any graph through it is alive.) Whoever
    holds the old Parameter (an optimizer) must be rebuilt."""
    p = conv.weight
    channels_last = p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    w = weight.detach().to(p.device, p.dtype).contiguous(memory_format=fmt)
    conv.weight = nn.Parameter(w, requires_grad=p.requires_grad)
    conv.kernel_size = tuple(weight.shape[-2:])
    if padding is not None:
        conv.padding = tuple(padding)
        # used by padding modes other than 'zeros'
        conv._reversed_padding_repeated_twice = [q for q in reversed(conv.padding) for _ in range(2)]


def downscale_kernels(model: nn.Module, scale: float, min_kernel: int = 5, mode: str = "area") -> dict[str, ConvGeometry]:
    """Resample every large conv kernel of `model` for inputs downscaled by `scale`; return the geometry by module name."""
    out = {}
    for name, conv in large_convs(model, min_kernel):
        g = conv_geometry(conv, scale)
        if g.small_kernel == g.kernel:
            continue
        set_conv_kernel(conv, resample_kernel(conv.weight.detach(), g.small_kernel, scale, mode), g.small_padding)
        out[name] = g
    return out


def upscale_kernels(model: nn.Module, geometry: dict[str, ConvGeometry], scale: float, mode: str = "bilinear") -> None:
    """Resample the kernels `downscale_kernels` changed back to their full size (inputs at full size again)."""
    modules = dict(model.named_modules())
    for name, g in geometry.items():
        conv = modules[name]
        if tuple(conv.weight.shape[-2:]) != g.kernel:
            set_conv_kernel(conv, resample_kernel(conv.weight.detach(), g.kernel, 1.0 / scale, mode), g.padding)


def follow_loaded_shapes(model: nn.Module, geometry: dict[str, ConvGeometry]) -> list:
    """Make each rescaled conv adopt the kernel size of a state_dict loaded into it (full or small), so a
    checkpoint saved in either phase loads into the model in either phase. Returns the hook handles."""
    modules = dict(model.named_modules())
    handles = []
    for name, g in geometry.items():

        def hook(module, state_dict, prefix, *args, g=g):
            w = state_dict.get(prefix + "weight")
            if w is None or tuple(w.shape[-2:]) == tuple(module.weight.shape[-2:]):
                return
            shape = tuple(w.shape[-2:])
            if shape not in (g.kernel, g.small_kernel):
                return  # an unknown shape: let load_state_dict report the mismatch
            padding = g.padding if shape == g.kernel else g.small_padding
            set_conv_kernel(module, torch.zeros(*module.weight.shape[:-2], *shape), padding)

        handles.append(modules[name].register_load_state_dict_pre_hook(hook))
    return handles
