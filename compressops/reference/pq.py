"""Reference of the PQ (product quantization) ops (format: compressops/formats/pq.py)."""

from __future__ import annotations

import torch

from ..formats import pq as fpq

__all__ = ["pq_pack", "pq_tables", "pq_linear", "kmeans_assign"]

# Distances per block of subspaces in kmeans_assign: the [block, k, N] distance tensor stays a few
# MiB (cache-resident) instead of S * k * N floats (4 GiB for a 4096x4096 layer at k=256).
_ASSIGN_BLOCK_ELEMS = 1 << 20


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


def kmeans_assign(x_planar: torch.Tensor, centroids: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Nearest centroid, and the counts and float64 sums per centroid, in torch; see
    compressops.ops.kmeans_assign.

    The distances are |x|^2 + |c|^2 - 2 c.x, a block of subspaces at a time: by d fused
    multiply-adds for d <= 4 (a batched matrix product with an inner dimension that small is
    slower), else one batched product. The nearest centroid is found with a min over k of int32
    keys: a distance >= 0 orders like its float32 bit pattern, whose lowest ceil(log2 k) mantissa
    bits are replaced by the centroid index. torch.min(dim) with indices over k is a slow scalar
    loop; amin over an outer dimension is vectorized and about 20x faster. Candidates closer than
    2^(ceil(log2 k) - 23) relative count as tied (the lower index wins), and the distance returned
    is truncated to those bits. A distance that rounding made slightly negative (a point on a
    centroid) sorts below every positive one and is returned as is.
    """
    s, d, n, k = fpq.check_kmeans_assign(x_planar, centroids)
    xt, c = x_planar, centroids
    x2 = (xt * xt).sum(1)  # [S, N]
    bits = max(1, (k - 1).bit_length())
    low = (1 << bits) - 1
    index = torch.arange(k, dtype=torch.int32, device=xt.device)[None, :, None]
    c2 = (c * c).sum(-1)[:, :, None]  # [S, k, 1]
    dist = xt.new_empty(s, n)
    assign = torch.empty(s, n, dtype=torch.long, device=xt.device)
    step = max(1, _ASSIGN_BLOCK_ELEMS // max(1, n * k))
    for s0 in range(0, s, step):
        s1 = min(s, s0 + step)
        if d <= 4:
            part = torch.add(c2[s0:s1], x2[s0:s1, None, :])  # [b, k, N]
            for j in range(d):
                part.addcmul_(c[s0:s1, :, j, None], xt[s0:s1, None, j, :], value=-2)
        else:
            part = torch.baddbmm(c2[s0:s1], c[s0:s1], xt[s0:s1], alpha=-2).add_(x2[s0:s1, None, :])
        key = part.view(torch.int32).bitwise_and_(~low).bitwise_or_(index).amin(1)  # [b, N]
        assign[s0:s1] = key & low
        dist[s0:s1] = (key & ~low).view(torch.float32)
    flat = (assign + torch.arange(s, device=xt.device)[:, None] * k).view(-1)
    counts = torch.bincount(flat, minlength=s * k).view(s, k)
    sums = torch.stack([xt.new_zeros(s * k, dtype=torch.float64).scatter_add_(0, flat, xt[:, j].reshape(-1).double())
                        for j in range(d)], -1).view(s, k, d)
    return dist, assign, sums, counts
