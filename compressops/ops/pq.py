"""The PQ (weight product quantization) ops: prepack and lookup-table linear (format: compressops/formats/pq.py)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..formats import pack_header
from ..formats import pq as fpq
from ..reference import pq as ref
from . import _register

__all__ = ["pq_pack", "pq_linear", "kmeans_assign"]


def _fake_pack(codes, codebooks, in_features):
    n, _, k, d = fpq.check_pack(codes, codebooks, in_features)
    return codes.new_empty(pack_header.pack_shape((n,), fpq.packed_bytes(n, in_features, d, k)), dtype=torch.uint8)


def _fake_linear(x, packed, bias=None, out_dtype=None):
    n, _, out_t, _ = fpq.check_linear("pq_linear", x, packed, bias, out_dtype)
    return x.new_empty((*x.shape[:-1], n), dtype=out_t)


def _fake_kmeans_assign(x_planar, centroids):
    s, d, n, k = fpq.check_kmeans_assign(x_planar, centroids)
    return (x_planar.new_empty((s, n)), x_planar.new_empty((s, n), dtype=torch.int64),
            x_planar.new_empty((s, k, d), dtype=torch.float64), x_planar.new_empty((s, k), dtype=torch.int64))


_register("pq_pack", _fake_pack, ref.pq_pack)
_register("kmeans_assign", _fake_kmeans_assign, ref.kmeans_assign)
_register("pq_linear", _fake_linear, ref.pq_linear, triton="pq_linear.pq_linear", dense_weight=fpq.dense_weight)


def pq_pack(codes: Tensor, codebooks: Tensor, in_features: int) -> Tensor:
    """Pack canonical PQ tensors for pq_linear.

    Args:
        codes: uint8 [N, S] (k=256) or [N, ceil(S/2)] (k=16, two 4-bit codes a byte, low nibble =
            even subspace), S = ceil(in_features / d). Any byte is valid: a code is below k by
            construction.
        codebooks: float32 [S, k, d], k in (16, 256), d in (1, 2, 4, 8, 16).
        in_features: K in [1, 2^31) (the layer's input width; K <= S * d, the rest is zero padding).
    Returns:
        uint8 [N, ceil(P / N)] with P = compressops.formats.pq.packed_bytes(N, K, d, k): the shared
        pack header (tag "pq", fields (d, k, S)), then the layout of compressops/formats/pq.py, zero
        padded. Lossless (formats.pq.unpack gives the inputs back). Build it once per layer and
        reuse it.
    """
    return torch.ops.compressops.pq_pack(codes, codebooks, in_features)


def pq_linear(x: Tensor, packed: Tensor, bias: Tensor | None = None, out_dtype: torch.dtype | None = None) -> Tensor:
    """Product-quantized linear by table lookup: y[n] = sum_s x_s . C_s[code(n, s)] + bias[n].

    Args:
        x: float32/bfloat16/float16 (..., K), any leading dims (including empty), any strides.
        packed: uint8 [N, R] from pq_pack(codes, codebooks, K); N, K, d and k come from its header.
        bias: optional float [N].
        out_dtype: float32, bfloat16 or float16; default x.dtype.
    Returns:
        (..., N) in out_dtype.
        k=256: fp32 tables, equal to compressops.reference.pq_linear within fp32 summation rounding
        (from 2 input rows on, the CPU kernel builds the tables of up to 16 rows side by side, so
        one code looks up all of them with contiguous vector loads).
        k=16: the CPU kernel quantizes each row's table to uint8 (one scale per row, one offset per
        subspace) and sums exactly in integers, so |y - reference| <= S * scale / 2 (plus fp32
        rounding), scale = max_s (max_c L[s, c] - min_c L[s, c]) / 255 for that input row. A row whose
        table cannot be quantized (x holding NaN/Inf, or a table or range beyond float32) is computed
        exactly, so NaN and Inf come out where x @ W.T has them.
    Gradient:
        x gets grad_out @ W (in x's dtype), W[n] = the codewords C_s[code(n, s)] side by side (for
        k=16 straight-through: the tables' uint8 rounding taken as the identity); bias gets
        grad_out summed over the leading dims. The pack is frozen.
    """
    return torch.ops.compressops.pq_linear(x, packed, bias, out_dtype)


def kmeans_assign(x_planar: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One Lloyd step of k-means, batched over independent subspaces (PQ's codebook fit): each
    point's nearest centroid in its own subspace, and what the centroid update needs.

    Args:
        x_planar: float32 [S, d, N]: N points of dimension d per subspace, coordinates planar
            (x_planar[s, j, i] = coordinate j of point i), any strides.
        centroids: float32 [S, k, d], k >= 1 centroids per subspace, on x_planar's device.
    Returns:
        (dist float32 [S, N], index int64 [S, N], sums float64 [S, k, d], counts int64 [S, k]):
        index[s, i] = argmin_c |x_i - C_s[c]|^2, dist[s, i] that squared distance, counts[s, c]
        the points with index c and sums[s, c] the sum of those points (float64, added in point
        order by the CPU kernel). The CPU kernel computes sum_j (x_j - c_j)^2 directly,
        each term one float32 subtraction and product, summed in j order without fused
        multiply-adds (so the distance is exact up to those d roundings, and a point on a centroid
        gets 0); ties go to the lower index; a point whose distances are all NaN gets index 0.
        The reference (compressops.reference.kmeans_assign, used without the native library)
        expands |x|^2 + |c|^2 - 2 c.x and takes candidates within 2^(ceil(log2 k) - 23) relative as
        tied, so the two may pick different centroids only where two distances are that close.
    Raises:
        ValueError: a wrong dtype, rank or shape, tensors on two devices, or an input requiring grad.
    """
    return torch.ops.compressops.kmeans_assign(x_planar, centroids)
