"""The int8 ops: weight prepack, activation quantization, W8A8 and weight-only linear
(format: compressops/formats/int8.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..formats import int8 as f8
from ..formats import pack_header
from ..reference import int8 as ref
from . import _register

__all__ = ["int8_pack_weight", "int8_quantize_activation", "int8_linear", "int8_weight_only_linear"]


def _fake_pack_weight(w_q):
    f8.check_weight(w_q, "int8_pack_weight")
    n, k = w_q.shape
    return w_q.new_empty(pack_header.pack_shape((n,), f8.packed_bytes(n, k)), dtype=torch.uint8)


def _fake_quantize_activation(x, act_scale=None):
    f8.check_activation(x, act_scale)
    return x.new_empty(x.shape, dtype=torch.int8), x.new_empty(x.shape[:-1], dtype=torch.float32)


def _fake_linear(x, w_packed, w_scale, bias=None, out_dtype=None, *, act_scale=None):
    n, _, out_t = f8.check_linear("int8_linear", x, w_packed, w_scale, bias, out_dtype, act_scale)
    return x.new_empty((*x.shape[:-1], n), dtype=out_t)


def _fake_weight_only_linear(x, w_packed, w_scale, bias=None, out_dtype=None):
    n, _, out_t = f8.check_linear("int8_weight_only_linear", x, w_packed, w_scale, bias, out_dtype)
    return x.new_empty((*x.shape[:-1], n), dtype=out_t)


_register("int8_pack_weight", _fake_pack_weight, ref.int8_pack_weight)
_register("int8_quantize_activation", _fake_quantize_activation, ref.int8_quantize_activation)
_register("int8_linear", _fake_linear, ref.int8_linear, triton="int8_linear.int8_linear",
          dense_weight=f8.dense_weight)
_register("int8_weight_only_linear", _fake_weight_only_linear, ref.int8_weight_only_linear,
          triton="int8_linear.int8_weight_only_linear", dense_weight=f8.dense_weight)


def int8_pack_weight(w_q: Tensor) -> Tensor:
    """Prepack an int8 weight for the int8 linear kernels.

    Args:
        w_q: int8 [N, K], values in [-127, 127] (as from compressops.formats.int8.quantize_weight).
    Returns:
        uint8 [N, ceil(compressops.formats.int8.packed_bytes(N, K) / N)]: the shared pack header,
        then the blocked weights and their column sums, zero padded (compressops/formats/int8.py).
        Build it once per weight and reuse it.
    """
    return torch.ops.compressops.int8_pack_weight(w_q)


def int8_quantize_activation(x: Tensor, act_scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Symmetric int8 quantization of each row (last dim) of x, as int8_linear does internally.

    Args:
        x: float32/bfloat16/float16 (..., K), any strides.
        act_scale: None for dynamic per-row scales, or a one-element float32 tensor (static).
    Returns:
        (q int8 (..., K), scale float32 (...)), with x ~= q * scale[..., None]. The exact rule
        (rounding, zero rows, NaN) is in compressops.formats.int8.quantize_activation.
    """
    return torch.ops.compressops.int8_quantize_activation(x, act_scale)


def int8_linear(
    x: Tensor,
    w_packed: Tensor,
    w_scale: Tensor,
    bias: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    *,
    act_scale: Tensor | None = None,
) -> Tensor:
    """W8A8 linear: y = (q(x) @ w_q.T) * (x_scale * w_scale) + bias, int32 accumulation.

    Args:
        x: float32/bfloat16/float16 (..., K), any leading dims (including empty), any strides.
        w_packed: uint8, from int8_pack_weight(w_q) with w_q int8 [N, K]; N and K come from its header.
        w_scale: float32 [N], per output channel.
        bias: optional float [N].
        out_dtype: float32, bfloat16 or float16; default x.dtype.
        act_scale: keyword-only. None quantizes each row of x dynamically (symmetric, per row); a
            one-element float32 tensor gives a static (calibrated) scale.
    Returns:
        (..., N) in out_dtype. Bit-identical to compressops.reference.int8_linear on every CPU ISA.
    Gradient:
        Straight-through: x gets grad_out @ W (in x's dtype), W = w_q * w_scale[:, None], the
        gradient of x @ W.T with the int8 rounding of x taken as the identity; bias gets grad_out
        summed over the leading dims. w_packed, w_scale and act_scale are frozen: a w_scale that
        requires grad raises in the backward, an act_scale that requires grad at the call.
    """
    return torch.ops.compressops.int8_linear(x, w_packed, w_scale, bias, out_dtype, act_scale=act_scale)


def int8_weight_only_linear(
    x: Tensor,
    w_packed: Tensor,
    w_scale: Tensor,
    bias: Tensor | None = None,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """Weight-only int8 linear: activations stay float; y = (x @ w_q.T) * w_scale + bias.

    Args:
        x: float32/bfloat16/float16 (..., K).
        w_packed: as in int8_linear.
        w_scale: as in int8_linear.
        bias: as in int8_linear.
        out_dtype: as in int8_linear.
    Returns:
        (..., N) in out_dtype; float32 accumulation, so equal to the reference within float
        rounding (not bitwise).
    Gradient:
        x gets grad_out @ W (in x's dtype), W = w_q * w_scale[:, None]; bias gets grad_out summed
        over the leading dims. w_packed and w_scale are frozen (a w_scale that requires grad raises
        in the backward).
    """
    return torch.ops.compressops.int8_weight_only_linear(x, w_packed, w_scale, bias, out_dtype)
