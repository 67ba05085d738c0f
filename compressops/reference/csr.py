"""Reference of the CSR sparse ops (format: compressops/formats/csr.py)."""

from __future__ import annotations

import torch

from ..formats import csr

__all__ = ["csr_pack", "csr_linear"]


def csr_pack(crow, col, in_features):
    """See compressops.ops.csr_pack."""
    return csr.pack(crow, col, int(in_features))


def csr_linear(x, packed, values, bias=None, out_dtype=None):
    """y = x @ W.T + bias in float32, then out_dtype; W the dense form of the CSR (packed index, values)."""
    n, k, out_t, h = csr.check_linear("csr_linear", x, packed, values, bias, out_dtype)
    rowptr, cols = csr.index_views(packed, h)
    w = csr.to_dense(rowptr, cols, values, k, torch.float32)
    y = x.reshape(-1, k).float() @ w.t()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_t).reshape(*x.shape[:-1], n)
