"""The 2:4 semi-structured sparse ops, float and int8 kept values (format: compressops/formats/sparse24.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..formats import pack_header
from ..formats import sparse24 as s24
from ..reference import sparse24 as ref
from . import _register

__all__ = ["sparse24_pack", "sparse24_linear", "sparse24_int8_linear"]


def _fake_pack(values, meta, in_features):
    s24.check_pack("sparse24_pack", values, meta, in_features)
    n = values.shape[0]
    return values.new_empty(pack_header.pack_shape((n,), s24.packed_bytes(n, int(in_features), values.dtype)),
                            dtype=torch.uint8)


def _fake_linear(x, packed, bias=None, out_dtype=None):
    n, _, out_t, _ = s24.check_linear("sparse24_linear", x, packed, bias, out_dtype)
    return x.new_empty((*x.shape[:-1], n), dtype=out_t)


def _fake_int8_linear(x, packed, w_scale, bias=None, out_dtype=None):
    n, _, out_t, _ = s24.check_int8_linear("sparse24_int8_linear", x, packed, w_scale, bias, out_dtype)
    return x.new_empty((*x.shape[:-1], n), dtype=out_t)


_register("sparse24_pack", _fake_pack, ref.sparse24_pack)
_register("sparse24_linear", _fake_linear, ref.sparse24_linear, triton="sparse24_linear.sparse24_linear",
          dense_weight=s24.dense_weight)
_register("sparse24_int8_linear", _fake_int8_linear, ref.sparse24_int8_linear,
          triton="sparse24_linear.sparse24_int8_linear", dense_weight=s24.dense_weight)


def sparse24_pack(values: Tensor, meta: Tensor, in_features: int) -> Tensor:
    """Pack a 2:4 weight for sparse24_linear (float values) or sparse24_int8_linear (int8 values).

    Args:
        values: float32, bfloat16 or int8 [N, Kp/2] (Kp = K rounded up to 4), from
            compressops.formats.sparse24.compress (and quantize_values for int8: in [-127, 127],
            -128 raises).
        meta: uint8 [N, ceil(Kp/8)] positions (bit order in compressops/formats/sparse24.py).
        in_features: K, in [1, 2^31) (at most 262144 with int8 values).
    Returns:
        uint8 [N, ceil(packed_bytes / N)]: the shared pack header (N, K and the values dtype), then
        values' and meta's bytes, zero padded (compressops/formats/sparse24.py).
        Build it once per weight and reuse it.
    """
    return torch.ops.compressops.sparse24_pack(values, meta, in_features)


def sparse24_linear(x: Tensor, packed: Tensor, bias: Tensor | None = None,
                    out_dtype: torch.dtype | None = None) -> Tensor:
    """2:4 sparse linear: y = x @ W.T + bias, W given by a pack of its kept values and 2-bit positions.

    Args:
        x: float32/bfloat16/float16 (..., K), any leading dims (including empty) and strides.
        packed: uint8, from sparse24_pack with float32 or bfloat16 values; N and K come from its header.
        bias: optional float [N].
        out_dtype: float32, bfloat16 or float16; default x.dtype.
    Returns:
        (..., N) in out_dtype; float32 accumulation (equal to the reference within float rounding).
        NaN and Inf in x propagate as in x @ W.T (Inf * 0 = NaN at W's zeros): such a call takes the
        dense route (compressops.routes).
    Gradient:
        x gets grad_out @ W (in x's dtype), W the dense 2:4 weight; bias gets grad_out summed over
        the leading dims. The pack is frozen.
    """
    return torch.ops.compressops.sparse24_linear(x, packed, bias, out_dtype)


def sparse24_int8_linear(x: Tensor, packed: Tensor, w_scale: Tensor, bias: Tensor | None = None,
                         out_dtype: torch.dtype | None = None) -> Tensor:
    """2:4 sparse linear with int8 kept values and dynamic per-row int8 activations.

    y = float(q(x) @ Wq.T) * (x_scale * w_scale) + bias, with q(x) exactly as
    compressops.ops.int8_quantize_activation and an exact int32 sum.

    Args:
        x: float32/bfloat16/float16 (..., K), any leading dims and strides.
        packed: uint8, from sparse24_pack with int8 values in [-127, 127]; N and K come from its header.
        w_scale: float32 [N].
        bias: optional float [N].
        out_dtype: float32, bfloat16 or float16; default x.dtype.
    Returns:
        (..., N) in out_dtype, bit-identical to compressops.reference.sparse24_int8_linear.
    Gradient:
        Straight-through: x gets grad_out @ W (in x's dtype), W = dense(Wq) * w_scale[:, None], the
        gradient of x @ W.T with the int8 rounding of x taken as the identity; bias gets grad_out
        summed over the leading dims. The pack and w_scale are frozen (a w_scale that requires grad
        raises in the backward).
    """
    return torch.ops.compressops.sparse24_int8_linear(x, packed, w_scale, bias, out_dtype)
