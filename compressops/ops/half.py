"""The half ops: float16 weight pack and linear (format: compressops/formats/half.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..formats import half as fh
from ..formats import pack_header
from ..reference import half as ref
from . import _register

__all__ = ["half_pack_weight", "half_linear"]


def _fake_pack_weight(w):
    fh.check_weight(w, "half_pack_weight")
    return w.new_empty(pack_header.pack_shape((w.shape[0],), fh.packed_bytes(w.shape[0], w.shape[1])),
                       dtype=torch.uint8)


def _fake_linear(x, packed, bias=None, out_dtype=None):
    n, _, out_t = fh.check_linear("half_linear", x, packed, bias, out_dtype)
    return x.new_empty((*x.shape[:-1], n), dtype=out_t)


_register("half_pack_weight", _fake_pack_weight, ref.half_pack_weight)
_register("half_linear", _fake_linear, ref.half_linear, dense_weight=fh.dense_weight)


def half_pack_weight(w: Tensor) -> Tensor:
    """Pack a float16 weight for half_linear.

    Args:
        w: float16 [N, K] (compressops.formats.half.to_half makes one from a float weight).
    Returns:
        uint8 [N, ceil((64 + 2 * N * K) / N)]: the shared pack header, then w row-major, zero padded
        (compressops/formats/half.py).
        Build it once per weight and reuse it.
    """
    return torch.ops.compressops.half_pack_weight(w)


def half_linear(x: Tensor, packed: Tensor, bias: Tensor | None = None, out_dtype: torch.dtype | None = None) -> Tensor:
    """y = x @ w.T + bias with the float16 weight w of `packed`, accumulated in float32.

    Args:
        x: float32/bfloat16/float16 (..., K), any leading dims (including empty), any strides.
        packed: uint8, from half_pack_weight(w) with w float16 [N, K]; N and K come from its header.
        bias: optional float [N].
        out_dtype: float32, bfloat16 or float16; default x.dtype.
    Returns:
        (..., N) in out_dtype. Not bit-identical to compressops.reference.half_linear (float sums
        in another order): each output is within compressops.formats.half.error_bound of the exact
        sum before its rounding to out_dtype.
    Gradient:
        x gets grad_out @ w (float32, then x's dtype); bias gets grad_out summed over the leading
        dims. The pack is frozen.
    """
    return torch.ops.compressops.half_linear(x, packed, bias, out_dtype)
