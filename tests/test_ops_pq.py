"""PQ ops against compressops.reference, on every CPU ISA level this machine runs.

Error bounds (against the exact float64 table + gather-sum of compressops.reference):
  k=256: fp32 tables and fp32 sums (one input row: that row's table, gathered; two or more rows:
        tables for tiles of 8 or 16 rows side by side, the same fp32 terms summed in another order):
        |err| <= 1e-5 * sum_i |x_i| |w_i| + 1e-6.
  k=16: the table is quantized to uint8 per input row (scale = max_s range_s / 255, offset per
        subspace) and summed exactly in integers: |err| <= S * scale / 2, plus the fp32 term above.
"""

import pytest
import torch

import compressops as co
from compressops import ops, reference
from compressops.formats import pq as fpq

from .helpers import expected_kernel_level, OPCHECK_UTILS, isa_params, randn_nonzero, requires_cuda, requires_native


# (batch shape, K, N, d, k): M in {0, 1, 3, 8, 64+}, odd K (not a multiple of d) and odd N
SHAPES = [
    ((1,), 1, 1, 1, 16),
    ((1,), 64, 33, 4, 16),
    ((3,), 67, 65, 4, 16),
    ((2, 4), 130, 40, 2, 16),
    ((8,), 300, 70, 8, 16),
    ((65,), 129, 97, 16, 16),
    ((9,), 4100, 40, 1, 16),  # several row tiles in the k=16 scan (tables > 256 KiB)
    ((1,), 64, 33, 4, 256),
    ((3,), 67, 17, 4, 256),
    ((2, 4), 130, 40, 1, 256),
    ((65,), 300, 70, 8, 256),
    ((5,), 129, 9, 16, 256),
]


def make_layer(k_in, n, d, k, bias=True):
    s = fpq.num_subspaces(k_in, d)
    codebooks = randn_nonzero(s, k, d)
    codes = torch.randint(0, k, (n, s), dtype=torch.uint8)
    canon = fpq.pack_nibbles(codes) if k == 16 else codes
    return canon, codebooks, ops.pq_pack(canon, codebooks, k_in), (randn_nonzero(n) if bias else None)


def bound(x, codebooks, canon, k_in, k):
    """Per-output error bound [M, N] of the kernel against the reference (see module docstring)."""
    s = codebooks.shape[0]
    tab = reference.pq_tables(x, codebooks, k_in)  # [M, S, k]
    w = fpq.dequantize(canon, codebooks, k_in).double()
    b = 1e-5 * (x.reshape(-1, k_in).double().abs() @ w.abs().t()) + 1e-6
    if k == 16:
        scale = (tab.amax(2) - tab.amin(2)).amax(1) / 255  # [M]
        b = b + (s * scale / 2)[:, None] * 1.0001
    return b.float()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pack_matches_python_and_roundtrips(shape):
    _, k_in, n, d, k = shape
    canon, cb, packed, _ = make_layer(k_in, n, d, k)
    assert torch.equal(packed, fpq.pack(canon, cb, k_in))
    codes, cb2, kin2 = fpq.unpack(packed)
    assert kin2 == k_in and torch.equal(cb2, cb)
    assert torch.equal(codes, fpq.unpacked_codes(canon, cb.shape[0], k))
    assert packed.numel() == fpq.packed_bytes(n, k_in, d, k)


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear_within_bound(level, shape, dtype):
    batch, k_in, n, d, k = shape
    canon, cb, packed, bias = make_layer(k_in, n, d, k, bias=len(batch) == 1)
    x = randn_nonzero(*batch, k_in, dtype=dtype)
    x_copy = x.clone()
    with co.cpu_isa(level):
        y = ops.pq_linear(x, packed, k_in, n, bias, out_dtype=torch.float32)
        ran = torch.ops.compressops._last_kernel_isa("pq_linear")
    assert ran == expected_kernel_level("pq_linear", level)
    assert torch.equal(x, x_copy)
    ref = reference.pq_linear(x, packed, k_in, n, bias, out_dtype=torch.float32)
    assert y.shape == (*batch, n) and y.dtype == torch.float32
    err = (y - ref).reshape(-1, n).abs()
    b = bound(x, cb, canon, k_in, k)
    assert (err <= b).all(), f"max err {err.max()} vs bound {b.min()}"
    if k == 16:  # the bound is not vacuous: the error is far below the range outputs can take
        # (not the output itself: with K=1 one output can sit near zero by chance)
        out_range = (x.reshape(-1, k_in).float().abs().sum(1) * cb.abs().max()).max()
        assert err.max() < 0.05 * out_range + 1e-3


