"""Property tests: every op of compressops.ops, native (CPU) against compressops.reference, over shapes,
strides, dtypes, bias, special values and ISA levels that hypothesis draws.

Each example runs the native op at the current level and at one other level drawn from every level this
machine runs (emulated ones included), and compares both with the reference:
- bit-exact where the op documents it (every pack op, int8, 2:4 int8, binary), NaN payloads aside;
- else within the bound the op's own tests use: int4 test_ops_int4.close_to_reference, PQ
  test_ops_pq.bound, int8 weight-only test_ops_int8's "twice the reference's own error", and for the
  float32-accumulating half, 2:4 and CSR ops compressops.formats.half.error_bound (any order of the
  K + 1 float32 sums) doubled, since both results lie within it of the exact sum. Those compare
  float32 outputs; every other out_dtype must be the float32 result rounded once.
Special values: zeros of both signs, subnormals, tiny and huge magnitudes (never so huge that a sum
overflows in one order and not another), and NaN/Inf, which each op must map to the same non-finite
pattern as its reference (int8 and int4 define NaN rows; the float ops inherit IEEE: an Inf in x meets
the zeros the sparse kernels skip, so those calls take the dense route, and PQ k=16 rows whose table
cannot be quantized are computed exactly).

Tensor data comes from seeds hypothesis draws plus special values it places, so a failure shrinks and
replays from the printed blob. Example counts: tests/conftest.py's profiles, scaled per op below.
"""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import compressops as co
from compressops import ops, reference
from compressops.formats import binary as fb
from compressops.formats import csr as fcsr
from compressops.formats import half as fh
from compressops.formats import int4 as f4
from compressops.formats import int8 as f8
from compressops.formats import pq as fpq
from compressops.formats import sparse24 as s24
from compressops.formats.checks import FLOAT_DTYPES
from compressops.isa import emulated_isas

from .helpers import requires_native, same_non_finite
from .test_ops_int4 import close_to_reference
from .test_ops_pq import bound as pq_bound

pytestmark = requires_native

CURRENT = co.isa()
OTHER_LEVELS = [lv for lv in co.available_isas() + emulated_isas() if lv != CURRENT] or [CURRENT]

X_SCALES = (1.0, 1e-3, 1e3, 1e-20, 1e20, 1e-40)  # 1e-40: every value a float32 subnormal
W_SCALES = (1.0, 1e-3, 1e3, 1e-20, 1e-40)  # weights stay small enough that no sum overflows
FINITE_SPECIALS = (0.0, -0.0, 1e-45, 1e-40, 1.1754944e-38, 1e30, -1e30, 65504.0)
W_SPECIALS = (0.0, -0.0, 1e-45, 1e-40, 1.1754944e-38, 1e3)
NON_FINITE = (math.inf, -math.inf, math.nan)
TINY = 2.0**-149  # the smallest subnormal: the absolute slack of one float32 operation


def examples(fraction=1.0):
    """settings() running `fraction` of the loaded profile's examples (at least 10), so ops whose
    reference is slow run fewer in every profile instead of being dropped."""
    return settings(max_examples=max(10, int(settings.default.max_examples * fraction)))


# ------------------------------------------------------------------------------------- drawing

def floats(data, shape, dtype=torch.float32, scales=X_SCALES, specials=FINITE_SPECIALS, non_finite=True):
    """Gaussian data at a drawn scale with up to 4 special values placed by hypothesis, in `dtype`.
    Without non_finite, values beyond dtype's range are clamped to it instead of rounding to Inf."""
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    t = torch.randn(shape, generator=g) * data.draw(st.sampled_from(scales), label="scale")
    if t.numel():
        choices = specials + (NON_FINITE if non_finite else ())
        places = st.lists(st.tuples(st.integers(0, t.numel() - 1), st.sampled_from(choices)), max_size=4)
        for i, v in data.draw(places, label="specials"):
            t.view(-1)[i] = v
    if not non_finite:
        big = torch.finfo(dtype).max
        t = t.clamp(-big, big)
    return t.to(dtype)


