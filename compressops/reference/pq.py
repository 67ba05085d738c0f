"""Reference of the PQ (product quantization) ops (format: compressops/formats/pq.py)."""

from __future__ import annotations

import torch

from ..formats import pq as fpq

__all__ = ["pq_pack", "pq_tables", "pq_linear"]


def pq_pack(codes: torch.Tensor, codebooks: torch.Tensor, in_features: int) -> torch.Tensor:
    """See compressops.ops.pq_pack."""
    return fpq.pack(codes, codebooks, in_features)


def pq_tables(x: torch.Tensor, codebooks: torch.Tensor, in_features: int) -> torch.Tensor:
    """float64 lookup tables L[m, s, c] = x_m[s*d:(s+1)*d] . C[s, c] for x (..., K) -> [M, S, k]."""
    s, _, d = codebooks.shape
    x2 = x.reshape(-1, in_features).double()
    xp = x2.new_zeros(x2.shape[0], s * d)
    xp[:, :in_features] = x2
    return torch.einsum("msd,scd->msc", xp.view(-1, s, d), codebooks.double())


def pq_linear(x, packed, bias=None, out_dtype=None):
    """y[n] = sum_s L[s, code(n, s)] + bias[n] with the exact table; see compressops.ops.pq_linear."""
    op = "pq_linear"
    n, k_in, out_t, h = fpq.check_linear(op, x, packed, bias, out_dtype)
    codes = fpq.unpacked_codes(fpq.unpack_codes(packed, op), h.s, h.k)  # [N, S]
    tab = pq_tables(x, fpq.unpack_codebooks(packed, op), k_in)  # [M, S, k]
    idx = codes.long().t()  # [S, N]
    y = torch.gather(tab, 2, idx[None].expand(tab.shape[0], h.s, n)).sum(1)  # [M, N]
    if bias is not None:
        y = y + bias.double()
    return y.float().to(out_t).reshape(*x.shape[:-1], n)
