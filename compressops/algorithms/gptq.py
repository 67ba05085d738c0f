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
never seen (diag(H) = 0) get H_ii = 1 and weight 0. The weight updates run in float32 (as the
reference implementation), the Cholesky factorisation of H in float64.
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
    W = w0.clone()  # float32 updates (as the GPTQ reference); the factorisation runs in float64
    H = hessian.detach().double().clone().to(W.device)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead.to(W.device)] = 0.0
    H += torch.eye(k, dtype=H.dtype, device=H.device) * (damp * torch.mean(torch.diag(H)))
    hdiag = torch.diag(H).clone()
    L = torch.linalg.cholesky(H)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).float()
    hdiag = hdiag.float()

    kp = int4_format.padded_k(k, group_size)
    g_count = kp // group_size
    Q = torch.empty(n, kp, dtype=torch.float32, device=W.device)
    scales = torch.zeros(n, g_count, dtype=torch.float32, device=W.device)
    zeros = torch.zeros(n, g_count, dtype=torch.float32, device=W.device)
    for b0 in range(0, k, block_size):
        b1 = min(k, b0 + block_size)
        Wb = W[:, b0:b1].clone()
        Eb = torch.zeros_like(Wb)
        Hb = Hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if col % group_size == 0:
                g = col // group_size
                g_end = min(k, col + group_size)
                # the group's not-yet-quantized columns, updated so far (some may lie past this block)
                cur = torch.cat([Wb[:, i:], W[:, b1:g_end]], dim=1)[:, :g_end - col]
                s, z = int4_format.group_params(cur, symmetric, importance=hdiag[col:g_end])
                scales[:, g], zeros[:, g] = s, z
            g = col // group_size
            s, z = scales[:, g], zeros[:, g]
            w = Wb[:, i]
            q = int4_format.quantize_values(w.unsqueeze(1), s, z).squeeze(1)
            Q[:, col] = q
            deq = (q - z) * s
            err = (w - deq) / Hb[i, i]
            Wb[:, i:] -= err.unsqueeze(1) * Hb[i, i:].unsqueeze(0)
            Eb[:, i] = err
        W[:, b1:] -= Eb @ Hinv[b0:b1, b1:]
    if kp > k:
        Q[:, k:] = zeros[:, -1:].expand(n, kp - k)
    qweight = int4_format.pack_nibbles(Q.to(torch.uint8))
    return qweight, scales.float().contiguous(), None if symmetric else zeros.to(torch.uint8).contiguous()