def ints(data, shape, low, high, dtype):
    """Uniform integers in [low, high) from a drawn seed."""
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    return torch.randint(low, high, shape, generator=g).to(dtype)


def strided(data, t):
    """A tensor holding t's values (or, "expanded", its first row's) with other strides."""
    how = data.draw(st.sampled_from(["contiguous", "transposed", "offset", "step2", "expanded"]), label="layout")
    if how == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if how in ("offset", "step2") and t.dim() >= 1:
        k = t.shape[-1]
        buf = torch.zeros(*t.shape[:-1], 2 * k + 3, dtype=t.dtype)
        view = buf[..., 3:3 + k] if how == "offset" else buf[..., 3::2]
        view.copy_(t)
        return view
    if how == "expanded" and t.dim() >= 2 and t.shape[0] > 0:
        return t[:1].expand_as(t)
    return t


def draw_x(data, k, non_finite=True, scales=X_SCALES, specials=FINITE_SPECIALS):
    """x (..., k): no, one or two leading dims of sizes 0, 1, 2, 3 or 5, any float dtype and layout."""
    batch = data.draw(st.lists(st.sampled_from([0, 1, 2, 3, 5]), max_size=2), label="batch")
    dtype = data.draw(st.sampled_from(FLOAT_DTYPES), label="x dtype")
    return strided(data, floats(data, (*batch, k), dtype, scales, specials, non_finite))


def draw_bias(data, n):
    if not data.draw(st.booleans(), label="bias"):
        return None
    return floats(data, (n,), data.draw(st.sampled_from(FLOAT_DTYPES), label="bias dtype"), W_SCALES)


def draw_out_dtype(data):
    return data.draw(st.sampled_from((None,) + FLOAT_DTYPES), label="out_dtype")


def dims(data, high=40):
    """Small sizes, odd ones and 1 included."""
    return data.draw(st.integers(1, high), label="size")


# ------------------------------------------------------------------------------------- comparing

def levels(data):
    return [CURRENT, data.draw(st.sampled_from(OTHER_LEVELS), label="level")]


def native(level, fn, *args, route=None, **kwargs):
    with co.cpu_isa(level):
        if route is None:
            return fn(*args, **kwargs)
        with co.sparse_route(route):
            return fn(*args, **kwargs)


def outcome(fn, *args, **kwargs):
    """("ok", result) or ("raised", the exception's type, its first line)."""
    try:
        return ("ok", fn(*args, **kwargs))
    except (ValueError, RuntimeError, TypeError, IndexError) as e:
        return ("raised", type(e), str(e).splitlines()[0] if str(e) else "")


def same_outcome(got, want):
    """Both raised the same error, or both returned bit-identical results."""
    assert got[0] == want[0], (got, want)
    if got[0] == "raised":
        assert got[1:] == want[1:]
    else:
        assert_bits(got[1], want[1])


def assert_bits(y, ref):
    """Same dtype, shape and bits (tuples element by element); any NaN equals any NaN."""
    if isinstance(ref, tuple):
        assert isinstance(y, tuple) and len(y) == len(ref)
        for a, b in zip(y, ref):
            assert_bits(a, b)
        return
    assert y.dtype == ref.dtype and y.shape == ref.shape, (y.dtype, ref.dtype, y.shape, ref.shape)
    if y.is_floating_point():
        nan = torch.isnan(y)
        assert torch.equal(nan, torch.isnan(ref)), "NaN pattern differs"
        y, ref = y.masked_fill(nan, 0), ref.masked_fill(nan, 0)
        ints_of = {8: torch.int64, 4: torch.int32, 2: torch.int16}[y.element_size()]
        y, ref = y.contiguous().view(ints_of), ref.contiguous().view(ints_of)
    assert torch.equal(y, ref), f"differs at {(y != ref).nonzero()[:5].tolist()}"


finite_part = same_non_finite  # same dtype, shape and non-finite pattern; the mask of finite outputs


def assert_within(y, ref, bound):
    """|y - ref| <= bound on the finite outputs (the non-finite ones must match)."""
    fin = finite_part(y, ref)
    err = (y.double() - ref.double()).abs()
    assert (err[fin] <= bound.double()[fin]).all(), f"max excess {(err - bound.double())[fin].max()}"


