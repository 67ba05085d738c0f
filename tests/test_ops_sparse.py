"""2:4 and CSR sparse ops against compressops.reference, on every CPU ISA level this machine runs."""

import os
import re
import struct
import subprocess
import sys

import pytest
import torch

import compressops as co
from compressops import ops, reference
from compressops.formats import csr as fcsr
from compressops.formats import sparse24 as s24

from .helpers import (NATIVE, NON_FINITE, OPCHECK_UTILS, call_both, expected_kernel_level, grad_leaf, isa_params,
                     non_finite_x, randn_nonzero, requires_native, same_non_finite, tampered)

# (batch shape, K, N): M in {0, 1, 3, 8, 64+}, K not a multiple of 4/8/32, batch dims
SHAPES = [
    ((0,), 37, 5),
    ((1,), 1, 1),
    ((1,), 37, 19),
    ((3,), 130, 33),
    ((8,), 67, 40),
    ((2, 4), 96, 17),
    ((70,), 301, 65),
    ((2, 33), 64, 70),
    ((12,), 130, 24),  # 2:4 int8: the row kernel below 16 batch rows
    ((5,), 67, 9),  # CSR: the transposed kernel from 4 batch rows, 5 of 8 lanes
    ((20,), 67, 9),  # CSR: 20 lanes, three 8-wide vectors per nonzero
    ((400,), 300, 37),  # CSR: 64-row chunks and a 16-row tail; 2:4 and CSR: the dense route (auto)
    ((70,), 200, 21),  # CSR at 50% sparsity: the K-tiled kernel from 64 rows on
]
F32_TOL, BF16_TOL = 1e-5, 1e-2  # relative Frobenius error against the reference


@pytest.fixture(autouse=True)
def kernel_route():
    """The per-level tests check the sparse kernels, so large batches must not take the dense
    route (a torch GEMM on the decoded weight); the dense-route tests below opt back in."""
    if not NATIVE:  # the reference ops have no routes
        yield
        return
    with co.sparse_route("kernel"):
        yield


def relerr(y, ref):
    y, ref = y.float(), ref.float()
    return float((y - ref).norm() / ref.norm().clamp_min(1e-30))


# ------------------------------------------------------------------------------------- formats

def test_sparse24_meta_bit_order():
    # group 0 keeps positions 1 and 3, group 1 keeps 0 and 2 -> nibbles 0b1101, 0b1000
    w = torch.tensor([[0.0, 5.0, 0.0, -6.0, 7.0, 0.0, 8.0, 0.0]])
    values, meta = s24.compress(w)
    assert values.tolist() == [[5.0, -6.0, 7.0, 8.0]]
    assert meta.tolist() == [[0b1101 | (0b1000 << 4)]]
    assert torch.equal(s24.decompress(values, meta, 8), w)


