"""PQ ops against compressops.reference, on every CPU ISA level this machine runs.

Error bounds (against the exact float64 table + gather-sum of compressops.reference):
  k=256: fp32 tables and fp32 sums (one input row: that row's table, gathered; two or more rows:
        tables for tiles of 8 or 16 rows side by side, the same fp32 terms summed in another order):
        |err| <= 1e-5 * sum_i |x_i| |w_i| + 1e-6.
  k=16: the table is quantized to uint8 per input row (scale = max_s range_s / 255, offset per
        subspace) and summed exactly in integers: |err| <= S * scale / 2, plus the fp32 term above.
"""

import re
import struct

import pytest
import torch

import compressops as co
from compressops import ops, reference
from compressops.formats import pq as fpq

from .helpers import (NON_FINITE, OPCHECK_UTILS, call_both, expected_kernel_level, grad_leaf, isa_params,
                     non_finite_x, randn_nonzero, requires_cuda, requires_native, same_non_finite, tampered)


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


def header_bytes(n, k_in, d, k, tag=b"pq", version=1):
    return struct.pack("<4sI8sIIqq3q", b"COPK", 1, tag, version, 0, n, k_in, d, k, fpq.num_subspaces(k_in, d))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pack_matches_python_and_roundtrips(shape):
    _, k_in, n, d, k = shape
    canon, cb, packed, _ = make_layer(k_in, n, d, k)
    nbytes = fpq.packed_bytes(n, k_in, d, k)
    assert packed.dtype == torch.uint8 and packed.shape == (n, -(-nbytes // n))
    flat = packed.view(-1)
    assert bytes(flat[:64].tolist()) == header_bytes(n, k_in, d, k)
    assert not flat[nbytes:].any()  # the row padding is zero
    assert torch.equal(packed, fpq.pack(canon, cb, k_in))
    codes, cb2, kin2 = fpq.unpack(packed)
    assert kin2 == k_in and torch.equal(cb2.view(torch.int32), cb.view(torch.int32))
    assert torch.equal(codes, canon)
    # the codebooks are a view into the pack
    view = fpq.unpack_codebooks(packed)
    assert view.untyped_storage().data_ptr() == packed.untyped_storage().data_ptr()
    # non-contiguous canonical tensors pack to the same bytes
    assert torch.equal(ops.pq_pack(canon.t().contiguous().t(), cb.transpose(0, 2).contiguous().transpose(0, 2),
                                   k_in), packed)


@pytest.mark.parametrize("k", [16, 256])
def test_pack_keeps_every_canonical_bit(k):
    """Any code byte and any float (NaN payloads, -0.0) survive pack + unpack: the layer's codes and
    codebooks properties are exact. k=16 with odd S: the last byte's high nibble (0 in the
    canonical format, here set) comes back too."""
    k_in, n, d = 37, 41, 8
    s = fpq.num_subspaces(k_in, d)
    assert s == 5
    cb = randn_nonzero(s, k, d)
    cb.view(torch.int32)[0, 0, 0] = 0x7FC01234  # a NaN with a payload
    cb[1, 1, 1] = -0.0
    canon = torch.randint(0, 256, fpq.codes_shape(n, s, k), dtype=torch.uint8)
    for pack in (ops.pq_pack, fpq.pack):
        packed = pack(canon, cb, k_in)
        codes, cb2, _ = fpq.unpack(packed)
        assert torch.equal(codes, canon)
        assert torch.equal(cb2.view(torch.int32), cb.view(torch.int32))


@pytest.mark.parametrize("k", [16, 256])
def test_zero_pack_is_the_pack_of_zero_tensors(k):
    k_in, n, d = 67, 45, 4
    s = fpq.num_subspaces(k_in, d)
    zero = fpq.zero_pack(n, k_in, d, k)
    codes = torch.zeros(fpq.codes_shape(n, s, k), dtype=torch.uint8)
    assert torch.equal(ops.pq_pack(codes, torch.zeros(s, k, d), k_in), zero)
    assert torch.equal(fpq.pack(codes, torch.zeros(s, k, d), k_in), zero)


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
        y = ops.pq_linear(x, packed, bias, out_dtype=torch.float32)
        ran = torch.ops.compressops._last_kernel_isa("pq_linear")
    assert ran == expected_kernel_level("pq_linear", level)
    assert torch.equal(x, x_copy)
    ref = reference.pq_linear(x, packed, bias, out_dtype=torch.float32)
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
            y = ops.pq_linear(x, packed, bias, out_dtype=torch.float32)
            assert torch.ops.compressops._last_kernel_isa("pq_linear") == expected_kernel_level("pq_linear", level)
    finally:
        torch.set_num_threads(prev)
    ref = reference.pq_linear(x, packed, bias, out_dtype=torch.float32)
    assert y.shape == (m, n)
    err = (y - ref).abs()
    b = bound(x, cb, canon, k_in, 256)
    assert (err <= b).all(), f"max err {err.max()} vs bound {b.min()}"
    # every row of x takes part: row i of y depends on row i of x only
    x2 = x.clone()
    x2[-1] = 0
    with co.cpu_isa(level):
        y2 = ops.pq_linear(x2, packed, bias, out_dtype=torch.float32)
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
        y = ops.pq_linear(x, packed)
    torch.testing.assert_close(y, torch.full((m, n), float(k_in)), rtol=1e-6, atol=0)


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("k", [16, 256])
def test_empty_batch_noncontiguous_and_out_dtype(level, k):
    canon, cb, packed, bias = make_layer(70, 45, 4, k)
    with co.cpu_isa(level):
        y0 = ops.pq_linear(torch.randn(0, 70), packed, bias)
        assert y0.shape == (0, 45)
        big = randn_nonzero(70, 6).t()  # [6, 70], stride (1, 6)
        y = ops.pq_linear(big, packed, bias)
        yc = ops.pq_linear(big.contiguous(), packed, bias)
        torch.testing.assert_close(y, yc, rtol=0, atol=0)
        yb = ops.pq_linear(big.bfloat16(), packed, bias)
        assert yb.dtype == torch.bfloat16
        yh = ops.pq_linear(big, packed, bias, out_dtype=torch.float16)
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
    ref = reference.pq_linear(x, packed)
    with co.cpu_isa(level):
        y = ops.pq_linear(x, packed)
    hit = torch.isnan(ref)
    assert hit[:, ::4].all() and hit.any(1).all()
    assert torch.isnan(y[hit]).all()
    if k == 256:  # exact tables: only the outputs that read the NaN centroid are NaN
        assert torch.equal(torch.isnan(y), hit)


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("k", [16, 256])
@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("m", [1, 5])
def test_non_finite_x_gives_the_products_pattern(level, k, value, m):
    """An Inf or NaN in x gives the reference's +-Inf/NaN pattern (k=16 computes a row whose table
    cannot be quantized exactly, instead of a row of NaN); the finite rows stay within the bound."""
    k_in, n, d = 37, 19, 4
    canon, cb, packed, bias = make_layer(k_in, n, d, k)
    cb = cb.clone()
    cb[0, :, 1] = 0  # x[0, 1] = Inf meets a zero in every centroid of subspace 0: NaN, not Inf
    packed = ops.pq_pack(canon, cb, k_in)
    x = non_finite_x(value, m, k_in)
    with co.cpu_isa(level):
        y = ops.pq_linear(x, packed, bias)
    ref = reference.pq_linear(x, packed, bias)
    fin = same_non_finite(y, ref)
    assert not fin[0].any()
    if m > 2:
        assert ((y - ref).abs()[1:-1] <= bound(x[1:-1], cb, canon, k_in, k)).all()


@requires_native
@pytest.mark.parametrize("level", isa_params())
def test_k16_codebooks_near_float_max(level):
    """Tables of centroids near float max overflow float32 (or their range does): such rows are
    computed exactly, giving the reference's Inf and finite outputs, not a row of NaN."""
    k_in, n, d = 40, 33, 4
    canon, cb, _, bias = make_layer(k_in, n, d, 16)
    cb = (torch.rand(cb.shape) * 2 - 1) * 3.0e38
    packed = ops.pq_pack(canon, cb, k_in)
    x = randn_nonzero(4, k_in) * torch.tensor([[1.0], [0.3], [1e-2], [1e-30]])
    with co.cpu_isa(level):
        y = ops.pq_linear(x, packed, bias)
    ref = reference.pq_linear(x, packed, bias)
    fin = same_non_finite(y, ref)
    assert fin.any() and not fin.all()
    assert ((y - ref).abs()[fin] <= bound(x, cb, canon, k_in, 16)[fin]).all()


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


_ROUTE_CASES = {}


def _route_case(case):
    """One fresh random layer, input, reference outputs (with and without bias) and bound per case,
    shared by the levels of one run: the reference at these sizes costs more than every kernel."""
    if case not in _ROUTE_CASES:
        m, k_in, n, d, k, _ = case
        canon, cb, packed, bias = make_layer(k_in, n, d, k)
        x = randn_nonzero(k_in, m).t()  # non-contiguous rows
        refs = [reference.pq_linear(x, packed, b) for b in (bias, None)]
        _ROUTE_CASES[case] = (canon, cb, packed, bias, x, refs, bound(x, cb, canon, k_in, k))
    return _ROUTE_CASES[case]


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("case", DENSE_ROUTE, ids=str)
def test_large_batch_route_within_bound(level, case):
    # the route does not depend on the forced level; the table cases run that level's kernels at M >= 256
    m, k_in, n, d, k, route = case
    canon, cb, packed, bias, x, refs, tol = _route_case(case)
    with co.cpu_isa(level):
        for b, ref in zip((bias, None), refs):
            y = ops.pq_linear(x, packed, b)
            ran = torch.ops.compressops._last_kernel_isa("pq_linear")
            assert ran == ("dense" if route == "dense" else expected_kernel_level("pq_linear", level))
            err = (y - ref).abs()
            assert (err <= tol).all(), f"max err {err.max()}"
        yb = ops.pq_linear(x.bfloat16(), packed, bias)
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
    torch.library.opcheck(torch.ops.compressops.pq_linear.default, (randn_nonzero(3, 37), packed, bias, None),
                          test_utils=OPCHECK_UTILS)
    torch.library.opcheck(torch.ops.compressops.pq_linear.default, (randn_nonzero(2, 4, 37), packed, None),
                          {"out_dtype": torch.bfloat16}, test_utils=OPCHECK_UTILS)
    # with gradients (of x and bias; the weight is frozen): the autograd and compiled-backward checks
    torch.library.opcheck(torch.ops.compressops.pq_linear.default, (grad_leaf(randn_nonzero(3, 37)), packed,
                                                                    grad_leaf(bias)), test_utils=OPCHECK_UTILS)
    torch.library.opcheck(torch.ops.compressops.pq_linear.default, (grad_leaf(randn_nonzero(2, 4, 37)), packed, None),
                          {"out_dtype": torch.bfloat16}, test_utils=OPCHECK_UTILS)


def _bad_layer():
    """k=16, d=4, K=40 (S=10), N=16: 64 + 2560 + 160 = 2784 bytes, a [16, 174] pack."""
    return make_layer(40, 16, 4, 16)


def _bad_linear_calls():
    canon, cb, packed, bias = _bad_layer()
    x = randn_nonzero(2, 40)
    return {  # name -> (args, message)
        "x K": ((randn_nonzero(2, 41), packed), r"x has K=41 in its last dimension but the weight has K=40"),
        "x dtype": ((x.to(torch.int32), packed), r"x must be float32, bfloat16 or float16, got torch\.int32"),
        "x 0-d": ((torch.tensor(1.0), packed), r"x must have at least one dimension \(\.\.\., K\)"),
        "bias shape": ((x, packed, randn_nonzero(15)),
                       r"bias must be a float tensor of shape \[N\] = \[16\], got torch\.float32 \(15,\)"),
        "bias dtype": ((x, packed, torch.ones(16, dtype=torch.int32)), r"got torch\.int32 \(16,\)"),
        "out_dtype": ((x, packed, bias, torch.int32),
                      r"out_dtype must be float32, bfloat16 or float16, got torch\.int32"),
        "packed not contiguous": ((x, packed.t()), r"packed must be contiguous"),
        "packed too small": ((x, packed.view(-1)[:63].view(1, 63)), r"holds 63 bytes, too few for a pack header"),
        "packed truncated": ((x, packed[:, :-1].contiguous()),
                             r"has shape \[16, 173\] but its header \(N=16, K=40\) needs \[16, 174\]"),
        "packed padded": ((x, torch.cat([packed, packed[:1]])), r"has shape \[17, 174\]"),
    }


@requires_native
@pytest.mark.parametrize("case", sorted(_bad_linear_calls()))
def test_bad_linear_inputs_raise_the_same_error_everywhere(case):
    args, message = _bad_linear_calls()[case]
    native, ref = call_both(ops.pq_linear, reference.pq_linear, *args)
    assert native == ref
    assert native.startswith("pq_linear: ")
    assert re.search(message, native), native


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_bad_pack_argument_dtype_or_dims(impl):
    """The shared pack tensor checks (pack_header; their messages print the dtype and shape the C++
    or the Python way, so only the start is common)."""
    fn = ops.pq_linear if impl == "native" else reference.pq_linear
    _, _, packed, _ = _bad_layer()
    x = randn_nonzero(2, 40)
    for bad in (packed.float(), packed.view(-1), packed.view(1, 1, -1)):
        with pytest.raises((RuntimeError, ValueError),
                           match=r"pq_linear: packed must be a 2-D uint8 tensor from compressops\.ops\.pq_pack, got"):
            fn(x, bad)


TAMPERED = {  # header field -> (offset, struct format, value, message); the layer is _bad_layer's
    "magic": (0, "<I", 0x12345678, "does not start with a compressops pack header"),
    "header version": (4, "<I", 2, "does not start with a compressops pack header"),
    "tag": (8, "<8s", b"half", "holds a 'half' pack, not a 'pq' one"),
    "tag bytes": (8, "<8s", b"p\x01", r"holds a 'p\?' pack"),
    "format version": (16, "<I", 2, "is a 'pq' pack of version 2, this build reads version 1"),
    "reserved": (20, "<I", 7, "header is corrupt"),
    "N larger": (24, "<q", 17, r"has shape \[16, 174\] but its header \(N=17, K=40\) needs \[17, 164\]"),
    "N zero": (24, "<q", 0, r"N=0, K=40; both must be in \[1, 2\^31\)"),
    "N negative": (24, "<q", -16, r"both must be in \[1, 2\^31\)"),
    "N huge": (24, "<q", 2**40, r"both must be in \[1, 2\^31\)"),
    "K other S": (32, "<q", 44, r"header fields \(4, 16, 10\) do not match a 'pq' pack of N=16, K=44 \(4, 16, 11\)"),
    "K overflowing": (32, "<q", 2**31 - 1, "do not match"),
    # a K with the same S is a consistent pack of a narrower layer: only x's width tells
    "K same S": (32, "<q", 37, r"x has K=40 in its last dimension but the weight has K=37"),
    "d invalid": (40, "<q", 3, r"header has subvector_dim=3, num_centroids=16; a 'pq' pack needs subvector_dim "
                               r"in \(1, 2, 4, 8, 16\) and num_centroids in \(16, 256\)"),
    "d zero": (40, "<q", 0, "header has subvector_dim=0"),
    "d negative": (40, "<q", -4, "header has subvector_dim=-4"),
    "d other": (40, "<q", 8, r"header fields \(8, 16, 10\) do not match a 'pq' pack of N=16, K=40 \(8, 16, 5\)"),
    "k invalid": (48, "<q", 17, "num_centroids=17; a 'pq' pack needs"),
    "k other": (48, "<q", 256, r"has shape \[16, 174\] but its header \(N=16, K=40\) needs \[16, 2574\]"),
    "S": (56, "<q", 11, r"header fields \(4, 16, 11\) do not match"),
    "S negative": (56, "<q", -1, "do not match"),
}


@requires_native
@pytest.mark.parametrize("field", sorted(TAMPERED))
def test_tampered_header_raises_the_same_error_everywhere(field):
    """A header that lies raises before any layout byte is read, with one message from C++ and Python."""
    _, _, packed, bias = _bad_layer()
    offset, fmt, value, message = TAMPERED[field]
    bad = tampered(packed, offset, fmt, value)
    native, ref = call_both(ops.pq_linear, reference.pq_linear, randn_nonzero(2, 40), bad, bias)
    assert native == ref
    assert native.startswith("pq_linear: ")
    assert re.search(message, native), native


@requires_native
def test_swapped_n_and_k_raises():
    """N and K swapped: the subspace count K/d no longer matches the header's S."""
    _, _, packed, bias = _bad_layer()
    bad = tampered(tampered(packed, 24, "<q", 40), 32, "<q", 16)
    native, ref = call_both(ops.pq_linear, reference.pq_linear, randn_nonzero(2, 40), bad, bias)
    assert native == ref
    assert re.search(r"header fields \(4, 16, 10\) do not match a 'pq' pack of N=40, K=16 \(4, 16, 4\)", native)


def _bad_pack_calls():
    canon, cb, _, _ = _bad_layer()
    return {  # name -> (args, message)
        "codebooks dtype": ((canon, cb.double(), 40),
                            r"codebooks must be float32 \[S, k, d\], got torch\.float64 \(10, 16, 4\)"),
        "codebooks 2-D": ((canon, cb[0], 40), r"codebooks must be float32 \[S, k, d\], got torch\.float32 \(16, 4\)"),
        "k": ((canon, torch.randn(10, 8, 4), 40), r"codebooks must have k in \(16, 256\) centroids \(dim 1\), got 8"),
        "d": ((canon, torch.randn(10, 16, 3), 40), r"codebooks need S >= 1 and d in \(1, 2, 4, 8, 16\), got S=10, d=3"),
        "S zero": ((canon, torch.randn(0, 16, 4), 40), r"got S=0, d=4"),
        "codes dtype": ((canon.int(), cb, 40), r"codes must be uint8 \[N, ceil\(S/2\)\], got torch\.int32 \(16, 5\)"),
        "codes 1-D": ((canon[0], cb, 40), r"codes must be uint8 \[N, ceil\(S/2\)\], got torch\.uint8 \(5,\)"),
        "codes k=256 form": ((canon, torch.randn(10, 256, 4), 40),
                             r"codes must have shape \(16, 10\) for S=10, k=256, got \(16, 5\)"),
        "codes columns": ((canon[:, :-1], cb, 40), r"codes must have shape \(16, 5\) for S=10, k=16, got \(16, 4\)"),
        "codes no rows": ((canon[:0], cb, 40), r"codes need 1 <= N < 2\^31 rows, got N=0"),
        "in_features zero": ((canon, cb, 0), r"in_features must be in \[1, 2\^31\), got 0"),
        "in_features negative": ((canon, cb, -40), r"in_features must be in \[1, 2\^31\), got -40"),
        "in_features huge": ((canon, cb, 2**31), r"in_features must be in \[1, 2\^31\), got 2147483648"),
        "in_features other S": ((canon, cb, 45),
                                r"in_features=45 needs S=ceil\(K/d\)=12 subspaces but codebooks have S=10"),
    }


@requires_native
@pytest.mark.parametrize("case", sorted(_bad_pack_calls()))
def test_bad_pack_inputs_raise_the_same_error_everywhere(case):
    args, message = _bad_pack_calls()[case]
    native, ref = call_both(ops.pq_pack, reference.pq_pack, *args)
    assert native == ref
    assert native.startswith("pq_pack: ")
    assert re.search(message, native), native


@pytest.mark.parametrize("impl", ["native", "reference"])
def test_bad_inputs(impl):
    """Every bad call raises a clear error naming the argument, with or without the native library."""
    lin = ops.pq_linear if impl == "native" else reference.pq_linear
    pack = ops.pq_pack if impl == "native" else reference.pq_pack
    for calls, fn in ((_bad_linear_calls(), lin), (_bad_pack_calls(), pack)):
        for args, message in calls.values():
            with pytest.raises((RuntimeError, ValueError), match=message):
                fn(*args)


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
    torch.testing.assert_close(pq_linear(x, p, b), reference.pq_linear(x, p, b),
                               rtol=1e-5, atol=1e-5)
# NaN/Inf in x and centroids near float max (float32 sums that overflow): the reference's pattern
for k, scale, v in ((16, 1.0, float("inf")), (256, 1.0, float("nan")), (16, 3e38, 1.0), (256, 3e38, 1.0)):
    cb = (torch.rand(10, k, 4) * 2 - 1) * scale
    codes = torch.randint(0, k, (9, 10), dtype=torch.uint8)
    cb[0, :, 1] = 0
    p = fpq.pack(fpq.pack_nibbles(codes) if k == 16 else codes, cb, 40)
    x = torch.randn(3, 40)
    x[0, 1] = v
    y, r = pq_linear(x, p), reference.pq_linear(x, p)
    assert all(torch.equal(t(y), t(r)) for t in (torch.isnan, torch.isposinf, torch.isneginf)), (k, scale, y, r)
    fin = torch.isfinite(r)
    torch.testing.assert_close(y[fin], r[fin], rtol=1e-5, atol=1e-5)
bad = p.clone()
bad.view(-1)[40] = 3  # subvector_dim: the Triton wrapper reads the header through formats.pq too
try:
    pq_linear(x, bad, b)
except ValueError as e:
    assert "packed's header has subvector_dim=3" in str(e), e
else:
    raise AssertionError("a tampered pack ran")
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
    assert torch.equal(ops.pq_pack(canon.cuda(), cb.cuda(), 67).cpu(), packed)
    y = ops.pq_linear(x.cuda(), packed.cuda(), bias.cuda())
    torch.testing.assert_close(y.cpu(), reference.pq_linear(x, packed, bias), rtol=1e-4, atol=1e-4)
