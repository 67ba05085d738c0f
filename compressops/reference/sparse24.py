"""Reference of the 2:4 sparse ops (format: compressops/formats/sparse24.py)."""

from __future__ import annotations

import torch

from ..formats import int8 as f8
from ..formats import sparse24 as s24

__all__ = ["sparse24_pack", "sparse24_linear", "sparse24_int8_linear"]


def sparse24_pack(values: torch.Tensor, meta: torch.Tensor, in_features: int) -> torch.Tensor:
    """See compressops.ops.sparse24_pack."""
    return s24.pack(values, meta, in_features)


def sparse24_linear(x, packed, bias=None, out_dtype=None):
    """y = x @ W.T + bias with W the dense form of the pack's 2:4 (values, meta); float32 accumulation."""
    n, k, out_t, dtype = s24.check_linear("sparse24_linear", x, packed, bias, out_dtype)
    values, meta = s24.views(packed, n, k, dtype)
    w = s24.decompress(values, meta, k, torch.float32)
    y = x.reshape(-1, k).float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_t).reshape(*x.shape[:-1], n)


def sparse24_int8_linear(x, packed, w_scale, bias=None, out_dtype=None):
    """2:4 with int8 kept values: y = float(q(x) @ Wq.T) * (x_scale * w_scale) + bias.

    q(x) is compressops.formats.int8.quantize_activation (dynamic, per row); the integer sum is
    exact (int32).
    """
    n, k, out_t, dtype = s24.check_int8_linear("sparse24_int8_linear", x, packed, w_scale, bias, out_dtype)
    values, meta = s24.views(packed, n, k, dtype)
    w = s24.decompress(values, meta, k, torch.float64)
    q, sx = f8.quantize_activation(x)
    acc = (q.reshape(-1, k).double() @ w.t()).to(torch.int32)
    return f8.w8a8_epilogue(acc, sx, w_scale, bias, out_t, (*x.shape[:-1], n))
