"""binary ops against compressops.reference (and plain conv2d(sign(x), sign(w))), on every CPU ISA level;
the weight pack and the checks of every argument, with one message from the native host and the reference."""

import re
import struct

import pytest
import torch
import torch.nn.functional as F

import compressops as co
from compressops import ops, reference
from compressops.formats import binary as bf

from .helpers import (OPCHECK_UTILS, call_both, expected_kernel_level, isa_params, randn_nonzero, requires_native,
                     tampered)

# Packing has kernels up to avx2; the conv/linear kernels also at avx512_vnni (vpopcntq).


def make_conv(c, oc, k, bias=True):
    """A random conv weight [oc, c, k, k] (k an int or a pair), its bits, pack, alpha and bias."""
    kh, kw = (k, k) if isinstance(k, int) else k
    w = randn_nonzero(oc, c, kh, kw)
    bits, alpha = bf.binarize_weight(w)
    return w, bits, ops.binary_pack_weight(bits, c), alpha, (randn_nonzero(oc) if bias else None)


def make_linear(c, n, bias=True):
    w = randn_nonzero(n, c)
    bits, alpha = bf.binarize_weight(w)
    return w, bits, ops.binary_pack_weight(bits, c), alpha, (randn_nonzero(n) if bias else None)


def header_bytes(n, k, fields, tag=b"binary", version=1):
    return struct.pack("<4sI8sIIqq3q", b"COPK", 1, tag, version, 0, n, k, *fields)


def plain_conv(x, w, alpha, bias, stride, padding):
    """The spec in plain torch: conv2d(sign(x), sign(w)) with zero padding, times alpha, plus bias."""
    y = F.conv2d(bf.sign(x).double(), bf.sign(w).double(), stride=stride, padding=padding).float()
    y = y * alpha[:, None, None]
    return y if bias is None else y + bias[:, None, None]


def test_format_bit_order_and_padding_bits():
    x = torch.full((1, 70), -1.0)
    x[0, 0] = 0.0  # sign(0) = +1 -> bit 0 of word 0
    x[0, 65] = 2.0  # channel 65 -> bit 1 of word 1
    p = bf.pack_bits(x)
    assert p.shape == (1, 2) and p[0, 0].item() == 1 and p[0, 1].item() == 2  # pad bits 66..127 are 0
    x = torch.ones(1, 64)
    assert bf.pack_bits(x)[0, 0].item() == -1  # all 64 bits set
    assert torch.equal(bf.unpack_bits(bf.pack_bits(x), 64), x)
    w = randn_nonzero(5, 67, 3, 3)
    bits, alpha = bf.binarize_weight(w)
    assert bits.shape == (5, 3, 3, 2) and bits.dtype == torch.int64
    assert torch.allclose(alpha, w.abs().mean((1, 2, 3)))
    assert torch.equal(bf.weight_signs(bits, 67), bf.sign(w))
    assert torch.equal(bf.bits_of_signs(bf.weight_signs(bits, 67)), bits)
    lbits, _ = bf.binarize_weight(w[:, :, 0, 0])
    assert torch.equal(bf.bits_of_signs(bf.weight_signs(lbits, 67)), lbits)
    assert torch.equal(bf.sign(torch.tensor([-0.0, 0.0, float("nan"), -1e-30])), torch.tensor([1.0, 1.0, -1.0, -1.0]))


PACK_SHAPES = [(1, 1, (1, 1)), (5, 67, (3, 3)), (7, 64, (1, 3)), (64, 130, (5, 2)), (3, 1100, None), (1, 64, None),
               (33, 70, None)]  # (OC, C, kernel or None for a linear weight)


