"""Gradients through the linear compute ops and the compressed layers (issue 18): x and bias get
grad_out @ W and grad_out's column sums, W the layer's dense (dequantized) weight; the ops that
quantize x use the straight-through estimator; the compressed weight itself is frozen."""

import io
import warnings
from typing import NamedTuple

import pytest
import torch
from torch import nn

import compressops as co
from compressops import ops
from compressops.formats import csr as fcsr
from compressops.formats import int4 as f4
from compressops.formats import int8 as f8
from compressops.formats import pq as fpq
from compressops.formats import sparse24 as s24

from .families import EXAMPLES, convert_example, tiny_input
from .helpers import grad_leaf, randn_nonzero

K, N = 67, 19  # odd K: not a multiple of any block, group or subvector size
GRID = 1 / 32  # a power of two: a static act_scale whose grid float32 holds exactly


class Case(NamedTuple):
    op: str
    args: tuple  # the op's tensors between x and bias (the pack, then the family tensors)
    kwargs: dict
    weight: torch.Tensor  # the dense float32 [N, K] weight, from the canonical tensors
    linear: bool  # the forward is linear in x (float sums), so finite differences check the gradient

    def __call__(self, x, bias=None, out_dtype=None):
        return getattr(torch.ops.compressops, self.op)(x, *self.args, bias, out_dtype, **self.kwargs)


def _int8(w):
    w_q, w_s = f8.quantize_weight(w)
    return (ops.int8_pack_weight(w_q), w_s), w_q.float() * w_s[:, None]


def _sparse24(w, int8=False):
    values, meta = s24.compress(w)
    if not int8:
        return (ops.sparse24_pack(values, meta, K),), s24.decompress(values, meta, K)
    q, scale = s24.quantize_values(values)
    return (ops.sparse24_pack(q, meta, K), scale), s24.decompress(q, meta, K) * scale[:, None]


def _int4(w):
    qw, s, z = f4.quantize_weight(w, 32, False)
    return (ops.int4_pack_weight(qw, s, z, K, 32),), f4.dequantize(qw, s, z, K, 32)


def _csr(w):
    crow, col, vals = fcsr.compress(w, fcsr.magnitude_mask(w, 0.6))
    return (ops.csr_pack(crow, col, K), vals), fcsr.to_dense(crow, col, vals, K)


def _pq(w, k):
    s = fpq.num_subspaces(K, 4)
    codebooks, codes = randn_nonzero(s, k, 4), torch.randint(0, k, (N, s), dtype=torch.uint8)
    canon = fpq.pack_nibbles(codes) if k == 16 else codes
    return (ops.pq_pack(canon, codebooks, K),), fpq.dequantize(canon, codebooks, K)


def _half(w):
    return (ops.half_pack_weight(w.half()),), w.half().float()


# name -> (op, make(w) -> (args, dense weight), kwargs, linear in x)
_CASES = {
    "int8_linear": ("int8_linear", _int8, {}, False),
    "int8_linear_static": ("int8_linear", _int8, {"act_scale": torch.tensor(GRID)}, False),
    "int8_weight_only_linear": ("int8_weight_only_linear", _int8, {}, True),
    "int4_linear": ("int4_linear", _int4, {}, False),
    "sparse24_linear": ("sparse24_linear", _sparse24, {}, True),
    "sparse24_int8_linear": ("sparse24_int8_linear", lambda w: _sparse24(w, int8=True), {}, False),
    "csr_linear": ("csr_linear", _csr, {}, True),
    "pq_linear": ("pq_linear", lambda w: _pq(w, 256), {}, True),
    "pq_linear_k16": ("pq_linear", lambda w: _pq(w, 16), {}, False),  # the CPU kernel rounds its tables to uint8
    "half_linear": ("half_linear", _half, {}, True),
}


def make_case(name: str) -> Case:
    op, make, kwargs, linear = _CASES[name]
    args, weight = make(randn_nonzero(N, K))
    return Case(op, args, kwargs, weight, linear)


def leaf(*shape, dtype=torch.float32):
    return grad_leaf(randn_nonzero(*shape, dtype=dtype))


