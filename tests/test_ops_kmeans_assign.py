"""compressops::kmeans_assign (a Lloyd step of PQ's k-means: assignment, then counts and sums per
centroid) against an exact float64 oracle and compressops.reference.kmeans_assign, on every CPU ISA
level this machine runs.

The native kernel's distance is sum_j (x_j - c_j)^2 in float32 (one rounding per operation, j
order): within a relative (d + 3) * 2^-24 of the exact value. The chosen centroid is the nearest
under that rounding, so its exact distance is within twice that of the true minimum.
"""

import pytest
import torch

import compressops as co
from compressops import ops, reference

from .helpers import OPCHECK_UTILS, call_both, expected_kernel_level, isa_params, requires_native

# (S, d, N, k): d at every specialised width and a generic one, N across a 256-point block edge, k = 1
SHAPES = [(1, 1, 1, 1), (3, 2, 5, 16), (5, 4, 300, 16), (2, 8, 257, 16), (2, 3, 40, 7), (2, 16, 33, 256),
          (4, 4, 513, 256)]


def _exact(x_planar, c):
    """float64 squared distances [S, k, N]."""
    diff = x_planar.double()[:, None, :, :] - c.double()[:, :, :, None]  # [S, k, d, N]
    return (diff * diff).sum(2)


def _check_sums(x_planar, index, sums, counts):
    """counts and float64 sums per centroid of the assignment `index` (float32 points: float64 sums of
    a few hundred of them are exact to ~1e-13 relative)."""
    s, d, _ = x_planar.shape
    k = counts.shape[1]
    onehot = torch.nn.functional.one_hot(index, k).double()  # [S, N, k]
    assert counts.dtype == torch.int64 and torch.equal(counts, onehot.sum(1).long())
    want = torch.einsum("snk,sdn->skd", onehot, x_planar.double())
    assert sums.dtype == torch.float64 and sums.shape == (s, k, d)
    assert torch.allclose(sums, want, rtol=1e-12, atol=1e-12)


def _case(shape, gen):
    s, d, n, k = shape
    return torch.randn(s, d, n, generator=gen), torch.randn(s, k, d, generator=gen)


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_nearest_within_rounding(level, shape):
    gen = torch.Generator().manual_seed(sum(shape))
    x, c = _case(shape, gen)
    with co.cpu_isa(level):
        dist, index, sums, counts = ops.kmeans_assign(x, c)
        ran = torch.ops.compressops._last_kernel_isa("kmeans_assign")
    assert ran == expected_kernel_level("kmeans_assign", level)
    s, d, n, _ = shape
    assert dist.shape == index.shape == (s, n) and dist.dtype == torch.float32 and index.dtype == torch.int64
    exact = _exact(x, c)
    best = exact.amin(1)
    chosen = exact.gather(1, index[:, None, :]).squeeze(1)
    rel = 2 * (d + 3) * 2.0**-24
    assert (chosen <= best * (1 + rel) + 1e-30).all()
    assert torch.allclose(dist.double(), chosen, rtol=(d + 3) * 2.0**-24, atol=0)
    _check_sums(x, index, sums, counts)
    # the reference agrees wherever its coarser tie rule sees no near-tie
    ref_index = reference.kmeans_assign(x, c)[1]
    second = exact.topk(min(2, shape[3]), dim=1, largest=False).values[:, -1]
    clear = second > best * (1 + 2.0**-10)
    assert torch.equal(index[clear], ref_index[clear])


@requires_native
@pytest.mark.parametrize("level", isa_params())
def test_integer_points_equal_the_reference_and_ties_take_the_lower_index(level):
    # small integers: every distance exact in both, so the two must agree everywhere, exact ties included
    gen = torch.Generator().manual_seed(7)
    x = torch.randint(-6, 7, (6, 4, 301), generator=gen).float()
    c = torch.randint(-6, 7, (6, 16, 4), generator=gen).float()
    c[:, 9] = c[:, 3]  # a duplicated centroid: always a tie, which index 3 must win
    with co.cpu_isa(level):
        got = ops.kmeans_assign(x, c)
    want = reference.kmeans_assign(x, c)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))  # sums of integers: exact
    index = got[1]
    assert torch.equal(index, _exact(x, c).argmin(1))  # argmin: the first minimum
    assert not (index == 9).any() and (index == 3).any()


@requires_native
def test_strided_input_and_nan_points():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 40, 4, generator=gen).transpose(1, 2)  # [3, 4, 40], not contiguous
    c = torch.randn(3, 16, 4, generator=gen)
    x[1, 2, 5] = float("nan")
    dist, index, sums, counts = ops.kmeans_assign(x, c)
    want_dist, want_index, want_sums, want_counts = ops.kmeans_assign(x.contiguous(), c)
    assert torch.equal(index, want_index) and torch.allclose(dist, want_dist, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(counts, want_counts) and torch.allclose(sums, want_sums, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(dist[1, 5]) and index[1, 5] == 0
    assert torch.isfinite(dist[0]).all() and torch.isfinite(dist[1, :5]).all()


@requires_native
def test_empty_points():
    dist, index, sums, counts = ops.kmeans_assign(torch.randn(3, 4, 0), torch.randn(3, 16, 4))
    assert dist.shape == index.shape == (3, 0)
    assert torch.equal(sums, torch.zeros(3, 16, 4, dtype=torch.float64)) and torch.equal(counts, torch.zeros(3, 16).long())


@pytest.mark.parametrize("make, message", [
    (lambda: (torch.randn(2, 4, 8).double(), torch.randn(2, 16, 4)), "x_planar must be float32 [S, d, N]"),
    (lambda: (torch.randn(2, 4, 8), torch.randn(2, 16, 4).half()), "centroids must be float32 [S, k, d]"),
    (lambda: (torch.randn(2, 4, 8), torch.randn(3, 16, 4)), "centroids must be [S, k, d] = [2, k, 4]"),
    (lambda: (torch.randn(2, 4, 8), torch.randn(2, 16, 2)), "centroids must be [S, k, d] = [2, k, 4]"),
    (lambda: (torch.randn(2, 4, 8), torch.randn(2, 0, 4)), "need d >= 1 and k >= 1"),
    (lambda: (torch.randn(8, 4), torch.randn(2, 16, 4)), "x_planar must be float32 [S, d, N]"),
    (lambda: (torch.randn(2, 4, 8), torch.randn(2, 16, 4, device="meta")), "centroids must be on x_planar's device"),
    (lambda: (torch.randn(2, 4, 8, requires_grad=True), torch.randn(2, 16, 4)), "has no gradient"),
])
def test_bad_input_same_message(make, message):
    native, ref = call_both(ops.kmeans_assign, reference.kmeans_assign, *make())
    assert native == ref and message in native, (native, ref)


def test_opcheck():
    gen = torch.Generator().manual_seed(0)
    for s, d, n, k in ((3, 4, 37, 16), (2, 3, 9, 5)):
        args = (torch.randn(s, d, n, generator=gen), torch.randn(s, k, d, generator=gen))
        torch.library.opcheck(torch.ops.compressops.kmeans_assign.default, args, test_utils=OPCHECK_UTILS)