def float_sum_bound(x, w_abs, bias):
    """Twice half.error_bound (from the exact sum, both results are within it), with one subnormal
    step per operation of slack, for y = x @ W.T + bias with |W| = w_abs [N, K]."""
    k = x.shape[-1]
    b = 2 * fh.error_bound(x, w_abs, bias)
    return b + 2 * (k + 2) * TINY


def check_linear(data, op, ref_op, x, args, close=None, route=None, **kwargs):
    """Run op at two levels against ref_op. close None: bit-exact at the drawn out_dtype; else
    close(y32, ref32) asserts on the float32 results and the out_dtype result must be the float32 one
    rounded once. x and args must come back unmodified."""
    out_dtype = draw_out_dtype(data)
    tensors = [t for t in (x, *args) if isinstance(t, torch.Tensor)]
    copies = [t.clone() for t in tensors]
    ref = ref_op(x, *args, out_dtype=out_dtype if close is None else torch.float32, **kwargs)
    for level in levels(data):
        if close is None:
            assert_bits(native(level, op, x, *args, out_dtype=out_dtype, route=route, **kwargs), ref)
        else:
            y32 = native(level, op, x, *args, out_dtype=torch.float32, route=route, **kwargs)
            close(y32, ref)
            y = native(level, op, x, *args, out_dtype=out_dtype, route=route, **kwargs)
            assert_bits(y, y32.to(out_dtype or x.dtype))
    for t, c in zip(tensors, copies):
        assert_bits(t, c)


def within(bound_fn):
    """close() for check_linear: |y - ref| <= bound_fn(ref) on the finite outputs."""
    return lambda y, ref: assert_within(y, ref, bound_fn(ref))


def draw_route(data):
    return data.draw(st.sampled_from(["auto", "kernel", "dense"]), label="sparse route")


# ----------------------------------------------------------------------------------------- int8

def draw_w_q(data, n, k):
    w_q = ints(data, (n, k), -127, 128, torch.int8)
    return strided(data, w_q)


@given(st.data())
def test_int8_pack_weight(data):
    n, k = dims(data), dims(data)
    w_q = ints(data, (n, k), -128 if data.draw(st.booleans(), label="allow -128") else -127, 128, torch.int8)
    w_q = strided(data, w_q)
    want = outcome(reference.int8_pack_weight, w_q)
    for level in levels(data):
        same_outcome(outcome(native, level, ops.int8_pack_weight, w_q), want)


@given(st.data())
def test_int8_quantize_activation(data):
    x = draw_x(data, dims(data))
    act_scale = None
    if data.draw(st.booleans(), label="static"):
        act_scale = torch.tensor(data.draw(st.sampled_from([2.5 / 127, 1.0, 1e-3, 1e-30, 1e30, 1e-40])))
    # 1e-40 is below 2^-126, which both refuse (its reciprocal overflows): the same error from both
    want = outcome(reference.int8_quantize_activation, x, act_scale)
    for level in levels(data):
        same_outcome(outcome(native, level, ops.int8_quantize_activation, x, act_scale), want)


def int8_layer(data, n, k):
    w_scale = floats(data, (n,), scales=W_SCALES, specials=W_SPECIALS, non_finite=False).abs()
    return ops.int8_pack_weight(draw_w_q(data, n, k)), w_scale


@given(st.data())
def test_int8_linear(data):
    n, k = dims(data), dims(data)
    packed, w_scale = int8_layer(data, n, k)
    act_scale = torch.tensor(2.5 / 127) if data.draw(st.booleans(), label="static") else None
    x = draw_x(data, k)
    check_linear(data, ops.int8_linear, reference.int8_linear, x, (packed, w_scale, draw_bias(data, n)),
                 act_scale=act_scale)


