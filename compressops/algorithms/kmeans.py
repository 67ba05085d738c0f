"""k-means batched over independent subspaces (the codebook fit of product quantization)."""

from __future__ import annotations

import torch


def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared distances [S, N, k] between points x [S, N, d] and centroids c [S, k, d]."""
    d = (x * x).sum(-1, keepdim=True) - 2 * torch.bmm(x, c.transpose(1, 2)) + (c * c).sum(-1)[:, None, :]
    return d.clamp_min_(0)


def kmeans_pp_init(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding for every subspace at once: x [S, N, d] -> centroids [S, k, d]."""
    s, n, d = x.shape
    ar = torch.arange(s, device=x.device)
    first = torch.randint(n, (s,), generator=generator, device=x.device)
    cents = x.new_empty(s, k, d)
    cents[:, 0] = x[ar, first]
    best = ((x - cents[:, :1]) ** 2).sum(-1)  # [S, N]
    for i in range(1, k):
        w = best.clamp_min(0)
        total = w.sum(1, keepdim=True)
        # a subspace whose points all coincide with chosen centroids: sample uniformly
        w = torch.where(total > 0, w, torch.ones_like(w))
        idx = torch.multinomial(w, 1, generator=generator).squeeze(1)
        cents[:, i] = x[ar, idx]
        best = torch.minimum(best, ((x - cents[:, i:i + 1]) ** 2).sum(-1))
    return cents


@torch.no_grad()
def kmeans_subspaces(x: torch.Tensor, k: int, *, seed: int = 0, max_iter: int = 25,
                     tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means run independently in each subspace, batched in torch.

    Args:
        x: float32 [S, N, d], N points of dimension d per subspace.
        k: centroids per subspace.
        seed: k-means++ seed (fixed seed -> deterministic result).
        max_iter: most Lloyd iterations; stops earlier when no assignment changes or the total
            inertia improves by less than `tol` (relative).
    Returns:
        (centroids float32 [S, k, d], assignments int64 [S, N]).
    Empty clusters are re-seeded with the points that currently have the largest error, so every
    centroid stays useful (when N >= k).
    """
    g = torch.Generator(device=x.device).manual_seed(seed)
    x = x.float()
    s, n, d = x.shape
    cents = kmeans_pp_init(x, k, g)
    assign = None
    prev_inertia = None
    for _ in range(max_iter):
        dist = _sq_dists(x, cents)
        err, new_assign = dist.min(-1)  # [S, N]
        inertia = float(err.sum())
        if assign is not None and torch.equal(new_assign, assign):
            break
        if prev_inertia is not None and prev_inertia - inertia <= tol * max(prev_inertia, 1e-30):
            assign = new_assign
            break
        assign, prev_inertia = new_assign, inertia
        sums = x.new_zeros(s, k, d).scatter_add_(1, assign[..., None].expand(s, n, d), x)
        counts = x.new_zeros(s, k).scatter_add_(1, assign, torch.ones_like(err))
        new = sums / counts.clamp_min(1)[..., None]
        empty = counts == 0
        if empty.any() and n >= k:
            far = err.topk(k, dim=1).indices  # [S, k] worst-served points
            cand = torch.gather(x, 1, far[..., None].expand(s, k, d))
            new = torch.where(empty[..., None], cand, new)
        else:
            new = torch.where(empty[..., None], cents, new)
        cents = new
    assign = _sq_dists(x, cents).argmin(-1)
    return cents.contiguous(), assign
