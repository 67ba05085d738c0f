"""Reference of the half ops (format: compressops/formats/half.py)."""

from __future__ import annotations

import torch

from ..formats import half as fh

__all__ = ["half_pack_weight", "half_linear"]


def half_pack_weight(w: torch.Tensor) -> torch.Tensor:
    """See compressops.ops.half_pack_weight."""
    return fh.pack_weight(w)


def half_linear(x, packed, bias=None, out_dtype=None):
    """y = x.float() @ w.float().T + bias in float32, then out_dtype; see compressops.ops.half_linear."""
    n, k, out_t = fh.check_linear("half_linear", x, packed, bias, out_dtype)
    w = fh.unpack_weight(packed, "half_linear")
    y = x.reshape(-1, k).float() @ w.float().t()
    if bias is not None:
        y = y + bias.float()
    return y.to(out_t).reshape(*x.shape[:-1], n)
