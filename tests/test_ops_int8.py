"""int8 ops against compressops.reference, on every CPU ISA level this machine runs."""

import threading

import pytest
import torch

import compressops as co
from compressops import ops, reference
from compressops.formats import int8 as f8

from .helpers import expected_kernel_level, OPCHECK_UTILS, isa_params, randn_nonzero, requires_native

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


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_pack_matches_python_and_roundtrips(shape):
    _, k, n = shape
    w_q = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    packed = ops.int8_pack_weight(w_q)
    assert torch.equal(packed, f8.pack_weight(w_q))
    assert torch.equal(f8.unpack_weight(packed), w_q)
    assert packed.numel() == f8.packed_bytes(n, k)


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


@pytest.mark.parametrize("level", isa_params())
def test_int8_linear_static_scale_bit_exact(level):
    _, w_s, packed, b = make_layer(200, 40)
    x = randn_nonzero(9, 200) * 4  # some values beyond the static range: they must clamp
    act_scale = torch.tensor(2.5 / 127)
    with co.cpu_isa(level):
        y = ops.int8_linear(x, packed, w_s, b, act_scale)
        q, s = ops.int8_quantize_activation(x, act_scale)
    assert torch.equal(y, reference.int8_linear(x, packed, w_s, b, act_scale))
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
        (torch.ops.compressops.int8_linear.default, (x.bfloat16(), packed, w_s, None, torch.tensor(0.03)), {}),
        (torch.ops.compressops.int8_weight_only_linear.default, (x, packed, w_s, b), {}),
    ]


@pytest.mark.parametrize("idx", range(6))
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
    with pytest.raises(err, match="w_packed"):
        lin(x, w_q.view(torch.uint8).flatten(), w_s, b)
    with pytest.raises(err, match="act_scale must be finite and positive"):
        lin(x, packed, w_s, b, torch.tensor(-1.0))
    with pytest.raises(err, match="must be int8"):
        pack(w_q.float())
    with pytest.raises(err, match="2-D"):
        pack(w_q.flatten())
    with pytest.raises(err, match="K <= 131072"):
        pack(torch.zeros(1, 131073, dtype=torch.int8))
    with pytest.raises(err, match=r"\[-127, 127\]"):
        pack(torch.full((2, 3), -128, dtype=torch.int8))


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
    y, yr = int8_linear(x, p, ws, b, a), reference.int8_linear(x, p, ws, b, a)
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
