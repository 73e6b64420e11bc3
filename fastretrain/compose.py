"""Decomposition and composition of a CNN along its width (Gu, Zhang, Liu, Cai, "Decomposition and
composition of deep convolutional neural networks and training acceleration via sub-network transfer
learning", ETNA 56, 2022; docs/decompose.md).

`decompose` builds K sub-networks of the same depth as a global network, every hidden width divided by
K. `compose` puts K (trained) sub-networks back into one global network whose hidden feature maps are
exactly the channel concatenation of the sub-networks' maps (Theorem 1) and whose logits are their mean
(so its cross-entropy is at most their mean loss, Theorem 2):

- first conv (input shared by all): kernels concatenated along output channels;
- every other conv / linear layer (1×1 shortcut convs included): block-diagonal, block j = sub-network
  j's weight, cross blocks zero; biases concatenated;
- batch norm: weight, bias, running mean and variance concatenated;
- classifier: [W¹ … W^K] / K, bias = mean of the sub-networks' biases.

The numerics are the pure tensor functions `block_diagonal`, `concat_outputs`, `average_head`; the
module walk only decides which applies where and refuses layers it cannot compose.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .models import BasicBlock, create_model
from .widthnets import CompositionError, WidthNet

# modules without parameters that act on each channel separately (so they commute with channel concat),
# and containers whose forward only chains / adds their children's outputs
CHANNELWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Identity, nn.Dropout,
               nn.Dropout2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)  # fmt: skip
CONTAINERS = (nn.Sequential, nn.ModuleList, BasicBlock, WidthNet)


# ------------------------------------------------------------------------------------------ tensors
def block_diagonal(weights: list[torch.Tensor]) -> torch.Tensor:
    """(Σ o_j, Σ i_j, *kernel) weight with block j = weights[j] (o_j, i_j, *kernel); cross blocks zero."""
    out = weights[0].new_zeros(sum(w.shape[0] for w in weights), sum(w.shape[1] for w in weights), *weights[0].shape[2:])
    o = i = 0
    for w in weights:
        out[o : o + w.shape[0], i : i + w.shape[1]] = w
        o, i = o + w.shape[0], i + w.shape[1]
    return out


def concat_outputs(weights: list[torch.Tensor]) -> torch.Tensor:
    """Layer on a shared input (the image): the sub-networks' output channels stacked, (Σ o_j, i, *kernel)."""
    return torch.cat(weights, 0)


