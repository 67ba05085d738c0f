"""k-means batched over independent subspaces (the codebook fit of product quantization), and the
product quantization of a weight with it."""

from __future__ import annotations

import torch

from .. import _loader, ops
from ..formats import pq as pq_format
from ..formats.checks import all_finite
from ..reference import pq as ref_pq


def _assign(xt: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(squared distance to the nearest centroid float32 [S, N], its index int64 [S, N], the
    coordinate sums float64 [S, k, d] and counts int64 [S, k] per centroid) for points xt float32
    [S, d, N] (coordinates planar) and centroids c float32 [S, k, d] (compressops.ops.kmeans_assign).

    The native op when the library is loaded (exact differences, one pass over the points per
    block of centroids), else its pure-PyTorch reference called directly, without the op's
    fallback warning: k-means is conversion, not inference, and runs fine in torch.
    """
    if _loader.native_loaded():
        return ops.kmeans_assign(xt, c)
    return ref_pq.kmeans_assign(xt, c)


def _sample(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One index per row of weights [S, N] with probability proportional to the weight
    (inverse CDF; much faster than torch.multinomial for this shape)."""
    cdf = torch.cumsum(weights, 1)  # float32: 3x faster than float64, and exact enough to sample with
    u = torch.rand(weights.shape[0], 1, generator=generator, dtype=torch.float32, device=weights.device)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_max_(weights.shape[1] - 1).squeeze(1)


def _sq_dist_to(xp: torch.Tensor, x2: torch.Tensor, cent: torch.Tensor) -> torch.Tensor:
    """|x - cent|^2 [S, N] for planar points xp [d, S, N] (x2 = |x|^2) and one centroid per
    subspace cent [S, d], as |x|^2 + |cent|^2 - 2 x.cent in d fused passes."""
    t = x2 + (cent * cent).sum(-1)[:, None]
    for j in range(xp.shape[0]):
        t.addcmul_(xp[j], cent[:, j, None], value=-2)
    return t.clamp_min_(0)


def kmeans_pp_init(x: torch.Tensor, k: int, generator: torch.Generator, xp: torch.Tensor | None = None,
                   x2: torch.Tensor | None = None) -> torch.Tensor:
    """k-means++ seeding for every subspace at once: x [S, N, d] -> centroids [S, k, d].

    xp (x as planar [d, S, N]) and x2 (|x|^2 [S, N]) may be passed when the caller has them.
    """
    s, n, d = x.shape
    xp = x.permute(2, 0, 1).contiguous() if xp is None else xp
    x2 = (x * x).sum(-1) if x2 is None else x2
    ar = torch.arange(s, device=x.device)
    first = torch.randint(n, (s,), generator=generator, device=x.device)
    cents = x.new_empty(s, k, d)
    cents[:, 0] = x[ar, first]
    best = _sq_dist_to(xp, x2, cents[:, 0])  # [S, N]
    for i in range(1, k):
        w = best
        total = w.sum(1, keepdim=True)
        # a subspace whose points all coincide with chosen centroids: sample uniformly
        if not bool((total > 0).all()):
            w = torch.where(total > 0, w, torch.ones_like(w))
        idx = _sample(w, generator)
        cents[:, i] = x[ar, idx]
        torch.minimum(best, _sq_dist_to(xp, x2, cents[:, i]), out=best)
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
    x = x.float().contiguous()
    s, n, d = x.shape
    xp = x.permute(2, 0, 1).contiguous()  # [d, S, N]: per-coordinate planes
    xt = xp.permute(1, 0, 2).contiguous()  # [S, d, N]: the batched product's operand
    x2 = (xp * xp).sum(0)  # [S, N]
    cents = kmeans_pp_init(x, k, g, xp, x2)
    assign = None
    prev_inertia = None
    for _ in range(max_iter):
        err, new_assign, sums, counts = _assign(xt, cents)  # [S, N], [S, N], [S, k, d], [S, k]
        inertia = float(err.sum())
        if assign is not None and torch.equal(new_assign, assign):
            break
        if prev_inertia is not None and prev_inertia - inertia <= tol * max(prev_inertia, 1e-30):
            assign = new_assign
            break
        assign, prev_inertia = new_assign, inertia
        new = (sums / counts.clamp_min(1)[..., None]).to(x.dtype)
        empty = counts == 0
        if empty.any() and n >= k:
            far = err.topk(k, dim=1).indices  # [S, k] worst-served points
            cand = torch.gather(x, 1, far[..., None].expand(s, k, d))
            new = torch.where(empty[..., None], cand, new)
        else:
            new = torch.where(empty[..., None], cents, new)
        cents = new
    assign = _assign(xt, cents)[1]
    return cents.contiguous(), assign


def pq_quantize_weight(weight: torch.Tensor, num_centroids: int = 256, subvector_dim: int = 4, *, seed: int = 0,
                       max_iter: int = 25, name: str = "weight") -> tuple[torch.Tensor, torch.Tensor]:
    """k-means product quantization of a float weight -> canonical PQ buffers (compressops/formats/pq.py).

    Args:
        weight: float [N, K]; K not a multiple of subvector_dim is zero padded.
        num_centroids: k, 16 or 256 centroids per subspace.
        subvector_dim: d, weights per subvector (1, 2, 4, 8 or 16).
        seed: as in kmeans_subspaces.
        max_iter: as in kmeans_subspaces.
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
