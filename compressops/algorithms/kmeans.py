"""k-means batched over independent subspaces (the codebook fit of product quantization), and the
product quantization of a weight with it."""

from __future__ import annotations

import torch

from ..formats import pq as pq_format
from ..formats.checks import all_finite


# Distances per block of subspaces in _assign: the [block, N, k] distance tensor stays a few MiB
# (cache-resident) instead of S * N * k floats (4 GiB for a 4096x4096 layer at k=256).
_ASSIGN_BLOCK_ELEMS = 1 << 20


def _assign(x: torch.Tensor, c: torch.Tensor, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(squared distance to the nearest centroid [S, N], its index [S, N]) for points x [S, N, d],
    centroids c [S, k, d] and x2 = |x|^2 [S, N]: one fused |c|^2 - 2 x.c product, then a min,
    a block of subspaces at a time."""
    s, n, _ = x.shape
    k = c.shape[1]
    c2 = (c * c).sum(-1)[:, None, :]  # [S, 1, k]
    v = x.new_empty(s, n)
    i = torch.empty(s, n, dtype=torch.long, device=x.device)
    step = max(1, _ASSIGN_BLOCK_ELEMS // max(1, n * k))
    for s0 in range(0, s, step):
        s1 = min(s, s0 + step)
        part = torch.baddbmm(c2[s0:s1], x[s0:s1], c[s0:s1].transpose(1, 2), alpha=-2)
        torch.min(part, -1, out=(v[s0:s1], i[s0:s1]))
    return v.add_(x2).clamp_min_(0), i


def _sample(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of weights [S, N] with probability proportional to the weight
    (inverse CDF; much faster than torch.multinomial for this shape)."""
    cdf = weights.double().cumsum(1)
    u = torch.rand(weights.shape[0], 1, generator=generator, dtype=torch.float64, device=weights.device)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_max_(weights.shape[1] - 1).squeeze(1)


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
        idx = _sample(w, generator)
        cents[:, i] = x[ar, idx]
        best = torch.minimum(best, ((x - cents[:, i:i + 1]) ** 2).sum(-1))
    return cents


@torch.no_grad()
def kmeans_subspaces(x: torch.Tensor, k: int, *, seed: int = 0, max_iter: int = 25,
                     tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
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
    x2 = (x * x).sum(-1)
    assign = None
    prev_inertia = None
    for _ in range(max_iter):
        err, new_assign = _assign(x, cents, x2)  # [S, N]
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
    assign = _assign(x, cents, x2)[1]
    return cents.contiguous(), assign


def pq_quantize_weight(weight: torch.Tensor, num_centroids: int = 256, subvector_dim: int = 4, *, seed: int = 0,
                       max_iter: int = 25, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """k-means product quantization of a float weight -> canonical PQ buffers (compressops/formats/pq.py).

    Args:
        weight: float [N, K]; K not a multiple of subvector_dim is zero padded.
        num_centroids: k, 16 or 256 centroids per subspace.
        subvector_dim: d, weights per subvector (1, 2, 4, 8 or 16).
        seed, max_iter: as in kmeans_subspaces.
        name: the layer's name, used in error messages.
    Returns:
        (codes uint8 [N, S] (k=256) or [N, ceil(S/2)] (k=16, two codes a byte), codebooks float32
        [S, k, d]) with S = ceil(K / d).
    Raises:
        ValueError: not a 2-D float weight, NaN/Inf values, k or d unsupported.
    """
    if weight.dim() != 2 or not weight.is_floating_point():
        raise ValueError(f"{name}: expected a 2-D float weight [N, K], got {weight.dtype} {tuple(weight.shape)}")
    w = weight.detach().float()
    if not all_finite(w):
        raise ValueError(f"{name}: weight holds NaN/Inf values; PQ needs finite weights")
    if num_centroids not in pq_format.NUM_CENTROIDS or subvector_dim not in pq_format.SUBVECTOR_DIMS:
        raise ValueError(f"{name}: num_centroids must be in {pq_format.NUM_CENTROIDS} and subvector_dim in "
                         f"{pq_format.SUBVECTOR_DIMS}")
    n, kin = w.shape
    d = subvector_dim
    s = pq_format.num_subspaces(kin, d)
    wp = torch.zeros(n, s * d, dtype=torch.float32, device=w.device)
    wp[:, :kin] = w
    x = wp.view(n, s, d).transpose(0, 1).contiguous()  # [S, N, d]
    codebooks, assign = kmeans_subspaces(x, num_centroids, seed=seed, max_iter=max_iter)
    codes = assign.t().contiguous().to(torch.uint8)  # [N, S]
    if num_centroids == 16:
        codes = pq_format.pack_nibbles(codes)
    return codes, codebooks
