"""2:4 and CSR sparse ops against compressops.reference, on every CPU ISA level this machine runs."""

import os
import subprocess
import sys

import pytest
import torch

import compressops as co
from compressops import ops, reference
from compressops.formats import csr as fcsr
from compressops.formats import sparse24 as s24

from .helpers import expected_kernel_level, NATIVE, OPCHECK_UTILS, isa_params, randn_nonzero, requires_native

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
    w = randn_nonzero(n, k)
    values, meta = s24.compress(w.to(vdtype))
    return values, meta, (randn_nonzero(n) if bias else None)


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("vdtype", [torch.float32, torch.bfloat16], ids=["v_f32", "v_bf16"])
@pytest.mark.parametrize("xdtype", [torch.float32, torch.bfloat16], ids=["x_f32", "x_bf16"])
def test_sparse24_linear_close_to_reference(level, shape, vdtype, xdtype):
    batch, k, n = shape
    values, meta, b = make24(k, n, vdtype, bias=(k % 2 == 1))
    x = randn_nonzero(*batch, k, dtype=xdtype)
    with co.cpu_isa(level):
        y = ops.sparse24_linear(x, values, meta, k, b)
        ran = torch.ops.compressops._last_kernel_isa("sparse24_linear")
    ref = reference.sparse24_linear(x, values, meta, k, b)
    assert y.dtype == xdtype and y.shape == (*batch, n)
    if x.numel():
        assert ran == expected_kernel_level("sparse24_linear", level)
        assert relerr(y, ref) < (F32_TOL if xdtype == torch.float32 else BF16_TOL)


@requires_native
@pytest.mark.parametrize("level", isa_params())
def test_sparse24_linear_non_contiguous_and_fp16(level):
    values, meta, b = make24(70, 24)
    x = randn_nonzero(140, 9)[:, ::1].t()[:, ::2]  # [9, 70], non-contiguous
    assert not x.is_contiguous()
    with co.cpu_isa(level):
        y = ops.sparse24_linear(x, values, meta, 70, b)
        yh = ops.sparse24_linear(x.half(), values, meta, 70, b)
    assert relerr(y, reference.sparse24_linear(x, values, meta, 70, b)) < F32_TOL
    assert yh.dtype == torch.float16
    assert relerr(yh, reference.sparse24_linear(x.half(), values, meta, 70, b)) < 1e-3


# ------------------------------------------------------------------------------------ 2:4 int8

def make24_int8(k, n, bias=True):
    values, meta, b = make24(k, n, torch.float32, bias)
    q, scale = s24.quantize_values(values)
    return q, meta, scale, b


@requires_native
@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("xdtype", [torch.float32, torch.bfloat16], ids=str)
def test_sparse24_int8_linear_bit_exact(level, shape, xdtype):
    batch, k, n = shape
    q, meta, scale, b = make24_int8(k, n, bias=(n % 2 == 1))
    x = randn_nonzero(*batch, k, dtype=xdtype) * 3
    with co.cpu_isa(level):
        y = ops.sparse24_int8_linear(x, q, meta, scale, k, b)
        ran = torch.ops.compressops._last_kernel_isa("sparse24_int8_linear")
    if x.numel():
        assert ran == expected_kernel_level("sparse24_int8_linear", level)
    assert torch.equal(y, reference.sparse24_int8_linear(x, q, meta, scale, k, b))


@requires_native
@pytest.mark.parametrize("level", isa_params())
def test_sparse24_int8_special_rows(level):
    q, meta, scale, b = make24_int8(64, 20)
    x = randn_nonzero(4, 64)
    x[1] = 0  # zero row -> bias only
    x[2, 5] = float("nan")  # NaN row -> NaN
    with co.cpu_isa(level):
        y = ops.sparse24_int8_linear(x, q, meta, scale, 64, b)
    ref = reference.sparse24_int8_linear(x, q, meta, scale, 64, b)
    assert torch.equal(y.isnan(), ref.isnan()) and y[2].isnan().all()
    assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(ref))


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
    k, n = 70000, 5  # 32-bit columns
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
    values, meta, b = make24(k, n, vdtype, bias=(k % 2 == 1))
    x = randn_nonzero(*batch, k)
    xb = x.bfloat16()
    with co.sparse_route(route):
        y = ops.sparse24_linear(x, values, meta, k, b)
        ran = torch.ops.compressops._last_kernel_isa("sparse24_linear")
        yb = ops.sparse24_linear(xb, values, meta, k, b)
    m = x.numel() // k
    assert (ran == "dense") == (route == "dense" or sparse24_auto_is_dense(m, n, k, int8=False))
    assert relerr(y, reference.sparse24_linear(x, values, meta, k, b)) < F32_TOL
    assert yb.dtype == torch.bfloat16
    assert relerr(yb, reference.sparse24_linear(xb, values, meta, k, b)) < BF16_TOL