@examples(0.5)  # as test_csr_linear
@given(st.data())
def test_int8_weight_only_linear(data):
    n, k = dims(data), dims(data)
    packed, w_scale = int8_layer(data, n, k)
    x, b = draw_x(data, k), draw_bias(data, n)

    exact = (x.double() @ f8.unpack_weight(packed).double().t()) * w_scale.double()
    exact = exact + (b.double() if b is not None else 0)

    def close(y, ref):
        # test_ops_int8.test_weight_only_close_to_reference: no worse than twice the reference's own
        # error against float64, plus 1e-4 of the largest output
        fin = finite_part(y, ref)
        if fin.any():
            err, ref_err = (y.double() - exact)[fin].abs().max(), (ref.double() - exact)[fin].abs().max()
            assert err <= 2 * ref_err + 1e-4 * exact[fin].abs().max()

    check_linear(data, ops.int8_weight_only_linear, reference.int8_weight_only_linear, x, (packed, w_scale, b),
                 close)


# ----------------------------------------------------------------------------------------- int4

def int4_canonical(data, n, k, group_size, bad_zeros=False):
    kp = f4.padded_k(k, group_size)
    g = kp // group_size
    qweight = strided(data, ints(data, (n, kp // 2), 0, 256, torch.uint8))
    scales = floats(data, (n, g), scales=W_SCALES, specials=W_SPECIALS, non_finite=False).abs()
    zeros = None
    if data.draw(st.booleans(), label="asymmetric"):
        zeros = ints(data, (n, g), 0, 20 if bad_zeros else 16, torch.uint8)
    return qweight, scales, zeros


@given(st.data())
def test_int4_pack_weight(data):
    gs = data.draw(st.sampled_from([32, 64, 128, 256]), label="group_size")
    n, k = dims(data), dims(data, 300)
    qweight, scales, zeros = int4_canonical(data, n, k, gs, bad_zeros=True)
    if data.draw(st.booleans(), label="any scale bits"):
        scales = floats(data, scales.shape)
    want = outcome(reference.int4_pack_weight, qweight, scales, zeros, k, gs)
    for level in levels(data):
        same_outcome(outcome(native, level, ops.int4_pack_weight, qweight, scales, zeros, k, gs), want)


@examples(0.5)  # the reference loops over groups in float64: ~3x the time of the others
@given(st.data())
def test_int4_linear(data):
    gs = data.draw(st.sampled_from([32, 64, 128, 256]), label="group_size")
    n, k = dims(data), dims(data, 300)
    packed = ops.int4_pack_weight(*int4_canonical(data, n, k, gs), k, gs)
    x = draw_x(data, k)

    def close(y, ref):
        fin = finite_part(y, ref)
        assert not fin.any() or close_to_reference(y[fin], ref[fin])

    check_linear(data, ops.int4_linear, reference.int4_linear, x, (packed, draw_bias(data, n)), close)


# ------------------------------------------------------------------------------------------- 2:4

def s24_canonical(data, n, k, vdtype):
    half = s24.padded_k(k) // 2
    if vdtype == torch.int8:
        values = ints(data, (n, half), -127, 128, torch.int8)
    else:
        values = floats(data, (n, half), vdtype, W_SCALES, W_SPECIALS, non_finite=False)
    meta = ints(data, (n, s24.meta_bytes(k)), 0, 256, torch.uint8)  # any bits are valid (formats/sparse24.py)
    return strided(data, values), strided(data, meta)


@given(st.data())
def test_sparse24_pack(data):
    n, k = dims(data), dims(data)
    vdtype = data.draw(st.sampled_from([torch.float32, torch.bfloat16, torch.int8]), label="values dtype")
    values, meta = s24_canonical(data, n, k, vdtype)
    if vdtype != torch.int8 and data.draw(st.booleans(), label="any value bits"):
        values = floats(data, values.shape, vdtype)
    want = outcome(reference.sparse24_pack, values, meta, k)
    for level in levels(data):
        same_outcome(outcome(native, level, ops.sparse24_pack, values, meta, k), want)


@given(st.data())
def test_sparse24_linear(data):
    n, k = dims(data), dims(data)
    values, meta = s24_canonical(data, n, k, data.draw(st.sampled_from([torch.float32, torch.bfloat16])))
    packed = ops.sparse24_pack(values, meta, k)
    x, b = draw_x(data, k), draw_bias(data, n)
    w_abs = s24.decompress(values.float().abs(), meta, k)
    check_linear(data, ops.sparse24_linear, reference.sparse24_linear, x, (packed, b),
                 within(lambda ref: float_sum_bound(x, w_abs, b)), route=draw_route(data))


@given(st.data())
def test_sparse24_int8_linear(data):
    n, k = dims(data), dims(data)
    packed = ops.sparse24_pack(*s24_canonical(data, n, k, torch.int8), k)
    w_scale = floats(data, (n,), scales=W_SCALES, specials=W_SPECIALS, non_finite=False).abs()
    x = draw_x(data, k)
    check_linear(data, ops.sparse24_int8_linear, reference.sparse24_int8_linear, x,
                 (packed, w_scale, draw_bias(data, n)), route=draw_route(data))


# ------------------------------------------------------------------------------------------- CSR

def csr_canonical(data, n, k, bad_columns=False):
    """(crow, col): a drawn density, any column order within a row, and (bad_columns) maybe a column
    out of range."""
    density = data.draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]), label="density")
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    mask = torch.rand(n, k, generator=g) < density
    rows, cols = mask.nonzero(as_tuple=True)
    counts = mask.sum(1)
    crow = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    perm = torch.argsort(rows * (k + 1) + torch.randperm(cols.numel(), generator=g) % (k + 1))
    col = cols[perm].clone()
    if bad_columns and col.numel() and data.draw(st.booleans(), label="column out of range"):
        col[data.draw(st.integers(0, col.numel() - 1))] = k
    crow = crow.to(data.draw(st.sampled_from([torch.int32, torch.int64]), label="crow dtype"))
    col = col.to(data.draw(st.sampled_from([torch.int32, torch.uint16]), label="col dtype"))
    return crow, col