# k=256 from M=2 on (the batched kernel): row tiles of 8 (M <= 8) or 16, 16-subspace chunks,
# output blocks of 8 split over threads. (M, K, N, d): M around the threshold and tile sizes (and
# not a multiple of them), S not a multiple of 16, N odd or below one block, every d.
BATCH256 = [
    (1, 67, 17, 4),     # S=17, one row: the gather path
    (2, 67, 17, 4),     # S=17
    (7, 33, 9, 1),      # S=33
    (8, 130, 41, 2),    # S=65
    (9, 300, 70, 8),    # S=38, first 16-row tile
    (16, 129, 33, 16),  # S=9
    (17, 64, 8, 4),     # S=16, N one block
    (33, 250, 101, 2),  # S=125, three tiles
    (40, 31, 3, 16),    # S=2, N < 8
]


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("shape", BATCH256, ids=str)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_k256_batched_within_bound(level, shape, threads, dtype):
    m, k_in, n, d = shape
    canon, cb, packed, bias = make_layer(k_in, n, d, 256, bias=m % 2 == 1)
    x = randn_nonzero(m, k_in, dtype=dtype)
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with co.cpu_isa(level):
            y = ops.pq_linear(x, packed, k_in, n, bias, out_dtype=torch.float32)
            assert torch.ops.compressops._last_kernel_isa("pq_linear") == expected_kernel_level("pq_linear", level)
    finally:
        torch.set_num_threads(prev)
    ref = reference.pq_linear(x, packed, k_in, n, bias, out_dtype=torch.float32)
    assert y.shape == (m, n)
    err = (y - ref).abs()
    b = bound(x, cb, canon, k_in, 256)
    assert (err <= b).all(), f"max err {err.max()} vs bound {b.min()}"
    # every row of x takes part: row i of y depends on row i of x only
    x2 = x.clone()
    x2[-1] = 0
    with co.cpu_isa(level):
        y2 = ops.pq_linear(x2, packed, k_in, n, bias, out_dtype=torch.float32)
    torch.testing.assert_close(y2[:-1], y[:-1], rtol=0, atol=0)
    torch.testing.assert_close(y2[-1], bias if bias is not None else torch.zeros(n), rtol=0, atol=0)


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("k", [16, 256])
@pytest.mark.parametrize("m", [2, 6])
def test_no_uint16_overflow_and_flush(level, k, m):
    # every lookup hits the largest table entry: the uint8 tables are all 255 at the looked-up
    # code, and S = 1100 > 256 forces several 16-bit -> 32-bit flushes (m=2: the block-outer
    # k=16 scan; m=6: the chunked one, a group of 4 rows and 2 single rows)
    k_in, n, d = 1100, 40, 1
    s = k_in
    cb = torch.zeros(s, k, d)
    cb[:, k - 1] = 1.0
    codes = torch.full((n, s), k - 1, dtype=torch.uint8)
    canon = fpq.pack_nibbles(codes) if k == 16 else codes
    packed = ops.pq_pack(canon, cb, k_in)
    x = torch.ones(m, k_in)
    with co.cpu_isa(level):
        y = ops.pq_linear(x, packed, k_in, n)
    torch.testing.assert_close(y, torch.full((m, n), float(k_in)), rtol=1e-6, atol=0)


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("k", [16, 256])
def test_empty_batch_noncontiguous_and_out_dtype(level, k):
    canon, cb, packed, bias = make_layer(70, 45, 4, k)
    with co.cpu_isa(level):
        y0 = ops.pq_linear(torch.randn(0, 70), packed, 70, 45, bias)
        assert y0.shape == (0, 45)
        big = randn_nonzero(70, 6).t()  # [6, 70], stride (1, 6)
        y = ops.pq_linear(big, packed, 70, 45, bias)
        yc = ops.pq_linear(big.contiguous(), packed, 70, 45, bias)
        torch.testing.assert_close(y, yc, rtol=0, atol=0)
        yb = ops.pq_linear(big.bfloat16(), packed, 70, 45, bias)
        assert yb.dtype == torch.bfloat16
        yh = ops.pq_linear(big, packed, 70, 45, bias, out_dtype=torch.float16)
        assert yh.dtype == torch.float16


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("k", [16, 256])
def test_nan_centroid_is_never_dropped(level, k):
    # One NaN centroid that is not the first of its subspace: a check of only each subspace's min
    # and max misses it (NaN compares false), and the k=16 path would quantize it to a number.
    k_in, n, d = 64, 33, 4
    s = fpq.num_subspaces(k_in, d)
    cb = randn_nonzero(s, k, d)
    cb[3, 5, 1] = float("nan")
    codes = torch.randint(0, k, (n, s), dtype=torch.uint8)
    codes[::4, 3] = 5  # every fourth output row reads the NaN centroid
    codes[1::4, 3] = 6
    canon = fpq.pack_nibbles(codes) if k == 16 else codes
    packed = ops.pq_pack(canon, cb, k_in)
    x = randn_nonzero(3, k_in)
    ref = reference.pq_linear(x, packed, k_in, n)
    with co.cpu_isa(level):
        y = ops.pq_linear(x, packed, k_in, n)
    hit = torch.isnan(ref)
    assert hit[:, ::4].all() and hit.any(1).all()
    assert torch.isnan(y[hit]).all()
    if k == 256:  # exact tables: only the outputs that read the NaN centroid are NaN
        assert torch.equal(torch.isnan(y), hit)


