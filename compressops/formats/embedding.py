"""The row-wise embedding formats: int8 and int4 nn.Embedding weights, gathered a row at a time.

An embedding's weight is [V, D] (V rows, one per token, of D values). Lookups read a few rows,
so each format quantizes along D, one row at a time, and the gather ops dequantize only the rows
they read. The canonical tensors are also what the embedding modules hold in memory: a row-major
[V, ...] table is already the layout a gather wants, so these formats have no prepacked form.

int8 embedding, canonical version 1 (Int8Embedding's state_dict), the layout of the int8 linear
format's canonical weight (compressops/formats/int8.py) with N = V and K = D:
    weight        int8    [V, D]  row-major, values in [-127, 127] (symmetric: -128 is never used)
    weight_scale  float32 [V]     per row; E[v] ~= weight[v] * weight_scale[v]
A row's output is float32(weight[v, d]) * weight_scale[v], one float32 product per value.

Because the layout is the int8 linear's, a tied embedding/head pair (GPT-2's wte and lm_head) keeps
one copy: the head (Int8Linear) holds its pack, and the embedding gathers the rows of the head's
weight out of that pack (int8_embedding_packed; the pack's blocked layout puts 4 consecutive d of a
row every 64 bytes, so that gather touches more cache lines than a row-major one, the price of not
holding the weight twice).

int4 embedding, canonical version 1 (Int4Embedding's state_dict), the layout of the int4 linear
format's canonical tensors (compressops/formats/int4.py) with N = V and K = D:
    qweight  uint8   [V, D_pad/2]  two 4-bit codes a byte, low nibble = even d
    scales   float32 [V, G]        one scale per row and group of `group_size` d
    zeros    uint8   [V, G]        zero points in [0, 15] (asymmetric); absent when symmetric (z = 8)
with D_pad = D rounded up to group_size (32, 64, 128 or 256) and G = D_pad / group_size. A value is
(float32(q) - float32(z)) * s, in float32. The op reads group_size from the shapes (D_pad / G).

Every gather: indices int32/int64 of any shape (0-d included), each in [0, V) (out-of-range and
negative indices raise IndexError naming the op and the index; nn.Embedding's rule); output
indices.shape + (D,) in out_dtype (float32 default, bfloat16, float16), rounded once from the
float32 value. padding_idx, as in nn.Embedding's forward, changes nothing: its row is read like
any other. The tables are frozen: a scale that requires grad is refused (ValueError); indices
have no gradient.
"""

from __future__ import annotations

import torch

from . import int4 as f4
from . import int8 as f8
from .checks import FLOAT_DTYPES, check_devices, is_fake

VERSION = 1
INDEX_DTYPES = (torch.int32, torch.int64)


def check_indices(indices: torch.Tensor, op: str) -> None:
    """indices must be an int32/int64 tensor (any shape)."""
    torch._check_value(indices.dtype in INDEX_DTYPES,
                       lambda: f"{op}: indices must be int32 or int64, got {indices.dtype}")


def check_index_range(indices: torch.Tensor, rows: int, op: str) -> None:
    """Raise IndexError unless every index lies in [0, rows) (reads data: skipped on fake tensors).

    The message names the smallest index when one is negative, the largest otherwise (the C++
    host reports the same one)."""
    if is_fake(indices) or indices.numel() == 0:
        return
    lo, hi = int(indices.min()), int(indices.max())
    if lo < 0 or hi >= rows:
        bad = lo if lo < 0 else hi
        raise IndexError(f"{op}: indices must lie in [0, {rows}) (the table's rows), found {bad}")


def _out_dtype(out_dtype: torch.dtype | None, op: str) -> torch.dtype:
    t = out_dtype or torch.float32
    torch._check_value(t in FLOAT_DTYPES, lambda: f"{op}: out_dtype must be float32, bfloat16 or float16, got {t}")
    return t


def _check_frozen(op: str, **tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and t.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{op}: {name} requires grad, but the compressed table is frozen (no gradient); "
                             f"detach it")


def _check_row_scale(scale: torch.Tensor, rows, op: str) -> None:
    ok = scale.dtype == torch.float32 and scale.dim() == 1 and scale.shape[0] == rows
    torch._check_value(ok, lambda: f"{op}: weight_scale must be float32 of shape [V] = [{rows}], got {scale.dtype} "
                                   f"{tuple(scale.shape)}")


def check_int8(op: str, indices: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
               out_dtype: torch.dtype | None) -> tuple[int, int, torch.dtype]:
    """The validation of int8_embedding (reference and fake; the C++ host gives the same messages).

    Args:
        indices: int32/int64, any shape. weight: int8 [V, D]. weight_scale: float32 [V].
        out_dtype: float32/bfloat16/float16 or None (float32).
    Returns:
        (V, D, output dtype).
    """
    check_indices(indices, op)
    check_devices(op, "indices", indices, {"weight": weight, "weight_scale": weight_scale})
    torch._check_value(weight.dtype == torch.int8 and weight.dim() == 2,
                       lambda: f"{op}: weight must be int8 [V, D], got {weight.dtype} {tuple(weight.shape)}")
    v, d = weight.shape
    torch._check_value(v >= 1 and d >= 1, lambda: f"{op}: weight must have V, D >= 1, got {tuple(weight.shape)}")
    _check_row_scale(weight_scale, v, op)
    out_t = _out_dtype(out_dtype, op)
    _check_frozen(op, weight_scale=weight_scale)
    check_index_range(indices, v, op)
    return v, d, out_t