def average_head(weights: list[torch.Tensor], biases: list[torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Classifier giving the mean of the K sub-classifiers' logits: W = [W¹ … W^K] / K (c, Σ d_j), b = mean b_j."""
    w = torch.cat(weights, 1) / len(weights)
    b = torch.stack(biases).mean(0) if biases is not None else None
    return w, b


# ------------------------------------------------------------------------------------------ models
def decompose(model, K: int, num_classes: int | None = None, width: float = 1.0, seeds: list[int] | None = None) -> list[WidthNet]:
    """K freshly initialised sub-networks of a global network, every hidden width divided by K.

    Args:
        model: a global network of this package with a width argument (`vgg-small`, `resnet20`, ...), or its
            registered name (then built with `width` and `num_classes`).
        K: number of sub-networks (≥ 2); must divide every hidden width of the global network.
        seeds: one seed per sub-network for its initialisation (default: the current RNG stream).
    """
    if isinstance(model, str):
        if num_classes is None:
            raise CompositionError("decompose(name, K) needs num_classes")
        model = create_model(model, num_classes, width=width)
    if not isinstance(model, WidthNet):
        raise CompositionError(
            f"cannot decompose {type(model).__name__}: only this package's width-parametrised models can be "
            "decomposed (vgg-small, resnet20, resnet32, resnet18-cifar)"
        )
    if not isinstance(K, int) or K < 2:
        raise CompositionError(f"number of sub-networks K must be an integer >= 2, got {K!r}")
    if seeds is not None and len(seeds) != K:
        raise CompositionError(f"need one seed per sub-network: got {len(seeds)} seeds for K={K}")
    config = model.scaled_config(K)
    n = model.get_classifier().out_features
    subnets = []
    for j in range(K):
        with torch.random.fork_rng(devices=[]):
            if seeds is not None:
                torch.manual_seed(seeds[j])
            subnets.append(type(model)(n, **config))
    return subnets


def global_config(sub: WidthNet, K: int) -> dict:
    """The config of the global network that K copies of `sub` compose into (every width × K)."""
    out = dict(sub.config)
    for key in sub.WIDTH_KEYS:
        v = sub.config[key]
        out[key] = tuple(w * K for w in v) if isinstance(v, (tuple, list)) else v * K
    return out


@torch.no_grad()
def compose(subnets: list[nn.Module]) -> WidthNet:
    """The global network initialised from K sub-networks of identical architecture (see module doc).

    The result has the sub-networks' dtype and device and is in train mode iff the first sub-network is.
    """
    K = len(subnets)
    if K < 2:
        raise CompositionError(f"compose needs at least 2 sub-networks, got {K}")
    first = subnets[0]
    if not isinstance(first, WidthNet):
        raise CompositionError(f"cannot compose {type(first).__name__}: not a width-parametrised model of this package")
    for s in subnets[1:]:
        if type(s) is not type(first) or s.config != first.config:
            raise CompositionError(f"sub-networks differ: {type(first).__name__}{first.config} vs {type(s).__name__}{s.config}")
    p = next(first.parameters())
    num_classes = first.get_classifier().out_features
    net = type(first)(num_classes, **global_config(first, K)).to(device=p.device, dtype=p.dtype)
    head = net.get_classifier()
    parts_by_name = [dict(s.named_modules()) for s in subnets]
    for name, g in net.named_modules():
        parts = [m.get(name) for m in parts_by_name]
        if any(type(q) is not type(g) for q in parts):
            raise CompositionError(f"module {name!r}: sub-networks do not match the global architecture")
        where = f"{name or 'model'} ({type(g).__name__})"
        if isinstance(g, nn.Conv2d):
            _conv(g, parts, where)
        elif isinstance(g, nn.Linear):
            _linear(g, parts, g is head, where)
        elif isinstance(g, _BatchNorm):
            _batchnorm(g, parts)
        elif isinstance(g, CHANNELWISE + CONTAINERS):
            if any(True for _ in g.parameters(recurse=False)) or any(True for _ in g.buffers(recurse=False)):
                raise CompositionError(f"{where}: holds its own parameters or buffers, which compose cannot map")
        else:
            raise CompositionError(f"{where}: layer type not supported by composition")
    net.train(first.training)
    return net


def _split(g_dim: int, s_dims: list[int], what: str, where: str) -> bool:
    """True if the global dimension is the sum of the sub-networks' (split), False if shared (equal)."""
    if g_dim == sum(s_dims):
        return True
    if all(d == g_dim for d in s_dims):
        return False
    raise CompositionError(f"{where}: {what} {g_dim} is neither the sum nor the common value of the sub-networks' {s_dims}")


def _conv(g: nn.Conv2d, parts: list[nn.Conv2d], where: str) -> None:
    if g.groups != 1:
        raise CompositionError(f"{where}: grouped / depthwise convolutions are not supported")
    split_in = _split(g.in_channels, [q.in_channels for q in parts], "input channels", where)
    if not _split(g.out_channels, [q.out_channels for q in parts], "output channels", where):
        raise CompositionError(f"{where}: a conv whose output is not split across sub-networks cannot be composed")
    ws = [q.weight for q in parts]
    g.weight.copy_(block_diagonal(ws) if split_in else concat_outputs(ws))
    if g.bias is not None:
        g.bias.copy_(torch.cat([q.bias for q in parts]))


def _linear(g: nn.Linear, parts: list[nn.Linear], is_head: bool, where: str) -> None:
    split_in = _split(g.in_features, [q.in_features for q in parts], "input features", where)
    split_out = _split(g.out_features, [q.out_features for q in parts], "output features", where)
    ws = [q.weight for q in parts]
    bs = [q.bias for q in parts] if g.bias is not None else None
    if split_in and not split_out:
        if not is_head:
            raise CompositionError(f"{where}: only the classifier may average the sub-networks' outputs")
        w, b = average_head(ws, bs)
    elif split_out:
        w = block_diagonal(ws) if split_in else concat_outputs(ws)
        b = torch.cat(bs) if bs is not None else None
    else:
        raise CompositionError(f"{where}: a linear layer with neither input nor output split cannot be composed")
    g.weight.copy_(w)
    if b is not None:
        g.bias.copy_(b)


def _batchnorm(g: _BatchNorm, parts: list[_BatchNorm]) -> None:
    for key in ("weight", "bias", "running_mean", "running_var"):
        if getattr(g, key) is not None:
            getattr(g, key).copy_(torch.cat([getattr(q, key) for q in parts]))
    if g.num_batches_tracked is not None:
        g.num_batches_tracked.copy_(max(q.num_batches_tracked for q in parts))
