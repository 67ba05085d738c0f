"""int4 ops against compressops.reference, on every CPU ISA level this machine runs."""

import threading

import pytest
import torch

import compressops as co
from compressops import ops, reference
from compressops.formats import int4 as f4

from .helpers import expected_kernel_level, OPCHECK_UTILS, isa_params, randn_nonzero, requires_native

SHAPES = [  # (batch shape, K, N, group_size, symmetric): odd K (not a multiple of the group), odd N
    ((1,), 1, 1, 32, False),
    ((1,), 256, 16, 128, False),
    ((3,), 67, 33, 32, True),
    ((2, 5), 300, 70, 64, False),
    ((8,), 1000, 129, 256, True),
    ((4, 2, 3), 129, 48, 128, False),
    ((65,), 512, 75, 64, False),
]

# int4 has kernels for scalar and avx2 only; every higher level runs avx2.


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
    assert packed.numel() == f4.packed_bytes(n, k, gs)
    c2, s2, zs2, h = f4.unpack_weight(packed)
    assert torch.equal(c2, codes) and torch.equal(s2, s)
    assert h["n"] == n and h["k"] == k and h["group_size"] == gs and h["symmetric"] == sym


@pytest.mark.parametrize("level", isa_params())
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_int4_linear_matches_reference(level, shape, bias, dtype):
    batch, k, n, gs, sym = shape
    w, canon, packed, b = make_layer(k, n, gs, sym, bias)
    x = randn_nonzero(*batch, k, dtype=dtype)
    with co.cpu_isa(level):
        y = ops.int4_linear(x, packed, n, b)
        ran = torch.ops.compressops._last_kernel_isa("int4_linear")
    assert ran == expected_kernel_level("int4_linear", level)
    y_ref = reference.int4_linear(x, packed, n, b)
    assert y.dtype == dtype and y.shape == (*batch, n)
    assert close_to_reference(y, y_ref)
    # W4A8 vs the fp32 product with the dequantized weight: per-group int8 activations cost ~0.5-1%
    wd = f4.dequantize(*canon, k, gs)
    y_fp = x.double() @ wd.double().t() + (b.double() if b is not None else 0)
    if k >= 64 and dtype == torch.float32:
        assert rel_err(y_ref, y_fp) < 0.02


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
        y = ops.int4_linear(x, packed, n)
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
        y = ops.int4_linear(x, packed, 20, b)
    y_ref = reference.int4_linear(x, packed, 20, b)
    assert torch.equal(y[0], b)
    assert torch.isnan(y[1]).all() and torch.isnan(y[2]).all()
    assert torch.isnan(y_ref[1]).all() and torch.isnan(y_ref[2]).all()
    assert torch.isfinite(y[3]).all() and close_to_reference(y[3], y_ref[3])


def test_non_contiguous_empty_and_out_dtype():
    _, _, packed, b = make_layer(96, 24, 32)
    x = randn_nonzero(96, 10).t()
    assert not x.is_contiguous()
    assert close_to_reference(ops.int4_linear(x, packed, 24, b), reference.int4_linear(x.contiguous(), packed, 24, b))
    assert ops.int4_linear(torch.empty(0, 3, 96), packed, 24, b).shape == (0, 3, 24)
    y16 = ops.int4_linear(x, packed, 24, b, out_dtype=torch.float16)
    assert y16.dtype == torch.float16
    xh = x.half()
    yh = ops.int4_linear(xh, packed, 24, b)
    assert yh.dtype == torch.float16
    assert rel_err(yh, reference.int4_linear(xh, packed, 24, b)) < 1e-3


def test_inputs_not_modified():
    _, (qw, s, z), packed, b = make_layer(64, 32, 32)
    x = randn_nonzero(5, 64)
    tensors = (x, packed, b, qw, s, z)
    copies = [t.clone() for t in tensors]
    ops.int4_linear(x, packed, 32, b)
    ops.int4_pack_weight(qw, s, z, 64, 32)
    for before, after in zip(copies, tensors):
        assert torch.equal(before, after)


@requires_native
def test_thread_count_and_concurrent_calls_agree():
    _, _, packed, b = make_layer(512, 300, 128)
    x = randn_nonzero(37, 512)
    expected = ops.int4_linear(x, packed, 300, b)
    old = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            assert torch.equal(ops.int4_linear(x, packed, 300, b), expected)
    finally:
        torch.set_num_threads(old)
    results, errors = [None] * 4, []

    def work(i):
        try:
            results[i] = ops.int4_linear(x, packed, 300, b)
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
        (torch.ops.compressops.int4_linear.default, (x, packed, 19, b), {}),
        (torch.ops.compressops.int4_linear.default, (x.bfloat16(), packed, 19, None), {"out_dtype": torch.float32}),
    ]


@pytest.mark.parametrize("idx", range(4))
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
        lin(x.to(torch.int32), packed, 8, b)
    with pytest.raises(err, match="K=63"):
        lin(x[:, :63], packed, 8, b)
    with pytest.raises(err, match="out_features=7"):
        lin(x, packed, 7, b)
    with pytest.raises(err, match="bias must be"):
        lin(x, packed, 8, b[:3])
    with pytest.raises(err, match="w_packed"):
        lin(x, qw.flatten(), 8, b)
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
# (67, 19, 32) and (67, 19, 128) have the same pack size: the header decides
for (m, k, n, gs, sym, bias) in [(3, 67, 19, 32, False, True), (2, 67, 19, 128, False, False),
                                 (5, 130, 40, 64, True, True)]:
    w = torch.randn(n, k)
    qw, s, z = f4.quantize_weight(w, gs, sym)
    p = f4.pack_weight(qw, s, z, k, gs)
    b = torch.randn(n) if bias else None
    x = torch.randn(2, m, k)
    y = int4_linear(x, p, n, b)
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
    y_cpu = ops.int4_linear(x, packed, 70, b)
    y = ops.int4_linear(x.cuda(), packed.cuda(), 70, b.cuda())
    assert y.is_cuda and rel_err(y.cpu(), y_cpu) < 0.02
