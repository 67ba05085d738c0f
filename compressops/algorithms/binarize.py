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

__all__ = ["SignSTE", "sign_ste", "first_last_filter", "binarize", "freeze", "fuse_binary_chains"]

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


def fuse_binary_chains(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Replace every run of consecutive binary convs inside an nn.Sequential with a BinaryChain,
    so the activations between them stay packed bits (compressops.nn.BinaryChain).

    A run is: BinaryConv2d (1-bit activations), then one or more of [BatchNorm2d]
    [sign-preserving activations: Identity, Dropout, Hardtanh(min < 0 <= max), Tanh] BinaryConv2d,
    then an optional BatchNorm2d; it needs at least two binary convs. BatchNorms are folded into
    the convs; the activations between convs are dropped, since the next conv reads only signs.
    Modules after the run (e.g. the activation after the last conv) stay as they were. Layers in
    a custom forward() cannot be fused automatically; build a BinaryChain for them by hand.
    The fused module takes the key of the run's first module; other keys are unchanged.

    Args:
        model: an eval-mode model (BatchNorm folding uses running statistics).
        inplace: modify `model`, or (default) fuse a deep copy.
    Returns:
        the fused model (inference only).
    Raises:
        ValueError: the model is in training mode.
    """
    import copy
    from collections import OrderedDict

    from ..nn.binary_chain import BinaryChain

    if model.training:
        raise ValueError("fuse_binary_chains: the model is in training mode; call model.eval() first "
                         "(BatchNorm folds its running statistics)")
    if not inplace:
        model = copy.deepcopy(model)
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        items = list(seq._modules.items())
        mods = [m for _, m in items]
        fused: OrderedDict[str, nn.Module] = OrderedDict()
        i, changed = 0, False
        while i < len(items):
            end = _binary_run_end(mods, i)
            if end > i:
                fused[items[i][0]] = BinaryChain.from_modules(mods[i:end])
                i, changed = end, True
            else:
                fused[items[i][0]] = items[i][1]
                i += 1
        if changed:
            seq._modules = fused
    return model


def _binary_run_end(mods: list, i: int) -> int:
    """End (exclusive) of the longest fusible run of at least two binary convs starting at i, or i."""
    from ..nn.binary import BinaryConv2d
    from ..nn.binary_chain import sign_preserving

    def is_binary(m):
        return isinstance(m, BinaryConv2d) and m.binarize_activations

    if not is_binary(mods[i]):
        return i
    end, convs, convs_at_end = i + 1, 1, 1
    last_conv, state, pos = mods[i], "conv", i + 1
    while pos < len(mods):
        m = mods[pos]
        if is_binary(m) and m.in_channels == last_conv.out_channels:
            last_conv, state, convs = m, "conv", convs + 1
        elif (state == "conv" and isinstance(m, nn.BatchNorm2d) and m.running_mean is not None
              and m.num_features == last_conv.out_channels):
            state = "bn"
        elif sign_preserving(m):
            state = "act"
        else:
            break
        pos += 1
        if state != "act":
            end, convs_at_end = pos, convs
    return end if convs_at_end >= 2 else i
