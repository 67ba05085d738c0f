"""Reference of the int8 ops (format: compressops/formats/int8.py)."""

from __future__ import annotations

import torch

from ..formats import int8 as f8

__all__ = ["int8_pack_weight", "int8_quantize_activation", "int8_linear", "int8_weight_only_linear"]


def int8_pack_weight(w_q: torch.Tensor) -> torch.Tensor:
    """See compressops.ops.int8_pack_weight."""
    return f8.pack_weight(w_q)


def int8_quantize_activation(x: torch.Tensor, act_scale: torch.Tensor | None = None):
    """Symmetric int8 quantization of the rows of x; the rule is compressops.formats.int8.quantize_activation.

    Returns:
        (q int8 shaped like x, scale float32 shaped x.shape[:-1]).
    """
    f8.check_activation(x, act_scale)
    return f8.quantize_activation(x, act_scale)


def int8_linear(x, w_packed, w_scale, bias=None, out_dtype=None, *, act_scale=None):
    """y = float(q(x) @ w_q.T) * (x_scale * w_scale) + bias; see compressops.ops.int8_linear."""
    op = "int8_linear"
    n, k, out_t = f8.check_linear(op, x, w_packed, w_scale, bias, out_dtype, act_scale)
    w_q = f8.unpack_weight(w_packed, op)
    q, sx = f8.quantize_activation(x, act_scale)
    acc = (q.reshape(-1, k).double() @ w_q.double().t()).to(torch.int32)
    return f8.w8a8_epilogue(acc, sx, w_scale, bias, out_t, (*x.shape[:-1], n))


def int8_weight_only_linear(x, w_packed, w_scale, bias=None, out_dtype=None):
    """y = (x @ w_q.T) * w_scale + bias in float32; see compressops.ops.int8_weight_only_linear."""
    op = "int8_weight_only_linear"
    n, k, out_t = f8.check_linear(op, x, w_packed, w_scale, bias, out_dtype)
    w_q = f8.unpack_weight(w_packed, op)
    y = (x.reshape(-1, k).float() @ w_q.float().t()) * w_scale.reshape(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(out_t).reshape(*x.shape[:-1], n)
