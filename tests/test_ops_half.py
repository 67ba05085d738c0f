"""half ops (float16 weights, float32 sums) against compressops.reference and the exact sum, on every CPU level."""

import re
import struct

import pytest
import torch

import compressops as co
from compressops import ops, reference
from compressops.formats import half as fh
from compressops.formats import pack_header

from .helpers import (OPCHECK_UTILS, call_both, expected_kernel_level, grad_leaf, isa_params, randn_nonzero,
                     requires_cuda, requires_native, tampered)

SHAPES = [  # (batch shape, K, N): K = 1, odd K and K mod 8 != 0 (the vector tail), N not a multiple of 3, 8 or 24
    ((1,), 1, 1),
    ((1,), 64, 16),
    ((3,), 67, 33),
    ((2, 5), 300, 70),
    ((17,), 1000, 129),
    ((4, 2, 3), 129, 48),
    ((1,), 517, 203),
]


def make_layer(k, n, bias=True):
    w = randn_nonzero(n, k).half()
    return w, ops.half_pack_weight(w), (randn_nonzero(n) if bias else None)


def exact(x, w, b):
    y = x.double().reshape(-1, w.shape[1]) @ w.double().t()
    return (y + b.double() if b is not None else y).reshape(*x.shape[:-1], w.shape[0])


