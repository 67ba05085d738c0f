"""The rows of a Triton linear op that torch computes instead of the kernel.

The ops compute the dense layer they replace, x @ W.T + bias with W the decoded weight, so NaN and
Inf propagate as in nn.Linear. A kernel that skips implicit zeros (CSR) never meets an Inf in x with
a zero weight, and one that sums float32 products (PQ) can overflow where the reference's float64
tables do not: those rows go to torch on the decoded weight, as the CPU ops send them to their dense
route (csrc/cpu/dense_route.h, pq_linear.cpp).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def non_finite_rows(x2: torch.Tensor) -> torch.Tensor:
    """bool [M]: the rows of x2 (float [M, K]) holding a NaN or Inf."""
    return ~torch.isfinite(x2).all(dim=1)


def recompute_rows(y: torch.Tensor, x2: torch.Tensor, rows: torch.Tensor, weight: Callable[[], torch.Tensor],
                   bias: torch.Tensor | None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """y[rows] = x2[rows] @ W.T + bias computed by torch in `dtype` and rounded to float32, in place.

    y: float32 [M, N]; x2: float [M, K]; rows: bool [M]; weight() returns the dense W [N, K], built
    only when some row needs it. One device-to-host sync (whether any row does). Returns y.
    """
    if not bool(rows.any()):
        return y
    w = weight().to(dtype)
    yr = x2[rows].to(dtype) @ w.t()
    if bias is not None:
        yr = yr + bias.to(dtype)
    y[rows] = yr.float()
    return y
