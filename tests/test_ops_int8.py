"""int8 ops against compressops.reference, on every CPU ISA level this machine runs."""

import re
import struct
import threading

import pytest
import torch

import compressops as co
from compressops import ops, reference
from compressops.formats import int8 as f8
from compressops.formats import pack_header

from .helpers import (OPCHECK_UTILS, call_both, expected_kernel_level, grad_leaf, isa_params, randn_nonzero,
                     requires_native, tampered)

SHAPES = [  # (batch shape, K, N): M=1, odd K (not a multiple of 4/64), N not a multiple of 16
    ((1,), 1, 1),
    ((1,), 64, 16),
    ((3,), 67, 33),
    ((2, 5), 300, 70),
    ((17,), 1000, 129),
    ((4, 2, 3), 129, 48),
    ((33,), 512, 257),
]


# int8 has no kernel of its own at these levels; they run the next level down.


def make_layer(k, n, bias=True):
    w = randn_nonzero(n, k)
    w_q, w_s = f8.quantize_weight(w)
    return w_q, w_s, ops.int8_pack_weight(w_q), (randn_nonzero(n) if bias else None)


def header_bytes(n, k, tag=b"int8", version=1, fields=(16, 4, 0)):
    return struct.pack("<4sI8sIIqq3q", b"COPK", 1, tag, version, 0, n, k, *fields)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pack_matches_python_and_roundtrips(shape):
    _, k, n = shape
    w_q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    packed = ops.int8_pack_weight(w_q)
    assert torch.equal(packed, f8.pack_weight(w_q))
    assert torch.equal(f8.unpack_weight(packed), w_q)
    nbytes = f8.packed_bytes(n, k)
    n_pad, k_pad = -(-n // 16) * 16, -(-k // 4) * 4
    assert nbytes == 64 + n_pad * k_pad + 4 * n_pad
    assert packed.dtype == torch.uint8 and packed.shape == (n, -(-nbytes // n)) and packed.is_contiguous()
    flat = packed.view(-1)
    assert bytes(flat[:64].tolist()) == header_bytes(n, k)
    # the blocked weights: byte (n, k) at ((n // 16 * K_pad/4 + k // 4) * 16 + n % 16) * 4 + k % 4
    blocks = flat[64:64 + n_pad * k_pad].view(torch.int8).view(n_pad // 16, k_pad // 4, 16, 4)
    dense = blocks.permute(0, 2, 1, 3).reshape(n_pad, k_pad)
    assert torch.equal(dense[:n, :k], w_q) and not dense[n:].any() and not dense[:, k:].any()
    col_sums = flat[64 + n_pad * k_pad:nbytes].view(torch.int32)
    assert torch.equal(col_sums[:n], w_q.sum(dim=1, dtype=torch.int32)) and not col_sums[n:].any()
    assert not flat[nbytes:].any()  # the row padding is zero
    # a non-contiguous weight packs to the same bytes
    assert torch.equal(ops.int8_pack_weight(w_q.t().contiguous().t()), packed)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_zero_pack_is_the_pack_of_the_zero_weight(shape):
    """Int8Linear's skeleton holds zero_pack instead of running the pack op on a zero weight."""
    _, k, n = shape
    zero = f8.zero_pack(n, k)
    assert torch.equal(ops.int8_pack_weight(torch.zeros(n, k, dtype=torch.int8)), zero)
    assert torch.equal(f8.unpack_weight(zero), torch.zeros(n, k, dtype=torch.int8))


@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_quantize_activation_bit_exact(level, shape, dtype):
    batch, k, _ = shape
    x = randn_nonzero(*batch, k, dtype=dtype) * 3
    with co.cpu_isa(level):
        q, s = ops.int8_quantize_activation(x)
        ran = torch.ops.compressops._last_kernel_isa("int8_quantize_activation")
    assert ran == expected_kernel_level("int8_quantize_activation", level)
    q_ref, s_ref = reference.int8_quantize_activation(x)
    assert torch.equal(q, q_ref)
    assert torch.equal(s, s_ref)
    assert q.abs().max() == 127  # the row max maps to +-127


@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_int8_linear_bit_exact(level, shape, bias, dtype):
    batch, k, n = shape
    _, w_s, packed, b = make_layer(k, n, bias)
    x = randn_nonzero(*batch, k, dtype=dtype)
    with co.cpu_isa(level):
        y = ops.int8_linear(x, packed, w_s, b)
        ran = torch.ops.compressops._last_kernel_isa("int8_linear")
    assert ran == expected_kernel_level("int8_linear", level)
    y_ref = reference.int8_linear(x, packed, w_s, b)
    assert y.dtype == dtype and y.shape == (*batch, n)
    assert torch.equal(y, y_ref)


@pytest.mark.parametrize("level", [p for p in isa_params() if p.values[0].startswith("avx2")])
@pytest.mark.parametrize("m", [63, 64, 65, 263], ids=lambda m: f"m{m}")
def test_int8_linear_blocked_gemm_bit_exact(level, m):
    """The avx2 level's batch GEMM widens its operands in chunks (256 k values, 128 rows, pairs of
    16-column blocks) from 64 rows up: shapes across every chunk edge and both sides of the 64-row
    switch, with odd tails, match the reference bit for bit."""
    k, n = 600, 130  # k chunks of 256, 256 and 88; 9 column blocks: 4 pairs and a single, N % 16 = 2
    _, w_s, packed, b = make_layer(k, n)
    x = randn_nonzero(m, k)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # one call sees every row, so the 128-row chunks are crossed
        with co.cpu_isa(level):
            y = ops.int8_linear(x, packed, w_s, b)
            ran = torch.ops.compressops._last_kernel_isa("int8_linear")
    finally:
        torch.set_num_threads(old)
    assert ran == expected_kernel_level("int8_linear", level)
    assert torch.equal(y, reference.int8_linear(x, packed, w_s, b))


@pytest.mark.parametrize("level", isa_params())
def test_int8_linear_every_tile_tail_bit_exact(level):
    """Rows 1..19 and 1..14 column blocks cover every register-tile tail (the VNNI kernel's 8 rows x 3
    blocks, groups of 12 blocks; the AVX2 kernel's 3 rows), the one-row GEMV and the multi-tile paths,
    in one layer per row count."""
    _, w_s, packed, b = make_layer(68, 16 * 14 - 5)
    for m in range(1, 20):
        x = randn_nonzero(m, 68)
        with co.cpu_isa(level):
            y = ops.int8_linear(x, packed, w_s, b)
        assert torch.equal(y, reference.int8_linear(x, packed, w_s, b)), f"M={m}"


@pytest.mark.parametrize("level", isa_params())
def test_int8_linear_k_beyond_int32_headroom_of_biased_sums_bit_exact(level):
    """K = 70000: a kernel that biases one operand by 128 (VNNI's unsigned x signed bytes) overflows
    int32 in its intermediate sums past K ~ 66000; the corrected sum must still be exact."""
    k = 70000
    w_q = torch.full((16, k), 127, dtype=torch.int8)
    w_q[1::2] = -127
    packed = ops.int8_pack_weight(w_q)
    w_s = torch.full((16,), 1e-3)
    x = torch.full((2, k), 1.0)
    x[1, ::2] = -1.0
    with co.cpu_isa(level):
        y = ops.int8_linear(x, packed, w_s, None)
    y_ref = reference.int8_linear(x, packed, w_s, None)
    assert torch.equal(y, y_ref)
    # the all-ones row quantizes to 127, so each column's int32 sum is +-127 * 127 * K (exact here)
    signs = torch.tensor([1.0, -1.0] * 8)
    assert torch.allclose(y_ref[0], signs * (127 * k * 1e-3), rtol=1e-6)


@pytest.mark.parametrize("level", isa_params())
def test_int8_linear_static_scale_bit_exact(level):
    _, w_s, packed, b = make_layer(200, 40)
    x = randn_nonzero(9, 200) * 4  # some values beyond the static range: they must clamp
    act_scale = torch.tensor(2.5 / 127)
    with co.cpu_isa(level):
        y = ops.int8_linear(x, packed, w_s, b, act_scale=act_scale)
        q, s = ops.int8_quantize_activation(x, act_scale)
    assert torch.equal(y, reference.int8_linear(x, packed, w_s, b, act_scale=act_scale))
    q_ref, s_ref = reference.int8_quantize_activation(x, act_scale)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
    assert (q == 127).any() and (q == -127).any()


@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("m", [1, 6], ids=lambda m: f"m{m}")
@pytest.mark.parametrize("k", [333, 256], ids=lambda k: f"k{k}")  # padded copy / read in place
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_weight_only_close_to_reference(level, m, k, dtype):
    n = 71
    _, w_s, packed, b = make_layer(k, n)
    x = randn_nonzero(m, k + 40, dtype=dtype)[:, 20:20 + k]  # rows strided wider than K
    with co.cpu_isa(level):
        y = ops.int8_weight_only_linear(x, packed, w_s, b)
    y_ref64 = (x.double() @ f8.unpack_weight(packed).double().t()) * w_s.double() + b.double()
    y_ref = reference.int8_weight_only_linear(x, packed, w_s, b)
    # flash-attn rule: no worse than twice the reference's own error at the output precision.
    err = (y.double() - y_ref64).abs().max()
    ref_err = (y_ref.double() - y_ref64).abs().max()
    assert err <= 2 * ref_err + 1e-4 * y_ref64.abs().max()
    assert y.dtype == dtype


@pytest.mark.parametrize("level", isa_params())
def test_special_rows(level):
    """Zero rows give bias; rows with NaN/Inf give NaN; equal to the reference bit for bit."""
    _, w_s, packed, b = make_layer(70, 20)
    x = randn_nonzero(4, 70)
    x[0] = 0
    x[1, 5] = float("nan")
    x[2, 9] = float("inf")
    with co.cpu_isa(level):
        y = ops.int8_linear(x, packed, w_s, b)
    y_ref = reference.int8_linear(x, packed, w_s, b)
    assert torch.equal(y[0], b)
    assert torch.isnan(y[1]).all() and torch.isnan(y[2]).all()
    assert torch.equal(y[3], y_ref[3]) and torch.isfinite(y[3]).all()


@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rows_too_small_for_a_finite_scale_quantize_as_zero(level, dtype):
    """127 / amax overflows float32 for amax below about 3.7e-37: such a row gets scale 0 and q 0
    (an inf reciprocal made every nonzero +-127 whatever its size), at every level and in the
    reference, bit for bit; the linear op then gives the bias."""
    _, w_s, packed, b = make_layer(70, 20)
    x = randn_nonzero(4, 70)
    x[0] = 1e-38
    x[0, 0] = 0
    x[1] = 3e-37
    x[1, 3] = -1e-39
    x = x.to(dtype)
    q_ref, s_ref = reference.int8_quantize_activation(x)
    assert torch.equal(s_ref[:2], torch.zeros(2)) and not q_ref[:2].any()
    with co.cpu_isa(level):
        q, s = ops.int8_quantize_activation(x)
        y = ops.int8_linear(x, packed, w_s, b)
    assert torch.equal(q, q_ref) and torch.equal(s, s_ref)
    assert torch.equal(y, reference.int8_linear(x, packed, w_s, b))
    assert torch.equal(y[:2], b.to(dtype).expand(2, -1))


@requires_native
def test_static_scales_without_a_finite_reciprocal_raise_the_same_error():
    """A static act_scale below 2^-126 has 1 / act_scale = inf in float32; it is refused like a zero one."""
    _, w_s, packed, b = make_layer(32, 8)
    x = randn_nonzero(2, 32)
    for bad in (1e-40, 2.0**-127):
        native, ref = call_both(ops.int8_linear, reference.int8_linear, x, packed, w_s, b,
                                act_scale=torch.tensor(bad))
        assert native == ref
        assert native.startswith("int8_linear: act_scale must be at least 2^-126 (1 / act_scale overflows float32 "
                                  "below it), got ")
    smallest = torch.tensor(2.0**-126)
    assert torch.equal(ops.int8_linear(x, packed, w_s, b, act_scale=smallest),
                       reference.int8_linear(x, packed, w_s, b, act_scale=smallest))


def test_non_contiguous_empty_and_out_dtype():
    _, w_s, packed, b = make_layer(96, 24)
    x = randn_nonzero(96, 10).t()  # [10, 96] with stride (1, 10)
    assert not x.is_contiguous()
    assert torch.equal(ops.int8_linear(x, packed, w_s, b), reference.int8_linear(x.contiguous(), packed, w_s, b))
    empty = torch.empty(0, 3, 96)
    assert ops.int8_linear(empty, packed, w_s, b).shape == (0, 3, 24)
    y16 = ops.int8_linear(x, packed, w_s, b, out_dtype=torch.float16)
    assert y16.dtype == torch.float16
    assert torch.equal(y16, reference.int8_linear(x, packed, w_s, b, out_dtype=torch.float16))
    xh = x.half()
    assert torch.equal(ops.int8_linear(xh, packed, w_s, b), reference.int8_linear(xh, packed, w_s, b))


def test_inputs_not_modified():
    _, w_s, packed, b = make_layer(64, 32)
    x = randn_nonzero(5, 64)
    copies = [t.clone() for t in (x, packed, w_s, b)]
    ops.int8_linear(x, packed, w_s, b)
    ops.int8_weight_only_linear(x, packed, w_s, b)
    for before, after in zip(copies, (x, packed, w_s, b)):
        assert torch.equal(before, after)


@requires_native
def test_thread_count_and_concurrent_calls_agree():
    _, w_s, packed, b = make_layer(512, 300)
    x = randn_nonzero(37, 512)
    expected = reference.int8_linear(x, packed, w_s, b)
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert torch.equal(ops.int8_linear(x, packed, w_s, b), expected)
    finally:
        torch.set_num_threads(old)
    results, errors = [None] * 4, []

    def work(i):
        try:
            results[i] = ops.int8_linear(x, packed, w_s, b)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert all(torch.equal(r, expected) for r in results)


def _opcheck_samples():
    _, w_s, packed, b = make_layer(67, 19)
    x = randn_nonzero(3, 67)
    w_q = torch.randint(-127, 128, (19, 67), dtype=torch.int8)
    return [
        (torch.ops.compressops.int8_pack_weight.default, (w_q,), {}),
        (torch.ops.compressops.int8_quantize_activation.default, (x,), {}),
        (torch.ops.compressops.int8_quantize_activation.default, (x, torch.tensor(0.02)), {}),
        (torch.ops.compressops.int8_linear.default, (x, packed, w_s, b), {}),
        (torch.ops.compressops.int8_linear.default, (x.bfloat16(), packed, w_s, None),
         {"act_scale": torch.tensor(0.03)}),
        (torch.ops.compressops.int8_linear.default, (randn_nonzero(2, 4, 67), packed, w_s, b, torch.float16), {}),
        (torch.ops.compressops.int8_weight_only_linear.default, (x, packed, w_s, b), {}),
        (torch.ops.compressops.int8_weight_only_linear.default, (x.half(), packed, w_s, None),
         {"out_dtype": torch.bfloat16}),
        # with gradients (of x and bias; the weight is frozen): the autograd and compiled-backward checks
        (torch.ops.compressops.int8_linear.default, (grad_leaf(x), packed, w_s, grad_leaf(b)), {}),
        (torch.ops.compressops.int8_linear.default, (grad_leaf(x.bfloat16()), packed, w_s, None),
         {"act_scale": torch.tensor(0.03)}),
        (torch.ops.compressops.int8_weight_only_linear.default, (grad_leaf(randn_nonzero(2, 4, 67)), packed, w_s,
                                                                 grad_leaf(b)), {"out_dtype": torch.float16}),
    ]


@pytest.mark.parametrize("idx", range(11))
def test_opcheck(idx):
    op, args, kwargs = _opcheck_samples()[idx]
    torch.library.opcheck(op, args, kwargs, test_utils=OPCHECK_UTILS)


@pytest.mark.parametrize("use_reference", [False, True], ids=["native", "reference"])
def test_bad_input_errors(use_reference):
    """Clear errors naming the argument, from the native kernel and from the reference alike."""
    lin = reference.int8_linear if use_reference else ops.int8_linear
    pack = reference.int8_pack_weight if use_reference else ops.int8_pack_weight
    err = (ValueError, RuntimeError)
    w_q, w_s, packed, b = make_layer(32, 8)
    x = randn_nonzero(2, 32)
    with pytest.raises(err, match="x must be float"):
        lin(x.to(torch.int32), packed, w_s, b)
    with pytest.raises(err, match="K=31"):
        lin(x[:, :31], packed, w_s, b)
    with pytest.raises(err, match="w_scale must be float32"):
        lin(x, packed, w_s[:7], b)
    with pytest.raises(err, match="bias must be"):
        lin(x, packed, w_s, b[:3])
    with pytest.raises(err, match="w_packed must be a 2-D uint8"):
        lin(x, w_q.view(torch.uint8).flatten(), w_s, b)
    with pytest.raises(err, match="w_packed does not start with a compressops pack header"):
        lin(x, w_q.view(torch.uint8), w_s, b)
    with pytest.raises(err, match="w_packed must be a 2-D uint8"):
        lin(x, packed.view(-1), w_s, b)
    with pytest.raises(err, match="w_packed must be contiguous"):
        lin(x, packed.t(), w_s, b)
    with pytest.raises(err, match="out_dtype must be"):
        lin(x, packed, w_s, b, torch.int32)
    with pytest.raises(err, match="act_scale must be finite and positive"):
        lin(x, packed, w_s, b, act_scale=torch.tensor(-1.0))
    with pytest.raises(err, match="must be int8"):
        pack(w_q.float())
    with pytest.raises(err, match="2-D"):
        pack(w_q.flatten())
    with pytest.raises(err, match="K <= 131072"):
        pack(torch.zeros(1, 131073, dtype=torch.int8))
    with pytest.raises(err, match=r"\[-127, 127\]"):
        pack(torch.full((2, 3), -128, dtype=torch.int8))


TAMPERED = {  # header field -> (offset, struct format, value, message); the pack of make_layer(32, 8) is [8, 80]
    "magic": (0, "<I", 0x38493843, "does not start with a compressops pack header"),
    "header version": (4, "<I", 2, "does not start with a compressops pack header"),
    "tag": (8, "<8s", b"half", "holds a 'half' pack, not a 'int8' one"),
    "tag bytes": (8, "<8s", b"in\x01\xff", r"holds a 'in\?\?' pack"),
    "format version": (16, "<I", 2, "is a 'int8' pack of version 2, this build reads version 1"),
    "reserved": (20, "<I", 7, "header is corrupt"),
    "N larger": (24, "<q", 9, r"has shape \[8, 80\] but its header \(N=9, K=32\) needs \[9, 72\]"),
    "N smaller": (24, "<q", 7, r"has shape \[8, 80\] but its header \(N=7, K=32\) needs \[7, 92\]"),
    "N zero": (24, "<q", 0, r"N=0, K=32; both must be in \[1, 2\^31\)"),
    "N negative": (24, "<q", -8, r"both must be in \[1, 2\^31\)"),
    "N huge": (24, "<q", 2**40, r"both must be in \[1, 2\^31\)"),
    "K larger": (32, "<q", 36, r"header \(N=8, K=36\) needs \[8, 88\]"),
    "K overflowing": (32, "<q", 2**31 - 1, "needs"),
    "K negative": (32, "<q", -1, r"both must be in \[1, 2\^31\)"),
    "NR": (40, "<q", 32, r"header fields \(32, 4, 0\) do not match a 'int8' pack of N=8, K=32 \(16, 4, 0\)"),
    "KR": (48, "<q", 8, r"header fields \(16, 8, 0\) do not match"),
    "last field": (56, "<q", -1, "do not match"),
}


@requires_native
@pytest.mark.parametrize("op", ["int8_linear", "int8_weight_only_linear"])
@pytest.mark.parametrize("field", sorted(TAMPERED))
def test_tampered_header_raises_the_same_error_everywhere(field, op):
    """A header that lies raises before any weight byte is read, with one message from C++ and Python."""
    _, w_s, packed, b = make_layer(32, 8)
    offset, fmt, value, message = TAMPERED[field]
    bad = tampered(packed, offset, fmt, value)
    native, ref = call_both(getattr(ops, op), getattr(reference, op), randn_nonzero(2, 32), bad, w_s, b)
    assert native == ref
    assert native.startswith(f"{op}: w_packed")
    assert re.search(message, native), native


@requires_native
def test_truncated_or_padded_pack_raises():
    _, w_s, packed, b = make_layer(32, 8)  # 64 + 16 * 32 + 4 * 16 = 640 bytes: [8, 80]
    x = randn_nonzero(2, 32)
    for bad, message in ((packed[:, :-1], r"has shape \[8, 79\] but its header .N=8, K=32. needs \[8, 80\]"),
                         (torch.cat([packed, packed[:1]]), r"has shape \[9, 80\]"),
                         (torch.cat([packed, packed[:, :1]], dim=1), r"has shape \[8, 81\]"),
                         (packed.view(-1)[:63].view(1, 63), "holds 63 bytes, too few for a pack header")):
        for op in ("int8_linear", "int8_weight_only_linear"):
            native, ref = call_both(getattr(ops, op), getattr(reference, op), x, bad.clone(), w_s, b)
            assert native == ref
            assert re.search(message, native), native


@requires_native
def test_swapped_n_and_k_fails_on_the_shape():
    _, w_s, packed, b = make_layer(32, 8)
    bad = tampered(tampered(packed, 24, "<q", 32), 32, "<q", 8)
    native, ref = call_both(ops.int8_linear, reference.int8_linear, randn_nonzero(2, 32), bad, w_s, b)
    assert native == ref
    assert re.search(r"has shape \[8, 80\] but its header \(N=32, K=8\) needs \[32, 14\]", native), native


@requires_native
def test_hand_made_header_beyond_max_k_raises():
    """A consistent header whose K the int32 sums cannot hold (the pack op never writes one)."""
    k = f8.MAX_K + 1
    bad = pack_header.zeros("int8", 1, (1,), 1, k, f8.FIELDS, f8.packed_bytes(1, k))
    native, ref = call_both(ops.int8_linear, reference.int8_linear, torch.ones(1, k), bad, torch.ones(1))
    assert native == ref
    assert native == (f"int8_linear: w_packed's header has K={k}, more than an int8 pack holds (131072, "
                      f"int32 accumulation)")


def _bad_linear_calls(w_q, w_s, packed, b, x):
    """(description, args, kwargs) of int8_linear calls with one bad argument each."""
    return [
        ("x int", (x.to(torch.int32), packed, w_s, b), {}),
        ("x 0-d", (x[0, 0], packed, w_s, b), {}),
        ("K", (x[:, :31], packed, w_s, b), {}),
        ("pack dtype", (x, packed.view(torch.int8), w_s, b), {}),
        ("pack float", (x, w_q.float(), w_s, b), {}),
        ("pack 1-D", (x, packed.view(-1), w_s, b), {}),
        ("pack 3-D", (x, packed.view(8, 10, 8), w_s, b), {}),
        ("pack strided", (x, packed.t(), w_s, b), {}),
        ("w_scale dtype", (x, packed, w_s.double(), b), {}),
        ("w_scale short", (x, packed, w_s[:7], b), {}),
        ("w_scale 2-D", (x, packed, w_s.view(2, 4), b), {}),
        ("bias short", (x, packed, w_s, b[:3]), {}),
        ("bias int", (x, packed, w_s, b.to(torch.int64)), {}),
        ("out_dtype", (x, packed, w_s, b, torch.int32), {}),
        ("out_dtype float64", (x, packed, w_s, b, torch.float64), {}),
        ("act_scale shape", (x, packed, w_s, b), {"act_scale": torch.ones(2)}),
        ("act_scale int", (x, packed, w_s, b), {"act_scale": torch.tensor(3)}),
        ("act_scale negative", (x, packed, w_s, b), {"act_scale": torch.tensor(-1.5)}),
        ("act_scale zero", (x, packed, w_s, b), {"act_scale": torch.tensor(0.0)}),
        ("act_scale nan", (x, packed, w_s, b), {"act_scale": torch.tensor(float("nan"))}),
        ("act_scale -nan", (x, packed, w_s, b), {"act_scale": -torch.tensor(float("nan"))}),
        ("act_scale inf", (x, packed, w_s, b), {"act_scale": torch.tensor(float("inf"))}),
        ("act_scale tiny", (x, packed, w_s, b), {"act_scale": torch.tensor(1e-50, dtype=torch.float64)}),
    ]


@requires_native
def test_bad_arguments_raise_the_same_error_everywhere():
    """Each bad argument (the family's tensors included) gets one message from C++ and Python."""
    w_q, w_s, packed, b = make_layer(32, 8)
    x = randn_nonzero(2, 32)
    for what, args, kwargs in _bad_linear_calls(w_q, w_s, packed, b, x):
        native, ref = call_both(ops.int8_linear, reference.int8_linear, *args, **kwargs)
        assert native == ref, what
        assert native.startswith("int8_linear: "), what
        if not kwargs:
            native, ref = call_both(ops.int8_weight_only_linear, reference.int8_weight_only_linear, *args)
            assert native == ref and native.startswith("int8_weight_only_linear: "), what
    native, _ = call_both(ops.int8_linear, reference.int8_linear, x, packed, w_s.double(), b)
    assert native == "int8_linear: w_scale must be float32 of shape [N] = [8], got torch.float64 (8,)"
    native, _ = call_both(ops.int8_linear, reference.int8_linear, x, packed, w_s, b, act_scale=torch.tensor(-1.5))
    assert native == "int8_linear: act_scale must be finite and positive, got -1.5"
    for bad in (torch.ones(2), torch.tensor(float("nan"))):
        native, ref = call_both(ops.int8_quantize_activation, reference.int8_quantize_activation, x, bad)
        assert native == ref and native.startswith("int8_quantize_activation: act_scale"), bad
    native, ref = call_both(ops.int8_quantize_activation, reference.int8_quantize_activation, x.int())
    assert native == ref == "int8_quantize_activation: x must be float32, bfloat16 or float16, got torch.int32"


@requires_native
def test_bad_weights_raise_the_same_error_from_both_packers():
    w_q = torch.randint(-127, 128, (8, 32), dtype=torch.int8)
    for bad, message in ((w_q.float(), "w_q must be int8, got torch.float32"),
                         (w_q.flatten(), r"w_q must be 2-D \[N, K\], got shape \(256,\)"),
                         (w_q[:0], r"w_q needs 1 <= N < 2\^31 and 1 <= K <= 131072 \(int32 accumulation\), "
                                   r"got \(0, 32\)"),
                         (w_q[:, :0], r"got \(8, 0\)"),
                         (torch.zeros(1, f8.MAX_K + 1, dtype=torch.int8), r"got \(1, 131073\)"),
                         (torch.full((2, 3), -128, dtype=torch.int8), r"\[-127, 127\] \(symmetric int8\); found -128")):
        native, ref = call_both(ops.int8_pack_weight, reference.int8_pack_weight, bad)
        assert native == ref
        assert native.startswith("int8_pack_weight: w_q") and re.search(message, native), native


_TRITON_SCRIPT = r"""
import os
os.environ["TRITON_INTERPRET"] = "1"
import torch
from compressops import reference
from compressops.formats import int8 as f8
from compressops.triton.int8_linear import int8_linear, int8_weight_only_linear
torch.manual_seed(int(os.environ["SEED"]))
# odd K and N (pack padding), an empty batch, static and dynamic activation scales
for (m, k, n, bias, act) in [(3, 67, 19, True, None), (1, 5, 33, False, None), (40, 130, 70, True, 0.05),
                             (0, 64, 16, True, None)]:
    wq, ws = f8.quantize_weight(torch.randn(n, k))
    p = f8.pack_weight(wq)
    b = torch.randn(n) if bias else None
    x = torch.randn(2, m, k)
    a = torch.tensor(act) if act is not None else None
    y, yr = int8_linear(x, p, ws, b, act_scale=a), reference.int8_linear(x, p, ws, b, act_scale=a)
    assert y.shape == yr.shape == (2, m, n) and torch.equal(y, yr), (m, k, n)
    xb = x.bfloat16()
    y2, y2r = int8_weight_only_linear(xb, p, ws, b), reference.int8_weight_only_linear(xb, p, ws, b)
    assert y2.dtype == torch.bfloat16 and y2.shape == (2, m, n)
    assert torch.allclose(y2.float(), y2r.float(), rtol=1e-2, atol=1e-2)
try:
    int8_linear(torch.randn(2, 66), p, ws, b)
    raise SystemExit("no error for a K mismatch")
except ValueError as e:
    assert "K=66" in str(e), e
print("ok")
"""


def test_triton_kernels_under_interpreter(tmp_path):
    """The CUDA (Triton) kernels, run on the CPU by Triton's interpreter: W8A8 equals the reference bit for bit."""
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
def test_int8_linear_cuda_matches_cpu():
    w_q, w_s, packed, b = make_layer(300, 70)
    x = randn_nonzero(9, 300)
    assert torch.equal(ops.int8_linear(x.cuda(), packed.cuda(), w_s.cuda(), b.cuda()).cpu(),
                       reference.int8_linear(x, packed, w_s, b))
    y = ops.int8_weight_only_linear(x.cuda(), packed.cuda(), w_s.cuda(), b.cuda())
    assert torch.allclose(y.cpu(), reference.int8_weight_only_linear(x, packed, w_s, b), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [2, 3])
def test_int8_linear_row_split_across_threads_bit_exact(threads):
    """From 64 rows a thread, each thread takes one run of whole rows (csrc/cpu/kernels/int8/policy.h):
    row counts on both sides of the switch and uneven last runs give the reference's bits."""
    _, w_s, packed, b = make_layer(200, 70)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for m in (64 * threads - 1, 64 * threads, 64 * threads + 1, 301):
            x = randn_nonzero(m, 200)
            assert torch.equal(ops.int8_linear(x, packed, w_s, b), reference.int8_linear(x, packed, w_s, b)), m
    finally:
        torch.set_num_threads(before)
