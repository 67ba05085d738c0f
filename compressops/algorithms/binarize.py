"""Binary-network training helpers: the straight-through sign, first/last-layer selection, and
binarize(model) for inference or for training with latent real-valued weights (BinaryNet).

Training recipe: `model = binarize(model, Binary(), trainable=True)` swaps each convertible
layer (but the first and last) for a BinaryConv2d/BinaryLinear that keeps the float weight as a
Parameter (the "latent" weight the optimizer updates). In train mode these modules run a
differentiable torch path: sign with a straight-through estimator (gradient passed where
|x| <= 1, hard-tanh style) on activations and weights, times the per-channel scale. `eval()`
repacks the bits for the XNOR-popcount kernels; `freeze()` also drops the latent weight.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SignSTE", "sign_ste", "first_last_filter", "binarize", "freeze"]

_CONVERTIBLE = (nn.Conv2d, nn.Linear)


class SignSTE(torch.autograd.Function):
    """y = sign(x) with sign(0) = +1; dy/dx passed through where |x| <= 1 (0 elsewhere)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x.abs() <= 1).to(grad.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """Binarize with the straight-through estimator (see SignSTE)."""
    return SignSTE.apply(x)


def first_last_filter(model: nn.Module):
    """filter_fn for compressops.convert: False for the first and the last nn.Conv2d/nn.Linear of
    `model` (in named_modules order), True for every other layer."""
    names = [n for n, m in model.named_modules() if isinstance(m, _CONVERTIBLE)]
    keep = {names[0], names[-1]} if names else set()

    def filter_fn(mod: nn.Module, name: str) -> bool:
        return name not in keep

    return filter_fn


def binarize(model: nn.Module, config=None, *, trainable: bool = False, inplace: bool = True,
             filter_fn=None) -> nn.Module:
    """compressops.convert(model, config), optionally keeping latent float weights for training.

    Args:
        model: a float model.
        config: a compressops.Binary (default Binary()).
        trainable: keep each converted layer's float weight as a latent Parameter for training
            (the modules then train with the straight-through estimator; see module docstring).
        inplace: modify `model` (default) or a deep copy.
        filter_fn: optional extra predicate (module, name) -> bool, as in compressops.convert.
    """
    import copy

    from ..configs import Binary
    from ..convert import convert
    from ..nn.binary import BinaryConv2d, BinaryLinear

    config = config or Binary()
    if not isinstance(config, Binary):
        raise TypeError(f"binarize: config must be compressops.Binary, got {type(config).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    latent = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, _CONVERTIBLE)}
    model = convert(model, config, filter_fn=filter_fn)  # convert applies config.model_filter
    if trainable:
        for n, m in model.named_modules():
            if isinstance(m, (BinaryConv2d, BinaryLinear)) and n in latent and m.weight is None:
                m.enable_training(latent[n])
    return model


def freeze(model: nn.Module) -> nn.Module:
    """Pack the bits of every trainable binary layer and drop its latent weight (inference only)."""
    from ..nn.binary import BinaryConv2d, BinaryLinear

    for m in model.modules():
        if isinstance(m, (BinaryConv2d, BinaryLinear)):
            m.freeze()
    return model