@pytest.mark.parametrize("oc,c,kernel", PACK_SHAPES, ids=str)
def test_pack_weight_bytes(oc, c, kernel):
    """The pack is the header (N = OC, K = C, fields (KH, KW, CW)) then the canonical words, shaped
    (OC, KH, KW, R) or (OC, R); native and Python packers write the same bytes."""
    w = randn_nonzero(oc, c, *kernel) if kernel else randn_nonzero(oc, c)
    bits, _ = bf.binarize_weight(w)
    packed = ops.binary_pack_weight(bits, c)
    kh, kw = kernel or (1, 1)
    cw = bf.words(c)
    nbytes = bf.packed_bytes(oc, kh, kw, cw)
    assert nbytes == 64 + 8 * bits.numel()
    rows = (oc, kh, kw) if kernel else (oc,)
    per = oc * kh * kw
    assert packed.dtype == torch.uint8 and packed.shape == (*rows, -(-nbytes // per))
    assert packed.shape[-1] == 8 * cw + -(-64 // per)  # the docstring's R
    flat = packed.view(-1)
    assert bytes(flat[:64].tolist()) == header_bytes(oc, c, (kh, kw, cw))
    assert torch.equal(flat[64:nbytes], bits.view(-1).view(torch.uint8))
    assert not flat[nbytes:].any()  # the row padding is zero
    assert torch.equal(packed, bf.pack_weight(bits, c))
    assert torch.equal(packed, reference.binary_pack_weight(bits, c))
    view = bf.unpack_weight(packed, conv=kernel is not None)
    assert torch.equal(view, bits) and view.untyped_storage().data_ptr() == packed.untyped_storage().data_ptr()
    # non-contiguous weight_bits pack to the same bytes
    assert torch.equal(ops.binary_pack_weight(bits.t().contiguous().t() if not kernel else
                                              bits.permute(1, 2, 0, 3).contiguous().permute(2, 0, 1, 3), c), packed)
    # a module skeleton's placeholder: zero layout bytes are the pack of all-zero bits (every weight -1)
    assert torch.equal(bf.zero_pack(oc, c, kernel), ops.binary_pack_weight(torch.zeros_like(bits), c))


@pytest.mark.parametrize("shape", [(1, 1), (1, 1, 1, 1)], ids=["linear", "conv"])
def test_one_element_weight_with_a_stride_packs_everywhere(shape):
    """A one-word view with last-dim stride 2 counts as contiguous, yet cannot be viewed as bytes: the
    reference packer raised where the native one packed (found by test_properties.py)."""
    bits = torch.tensor([5, 7])[1::2].view(shape)
    assert bits.stride(-1) == 2 and bits.is_contiguous()
    packed = ops.binary_pack_weight(bits.clone(memory_format=torch.contiguous_format), 3)
    assert torch.equal(bf.pack_weight(bits, 3), packed) and torch.equal(ops.binary_pack_weight(bits, 3), packed)


def test_unpack_weight_of_a_misaligned_pack_and_the_kernels_read_it():
    """A pack at an odd storage offset (a view) still unpacks and computes: the host copies it aligned."""
    x = randn_nonzero(2, 70, 5, 6)
    _, bits, packed, alpha, b = make_conv(70, 9, 3)
    odd = torch.cat([torch.zeros(1, dtype=torch.uint8), packed.view(-1)])[1:].view(packed.shape)
    assert odd.data_ptr() % 8 != 0 and odd.is_contiguous()
    assert torch.equal(bf.unpack_weight(odd), bits)
    xp = ops.binary_pack_activation(x)
    args = (alpha, b, (1, 1), (1, 1))
    assert torch.equal(ops.binary_conv2d(xp, odd, *args), ops.binary_conv2d(xp, packed, *args))
    _, lbits, lpacked, lalpha, _ = make_linear(70, 5)
    lodd = torch.cat([torch.zeros(3, dtype=torch.uint8), lpacked.view(-1)])[3:].view(lpacked.shape)
    xl = ops.binary_pack_activation(randn_nonzero(3, 70))
    assert torch.equal(ops.binary_linear(xl, lodd, lalpha), ops.binary_linear(xl, lpacked, lalpha))


@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("c", [1, 3, 64, 65, 130, 256])
def test_pack_activation_bit_exact(level, c):
    x = randn_nonzero(2, c, 5, 7)
    x[0, 0, 0, 0] = 0.0
    x[1, -1, 1, 2] = -0.0
    for inp in (x, x.contiguous(memory_format=torch.channels_last), x.bfloat16(), x[:, :, :, ::2]):
        with co.cpu_isa(level):
            p = ops.binary_pack_activation(inp)
            ran = torch.ops.compressops._last_kernel_isa("binary_pack_activation")
            assert ran == expected_kernel_level("binary_pack_activation", level)
        assert torch.equal(p, reference.binary_pack_activation(inp))
    x2 = randn_nonzero(3, 4, c)
    with co.cpu_isa(level):
        assert torch.equal(ops.binary_pack_activation(x2), reference.binary_pack_activation(x2))


# every kernel size / stride / padding the format promises ('same' = (k-1)//2 at stride 1)
CONV_CASES = [(k, s, p) for k in (1, 3, 5, 7) for s in (1, 2) for p in sorted({0, 1, (k - 1) // 2})]



@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("k,s,p", CONV_CASES, ids=lambda v: str(v))
def test_conv2d_bit_exact(level, k, s, p):
    for c, oc, n, h, w_in, bias in ((3, 5, 2, 7, 9, True), (65, 9, 1, 8, 7, False), (130, 6, 3, 9, 9, True)):
        if h + 2 * p < k or w_in + 2 * p < k:
            continue
        x = randn_nonzero(n, c, h, w_in)
        w, _, packed, alpha, b = make_conv(c, oc, k, bias)
        xp = ops.binary_pack_activation(x)
        with co.cpu_isa(level):
            y = ops.binary_conv2d(xp, packed, alpha, b, (s, s), (p, p))
            assert torch.ops.compressops._last_kernel_isa("binary_conv2d") == expected_kernel_level("binary_conv2d", level)
        ref = reference.binary_conv2d(xp, packed, alpha, b, (s, s), (p, p))
        assert y.shape == ref.shape and y.dtype == torch.float32
        assert torch.equal(y, ref), (c, oc, n)
        # the reference itself is conv2d(sign(x), sign(w)) with zero padding (padded taps count 0)
        assert torch.equal(ref, plain_conv(x, w, alpha, b, s, p))


@pytest.mark.parametrize("level", isa_params())
def test_conv2d_rectangular_clamp_and_big_channels(level):
    # rectangular kernel/stride/padding, clamp, C large enough that byte counters must be widened
    x = randn_nonzero(2, 1100, 6, 5)
    w, _, packed, alpha, _ = make_conv(1100, 7, (3, 1))
    xp = ops.binary_pack_activation(x)
    args = (xp, packed, alpha, None, (2, 1), (1, 0))
    with co.cpu_isa(level):
        y = ops.binary_conv2d(*args, clamp_min=-5.0, clamp_max=7.5)
    assert torch.equal(y, reference.binary_conv2d(*args, clamp_min=-5.0, clamp_max=7.5))
    assert y.min() >= -5.0 and y.max() <= 7.5
    assert torch.equal(y, plain_conv(x, w, alpha, None, (2, 1), (1, 0)).clamp(-5.0, 7.5))


@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("batch,k,n", [((1,), 1, 1), ((3,), 67, 33), ((2, 5), 300, 70), ((0,), 64, 5),
                                       ((70,), 256, 130)], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_bit_exact(level, batch, k, n, bias):
    x = randn_nonzero(*batch, k)
    w, _, packed, alpha, b = make_linear(k, n, bias)
    xp = ops.binary_pack_activation(x)
    with co.cpu_isa(level):
        y = ops.binary_linear(xp, packed, alpha, b)
    ref = reference.binary_linear(xp, packed, alpha, b)
    assert y.shape == (*batch, n) and y.dtype == torch.float32
    assert torch.equal(y, ref)
    expect = (bf.sign(x).double() @ bf.sign(w).double().T).float() * alpha
    assert torch.equal(ref, expect if b is None else expect + b)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_linear_out_dtype_and_clamp_round_once(out_dtype):
    """out_dtype rounds the float32 result (clamped first) once; the default is float32."""
    _, _, packed, alpha, b = make_linear(130, 33)
    xp = ops.binary_pack_activation(randn_nonzero(4, 3, 130))
    full = ops.binary_linear(xp, packed, alpha, b, clamp_min=-2.0, clamp_max=3.0)
    assert full.dtype == torch.float32 and full.min() >= -2.0 and full.max() <= 3.0
    y = ops.binary_linear(xp, packed, alpha, b, out_dtype, clamp_min=-2.0, clamp_max=3.0)
    assert y.dtype == out_dtype and torch.equal(y, full.to(out_dtype))
    assert torch.equal(y, reference.binary_linear(xp, packed, alpha, b, out_dtype, clamp_min=-2.0, clamp_max=3.0))


@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("k,s,p", [(1, 1, 0), (3, 1, 1), (3, 2, 1), (5, 2, 2), (7, 1, 3)], ids=str)
def test_conv2d_packed_bit_exact(level, k, s, p):
    # OC below, at and across word boundaries; 1-row inputs take the channel-chunked path
    for c, oc, n, h, w_in in ((3, 5, 2, 7, 9), (66, 64, 1, 8, 7), (130, 65, 3, 9, 9), (64, 200, 1, 1, 1),
                              (128, 130, 1, 5, 4)):
        if h + 2 * p < k or w_in + 2 * p < k:
            continue
        x = randn_nonzero(n, c, h, w_in)
        _, _, packed, alpha, b = make_conv(c, oc, k)
        alpha[::3] = -alpha[::3]  # a folded BatchNorm with gamma < 0 flips a channel's sign
        xp = ops.binary_pack_activation(x)
        args = (xp, packed, alpha, b, (s, s), (p, p))
        with co.cpu_isa(level):
            y = ops.binary_conv2d_packed(*args)
            assert torch.ops.compressops._last_kernel_isa("binary_conv2d_packed") == expected_kernel_level("binary_conv2d_packed", level)
        ref = reference.binary_conv2d_packed(*args)
        assert y.shape == ref.shape == (n, ref.shape[1], ref.shape[2], (oc + 63) // 64)
        assert torch.equal(y, ref), (c, oc, n)
        # the definition: the float op's output, binarized and packed
        assert torch.equal(ref, ops.binary_pack_activation(ops.binary_conv2d(*args)))


@pytest.mark.parametrize("level", isa_params())
def test_conv2d_packed_ties_nan_and_pad_bits(level):
    # C even and no bias: many outputs are exactly 0, which must give bit 1 (sign(0) = +1);
    # a NaN alpha gives bit 0, as packing NaN does.
    x = randn_nonzero(2, 64, 6, 6)
    _, _, packed, alpha, _ = make_conv(64, 70, 1)
    alpha[3] = float("nan")
    xp = ops.binary_pack_activation(x)
    args = (xp, packed, alpha, None, (1, 1), (0, 0))
    with co.cpu_isa(level):
        y = ops.binary_conv2d_packed(*args)
    dense = ops.binary_conv2d(*args)
    assert (dense == 0).any()
    assert torch.equal(y, reference.binary_conv2d_packed(*args))
    signs = bf.unpack_bits(y, 70)  # [N, H, W, 70]
    assert torch.equal(signs[..., 3], torch.full_like(signs[..., 3], -1.0))
    assert torch.equal(signs[dense.permute(0, 2, 3, 1) == 0], torch.ones(int((dense == 0).sum())))
    assert (y[..., 1] >> 6).eq(0).all()  # bits of channels 70..127 stay 0


@pytest.mark.parametrize("level", isa_params())
def test_xor_popcount_peak_runs_on_every_level(level):
    with co.cpu_isa(level):
        rate = torch.ops.compressops._binary_xor_popcount_peak(50)
        assert torch.ops.compressops._last_kernel_isa("_binary_xor_popcount_peak") == expected_kernel_level("_binary_xor_popcount_peak", level)
    assert 0 < rate < float("inf")
    with pytest.raises(RuntimeError, match="iters must be >= 1"):
        torch.ops.compressops._binary_xor_popcount_peak(0)


@requires_native
def test_empty_batch_non_contiguous_and_inputs_not_modified():
    x = randn_nonzero(4, 8, 6, 20)[:, :, :, ::3]  # non-contiguous
    x0 = x.clone()
    w, _, packed, alpha, b = make_conv(8, 4, 3)
    packed0, alpha0, b0 = packed.clone(), alpha.clone(), b.clone()
    xp = ops.binary_pack_activation(x)
    geometry = ((1, 1), (1, 1))
    y = ops.binary_conv2d(xp, packed, alpha, b, *geometry)
    assert torch.equal(x, x0) and torch.equal(packed, packed0) and torch.equal(alpha, alpha0) and torch.equal(b, b0)
    assert torch.equal(y, plain_conv(x, w, alpha, b, 1, 1))
    # a non-contiguous packed input (slice over W) is handled too
    xs = xp[:, :, 1:]
    assert torch.equal(ops.binary_conv2d(xs, packed, alpha, b, *geometry),
                       reference.binary_conv2d(xs, packed, alpha, b, *geometry))
    e = ops.binary_conv2d(ops.binary_pack_activation(torch.randn(0, 8, 6, 6)), packed, alpha, b, *geometry)
    assert e.shape == (0, 4, 6, 6)
    xs0 = xs.clone()
    assert torch.equal(ops.binary_conv2d_packed(xs, packed, alpha, b, *geometry),
                       reference.binary_conv2d_packed(xs, packed, alpha, b, *geometry))
    assert torch.equal(xs, xs0)
    e = ops.binary_conv2d_packed(ops.binary_pack_activation(torch.randn(0, 8, 6, 6)), packed, alpha, b, *geometry)
    assert e.shape == (0, 6, 6, 1) and e.dtype == torch.int64
    # a non-contiguous alpha, an int bias (converted) and a batch-dims linear input
    _, _, lpacked, lalpha, lb = make_linear(70, 6)
    xl = ops.binary_pack_activation(randn_nonzero(2, 3, 70))
    wide = torch.stack([lalpha, lalpha], 1)[:, 0]
    assert not wide.is_contiguous()
    assert torch.equal(ops.binary_linear(xl, lpacked, wide, lb), ops.binary_linear(xl, lpacked, lalpha, lb))
    assert torch.equal(ops.binary_linear(xl.transpose(0, 1), lpacked, lalpha, lb),
                       reference.binary_linear(xl.transpose(0, 1), lpacked, lalpha, lb))


@requires_native
def test_thread_counts_agree():
    x = randn_nonzero(2, 200, 12, 12)
    _, _, packed, alpha, b = make_conv(200, 40, 3)
    xp = ops.binary_pack_activation(x)
    old = torch.get_num_threads()
    try:
        outs, bits = [], []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            outs.append(ops.binary_conv2d(xp, packed, alpha, b, (2, 2), (1, 1)))
            bits.append(ops.binary_conv2d_packed(xp[:1, :1], packed, alpha, b, (2, 2), (1, 1)))
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert all(torch.equal(o, bits[0]) for o in bits)


def _opcheck_samples():
    x = randn_nonzero(2, 70, 5, 6)
    _, bits, packed, alpha, b = make_conv(70, 9, 3)
    xp = reference.binary_pack_activation(x)
    _, lbits, lpacked, lalpha, lb = make_linear(70, 11)
    xl = randn_nonzero(3, 70)
    _, _, rpacked, ralpha, _ = make_conv(70, 66, (1, 3))  # 66 outputs: two packed words
    xlp = reference.binary_pack_activation(xl)
    return [
        (torch.ops.compressops.binary_pack_activation.default, (x,), {}),
        (torch.ops.compressops.binary_pack_activation.default, (xl,), {}),
        (torch.ops.compressops.binary_pack_weight.default, (bits, 70), {}),
        (torch.ops.compressops.binary_pack_weight.default, (lbits, 70), {}),
        (torch.ops.compressops.binary_conv2d.default, (xp, packed, alpha, b, [2, 2], [1, 1]), {}),
        (torch.ops.compressops.binary_conv2d.default, (xp, packed, alpha, None, [1, 1], [0, 0]),
         {"clamp_min": -1.0, "clamp_max": 1.0}),
        (torch.ops.compressops.binary_linear.default, (xlp, lpacked, lalpha, lb), {}),
        (torch.ops.compressops.binary_linear.default, (xlp, lpacked, lalpha, None, torch.bfloat16),
         {"clamp_max": 2.0}),
        (torch.ops.compressops.binary_conv2d_packed.default, (xp, packed, alpha, b, [2, 2], [1, 1]), {}),
        (torch.ops.compressops.binary_conv2d_packed.default, (xp, rpacked, ralpha, None, [1, 1], [0, 1]), {}),
    ]


@pytest.mark.parametrize("idx", range(10))
def test_opcheck(idx):
    op, args, kwargs = _opcheck_samples()[idx]
    torch.library.opcheck(op, args, kwargs, test_utils=OPCHECK_UTILS)


@pytest.mark.parametrize("use_reference", [False, True], ids=["native", "reference"])
def test_bad_input_errors(use_reference):
    """Clear errors naming the argument, from the native kernel and from the reference alike."""
    mod = reference if use_reference else ops
    err = (ValueError, RuntimeError)
    x = randn_nonzero(1, 70, 5, 5)
    _, bits, packed, alpha, b = make_conv(70, 4, 3)
    xp = reference.binary_pack_activation(x)
    geometry = ((1, 1), (1, 1))
    with pytest.raises(err, match="x must be float"):
        mod.binary_pack_activation(x.to(torch.int32))
    with pytest.raises(err, match="x_packed must be int64"):
        mod.binary_conv2d(xp.int(), packed, alpha, b, *geometry)
    with pytest.raises(err, match="w_packed must be a 4-D uint8 tensor from compressops.ops.binary_pack_weight"):
        mod.binary_conv2d(xp, bits, alpha, b, *geometry)  # the canonical bits, not the pack
    with pytest.raises(err, match="alpha must be float32"):
        mod.binary_conv2d(xp, packed, alpha[:3], b, *geometry)
    with pytest.raises(err, match="bias must be"):
        mod.binary_conv2d(xp, packed, alpha, b[:2], *geometry)
    with pytest.raises(err, match="stride"):
        mod.binary_conv2d(xp, packed, alpha, b, (0, 1), (1, 1))
    with pytest.raises(err, match="x_packed"):
        mod.binary_conv2d_packed(xp[..., :1].contiguous(), packed, alpha, b, *geometry)
    with pytest.raises(err, match="alpha must be float32"):
        mod.binary_conv2d_packed(xp, packed, alpha.double(), b, *geometry)
    _, lbits, lpacked, lalpha, _ = make_linear(70, 4)
    xl = reference.binary_pack_activation(randn_nonzero(2, 70))
    with pytest.raises(err, match="w_packed must be a 2-D uint8"):
        mod.binary_linear(xl, packed, alpha)
    with pytest.raises(err, match="out_dtype must be"):
        mod.binary_linear(xl, lpacked, lalpha, None, torch.int32)
    with pytest.raises(err, match="in_channels must be in"):
        mod.binary_pack_weight(lbits, 0)
    with pytest.raises(err, match="weight_bits must be int64"):
        mod.binary_pack_weight(lbits, 200)


@requires_native
def test_wrong_arguments_raise_the_same_error_everywhere():
    """Every argument the native host checks, bad, gives the reference's message word for word."""
    x = randn_nonzero(2, 70, 5, 5)
    _, bits, packed, alpha, b = make_conv(70, 6, 3)
    _, lbits, lpacked, lalpha, lb = make_linear(70, 6)
    xp = ops.binary_pack_activation(x)
    xl = ops.binary_pack_activation(randn_nonzero(3, 70))
    dirty = lbits.clone()
    dirty[2, -1] |= 1 << 6  # channel 70: a padding bit
    top = lbits.clone()
    top[0, -1] |= -(2**63)  # the top bit of the last word
    g = ((1, 1), (1, 1))
    conv_cases = {  # argument -> (args of binary_conv2d and _packed, message)
        "x_packed dtype": ((xp.int(), packed, alpha, b, *g), r"x_packed must be int64 \[N, H, W, 2\] \(ceil\(C/64\) "
                           r"words for w_packed's C=70\) from compressops.ops.binary_pack_activation, got torch.int32 "
                           r"\(2, 5, 5, 2\)"),
        "x_packed words": ((xp[..., :1], packed, alpha, b, *g), r"got torch.int64 \(2, 5, 5, 1\)"),
        "x_packed rank": ((xp[0], packed, alpha, b, *g), r"got torch.int64 \(5, 5, 2\)"),
        "alpha shape": ((xp, packed, alpha[:4], b, *g),
                        r"alpha must be float32 of shape \[6\], got torch.float32 \(4,\)"),
        "alpha dtype": ((xp, packed, alpha.half(), b, *g), r"got torch.float16 \(6,\)"),
        "bias shape": ((xp, packed, alpha, b[:5], *g), r"bias must be a float tensor of shape \[6\], got torch.float32 "
                       r"\(5,\)"),
        "bias dtype": ((xp, packed, alpha, b.long(), *g), r"got torch.int64 \(6,\)"),
        "stride": ((xp, packed, alpha, b, (0, 1), (1, 1)),
                   r"stride must be >= 1 and padding >= 0, got stride \[0, 1\], padding \[1, 1\]"),
        "padding": ((xp, packed, alpha, b, (1, 1), (1, -1)), r"padding \[1, -1\]"),
        "too small": ((xp[:, :2], packed, alpha, b, (1, 1), (0, 0)), r"the padded input \(2x5 \+ padding \[0, 0\]\) is "
                      r"smaller than the kernel 3x3"),
        "linear pack": ((xp, lpacked, lalpha, lb, *g), r"w_packed must be a 4-D uint8 tensor"),
    }
    for name, (args, message) in conv_cases.items():
        for op in ("binary_conv2d", "binary_conv2d_packed"):
            native, ref = call_both(getattr(ops, op), getattr(reference, op), *args)
            assert native == ref, (name, op)
            assert native.startswith(op + ": ") and re.search(message, native), (name, native)
    linear_cases = {
        "x_packed words": ((xl[..., :1], lpacked, lalpha, lb), r"x_packed must be int64 \[\.\.\., 2\] \(ceil\(C/64\) "
                           r"words for w_packed's C=70\) from compressops.ops.binary_pack_activation, got torch.int64 "
                           r"\(3, 1\)"),
        "x_packed dtype": ((xl.float(), lpacked, lalpha, lb), r"got torch.float32 \(3, 2\)"),
        "alpha": ((xl, lpacked, lalpha.view(2, 3), lb),
                  r"alpha must be float32 of shape \[6\], got torch.float32 \(2, 3\)"),
        "bias": ((xl, lpacked, lalpha, torch.zeros(())),
                 r"bias must be a float tensor of shape \[6\], got torch.float32 \(\)"),
        "out_dtype": ((xl, lpacked, lalpha, lb, torch.int32), r"out_dtype must be float32, bfloat16 or float16, got "
                      r"torch.int32"),
        "conv pack": ((xl, packed, alpha, b), r"w_packed must be a 2-D uint8 tensor"),
    }
    for name, (args, message) in linear_cases.items():
        native, ref = call_both(ops.binary_linear, reference.binary_linear, *args)
        assert native == ref, name
        assert native.startswith("binary_linear: ") and re.search(message, native), (name, native)
    pack_cases = {
        "in_channels": ((lbits, 0), r"in_channels must be in \[1, 2\^31\), got 0"),
        "in_channels big": ((lbits, 2**31), r"in_channels must be in \[1, 2\^31\), got 2147483648"),
        "words": ((lbits, 129), r"weight_bits must be int64 \[OC, KH, KW, 3\] \(conv\) or \[OUT, 3\] \(linear\) for "
                  r"in_channels=129, got torch.int64 \(6, 2\)"),
        "dtype": ((lbits.int(), 70), r"got torch.int32 \(6, 2\)"),
        "rank": ((bits[0], 70), r"got torch.int64 \(3, 3, 2\)"),
        "empty": ((bits[:, :0], 70), r"weight_bits needs OC, KH, KW >= 1, got \(6, 0, 3, 2\)"),
        "pad bits": ((dirty, 70), r"weight_bits has bits set past in_channels=70 in its last word"),
        "top pad bit": ((top, 70), r"bits set past in_channels=70"),
    }
    for name, (args, message) in pack_cases.items():
        native, ref = call_both(ops.binary_pack_weight, reference.binary_pack_weight, *args)
        assert native == ref, name
        assert native.startswith("binary_pack_weight: ") and re.search(message, native), (name, native)
    # the pad bits of a weight whose C is a multiple of 64 are all real channels
    assert ops.binary_pack_weight(lbits, 128).shape == lpacked.shape


# Packs: conv OC=8, C=70, 3x3 -> fields (3, 3, 2), shape [8, 3, 3, 17]; linear OUT=8, C=70 -> [8, 24].
TAMPERED = {  # header field -> (offset, struct format, value, conv message, linear message)
    "magic": (0, "<I", 0x12345678, "does not start with a compressops pack header", None),
    "header version": (4, "<I", 2, "does not start with a compressops pack header", None),
    "tag": (8, "<8s", b"half", "holds a 'half' pack, not a 'binary' one", None),
    "tag bytes": (8, "<8s", b"bin\x01ry", r"holds a 'bin\?ry' pack", None),
    "format version": (16, "<I", 2, "is a 'binary' pack of version 2, this build reads version 1", None),
    "reserved": (20, "<I", 7, "header is corrupt", None),
    "N larger": (24, "<q", 9, r"has shape \[8, 3, 3, 17\] but its header \(N=9, K=70\) needs \[9, 3, 3, 17\]",
                 r"has shape \[8, 24\] but its header \(N=9, K=70\) needs \[9, 24\]"),
    "N zero": (24, "<q", 0, r"N=0, K=70; both must be in \[1, 2\^31\)", None),
    "N huge": (24, "<q", 2**40, r"both must be in \[1, 2\^31\)", None),
    "K other word count": (32, "<q", 200, r"header fields \(3, 3, 2\) do not match a 'binary' pack of N=8, K=200 "
                           r"\(3, 3, 4\)", r"header fields \(1, 1, 2\) do not match .* \(1, 1, 4\)"),
    "K overflowing": (32, "<q", 2**31 - 1, r"\(3, 3, 33554432\)", r"\(1, 1, 33554432\)"),
    "K negative": (32, "<q", -70, r"both must be in \[1, 2\^31\)", None),
    "KH": (40, "<q", 5, r"header fields \(5, 3, 2\) do not match a 'binary' pack of N=8, K=70 \(3, 3, 2\)",
           r"header fields \(5, 1, 2\) do not match .* \(1, 1, 2\)"),
    "KW": (48, "<q", 2**40, r"header fields \(3, 1099511627776, 2\) do not match", r"\(1, 1099511627776, 2\)"),
    "CW": (56, "<q", -1, r"header fields \(3, 3, -1\) do not match", r"\(1, 1, -1\)"),
}


@requires_native
@pytest.mark.parametrize("field", sorted(TAMPERED))
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_tampered_header_raises_the_same_error_everywhere(field, kind):
    """A header that lies raises before any weight word is read, with one message from C++ and Python."""
    offset, fmt, value, conv_message, linear_message = TAMPERED[field]
    if kind == "conv":
        _, _, packed, alpha, b = make_conv(70, 8, 3)
        xp = ops.binary_pack_activation(randn_nonzero(2, 70, 5, 5))
        calls = [(getattr(ops, op), getattr(reference, op), op, ((1, 1), (1, 1)))
                 for op in ("binary_conv2d", "binary_conv2d_packed")]
        message = conv_message
    else:
        _, _, packed, alpha, b = make_linear(70, 8)
        xp = ops.binary_pack_activation(randn_nonzero(3, 70))
        calls = [(ops.binary_linear, reference.binary_linear, "binary_linear", ())]
        message = linear_message or conv_message
    bad = tampered(packed, offset, fmt, value)
    for native_fn, ref_fn, op, extra in calls:
        native, ref = call_both(native_fn, ref_fn, xp, bad, alpha, b, *extra)
        assert native == ref
        assert native.startswith(f"{op}: w_packed")
        assert re.search(message, native), native
    # the Python unpacker reads the header the same way
    with pytest.raises(ValueError, match=message):
        bf.unpack_weight(bad, "binary_conv2d", conv=kind == "conv")


@requires_native
def test_truncated_or_padded_pack_raises():
    _, _, packed, alpha, b = make_conv(70, 8, 3)  # 64 + 8 * 8 * 9 * 2 bytes: [8, 3, 3, 17]
    xp = ops.binary_pack_activation(randn_nonzero(2, 70, 5, 5))
    truncated = packed.view(-1)[:8 * 9 * 16].view(8, 3, 3, 16)
    for bad, message in ((truncated, r"has shape \[8, 3, 3, 16\] but its header .N=8, K=70. needs \[8, 3, 3, 17\]"),
                         (torch.cat([packed, packed[:1]]), r"has shape \[9, 3, 3, 17\]"),
                         (packed[:, :2], r"header fields \(3, 3, 2\) do not match a 'binary' pack of N=8, K=70 "
                                         r"\(2, 3, 2\)"),
                         (packed.view(-1)[:63].view(1, 1, 1, 63), "holds 63 bytes, too few for a pack header")):
        native, ref = call_both(ops.binary_conv2d, reference.binary_conv2d, xp, bad.clone(), alpha, b, (1, 1), (1, 1))
        assert native == ref
        assert re.search(message, native), native


@requires_native
def test_swapped_n_and_k_or_a_kernel_reshaped_pack_fail_on_the_shape():
    """N and K swapped (C = 64, so one word either way) keep the fields; the pack's shape gives them away.
    A 3x3 pack viewed as 1x9 keeps its bytes; the KH, KW fields give it away."""
    _, _, packed, alpha, b = make_conv(64, 8, 3)  # [8, 3, 3, 9]
    bad = tampered(tampered(packed, 24, "<q", 64), 32, "<q", 8)
    xp = ops.binary_pack_activation(randn_nonzero(2, 64, 5, 5))
    xp8 = ops.binary_pack_activation(randn_nonzero(2, 8, 5, 5))
    native, ref = call_both(ops.binary_conv2d, reference.binary_conv2d, xp8, bad, alpha, b, (1, 1), (1, 1))
    assert native == ref
    assert re.search(r"has shape \[8, 3, 3, 9\] but its header \(N=64, K=8\) needs \[64, 3, 3, 9\]", native), native
    native, ref = call_both(ops.binary_conv2d, reference.binary_conv2d, xp, packed.view(8, 1, 9, 9), alpha, b,
                            (1, 1), (1, 1))
    assert native == ref
    assert re.search(r"header fields \(3, 3, 1\) do not match a 'binary' pack of N=8, K=64 \(1, 9, 1\)", native), native


@requires_native
def test_header_describing_more_than_2_62_bytes_raises_before_any_size_arithmetic():
    """N and K near 2^31 with fields to match, on a 7x7 pack: 8 * N * 49 * CW overflows int64."""
    _, _, packed, alpha, b = make_conv(64, 2, 7)
    bad = packed
    for offset, value in ((24, 2**31 - 1), (32, 2**31 - 1), (56, 2**25)):
        bad = tampered(bad, offset, "<q", value)
    xp = ops.binary_pack_activation(randn_nonzero(1, 64, 7, 7))
    native, ref = call_both(ops.binary_conv2d, reference.binary_conv2d, xp, bad, alpha, b, (1, 1), (0, 0))
    assert native == ref
    assert native == ("binary_conv2d: w_packed's header (N=2147483647, K=2147483647, kernel 7x7) describes a pack of "
                      "more than 2^62 bytes; repack it with compressops.ops.binary_pack_weight")
    # on a 1x1 pack the same lie stays below 2^62 bytes: a plain shape mismatch
    _, _, packed1, alpha1, _ = make_conv(64, 2, 1)
    bad1 = packed1
    for offset, value in ((24, 2**31 - 1), (32, 2**31 - 1), (56, 2**25)):
        bad1 = tampered(bad1, offset, "<q", value)
    native, ref = call_both(ops.binary_conv2d, reference.binary_conv2d, xp, bad1, alpha1, None, (1, 1), (0, 0))
    assert native == ref
    assert re.search(r"has shape \[2, 1, 1, 40\] but its header \(N=2147483647, K=2147483647\) needs "
                     r"\[2147483647, 1, 1, 268435457\]", native), native


def _pad_case(kind, c):
    """A small conv (OC=5, 3x3) or linear (OUT=5) layer with C input channels: its weight bits, pack,
    x_packed and the ops that take them, as (name, native, reference, extra args)."""
    if kind == "conv":
        _, bits, packed, alpha, b = make_conv(c, 5, 3)
        xp = ops.binary_pack_activation(randn_nonzero(2, c, 4, 5))
        calls = [(op, getattr(ops, op), getattr(reference, op), ((1, 1), (1, 1)))
                 for op in ("binary_conv2d", "binary_conv2d_packed")]
    else:
        _, bits, packed, alpha, b = make_linear(c, 5)
        xp = ops.binary_pack_activation(randn_nonzero(2, 3, c))
        calls = [("binary_linear", ops.binary_linear, reference.binary_linear, ())]
    return bits, packed, xp, alpha, b, calls


def _with_pad_bit(bits, packed, row, bit):
    """A copy of `packed` with `bit` (0..63) also set in the last word of tap row `row` (tampered)."""
    cw = bits.shape[-1]
    word = int(bits.reshape(-1, cw)[row, -1]) | (1 << bit)
    word = word - 2**64 if word >= 2**63 else word
    return tampered(packed, 64 + 8 * (row * cw + cw - 1), "<q", word)


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_pad_bits_set_in_w_packed_or_x_packed_raise_the_same_error_everywhere(level, kind):
    """A pack edited after packing or an x_packed built by hand with a channel padding bit set: the
    kernels would count it (XOR of whole words), so every compute op refuses it, naming the argument."""
    c = 66  # last word: channels 64, 65 real, bits 2..63 padding
    bits, packed, xp, alpha, b, calls = _pad_case(kind, c)
    rows = bits.numel() // bits.shape[-1]
    bad_w = {"first bit, last tap": _with_pad_bit(bits, packed, rows - 1, 2),
             "top bit, middle tap": _with_pad_bit(bits, packed, rows // 2, 63)}
    bad_x = {"one pixel": xp.clone(), "non-contiguous": xp.clone()}
    bad_x["one pixel"].view(-1, 2)[-1, -1] |= 1 << 5
    bad_x["non-contiguous"].view(-1, 2)[1, -1] |= -(2**63)  # the second row's top bit
    bad_x["non-contiguous"] = bad_x["non-contiguous"].transpose(0, -2)
    assert not bad_x["non-contiguous"].is_contiguous()
    cases = [(f"w_packed {name}", (xp, w), "w_packed") for name, w in bad_w.items()]
    cases += [(f"x_packed {name}", (x, packed), "x_packed") for name, x in bad_x.items()]
    # both dirty: the pack is named first, as the other checks order them
    cases.append(("both", (bad_x["one pixel"], bad_w["first bit, last tap"]), "w_packed"))
    for name, (x, w), arg in cases:
        x0, w0 = x.clone(), w.clone()
        for op, native_fn, ref_fn, extra in calls:
            def native(*args, native_fn=native_fn):
                with co.cpu_isa(level):
                    return native_fn(*args)

            got, want = call_both(native, ref_fn, x, w, alpha, b, *extra)
            assert got == want, (name, op)
            assert got == (f"{op}: {arg} has bits set past in_channels={c} in its last word; the channel padding "
                           f"bits must be 0"), (name, got)
        assert torch.equal(x, x0) and torch.equal(w, w0)


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("kind", ["conv", "linear"])
def test_every_bit_of_a_real_channel_in_the_last_word_is_accepted(level, kind):
    """No false positive: C = 66 with the last real channel's bit set, and C = 128 with every bit of the
    last word set (all real channels), run and agree with the reference."""
    for c, bit_sets in ((66, [1]), (128, range(64))):
        bits, _, xp, alpha, b, calls = _pad_case(kind, c)
        for bit in bit_sets:
            bits[..., -1] |= 1 << bit if bit < 63 else -(2**63)
            xp[..., -1] |= 1 << bit if bit < 63 else -(2**63)
        packed = ops.binary_pack_weight(bits, c)
        for op, native_fn, ref_fn, extra in calls:
            with co.cpu_isa(level):
                y = native_fn(xp, packed, alpha, b, *extra)
            assert torch.equal(y, ref_fn(xp, packed, alpha, b, *extra)), (c, op)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_kernels_bit_exact():
    if "CUDA" not in ops.native_kernels("binary_conv2d"):
        pytest.skip("binary CUDA kernels not built (no nvcc or CPU-only torch at build time)")
    for c, k, s, p in ((3, 3, 1, 1), (65, 5, 2, 2), (130, 1, 1, 0), (256, 7, 2, 3)):
        x = randn_nonzero(2, c, 9, 10)
        _, bits, packed, alpha, b = make_conv(c, 7, k)
        assert torch.equal(ops.binary_pack_weight(bits.cuda(), c).cpu(), packed)
        xp = reference.binary_pack_activation(x)
        xp_cuda = ops.binary_pack_activation(x.cuda())
        assert torch.equal(xp_cuda.cpu(), xp)
        y = ops.binary_conv2d(xp_cuda, packed.cuda(), alpha.cuda(), b.cuda(), (s, s), (p, p))
        assert torch.equal(y.cpu(), reference.binary_conv2d(xp, packed, alpha, b, (s, s), (p, p)))
        for oc in (7, 64, 100):
            _, _, packed, alpha, b = make_conv(c, oc, k)
            args = (xp, packed, alpha, b, (s, s), (p, p))
            yp = ops.binary_conv2d_packed(xp_cuda, packed.cuda(), alpha.cuda(), b.cuda(), (s, s), (p, p))
            assert torch.equal(yp.cpu(), reference.binary_conv2d_packed(*args))
    _, _, lpacked, lalpha, _ = make_linear(130, 9)
    xlp = reference.binary_pack_activation(randn_nonzero(5, 130))
    y = ops.binary_linear(xlp.cuda(), lpacked.cuda(), lalpha.cuda(), None, torch.bfloat16)
    assert torch.equal(y.cpu(), reference.binary_linear(xlp, lpacked, lalpha, None, torch.bfloat16))
    # a tampered header raises on the device too, with the reference's message
    bad = tampered(lpacked, 24, "<q", 9).cuda()
    with pytest.raises(ValueError, match=r"has shape \[9, 24\]|needs \[9, 24\]"):
        ops.binary_linear(xlp.cuda(), bad, lalpha.cuda())