@pytest.mark.parametrize("name", sorted(_CASES))
def test_input_and_bias_grad_are_those_of_the_dense_weight(name):
    case = make_case(name)
    x, b, r = leaf(3, K), leaf(N), torch.randn(3, N)
    case(x, b).backward(r)
    x_ref, b_ref = grad_leaf(x), grad_leaf(b)
    nn.functional.linear(x_ref, case.weight, b_ref).backward(r)
    # int4: the kernels' weight is code * s - (z * s as the pack rounded it), an ulp from (q - z) * s
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.grad, b_ref.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in sorted(_CASES) if _CASES[n][3]])
def test_gradcheck_input_and_bias(name):
    case = make_case(name)
    # float32 (the ops refuse float64): the function is linear in x and bias, so a large eps keeps the
    # central difference exact up to the output's float32 rounding
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not a double precision" inputs
        assert torch.autograd.gradcheck(case, (leaf(2, K), leaf(N)), eps=1e-2, atol=2e-3, rtol=2e-3, fast_mode=True)


def test_gradcheck_w8a8_on_its_activation_grid():
    # With a static power-of-two act_scale and x on its grid, x +- eps (eps = act_scale) stays on the
    # grid, so int8_linear is exactly linear along every difference gradcheck takes: the finite
    # differences measure x @ W.T's Jacobian, which the straight-through gradient must equal.
    case = make_case("int8_linear_static")
    x = (torch.randint(-100, 101, (1, K)) * GRID).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        # slow mode: fast mode's random directions leave the grid
        assert torch.autograd.gradcheck(case, (x, leaf(N)), eps=GRID, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("name", sorted(_CASES))
def test_double_backward_is_the_transposed_product(name):
    case = make_case(name)
    x, v, u = leaf(3, K), torch.randn(3, N, requires_grad=True), torch.randn(3, K)
    (gx,) = torch.autograd.grad(case(x), x, v, create_graph=True)
    (gv,) = torch.autograd.grad(gx, v, u)
    torch.testing.assert_close(gv, u @ case.weight.t(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(_CASES))
def test_leading_dims_empty_batch_and_strides(name):
    case = make_case(name)
    base = randn_nonzero(4, K, 2)
    x = base.transpose(1, 2).requires_grad_()  # (4, 2, K), not contiguous
    r = torch.randn(4, 2, N)
    case(x).backward(r)
    assert x.grad.shape == x.shape
    torch.testing.assert_close(x.grad, r @ case.weight, rtol=1e-5, atol=1e-5)
    for shape in [(0, K), (2, 0, K)]:
        e = leaf(*shape)
        y = case(e)
        assert y.shape == (*shape[:-1], N)
        y.sum().backward()
        assert e.grad.shape == e.shape and e.grad.dtype == torch.float32


@pytest.mark.parametrize("name", ["int8_linear", "sparse24_linear", "half_linear"])
def test_bfloat16_input(name):
    case = make_case(name)
    x, r = leaf(3, K, dtype=torch.bfloat16), torch.randn(3, N).bfloat16()
    y = case(x, out_dtype=torch.float32)
    y.backward(r.float())
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x.grad, (r.float() @ case.weight).bfloat16(), rtol=1e-2, atol=1e-2)
    x.grad = None
    case(x).backward(r)  # bfloat16 output and gradient
    torch.testing.assert_close(x.grad, (r.float() @ case.weight).bfloat16(), rtol=1e-2, atol=1e-2)


def test_bias_alone_gets_its_grad():
    case = make_case("csr_linear")
    x, b = randn_nonzero(2, 3, K), leaf(N)
    r = torch.randn(2, 3, N)
    case(x, b).backward(r)
    torch.testing.assert_close(b.grad, r.sum((0, 1)))


FROZEN = [("int8_linear", "w_scale"), ("int8_weight_only_linear", "w_scale"),
          ("sparse24_int8_linear", "w_scale"), ("csr_linear", "values")]
FROZEN_ARG_OF_OP = {op: str(getattr(torch.ops.compressops, op).default._schema.arguments[2].name) for op, _ in FROZEN}


@pytest.mark.parametrize(("name", "arg"), FROZEN, ids=[f"{n}-{a}" for n, a in FROZEN])
@pytest.mark.parametrize("x_grad", [True, False], ids=["x_grad", "x_frozen"])
def test_family_tensor_requiring_grad_raises_in_backward(name, arg, x_grad):
    case = make_case(name)
    i = 1  # every one is the op's first family tensor, after the pack
    assert case.op in FROZEN_ARG_OF_OP and FROZEN_ARG_OF_OP[case.op] == arg
    args = list(case.args)
    args[i] = grad_leaf(args[i])
    x = randn_nonzero(3, K).requires_grad_(x_grad)
    y = case._replace(args=tuple(args))(x)  # the forward itself runs
    with pytest.raises(RuntimeError, match=rf"^compressops::{case.op}: no gradient for {arg}: the compressed "
                                           r"weight is frozen"):
        y.sum().backward()
    assert args[i].grad is None
    with torch.no_grad():  # no gradient asked: nothing to refuse
        torch.testing.assert_close(case._replace(args=tuple(args))(x), y.detach())


def test_keyword_only_act_scale_requiring_grad_raises():
    # autograd cannot see keyword-only tensors, so int8_linear refuses the call rather than leave
    # act_scale's gradient silently None
    case = make_case("int8_linear")
    s = torch.tensor(GRID, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"^compressops::int8_linear: no gradient for act_scale: the compressed "
                                           r"weight is frozen"):
        torch.ops.compressops.int8_linear(leaf(3, K), *case.args, act_scale=s)
    with torch.no_grad():
        assert torch.ops.compressops.int8_linear(randn_nonzero(3, K), *case.args, act_scale=s).shape == (3, N)


# --------------------------------------------------------------------------------------- modules

def expected_input_grad(model: nn.Sequential, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """d(sum(model(x) * r))/dx through the dense layers rebuilt from each compressed layer's
    dequantize(), the ReLUs masked as in the compressed model's own forward (the straight-through
    rule: the activation rounding of W8A8/W4A8 may flip a pre-activation near 0)."""
    inputs = []
    h = x.detach()
    for m in model:
        inputs.append(h)
        h = m(h)
    g = r
    for m, inp in zip(reversed(model), reversed(inputs)):
        if isinstance(m, nn.ReLU):
            g = g * (inp > 0)
        else:
            g = g @ (m.dequantize() if isinstance(m, co.configs.compressed_types()) else m.weight.detach())
    return g


LINEAR_EXAMPLES = sorted(n for n, (_, kind) in EXAMPLES.items() if kind == "linear")


@pytest.mark.parametrize("name", LINEAR_EXAMPLES)
def test_module_input_grad_and_frozen_buffers(name):
    model = convert_example(name)
    compressed = [m for m in model if isinstance(m, co.configs.compressed_types())]
    assert compressed
    x = tiny_input("linear").requires_grad_()
    y = model(x)
    r = torch.randn_like(y)
    y.backward(r)
    torch.testing.assert_close(x.grad, expected_input_grad(model, x, r), rtol=1e-5, atol=1e-5)
    for m in compressed:
        assert not list(m.parameters())
        for buf_name, buf in m.named_buffers():
            assert not buf.requires_grad and buf.grad is None, buf_name


def test_issue_reproducers():
    lin = nn.Linear(16, 16)
    q = co.nn.Int8Linear.from_float(lin)
    x = randn_nonzero(4, 16).requires_grad_()
    q(x).sum().backward()
    assert x.grad is not None
    w = q.dequantize()
    torch.testing.assert_close(x.grad, w.sum(0).expand(4, 16))
    x.grad = None
    (q(x) + x).sum().backward()
    assert not torch.allclose(x.grad, torch.ones_like(x))
    torch.testing.assert_close(x.grad, (1 + w.sum(0)).expand(4, 16))


@pytest.mark.parametrize("name", ["int8", "pq256"])
def test_torchscript_module_backward(name):
    model = convert_example(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        buf = io.BytesIO()
        torch.jit.save(torch.jit.script(model), buf)
        buf.seek(0)
        loaded = torch.jit.load(buf)
    x = tiny_input("linear").requires_grad_()
    y = loaded(x)
    r = torch.randn_like(y)
    y.backward(r)
    torch.testing.assert_close(x.grad, expected_input_grad(model, x, r), rtol=1e-5, atol=1e-5)
