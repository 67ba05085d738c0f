"""The 2:4 semi-structured sparse ops, float and int8 kept values (format: compressops/formats/sparse24.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..formats import sparse24 as s24
from ..reference import sparse24 as ref
from . import _register

__all__ = ["sparse24_linear", "sparse24_int8_linear"]


def _fake_linear(x, values, meta, in_features, bias=None):
    n, _, out_t = s24.check_linear("sparse24_linear", x, values, meta, in_features, bias)
    return x.new_empty((*x.shape[:-1], n), dtype=out_t)


def _fake_int8_linear(x, values, meta, w_scale, in_features, bias=None):
    n, _, out_t = s24.check_linear("sparse24_int8_linear", x, values, meta, in_features, bias, w_scale)
    return x.new_empty((*x.shape[:-1], n), dtype=out_t)


_register("sparse24_linear", _fake_linear, ref.sparse24_linear, triton="sparse24_linear.sparse24_linear")
_register("sparse24_int8_linear", _fake_int8_linear, ref.sparse24_int8_linear,
          triton="sparse24_linear.sparse24_int8_linear")


def sparse24_linear(x: Tensor, values: Tensor, meta: Tensor, in_features: int, bias: Tensor | None = None) -> Tensor:
    """2:4 sparse linear: y = x @ W.T + bias, W given by its kept values and 2-bit positions.

    Args:
        x: float32/bfloat16/float16 (..., K) with K = in_features, any leading dims and strides.
        values: float32 or bfloat16 [N, Kp/2] (Kp = K rounded up to 4), from
            compressops.formats.sparse24.compress.
        meta: uint8 [N, ceil(Kp/8)] positions (bit order in compressops/formats/sparse24.py).
        in_features: K.
        bias: optional float [N].
    Returns:
        (..., N) in x.dtype; float32 accumulation (equal to the reference within float rounding).
    """
    return torch.ops.compressops.sparse24_linear(x, values, meta, in_features, bias)


def sparse24_int8_linear(x: Tensor, values: Tensor, meta: Tensor, w_scale: Tensor, in_features: int,
                         bias: Tensor | None = None) -> Tensor:
    """2:4 sparse linear with int8 kept values and dynamic per-row int8 activations.

    y = float(q(x) @ Wq.T) * (x_scale * w_scale) + bias, with q(x) exactly as
    compressops.ops.int8_quantize_activation and an exact int32 sum.

    Args:
        x: float32/bfloat16/float16 (..., K).
        values: int8 [N, Kp/2] in [-127, 127]; meta: uint8 [N, ceil(Kp/8)]; w_scale: float32 [N].
        in_features: K. bias: optional float [N].
    Returns:
        (..., N) in x.dtype, bit-identical to compressops.reference.sparse24_int8_linear.
    """
    return torch.ops.compressops.sparse24_int8_linear(x, values, meta, w_scale, in_features, bias)
