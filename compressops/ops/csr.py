"""The CSR sparse ops: index pack and linear (format: compressops/formats/csr.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..formats import csr
from ..reference import csr as ref
from . import _register

__all__ = ["csr_pack", "csr_linear"]


def _fake_pack(crow, col, in_features):
    n = crow.shape[0] - 1
    csr.check(crow, col, n, int(in_features), "csr_pack")
    return crow.new_empty((csr.packed_bytes(n, in_features, col.shape[0]),), dtype=torch.uint8)


def _fake_linear(x, packed, values, out_features, bias=None):
    n, _, out_t, _ = csr.check_linear("csr_linear", x, packed, values, out_features, bias)
    return x.new_empty((*x.shape[:-1], n), dtype=out_t)


_register("csr_pack", _fake_pack, ref.csr_pack)
_register("csr_linear", _fake_linear, ref.csr_linear, triton="csr_linear.csr_linear")


def csr_pack(crow: Tensor, col: Tensor, in_features: int) -> Tensor:
    """Validate a CSR index once and pack it for csr_linear (16-bit columns when K <= 65536).

    Args:
        crow: int32/int64 [N+1]; col: int32 [nnz] in [0, in_features).
    Returns:
        uint8 [compressops.formats.csr.packed_bytes(N, K, nnz)] (layout in compressops/formats/csr.py).
    """
    return torch.ops.compressops.csr_pack(crow, col, in_features)


def csr_linear(x: Tensor, packed: Tensor, values: Tensor, out_features: int, bias: Tensor | None = None) -> Tensor:
    """CSR sparse linear: y = x @ W.T + bias.

    Args:
        x: float32/bfloat16/float16 (..., K).
        packed: uint8 index pack from csr_pack(crow, col, K).
        values: float32 or bfloat16 [nnz] (the CSR values, in crow/col order).
        out_features: N. bias: optional float [N].
    Returns:
        (..., N) in x.dtype; float32 accumulation.
    """
    return torch.ops.compressops.csr_linear(x, packed, values, out_features, bias)
