"""Reference of the binary (sign-bit) ops (format: compressops/formats/binary.py)."""

from __future__ import annotations

import torch

from ..formats import binary as fb

__all__ = ["binary_pack_activation", "binary_pack_weight", "binary_conv2d", "binary_conv2d_packed", "binary_linear"]


def _epilogue(acc, alpha, bias, clamp_min, clamp_max, channel_dim):
    shape = [1] * acc.dim()
    shape[channel_dim] = -1
    y = acc.float() * alpha.reshape(shape)
    if bias is not None:
        y = y + bias.float().reshape(shape)
    if clamp_min is not None:
        y = torch.clamp_min(y, clamp_min)
    if clamp_max is not None:
        y = torch.clamp_max(y, clamp_max)
    return y


def binary_pack_activation(x: torch.Tensor) -> torch.Tensor:
    """Sign-and-pack (x >= 0 -> bit 1): 4-D NCHW x -> int64 [N, H, W, ceil(C/64)]; any other rank
    packs the last dimension, (..., C) -> (..., ceil(C/64)). Layout: compressops/formats/binary.py."""
    fb.check_pack_activation(x)
    return fb.pack_bits(x.permute(0, 2, 3, 1) if x.dim() == 4 else x).contiguous()


def binary_pack_weight(weight_bits: torch.Tensor, in_channels: int) -> torch.Tensor:
    """See compressops.ops.binary_pack_weight."""
    return fb.pack_weight(weight_bits, in_channels)


def _conv_acc(op, x_packed, w_packed, alpha, bias, stride, padding):
    """The exact integer part of the conv, in float64 [N, OC, OH, OW] (padded taps contribute 0)."""
    s = fb.check_conv2d(op, x_packed, w_packed, alpha, bias, stride, padding)
    c = s.pack.c
    xs = fb.unpack_bits(x_packed, c, torch.float64).permute(0, 3, 1, 2)
    ws = fb.unpack_bits(fb.unpack_weight(w_packed, op), c, torch.float64).permute(0, 3, 1, 2)
    # + 0.0 turns -0.0 into +0.0: the count is an integer, which has no sign of zero, but a float conv
    # may return -0.0 where only padded taps meet negative weights (torch 2.13's CPU conv does), and
    # times a negative alpha the zero's sign would reach the output.
    return torch.nn.functional.conv2d(xs, ws, stride=tuple(stride), padding=tuple(padding)) + 0.0


def binary_conv2d(x_packed, w_packed, alpha, bias, stride, padding, *, clamp_min=None, clamp_max=None):
    """conv2d(sign(x), sign(w), zero padding) * alpha + bias, optionally clamped; float32 NCHW.

    x_packed int64 [N, H, W, CW] (from binary_pack_activation), w_packed a conv pack (from
    binary_pack_weight). The integer part is computed exactly in float64.
    """
    acc = _conv_acc("binary_conv2d", x_packed, w_packed, alpha, bias, stride, padding)
    return _epilogue(acc, alpha, bias, clamp_min, clamp_max, 1)


def binary_conv2d_packed(x_packed, w_packed, alpha, bias, stride, padding):
    """binary_conv2d's output (no clamp) binarized and packed for the next binary layer:
    int64 [N, OH, OW, ceil(OC/64)], bit 1 where alpha * acc + bias >= 0 (so NaN -> 0).

    Defined as binary_pack_activation(binary_conv2d(...)); the kernels skip the float tensor.
    """
    acc = _conv_acc("binary_conv2d_packed", x_packed, w_packed, alpha, bias, stride, padding)
    return binary_pack_activation(_epilogue(acc, alpha, bias, None, None, 1))


def binary_linear(x_packed, w_packed, alpha, bias=None, out_dtype=None, *, clamp_min=None, clamp_max=None):
    """(sign(x) @ sign(w).T) * alpha + bias, optionally clamped, in float32, then out_dtype (default
    float32); (..., OUT).

    x_packed int64 [..., CW], w_packed a linear pack (from binary_pack_weight); integer part exact (float64).
    """
    p, out_t = fb.check_linear("binary_linear", x_packed, w_packed, alpha, bias, out_dtype)
    xs = fb.unpack_bits(x_packed, p.c, torch.float64)
    ws = fb.unpack_bits(fb.unpack_weight(w_packed, "binary_linear", conv=False), p.c, torch.float64)
    return _epilogue(xs @ ws.T, alpha, bias, clamp_min, clamp_max, -1).to(out_t)
