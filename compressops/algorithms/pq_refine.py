"""Calibration-aware refinement of PQ codebooks ("And the Bit Goes Down", layer-wise).

For fixed codes, W_hat = A(codes) C is linear in the codebook entries, so minimising the layer's
output error on calibration inputs X,

    E(C) = ||X W^T - X W_hat^T||_F^2 = tr((W - W_hat) G (W - W_hat)^T),   G = X^T X,

is a linear least-squares problem that only needs the Gram matrix G. We solve it by exact block
coordinate descent over subspaces: with every other subspace fixed, the optimum of subspace s
is separable per centroid c,

    C_s[c] = mean over rows n with code c of ( w_n[s] + G_ss^{-1} G[s, o] e_n[o] ),

where e_n = w_n - w_hat_n and o are the other columns. Each block step cannot increase E (G_ss
gets a small ridge, lambda = 1e-6 * mean diag(G), so it is invertible), so a few sweeps converge.
"""

from __future__ import annotations

import torch

from .observers import RowObserver


class GramObserver(RowObserver):
    """Accumulates G = sum x^T x over a layer's finite input rows (float64), what refinement needs."""

    def __init__(self):
        super().__init__()
        self.gram = None

    def observe(self, x: torch.Tensor) -> None:
        x2 = self.finite_rows(x).double()
        g = x2.t() @ x2
        self.gram = g if self.gram is None else self.gram + g

    def result(self) -> torch.Tensor:
        self.check_rows()
        return self.gram / self.rows


@torch.no_grad()
def refine_codebooks(weight: torch.Tensor, codes: torch.Tensor, codebooks: torch.Tensor, gram: torch.Tensor,
                     sweeps: int = 3, ridge: float = 1e-6) -> torch.Tensor:
    """Re-fit the codebooks for fixed codes to minimise the output error on the calibration data.

    Args:
        weight: float [N, K] original weight.
        codes: int/uint8 [N, S], one code per entry (unpacked).
        codebooks: float32 [S, k, d] (k-means result, the starting point).
        gram: [K, K] Gram matrix X^T X (any positive scale) of the layer's inputs.
        sweeps: passes over all subspaces.
    Returns:
        refined codebooks float32 [S, k, d] (the input is not modified).
    """
    s_num, k, d = codebooks.shape
    n, kin = weight.shape
    kp = s_num * d
    w = torch.zeros(n, kp, dtype=torch.float64)
    w[:, :kin] = weight.detach().double().cpu()
    g = torch.zeros(kp, kp, dtype=torch.float64)
    g[:kin, :kin] = gram.double().cpu()
    lam = ridge * float(torch.diagonal(g)[:kin].mean().clamp_min(1e-12))
    c = codebooks.detach().double().cpu().clone()
    cd = codes.long().cpu()
    ar = torch.arange(s_num)[None, :]
    what = c[ar, cd].reshape(n, kp)
    e = w - what
    p = e @ g  # [N, Kp], kept equal to E G
    ones = torch.ones(s_num, n, dtype=torch.float64)
    counts = torch.zeros(s_num, k, dtype=torch.float64).scatter_add_(1, cd.t(), ones)
    eye = torch.eye(d, dtype=torch.float64)
    for _ in range(sweeps):
        for s in range(s_num):
            sl = slice(s * d, (s + 1) * d)
            gss = g[sl, sl]
            e_s = e[:, sl]
            t_other = p[:, sl] - e_s @ gss  # G[s, o] e_n[o] for every n, [N, d]
            target = w[:, sl] + torch.linalg.solve(gss + lam * eye, t_other.t()).t()
            sums = torch.zeros(k, d, dtype=torch.float64).index_add_(0, cd[:, s], target)
            cnt = counts[s]
            new_c = torch.where(cnt[:, None] > 0, sums / cnt.clamp_min(1)[:, None], c[s])
            c[s] = new_c
            new_e_s = w[:, sl] - new_c[cd[:, s]]
            delta = new_e_s - e_s
            e[:, sl] = new_e_s
            p += delta @ g[sl, :]
    return c.float().to(codebooks.device).contiguous()


def output_error(weight: torch.Tensor, w_hat: torch.Tensor, x: torch.Tensor) -> float:
    """||x W^T - x W_hat^T||_F^2 / ||x W^T||_F^2 (a helper for tests and studies)."""
    ref = x @ weight.t()
    return float(((ref - x @ w_hat.t()) ** 2).sum() / (ref ** 2).sum().clamp_min(1e-30))
