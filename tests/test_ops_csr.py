"""CSR pack contract: the bytes of csr_pack, the zero pack, and one message from C++ and Python for
every bad pack, header field, row pointer, tensor and argument (test_ops_sparse.py has the
accuracy tests of every level)."""

import re
import struct

import pytest
import torch

import compressops as co
from compressops import ops, reference
from compressops.formats import csr as fcsr
from compressops.formats import pack_header

from .helpers import (
    NON_FINITE,
    call_both,
    expected_kernel_level,
    isa_params,
    non_finite_x,
    randn_nonzero,
    requires_native,
    same_non_finite,
    tampered,
)

F32_TOL = 1e-5  # relative Frobenius error against the reference (test_ops_sparse.py)


def header_bytes(n, k, fields, tag=b"csr", version=1):
    return struct.pack("<4sI8sIIqq3q", b"COPK", 1, tag, version, 0, n, k, *fields)


def relerr(y, ref):
    return float((y.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


# A fixed [8, 32] structure: rows 2 and 5 empty, unsorted columns in row 3, largest column 30.
# nnz = 11: 22 column bytes padded to 24, so the pack is 64 + 72 + 24 = 160 bytes, shape [8, 20], and
# a header claiming nnz = 12 keeps that size (the row pointer check catches it).
CROW = torch.tensor([0, 2, 4, 4, 7, 8, 8, 10, 11], dtype=torch.int32)
COL = torch.tensor([0, 30, 5, 6, 9, 2, 17, 3, 11, 12, 29], dtype=torch.uint16)
N, K, NNZ, COL_END = 8, 32, 11, 31


def fixed_layer():
    return ops.csr_pack(CROW, COL, K), randn_nonzero(NNZ), randn_nonzero(N)


# ------------------------------------------------------------------------------------- the pack

@pytest.mark.parametrize("k", [5, 300, 40000, 65536, 65537, 70000])
def test_pack_bytes_match_the_layout_and_the_python_packer(k):
    w = randn_nonzero(6, k) * (torch.rand(6, k) > 0.7)
    w[2] = 0  # an empty row
    w[4, -1] = 1.5  # the last column, so col_end = k
    crow, col, vals = fcsr.compress(w)
    assert crow.dtype == torch.int32 and col.dtype == (torch.uint16 if k <= 65536 else torch.int32)
    packed = ops.csr_pack(crow, col, k)
    nnz, cb = col.shape[0], (2 if k <= 65536 else 4)
    nbytes = fcsr.packed_bytes(6, k, nnz)
    assert nbytes == 64 + 8 * 7 + (cb * nnz + 7) // 8 * 8
    assert packed.dtype == torch.uint8 and packed.shape == (6, -(-nbytes // 6))
    flat = packed.view(-1)
    assert bytes(flat[:64].tolist()) == header_bytes(6, k, (nnz, cb, k))
    assert torch.equal(flat[64:64 + 56].view(torch.int64), crow.long())
    raw_cols = flat[120:120 + cb * nnz].view(torch.uint16 if cb == 2 else torch.int32)
    assert torch.equal(raw_cols.long(), col.long())
    assert not flat[120 + cb * nnz:].any()  # the columns' padding and the row padding are zero
    assert torch.equal(packed, fcsr.pack(crow, col, k))
    # every accepted index dtype packs to the same bytes
    assert torch.equal(ops.csr_pack(crow.long(), col.int(), k), packed)
    assert torch.equal(fcsr.pack(crow.long(), col.int(), k), packed)
    c2, col2 = fcsr.unpack(packed)
    assert c2.dtype == crow.dtype and col2.dtype == col.dtype
    assert torch.equal(c2, crow) and torch.equal(col2, col)
    assert torch.equal(fcsr.to_dense(crow, col, vals, k), w)


def test_pack_of_the_zero_weight_is_the_zero_pack_and_the_placeholder_is_cheap():
    for n, k in ((1, 1), (7, 33), (3, 70000)):
        zero = ops.csr_pack(torch.zeros(n + 1, dtype=torch.int32), torch.zeros(0, dtype=torch.uint16), k)
        assert torch.equal(zero, fcsr.placeholder_pack(n, k))
        cb = 2 if k <= 65536 else 4
        assert torch.equal(zero, pack_header.zeros("csr", 1, (n,), n, k, (0, cb, 0), fcsr.packed_bytes(n, k, 0)))
        assert not zero.view(-1)[64:].any()
        # nnz > 0: every nonzero in column 0 of the last row
        crow = torch.zeros(n + 1, dtype=torch.int64)
        crow[-1] = 5
        assert torch.equal(ops.csr_pack(crow, torch.zeros(5, dtype=torch.int32), k), fcsr.placeholder_pack(n, k, 5))


def test_pack_on_fake_tensors_has_the_pack_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        out = torch.ops.compressops.csr_pack(torch.empty(9, dtype=torch.int32), torch.empty(11, dtype=torch.uint16),
                                             K)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (8, 20)


# ----------------------------------------------------------------------- the same message everywhere

TAMPERED = {  # header field -> (offset, struct format, value, message)
    "magic": (0, "<I", 0x12345678, "does not start with a compressops pack header"),
    "header version": (4, "<I", 2, "does not start with a compressops pack header"),
    "tag": (8, "<8s", b"half", "holds a 'half' pack, not a 'csr' one"),
    "tag bytes": (8, "<8s", b"c\x01r", r"holds a 'c\?r' pack"),
    "format version": (16, "<I", 2, "is a 'csr' pack of version 2, this build reads version 1"),
    "reserved": (20, "<I", 7, "header is corrupt"),
    "N larger": (24, "<q", 9, r"has shape \[8, 20\] but its header \(N=9, K=32\) needs \[9, 19\]"),
    "N smaller": (24, "<q", 7, r"has shape \[8, 20\] but its header \(N=7, K=32\) needs \[7, 22\]"),
    "N zero": (24, "<q", 0, r"N=0, K=32; both must be in \[1, 2\^31\)"),
    "N huge": (24, "<q", 2**40, r"both must be in \[1, 2\^31\)"),
    # K below the columns would let a kernel read past x's rows
    "K below the columns": (32, "<q", 20, r"column end 31 for K=20 and nnz=11; it must be in \[1, K\]"),
    "K larger": (32, "<q", 40, "x has K=32 in its last dimension but the pack has K=40"),
    "K across 65536": (32, "<q", 70000, r"fields \(11, 2, 31\) do not match a 'csr' pack of N=8, K=70000 "
                                        r"\(11, 4, 31\)"),
    "K overflowing": (32, "<q", 2**31 - 1, "do not match"),
    "nnz negative": (40, "<q", -1, r"header has nnz=-1; it must be in \[0, 2\^48\)"),
    "nnz huge": (40, "<q", 2**60, r"nnz=1152921504606846976; it must be in \[0, 2\^48\)"),
    "nnz one more": (40, "<q", 12, r"row pointer is corrupt \(it must start at 0, never decrease and end at "
                                   r"nnz = 12\); repack it with compressops.ops.csr_pack"),
    "nnz larger": (40, "<q", 40, r"has shape \[8, 20\] but its header \(N=8, K=32\) needs \[8, 27\]"),
    "col_bytes": (48, "<q", 4, r"fields \(11, 4, 31\) do not match a 'csr' pack of N=8, K=32 \(11, 2, 31\)"),
    "col_end past K": (56, "<q", 33, r"column end 33 for K=32 and nnz=11"),
    "col_end zero": (56, "<q", 0, r"column end 0 for K=32 and nnz=11; it must be in \[1, K\] \(0 when nnz = 0\)"),
}


@requires_native
@pytest.mark.parametrize("field", sorted(TAMPERED))
def test_tampered_header_raises_the_same_error_everywhere(field):
    """A header that lies raises before a kernel reads past the header, with one message from C++ and Python."""
    packed, vals, b = fixed_layer()
    offset, fmt, value, message = TAMPERED[field]
    native, ref = call_both(ops.csr_linear, reference.csr_linear, randn_nonzero(2, K), tampered(packed, offset, fmt,
                                                                                                   value), vals, b)
    assert native == ref
    assert native.startswith("csr_linear: ")
    assert re.search(message, native), native


@requires_native
def test_a_smaller_column_end_within_k_changes_nothing():
    """col_end only bounds K from below; it moves no read, so a smaller value in [1, K] is harmless."""
    packed, vals, b = fixed_layer()
    x = randn_nonzero(3, K)
    bad = tampered(packed, 56, "<q", 3)
    assert torch.equal(ops.csr_linear(x, bad, vals, b), ops.csr_linear(x, packed, vals, b))


@requires_native
def test_truncated_padded_and_swapped_packs_raise_the_same_error():
    packed, vals, b = fixed_layer()
    x = randn_nonzero(2, K)
    swapped = tampered(tampered(packed, 24, "<q", K), 32, "<q", N)
    flat = packed.view(-1)  # cut or padded as flat bytes: the header stays whole
    for bad, message in ((flat[:-8].view(8, 19), r"has shape \[8, 19\] but its header .N=8, K=32. needs \[8, 20\]"),
                         (packed[:-1], r"has shape \[7, 20\]"),
                         (torch.cat([flat, flat.new_zeros(8)]).view(8, 21), r"has shape \[8, 21\]"),
                         (torch.cat([packed, packed[:1]]), r"has shape \[9, 20\]"),
                         (packed.view(-1)[:63].view(1, 63), "holds 63 bytes, too few for a pack header"),
                         (swapped, r"column end 31 for K=8 and nnz=11")):
        native, ref = call_both(ops.csr_linear, reference.csr_linear, x, bad.clone(), vals, b)
        assert native == ref
        assert re.search(message, native), native


@requires_native
@pytest.mark.parametrize("where, value", [(0, 1), (3, 1), (3, 9), (N, 10), (N, 12)],
                         ids=["first", "decreasing", "past next", "end short", "end long"])
def test_corrupt_row_pointer_raises_the_same_error(where, value):
    """The row pointer is checked on every call: no kernel walks outside [0, nnz)."""
    packed, vals, b = fixed_layer()
    bad = tampered(packed, 64 + 8 * where, "<q", value)
    native, ref = call_both(ops.csr_linear, reference.csr_linear, randn_nonzero(2, K), bad, vals, b)
    assert native == ref
    assert native == ("csr_linear: packed's row pointer is corrupt (it must start at 0, never decrease and end at "
                      "nnz = 11); repack it with compressops.ops.csr_pack")


@requires_native
def test_bad_tensors_and_arguments_raise_the_same_error():
    packed, vals, b = fixed_layer()
    x = randn_nonzero(2, K)
    cases = [
        ((x.int(), packed, vals, b), {}, "csr_linear: x must be float32, bfloat16 or float16, got torch.int32"),
        ((x[:, :31], packed, vals, b), {}, "csr_linear: x has K=31 in its last dimension but the pack has K=32"),
        ((x, packed, vals.half(), b), {},
         "csr_linear: values must be float32 or bfloat16 of shape [nnz] = [11], got torch.float16 (11,)"),
        ((x, packed, vals[:10], b), {}, "got torch.float32 (10,)"),
        ((x, packed, vals.view(1, 11), b), {}, "got torch.float32 (1, 11)"),
        ((x, packed, vals, b[:3]), {}, "csr_linear: bias must be a float tensor of shape [N] = [8], got "
                                       "torch.float32 (3,)"),
        ((x, packed, vals, b.long()), {}, "got torch.int64 (8,)"),
        ((x, packed, vals, b), {"out_dtype": torch.int32},
         "csr_linear: out_dtype must be float32, bfloat16 or float16, got torch.int32"),
        ((x.double(), packed, vals, b), {}, "x must be float32, bfloat16 or float16, got torch.float64"),
    ]
    for args, kwargs, message in cases:
        native, ref = call_both(ops.csr_linear, reference.csr_linear, *args, **kwargs)
        assert native == ref
        assert message in native, native


@requires_native
def test_bad_pack_inputs_raise_the_same_error():
    cases = [
        ((CROW.float(), COL, K), "csr_pack: crow must be a 1-D int32/int64 tensor of shape [N+1] with 1 <= N < 2^31, "
                                 "got torch.float32 (9,)"),
        ((CROW[:1], COL[:0], K), "got torch.int32 (1,)"),
        ((CROW.view(3, 3), COL, K), "got torch.int32 (3, 3)"),
        ((CROW, COL.long(), K), "csr_pack: col must be a 1-D int32 or uint16 tensor, got torch.int64 (11,)"),
        ((CROW, COL.int().view(1, 11), K), "got torch.int32 (1, 11)"),
        ((CROW, COL, 0), "csr_pack: in_features must be in [1, 2^31), got 0"),
        ((CROW, COL, 2**31), "in_features must be in [1, 2^31), got 2147483648"),
        ((CROW + 1, COL, K), "csr_pack: crow must start at 0, never decrease and end at nnz = 11 (the length of col)"),
        ((torch.tensor([0, 5, 4, 11, 11, 11, 11, 11, 11]), COL, K), "crow must start at 0, never decrease"),
        ((CROW, COL[:10], K), "end at nnz = 10"),
        ((CROW, COL, 30), "csr_pack: col values must lie in [0, in_features) = [0, 30), got col[1] = 30"),
        ((CROW, torch.where(COL.int() == 9, -4, COL.int()), K), "got col[4] = -4"),
    ]
    for args, message in cases:
        native, ref = call_both(ops.csr_pack, reference.csr_pack, *args)
        assert native == ref
        assert message in native, native


COLUMN_MESSAGE = ("csr_linear: packed holds a column outside [0, K) = [0, {k}) (its column bytes are corrupt); "
                  "repack it with compressops.ops.csr_pack")


@requires_native
@pytest.mark.parametrize("route", ["kernel", "dense"])
@pytest.mark.parametrize("k, j, value", [(K, 3, K), (K, 10, 65535), (70000, 0, 70000), (70000, 4, -1),
                                         (70000, 2, 2**31 - 1)],
                         ids=["K", "uint16 max", "int32 K", "int32 negative", "int32 max"])
def test_a_column_past_k_raises_the_same_error_on_every_route(route, k, j, value):
    """The columns are checked on every call (one max over them): a column >= K in a pack's bytes
    would read past x's rows and, on the dense route, write past the decoded weight."""
    col = COL if k <= 65536 else COL.int()
    packed, vals, b = ops.csr_pack(CROW, col, k), randn_nonzero(NNZ), randn_nonzero(N)
    cb = 2 if k <= 65536 else 4
    bad = tampered(packed, 64 + 8 * (N + 1) + cb * j, "<H" if cb == 2 else "<i", value)
    with co.sparse_route(route):
        native, ref = call_both(ops.csr_linear, reference.csr_linear, randn_nonzero(3, k), bad, vals, b)
    assert native == ref == COLUMN_MESSAGE.format(k=k)


@requires_native
def test_every_16_bit_column_is_in_range_at_k_65536():
    """With 16-bit columns and K = 65536 no column can be out of range: the largest one works."""
    k = 65536
    packed, vals, b = ops.csr_pack(CROW, COL, k), randn_nonzero(NNZ), randn_nonzero(N)
    bad = tampered(packed, 64 + 8 * (N + 1) + 2 * 3, "<H", 65535)
    x = randn_nonzero(2, k)
    y = ops.csr_linear(x, bad, vals, b)
    assert relerr(y, reference.csr_linear(x, bad, vals, b)) < F32_TOL


# --------------------------------------------------------------------------- what the kernels trust

@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("m", [2, 9, 70], ids=lambda m: f"M{m}")
def test_any_column_order_gives_the_same_result(level, m):
    """The pack records no column order: every kernel (the K-tiled one from 64 rows at >= 40% nonzeros
    included) is correct with the columns of each row in any order."""
    n, k = 21, 300
    w = randn_nonzero(n, k)
    crow, col, vals = fcsr.compress(w, fcsr.magnitude_mask(w, 0.5))
    perm = torch.cat([torch.randperm(int(crow[i + 1] - crow[i])) + int(crow[i]) for i in range(n)])
    shuffled = ops.csr_pack(crow, col[perm], k)
    x, b = randn_nonzero(m, k), randn_nonzero(n)
    with co.sparse_route("kernel"), co.cpu_isa(level):
        y = ops.csr_linear(x, shuffled, vals[perm], b)
        ran = torch.ops.compressops._last_kernel_isa("csr_linear")
        y_sorted = ops.csr_linear(x, ops.csr_pack(crow, col, k), vals, b)
    assert ran == expected_kernel_level("csr_linear", level)
    assert relerr(y, reference.csr_linear(x, shuffled, vals[perm], b)) < F32_TOL
    assert relerr(y, y_sorted) < F32_TOL


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_out_dtype_rounds_the_float32_result_once(level, dtype):
    packed, vals, b = fixed_layer()
    x = randn_nonzero(2, 3, K, dtype=dtype)
    with co.cpu_isa(level):
        y32 = ops.csr_linear(x, packed, vals, b, out_dtype=torch.float32)
        y = ops.csr_linear(x, packed, vals, b)
        y16 = ops.csr_linear(x, packed, vals, b, out_dtype=torch.float16)
    assert y32.dtype == torch.float32 and y32.shape == (2, 3, N)
    assert y.dtype == dtype and torch.equal(y, y32.to(dtype))
    assert torch.equal(y16, y32.half())
    assert relerr(y32, reference.csr_linear(x, packed, vals, b, out_dtype=torch.float32)) < F32_TOL


def test_csr_linear_fake_takes_n_from_the_pack_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode

    packed, vals, b = fixed_layer()
    with FakeTensorMode() as mode:
        fx, fp, fv, fb = (mode.from_tensor(t) for t in (randn_nonzero(4, 5, K), packed, vals, b))
        y = torch.ops.compressops.csr_linear(fx, fp, fv, fb, torch.bfloat16)
    assert tuple(y.shape) == (4, 5, N) and y.dtype == torch.bfloat16


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("route", ["kernel", "auto", "dense"])
@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("m", [1, 20])
def test_non_finite_x_is_the_dense_product(level, route, value, m):
    """An Inf or NaN in x gives the reference's pattern on every level, route and batch size: NaN
    where an Inf meets a zero the kernels skip (row 2 of the weight is empty), so the call takes the
    dense route; the finite rows stay close."""
    k, n = 37, 19
    w = randn_nonzero(n, k)
    w[2] = 0
    crow, col, values = fcsr.compress(w, fcsr.magnitude_mask(w, 0.5))
    packed, b = ops.csr_pack(crow, col, k), randn_nonzero(n)
    x = non_finite_x(value, m, k)
    with co.cpu_isa(level), co.sparse_route(route):
        y = ops.csr_linear(x, packed, values, b)
        ran = torch.ops.compressops._last_kernel_isa("csr_linear")
        yb = ops.csr_linear(x.bfloat16(), packed, values.bfloat16(), b)
    ref = reference.csr_linear(x, packed, values, b)
    fin = same_non_finite(y, ref)
    assert ran == "dense" and torch.isnan(y[0, 2])
    assert relerr(y[fin], ref[fin]) < F32_TOL
    same_non_finite(yb, reference.csr_linear(x.bfloat16(), packed, values.bfloat16(), b))
