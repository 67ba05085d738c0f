"""Binary-network workflow: binarize a model for straight-through training, freeze it, fuse chains.

Training recipe: `model = binarize(model, Binary(), trainable=True)` swaps each convertible layer
(but the first and last) for a BinaryConv2d/BinaryLinear that keeps the float weight as a Parameter
(the "latent" weight the optimizer updates). In train mode these modules run a differentiable torch
path (compressops.algorithms.binarize.sign_ste on activations and weights, times the per-channel
scale). `eval()` repacks the bits for the XNOR-popcount kernels; `freeze(model)` also drops the
latent weights; `fuse_binary_chains(model)` then hands packed bits between consecutive binary convs.
"""

from __future__ import annotations

import copy

from torch import nn

from .configs import Binary
from .convert import convert
from .nn.binary import BinaryConv2d, BinaryLinear
from .nn.binary_chain import BinaryChain

__all__ = ["binarize", "freeze", "fuse_binary_chains"]

_CONVERTIBLE = (nn.Conv2d, nn.Linear)


def binarize(model: nn.Module, config: Binary | None = None, *, trainable: bool = False, inplace: bool = True,
             filter_fn=None) -> nn.Module:
    """compressops.convert(model, config), optionally keeping latent float weights for training.

    Args:
        model: a float model.
        config: a compressops.Binary (default Binary()).
        trainable: keep each converted layer's float weight as a latent Parameter for training
            (the modules then train with the straight-through estimator; see module docstring).
        inplace: modify `model` (default) or a deep copy.
        filter_fn (Callable[[nn.Module, str], bool] | None): optional extra predicate (module, name)
            -> bool, as in compressops.convert.
    Returns:
        the model with BinaryConv2d/BinaryLinear layers.
    Raises:
        TypeError: config is not a Binary.
    """
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
    for m in model.modules():
        if isinstance(m, (BinaryConv2d, BinaryLinear)):
            m.freeze()
    return model


def fuse_binary_chains(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """BinaryChain.fuse(model, inplace=inplace): every run of consecutive binary convs inside an
    nn.Sequential becomes one BinaryChain (packed activations between the convs)."""
    return BinaryChain.fuse(model, inplace=inplace)
