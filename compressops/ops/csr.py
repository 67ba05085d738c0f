"""The CSR sparse ops: index pack and linear (format: compressops/formats/csr.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..formats import csr, pack_header
from ..reference import csr as ref
from . import _register

__all__ = ["csr_pack", "csr_linear"]


def _fake_pack(crow, col, in_features):
    csr.check(crow, col, int(in_features), "csr_pack")
    n = crow.shape[0] - 1
    return crow.new_empty(pack_header.pack_shape((n,), csr.packed_bytes(n, int(in_features), col.shape[0])),
                          dtype=torch.uint8)


def _fake_linear(x, packed, values, bias=None, out_dtype=None):
    n, _, out_t, _ = csr.check_linear("csr_linear", x, packed, values, bias, out_dtype)
    return x.new_empty((*x.shape[:-1], n), dtype=out_t)


_register("csr_pack", _fake_pack, ref.csr_pack)
_register("csr_linear", _fake_linear, ref.csr_linear, triton="csr_linear.csr_linear", dense_weight=csr.dense_weight)


def csr_pack(crow: Tensor, col: Tensor, in_features: int) -> Tensor:
    """Validate a CSR structure once and pack it for csr_linear (16-bit columns when K <= 65536).

    Args:
        crow: int32/int64 [N+1], 1 <= N < 2^31: starts at 0, never decreases, ends at nnz.
        col: int32/uint16 [nnz], every column in [0, in_features); any order within a row.
        in_features: K, in [1, 2^31).
    Returns:
        uint8 [N, ceil(compressops.formats.csr.packed_bytes(N, K, nnz) / N)]: the shared pack header,
        the row pointer and the columns (layout in compressops/formats/csr.py). Build it once per
        weight and reuse it.
    Raises:
        ValueError: an invalid argument; the message names it.
    """
    return torch.ops.compressops.csr_pack(crow, col, in_features)


def csr_linear(x: Tensor, packed: Tensor, values: Tensor, bias: Tensor | None = None,
               out_dtype: torch.dtype | None = None) -> Tensor:
    """CSR sparse linear: y = x @ W.T + bias, W the [N, K] matrix of (packed, values).

    Args:
        x: float32/bfloat16/float16 (..., K), any leading dims (including empty), any strides.
        packed: uint8, from csr_pack(crow, col, K); N and K come from its header.
        values: float32 or bfloat16 [nnz], in crow/col order.
        bias: optional float [N].
        out_dtype: float32, bfloat16 or float16; default x.dtype.
    Returns:
        (..., N) in out_dtype; float32 accumulation (the sum's order differs between CPU levels).
        NaN and Inf in x propagate as in x @ W.T (Inf * 0 = NaN at W's zeros): such a call takes the
        dense route (compressops.routes).
    Gradient:
        x gets grad_out @ W (in x's dtype), W the dense [N, K] weight; bias gets grad_out summed
        over the leading dims. packed and values are frozen (values that require grad raise in the
        backward).
    Raises:
        ValueError: an invalid argument, named in the message; a pack whose header or row pointer is inconsistent raises
        before any kernel runs (what is checked and what is trusted: compressops/formats/csr.py).
    """
    return torch.ops.compressops.csr_linear(x, packed, values, bias, out_dtype)
