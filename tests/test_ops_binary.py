"""binary ops against compressops.reference (and plain conv2d(sign(x), sign(w))), on every CPU ISA level."""

import pytest
import torch
import torch.nn.functional as F

import compressops as co
from compressops import ops, reference
from compressops.formats import binary as bf

from .helpers import expected_kernel_level, OPCHECK_UTILS, isa_params, randn_nonzero, requires_native

# Packing has kernels up to avx2; the conv/linear kernels also at avx512_vnni (vpopcntq).


def make_conv(c, oc, k, bias=True):
    w = randn_nonzero(oc, c, k, k)
    bits, alpha = bf.binarize_weight(w)
    return w, bits, alpha, (randn_nonzero(oc) if bias else None)


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
    assert torch.equal(bf.sign(torch.tensor([-0.0, 0.0, float("nan"), -1e-30])), torch.tensor([1.0, 1.0, -1.0, -1.0]))


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
        w, bits, alpha, b = make_conv(c, oc, k, bias)
        xp = ops.binary_pack_activation(x)
        with co.cpu_isa(level):
            y = ops.binary_conv2d(xp, bits, alpha, b, c, (k, k), (s, s), (p, p))
            assert torch.ops.compressops._last_kernel_isa("binary_conv2d") == expected_kernel_level("binary_conv2d", level)
        ref = reference.binary_conv2d(xp, bits, alpha, b, c, (k, k), (s, s), (p, p))
        assert y.shape == ref.shape and y.dtype == torch.float32
        assert torch.equal(y, ref), (c, oc, n)
        # the reference itself is conv2d(sign(x), sign(w)) with zero padding (padded taps count 0)
        assert torch.equal(ref, plain_conv(x, w, alpha, b, s, p))


@pytest.mark.parametrize("level", isa_params())
def test_conv2d_rectangular_clamp_and_big_channels(level):
    # rectangular kernel/stride/padding, clamp, C large enough that byte counters must be widened
    x = randn_nonzero(2, 1100, 6, 5)
    w = randn_nonzero(7, 1100, 3, 1)
    bits, alpha = bf.binarize_weight(w)
    xp = ops.binary_pack_activation(x)
    args = (xp, bits, alpha, None, 1100, (3, 1), (2, 1), (1, 0), -5.0, 7.5)
    with co.cpu_isa(level):
        y = ops.binary_conv2d(*args)
    assert torch.equal(y, reference.binary_conv2d(*args))
    assert y.min() >= -5.0 and y.max() <= 7.5


