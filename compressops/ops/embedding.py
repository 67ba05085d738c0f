"""The embedding gathers: int8 and int4 row-wise tables, dequantizing only the rows they read
(formats: compressops/formats/embedding.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..formats import embedding as fe
from ..reference import embedding as ref
from . import _register

__all__ = ["int8_embedding", "int8_embedding_packed", "int4_embedding"]


def _fake_int8(indices, weight, weight_scale, *, out_dtype=None):
    _, d, out_t = fe.check_int8("int8_embedding", indices, weight, weight_scale, out_dtype)
    return weight.new_empty((*indices.shape, d), dtype=out_t)


def _fake_int8_packed(indices, w_packed, weight_scale, embedding_dim, *, out_dtype=None):
    _, d, out_t = fe.check_int8_packed("int8_embedding_packed", indices, w_packed, weight_scale, embedding_dim,
                                       out_dtype)
    return weight_scale.new_empty((*indices.shape, d), dtype=out_t)


def _fake_int4(indices, qweight, scales, zeros, embedding_dim, *, out_dtype=None):
    _, _, out_t = fe.check_int4("int4_embedding", indices, qweight, scales, zeros, embedding_dim, out_dtype)
    return scales.new_empty((*indices.shape, embedding_dim), dtype=out_t)


_register("int8_embedding", _fake_int8, ref.int8_embedding)
_register("int8_embedding_packed", _fake_int8_packed, ref.int8_embedding_packed)
_register("int4_embedding", _fake_int4, ref.int4_embedding)


def int8_embedding(indices: Tensor, weight: Tensor, weight_scale: Tensor, *,
                   out_dtype: torch.dtype | None = None) -> Tensor:
    """Gather rows of an int8 table and dequantize them: out[..., :] = weight[i] * weight_scale[i].

    Args:
        indices: int32/int64, any shape (0-d and empty included), each in [0, V) (IndexError otherwise).
        weight: int8 [V, D], row-major (compressops.formats.embedding).
        weight_scale: float32 [V], one scale per row; must not require grad (the table is frozen).
        out_dtype: keyword-only; float32 (default), bfloat16 or float16.
    Returns:
        indices.shape + (D,) in out_dtype: each value the float32 product, rounded once to
        out_dtype. Bit-identical to compressops.reference.int8_embedding.
    """
    return torch.ops.compressops.int8_embedding(indices, weight, weight_scale, out_dtype=out_dtype)


def int8_embedding_packed(indices: Tensor, w_packed: Tensor, weight_scale: Tensor, embedding_dim: int, *,
                          out_dtype: torch.dtype | None = None) -> Tensor:
    """int8_embedding reading the rows of the int8 [V, D] weight inside an int8 linear pack: how a
    tied embedding shares its head's (Int8Linear's) one copy of the weight.

    Args:
        indices: int32/int64, any shape, each in [0, V).
        w_packed: uint8, compressops.ops.int8_pack_weight(weight) with weight int8 [V, D]; V and D
            come from its header.
        weight_scale: float32 [V].
        embedding_dim: D, which must equal the header's (the output shape is known without
            reading the pack, e.g. under torch.compile).
        out_dtype: as in int8_embedding.
    Returns:
        indices.shape + (D,) in out_dtype; equal to int8_embedding(indices, weight, weight_scale).
    """
    return torch.ops.compressops.int8_embedding_packed(indices, w_packed, weight_scale, embedding_dim,
                                                     out_dtype=out_dtype)


def int4_embedding(indices: Tensor, qweight: Tensor, scales: Tensor, zeros: Tensor | None, embedding_dim: int, *,
                   out_dtype: torch.dtype | None = None) -> Tensor:
    """Gather rows of a group-wise int4 table and dequantize them: (q - z) * s per group of D.

    Args:
        indices: int32/int64, any shape, each in [0, V) (IndexError otherwise).
        qweight: uint8 [V, D_pad/2], two codes a byte, low nibble = even d.
        scales: float32 [V, G]; group_size = D_pad / G (32, 64, 128 or 256). Must not require grad.
        zeros: uint8 [V, G] zero points in [0, 15], or None (symmetric: z = 8).
        embedding_dim: D (D_pad - group_size < D <= D_pad).
        out_dtype: keyword-only; float32 (default), bfloat16 or float16.
    Returns:
        indices.shape + (D,) in out_dtype; bit-identical to compressops.reference.int4_embedding.
    """
    return torch.ops.compressops.int4_embedding(indices, qweight, scales, zeros, embedding_dim, out_dtype=out_dtype)
