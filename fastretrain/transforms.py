"""Image transforms: pure functions on uint8 canvas batches (tensors), no files and no datasets.

The training transform (a per-sample random resized crop of the whole image + horizontal flip) and the evaluation
transform (the central 87.5 % of the image's central square) of `prepare_images`, both through
`torchvision.ops.roi_align` or one gather, resample every box of a batch in one call (bilinear, averaging several
samples per output pixel when shrinking, i.e. antialiased). The stores' resizes (`resize_short`, `resize_square`:
short side to S = image_size/0.875, bicubic, antialiased) and `decode_image`, which decodes one image exactly as a
training image is stored (what `load_model` applies to new images). Canvas layout: cache.py.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from .cache import cap_side, decode_bytes, fit_pil, full_long_side
from .errors import FastRetrainError

CROP_PCT = 0.875  # eval crop covers this fraction of the stored square


# --------------------------------------------------------------------------------------------------
# batch transforms


def _boxes_random_resized(n: int, h, w, generator, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)) -> torch.Tensor:
    """(n, 4) boxes x1, y1, x2, y2 in pixels of h×w images (h, w: numbers or (n,) tensors): random area
    fraction of the image and aspect ratio, inside the image."""
    u = torch.rand(n, 4, generator=generator)
    h, w = torch.as_tensor(h, dtype=torch.float32), torch.as_tensor(w, dtype=torch.float32)
    area = (scale[0] + (scale[1] - scale[0]) * u[:, 0]) * h * w
    logr = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    bw = torch.minimum(torch.sqrt(area * torch.exp(logr)), w)
    bh = torch.minimum(torch.sqrt(area / torch.exp(logr)), h)
    x1 = (w - bw) * u[:, 2]
    y1 = (h - bh) * u[:, 3]
    return torch.stack([x1, y1, x1 + bw, y1 + bh], 1)


def _regions(x: torch.Tensor, hw: torch.Tensor | None):
    """Per image of a canvas batch: stored region (rows, cols) (B,) each, its short side, transposed? (B,)."""
    b, _, rows, cols = x.shape
    if hw is None:  # every image fills the canvas upright
        rh, rw = torch.full((b,), rows), torch.full((b,), cols)
        return rh, rw, [min(rows, cols)], torch.zeros(b, dtype=torch.bool)
    hw = hw.cpu()
    rh, rw = hw.min(1).values, hw.max(1).values
    return rh, rw, [int(rh.min()), int(rw.min())], hw[:, 0] > hw[:, 1]


def square_crops(x: torch.Tensor, hw: torch.Tensor | None, c: int, inset: int) -> torch.Tensor:
    """(B, 3, c, c) from a canvas batch: of each image's central square, the c×c pixels from `inset`, upright."""
    rh, rw, _, tr = _regions(x, hw)
    q = int(torch.minimum(rh, rw).min())
    top, left = (rh - q) // 2 + inset, (rw - q) // 2 + inset
    if bool((top == top[0]).all() and (left == left[0]).all()):
        t, l = int(top[0]), int(left[0])
        out = x[..., t : t + c, l : l + c]
    else:  # per-image offsets: one gather
        ar = torch.arange(c)
        r = (top[:, None] + ar).to(x.device)[:, None, :, None]  # (B, 1, c, 1)
        k = (left[:, None] + ar).to(x.device)[:, None, None, :]  # (B, 1, 1, c)
        b = torch.arange(len(x), device=x.device)[:, None, None, None]
        out = x[b, torch.arange(x.shape[1], device=x.device)[None, :, None, None], r, k]
    if tr.any():
        out = out.clone()
        t = tr.to(x.device)
        out[t] = out[t].transpose(-1, -2)
    return out