@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("batch,k,n", [((1,), 1, 1), ((3,), 67, 33), ((2, 5), 300, 70), ((0,), 64, 5),
                                       ((70,), 256, 130)], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_bit_exact(level, batch, k, n, bias):
    x = randn_nonzero(*batch, k)
    w = randn_nonzero(n, k)
    bits, alpha = bf.binarize_weight(w)
    b = randn_nonzero(n) if bias else None
    xp = ops.binary_pack_activation(x)
    with co.cpu_isa(level):
        y = ops.binary_linear(xp, bits, alpha, b, k)
    ref = reference.binary_linear(xp, bits, alpha, b, k)
    assert y.shape == (*batch, n)
    assert torch.equal(y, ref)
    expect = (bf.sign(x).double() @ bf.sign(w).double().T).float() * alpha
    assert torch.equal(ref, expect if b is None else expect + b)


@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("k,s,p", [(1, 1, 0), (3, 1, 1), (3, 2, 1), (5, 2, 2), (7, 1, 3)], ids=str)
def test_conv2d_packed_bit_exact(level, k, s, p):
    # OC below, at and across word boundaries; 1-row inputs take the channel-chunked path
    for c, oc, n, h, w_in in ((3, 5, 2, 7, 9), (66, 64, 1, 8, 7), (130, 65, 3, 9, 9), (64, 200, 1, 1, 1),
                              (128, 130, 1, 5, 4)):
        if h + 2 * p < k or w_in + 2 * p < k:
            continue
        x = randn_nonzero(n, c, h, w_in)
        _, bits, alpha, b = make_conv(c, oc, k)
        alpha[::3] = -alpha[::3]  # a folded BatchNorm with gamma < 0 flips a channel's sign
        xp = ops.binary_pack_activation(x)
        args = (xp, bits, alpha, b, c, (k, k), (s, s), (p, p))
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
    _, bits, alpha, _ = make_conv(64, 70, 1)
    alpha[3] = float("nan")
    xp = ops.binary_pack_activation(x)
    args = (xp, bits, alpha, None, 64, (1, 1), (1, 1), (0, 0))
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
    w, bits, alpha, b = make_conv(8, 4, 3)
    bits0 = bits.clone()
    xp = ops.binary_pack_activation(x)
    y = ops.binary_conv2d(xp, bits, alpha, b, 8, (3, 3), (1, 1), (1, 1))
    assert torch.equal(x, x0) and torch.equal(bits, bits0)
    assert torch.equal(y, plain_conv(x, w, alpha, b, 1, 1))
    # a non-contiguous packed input (slice over W) is handled too
    xs = xp[:, :, 1:]
    assert torch.equal(ops.binary_conv2d(xs, bits, alpha, b, 8, (3, 3), (1, 1), (1, 1)),
                       reference.binary_conv2d(xs, bits, alpha, b, 8, (3, 3), (1, 1), (1, 1)))
    e = ops.binary_conv2d(ops.binary_pack_activation(torch.randn(0, 8, 6, 6)), bits, alpha, b, 8, (3, 3), (1, 1),
                          (1, 1))
    assert e.shape == (0, 4, 6, 6)
    xs0 = xs.clone()
    assert torch.equal(ops.binary_conv2d_packed(xs, bits, alpha, b, 8, (3, 3), (1, 1), (1, 1)),
                       reference.binary_conv2d_packed(xs, bits, alpha, b, 8, (3, 3), (1, 1), (1, 1)))
    assert torch.equal(xs, xs0)
    e = ops.binary_conv2d_packed(ops.binary_pack_activation(torch.randn(0, 8, 6, 6)), bits, alpha, b, 8, (3, 3),
                                 (1, 1), (1, 1))
    assert e.shape == (0, 6, 6, 1) and e.dtype == torch.int64


@requires_native
def test_thread_counts_agree():
    x = randn_nonzero(2, 200, 12, 12)
    w, bits, alpha, b = make_conv(200, 40, 3)
    xp = ops.binary_pack_activation(x)
    old = torch.get_num_threads()
    try:
        outs, packed = [], []
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            outs.append(ops.binary_conv2d(xp, bits, alpha, b, 200, (3, 3), (2, 2), (1, 1)))
            packed.append(ops.binary_conv2d_packed(xp[:1, :1], bits, alpha, b, 200, (3, 3), (2, 2), (1, 1)))
    finally:
        torch.set_num_threads(old)
    assert all(torch.equal(o, outs[0]) for o in outs)
    assert all(torch.equal(o, packed[0]) for o in packed)


def _opcheck_samples():
    x = randn_nonzero(2, 70, 5, 6)
    w, bits, alpha, b = make_conv(70, 9, 3)
    xp = reference.binary_pack_activation(x)
    lw = randn_nonzero(11, 70)
    lbits, lalpha = bf.binarize_weight(lw)
    xl = randn_nonzero(3, 70)
    rbits, ralpha = bf.binarize_weight(randn_nonzero(66, 70, 1, 3))  # 66 outputs: two packed words
    return [
        (torch.ops.compressops.binary_pack_activation.default, (x,), {}),
        (torch.ops.compressops.binary_pack_activation.default, (xl,), {}),
        (torch.ops.compressops.binary_conv2d.default, (xp, bits, alpha, b, 70, [3, 3], [2, 2], [1, 1]), {}),
        (torch.ops.compressops.binary_conv2d.default, (xp, bits, alpha, None, 70, [3, 3], [1, 1], [0, 0], -1.0, 1.0),
         {}),
        (torch.ops.compressops.binary_linear.default,
         (reference.binary_pack_activation(xl), lbits, lalpha, randn_nonzero(11), 70), {}),
        (torch.ops.compressops.binary_conv2d_packed.default, (xp, bits, alpha, b, 70, [3, 3], [2, 2], [1, 1]), {}),
        (torch.ops.compressops.binary_conv2d_packed.default, (xp, rbits, ralpha, None, 70, [1, 3], [1, 1], [0, 1]),
         {}),
    ]


@pytest.mark.parametrize("idx", range(7))
def test_opcheck(idx):
    op, args, kwargs = _opcheck_samples()[idx]
    torch.library.opcheck(op, args, kwargs, test_utils=OPCHECK_UTILS)


@pytest.mark.parametrize("use_reference", [False, True], ids=["native", "reference"])
def test_bad_input_errors(use_reference):
    mod = reference if use_reference else ops
    err = (ValueError, RuntimeError)
    x = randn_nonzero(1, 70, 5, 5)
    w, bits, alpha, b = make_conv(70, 4, 3)
    xp = reference.binary_pack_activation(x)
    with pytest.raises(err, match="x must be (a )?float"):
        mod.binary_pack_activation(x.to(torch.int32))
    with pytest.raises(err, match="x_packed"):
        mod.binary_conv2d(xp.int(), bits, alpha, b, 70, (3, 3), (1, 1), (1, 1))
    with pytest.raises(err, match="x_packed"):
        mod.binary_conv2d(xp, bits, alpha, b, 200, (3, 3), (1, 1), (1, 1))
    with pytest.raises(err, match="w_packed"):
        mod.binary_conv2d(xp, bits, alpha, b, 70, (5, 5), (1, 1), (1, 1))
    with pytest.raises(err, match="alpha must be (a )?float32"):
        mod.binary_conv2d(xp, bits, alpha[:3], b, 70, (3, 3), (1, 1), (1, 1))
    with pytest.raises(err, match="bias must be"):
        mod.binary_conv2d(xp, bits, alpha, b[:2], 70, (3, 3), (1, 1), (1, 1))
    with pytest.raises(err, match="stride"):
        mod.binary_conv2d(xp, bits, alpha, b, 70, (3, 3), (0, 1), (1, 1))
    with pytest.raises(err, match="x_packed"):
        mod.binary_conv2d_packed(xp[..., :1].contiguous(), bits, alpha, b, 70, (3, 3), (1, 1), (1, 1))
    with pytest.raises(err, match="alpha must be (a )?float32"):
        mod.binary_conv2d_packed(xp, bits, alpha.double(), b, 70, (3, 3), (1, 1), (1, 1))
    lbits, lalpha = bf.binarize_weight(randn_nonzero(4, 70))
    with pytest.raises(err, match="w_packed"):
        mod.binary_linear(reference.binary_pack_activation(randn_nonzero(2, 70)), bits, alpha, None, 70)
    with pytest.raises(err, match="in_features"):
        mod.binary_linear(reference.binary_pack_activation(randn_nonzero(2, 70)), lbits, lalpha, None, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_kernels_bit_exact():
    if "CUDA" not in ops.native_kernels("binary_conv2d"):
        pytest.skip("binary CUDA kernels not built (no nvcc or CPU-only torch at build time)")
    for c, k, s, p in ((3, 3, 1, 1), (65, 5, 2, 2), (130, 1, 1, 0), (256, 7, 2, 3)):
        x = randn_nonzero(2, c, 9, 10)
        w, bits, alpha, b = make_conv(c, 7, k)
        xp = reference.binary_pack_activation(x)
        xp_cuda = ops.binary_pack_activation(x.cuda())
        assert torch.equal(xp_cuda.cpu(), xp)
        y = ops.binary_conv2d(xp_cuda, bits.cuda(), alpha.cuda(), b.cuda(), c, (k, k), (s, s), (p, p))
        assert torch.equal(y.cpu(), reference.binary_conv2d(xp, bits, alpha, b, c, (k, k), (s, s), (p, p)))
        for oc in (7, 64, 100):
            w, bits, alpha, b = make_conv(c, oc, k)
            args = (xp, bits, alpha, b, c, (k, k), (s, s), (p, p))
            yp = ops.binary_conv2d_packed(xp_cuda, bits.cuda(), alpha.cuda(), b.cuda(), c, (k, k), (s, s), (p, p))
            assert torch.equal(yp.cpu(), reference.binary_conv2d_packed(*args))
    xl = randn_nonzero(5, 130)
    lbits, lalpha = bf.binarize_weight(randn_nonzero(9, 130))
    xlp = reference.binary_pack_activation(xl)
    y = ops.binary_linear(xlp.cuda(), lbits.cuda(), lalpha.cuda(), None, 130)
    assert torch.equal(y.cpu(), reference.binary_linear(xlp, lbits, lalpha, None, 130))