@pytest.mark.parametrize("k", [1, 3, 4, 10, 37, 64])
def test_sparse24_compress_roundtrip_and_existing_pattern(k):
    w = randn_nonzero(9, k)
    values, meta = s24.compress(w)
    assert values.shape == (9, s24.padded_k(k) // 2) and meta.shape == (9, s24.meta_bytes(k))
    dense = s24.decompress(values, meta, k)
    mask = s24.mask_24(w)
    assert torch.equal(dense, w * mask)
    kp = s24.padded_k(k)
    per_group = torch.nn.functional.pad(mask.int(), (0, kp - k)).view(9, -1, 4).sum(-1)
    assert (per_group <= 2).all()
    # keeping an existing 2:4 pattern exactly (values and positions)
    v2, m2 = s24.compress(dense)
    assert torch.equal(s24.decompress(v2, m2, k), dense)


def test_sparse24_bf16_values_keep_dtype():
    w = randn_nonzero(4, 16, dtype=torch.bfloat16)
    values, _ = s24.compress(w)
    assert values.dtype == torch.bfloat16


@pytest.mark.parametrize("k", [5, 300, 70000])
def test_csr_pack_matches_python_and_roundtrips(k):
    w = randn_nonzero(6, k) * (torch.rand(6, k) > 0.7)
    w[2] = 0  # an empty row
    crow, col, vals = fcsr.compress(w)
    packed = ops.csr_pack(crow, col, k)
    assert torch.equal(packed, fcsr.pack(crow, col, k))
    assert fcsr.read_header(packed, "t").col_bytes == (2 if k <= 65536 else 4)
    c2, col2 = fcsr.unpack(packed)
    assert torch.equal(c2, crow) and torch.equal(col2, col)
    assert torch.equal(fcsr.to_dense(crow, col, vals, k), w)


# ----------------------------------------------------------------------------------- 2:4 float

def make24(k, n, vdtype=torch.float32, bias=True):
    """(values, meta, their pack, bias) of a random 2:4 layer."""
    w = randn_nonzero(n, k)
    values, meta = s24.compress(w.to(vdtype))
    return values, meta, ops.sparse24_pack(values, meta, k), (randn_nonzero(n) if bias else None)


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("vdtype", [torch.float32, torch.bfloat16], ids=["v_f32", "v_bf16"])
@pytest.mark.parametrize("xdtype", [torch.float32, torch.bfloat16], ids=["x_f32", "x_bf16"])
def test_sparse24_linear_close_to_reference(level, shape, vdtype, xdtype):
    batch, k, n = shape
    _, _, packed, b = make24(k, n, vdtype, bias=(k % 2 == 1))
    x = randn_nonzero(*batch, k, dtype=xdtype)
    with co.cpu_isa(level):
        y = ops.sparse24_linear(x, packed, b)
        ran = torch.ops.compressops._last_kernel_isa("sparse24_linear")
        y32 = ops.sparse24_linear(x, packed, b, out_dtype=torch.float32)
    ref = reference.sparse24_linear(x, packed, b)
    assert y.dtype == xdtype and y.shape == (*batch, n)
    # the default output is x's dtype, rounded once from the float32 result
    assert y32.dtype == torch.float32 and torch.equal(y, y32.to(xdtype))
    if x.numel():
        assert ran == expected_kernel_level("sparse24_linear", level)
        assert relerr(y, ref) < (F32_TOL if xdtype == torch.float32 else BF16_TOL)
        assert relerr(y32, reference.sparse24_linear(x, packed, b, out_dtype=torch.float32)) < (
            F32_TOL if xdtype == torch.float32 else BF16_TOL)


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("route", ["kernel", "auto", "dense"])
@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("m", [1, 20])
def test_sparse24_linear_non_finite_x_is_the_dense_product(level, route, value, m):
    """An Inf or NaN in x gives the reference's pattern on every level, route and batch size: NaN
    where an Inf meets one of the zeros the kernels skip, so the call takes the dense route; the
    finite rows stay close."""
    _, _, packed, b = make24(37, 19)
    x = non_finite_x(value, m, 37)
    with co.cpu_isa(level), co.sparse_route(route):
        y = ops.sparse24_linear(x, packed, b)
        ran = torch.ops.compressops._last_kernel_isa("sparse24_linear")
        yb = ops.sparse24_linear(x.bfloat16(), packed, b)
    ref = reference.sparse24_linear(x, packed, b)
    fin = same_non_finite(y, ref)
    assert ran == "dense" and not fin[0].any()
    assert relerr(y[fin], ref[fin]) < F32_TOL
    same_non_finite(yb, reference.sparse24_linear(x.bfloat16(), packed, b))


@requires_native
@pytest.mark.parametrize("level", isa_params())
def test_sparse24_linear_non_contiguous_and_fp16(level):
    _, _, packed, b = make24(70, 24)
    x = randn_nonzero(140, 9)[:, ::1].t()[:, ::2]  # [9, 70], non-contiguous
    assert not x.is_contiguous()
    with co.cpu_isa(level):
        y = ops.sparse24_linear(x, packed, b)
        yh = ops.sparse24_linear(x.half(), packed, b)
        yb = ops.sparse24_linear(x, packed, b, out_dtype=torch.bfloat16)
    assert relerr(y, reference.sparse24_linear(x, packed, b)) < F32_TOL
    assert yh.dtype == torch.float16
    assert relerr(yh, reference.sparse24_linear(x.half(), packed, b)) < 1e-3
    assert yb.dtype == torch.bfloat16 and torch.equal(yb, y.bfloat16())


# ------------------------------------------------------------------------------------ 2:4 int8

def make24_int8(k, n, bias=True):
    """(int8 values, meta, their pack, scale, bias) of a random 2:4 layer."""
    values, meta, _, b = make24(k, n, torch.float32, bias)
    q, scale = s24.quantize_values(values)
    return q, meta, ops.sparse24_pack(q, meta, k), scale, b


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("xdtype", [torch.float32, torch.bfloat16], ids=str)
def test_sparse24_int8_linear_bit_exact(level, shape, xdtype):
    batch, k, n = shape
    _, _, packed, scale, b = make24_int8(k, n, bias=(n % 2 == 1))
    x = randn_nonzero(*batch, k, dtype=xdtype) * 3
    with co.cpu_isa(level):
        y = ops.sparse24_int8_linear(x, packed, scale, b)
        ran = torch.ops.compressops._last_kernel_isa("sparse24_int8_linear")
        yh = ops.sparse24_int8_linear(x, packed, scale, b, out_dtype=torch.float16)
    if x.numel():
        assert ran == expected_kernel_level("sparse24_int8_linear", level)
    assert torch.equal(y, reference.sparse24_int8_linear(x, packed, scale, b))
    assert yh.dtype == torch.float16
    assert torch.equal(yh, reference.sparse24_int8_linear(x, packed, scale, b, out_dtype=torch.float16))


@requires_native
@pytest.mark.parametrize("level", isa_params())
def test_sparse24_int8_special_rows(level):
    _, _, packed, scale, b = make24_int8(64, 20)
    x = randn_nonzero(4, 64)
    x[1] = 0  # zero row -> bias only
    x[2, 5] = float("nan")  # NaN row -> NaN
    with co.cpu_isa(level):
        y = ops.sparse24_int8_linear(x, packed, scale, b)
    ref = reference.sparse24_int8_linear(x, packed, scale, b)
    assert torch.equal(y.isnan(), ref.isnan()) and y[2].isnan().all()
    assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(ref))


# ------------------------------------------------------------------------------------ 2:4 pack

CODES24 = {torch.float32: 1, torch.bfloat16: 2, torch.int8: 3}


def header24(n, k, code, kp=None):
    kp = s24.padded_k(k) if kp is None else kp
    return struct.pack("<4sI8sIIqq3q", b"COPK", 1, b"sparse24", 1, 0, n, k, code, kp, 0)


def canonical24(n, k, vdtype):
    values, meta = s24.compress(randn_nonzero(n, k))
    return (s24.quantize_values(values)[0] if vdtype == torch.int8 else values.to(vdtype)), meta


