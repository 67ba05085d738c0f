"""GPTQ for group-wise int4 weights (Frantar et al., 2022, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers"), act-order off, no static groups.

The columns of W [N, K] are quantized left to right. After column i is rounded, the rounding error
is spread over the columns not yet quantized with the inverse Hessian of the layer's inputs,
H = sum over calibration rows of x^T x, so that ||X W^T - X Q^T|| grows as little as possible:

    Hinv = upper Cholesky factor of (H + damp * I)^-1,   damp = 1% of mean(diag(H))
    err  = (w[:, i] - dequant(q[:, i])) / Hinv[i, i]
    W[:, j] -= err * Hinv[i, j]           for j > i (lazily, in blocks of 128 columns)

A group's scale and zero point are chosen (round-to-nearest rule of compressops.formats.int4)
from the already-updated weights when the group's first column is reached. Input channels
never seen (diag(H) = 0) get H_ii = 1 and weight 0. Everything runs in float32, as in the
reference implementation (the factorisation falls back to float64 when float32 cannot factorize
the damped H).
"""

from __future__ import annotations

import torch

from ..formats import int4 as int4_format
from .observers import RowObserver


class HessianObserver(RowObserver):
    """Accumulates H = X^T X in float64 over every finite row a layer sees (calibration for GPTQ)."""

    def __init__(self):
        super().__init__()
        self.h = None

    def observe(self, x: torch.Tensor) -> None:
        x2 = self.finite_rows(x).double()
        if self.h is None:
            self.h = torch.zeros(x2.shape[1], x2.shape[1], dtype=torch.float64, device=x2.device)
        self.h += x2.t() @ x2

    def result(self) -> torch.Tensor:
        """What convert hands to the layer's handler: H float64 [K, K]."""
        self.check_rows()
        return self.h


@torch.no_grad()
def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, group_size: int = 128, symmetric: bool = False,
                  damp: float = 0.01, block_size: int = 128, name: str = "weight"):
    """GPTQ-quantize a float weight [N, K] to the canonical int4 format.

    Args:
        weight: float [N, K].
        hessian: [K, K] (sum of x^T x over calibration inputs; any positive multiple works).
        group_size: as in compressops.Int4.
        symmetric: as in compressops.Int4.
        damp: fraction of mean(diag(H)) added to the diagonal.
        block_size: columns per lazy-update block.
        name: used in error messages.
    Returns:
        tuple: (qweight uint8 [N, K_pad/2], scales float32 [N, G], zeros uint8 [N, G] or None), as
            compressops.formats.int4.quantize_weight returns.
    """
    int4_format.check_group_size(group_size, name)
    w0 = int4_format.check_float_weight(weight, name)
    n, k = w0.shape
    if hessian.shape != (k, k):
        raise ValueError(f"{name}: GPTQ Hessian must be [{k}, {k}], got {tuple(hessian.shape)}")
    H = hessian.detach().to(device=w0.device, dtype=torch.float64)
    dead = torch.diag(H) == 0
    hinv = _inverse_cholesky(H, dead, damp)
    hdiag = _damped_diag(H, dead, damp).float()

    kp = int4_format.padded_k(k, group_size)
    g_count = kp // group_size
    # Transposed [K, N]: column k of W is row k here, contiguous, so the per-column work reads
    # and the rank-1 updates write whole cache lines.
    Wt = w0.t().contiguous()
    Wt[dead] = 0.0
    Qt = torch.empty(kp, n, dtype=torch.float32, device=Wt.device)
    scales = torch.zeros(g_count, n, dtype=torch.float32, device=Wt.device)
    zeros = torch.zeros(g_count, n, dtype=torch.float32, device=Wt.device)
    for b0 in range(0, k, block_size):
        b1 = min(k, b0 + block_size)
        Wb = Wt[b0:b1]  # a view: updated in place
        Eb = torch.empty(b1 - b0, n, dtype=torch.float32, device=Wt.device)
        Hb = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            g = col // group_size
            if col % group_size == 0:
                g_end = min(k, col + group_size)
                # the group's columns as updated so far (those past this block get the rest of their
                # updates later, as in the reference algorithm)
                cur = Wt[col:g_end].t()
                scales[g], zeros[g] = int4_format.group_params(cur.contiguous(), symmetric,
                                                               importance=hdiag[col:g_end])
                s_g, z_g = scales[g], zeros[g]
                safe = torch.where(s_g > 0, s_g, torch.ones_like(s_g))
                zero_scale = bool((s_g == 0).any())
            w = Wb[i]
            # quantize_values for one column: clamp(round(w / s) + z, 0, 15), z where s = 0
            q = torch.div(w, safe).round_().add_(z_g)
            if zero_scale:
                q = torch.where(s_g > 0, q, z_g)
            q.clamp_(0, 15)
            Qt[col] = q
            err = Eb[i]
            torch.sub(q, z_g, out=err).mul_(s_g)       # the dequantized value ...
            err.sub_(w).div_(-Hb[i, i])                # ... err = (w - deq) / Hinv[i, i]
            if i + 1 < b1 - b0:
                Wb[i + 1:].addr_(Hb[i, i + 1:], err, alpha=-1)
        if b1 < k:
            Wt[b1:].addmm_(hinv[b0:b1, b1:].t(), Eb, alpha=-1)
    if kp > k:
        Qt[k:] = zeros[-1:].expand(kp - k, n)
    qweight = int4_format.pack_nibbles(Qt.t().to(torch.uint8))
    return qweight, scales.t().contiguous(), None if symmetric else zeros.t().to(torch.uint8).contiguous()


def _damped_diag(H: torch.Tensor, dead: torch.Tensor, damp: float) -> torch.Tensor:
    """diag(H) with dead channels set to 1, plus damp * its mean: the diagonal GPTQ factorizes."""
    d = torch.diag(H).clone()
    d[dead] = 1.0
    return d + damp * torch.mean(d)


def _inverse_cholesky(H: torch.Tensor, dead: torch.Tensor, damp: float) -> torch.Tensor:
    """float32 [K, K]: the upper Cholesky factor U of (H + damp * mean(diag) * I)^-1 (U^T U = inverse).

    Factorized in float32 (the GPTQ reference does; it is about twice as fast as float64, the
    largest single cost of a 4096-wide layer); when float32 cannot factorize the damped H (an
    ill-conditioned Hessian), float64 does.
    """
    Hd = H.clone()
    Hd.diagonal().copy_(_damped_diag(H, dead, damp))
    for dtype in (torch.float32, torch.float64):
        L, info = torch.linalg.cholesky_ex(Hd.to(dtype))
        if int(info) != 0:
            continue
        U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
        if int(info) == 0 and bool(torch.isfinite(U).all()):
            return U.float()
    raise ValueError("GPTQ: the damped Hessian is not positive definite (non-finite calibration statistics?)")