# (M, K, N, d, k, route): from M=256 a few output rows with k=256 (or d=1 with k=16) decode the
# weight and run a dense GEMM; the table kernels keep every other case (see pq_prefer_dense).
# K not a multiple of d, S not a multiple of 16 (k=256 chunks) or odd (k=16 pairs), N odd.
DENSE_ROUTE = [
    (256, 131, 45, 4, 256, "dense"),
    (300, 130, 40, 2, 256, "dense"),
    (256, 67, 45, 1, 16, "dense"),
    (256, 3001, 403, 1, 16, "dense"),  # decoded in two blocks (336 + 67 rows), the second not 32-aligned
    (256, 3001, 403, 2, 256, "dense"),
    (255, 131, 45, 4, 256, "table"),   # below the batch threshold
    (256, 64, 4096, 4, 256, "table"),  # many output rows amortize the table build
    (256, 67, 400, 4, 16, "table"),    # k=16 tables are cheap
]


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("case", DENSE_ROUTE, ids=str)
def test_large_batch_route_within_bound(level, case):
    # the route does not depend on the forced level; the table cases run that level's kernels at M >= 256
    m, k_in, n, d, k, route = case
    canon, cb, packed, bias = make_layer(k_in, n, d, k)
    x = randn_nonzero(k_in, m).t()  # non-contiguous rows
    with co.cpu_isa(level):
        for b in (bias, None):
            y = ops.pq_linear(x, packed, k_in, n, b)
            ran = torch.ops.compressops._last_kernel_isa("pq_linear")
            assert ran == ("dense" if route == "dense" else expected_kernel_level("pq_linear", level))
            ref = reference.pq_linear(x, packed, k_in, n, b)
            err = (y - ref).abs()
            assert (err <= bound(x, cb, canon, k_in, k)).all(), f"max err {err.max()}"
        yb = ops.pq_linear(x.bfloat16(), packed, k_in, n, bias)
    assert yb.dtype == torch.bfloat16 and yb.shape == (m, n)