@requires_native
@pytest.mark.parametrize("route", ["dense", "auto"])
@pytest.mark.parametrize("shape", ROUTE_SHAPES + [((400,), 300, 37)], ids=str)
def test_sparse24_int8_dense_route_bit_exact(route, shape):
    batch, k, n = shape
    q, meta, scale, b = make24_int8(k, n, bias=(n % 2 == 1))
    x = randn_nonzero(*batch, k) * 3
    x.view(-1, k)[0, 1] = float("nan")  # a NaN row stays NaN, as in the reference
    with co.sparse_route(route):
        y = ops.sparse24_int8_linear(x, q, meta, scale, k, b)
    ran = torch.ops.compressops._last_kernel_isa("sparse24_int8_linear")
    m = x.numel() // k
    assert (ran == "dense") == (route == "dense" or sparse24_auto_is_dense(m, n, k, int8=True))
    ref = reference.sparse24_int8_linear(x, q, meta, scale, k, b)
    assert torch.equal(y.isnan(), ref.isnan())
    assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(ref))


@requires_native
@pytest.mark.parametrize("v0, v1, same, routed", [(100, 100, True, False), (-128, 5, False, False),
                                                  (50, -70, True, True), (-127, 127, False, True)],
                         ids=["coinciding_overflow", "minus_128", "coinciding_fits", "full_range"])
def test_sparse24_int8_dense_route_declines_what_int8_cannot_hold(v0, v1, same, routed):
    # Both kept values of a group at one position add up (the format's rule); the int8 GEMM needs
    # symmetric int8, so a sum outside [-127, 127] or a -128 keeps the op on the 2:4 kernel.
    q, meta, scale, b = make24_int8(66, 20)  # K % 4 == 2: the last group is cut by the padding
    q[3, 0], q[3, 1] = v0, v1
    meta[3, 0] = (meta[3, 0] & 0xF0) | (0b0101 if same else 0b1001)  # group 0: positions 1, 1 or 1, 2
    x = randn_nonzero(300, 66)
    with co.sparse_route("dense"):
        y = ops.sparse24_int8_linear(x, q, meta, scale, 66, b)
    assert (torch.ops.compressops._last_kernel_isa("sparse24_int8_linear") == "dense") == routed
    assert torch.equal(y, reference.sparse24_int8_linear(x, q, meta, scale, 66, b))


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
    k, n = 70000, 5  # 32-bit columns
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
def test_sparse_route_is_process_wide():
    """Documented behaviour: the route is one per process, so another thread sees the forced route."""
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

    t = threading.Thread(target=other)
    t.start()
    with co.sparse_route("dense"):
        entered.set()
        done.wait(10)
    t.join()
    assert seen == ["dense", "dense"]


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
    values, meta, b = make24(130, 40)
    q, _, scale, _ = make24_int8(130, 40)
    packed, vals, _ = make_csr(130, 40, 0.8)
    x = randn_nonzero(17, 130)
    before = [t.clone() for t in (x, values, meta, b, q, scale, packed, vals)]
    old = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append((ops.sparse24_linear(x, values, meta, 130, b), ops.sparse24_int8_linear(x, q, meta, scale, 130),
                         ops.csr_linear(x, packed, vals, b)))
    finally:
        torch.set_num_threads(old)
    for a, c in zip(*outs):
        assert torch.equal(a, c)
    for t0, t1 in zip(before, (x, values, meta, b, q, scale, packed, vals)):
        assert torch.equal(t0, t1)


def _opcheck_samples():
    values, meta, b = make24(67, 19)
    vb, mb, _ = make24(67, 19, torch.bfloat16)
    q, mq, scale, _ = make24_int8(67, 19)
    w = randn_nonzero(19, 67) * (torch.rand(19, 67) > 0.6)
    crow, col, vals = fcsr.compress(w)
    packed = ops.csr_pack(crow, col, 67)
    x = randn_nonzero(3, 67)
    return [
        (torch.ops.compressops.sparse24_linear.default, (x, values, meta, 67, b), {}),
        (torch.ops.compressops.sparse24_linear.default, (x.bfloat16(), vb, mb, 67), {}),
        (torch.ops.compressops.sparse24_int8_linear.default, (x, q, mq, scale, 67, b), {}),
        (torch.ops.compressops.csr_pack.default, (crow, col, 67), {}),
        (torch.ops.compressops.csr_linear.default, (x, packed, vals, b), {}),
        (torch.ops.compressops.csr_linear.default, (x.bfloat16(), packed, vals.bfloat16()), {}),
        (torch.ops.compressops.csr_linear.default, (randn_nonzero(2, 5, 67), packed, vals, b),
         {"out_dtype": torch.bfloat16}),
    ]