@given(st.data())
def test_csr_pack(data):
    n, k = dims(data), dims(data)
    crow, col = csr_canonical(data, n, k, bad_columns=True)
    want = outcome(reference.csr_pack, crow, col, k)
    for level in levels(data):
        same_outcome(outcome(native, level, ops.csr_pack, crow, col, k), want)


@examples(0.5)  # the bound builds the dense |W| and a float64 product per example
@given(st.data())
def test_csr_linear(data):
    n, k = dims(data), dims(data)
    crow, col = csr_canonical(data, n, k)
    packed = ops.csr_pack(crow, col, k)
    values = floats(data, (col.numel(),), data.draw(st.sampled_from([torch.float32, torch.bfloat16])),
                    W_SCALES, W_SPECIALS, non_finite=False)
    x, b = draw_x(data, k), draw_bias(data, n)
    w_abs = fcsr.to_dense(crow, col, values.float().abs(), k)
    check_linear(data, ops.csr_linear, reference.csr_linear, x, (packed, values, b),
                 within(lambda ref: float_sum_bound(x, w_abs, b)), route=draw_route(data))


# -------------------------------------------------------------------------------------------- PQ

def pq_canonical(data, n, k_in, d, k):
    s = fpq.num_subspaces(k_in, d)
    codes = ints(data, fpq.codes_shape(n, s, k), 0, 256, torch.uint8)
    return strided(data, codes), floats(data, (s, k, d), scales=W_SCALES, specials=W_SPECIALS, non_finite=False)


def pq_shape(data):
    d = data.draw(st.sampled_from(fpq.SUBVECTOR_DIMS), label="d")
    k = data.draw(st.sampled_from(fpq.NUM_CENTROIDS), label="k")
    return dims(data), dims(data), d, k


@given(st.data())
def test_pq_pack(data):
    n, k_in, d, k = pq_shape(data)
    codes, codebooks = pq_canonical(data, n, k_in, d, k)
    if data.draw(st.booleans(), label="any codebook bits"):
        codebooks = floats(data, codebooks.shape)
    want = outcome(reference.pq_pack, codes, codebooks, k_in)
    for level in levels(data):
        same_outcome(outcome(native, level, ops.pq_pack, codes, codebooks, k_in), want)


