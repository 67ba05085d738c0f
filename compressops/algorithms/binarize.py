"""Binary-network building blocks: the straight-through sign and the first/last-layer selection.

Binary layers train with latent real-valued weights (BinaryNet): in train mode they run sign with a
straight-through estimator (gradient passed where |x| <= 1, hard-tanh style) on activations and
weights. The workflow that binarizes a model, freezes it and fuses chains is compressops.bnn.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SignSTE", "first_last_filter", "sign_ste", "sign_ste_grad"]

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
        return sign_ste_grad(x, grad)


def sign_ste_grad(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The straight-through gradient of sign at x: `grad` where |x| <= 1, 0 elsewhere (hard-tanh's
    slope, as in BinaryConnect and XNOR-Net). The one definition of the estimator: the training path
    (SignSTE) and the packed layers' backward (compressops/nn/_binary_ste.py) both use it.

    Args:
        x: the float input of sign, any shape. grad: the gradient w.r.t. sign(x), x's shape.
    Returns:
        grad's shape and dtype.
    """
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