@pytest.mark.parametrize("idx", range(7))
def test_opcheck(idx):
    op, args, kwargs = _opcheck_samples()[idx]
    torch.library.opcheck(op, args, kwargs, test_utils=OPCHECK_UTILS)


@pytest.mark.parametrize("use_reference", [False, True], ids=["native", "reference"])
def test_bad_input_errors(use_reference):
    mod = reference if use_reference else ops
    err = (ValueError, RuntimeError)
    values, meta, b = make24(32, 8)
    q, _, scale, _ = make24_int8(32, 8)
    x = randn_nonzero(2, 32)
    with pytest.raises(err, match="x must be float"):
        mod.sparse24_linear(x.int(), values, meta, 32, b)
    with pytest.raises(err, match="K=31"):
        mod.sparse24_linear(x[:, :31], values, meta, 32, b)
    with pytest.raises(err, match="values must"):
        mod.sparse24_linear(x, values[:, :5], meta, 32, b)
    with pytest.raises(err, match="values must"):
        mod.sparse24_linear(x, values.double(), meta, 32, b)
    with pytest.raises(err, match="meta must be uint8"):
        mod.sparse24_linear(x, values, meta.int(), 32, b)
    with pytest.raises(err, match="meta must be uint8"):
        mod.sparse24_linear(x, values, meta[:3], 32, b)
    with pytest.raises(err, match="bias must be"):
        mod.sparse24_linear(x, values, meta, 32, b[:3])
    with pytest.raises(err, match="values must be (torch.)?int8"):
        mod.sparse24_int8_linear(x, values, meta, scale, 32)
    with pytest.raises(err, match="w_scale must be float32"):
        mod.sparse24_int8_linear(x, q, meta, scale[:2], 32)
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
for (m, k, n, bias, dt) in [(3, 37, 19, True, torch.float32), (17, 64, 33, False, torch.bfloat16)]:
    w = torch.randn(n, k)
    x = torch.randn(m, k).to(dt)
    v, mt = s24.compress(w.to(dt))
    b = torch.randn(n) if bias else None
    y = sparse24_linear(x, v, mt, k, b)
    r = reference.sparse24_linear(x, v, mt, k, b)
    assert y.dtype == dt and y.shape == r.shape
    e = float((y.float() - r.float()).norm() / r.float().norm())
    assert e < (1e-5 if dt == torch.float32 else 1e-2), e
from compressops.triton.sparse24_linear import sparse24_int8_linear
for (m, k, n, bias) in [(3, 37, 19, True), (17, 64, 33, False), (0, 8, 4, True)]:
    v, mt = s24.compress(torch.randn(n, k))
    vq, sc = s24.quantize_values(v)
    b = torch.randn(n) if bias else None
    x = torch.randn(2, m, k)
    y, r = sparse24_int8_linear(x, vq, mt, sc, k, b), reference.sparse24_int8_linear(x, vq, mt, sc, k, b)
    assert y.shape == r.shape == (2, m, n) and torch.equal(y, r), (m, k, n)
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
    values, meta, b = make24(300, 70)
    x = randn_nonzero(9, 300)
    y = ops.sparse24_linear(x.cuda(), values.cuda(), meta.cuda(), 300, b.cuda())
    assert relerr(y.cpu(), reference.sparse24_linear(x, values, meta, 300, b)) < F32_TOL


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
    x, b = randn_nonzero(9, 300), randn_nonzero(70)
    y = ops.sparse24_int8_linear(x.cuda(), vq.cuda(), meta.cuda(), sc.cuda(), 300, b.cuda())
    assert torch.equal(y.cpu(), reference.sparse24_int8_linear(x, vq, meta, sc, 300, b))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_csr_linear_cuda_matches_reference():
    w = randn_nonzero(70, 300)
    crow, col, vals = fcsr.compress(w, fcsr.magnitude_mask(w, 0.8))
    packed = ops.csr_pack(crow, col, 300)
    x, b = randn_nonzero(9, 300), randn_nonzero(70)
    y = ops.csr_linear(x.cuda(), packed.cuda(), vals.cuda(), b.cuda())
    assert torch.equal(ops.csr_pack(crow.cuda(), col.cuda(), 300).cpu(), packed)
    assert relerr(y.cpu(), reference.csr_linear(x, packed, vals, b)) < F32_TOL