def check_int8_packed(op: str, indices: torch.Tensor, w_packed: torch.Tensor, weight_scale: torch.Tensor,
                      embedding_dim: int, out_dtype: torch.dtype | None) -> tuple[int, int, torch.dtype]:
    """The validation of int8_embedding_packed: as check_int8, with the weight an int8 linear pack
    (compressops.ops.int8_pack_weight of the int8 [V, D] weight) whose D must be embedding_dim.
    Returns (V, D, output dtype)."""
    check_indices(indices, op)
    check_devices(op, "indices", indices, {"w_packed": w_packed, "weight_scale": weight_scale})
    torch._check_value(w_packed.dtype == torch.uint8 and w_packed.dim() == 2,
                       lambda: f"{op}: w_packed must be a 2-D uint8 tensor from compressops.ops.int8_pack_weight, "
                               f"got {w_packed.dtype} of shape {tuple(w_packed.shape)}")
    v = w_packed.shape[0]
    if not is_fake(w_packed):  # a fake pack has no header to read
        v, d = f8.read_header(w_packed, op)
        torch._check_value(d == embedding_dim,
                           lambda: f"{op}: embedding_dim={embedding_dim} but w_packed's header has D={d}")
    _check_row_scale(weight_scale, v, op)
    out_t = _out_dtype(out_dtype, op)
    _check_frozen(op, weight_scale=weight_scale)
    check_index_range(indices, v, op)
    return v, embedding_dim, out_t


def check_int4(op: str, indices: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
               zeros: torch.Tensor | None, embedding_dim: int,
               out_dtype: torch.dtype | None) -> tuple[int, int, torch.dtype]:
    """The validation of int4_embedding.

    Args:
        indices: int32/int64, any shape. qweight: uint8 [V, D_pad/2]. scales: float32 [V, G].
        zeros: uint8 [V, G] or None (symmetric). embedding_dim: D, with D_pad - group_size < D <= D_pad.
        out_dtype: float32/bfloat16/float16 or None (float32).
    Returns:
        (V, group_size, output dtype).
    """
    check_indices(indices, op)
    check_devices(op, "indices", indices, {"qweight": qweight, "scales": scales, "zeros": zeros})
    torch._check_value(qweight.dtype == torch.uint8 and qweight.dim() == 2 and qweight.shape[0] >= 1
                       and qweight.shape[1] >= 1,
                       lambda: f"{op}: qweight must be uint8 [V, D_pad/2] with V, D_pad >= 1, got {qweight.dtype} "
                               f"{tuple(qweight.shape)}")
    v, dp = qweight.shape[0], 2 * qweight.shape[1]
    torch._check_value(scales.dtype == torch.float32 and scales.dim() == 2 and scales.shape[0] == v
                       and scales.shape[1] >= 1,
                       lambda: f"{op}: scales must be float32 [V, G] = [{v}, G], got {scales.dtype} "
                               f"{tuple(scales.shape)}")
    g = scales.shape[1]
    group = dp // g
    torch._check_value(group * g == dp and group in f4.GROUP_SIZES,
                       lambda: f"{op}: qweight's D_pad={dp} over scales' G={g} groups must give a group size of 32, "
                               f"64, 128 or 256")
    torch._check_value(dp - group < embedding_dim <= dp,
                       lambda: f"{op}: embedding_dim={embedding_dim} does not fit D_pad={dp} (group size {group}): "
                               f"need {dp - group} < embedding_dim <= {dp}")
    if zeros is not None:
        torch._check_value(zeros.dtype == torch.uint8 and tuple(zeros.shape) == (v, g),
                           lambda: f"{op}: zeros must be uint8 [V, G] = [{v}, {g}] or None (symmetric), got "
                                   f"{zeros.dtype} {tuple(zeros.shape)}")
    out_t = _out_dtype(out_dtype, op)
    _check_frozen(op, scales=scales)
    check_index_range(indices, v, op)
    return v, group, out_t


def quantize_int8(weight: torch.Tensor, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantization of an embedding table: (weight int8 [V, D] in [-127, 127],
    weight_scale float32 [V]), the int8 linear rule (compressops.formats.int8.quantize_weight)."""
    return f8.quantize_weight(weight, name=name)


def quantize_int4(weight: torch.Tensor, group_size: int, symmetric: bool, name: str = "weight"):
    """Round-to-nearest group-wise int4 quantization of an embedding table along D: (qweight, scales,
    zeros or None), the int4 linear rule (compressops.formats.int4.quantize_weight)."""
    return f4.quantize_weight(weight, group_size, symmetric, name=name)


def dequantize_int8(weight: torch.Tensor, weight_scale: torch.Tensor) -> torch.Tensor:
    """float32 [V, D]: weight * weight_scale[:, None], the values every int8 gather returns."""
    return weight.float() * weight_scale[:, None]


def dequantize_int4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                    embedding_dim: int) -> torch.Tensor:
    """float32 [V, D]: (q - z) * s per group, the values int4_embedding returns."""
    group = 2 * qweight.shape[1] // scales.shape[1]
    return f4.dequantize(qweight, scales, zeros, embedding_dim, group)


def packed_rows(w_packed: torch.Tensor, rows: torch.Tensor, op: str) -> torch.Tensor:
    """int8 [len(rows), D]: the rows `rows` (int64, in range) of the weight inside an int8 linear pack,
    read from its blocked layout without unpacking the rest."""
    v, d = f8.read_header(w_packed, op)
    n_pad, k_pad = f8._round_up(v, f8.NR), f8._round_up(d, f8.KR)
    start = f8.pack_header.HEADER_BYTES
    blocks = w_packed.view(-1)[start:start + n_pad * k_pad].view(torch.int8).view(
        n_pad // f8.NR, k_pad // f8.KR, f8.NR, f8.KR)
    return blocks[rows // f8.NR, :, rows % f8.NR, :].reshape(rows.shape[0], k_pad)[:, :d]