@examples(0.3)  # float64 tables in the reference and again in the bound: the slowest op here
@given(st.data())
def test_pq_linear(data):
    n, k_in, d, k = pq_shape(data)
    codes, codebooks = pq_canonical(data, n, k_in, d, k)
    packed = ops.pq_pack(codes, codebooks, k_in)
    x, b = draw_x(data, k_in), draw_bias(data, n)

    def bound(ref):  # test_ops_pq.bound, plus the bias's own float32 rounding
        if not x.numel():
            return torch.zeros_like(ref)
        xs = torch.where(torch.isfinite(x), x, torch.zeros_like(x))  # the bound of the finite rows
        extra = 2**-23 * (b.double().abs() if b is not None else 0)
        return (pq_bound(xs, codebooks, codes, k_in, k).double() + extra).reshape(ref.shape)

    check_linear(data, ops.pq_linear, reference.pq_linear, x, (packed, b), within(bound))


# ------------------------------------------------------------------------------------------ half

def half_weight(data, n, k):
    return strided(data, floats(data, (n, k), torch.float16, W_SCALES, W_SPECIALS, non_finite=False))


@given(st.data())
def test_half_pack_weight(data):
    n, k = dims(data), dims(data)
    w = strided(data, floats(data, (n, k), torch.float16))
    want = outcome(reference.half_pack_weight, w)
    for level in levels(data):
        same_outcome(outcome(native, level, ops.half_pack_weight, w), want)


@examples(0.5)  # as test_csr_linear
@given(st.data())
def test_half_linear(data):
    n, k = dims(data), dims(data)
    w = half_weight(data, n, k)
    packed = ops.half_pack_weight(w)
    x, b = draw_x(data, k), draw_bias(data, n)
    check_linear(data, ops.half_linear, reference.half_linear, x, (packed, b),
                 within(lambda ref: float_sum_bound(x, w.abs(), b)))


# ---------------------------------------------------------------------------------------- binary

CHANNELS = [1, 3, 63, 64, 65, 130]  # within, at and across 64-bit word boundaries


def draw_channels(data):
    return data.draw(st.sampled_from(CHANNELS), label="channels")


def weight_bits(data, shape, c, bad_pad=False):
    """Random sign bits int64 [..., ceil(c/64)], channel padding bits 0 unless bad_pad draws otherwise."""
    bits = ints(data, (*shape, fb.words(c)), -2**63, 2**63 - 1, torch.int64)
    if c % 64:
        keep = (1 << (c % 64)) - 1
        if not (bad_pad and data.draw(st.booleans(), label="pad bits set")):
            bits[..., -1] &= keep
    return bits


def binary_x(data, n, c, h, w):
    """int64 [n, h, w, ceil(c/64)] activation bits from a drawn float NCHW x."""
    x = floats(data, (n, c, h, w), data.draw(st.sampled_from(FLOAT_DTYPES), label="x dtype"))
    return reference.binary_pack_activation(x)


def alpha_bias(data, oc):
    alpha = floats(data, (oc,), scales=W_SCALES + (1e20,))
    return alpha, draw_bias(data, oc)


@given(st.data())
def test_binary_pack_activation(data):
    c = draw_channels(data)
    rank = data.draw(st.integers(1, 4), label="rank")
    lead = [data.draw(st.sampled_from([0, 1, 2, 3])) for _ in range(rank - 1)]
    shape = (lead[0], c, *lead[1:]) if rank == 4 else (*lead, c)
    x = floats(data, shape, data.draw(st.sampled_from(FLOAT_DTYPES), label="x dtype"))
    if rank == 4 and data.draw(st.booleans(), label="channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    else:
        x = strided(data, x)
    ref = reference.binary_pack_activation(x)
    for level in levels(data):
        assert_bits(native(level, ops.binary_pack_activation, x), ref)


@given(st.data())
def test_binary_pack_weight(data):
    c = draw_channels(data)
    conv = data.draw(st.booleans(), label="conv")
    shape = (dims(data, 9), dims(data, 3), dims(data, 3)) if conv else (dims(data, 70),)
    bits = strided(data, weight_bits(data, shape, c, bad_pad=True))
    want = outcome(reference.binary_pack_weight, bits, c)
    for level in levels(data):
        same_outcome(outcome(native, level, ops.binary_pack_weight, bits, c), want)


def conv_case(data):
    c, oc = draw_channels(data), dims(data, 70)
    kh, kw = dims(data, 3), dims(data, 3)
    n, h, w = data.draw(st.integers(0, 2)), dims(data, 6), dims(data, 6)
    stride = (data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2)))
    padding = (data.draw(st.integers(0, 2)), data.draw(st.integers(0, 2)))
    w_packed = ops.binary_pack_weight(weight_bits(data, (oc, kh, kw), c), c)
    return binary_x(data, n, c, h, w), w_packed, *alpha_bias(data, oc), stride, padding


