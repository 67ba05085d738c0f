"""The binary (sign-bit) ops: activation and weight packs, XNOR-popcount conv2d and linear
(format: compressops/formats/binary.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..formats import binary as fb
from ..formats import pack_header
from ..reference import binary as ref
from . import _register

__all__ = ["binary_pack_activation", "binary_pack_weight", "binary_conv2d", "binary_conv2d_packed", "binary_linear"]


def _fake_pack_activation(x):
    fb.check_pack_activation(x)
    if x.dim() == 4:
        return x.new_empty((x.shape[0], x.shape[2], x.shape[3], fb.words(x.shape[1])), dtype=torch.int64)
    return x.new_empty((*x.shape[:-1], fb.words(x.shape[-1])), dtype=torch.int64)


def _fake_pack_weight(weight_bits, in_channels):
    fb.check_pack_weight(weight_bits, in_channels)
    conv = weight_bits.dim() == 4
    n, cw = weight_bits.shape[0], weight_bits.shape[-1]
    kh, kw = (weight_bits.shape[1], weight_bits.shape[2]) if conv else (1, 1)
    shape = pack_header.pack_shape(fb.pack_rows(n, kh, kw, conv), fb.packed_bytes(n, kh, kw, cw))
    return weight_bits.new_empty(shape, dtype=torch.uint8)


def _fake_conv2d(x_packed, w_packed, alpha, bias, stride, padding, *, clamp_min=None, clamp_max=None):
    s = fb.check_conv2d("binary_conv2d", x_packed, w_packed, alpha, bias, stride, padding)
    return x_packed.new_empty((s.n, s.pack.n, s.oh, s.ow), dtype=torch.float32).contiguous(
        memory_format=torch.channels_last)


def _conv2d_default(x_packed, w_packed, alpha, bias, stride, padding, *, clamp_min=None, clamp_max=None):
    # The native kernels write channels_last; the default kernel matches them (and the fake).
    return ref.binary_conv2d(x_packed, w_packed, alpha, bias, stride, padding, clamp_min=clamp_min,
                             clamp_max=clamp_max).contiguous(memory_format=torch.channels_last)


def _fake_conv2d_packed(x_packed, w_packed, alpha, bias, stride, padding):
    s = fb.check_conv2d("binary_conv2d_packed", x_packed, w_packed, alpha, bias, stride, padding)
    return x_packed.new_empty((s.n, s.oh, s.ow, fb.words(s.pack.n)), dtype=torch.int64)


def _fake_linear(x_packed, w_packed, alpha, bias=None, out_dtype=None, *, clamp_min=None, clamp_max=None):
    p, out_t = fb.check_linear("binary_linear", x_packed, w_packed, alpha, bias, out_dtype)
    return x_packed.new_empty((*x_packed.shape[:-1], p.n), dtype=out_t)


_register("binary_pack_activation", _fake_pack_activation, ref.binary_pack_activation)
_register("binary_pack_weight", _fake_pack_weight, ref.binary_pack_weight)
_register("binary_conv2d", _fake_conv2d, _conv2d_default)
_register("binary_conv2d_packed", _fake_conv2d_packed, ref.binary_conv2d_packed)
_register("binary_linear", _fake_linear, ref.binary_linear)


def binary_pack_activation(x: Tensor) -> Tensor:
    """Fused sign-and-pack of activations (x >= 0 -> bit 1, so sign(0) = +1).

    Args:
        x: float32/bfloat16/float16. 4-D is read as NCHW (any memory format, channels_last is the
            fast case); any other rank packs the last dimension.
    Returns:
        int64 [N, H, W, ceil(C/64)] for 4-D x, else (..., ceil(C/64)); channel c is bit c % 64 of
        word c // 64, pad bits 0 (compressops/formats/binary.py).
    """
    return torch.ops.compressops.binary_pack_activation(x)


def binary_pack_weight(weight_bits: Tensor, in_channels: int) -> Tensor:
    """Pack canonical sign bits for binary_conv2d / binary_conv2d_packed (4-D) or binary_linear (2-D).

    Args:
        weight_bits: int64 [OC, KH, KW, ceil(in_channels/64)] (a conv weight) or [OUT, ceil(in_channels/64)]
            (a linear weight), channel padding bits 0 (compressops.formats.binary.binarize_weight).
        in_channels: C, the number of valid bits per tap.
    Returns:
        uint8 (OC, KH, KW, R) or (OUT, R): the shared pack header (tag "binary"; N = OC, K = C,
        fields (KH, KW, CW)), then weight_bits' words, zero padded (compressops/formats/binary.py).
        Build it once per weight and reuse it.
    """
    return torch.ops.compressops.binary_pack_weight(weight_bits, in_channels)


def binary_conv2d(
    x_packed: Tensor,
    w_packed: Tensor,
    alpha: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    clamp_min: float | None = None,
    clamp_max: float | None = None,
) -> Tensor:
    """XNOR-popcount conv2d: alpha * (valid_bits - 2 * popcount(x XOR w)) + bias, then clamped.

    Equals conv2d(sign(x), sign(w), stride, zero padding) * alpha + bias bit for bit (padded taps
    contribute 0). Dilation 1, groups 1.

    Args:
        x_packed: int64 [N, H, W, ceil(C/64)] from binary_pack_activation.
        w_packed: uint8 (OC, KH, KW, R) from binary_pack_weight; OC, C and the kernel come from its header.
            The channel padding bits (past C in the last word) of both must be 0: ValueError otherwise.
        alpha: float32 [OC].
        bias: optional float [OC].
        stride: (h, w).
        padding: (h, w).
        clamp_min: optional lower bound applied last (e.g. hard-tanh before the next binary layer);
            keyword-only in the op's schema, positional here too because torch.jit.script cannot
            compile a Python function with keyword-only defaults.
        clamp_max: optional upper bound, as clamp_min.
    Returns:
        float32 [N, OC, OH, OW] in channels_last memory format.
    """
    return torch.ops.compressops.binary_conv2d(x_packed, w_packed, alpha, bias, list(stride), list(padding),
                                               clamp_min=clamp_min, clamp_max=clamp_max)


def binary_conv2d_packed(
    x_packed: Tensor,
    w_packed: Tensor,
    alpha: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
) -> Tensor:
    """binary_conv2d whose output stays binary: the sign bits of alpha * acc + bias, packed for the
    next binary layer, so consecutive binary convs never unpack to float in between.

    Equals binary_pack_activation(binary_conv2d(...)) bit for bit (v >= 0 -> 1; NaN -> 0). A
    BatchNorm or a sign-preserving activation between the two layers is folded into alpha and bias
    first (compressops.nn.BinaryChain does that).

    Args:
        x_packed: int64 [N, H, W, ceil(C/64)] from binary_pack_activation (or this op).
        w_packed: uint8 (OC, KH, KW, R) from binary_pack_weight. The channel padding bits of x_packed
            and w_packed must be 0, as binary_conv2d.
        alpha: float32 [OC].
        bias: optional float [OC].
        stride: (h, w), as binary_conv2d.
        padding: (h, w), as binary_conv2d.
    Returns:
        int64 [N, OH, OW, ceil(OC/64)], channel padding bits 0.
    """
    return torch.ops.compressops.binary_conv2d_packed(x_packed, w_packed, alpha, bias, list(stride), list(padding))


def binary_linear(x_packed: Tensor, w_packed: Tensor, alpha: Tensor, bias: Tensor | None = None,
                  out_dtype: torch.dtype | None = None, clamp_min: float | None = None,
                  clamp_max: float | None = None) -> Tensor:
    """XNOR-popcount linear: (sign(x) @ sign(w).T) * alpha + bias, then clamped; bit-exact.

    Args:
        x_packed: int64 [..., ceil(C/64)] from binary_pack_activation.
        w_packed: uint8 (OUT, R) from binary_pack_weight of [OUT, ceil(C/64)] bits; OUT and C come
            from its header. The channel padding bits of x_packed and w_packed must be 0 (ValueError).
        alpha: float32 [OUT].
        bias: optional float [OUT].
        out_dtype: float32, bfloat16 or float16; default float32 (x_packed has no float dtype).
        clamp_min: optional lower bound, applied in float32 before the rounding to out_dtype
            (keyword-only in the op's schema; see binary_conv2d).
        clamp_max: optional upper bound, as clamp_min.
    Returns:
        (..., OUT) in out_dtype: the float32 result rounded once.
    """
    return torch.ops.compressops.binary_linear(x_packed, w_packed, alpha, bias, out_dtype, clamp_min=clamp_min,
                                               clamp_max=clamp_max)
