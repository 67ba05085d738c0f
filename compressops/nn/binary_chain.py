"""BinaryChain: consecutive binary convolutions that hand each other packed sign bits.

A binary conv only reads the signs of its input. When a binary conv feeds another one through
nothing but a BatchNorm (folded into alpha and bias) and sign-preserving activations, the float
tensor in between is needed only for its signs, so the chain computes them in the conv's epilogue
(ops.binary_conv2d_packed) and never writes, reads or re-packs the float activations.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from .. import ops
from ._binary_ste import binary_ste, needs_graph
from .binary import BinaryConv2d

__all__ = ["BinaryChain"]


def sign_preserving(mod: nn.Module) -> bool:
    """Whether sign(mod(v)) == sign(v) for every v (sign(0) = +1, NaN -> -1), so the module can sit
    between two binary convs of a chain and be dropped: Identity, Dropout (eval), Hardtanh with
    min_val < 0 <= max_val (ReLU6 and other ranges that lose the sign do not qualify), Tanh."""
    if isinstance(mod, (nn.Identity, nn.Dropout, nn.Dropout2d, nn.Tanh)):
        return True
    return isinstance(mod, nn.Hardtanh) and mod.min_val < 0 <= mod.max_val


def fold_batchnorm(conv: BinaryConv2d, bn: nn.BatchNorm2d) -> BinaryConv2d:
    """A copy of `conv` whose output equals bn(conv(x)) in eval mode: the BatchNorm's affine map
    (running statistics) folded into alpha and bias, computed in float64 and stored as float32.

    Args:
        conv: BinaryConv2d with OC output channels.
        bn: BatchNorm2d(OC) with running statistics.
    Returns:
        a new BinaryConv2d (bias present), inference-only (no latent training weight).
    Raises:
        ValueError: channel mismatch, or a BatchNorm without running statistics.
    """
    if not isinstance(bn, nn.BatchNorm2d):
        raise TypeError(f"fold_batchnorm: expected nn.BatchNorm2d, got {type(bn).__name__}")
    if bn.num_features != conv.out_channels:
        raise ValueError(f"fold_batchnorm: BatchNorm2d has {bn.num_features} features but the conv has "
                         f"{conv.out_channels} output channels")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("fold_batchnorm: the BatchNorm2d has no running statistics (track_running_stats=False), "
                         "so eval mode normalizes with batch statistics and cannot be folded")
    out = _inference_copy(conv)
    var = bn.running_var.double()
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    shift = beta - bn.running_mean.double() * scale
    # From the copy: freezing it repacked alpha from a latent weight that may have moved since.
    old_bias = out.bias.double() if out.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        out.alpha.copy_((out.alpha.double() * scale).float())
        out.bias = (old_bias * scale + shift).float().to(out.alpha.device)
    return out


def _inference_copy(conv: BinaryConv2d) -> BinaryConv2d:
    out = copy.deepcopy(conv)
    out.freeze()  # the bits from the latent weight, if any; then drop it
    return out.eval()


class BinaryChain(nn.Module):
    """Consecutive BinaryConv2d layers (1-bit activations) run with packed activations in between.

    forward(x): x float32/bfloat16/float16 [N, C, H, W] (or unbatched [C, H, W]) is binarized and
    packed once; every layer but the last writes packed sign bits (ops.binary_conv2d_packed); the
    last writes float. The output has x's dtype and channels_last memory format, and equals running
    the layers one after another (with whatever was folded into them) because each next layer reads
    only signs. Build it after training with BinaryChain.fuse(model) (or
    compressops.bnn.fuse_binary_chains), or with from_modules.

    Gradients: the weights are frozen (in training mode the chain runs only with gradients off). In
    eval mode, when x requires grad, the chain runs its layers one by one with float32 outputs in
    between (the same values: the next layer reads only their signs) and backward is the
    straight-through gradient of that composition: each layer's dense input gradient times the
    sign STE (1 where |input| <= 1) of the layer's float input (compressops/nn/_binary_ste.py).
    The sign-preserving activations dropped by from_modules add no factor of their own; for
    Hardtanh(-1, 1) this equals the unfused model's STE gradient (but for values exactly +-1, where
    hardtanh passes none), for Tanh it does not.

    Example:
        >>> chain = BinaryChain.from_modules([bconv1, bn1, nn.Hardtanh(), bconv2, bn2])
        >>> y = chain(x)   # == bn2(bconv2(hardtanh(bn1(bconv1(x))))) in eval mode
    """

    __jit_unused_properties__ = ["layers"]

    def __init__(self, layers: Sequence[BinaryConv2d]):
        super().__init__()
        layers = list(layers)
        if len(layers) < 1:
            raise ValueError("BinaryChain: needs at least one BinaryConv2d")
        for i, layer in enumerate(layers):
            if not isinstance(layer, BinaryConv2d):
                raise TypeError(f"BinaryChain: layer {i} is {type(layer).__name__}, expected BinaryConv2d")
            if not layer.binarize_activations:
                raise ValueError(f"BinaryChain: layer {i} has binarize_activations=False; only layers with "
                                 f"1-bit activations can take packed input")
            if i and layer.in_channels != layers[i - 1].out_channels:
                raise ValueError(f"BinaryChain: layer {i} takes {layer.in_channels} channels but layer {i - 1} "
                                 f"gives {layers[i - 1].out_channels}")
        self.body = nn.ModuleList(layers[:-1])
        self.head = layers[-1]
        self.in_channels = layers[0].in_channels
        self.out_channels = layers[-1].out_channels
        self.eval()

    @classmethod
    def from_modules(cls, modules: Sequence[nn.Module]) -> BinaryChain:
        """Build a chain from a run of eval-mode modules: BinaryConv2d, then any number of
        `[BatchNorm2d] [sign-preserving activations...] BinaryConv2d`, then an optional BatchNorm2d.
        BatchNorms are folded into copies of the convs; the activations are dropped (see
        sign_preserving). The inputs are not modified.

        Raises:
            ValueError: a module that does not fit the pattern, or a module in training mode.
        """
        layers: list[BinaryConv2d] = []
        prev = None  # what the last module was: "conv", "bn" or "act"
        for i, mod in enumerate(modules):
            # Modes matter only where train and eval compute differently.
            if mod.training and isinstance(mod, (BinaryConv2d, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d)):
                raise ValueError(f"BinaryChain.from_modules: module {i} ({type(mod).__name__}) is in training mode; "
                                 f"call model.eval() first (BatchNorm folds its running statistics)")
            if isinstance(mod, BinaryConv2d):
                layers.append(_inference_copy(mod))
                prev = "conv"
            elif isinstance(mod, nn.BatchNorm2d) and prev == "conv":
                layers[-1] = fold_batchnorm(layers[-1], mod)
                prev = "bn"
            elif sign_preserving(mod) and prev is not None:
                prev = "act"
            else:
                raise ValueError(f"BinaryChain.from_modules: module {i} ({type(mod).__name__}) cannot be part of a "
                                 f"binary chain (expected a BinaryConv2d first, then BatchNorm2d right after a conv, "
                                 f"sign-preserving activations, or another BinaryConv2d)")
        if prev is None:
            raise ValueError("BinaryChain.from_modules: no modules given")
        if prev == "act":
            raise ValueError("BinaryChain.from_modules: the run ends with an activation, which changes the float "
                             "output; leave it outside the chain")
        return cls(layers)

    @classmethod
    def fuse(cls, model: nn.Module, *, inplace: bool = False) -> nn.Module:
        """Replace every run of consecutive binary convs inside an nn.Sequential with a BinaryChain,
        so the activations between them stay packed bits.

        A run is: BinaryConv2d (1-bit activations), then one or more of `[BatchNorm2d]
        [sign-preserving activations] BinaryConv2d` (sign-preserving: Identity, Dropout,
        Hardtanh(min < 0 <= max), Tanh), then an optional BatchNorm2d; it needs at least two binary convs. BatchNorms are folded into
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
        if model.training:
            raise ValueError("BinaryChain.fuse: the model is in training mode; call model.eval() first "
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
                    fused[items[i][0]] = cls.from_modules(mods[i:end])
                    i, changed = end, True
                else:
                    fused[items[i][0]] = items[i][1]
                    i += 1
            if changed:
                seq._modules = fused
        return model

    @property
    def layers(self) -> list[BinaryConv2d]:
        return [*self.body, self.head]

    @torch.jit.unused
    def _needs_graph(self, x: torch.Tensor) -> bool:
        return any(needs_graph(x, layer.alpha, layer.bias) for layer in self.layers)

    @torch.jit.unused
    def _forward_ste(self, x: torch.Tensor) -> torch.Tensor:
        """The layers one by one, recorded for autograd (straight-through gradient for x)."""
        h = x
        for i, layer in enumerate(self.layers):
            h = binary_ste(h, layer.weight_packed, layer.alpha, layer.bias, layer._pack_info(),
                           (layer.stride, layer.padding), layer=f"BinaryChain layer {i}")
        return h.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            raise RuntimeError("BinaryChain is inference-only (its weights are frozen packed bits): call .eval() "
                               "(x then still gets the straight-through gradient) or run under torch.no_grad(); "
                               "to train, train the unfused layers and fuse afterwards")
        if (x.dim() != 4 and x.dim() != 3) or x.size(-3) != self.in_channels or not x.is_floating_point():
            raise ValueError("BinaryChain: x must be a float tensor of shape [N, " + str(self.in_channels)
                             + ", H, W] or [" + str(self.in_channels) + ", H, W], got " + str(x.dtype) + " "
                             + str(list(x.shape)))
        if x.dim() == 3:  # unbatched, as nn.Conv2d (and BinaryConv2d) take it
            return self._forward_nchw(x.unsqueeze(0)).squeeze(0)
        return self._forward_nchw(x)

    def _forward_nchw(self, x: torch.Tensor) -> torch.Tensor:
        # A bare `if not is_scripting()` is what TorchScript leaves uncompiled (the `and` form is not).
        if not torch.jit.is_scripting():  # noqa: SIM102
            if self._needs_graph(x):
                return self._forward_ste(x)
        xp = ops.binary_pack_activation(x)
        for layer in self.body:
            xp = ops.binary_conv2d_packed(xp, layer.weight_packed, layer.alpha, layer.bias, layer.stride, layer.padding)
        h = self.head
        y = ops.binary_conv2d(xp, h.weight_packed, h.alpha, h.bias, h.stride, h.padding)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{len(self.body) + 1} binary convs, packed activations between them"


def _binary_run_end(mods: list, i: int) -> int:
    """End (exclusive) of the longest fusible run of at least two binary convs starting at i, or i."""

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