def clamps(data):
    bounds = st.one_of(st.none(), st.sampled_from([-1.0, 0.0, 0.5, 3.0, -1e30]))
    return {"clamp_min": data.draw(bounds, label="clamp_min"), "clamp_max": data.draw(bounds, label="clamp_max")}


@examples(0.5)  # a conv per example, float64 in the reference
@given(st.data())
def test_binary_conv2d(data):
    args = conv_case(data)
    kwargs = clamps(data)
    want = outcome(reference.binary_conv2d, *args, **kwargs)
    for level in levels(data):
        same_outcome(outcome(native, level, ops.binary_conv2d, *args, **kwargs), want)


@examples(0.5)  # as test_binary_conv2d
@given(st.data())
def test_binary_conv2d_packed(data):
    args = conv_case(data)
    want = outcome(reference.binary_conv2d_packed, *args)
    for level in levels(data):
        same_outcome(outcome(native, level, ops.binary_conv2d_packed, *args), want)


@given(st.data())
def test_binary_linear(data):
    c, n = draw_channels(data), dims(data, 70)
    batch = data.draw(st.lists(st.sampled_from([0, 1, 2, 3, 5]), max_size=2), label="batch")
    x = floats(data, (*batch, c), data.draw(st.sampled_from(FLOAT_DTYPES), label="x dtype"))
    x_packed = strided(data, reference.binary_pack_activation(x))
    w_packed = ops.binary_pack_weight(weight_bits(data, (n,), c), c)
    alpha, b = alpha_bias(data, n)
    check_linear(data, ops.binary_linear, reference.binary_linear, x_packed, (w_packed, alpha, b), **clamps(data))


# ------------------------------------------------------------------------------- non-finite x

def _sparse24_layer(k, n):
    values, meta = s24.compress(torch.randn(n, k))
    return (ops.sparse24_pack(values, meta, k),)


def _csr_layer(k, n):
    w = torch.randn(n, k) * (torch.rand(n, k) < 0.5)
    crow, col, values = fcsr.compress(w)
    return ops.csr_pack(crow, col, k), values


def _pq16_layer(k, n):
    s = fpq.num_subspaces(k, 4)
    codes = torch.randint(0, 256, fpq.codes_shape(n, s, 16), dtype=torch.uint8)
    return (ops.pq_pack(codes, torch.randn(s, 16, 4), k),)


@pytest.mark.parametrize("op", ["sparse24_linear", "csr_linear", "pq_linear"])
def test_non_finite_x_pattern(op):
    """An Inf in x gives the reference's non-finite pattern: NaN where it meets a zero weight (the
    sparse kernels skip those zeros, so such a call takes the dense route; PQ k=16 computes a row
    whose table holds Inf exactly instead of quantizing it)."""
    layer = {"sparse24_linear": _sparse24_layer, "csr_linear": _csr_layer, "pq_linear": _pq16_layer}[op](12, 8)
    x = torch.randn(2, 12)
    x[0, 3] = math.inf
    ref = getattr(reference, op)(x, *layer)
    with co.sparse_route("kernel"):
        finite_part(getattr(ops, op)(x, *layer), ref)


def test_int4_tiny_group_amax():
    """A group of subnormal activations (127 / amax overflows float32) quantizes as zero in the kernel and
    the reference alike (formats/int4.py)."""
    qweight, scales = torch.randint(0, 256, (3, 16), dtype=torch.uint8), torch.rand(3, 1) + 0.5
    packed = ops.int4_pack_weight(qweight, scales, None, 5, 32)
    x = torch.tensor([[1e-40, -3e-40, 0.0, 2e-41, 1e-45]])
    finite_part(ops.int4_linear(x, packed), reference.int4_linear(x, packed))


