"""Binary-network building blocks: the straight-through sign and the first/last-layer selection.

Binary layers train with latent real-valued weights (BinaryNet): in train mode they run sign with a
straight-through estimator (gradient passed where |x| <= 1, hard-tanh style) on activations and
weights. The workflow that binarizes a model, freezes it and fuses chains is compressops.bnn.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SignSTE", "sign_ste", "first_last_filter"]

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