@requires_native
def test_ops_are_native():
    assert ops.native_kernels("pq_linear") == ["CPU"]
    assert ops.native_kernels("pq_pack") == ["CPU"]
    assert "avx2" in torch.ops.compressops._kernel_isas("pq_linear") or co.detected_isa() == "scalar"


@pytest.mark.parametrize("k", [16, 256])
def test_opcheck(k):
    canon, cb, packed, bias = make_layer(37, 21, 4, k)
    torch.library.opcheck(torch.ops.compressops.pq_pack.default, (canon, cb, 37), test_utils=OPCHECK_UTILS)
    torch.library.opcheck(torch.ops.compressops.pq_linear.default, (randn_nonzero(3, 37), packed, 37, 21, bias, None),
                          test_utils=OPCHECK_UTILS)


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_bad_inputs(impl):
    fn = ops.pq_linear if impl == "native" else reference.pq_linear
    pack = ops.pq_pack if impl == "native" else reference.pq_pack
    canon, cb, packed, bias = make_layer(40, 16, 4, 16)
    x = randn_nonzero(2, 40)
    err = (RuntimeError, ValueError, TypeError)
    with pytest.raises(err, match="K="):
        fn(randn_nonzero(2, 41), packed, 40, 16)
    with pytest.raises(err, match="x must be"):
        fn(x.to(torch.int32), packed, 40, 16)
    with pytest.raises(err, match="packed"):
        fn(x, packed.float(), 40, 16)
    with pytest.raises(err, match="packed"):
        fn(x, packed[:-1].contiguous(), 40, 16)
    bad = packed.clone()
    bad[0] ^= 0xFF
    with pytest.raises(err, match="PQ pack"):
        fn(x, bad, 40, 16)
    with pytest.raises(err, match="out_features"):
        fn(x, packed, 40, 17)
    with pytest.raises(err, match="bias"):
        fn(x, packed, 40, 16, randn_nonzero(15))
    with pytest.raises(err, match="codebooks"):
        pack(canon, cb.double(), 40)
    with pytest.raises(err, match="k in"):
        pack(canon, torch.randn(10, 8, 4), 40)
    with pytest.raises(err, match="codes"):
        pack(canon[:, :-1].contiguous(), cb, 40)
    with pytest.raises(err, match="in_features"):
        pack(canon, cb, 45)


_TRITON_SCRIPT = r"""
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
import torch
from compressops import reference
from compressops.formats import pq as fpq
from compressops.triton.pq_linear import pq_linear
torch.manual_seed(0)
for k_in, n, d, k, m in ((37, 20, 4, 16, 2), (40, 9, 8, 256, 1), (70, 33, 2, 256, 2), (5, 3, 1, 16, 0)):
    s = fpq.num_subspaces(k_in, d)
    cb = torch.randn(s, k, d)
    codes = torch.randint(0, k, (n, s), dtype=torch.uint8)
    canon = fpq.pack_nibbles(codes) if k == 16 else codes
    p = fpq.pack(canon, cb, k_in)
    x, b = torch.randn(m, k_in), torch.randn(n)
    torch.testing.assert_close(pq_linear(x, p, k_in, n, b), reference.pq_linear(x, p, k_in, n, b),
                               rtol=1e-5, atol=1e-5)
print("ok")
"""


def test_triton_kernel_under_interpreter():
    pytest.importorskip("triton")
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], cwd=root, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


@requires_cuda
@pytest.mark.parametrize("k", [16, 256])
def test_cuda_pq_linear_matches_reference(k):
    canon, cb, packed, bias = make_layer(67, 45, 4, k)
    x = randn_nonzero(3, 67)
    y = ops.pq_linear(x.cuda(), packed.cuda(), 67, 45, bias.cuda())
    torch.testing.assert_close(y.cpu(), reference.pq_linear(x, packed, 67, 45, bias), rtol=1e-4, atol=1e-4)
