"""int4 ops against compressops.reference, on every CPU ISA level this machine runs."""

import re
import struct
import threading

import pytest
import torch

import compressops as co
from compressops import ops, reference
from compressops.formats import int4 as f4

from .helpers import (OPCHECK_UTILS, call_both, expected_kernel_level, grad_leaf, isa_params, randn_nonzero,
                     requires_native, tampered)

SHAPES = [  # (batch shape, K, N, group_size, symmetric): odd K (not a multiple of the group), odd N
    ((1,), 1, 1, 32, False),
    ((1,), 256, 16, 128, False),
    ((3,), 67, 33, 32, True),
    ((2, 5), 300, 70, 64, False),
    ((8,), 1000, 129, 256, True),
    ((4, 2, 3), 129, 48, 128, False),
    ((65,), 512, 75, 64, False),
]

# int4 has kernels for scalar, avx2 and avx512_vnni (the GEMM; activation quantization has no
# avx512_vnni form and runs avx2's there); avx512 runs avx2 and amx runs avx512_vnni.

# Shapes that reach every tail of the register tiles (avx512_vnni: rows in tiles of 4, columns in
# 6-block tiles at M > 1 and 8-block tiles at M = 1, an odd last block; avx2: 4 rows x 2 blocks):
# (M, K, N, group_size), K not a multiple of the group where it can be.
TILE_TAILS = [
    (1, 200, 8 * 8 * 2 + 7 * 8 - 3, 64),  # M = 1: two whole 8-block tiles, then 7 blocks, N % 8 = 5
    (1, 96, 8, 32),                       # M = 1: one block
    (2, 256, 24, 128),                    # 3 blocks: one pair and one lone block
    (3, 130, 33, 128),                    # 5 blocks, last one 1 column wide
    (6, 200, 56, 64),                     # a row tile and 2 rows; a 6-block tile and 1 block
    (7, 64, 64, 32),                      # a row tile and 3 rows; 6 + 2 blocks
    (8, 320, 77, 256),                    # two whole row tiles; 6 + 4 blocks
    (9, 129, 17, 64),                     # two row tiles and one row
    (17, 1000, 129, 256),                 # four row tiles and one row, 6 + 6 + 5 blocks
]


