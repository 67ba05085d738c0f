"""The packed binary layers' forward (1-bit activations) and its straight-through input gradient.

The XNOR-popcount ops read bit-packed int64 activations, so autograd cannot differentiate them and
a layer built on them alone would silently drop its contribution to x.grad. binary_ste runs the
same packed kernels with an autograd.Function whose backward is the gradient of the dense layer
these kernels compute, y = clamp(F.conv2d/F.linear(sign(x), alpha * sign(W)) + bias), with the
sign's straight-through estimator (compressops.algorithms.binarize.sign_ste_grad, the one the
training path uses). The weights are frozen: alpha, bias and the packed bits get no gradient.
"""

from __future__ import annotations

import torch

from .. import ops
from ..algorithms.binarize import sign_ste_grad
from ..formats import binary as binary_format

__all__ = ["binary_ste", "needs_graph", "packed_conv2d", "packed_linear"]


def packed_conv2d(x: torch.Tensor, w_packed: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None,
                  stride: tuple[int, int], padding: tuple[int, int], clamp_min: float | None = None,
                  clamp_max: float | None = None) -> torch.Tensor:
    """alpha * conv2d(sign(x), sign(w), zero padding) + bias, optionally clamped, through the packed kernels.

    Args:
        x: float32/bfloat16/float16 [N, C, H, W], any memory format.
        w_packed: uint8 conv pack (ops.binary_pack_weight). alpha: float32 [OC]. bias: optional [OC].
        stride, padding: (h, w) pairs. clamp_min, clamp_max: optional output bounds.
    Returns:
        float32 [N, OC, OH, OW], channels_last.
    """
    return ops.binary_conv2d(ops.binary_pack_activation(x), w_packed, alpha, bias, stride, padding, clamp_min,
                             clamp_max)


def packed_linear(x: torch.Tensor, w_packed: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None,
                  clamp_min: float | None = None, clamp_max: float | None = None) -> torch.Tensor:
    """alpha * (sign(x) @ sign(w).T) + bias, optionally clamped, through the packed kernels, on the
    last dim of any rank.

    binary_pack_activation reads a 4-D tensor as NCHW (it packs dim 1), so x is flattened to
    [rows, C] first: a linear layer's channels are always the last dim.

    Args:
        x: float32/bfloat16/float16 [..., C]. w_packed: uint8 linear pack. alpha: float32 [OUT].
        bias: optional [OUT]. clamp_min, clamp_max: optional output bounds.
    Returns:
        float32 [..., OUT].
    """
    y = ops.binary_linear(ops.binary_pack_activation(x.reshape(-1, x.size(-1))), w_packed, alpha, bias, None,
                          clamp_min, clamp_max)
    return y.reshape(list(x.shape[:-1]) + [y.size(-1)])


def needs_graph(x: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether a packed layer's call must be recorded for autograd: grad mode is on and x, alpha or
    bias requires grad (the last two only so that backward can refuse them by name). Otherwise the
    plain kernels run, with no autograd overhead (no_grad, inference_mode, inputs without grad).

    Never while torch.jit.trace records: a trace cannot hold a Python autograd.Function (it would
    neither check nor save), and a traced program is for inference."""
    if not torch.is_grad_enabled() or torch.jit.is_tracing():
        return False
    return x.requires_grad or alpha.requires_grad or (bias is not None and bias.requires_grad)


class _PackedBinarySTE(torch.autograd.Function):
    """Forward: the packed kernels with the optional clamps. Backward w.r.t. x: see module docstring."""

    @staticmethod
    def forward(ctx, x, alpha, bias, w_packed, info, conv, clamp_min, clamp_max, layer):
        if conv is None:
            y = packed_linear(x, w_packed, alpha, bias, clamp_min, clamp_max)
        else:
            y = packed_conv2d(x, w_packed, alpha, bias, conv[0], conv[1], clamp_min, clamp_max)
        # Where the clamp was active, from the clamped output alone: hardtanh (and torch.clamp from
        # torch 2.14) passes no gradient at the bounds themselves either, so y strictly inside them is
        # the whole test. (torch 2.13's clamp passes it at the bounds; the clamped output cannot tell
        # a value clamped to a bound from one that was on it.)
        keep = None
        if clamp_min is not None:
            keep = y > clamp_min
        if clamp_max is not None:
            keep = y < clamp_max if keep is None else keep & (y < clamp_max)
        ctx.save_for_backward(x, alpha, w_packed, keep)
        ctx.info, ctx.conv, ctx.layer = info, conv, layer
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, alpha, w_packed, keep = ctx.saved_tensors
        for i, name in ((1, "alpha"), (2, "bias")):
            if ctx.needs_input_grad[i]:
                raise RuntimeError(f"{ctx.layer}: {name} requires grad, but a packed binary layer's alpha, bias and "
                                   f"sign bits are frozen (only its input gets a gradient); call "
                                   f"{name}.requires_grad_(False), or train the layer through its latent weight "
                                   f"(enable_training(), compressops.bnn.binarize(trainable=True))")
        if not ctx.needs_input_grad[0]:
            return (None,) * 9
        g = grad_y.float()
        if keep is not None:
            g = g.masked_fill(~keep, 0.0)
        conv = ctx.conv is not None
        bits = binary_format.unpack_weight(w_packed, ctx.layer, conv=conv, info=ctx.info)
        w = binary_format.dequantize(bits, alpha, ctx.info.c)
        if conv:
            gs = torch.nn.grad.conv2d_input(x.shape, w, g, ctx.conv[0], ctx.conv[1])
        else:
            gs = (g.reshape(-1, g.size(-1)) @ w).reshape(x.shape)
        return (sign_ste_grad(x, gs).to(x.dtype),) + (None,) * 8


def binary_ste(x: torch.Tensor, w_packed: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None,
               info: binary_format.PackInfo, conv: tuple[tuple[int, int], tuple[int, int]] | None = None,
               clamp_min: float | None = None, clamp_max: float | None = None,
               layer: str = "binary layer") -> torch.Tensor:
    """A packed binary layer with a straight-through gradient for x (weights frozen).

    Forward: packed_conv2d (conv = (stride, padding)) or packed_linear (conv None) with the
    optional clamps. Backward w.r.t. x: the input gradient of the dense layer with weight
    alpha * sign(W) (conv2d_input / grad @ W), zero where a clamp was active (the output not
    strictly inside (clamp_min, clamp_max), as hardtanh's gradient and torch.clamp's from torch 2.14),
    times the sign STE (sign_ste_grad: 1 where |x| <= 1). sign() has no useful derivative, so
    torch.autograd.gradcheck cannot check this against finite differences; the tests compare it with
    torch.autograd on that dense definition instead.

    Args:
        x: float32/bfloat16/float16 [N, C, H, W] (conv) or [..., C] (linear).
        w_packed: uint8 pack from ops.binary_pack_weight. alpha: float32 [OC]. bias: optional float [OC].
        info: what w_packed's header holds (the layer knows it; backward does not read the header,
            so torch.compile can trace it).
        conv: ((stride_h, stride_w), (pad_h, pad_w)) for a conv, None for a linear layer.
        clamp_min, clamp_max: optional output bounds.
        layer: the layer's name for error messages.
    Returns:
        float32 [N, OC, OH, OW] (channels_last) or [..., OC].
    Raises:
        RuntimeError: on backward, when alpha or bias requires grad.
    """
    return _PackedBinarySTE.apply(x, alpha, bias, w_packed, info, conv, clamp_min, clamp_max, layer)
