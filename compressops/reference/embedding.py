"""Reference of the embedding gathers (formats: compressops/formats/embedding.py)."""

from __future__ import annotations

import torch

from ..formats import embedding as fe

__all__ = ["int8_embedding", "int8_embedding_packed", "int4_embedding"]


def int8_embedding(indices, weight, weight_scale, *, out_dtype=None):
    """out[..., d] = float32(weight[i, d]) * weight_scale[i]; see compressops.ops.int8_embedding."""
    op = "int8_embedding"
    _, d, out_t = fe.check_int8(op, indices, weight, weight_scale, out_dtype)
    rows = indices.reshape(-1).long()
    y = weight[rows].float() * weight_scale[rows].unsqueeze(-1)
    return y.to(out_t).reshape(*indices.shape, d)


def int8_embedding_packed(indices, w_packed, weight_scale, embedding_dim, *, out_dtype=None):
    """int8_embedding over the weight inside an int8 linear pack; see compressops.ops.int8_embedding_packed."""
    op = "int8_embedding_packed"
    _, d, out_t = fe.check_int8_packed(op, indices, w_packed, weight_scale, embedding_dim, out_dtype)
    rows = indices.reshape(-1).long()
    y = fe.packed_rows(w_packed, rows, op).float() * weight_scale[rows].unsqueeze(-1)
    return y.to(out_t).reshape(*indices.shape, d)


def int4_embedding(indices, qweight, scales, zeros, embedding_dim, *, out_dtype=None):
    """out[..., d] = (float32(q[i, d]) - float32(z[i, d // g])) * s[i, d // g]; see compressops.ops.int4_embedding."""
    op = "int4_embedding"
    _, group, out_t = fe.check_int4(op, indices, qweight, scales, zeros, embedding_dim, out_dtype)
    rows = indices.reshape(-1).long()
    qb = qweight[rows]
    t, g = rows.shape[0], scales.shape[1]
    q = torch.stack([qb & 15, qb >> 4], dim=-1).reshape(t, 2 * qb.shape[1]).float()  # low nibble = even d
    z = zeros[rows].float() if zeros is not None else torch.full((t, g), 8.0, device=q.device)
    y = (q.view(t, g, group) - z.unsqueeze(-1)) * scales[rows].unsqueeze(-1)
    return y.reshape(t, g * group)[:, :embedding_dim].to(out_t).contiguous().reshape(*indices.shape, embedding_dim)