def make_layer(k, n, group_size=128, symmetric=False, bias=True):
    w = randn_nonzero(n, k)
    qw, s, z = f4.quantize_weight(w, group_size, symmetric)
    return w, (qw, s, z), ops.int4_pack_weight(qw, s, z, k, group_size), (randn_nonzero(n) if bias else None)


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def close_to_reference(y, y_ref):
    """Kernel vs reference: the integer sums are exact, the fp32 epilogue differs by rounding only."""
    tol = 1e-5 * y_ref.double().abs().max().item() + 1e-6
    if y.dtype == torch.bfloat16:  # one bf16 rounding of values that differ in the last fp32 bits
        tol = 2 ** -7 * y_ref.double().abs().max().item()
    return (y.double() - y_ref.double()).abs().max().item() <= tol


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_quantize_pack_roundtrip_and_matches_python_packer(shape):
    _, k, n, gs, sym = shape
    w = randn_nonzero(n, k)
    qw, s, z = f4.quantize_weight(w, gs, sym)
    kp = f4.padded_k(k, gs)
    assert qw.shape == (n, kp // 2) and qw.dtype == torch.uint8
    assert s.shape == (n, kp // gs) and (z is None) == sym
    codes = f4.unpack_nibbles(qw)
    assert torch.equal(f4.pack_nibbles(codes), qw)
    # padding columns hold the zero point, so they dequantize to exactly 0
    zpad = 8 if sym else z[:, -1:]
    assert (codes[:, k:] == zpad).all()
    wd = f4.dequantize(qw, s, z, k, gs)
    assert wd.shape == (n, k)
    # 4-bit RTN on Gaussian weights: about 10% relative error
    assert rel_err(wd, w) < 0.13
    packed = ops.int4_pack_weight(qw, s, z, k, gs)
    assert torch.equal(packed, f4.pack_weight(qw, s, z, k, gs))
    nbytes = f4.packed_bytes(n, k, gs, sym)
    assert packed.dtype == torch.uint8 and packed.shape == (n, -(-nbytes // n))
    flat = packed.view(-1)
    assert bytes(flat[:64].tolist()) == header_bytes(n, k, (gs, kp // gs, int(sym)))
    assert not flat[nbytes:].any()  # the row padding is zero
    groups = kp // gs
    assert nbytes == 64 + -(-n // 8) * groups * (gs * 4 + 64) + (0 if sym else n * groups)
    qw2, s2, z2, lay = f4.unpack_weight(packed)
    assert torch.equal(qw2, qw) and torch.equal(s2.view(torch.int32), s.view(torch.int32))
    assert (z2 is None) == sym and (sym or torch.equal(z2, z))
    assert lay == f4.Layout(n, k, gs, sym) and lay.groups == kp // gs and lay.k_pad == kp
    # a non-contiguous canonical set packs to the same bytes
    assert torch.equal(ops.int4_pack_weight(qw.t().contiguous().t(), s.t().contiguous().t(),
                                            None if sym else z.t().contiguous().t(), k, gs), packed)


def header_bytes(n, k, fields, tag=b"int4", version=2):
    return struct.pack("<4sI8sIIqq3q", b"COPK", 1, tag, version, 0, n, k, *fields)


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_unpack_is_exact_where_z_times_s_loses_z(symmetric):
    """The pack keeps the canonical bytes: scales that are 0, -0, subnormal, huge, inf or NaN (any
    payload), with any zero point, come back bit for bit, though z * s cannot give z back."""
    n, k, gs = 11, 100, 32
    qw, s, z = f4.quantize_weight(randn_nonzero(n, k), gs, symmetric)
    bits = s.view(torch.int32)
    specials = [0, 0x80000000, 1, 0x007FFFFF, 0x7F7FFFFF, 0x7F800000, 0xFF800000, 0x7FC00001, 0x7F800001,
                0xFFC12345]
    for i, v in enumerate(specials):
        bits.view(-1)[3 * i] = v - 2**32 if v >= 2**31 else v
    if z is not None:
        z.view(-1)[::3] = torch.arange(len(z.view(-1)[::3])) % 16
    for pack in (ops.int4_pack_weight, f4.pack_weight):
        packed = pack(qw, s, z, k, gs)
        qw2, s2, z2, _ = f4.unpack_weight(packed)
        assert torch.equal(qw2, qw) and torch.equal(s2.view(torch.int32), s.view(torch.int32))
        assert (z2 is None and z is None) or torch.equal(z2, z)
    assert torch.equal(ops.int4_pack_weight(qw, s, z, k, gs), f4.pack_weight(qw, s, z, k, gs))


@pytest.mark.parametrize("symmetric", [False, True], ids=["asym", "sym"])
def test_zero_pack_is_the_pack_of_the_zero_weight(symmetric):
    n, k, gs = 13, 70, 32
    g = f4.padded_k(k, gs) // gs
    zeros = None if symmetric else torch.zeros(n, g, dtype=torch.uint8)
    qw, s = torch.zeros(n, f4.padded_k(k, gs) // 2, dtype=torch.uint8), torch.zeros(n, g)
    zero = f4.zero_pack(n, k, gs, symmetric)
    assert torch.equal(ops.int4_pack_weight(qw, s, zeros, k, gs), zero)
    assert torch.equal(f4.dequantize(*f4.unpack_weight(zero)[:3], k, gs), torch.zeros(n, k))
    assert torch.equal(ops.int4_linear(randn_nonzero(2, k), zero), torch.zeros(2, n))


@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_int4_linear_matches_reference(level, shape, bias, dtype):
    batch, k, n, gs, sym = shape
    w, canon, packed, b = make_layer(k, n, gs, sym, bias)
    x = randn_nonzero(*batch, k, dtype=dtype)
    with co.cpu_isa(level):
        y = ops.int4_linear(x, packed, b)
        ran = torch.ops.compressops._last_kernel_isa("int4_linear")
    assert ran == expected_kernel_level("int4_linear", level)
    y_ref = reference.int4_linear(x, packed, b)
    assert y.dtype == dtype and y.shape == (*batch, n)
    assert close_to_reference(y, y_ref)
    # W4A8 vs the fp32 product with the dequantized weight: per-group int8 activations cost ~0.5-1%
    wd = f4.dequantize(*canon, k, gs)
    y_fp = x.double() @ wd.double().t() + (b.double() if b is not None else 0)
    if k >= 64 and dtype == torch.float32:
        assert rel_err(y_ref, y_fp) < 0.02


@requires_native
@pytest.mark.parametrize("m, k, n, gs", TILE_TAILS, ids=str)
def test_every_level_gives_the_same_bits(m, k, n, gs):
    """The integer group sums are exact and every level runs the same fp32 epilogue in the same order
    (fma(acc, s * a_scale), fma(-z * s, a_corr), + bias), so every level's output equals scalar's bit for
    bit, at every row and column tail of each level's register tiles (one thread: one task holds every
    column block, so the tails are the ones TILE_TAILS names)."""
    _, _, packed, b = make_layer(k, n, gs, symmetric=False)
    x = randn_nonzero(m, k)
    outs = {}
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for param in isa_params():
            level = param.values[0]
            with co.cpu_isa(level):
                outs[level] = (ops.int4_linear(x, packed, b), ops.int4_linear(x.bfloat16(), packed))
                ran = torch.ops.compressops._last_kernel_isa("int4_linear")
            assert ran == expected_kernel_level("int4_linear", level)
    finally:
        torch.set_num_threads(old)
    want = outs.pop("scalar")
    assert close_to_reference(want[0], reference.int4_linear(x, packed, b))
    for level, got in outs.items():
        assert torch.equal(got[0], want[0]), level
        assert torch.equal(got[1], want[1]), level


@pytest.mark.parametrize("level", isa_params())
def test_activation_quantization_exact_in_integers(level):
    """Integer part exact: integer-valued activations within +-127 of one group scale give the
    same answer as the float64 dot product of codes and activations."""
    k, n, gs = 256, 24, 64
    qw, s, z = f4.quantize_weight(randn_nonzero(n, k), gs)
    s = torch.ones_like(s)  # codes only, no scale rounding
    packed = ops.int4_pack_weight(qw, s, z, k, gs)
    x = torch.randint(-127, 128, (5, k)).float()
    x.view(5, -1, gs)[:, :, 0] = 127.0  # every group's amax is 127: activation scale 1, q = x
    with co.cpu_isa(level):
        y = ops.int4_linear(x, packed)
    codes = f4.unpack_nibbles(qw).double().view(n, -1, gs) - z.double().unsqueeze(-1)
    exact = x.double() @ codes.reshape(n, -1).t()
    assert torch.equal(y.double(), exact)


@pytest.mark.parametrize("level", isa_params())
def test_special_rows(level):
    """Zero rows give the bias; rows with NaN/Inf give NaN."""
    _, _, packed, b = make_layer(70, 20, 32)
    x = randn_nonzero(4, 70)
    x[0] = 0
    x[1, 5] = float("nan")
    x[2, 69] = float("inf")
    with co.cpu_isa(level):
        y = ops.int4_linear(x, packed, b)
    y_ref = reference.int4_linear(x, packed, b)
    assert torch.equal(y[0], b)
    assert torch.isnan(y[1]).all() and torch.isnan(y[2]).all()
    assert torch.isnan(y_ref[1]).all() and torch.isnan(y_ref[2]).all()
    assert torch.isfinite(y[3]).all() and close_to_reference(y[3], y_ref[3])


@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_groups_too_small_for_a_finite_scale_quantize_as_zero(level, dtype):
    """127 / amax overflows float32 for amax below about 3.7e-37; such a group is quantized as zero
    (scale 0, q 0) by the reference and every level alike: no NaN from 0 * inf, no +-127 codes."""
    _, _, packed, b = make_layer(96, 20, 32)
    x = randn_nonzero(4, 96)
    x[0, :32] = 1e-38  # the group: tiny values and one zero
    x[0, 0] = 0
    x[1, 32:64] = 3e-37  # a normal float32, still too small
    x[2] = 1e-38
    x[2, 0] = 0  # every group tiny: the bias alone
    x = x.to(dtype)
    zeroed = x.clone()
    zeroed[0, :32] = 0
    zeroed[1, 32:64] = 0
    zeroed[2] = 0
    q, scale, corr = reference.int4_quantize_activation(x, 32)
    assert torch.equal(scale[:3] == 0, zeroed[:3].view(3, 3, 32).abs().amax(-1) == 0)
    assert not q.view(4, 3, 32)[scale == 0].any() and not corr[scale == 0].any()
    y_ref = reference.int4_linear(x, packed, b)
    assert torch.isfinite(y_ref).all() and torch.equal(y_ref, reference.int4_linear(zeroed, packed, b))
    assert torch.equal(y_ref[2], b.to(dtype))
    with co.cpu_isa(level):
        y = ops.int4_linear(x, packed, b)
        assert torch.equal(y, ops.int4_linear(zeroed, packed, b))
    assert torch.equal(y[2], b.to(dtype)) and close_to_reference(y, y_ref)


def test_non_contiguous_empty_and_out_dtype():
    _, _, packed, b = make_layer(96, 24, 32)
    x = randn_nonzero(96, 10).t()
    assert not x.is_contiguous()
    assert close_to_reference(ops.int4_linear(x, packed, b), reference.int4_linear(x.contiguous(), packed, b))
    assert ops.int4_linear(torch.empty(0, 3, 96), packed, b).shape == (0, 3, 24)
    y16 = ops.int4_linear(x, packed, b, out_dtype=torch.float16)
    assert y16.dtype == torch.float16
    xh = x.half()
    yh = ops.int4_linear(xh, packed, b)
    assert yh.dtype == torch.float16
    assert rel_err(yh, reference.int4_linear(xh, packed, b)) < 1e-3


def test_inputs_not_modified():
    _, (qw, s, z), packed, b = make_layer(64, 32, 32)
    x = randn_nonzero(5, 64)
    tensors = (x, packed, b, qw, s, z)
    copies = [t.clone() for t in tensors]
    ops.int4_linear(x, packed, b)
    ops.int4_pack_weight(qw, s, z, 64, 32)
    for before, after in zip(copies, tensors):
        assert torch.equal(before, after)


@requires_native
def test_thread_count_and_concurrent_calls_agree():
    _, _, packed, b = make_layer(512, 300, 128)
    x = randn_nonzero(37, 512)
    expected = ops.int4_linear(x, packed, b)
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert torch.equal(ops.int4_linear(x, packed, b), expected)
    finally:
        torch.set_num_threads(old)
    results, errors = [None] * 4, []

    def work(i):
        try:
            results[i] = ops.int4_linear(x, packed, b)
        except Exception as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(torch.equal(r, expected) for r in results)


def _opcheck_samples():
    _, (qw, s, z), packed, b = make_layer(67, 19, 32)
    qs, ss, _ = f4.quantize_weight(randn_nonzero(19, 67), 64, True)
    x = randn_nonzero(3, 67)
    return [
        (torch.ops.compressops.int4_pack_weight.default, (qw, s, z, 67, 32), {}),
        (torch.ops.compressops.int4_pack_weight.default, (qs, ss, None, 67, 64), {}),
        (torch.ops.compressops.int4_linear.default, (x, packed, b), {}),
        (torch.ops.compressops.int4_linear.default, (x.bfloat16(), packed, None), {"out_dtype": torch.float32}),
        # with gradients (of x and bias; the weight is frozen): the autograd and compiled-backward checks
        (torch.ops.compressops.int4_linear.default, (grad_leaf(x), packed, grad_leaf(b)), {}),
        (torch.ops.compressops.int4_linear.default, (grad_leaf(randn_nonzero(2, 4, 67)), packed, None),
         {"out_dtype": torch.bfloat16}),
    ]


@pytest.mark.parametrize("idx", range(6))
def test_opcheck(idx):
    op, args, kwargs = _opcheck_samples()[idx]
    torch.library.opcheck(op, args, kwargs, test_utils=OPCHECK_UTILS)


@pytest.mark.parametrize("use_reference", [False, True], ids=["native", "reference"])
def test_bad_input_errors(use_reference):
    lin = reference.int4_linear if use_reference else ops.int4_linear
    pack = reference.int4_pack_weight if use_reference else ops.int4_pack_weight
    err = (ValueError, RuntimeError)
    _, (qw, s, z), packed, b = make_layer(64, 8, 32)
    x = randn_nonzero(2, 64)
    with pytest.raises(err, match="x must be float"):
        lin(x.to(torch.int32), packed, b)
    with pytest.raises(err, match="K=63"):
        lin(x[:, :63], packed, b)
    with pytest.raises(err, match="bias must be"):
        lin(x, packed, b[:3])
    with pytest.raises(err, match="out_dtype must be"):
        lin(x, packed, b, torch.int32)
    with pytest.raises(err, match="w_packed must be a 2-D uint8"):
        lin(x, packed.view(-1), b)
    with pytest.raises(err, match="w_packed must be contiguous"):
        lin(x, packed.t(), b)
    with pytest.raises(err, match="w_packed does not start with a compressops pack header"):
        lin(x, qw, b)
    with pytest.raises(err, match="group_size must be"):
        pack(qw, s, z, 64, 48)
    with pytest.raises(err, match="qweight must be uint8"):
        pack(qw.to(torch.int8), s, z, 64, 32)
    with pytest.raises(err, match="K_pad/2"):
        pack(qw, s, z, 100, 32)
    with pytest.raises(err, match="scales must be float32"):
        pack(qw, s.double(), z, 64, 32)
    with pytest.raises(err, match="zeros must be uint8"):
        pack(qw, s, z[:, :1], 64, 32)
    with pytest.raises(err, match=r"zeros must lie in \[0, 15\]"):
        pack(qw, s, torch.full_like(z, 16), 64, 32)


@requires_native
def test_bad_pack_arguments_raise_the_same_error_everywhere():
    """int4_pack_weight's checks: one message, letter for letter, from C++ and Python."""
    _, (qw, s, z), _, _ = make_layer(64, 8, 32)
    bad = {
        "group_size": ((qw, s, z, 64, 48), "group_size must be 32, 64, 128 or 256, got 48"),
        "qweight dtype": ((qw.to(torch.int8), s, z, 64, 32), r"qweight must be uint8 \[N, K_pad/2\], got torch.int8 "
                                                            r"\(8, 32\)"),
        "qweight 1-D": ((qw.flatten(), s, z, 64, 32), r"got torch.uint8 \(256,\)"),
        "no rows": ((qw[:0], s[:0], z[:0], 64, 32), r"need 1 <= N, in_features < 2\^31, got N=0"),
        "in_features": ((qw, s, z, 0, 32), "in_features=0"),
        "K_pad": ((qw, s, z, 100, 32), r"qweight must have K_pad/2 = 64 columns \(in_features=100"),
        "scales dtype": ((qw, s.double(), z, 64, 32), r"scales must be float32 \[N, G\] = \[8, 2\], got torch.float64"),
        "scales shape": ((qw, s[:, :1], z, 64, 32), r"got torch.float32 \(8, 1\)"),
        "zeros shape": ((qw, s, z[:, :1], 64, 32), r"zeros must be uint8 \[N, G\] = \[8, 2\] or None"),
        "zeros dtype": ((qw, s, z.int(), 64, 32), "got torch.int32"),
        "zeros range": ((qw, s, torch.full_like(z, 16), 64, 32), r"zeros must lie in \[0, 15\]"),
    }
    for name, (args, message) in bad.items():
        native, ref = call_both(ops.int4_pack_weight, reference.int4_pack_weight, *args)
        assert native == ref, name
        assert native.startswith("int4_pack_weight: "), native
        assert re.search(message, native), (name, native)
    with pytest.raises(ValueError, match=r"scales must be on qweight's device \(cpu\), got meta"):
        reference.int4_pack_weight(qw, s.to("meta"), z, 64, 32)


# An asymmetric pack of N=8, K=64, group 32: 64 + 1 * 2 * 192 + 8 * 2 = 464 bytes, [8, 58].
TAMPERED = {  # header field -> (offset, struct format, value, message)
    "magic": (0, "<I", 0x34493443, "does not start with a compressops pack header"),
    "header version": (4, "<I", 2, "does not start with a compressops pack header"),
    "tag": (8, "<8s", b"half", "holds a 'half' pack, not a 'int4' one"),
    "format version": (16, "<I", 1, "is a 'int4' pack of version 1, this build reads version 2"),
    "reserved": (20, "<I", 1, "header is corrupt"),
    "N larger": (24, "<q", 9, r"has shape \[8, 58\] but its header \(N=9, K=64\) needs \[9, 95\]"),
    "N zero": (24, "<q", 0, r"N=0, K=64; both must be in \[1, 2\^31\)"),
    "N huge": (24, "<q", 2**40, r"both must be in \[1, 2\^31\)"),
    "K larger": (32, "<q", 65, r"header fields \(32, 2, 0\) do not match a 'int4' pack of N=8, K=65 \(32, 3, 0\)"),
    "K overflowing": (32, "<q", 2**31 - 1, "do not match"),
    "group_size": (40, "<q", 48, r"w_packed's header has group_size=48, not 32, 64, 128 or 256; repack it with "
                                 r"compressops.ops.int4_pack_weight"),
    "group_size zero": (40, "<q", 0, "has group_size=0"),
    "group_size other valid": (40, "<q", 64, r"header fields \(64, 2, 0\) do not match .* \(64, 1, 0\)"),
    "groups": (48, "<q", 3, r"header fields \(32, 3, 0\) do not match"),
    "symmetric": (56, "<q", 1, r"has shape \[8, 58\] but its header \(N=8, K=64\) needs \[8, 56\]"),
    "symmetric not a flag": (56, "<q", 5, r"header fields \(32, 2, 5\) do not match"),
}


@requires_native
@pytest.mark.parametrize("field", sorted(TAMPERED))
def test_tampered_header_raises_the_same_error_everywhere(field):
    """A header that lies raises before any byte after it is read, with one message from C++ and Python."""
    _, _, packed, b = make_layer(64, 8, 32)
    assert packed.shape == (8, 58)
    offset, fmt, value, message = TAMPERED[field]
    bad = tampered(packed, offset, fmt, value)
    native, ref = call_both(ops.int4_linear, reference.int4_linear, randn_nonzero(2, 64), bad, b)
    assert native == ref
    assert native.startswith("int4_linear: w_packed")
    assert re.search(message, native), native
    # the unpacker (what a module's qweight/scales/zeros read) checks the same way
    with pytest.raises(ValueError, match="^int4_unpack_weight: w_packed"):
        f4.unpack_weight(bad)


@requires_native
def test_truncated_or_padded_pack_raises():
    _, _, packed, b = make_layer(256, 8, 32)  # 64 + 8 * 192 + 8 * 8 bytes: [8, 208], the header in row 0
    x = randn_nonzero(2, 256)
    for bad, message in ((packed[:, :-1], r"has shape \[8, 207\] but its header \(N=8, K=256\) needs \[8, 208\]"),
                         (packed[:-1], r"has shape \[7, 208\]"),
                         (torch.cat([packed, packed[:1]]), r"has shape \[9, 208\]"),
                         (torch.cat([packed, packed[:, :1]], dim=1), r"has shape \[8, 209\]"),
                         (packed.view(-1)[:63].view(1, 63), "holds 63 bytes, too few for a pack header")):
        native, ref = call_both(ops.int4_linear, reference.int4_linear, x, bad.clone(), b)
        assert native == ref
        assert re.search(message, native), native


@requires_native
def test_k_within_the_same_groups_is_caught_by_x():
    """A K changed within the same group count changes no field and no size: the pack stays
    self-consistent (the kernels read inside it), and x's K check refuses the call."""
    _, _, packed, b = make_layer(64, 8, 32)
    bad = tampered(packed, 32, "<q", 40)
    assert f4.read_header(bad, "check") == f4.Layout(8, 40, 32, False)
    native, ref = call_both(ops.int4_linear, reference.int4_linear, randn_nonzero(2, 64), bad, b)
    assert native == ref == "int4_linear: x has K=64 in its last dimension but the weight has K=40"


@requires_native
def test_swapped_n_and_k_fail_on_the_fields_or_the_shape():
    """N and K swapped: the group count or the pack's first dimension no longer fits."""
    _, _, packed, b = make_layer(64, 32, 64)
    bad = tampered(tampered(packed, 24, "<q", 64), 32, "<q", 32)
    native, ref = call_both(ops.int4_linear, reference.int4_linear, randn_nonzero(2, 64), bad, b)
    assert native == ref
    assert re.search(r"has shape \[32, \d+\] but its header \(N=64, K=32\) needs \[64, \d+\]", native), native


def test_quantize_weight_errors():
    w = torch.randn(4, 40)
    w[1, 3] = float("inf")
    with pytest.raises(ValueError, match="enc.fc.*NaN/Inf"):
        f4.quantize_weight(w, 32, name="enc.fc")
    with pytest.raises(ValueError, match="group_size"):
        f4.quantize_weight(torch.randn(4, 40), 100)
    with pytest.raises(ValueError, match="2-D float"):
        f4.quantize_weight(torch.randn(40), 32)


def test_zero_weight_groups():
    w = randn_nonzero(16, 96)
    w[3] = 0
    w[5, 32:64] = 0
    for sym in (False, True):
        qw, s, z = f4.quantize_weight(w, 32, sym)
        wd = f4.dequantize(qw, s, z, 96, 32)
        assert torch.equal(wd[3], torch.zeros(96)) and torch.equal(wd[5, 32:64], torch.zeros(32))


_TRITON_SCRIPT = r"""
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch
from compressops.formats import int4 as f4
from compressops.triton.int4_linear import int4_linear
torch.manual_seed(int(os.environ["SEED"]))
# (67, 19, 32) and (67, 19, 128): the same shapes, the group size comes from the header
for (m, k, n, gs, sym, bias) in [(3, 67, 19, 32, False, True), (2, 67, 19, 128, False, False),
                                 (5, 130, 40, 64, True, True)]:
    w = torch.randn(n, k)
    qw, s, z = f4.quantize_weight(w, gs, sym)
    p = f4.pack_weight(qw, s, z, k, gs)
    b = torch.randn(n) if bias else None
    x = torch.randn(2, m, k)
    y = int4_linear(x, p, b)
    yd = x.double() @ f4.dequantize(qw, s, z, k, gs).double().t() + (b.double() if bias else 0)
    assert y.shape == (2, m, n) and y.dtype == torch.float32
    err = ((y.double() - yd).norm() / yd.norm()).item()
    assert err < 1e-5, err
print("ok")
"""


def test_triton_kernel_under_interpreter(tmp_path):
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    script = tmp_path / "t.py"
    script.write_text(_TRITON_SCRIPT)
    root = os.path.dirname(os.path.dirname(os.path.abspath(co.__file__)))  # the tree under test
    env = dict(os.environ, SEED=str(torch.initial_seed() % 2**31),
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300, cwd=root)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_int4_linear_cuda_matches_cpu():
    _, _, packed, b = make_layer(300, 70, 64)
    x = randn_nonzero(9, 300)
    y_cpu = ops.int4_linear(x, packed, b)
    y = ops.int4_linear(x.cuda(), packed.cuda(), b.cuda())
    assert y.is_cuda and rel_err(y.cpu(), y_cpu) < 0.02


@pytest.mark.parametrize("threads", [2, 3])
def test_row_split_across_threads_gives_the_one_thread_bits(threads):
    """From 64 rows a thread, each thread takes one run of whole rows (kernels/int4/policy.h): row
    counts on both sides of the switch and an uneven last run equal the one-thread result and stay
    close to the reference."""
    _, _, packed, b = make_layer(256, 70, 128)
    old = torch.get_num_threads()
    try:
        for m in (64 * threads - 1, 64 * threads, 64 * threads + 1, 301):
            x = randn_nonzero(m, 256)
            torch.set_num_threads(1)
            one = ops.int4_linear(x, packed, b)
            torch.set_num_threads(threads)
            assert torch.equal(ops.int4_linear(x, packed, b), one), m
            close_to_reference(one, reference.int4_linear(x, packed, b))
    finally:
        torch.set_num_threads(old)