# ------------------------------------------------------------------------------------ every op

# ------------------------------------------------------------------------------------ embedding

def draw_indices(data, v):
    """int32/int64 indices of no, one or two dims (sizes 0-5) in [0, v), sometimes one out of range."""
    shape = data.draw(st.lists(st.sampled_from([0, 1, 2, 3, 5]), max_size=2), label="index shape")
    idx = ints(data, shape, 0, v, data.draw(st.sampled_from([torch.int32, torch.int64]), label="index dtype"))
    if idx.numel() and data.draw(st.booleans(), label="bad index"):
        at = data.draw(st.integers(0, idx.numel() - 1), label="at")
        idx.view(-1)[at] = data.draw(st.sampled_from([v, v + 7, -1, -v - 1]), label="bad value")
    return strided(data, idx)


def check_gather(data, op, ref_op, *args):
    out_dtype = draw_out_dtype(data)
    want = outcome(ref_op, *args, out_dtype=out_dtype)
    for level in levels(data):
        same_outcome(outcome(native, level, op, *args, out_dtype=out_dtype), want)


@examples(0.5)  # a gather has few paths: half the examples cover them
@given(st.data())
def test_int8_embedding(data):
    v, d = dims(data), dims(data)
    scale = floats(data, (v,), scales=W_SCALES, specials=W_SPECIALS).abs()
    check_gather(data, ops.int8_embedding, reference.int8_embedding, draw_indices(data, v), draw_w_q(data, v, d),
                 scale)


@examples(0.5)  # a gather has few paths: half the examples cover them
@given(st.data())
def test_int8_embedding_packed(data):
    v, d = dims(data), dims(data)
    scale = floats(data, (v,), scales=W_SCALES, specials=W_SPECIALS).abs()
    packed = ops.int8_pack_weight(draw_w_q(data, v, d))
    check_gather(data, ops.int8_embedding_packed, reference.int8_embedding_packed, draw_indices(data, v), packed,
                 scale, d)


@examples(0.5)  # a gather has few paths: half the examples cover them
@given(st.data())
def test_int4_embedding(data):
    v, d = dims(data), dims(data, 80)
    group = data.draw(st.sampled_from([32, 64]), label="group_size")
    g = f4.padded_k(d, group) // group
    qweight = strided(data, ints(data, (v, g * group // 2), 0, 256, torch.uint8))
    scales = floats(data, (v, g), scales=W_SCALES, specials=W_SPECIALS)
    zeros = ints(data, (v, g), 0, 16, torch.uint8) if data.draw(st.booleans(), label="asymmetric") else None
    check_gather(data, ops.int4_embedding, reference.int4_embedding, draw_indices(data, v), qweight, scales, zeros, d)


@examples(0.5)  # one loop with few branches: half the examples cover it
@given(st.data())
def test_kmeans_assign(data):
    # Integer coordinates keep every distance and sum exact, so native and reference must agree bit for
    # bit, ties (the lower index wins) included; near-ties of real data are tests/test_ops_kmeans_assign.py's.
    s, d, n, k = dims(data, 5), dims(data, 8), data.draw(st.integers(0, 40), label="points"), dims(data, 20)
    x_planar = strided(data, ints(data, (s, d, n), -8, 9, torch.float32))
    centroids = strided(data, ints(data, (s, k, d), -8, 9, torch.float32))
    want = outcome(reference.kmeans_assign, x_planar, centroids)
    for level in levels(data):
        same_outcome(outcome(native, level, ops.kmeans_assign, x_planar, centroids), want)


PROPERTY_TESTS = {name[len("test_"):] for name in dir() if name.startswith("test_")}


def test_every_op_has_a_property_test():
    """A new op in compressops.ops gets a property test here, or this fails."""
    op_names = [n for n in ops.__all__ if hasattr(torch.ops.compressops, n)]
    assert len(op_names) >= 20 and set(op_names) <= PROPERTY_TESTS, set(op_names) - PROPERTY_TESTS