@pytest.mark.parametrize("k", [1, 3, 4, 10, 37, 64, 130])
@pytest.mark.parametrize("vdtype", [torch.float32, torch.bfloat16, torch.int8], ids=str)
def test_sparse24_pack_bytes_match_the_python_packer(k, vdtype):
    n = 9
    values, meta = canonical24(n, k, vdtype)
    packed = ops.sparse24_pack(values, meta, k)
    nbytes = s24.packed_bytes(n, k, vdtype)
    vbytes = values.numel() * values.element_size()
    assert nbytes == 64 + vbytes + meta.numel()
    assert packed.dtype == torch.uint8 and packed.shape == (n, -(-nbytes // n))
    flat = packed.view(-1)
    assert bytes(flat[:64].tolist()) == header24(n, k, CODES24[vdtype])
    assert torch.equal(flat[64:64 + vbytes], values.view(-1).view(torch.uint8))
    assert torch.equal(flat[64 + vbytes:nbytes], meta.view(-1))
    assert not flat[nbytes:].any()  # the row padding is zero
    assert torch.equal(packed, s24.pack(values, meta, k))
    v2, m2, k2 = s24.unpack(packed)
    assert k2 == k and v2.dtype == vdtype and torch.equal(v2, values) and torch.equal(m2, meta)
    assert v2.untyped_storage().data_ptr() == packed.untyped_storage().data_ptr()  # views, no copy
    # non-contiguous canonical tensors pack to the same bytes
    assert torch.equal(ops.sparse24_pack(values.t().contiguous().t(), meta.t().contiguous().t(), k), packed)


@pytest.mark.parametrize("vdtype", [torch.float32, torch.bfloat16, torch.int8], ids=str)
def test_sparse24_zero_pack_is_the_pack_of_the_zero_weight(vdtype):
    n, k = 5, 37
    zero_values = torch.zeros(n, s24.padded_k(k) // 2, dtype=vdtype)
    packed = ops.sparse24_pack(zero_values, torch.zeros(n, s24.meta_bytes(k), dtype=torch.uint8), k)
    assert torch.equal(s24.zero_pack(n, k, vdtype), packed)
    values, meta, _ = s24.unpack(packed)
    assert not s24.decompress(values, meta, k).any()


# header field -> (offset, struct format, value, message) on the float32 pack of N=8, K=32:
# 64 + 8 * (16 * 4 + 4) = 608 bytes, shape [8, 76]
TAMPERED24 = {
    "magic": (0, "<I", 0x12345678, "does not start with a compressops pack header"),
    "header version": (4, "<I", 2, "does not start with a compressops pack header"),
    "tag": (8, "<8s", b"half", "holds a 'half' pack, not a 'sparse24' one"),
    "tag bytes": (8, "<8s", b"sparse\x012", r"holds a 'sparse\?2' pack"),
    "format version": (16, "<I", 2, "is a 'sparse24' pack of version 2, this build reads version 1"),
    "reserved": (20, "<I", 7, "header is corrupt"),
    "N larger": (24, "<q", 9, r"has shape \[8, 76\] but its header \(N=9, K=32\) needs \[9, 76\]"),
    "N zero": (24, "<q", 0, r"N=0, K=32; both must be in \[1, 2\^31\)"),
    "N negative": (24, "<q", -8, r"both must be in \[1, 2\^31\)"),
    "N huge": (24, "<q", 2**40, r"both must be in \[1, 2\^31\)"),
    "K overflowing": (32, "<q", 2**31 - 1, r"header fields \(1, 32, 0\) do not match a 'sparse24' pack of "
                                            r"N=8, K=2147483647 \(1, 2147483648, 0\)"),
    # K=30 has the same Kp and bytes as 32: a valid pack of another K, which x then contradicts
    "K in the padding": (32, "<q", 30, "x has K=32 in its last dimension but the weight has K=30"),
    "dtype code": (40, "<q", 16, r"packed's header has values dtype code 16, not one of 1 \(float32\), "
                                 r"2 \(bfloat16\), 3 \(int8\); repack it with compressops.ops.sparse24_pack"),
    "dtype code zero": (40, "<q", 0, "values dtype code 0, not one of"),
    "dtype bfloat16": (40, "<q", 2, r"has shape \[8, 76\] but its header \(N=8, K=32\) needs \[8, 44\]"),
    "dtype int8": (40, "<q", 3, "packed holds int8 values; sparse24_linear takes float32 or bfloat16 values"),
    "Kp field": (48, "<q", 36, r"header fields \(1, 36, 0\) do not match a 'sparse24' pack of N=8, K=32 "
                               r"\(1, 32, 0\); repack it"),
    "last field": (56, "<q", -1, "do not match"),
}


@requires_native
@pytest.mark.parametrize("field", sorted(TAMPERED24))
def test_sparse24_tampered_header_raises_the_same_error_everywhere(field):
    """A header that lies raises before any weight byte is read, with one message from C++ and Python."""
    _, _, packed, b = make24(32, 8)
    offset, fmt, value, message = TAMPERED24[field]
    bad = tampered(packed, offset, fmt, value)
    native, ref = call_both(ops.sparse24_linear, reference.sparse24_linear, randn_nonzero(2, 32), bad, b)
    assert native == ref
    assert native.startswith("sparse24_linear: ")
    assert re.search(message, native), native


@requires_native
def test_sparse24_header_of_more_than_2_63_bytes_raises():
    """N = K = 2^31 - 1 with float32 values would need N * (2 K + K / 8) bytes: past int64."""
    _, _, packed, b = make24(32, 8)
    bad = tampered(tampered(tampered(packed, 24, "<q", 2**31 - 1), 32, "<q", 2**31 - 1), 48, "<q", 2**31)
    native, ref = call_both(ops.sparse24_linear, reference.sparse24_linear, randn_nonzero(2, 32), bad, b)
    assert native == ref
    assert native.endswith(r"has shape [8, 76] but its header (N=2147483647, K=2147483647) needs more than 2^63 bytes")


@requires_native
def test_sparse24_truncated_padded_and_swapped_packs_raise():
    _, _, packed, b = make24(32, 8)  # [8, 76]
    x = randn_nonzero(2, 32)
    # N and K swapped keep the byte count (64 + 32 * (4 * 4 + 1) = 608); the Kp field, then the shape, differ
    swapped = tampered(tampered(packed, 24, "<q", 32), 32, "<q", 8)
    for bad, message in ((packed[:, :-1], r"has shape \[8, 75\] but its header .N=8, K=32. needs \[8, 76\]"),
                         (torch.cat([packed, packed[:1]]), r"has shape \[9, 76\]"),
                         (packed.view(-1)[:63].view(1, 63), "holds 63 bytes, too few for a pack header"),
                         (swapped, r"header fields \(1, 32, 0\) do not match a 'sparse24' pack of N=32, K=8 "
                                   r"\(1, 8, 0\)"),
                         (tampered(swapped, 48, "<q", 8),
                          r"has shape \[8, 76\] but its header \(N=32, K=8\) needs \[32, 19\]")):
        native, ref = call_both(ops.sparse24_linear, reference.sparse24_linear, x, bad.clone(), b)
        assert native == ref
        assert re.search(message, native), native


@requires_native
def test_sparse24_int8_pack_errors_are_the_same_everywhere():
    _, _, packed, b = make24(32, 8)
    _, _, q, scale, _ = make24_int8(32, 8)
    x = randn_nonzero(2, 32)
    native, ref = call_both(ops.sparse24_int8_linear, reference.sparse24_int8_linear, x, packed, scale, b)
    assert native == ref == "sparse24_int8_linear: packed holds float32 values; sparse24_int8_linear takes int8 values"
    native, ref = call_both(ops.sparse24_linear, reference.sparse24_linear, x, q, b)
    assert native == ref
    assert native == "sparse24_linear: packed holds int8 values; sparse24_linear takes float32 or bfloat16 values"
    # a forged int8 pack past the exact-int32 limit (the pack op refuses to build one)
    k = s24.MAX_INT8_K + 4
    forged = s24.zero_pack(1, k, torch.int8)
    xk = randn_nonzero(1, k)
    native, ref = call_both(ops.sparse24_int8_linear, reference.sparse24_int8_linear, xk, forged, scale[:1])
    assert native == ref == f"sparse24_int8_linear: packed has K={k}; int8 values allow K <= 262144 (exact int32 sums)"


@requires_native
def test_sparse24_pack_refuses_int8_minus_128_everywhere():
    """Int8 kept values are symmetric ([-127, 127]): a -128 made the avx2 kernel differ from the
    scalar one and from the reference, depending on the batch size."""
    q, meta, _, _, _ = make24_int8(32, 8)
    q[5, 3] = -128
    native, ref = call_both(ops.sparse24_pack, reference.sparse24_pack, q, meta, 32)
    assert native == ref == "sparse24_pack: int8 values must lie in [-127, 127] (symmetric int8), got -128"
    q[5, 3] = -127  # the bound itself packs
    assert torch.equal(ops.sparse24_pack(q, meta, 32), reference.sparse24_pack(q, meta, 32))


@requires_native
def test_sparse24_bad_arguments_raise_the_same_error_everywhere():
    """Every argument the kernels read besides the pack: one message from C++ and Python."""
    _, _, packed, b = make24(32, 8)
    _, _, q, scale, _ = make24_int8(32, 8)
    x = randn_nonzero(2, 32)
    lin = (ops.sparse24_linear, reference.sparse24_linear)
    lin8 = (ops.sparse24_int8_linear, reference.sparse24_int8_linear)
    cases = [
        (lin, (x.int(), packed, b), {}, "x must be float32, bfloat16 or float16, got torch.int32"),
        (lin, (x[0, 0], packed, b), {}, r"x must have at least one dimension \(\.\.\., K\)"),
        (lin, (x[:, :31], packed, b), {}, "x has K=31 in its last dimension but the weight has K=32"),
        (lin, (x, packed, b[:3]), {}, r"bias must be a float tensor of shape \[N\] = \[8\], got torch.float32 \(3,\)"),
        (lin, (x, packed, b.int()), {}, r"got torch.int32 \(8,\)"),
        (lin, (x, packed, b.view(2, 4)), {}, r"got torch.float32 \(2, 4\)"),
        (lin, (x, packed, b), {"out_dtype": torch.int32}, "out_dtype must be float32, bfloat16 or float16, got "
                                                          "torch.int32"),
        (lin8, (x, q, scale.double()), {}, r"w_scale must be float32 of shape \[N\] = \[8\], got torch.float64 "
                                           r"\(8,\)"),
        (lin8, (x, q, scale[:3]), {}, r"w_scale must be float32 .* got torch.float32 \(3,\)"),
        (lin8, (x, q, scale.view(1, 8)), {}, r"got torch.float32 \(1, 8\)"),
        (lin8, (x, q, scale, b[:2]), {}, "bias must be"),
        (lin8, (x, q, scale), {"out_dtype": torch.float64}, "out_dtype must be .* got torch.float64"),
    ]
    for fns, args, kwargs, message in cases:
        native, ref = call_both(*fns, *args, **kwargs)
        assert native == ref
        assert re.search(message, native), native


@requires_native
def test_sparse24_pack_bad_inputs_raise_the_same_error_everywhere():
    values, meta = canonical24(8, 32, torch.float32)
    q = s24.quantize_values(values)[0]
    big = s24.MAX_INT8_K + 4
    cases = [
        ((values.double(), meta, 32), "values must be float32, bfloat16 or int8, got torch.float64"),
        ((values.half(), meta, 32), "got torch.float16"),
        ((values, meta, 0), r"in_features must be in \[1, 2\^31\), got 0"),
        ((values, meta, 2**31), r"in_features must be in \[1, 2\^31\), got 2147483648"),
        ((torch.zeros(1, big // 2, dtype=torch.int8), torch.zeros(1, s24.meta_bytes(big), dtype=torch.uint8), big),
         f"in_features must be <= 262144 for int8 values \\(exact int32 sums\\), got {big}"),
        ((values.view(-1), meta, 32), r"values must have shape \[N, 16\] for in_features=32, 1 <= N < 2\^31, "
                                      r"got \(128,\)"),
        ((values, meta, 40), r"values must have shape \[N, 20\] for in_features=40, .* got \(8, 16\)"),
        ((values[:0], meta[:0], 32), r"got \(0, 16\)"),
        ((q, meta.int(), 32), r"meta must be uint8 of shape \[N, 4\] = \[8, 4\], got torch.int32 \(8, 4\)"),
        ((q, meta[:3], 32), r"got torch.uint8 \(3, 4\)"),
        ((values, meta[:, :3], 32), r"got torch.uint8 \(8, 3\)"),
        ((values, meta.view(-1), 32), r"got torch.uint8 \(32,\)"),
    ]
    for args, message in cases:
        native, ref = call_both(ops.sparse24_pack, reference.sparse24_pack, *args)
        assert native == ref
        assert native.startswith("sparse24_pack: ") and re.search(message, native), native


def test_sparse24_pack_opcheck_and_out_dtype_samples():
    values, meta, packed, b = make24(67, 19, torch.bfloat16)
    q, mq, pq, scale, _ = make24_int8(67, 19)
    x = randn_nonzero(2, 3, 67)
    for op, args, kwargs in [
            (torch.ops.compressops.sparse24_pack.default, (values, meta, 67), {}),
            (torch.ops.compressops.sparse24_pack.default, (q, mq, 67), {}),
            (torch.ops.compressops.sparse24_linear.default, (x, packed, b), {"out_dtype": torch.float16}),
            (torch.ops.compressops.sparse24_int8_linear.default, (x.bfloat16(), pq, scale, None),
             {"out_dtype": torch.float32})]:
        torch.library.opcheck(op, args, kwargs, test_utils=OPCHECK_UTILS)


# ---------------------------------------------------------------------------------------- CSR

def make_csr(k, n, sparsity, vdtype=torch.float32, bias=True):
    w = randn_nonzero(n, k)
    crow, col, vals = fcsr.compress(w.to(vdtype), fcsr.magnitude_mask(w, sparsity))
    return ops.csr_pack(crow, col, k), vals, (randn_nonzero(n) if bias else None)


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("sparsity", [0.5, 0.95])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                    (torch.float32, torch.bfloat16)], ids=["f32", "bf16", "x_f32_v_bf16"])
def test_csr_linear_close_to_reference(level, shape, sparsity, dtypes):
    batch, k, n = shape
    xdtype, vdtype = dtypes
    packed, vals, b = make_csr(k, n, sparsity, vdtype, bias=(n % 2 == 0))
    x = randn_nonzero(*batch, k, dtype=xdtype)
    with co.cpu_isa(level):
        y = ops.csr_linear(x, packed, vals, b)
        ran = torch.ops.compressops._last_kernel_isa("csr_linear")
    ref = reference.csr_linear(x, packed, vals, b)
    assert y.dtype == xdtype and y.shape == (*batch, n)
    if x.numel():
        assert ran == expected_kernel_level("csr_linear", level)
        if ref.abs().sum() > 0:
            assert relerr(y, ref) < (F32_TOL if xdtype == torch.float32 else BF16_TOL)


@requires_native
@pytest.mark.parametrize("level", isa_params())
def test_csr_linear_wide_k_unsorted_duplicates_and_empty_rows(level):
    k = 70000  # 32-bit columns; 5 rows
    col = torch.tensor([69999, 3, 3, 40000, 7, 65536, 12], dtype=torch.int32)  # unsorted, a duplicate
    crow = torch.tensor([0, 3, 3, 5, 5, 7], dtype=torch.int64)  # rows 1 and 3 empty
    vals = randn_nonzero(7)
    packed = ops.csr_pack(crow, col, k)
    for m in (1, 9):
        x = randn_nonzero(m, k)
        with co.cpu_isa(level):
            y = ops.csr_linear(x, packed, vals)
        assert relerr(y, reference.csr_linear(x, packed, vals)) < F32_TOL
        assert (y[:, 1] == 0).all() and (y[:, 3] == 0).all()


# -------------------------------------------------------------------------------- dense route

# Large batches may run a torch GEMM on the weight decoded a block of rows at a time (see
# csrc/cpu/dense_route.h). Forced here at every size; "auto" is checked at the sizes that pick it.
ROUTE_SHAPES = [((1,), 37, 19), ((3, 5), 130, 33), ((300,), 67, 40), ((260,), 4096, 1100)]


def sparse24_auto_is_dense(m, n, k, int8):
    """The rule of sparse24_prefer_dense (csrc/cpu/sparse24_linear.cpp)."""
    if int8:
        return m >= 128
    return m >= (192 if n * s24.padded_k(k) > 1 << 22 else 128)


@requires_native
@pytest.mark.parametrize("route", ["dense", "auto"])
@pytest.mark.parametrize("shape", ROUTE_SHAPES, ids=str)
@pytest.mark.parametrize("vdtype", [torch.float32, torch.bfloat16], ids=["v_f32", "v_bf16"])
def test_sparse24_dense_route(route, shape, vdtype):
    batch, k, n = shape
    _, _, packed, b = make24(k, n, vdtype, bias=(k % 2 == 1))
    x = randn_nonzero(*batch, k)
    xb = x.bfloat16()
    with co.sparse_route(route):
        y = ops.sparse24_linear(x, packed, b)
        ran = torch.ops.compressops._last_kernel_isa("sparse24_linear")
        yb = ops.sparse24_linear(xb, packed, b)
        yh = ops.sparse24_linear(x, packed, b, out_dtype=torch.float16)
    m = x.numel() // k
    assert (ran == "dense") == (route == "dense" or sparse24_auto_is_dense(m, n, k, int8=False))
    assert relerr(y, reference.sparse24_linear(x, packed, b)) < F32_TOL
    assert yb.dtype == torch.bfloat16
    assert relerr(yb, reference.sparse24_linear(xb, packed, b)) < BF16_TOL
    assert yh.dtype == torch.float16 and torch.equal(yh, y.half())


@requires_native
@pytest.mark.parametrize("route", ["dense", "auto"])
@pytest.mark.parametrize("shape", ROUTE_SHAPES + [((400,), 300, 37)], ids=str)
def test_sparse24_int8_dense_route_bit_exact(route, shape):
    batch, k, n = shape
    _, _, packed, scale, b = make24_int8(k, n, bias=(n % 2 == 1))
    x = randn_nonzero(*batch, k) * 3
    x.view(-1, k)[0, 1] = float("nan")  # a NaN row stays NaN, as in the reference
    with co.sparse_route(route):
        y = ops.sparse24_int8_linear(x, packed, scale, b)
    ran = torch.ops.compressops._last_kernel_isa("sparse24_int8_linear")
    m = x.numel() // k
    assert (ran == "dense") == (route == "dense" or sparse24_auto_is_dense(m, n, k, int8=True))
    ref = reference.sparse24_int8_linear(x, packed, scale, b)
    assert torch.equal(y.isnan(), ref.isnan())
    assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(ref))


@requires_native
@pytest.mark.parametrize("v0, v1, same, routed", [(100, 100, True, False), (-128, 5, False, False),
                                                  (50, -70, True, True), (-127, 127, False, True)],
                         ids=["coinciding_overflow", "minus_128", "coinciding_fits", "full_range"])
def test_sparse24_int8_dense_route_declines_what_int8_cannot_hold(v0, v1, same, routed):
    # Both kept values of a group at one position add up (the format's rule); the int8 GEMM needs
    # symmetric int8, so a sum outside [-127, 127] or a -128 keeps the op on the 2:4 kernel.
    q, meta, _, scale, b = make24_int8(66, 20)  # K % 4 == 2: the last group is cut by the padding
    q[3, 0], q[3, 1] = max(v0, -127), v1
    meta[3, 0] = (meta[3, 0] & 0xF0) | (0b0101 if same else 0b1001)  # group 0: positions 1, 1 or 1, 2
    # sparse24_pack refuses -128, so that case is a pack whose value bytes were edited afterwards
    packed = tampered(ops.sparse24_pack(q, meta, 66), 64 + 3 * 34, "<b", v0)
    x = randn_nonzero(300, 66)
    with co.sparse_route("dense"):
        y = ops.sparse24_int8_linear(x, packed, scale, b)
    assert (torch.ops.compressops._last_kernel_isa("sparse24_int8_linear") == "dense") == routed
    assert torch.equal(y, reference.sparse24_int8_linear(x, packed, scale, b))


@requires_native
@pytest.mark.parametrize("route", ["dense", "auto"])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
@pytest.mark.parametrize("shape", ROUTE_SHAPES, ids=str)
@pytest.mark.parametrize("vdtype", [torch.float32, torch.bfloat16], ids=["v_f32", "v_bf16"])
def test_csr_dense_route(route, sparsity, shape, vdtype):
    batch, k, n = shape
    packed, vals, b = make_csr(k, n, sparsity, vdtype, bias=(n % 2 == 0))
    x = randn_nonzero(*batch, k)
    with co.sparse_route(route):
        y = ops.csr_linear(x, packed, vals, b)
    ran = torch.ops.compressops._last_kernel_isa("csr_linear")
    m = x.numel() // k
    assert (ran == "dense") == (route == "dense" or (m >= 256 and sparsity < 0.65))
    assert relerr(y, reference.csr_linear(x, packed, vals, b)) < F32_TOL


@requires_native
def test_csr_dense_route_duplicates_wide_k():
    k = 70000  # 32-bit columns; 5 rows
    col = torch.tensor([69999, 3, 3, 40000, 7, 65536, 12], dtype=torch.int32)  # unsorted, a duplicate
    crow = torch.tensor([0, 3, 3, 5, 5, 7], dtype=torch.int64)
    vals = randn_nonzero(7)
    packed = ops.csr_pack(crow, col, k)
    x = randn_nonzero(3, k)
    with co.sparse_route("dense"):
        y = ops.csr_linear(x, packed, vals)
    assert torch.ops.compressops._last_kernel_isa("csr_linear") == "dense"
    assert relerr(y, reference.csr_linear(x, packed, vals)) < F32_TOL


# ------------------------------------------------------------------- the process's route setting

@requires_native
def test_sparse_route_context_manager_forces_and_restores():
    packed, vals, _ = make_csr(67, 40, 0.5)
    x = randn_nonzero(3, 67)
    assert co.current_sparse_route() == "kernel"  # this file's fixture
    with co.sparse_route("dense"):
        assert co.current_sparse_route() == "dense"
        ops.csr_linear(x, packed, vals)
        assert torch.ops.compressops._last_kernel_isa("csr_linear") == "dense"
        with co.sparse_route("auto"):  # M = 3 is far below the rule's batch sizes
            ops.csr_linear(x, packed, vals)
            assert torch.ops.compressops._last_kernel_isa("csr_linear") != "dense"
        assert co.current_sparse_route() == "dense"
    assert co.current_sparse_route() == "kernel"


@requires_native
def test_sparse_route_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown sparse route 'fastest'; expected one of auto, kernel, dense"):
        co.set_sparse_route("fastest")
    with pytest.raises(RuntimeError, match="unknown sparse route 'fastest'; expected auto, kernel or dense"):
        torch.ops.compressops._set_sparse_route("fastest")
    with pytest.raises(ValueError):
        with co.sparse_route("Dense"):
            pass
    assert co.current_sparse_route() == "kernel"


@requires_native
def test_sparse_route_context_is_thread_local():
    """The context sets the calling thread's route; another thread keeps the process's, and
    set_sparse_route sets the process's for every thread without a context."""
    import threading

    packed, vals, _ = make_csr(67, 40, 0.5)
    seen = []
    entered, done = threading.Event(), threading.Event()

    def other():
        entered.wait(10)
        seen.append(co.current_sparse_route())
        ops.csr_linear(randn_nonzero(2, 67), packed, vals)
        seen.append(torch.ops.compressops._last_kernel_isa("csr_linear"))
        done.set()

    before = co.current_sparse_route()
    co.set_sparse_route("kernel")
    try:
        t = threading.Thread(target=other)
        t.start()
        with co.sparse_route("dense"):
            assert co.current_sparse_route() == "dense"
            entered.set()
            done.wait(10)
        t.join()
        assert seen[0] == "kernel" and seen[1] != "dense"
        assert co.current_sparse_route() == "kernel"
    finally:
        co.set_sparse_route(before)


_ROUTE_CHILD = """
import os, torch, compressops as co
from compressops import ops
from compressops.formats import csr
w = torch.randn(40, 67)
crow, col, vals = csr.compress(w, csr.magnitude_mask(w, 0.5))
packed, x = ops.csr_pack(crow, col, 67), torch.randn(3, 67)
last = lambda: torch.ops.compressops._last_kernel_isa("csr_linear")
ops.csr_linear(x, packed, vals)
print(co.current_sparse_route(), last())
os.environ["COMPRESSOPS_SPARSE_ROUTE"] = "kernel"  # read once, at start-up: no effect now
ops.csr_linear(x, packed, vals)
print(co.current_sparse_route(), last())
with co.sparse_route("kernel"):
    ops.csr_linear(x, packed, vals)
    print(co.current_sparse_route(), last() != "dense")
ops.csr_linear(x, packed, vals)
print(co.current_sparse_route(), last())
"""


@requires_native
def test_sparse_route_from_the_environment_is_read_once_at_start_up():
    env = {**os.environ, "COMPRESSOPS_SPARSE_ROUTE": "dense"}
    out = subprocess.run([sys.executable, "-c", _ROUTE_CHILD], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["dense", "dense", "dense", "dense", "kernel", "True", "dense", "dense"]
    env["COMPRESSOPS_SPARSE_ROUTE"] = "fastest"
    res = subprocess.run([sys.executable, "-c", _ROUTE_CHILD], capture_output=True, text=True, env=env)
    assert res.returncode != 0
    assert "COMPRESSOPS_SPARSE_ROUTE must be auto, kernel or dense, got 'fastest'" in res.stderr


# ------------------------------------------------------------------------------ shared checks

@requires_native
def test_inputs_not_modified_and_threads_agree():
    _, _, p24, b = make24(130, 40)
    _, _, q, scale, _ = make24_int8(130, 40)
    packed, vals, _ = make_csr(130, 40, 0.8)
    x = randn_nonzero(17, 130)
    before = [t.clone() for t in (x, p24, b, q, scale, packed, vals)]
    old = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append((ops.sparse24_linear(x, p24, b), ops.sparse24_int8_linear(x, q, scale),
                         ops.csr_linear(x, packed, vals, b)))
    finally:
        torch.set_num_threads(old)
    for a, c in zip(*outs):
        assert torch.equal(a, c)
    for t0, t1 in zip(before, (x, p24, b, q, scale, packed, vals)):
        assert torch.equal(t0, t1)


def _opcheck_samples():
    _, _, p24, b = make24(67, 19)
    _, _, pb, _ = make24(67, 19, torch.bfloat16)
    _, _, pq, scale, _ = make24_int8(67, 19)
    w = randn_nonzero(19, 67) * (torch.rand(19, 67) > 0.6)
    crow, col, vals = fcsr.compress(w)
    packed = ops.csr_pack(crow, col, 67)
    x = randn_nonzero(3, 67)
    return [
        (torch.ops.compressops.sparse24_linear.default, (x, p24, b), {}),
        (torch.ops.compressops.sparse24_linear.default, (x.bfloat16(), pb, None), {"out_dtype": torch.float32}),
        (torch.ops.compressops.sparse24_int8_linear.default, (x, pq, scale, b), {}),
        (torch.ops.compressops.csr_pack.default, (crow, col, 67), {}),
        (torch.ops.compressops.csr_linear.default, (x, packed, vals, b), {}),
        (torch.ops.compressops.csr_linear.default, (x.bfloat16(), packed, vals.bfloat16()), {}),
        (torch.ops.compressops.csr_linear.default, (randn_nonzero(2, 5, 67), packed, vals, b),
         {"out_dtype": torch.bfloat16}),
        # with gradients (of x and bias; the weight is frozen): the autograd and compiled-backward checks
        (torch.ops.compressops.sparse24_linear.default, (grad_leaf(x), p24, grad_leaf(b)), {}),
        (torch.ops.compressops.sparse24_linear.default, (grad_leaf(randn_nonzero(2, 5, 67)), pb, None),
         {"out_dtype": torch.bfloat16}),
        (torch.ops.compressops.sparse24_int8_linear.default, (grad_leaf(x), pq, scale, grad_leaf(b)), {}),
        (torch.ops.compressops.csr_linear.default, (grad_leaf(x), packed, vals, grad_leaf(b)), {}),
        (torch.ops.compressops.csr_linear.default, (grad_leaf(randn_nonzero(2, 5, 67).bfloat16()), packed, vals),
         {"out_dtype": torch.float32}),
    ]


@pytest.mark.parametrize("idx", range(12))
def test_opcheck(idx):
    op, args, kwargs = _opcheck_samples()[idx]
    torch.library.opcheck(op, args, kwargs, test_utils=OPCHECK_UTILS)


@pytest.mark.parametrize("use_reference", [False, True], ids=["native", "reference"])
def test_bad_input_errors(use_reference):
    mod = reference if use_reference else ops
    err = (ValueError, RuntimeError)
    values, meta, p24, b = make24(32, 8)
    _, _, q, scale, _ = make24_int8(32, 8)
    x = randn_nonzero(2, 32)
    with pytest.raises(err, match="x must be float"):
        mod.sparse24_linear(x.int(), p24, b)
    with pytest.raises(err, match="K=31"):
        mod.sparse24_linear(x[:, :31], p24, b)
    with pytest.raises(err, match="values must"):
        mod.sparse24_pack(values[:, :5], meta, 32)
    with pytest.raises(err, match="values must"):
        mod.sparse24_pack(values.double(), meta, 32)
    with pytest.raises(err, match="meta must be uint8"):
        mod.sparse24_pack(values, meta.int(), 32)
    with pytest.raises(err, match="meta must be uint8"):
        mod.sparse24_pack(values, meta[:3], 32)
    with pytest.raises(err, match="bias must be"):
        mod.sparse24_linear(x, p24, b[:3])
    with pytest.raises(err, match="packed holds float32 values; sparse24_int8_linear takes int8 values"):
        mod.sparse24_int8_linear(x, p24, scale)
    with pytest.raises(err, match="w_scale must be float32"):
        mod.sparse24_int8_linear(x, q, scale[:2])
    crow = torch.tensor([0, 2, 3], dtype=torch.int64)
    col = torch.tensor([0, 5, 1], dtype=torch.int32)
    with pytest.raises(err, match="col values must lie in"):
        mod.csr_pack(crow, col, 4)
    with pytest.raises(err, match="crow must"):
        mod.csr_pack(torch.tensor([0, 3, 2]), col, 8)
    with pytest.raises(err, match="col must be a 1-D int32"):
        mod.csr_pack(crow, col.long(), 8)
    packed = ops.csr_pack(crow, col, 8)
    vals = randn_nonzero(3)
    with pytest.raises(err, match="values must be"):
        mod.csr_linear(randn_nonzero(2, 8), packed, vals[:2])
    with pytest.raises(err, match="out_dtype must be"):
        mod.csr_linear(randn_nonzero(2, 8), packed, vals, None, torch.int32)
    with pytest.raises(err, match="K=7"):
        mod.csr_linear(randn_nonzero(2, 7), packed, vals)
    with pytest.raises(err, match="packed must be a 2-D uint8"):
        mod.csr_linear(randn_nonzero(2, 8), packed.view(-1)[:40], vals)


# ------------------------------------------------------------------------------------- Triton

_TRITON_SCRIPT = r"""
import os, sys
os.environ["TRITON_INTERPRET"] = "1"
import torch
from compressops import reference
from compressops.formats import sparse24 as s24
from compressops.triton.sparse24_linear import sparse24_linear
torch.manual_seed(0)
for (m, k, n, bias, dt, out_t) in [(3, 37, 19, True, torch.float32, None), (17, 64, 33, False, torch.bfloat16, None),
                                   (5, 30, 7, True, torch.float32, torch.float16)]:
    w = torch.randn(n, k)
    x = torch.randn(m, k).to(dt)
    v, mt = s24.compress(w.to(dt))
    p = s24.pack(v, mt, k)
    b = torch.randn(n) if bias else None
    y = sparse24_linear(x, p, b, out_t)
    r = reference.sparse24_linear(x, p, b, out_t)
    assert y.dtype == (out_t or dt) and y.shape == r.shape
    e = float((y.float() - r.float()).norm() / r.float().norm())
    assert e < (1e-5 if dt == torch.float32 and out_t is None else 1e-2), e
from compressops.triton.sparse24_linear import sparse24_int8_linear
for (m, k, n, bias, out_t) in [(3, 37, 19, True, None), (17, 64, 33, False, torch.bfloat16), (0, 8, 4, True, None)]:
    v, mt = s24.compress(torch.randn(n, k))
    vq, sc = s24.quantize_values(v)
    p = s24.pack(vq, mt, k)
    b = torch.randn(n) if bias else None
    x = torch.randn(2, m, k)
    y, r = sparse24_int8_linear(x, p, sc, b, out_t), reference.sparse24_int8_linear(x, p, sc, b, out_t)
    assert y.shape == r.shape == (2, m, n) and y.dtype == (out_t or x.dtype) and torch.equal(y, r), (m, k, n)
# NaN/Inf in x: the reference's pattern (NaN where an Inf meets a zero weight), the finite rows close
for v in (float("inf"), float("nan")):
    vals, mt = s24.compress(torch.randn(7, 13))
    p = s24.pack(vals, mt, 13)
    x = torch.randn(3, 13)
    x[0, 2] = v
    y, r = sparse24_linear(x, p), reference.sparse24_linear(x, p)
    assert all(torch.equal(t(y), t(r)) for t in (torch.isnan, torch.isposinf, torch.isneginf)), (v, y[0], r[0])
    assert torch.allclose(y[1:], r[1:], rtol=1e-5, atol=1e-5)
print("TRITON_OK")
"""


def test_triton_sparse24_interpreter():
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], capture_output=True, text=True, env=env, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "TRITON_OK" in r.stdout, r.stderr[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_sparse24_linear_cuda_matches_reference():
    values, meta, packed, b = make24(300, 70)
    x = randn_nonzero(9, 300)
    packed_cuda = ops.sparse24_pack(values.cuda(), meta.cuda(), 300)
    assert torch.equal(packed_cuda.cpu(), packed)
    y = ops.sparse24_linear(x.cuda(), packed_cuda, b.cuda())
    assert relerr(y.cpu(), reference.sparse24_linear(x, packed, b)) < F32_TOL


_TRITON_CSR_SCRIPT = r"""
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch
from compressops import reference
from compressops.formats import csr
from compressops.triton.csr_linear import csr_linear
torch.manual_seed(int(os.environ["SEED"]))
# an empty row, 16-bit columns above 32767 (K=40000), 32-bit columns (K=70000), bf16 values, M=0
for (m, k, n, sp, bias, dt) in [(3, 67, 19, 0.7, True, torch.float32), (2, 40000, 3, 0.99, True, torch.float32),
                                (1, 70000, 5, 0.999, False, torch.float32), (20, 130, 40, 0.0, True, torch.bfloat16),
                                (0, 16, 4, 0.5, True, torch.float32)]:
    w = torch.randn(n, k)
    w[1] = 0
    crow, col, vals = csr.compress(w.to(dt), csr.magnitude_mask(w, sp))
    p = csr.pack(crow, col, k)
    b = torch.randn(n) if bias else None
    x = torch.randn(2, m, k)
    y, yr = csr_linear(x, p, vals, b), reference.csr_linear(x, p, vals, b)
    assert y.shape == yr.shape == (2, m, n) and y.dtype == yr.dtype
    assert torch.allclose(y, yr, rtol=1e-5, atol=1e-4), float((y - yr).abs().max())
# NaN/Inf in x: the reference's pattern (NaN where an Inf meets a zero the kernel skips), the finite rows close
for v in (float("inf"), float("nan")):
    w = torch.randn(7, 13)
    crow, col, vals = csr.compress(w, csr.magnitude_mask(w, 0.5))
    p = csr.pack(crow, col, 13)
    x = torch.randn(3, 13)
    x[0, 2] = v
    y, yr = csr_linear(x, p, vals), reference.csr_linear(x, p, vals)
    assert all(torch.equal(t(y), t(yr)) for t in (torch.isnan, torch.isposinf, torch.isneginf)), (v, y[0], yr[0])
    assert torch.allclose(y[1:], yr[1:], rtol=1e-5, atol=1e-4)
print("TRITON_OK")
"""


def test_triton_csr_interpreter():
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TRITON_INTERPRET="1", SEED=str(torch.initial_seed() % 2**31))
    r = subprocess.run([sys.executable, "-c", _TRITON_CSR_SCRIPT], capture_output=True, text=True, env=env,
                       timeout=300, cwd=root)
    assert "TRITON_OK" in r.stdout, r.stderr[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_sparse24_int8_linear_cuda_matches_reference():
    v, meta = s24.compress(randn_nonzero(70, 300))
    vq, sc = s24.quantize_values(v)
    packed = ops.sparse24_pack(vq, meta, 300)
    x, b = randn_nonzero(9, 300), randn_nonzero(70)
    y = ops.sparse24_int8_linear(x.cuda(), packed.cuda(), sc.cuda(), b.cuda())
    assert torch.equal(y.cpu(), reference.sparse24_int8_linear(x, packed, sc, b))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_csr_linear_cuda_matches_reference():
    w = randn_nonzero(70, 300)
    crow, col, vals = fcsr.compress(w, fcsr.magnitude_mask(w, 0.8))
    packed = ops.csr_pack(crow, col, 300)
    x, b = randn_nonzero(9, 300), randn_nonzero(70)
    y = ops.csr_linear(x.cuda(), packed.cuda(), vals.cuda(), b.cuda())
    assert torch.equal(ops.csr_pack(crow.cuda(), col.cuda(), 300).cpu(), packed)
    assert relerr(y.cpu(), reference.csr_linear(x, packed, vals, b)) < F32_TOL