def header_bytes(n, k, tag=b"half", version=1, fields=(0, 0, 0)):
    return struct.pack("<4sI8sIIqq3q", b"COPK", 1, tag, version, 0, n, k, *fields)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pack_bit_pattern(shape):
    _, k, n = shape
    w = randn_nonzero(n, k).half()
    w.view(-1)[0] = float("inf")  # the pack is bytes: any float16 goes through unchanged
    w.view(-1)[-1] = 2.0**-20  # a float16 subnormal
    packed = ops.half_pack_weight(w)
    nbytes = fh.packed_bytes(n, k)
    assert nbytes == 64 + 2 * n * k
    assert packed.dtype == torch.uint8 and packed.shape == (n, -(-nbytes // n))
    flat = packed.view(-1)
    assert bytes(flat[:64].tolist()) == header_bytes(n, k)
    assert torch.equal(flat[64:nbytes], w.contiguous().view(-1).view(torch.uint8))
    assert not flat[nbytes:].any()  # the row padding is zero
    assert torch.equal(packed, fh.pack_weight(w))
    assert torch.equal(fh.unpack_weight(packed).view(torch.int16), w.view(torch.int16))
    # a non-contiguous weight packs to the same bytes
    assert torch.equal(ops.half_pack_weight(w.t().contiguous().t()), packed)


def test_one_element_weight_with_a_stride_packs_everywhere():
    """A [1, 1] view with last-dim stride 2 counts as contiguous, yet cannot be viewed as bytes: the
    reference packer raised where the native one packed (found by test_properties.py)."""
    w = torch.tensor([[0.0, 1.5]], dtype=torch.float16)[:, 1::2]
    assert w.stride(-1) == 2 and w.is_contiguous()
    packed = ops.half_pack_weight(w.contiguous().clone())
    assert torch.equal(fh.pack_weight(w), packed) and torch.equal(ops.half_pack_weight(w), packed)


@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_linear_within_bound(level, shape, bias, dtype):
    """Every level is within formats.half.error_bound of the exact sum, so within twice it of the reference."""
    batch, k, n = shape
    w, packed, b = make_layer(k, n, bias)
    x = randn_nonzero(*batch, k, dtype=dtype)
    with co.cpu_isa(level):
        y = ops.half_linear(x, packed, b, out_dtype=torch.float32)
        y_default = ops.half_linear(x, packed, b)
        ran = torch.ops.compressops._last_kernel_isa("half_linear")
    assert ran == expected_kernel_level("half_linear", level)
    assert y.dtype == torch.float32 and y.shape == (*batch, n)
    bound = fh.error_bound(x, w, b)
    y_ref = reference.half_linear(x, packed, b, out_dtype=torch.float32)
    assert ((y.double() - exact(x, w, b)).abs() <= bound).all()
    assert ((y.double() - y_ref.double()).abs() <= 2 * bound).all()
    # the default output is x's dtype, rounded once from the float32 result
    assert y_default.dtype == dtype and torch.equal(y_default, y.to(dtype))


@pytest.mark.parametrize("level", isa_params())
def test_row_results_independent_of_batch_and_threads(level):
    """A row's output is the same bits whatever else is in the batch and however threads split it."""
    w, packed, b = make_layer(203, 77)
    x = randn_nonzero(13, 203)
    old = torch.get_num_threads()
    try:
        with co.cpu_isa(level):
            torch.set_num_threads(1)
            full = ops.half_linear(x, packed, b)
            alone = torch.cat([ops.half_linear(x[i:i + 1], packed, b) for i in range(13)])
            torch.set_num_threads(2)
            two = ops.half_linear(x, packed, b)
            pairs = torch.cat([ops.half_linear(x[i:i + 2], packed, b) for i in range(0, 13, 2)])
    finally:
        torch.set_num_threads(old)
    assert torch.equal(full, alone) and torch.equal(full, two) and torch.equal(full, pairs)


@requires_native
def test_scalar_kernel_sums_in_k_order():
    """The scalar level is the plain sequential float32 sum: bit for bit a loop in k order."""
    w, packed, b = make_layer(37, 5)
    x = randn_nonzero(2, 37)
    with co.cpu_isa("scalar"):
        y = ops.half_linear(x, packed, b)
    expected = torch.zeros(2, 5)
    wf = w.float()
    for m in range(2):
        for n in range(5):
            acc = torch.zeros((), dtype=torch.float32)
            for k in range(37):
                acc = acc + x[m, k] * wf[n, k]
            expected[m, n] = acc + b[n]
    assert torch.equal(y, expected)


def test_empty_batch_non_contiguous_and_strided_inputs():
    w, packed, b = make_layer(96, 24)
    assert ops.half_linear(torch.empty(0, 3, 96), packed, b).shape == (0, 3, 24)
    x = randn_nonzero(96, 10).t()  # [10, 96] with stride (1, 10)
    assert not x.is_contiguous()
    y = ops.half_linear(x, packed, b)
    assert torch.equal(y, ops.half_linear(x.contiguous(), packed, b))
    wide = randn_nonzero(6, 140)[:, 20:116]  # rows strided wider than K
    assert torch.equal(ops.half_linear(wide, packed, b), ops.half_linear(wide.contiguous(), packed, b))
    row = randn_nonzero(1, 96).expand(4, 96)  # stride 0 between rows
    assert torch.equal(ops.half_linear(row, packed, b), ops.half_linear(row.contiguous(), packed, b))
    assert ((y.double() - exact(x, w, b)).abs() <= fh.error_bound(x, w, b)).all()


def test_special_values():
    """Zero rows give the bias exactly; NaN/Inf in a row make that row's outputs non-finite only."""
    w, packed, b = make_layer(70, 20)
    x = randn_nonzero(4, 70)
    x[0] = 0
    x[1, 5] = float("nan")
    x[2, 9] = float("inf")
    y = ops.half_linear(x, packed, b)
    assert torch.equal(y[0], b)
    assert torch.isnan(y[1]).all() and not torch.isfinite(y[2]).any()
    assert torch.isfinite(y[3]).all()


def test_inputs_not_modified():
    _, packed, b = make_layer(64, 32)
    x = randn_nonzero(5, 64)
    copies = [t.clone() for t in (x, packed, b)]
    ops.half_linear(x, packed, b)
    for before, after in zip(copies, (x, packed, b)):
        assert torch.equal(before, after)


@pytest.mark.parametrize("use_reference", [False, True], ids=["native", "reference"])
def test_bad_input_errors(use_reference):
    """Clear errors naming the argument, from the native kernel and from the reference alike."""
    lin = reference.half_linear if use_reference else ops.half_linear
    pack = reference.half_pack_weight if use_reference else ops.half_pack_weight
    err = (ValueError, RuntimeError)
    w, packed, b = make_layer(32, 8)
    x = randn_nonzero(2, 32)
    with pytest.raises(err, match="x must be float"):
        lin(x.to(torch.int32), packed, b)
    with pytest.raises(err, match="K=31"):
        lin(x[:, :31], packed, b)
    with pytest.raises(err, match="bias must be"):
        lin(x, packed, b[:3])
    with pytest.raises(err, match="packed must be a 2-D uint8"):
        lin(x, packed.view(-1), b)
    with pytest.raises(err, match="packed must be a 2-D uint8"):
        lin(x, w, b)
    with pytest.raises(err, match="packed must be contiguous"):
        lin(x, packed.t(), b)
    with pytest.raises(err, match="out_dtype must be"):
        lin(x, packed, b, torch.int32)
    with pytest.raises(err, match="must be float16"):
        pack(w.float())
    with pytest.raises(err, match="2-D"):
        pack(w.flatten())
    with pytest.raises(err, match=r"1 <= N, K < 2\^31"):
        pack(torch.zeros(0, 4, dtype=torch.float16))


TAMPERED = {  # header field -> (offset, struct format, value, message)
    "magic": (0, "<I", 0x12345678, "does not start with a compressops pack header"),
    "header version": (4, "<I", 2, "does not start with a compressops pack header"),
    "tag": (8, "<8s", b"int8", "holds a 'int8' pack, not a 'half' one"),
    "tag bytes": (8, "<8s", b"ha\x01f", r"holds a 'ha\?f' pack"),
    "format version": (16, "<I", 2, "is a 'half' pack of version 2, this build reads version 1"),
    "reserved": (20, "<I", 7, "header is corrupt"),
    "N larger": (24, "<q", 9, r"has shape \[8, 72\] but its header \(N=9, K=32\) needs \[9, 72\]"),
    "N zero": (24, "<q", 0, r"N=0, K=32; both must be in \[1, 2\^31\)"),
    "N negative": (24, "<q", -8, r"both must be in \[1, 2\^31\)"),
    "N huge": (24, "<q", 2**40, r"both must be in \[1, 2\^31\)"),
    "K overflowing": (32, "<q", 2**31 - 1, "needs"),
    "field": (40, "<q", 16, r"header fields \(16, 0, 0\) do not match"),
    "last field": (56, "<q", -1, "do not match"),
}


@requires_native
@pytest.mark.parametrize("field", sorted(TAMPERED))
def test_tampered_header_raises_the_same_error_everywhere(field):
    """A header that lies raises before any weight byte is read, with one message from C++ and Python."""
    _, packed, b = make_layer(32, 8)
    offset, fmt, value, message = TAMPERED[field]
    bad = tampered(packed, offset, fmt, value)
    native, ref = call_both(ops.half_linear, reference.half_linear, randn_nonzero(2, 32), bad, b)
    assert native == ref
    assert native.startswith("half_linear: packed")
    assert re.search(message, native), native


@requires_native
def test_truncated_or_padded_pack_raises():
    _, packed, b = make_layer(32, 8)  # 64 + 512 bytes: [8, 72]
    x = randn_nonzero(2, 32)
    for bad, message in ((packed[:, :-1], r"has shape \[8, 71\] but its header .N=8, K=32. needs \[8, 72\]"),
                         (torch.cat([packed, packed[:1]]), r"has shape \[9, 72\]"),
                         (packed.view(-1)[:63].view(1, 63), "holds 63 bytes, too few for a pack header")):
        native, ref = call_both(ops.half_linear, reference.half_linear, x, bad.clone(), b)
        assert native == ref
        assert re.search(message, native), native


@requires_native
def test_swapped_n_and_k_keeps_the_size_and_fails_on_the_shape():
    """N and K swapped give a pack of the same byte count; its first dimension is no longer N."""
    _, packed, b = make_layer(32, 8)
    bad = tampered(tampered(packed, 24, "<q", 32), 32, "<q", 8)
    native, ref = call_both(ops.half_linear, reference.half_linear, randn_nonzero(2, 32), bad, b)
    assert native == ref
    assert re.search(r"has shape \[8, 72\] but its header \(N=32, K=8\) needs \[32, 18\]", native), native


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_error_bound_holds_for_the_reference_and_catches_a_dropped_term(shape):
    """The reference meets the bound, and the bound is tight enough on these shapes that a kernel
    which skipped the last k (a wrong tail) or the bias would fail test_linear_within_bound."""
    batch, k, n = shape
    w, packed, b = make_layer(k, n)
    x = randn_nonzero(*batch, k)
    y = exact(x, w, b)
    bound = fh.error_bound(x, w, b)
    assert ((reference.half_linear(x, packed, b).double() - y).abs() <= bound).all()
    last_term = x[..., -1:].double() * w[:, -1].double()
    assert (last_term.abs() > bound).any()
    assert (b.double().abs() > bound).any()


def _opcheck_samples():
    w, packed, b = make_layer(67, 19)
    x = randn_nonzero(3, 67)
    return [
        (torch.ops.compressops.half_pack_weight.default, (w,), {}),
        (torch.ops.compressops.half_linear.default, (x, packed, b), {}),
        (torch.ops.compressops.half_linear.default, (x.bfloat16(), packed, None), {}),
        (torch.ops.compressops.half_linear.default, (randn_nonzero(2, 5, 67), packed, b),
         {"out_dtype": torch.float16}),
        # with gradients (of x and bias; the weight is frozen): the autograd and compiled-backward checks
        (torch.ops.compressops.half_linear.default, (grad_leaf(x), packed, grad_leaf(b)), {}),
        (torch.ops.compressops.half_linear.default, (grad_leaf(randn_nonzero(2, 5, 67).bfloat16()), packed, None),
         {"out_dtype": torch.float32}),
    ]


@pytest.mark.parametrize("idx", range(6))
def test_opcheck(idx):
    op, args, kwargs = _opcheck_samples()[idx]
    torch.library.opcheck(op, args, kwargs, test_utils=OPCHECK_UTILS)


def test_pack_header_twin_matches_and_refuses_long_tags():
    assert bytes(pack_header.make("half", 1, 8, 32).tolist()) == header_bytes(8, 32)
    assert bytes(pack_header.make("ab", 3, 2**31 - 1, 1, (1, -2, 3)).tolist()) == \
        header_bytes(2**31 - 1, 1, b"ab", 3, (1, -2, 3))
    with pytest.raises(ValueError, match="1 to 8 ASCII"):
        pack_header.make("ninechars", 1, 1, 1)


@requires_cuda
def test_cuda_runs_the_reference():
    w, packed, b = make_layer(300, 70)
    x = randn_nonzero(9, 300)
    y = ops.half_linear(x.cuda(), ops.half_pack_weight(w.cuda()), b.cuda())
    assert torch.equal(ops.half_pack_weight(w.cuda()).cpu(), packed)
    assert ((y.cpu().double() - exact(x, w, b)).abs() <= fh.error_bound(x, w, b)).all()