def prepare_images(x: torch.Tensor, train: bool, size: int, norm, generator=None, hw=None) -> torch.Tensor:
    """uint8 canvas batch (B, 3, S, L) -> normalised float (B, 3, size, size), upright.

    hw (B, 2): each image's upright (height, width) as stored (portrait images transposed, see cache.py);
    None: every image fills the canvas upright (square stores, arrays).
    train: per-sample random resized crop of the whole image + horizontal flip. Eval: the central 87.5% of
    the image's central square (exactly `size` pixels when its side is size/0.875, else resized to `size`,
    antialiased), i.e. the centre crop of a short-side resize.
    """
    b = x.shape[0]
    rh, rw, sides, tr = _regions(x, hw)
    if train:
        h, w = (rh, rw) if hw is None else (hw[:, 0].cpu(), hw[:, 1].cpu())  # upright
        boxes = _boxes_random_resized(b, h if hw is not None else x.shape[-2], w if hw is not None else x.shape[-1],
                                      generator)  # fmt: skip
        if tr.any():  # transposed storage: the box's x and y swap, and so does the crop
            boxes = torch.where(tr[:, None], boxes[:, [1, 0, 3, 2]], boxes)
        rois = torch.cat([torch.arange(b, dtype=torch.float32)[:, None], boxes], 1).to(x.device)
        out = roi_align(x.float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
        if tr.any():
            t = tr.to(x.device)
            out[t] = out[t].transpose(-1, -2)
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        out[flip] = out[flip].flip(-1)
    else:
        s = min(sides)
        c = size if store_size(size) == s else min(s, int(round(s * CROP_PCT)))
        out = square_crops(x, hw, c, (s - c) // 2).float()
        if c != size:
            out = F.interpolate(out, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean, std = norm
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1) * 255
    return (out - mean) / std  # (B, 3, size, size)


def central_squares(x: torch.Tensor, hw: torch.Tensor | None) -> torch.Tensor:
    """uint8 (B, 3, q, q) from a canvas batch: the central square of each image, upright (q: the smallest short side
    of the batch; what `decode_image` gives)."""
    return square_crops(x, hw, min(_regions(x, hw)[2]), 0)


# --------------------------------------------------------------------------------------------------
# decoding


def store_size(image_size: int) -> int:
    return int(round(image_size / CROP_PCT))


def _resize_chunks(x: torch.Tensor, size_of, crop_of) -> torch.Tensor:
    out = []
    for chunk in x.split(512):
        h, w = chunk.shape[-2:]
        nh, nw = size_of(h, w)
        c = chunk.float()
        if (nh, nw) != (h, w):
            c = F.interpolate(c, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
        t, l, oh, ow = crop_of(nh, nw)
        out.append(c[..., t : t + oh, l : l + ow].round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def _short_side_to(s: int):
    return lambda h, w: (full_long_side(h, w, s) if h > w else s, full_long_side(h, w, s) if w >= h else s)


def resize_square(x: torch.Tensor, s: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, s, s): short side to s (bicubic, antialiased), centre crop."""
    return _resize_chunks(x, _short_side_to(s), lambda nh, nw: ((nh - s) // 2, (nw - s) // 2, s, s))


def resize_short(x: torch.Tensor, s: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, s, l) or (N, C, l, s): short side to s (bicubic, antialiased), the long
    side to scale up to cap_side(s) (its centre kept so that the central s×s square is `resize_square`'s)."""
    cap = cap_side(s)

    def crop(nh, nw):
        full = max(nh, nw)
        long = min(full, cap)
        off = (full - s) // 2 - (long - s) // 2
        return (off, 0, long, s) if nh > nw else (0, off, s, long)

    return _resize_chunks(x, _short_side_to(s), crop)


def to_nchw_uint8(x) -> torch.Tensor:
    x = torch.as_tensor(np.array(x))
    if x.dtype != torch.uint8:
        if x.is_floating_point() and float(x.max()) <= 1.0:
            x = x * 255
        x = x.round().clamp(0, 255).to(torch.uint8)
    if x.ndim == 3:  # (N, H, W) grey
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
    if x.ndim != 4 or x.shape[1] not in (1, 3, 4):
        raise FastRetrainError("image array must be (N,H,W), (N,H,W,C) or (N,C,H,W) with C in 1/3/4; "
                               f"got {tuple(x.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x[:, :3].contiguous()


def decode_image(image, s: int) -> torch.Tensor:
    """One image -> uint8 (3, s, s), decoded exactly as training images are (used to predict on new images):
    the central square of the stored image, i.e. what the evaluation transform crops from.

    Encoded bytes or a PIL image: as in an image folder (EXIF orientation applied, PIL bicubic, see cache.py).
    An array (H, W), (H, W, C) or (C, H, W), uint8 or float in [0, 1]: as `from_arrays` (torch bicubic).
    """
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        rgb, hw = decode_bytes(bytes(image), s, cap_side(s))
    elif isinstance(image, Image.Image):
        rgb, hw = fit_pil(image, s, cap_side(s))
    else:
        return resize_square(to_nchw_uint8(np.asarray(image)[None]), s)[0]
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]  # (1, 3, s, l), stored orientation
    return square_crops(x, torch.tensor([hw]), s, 0)[0].contiguous()
