"""The int4 ops: group-wise 4-bit weight prepack and W4A8 linear (format: compressops/formats/int4.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..formats import int4 as f4
from ..formats import pack_header
from ..reference import int4 as ref
from . import _register

__all__ = ["int4_pack_weight", "int4_linear"]


def _fake_pack_weight(qweight, scales, zeros, in_features, group_size):
    n, _, _ = f4.check_canonical(qweight, scales, zeros, in_features, group_size, "int4_pack_weight")
    nbytes = f4.packed_bytes(n, in_features, group_size, zeros is None)
    return qweight.new_empty(pack_header.pack_shape((n,), nbytes), dtype=torch.uint8)


def _fake_linear(x, w_packed, bias=None, out_dtype=None):
    n, _, out_t, _ = f4.check_linear("int4_linear", x, w_packed, bias, out_dtype)
    return x.new_empty((*x.shape[:-1], n), dtype=out_t)


_register("int4_pack_weight", _fake_pack_weight, ref.int4_pack_weight)
_register("int4_linear", _fake_linear, ref.int4_linear, triton="int4_linear.int4_linear",
          dense_weight=f4.dense_weight)


def int4_pack_weight(qweight: Tensor, scales: Tensor, zeros: Tensor | None, in_features: int,
                     group_size: int) -> Tensor:
    """Pack a canonical int4 weight (compressops/formats/int4.py) for int4_linear.

    Args:
        qweight: uint8 [N, K_pad/2], two codes a byte (low nibble = even k), K_pad = in_features
            rounded up to group_size.
        scales: float32 [N, G].
        zeros: uint8 [N, G] in [0, 15], or None for symmetric (z = 8).
        in_features: K, the number of columns of the inputs (qweight's padding hides it).
        group_size: 32, 64, 128 or 256.
    Returns:
        uint8 [N, ceil(packed_bytes / N)] (compressops.formats.int4.packed_bytes): the shared pack
        header, codes, scales and zero*scale in the kernel layout, then the zero points, zero padded.
        compressops.formats.int4.unpack_weight gives the canonical tensors back bit for bit.
        Build it once per weight and reuse it.
    """
    return torch.ops.compressops.int4_pack_weight(qweight, scales, zeros, in_features, group_size)


def int4_linear(x: Tensor, w_packed: Tensor, bias: Tensor | None = None,
                out_dtype: torch.dtype | None = None) -> Tensor:
    """Int4 (group-wise) linear, W4A8: y ~= x @ dequantize(w).T + bias.

    Each row of x is quantized to int8 per group of group_size columns (symmetric, amax/127),
    dotted exactly in integers with the 4-bit codes, and the group's scales and zero point are
    applied in fp32 (exact formula in compressops.reference.int4_linear). Relative error against
    the fp32 product with the dequantized weight: about 0.5-1% on Gaussian data (tests bound it at 2%).

    Args:
        x: float32/bfloat16/float16 (..., K), any leading dims (including empty), any strides.
        w_packed: uint8 [N, R] from int4_pack_weight; N, K and the group size come from its header.
        bias: optional float [N].
        out_dtype: float32, bfloat16 or float16; default x.dtype.
    Returns:
        (..., N) in out_dtype; within fp32 rounding of compressops.reference.int4_linear.
    Gradient:
        Straight-through: x gets grad_out @ W (in x's dtype), W = code * s - z * s per group (the
        dequantized weight, compressops.formats.int4.dense_weight), the gradient of x @ W.T with the
        int8 rounding of x taken as the identity; bias gets grad_out summed over the leading dims.
        The pack is frozen.
    """
    return torch.ops.compressops.int4_linear(x, w_packed, bias, out_dtype)
