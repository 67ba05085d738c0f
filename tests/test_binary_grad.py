"""Gradients through the packed binary layers (BinaryConv2d, BinaryLinear, BinaryChain): x gets the
straight-through gradient of the dense layer alpha * sign(W) applied to sign(x); the weights are
frozen; inference (no_grad, inference_mode, inputs without grad) records no graph.

sign() has no useful derivative, so torch.autograd.gradcheck on x is meaningless here; the oracle is
torch.autograd on the dense definition (sign_ste of x, then F.conv2d / F.linear with the dequantized
weight), and gradcheck only checks that backward is linear in grad_out."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compressops as co
from compressops import ops
from compressops.algorithms.binarize import sign_ste
from compressops.nn import BinaryChain, BinaryConv2d, BinaryLinear
from compressops.nn._binary_ste import binary_ste

from .test_nn_binary_chain import batchnorm, bconv


def spread(*shape, dtype=torch.float32):
    """Data on both sides of the STE window |x| <= 1, with no exact zeros."""
    x = torch.randn(*shape) * 1.5
    return torch.where(x == 0, torch.full_like(x, 0.25), x).to(dtype)


def dense(layer, h, dtype):
    """The dense definition of a binary layer on float h, differentiable through sign_ste."""
    w = layer.dequantize().to(dtype)
    b = None if layer.bias is None else layer.bias.to(dtype)
    if isinstance(layer, BinaryConv2d):
        return F.conv2d(sign_ste(h), w, b, layer.stride, layer.padding)
    return F.linear(sign_ste(h), w, b)


def grads(fn, x, g):
    """(fn(x), d<fn(x), g>/dx) for a fresh leaf copy of x."""
    xr = x.detach().clone().requires_grad_(True)
    y = fn(xr)
    y.backward(g.to(y.dtype))
    return y.detach(), xr.grad


def close(a, b, dtype):
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # bf16: the dense oracle rounds every step to bf16
    torch.testing.assert_close(a.float(), b.float(), rtol=tol, atol=tol * b.float().abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("k,s,p", [(1, 1, 0), (3, 2, 1), (3, 1, 2)], ids=str)
def test_conv_input_grad_is_the_dense_ste_gradient(dtype, bias, k, s, p):
    layer = BinaryConv2d.from_float(nn.Conv2d(70, 9, k, stride=s, padding=p, bias=bias))
    x = spread(2, 70, 7, 6, dtype=dtype)
    with torch.no_grad():
        inference = layer(x)
    g = torch.randn(inference.shape)
    y, gx = grads(layer, x, g)
    assert torch.equal(y, inference)  # recording the graph changes no value
    _, expect = grads(lambda h: dense(layer, h, dtype), x, g)
    assert gx.dtype == dtype and gx.shape == x.shape
    close(gx, expect, dtype)
    assert torch.all(gx[x.abs() > 1] == 0)  # the STE window
    assert gx.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", [(5, 70), (2, 3, 70), (2, 70, 4, 70), (70,)], ids=str)
def test_linear_input_grad_is_the_dense_ste_gradient(dtype, bias, shape):
    layer = BinaryLinear.from_float(nn.Linear(70, 6, bias=bias))
    x = spread(*shape, dtype=dtype)
    with torch.no_grad():
        inference = layer(x)
    g = torch.randn(inference.shape)
    y, gx = grads(layer, x, g)
    assert torch.equal(y, inference)
    _, expect = grads(lambda h: dense(layer, h, dtype), x, g)
    assert gx.dtype == dtype and gx.shape == x.shape
    close(gx, expect, dtype)
    assert gx.abs().sum() > 0


@pytest.mark.parametrize("conv", [True, False], ids=["conv", "linear"])
@pytest.mark.parametrize("bounds", [(-1.0, 3.0), (None, 2.0), (-2.0, None), (-0.7, 1.3)], ids=str)
def test_clamped_output_blocks_the_gradient_where_the_clamp_was_active(conv, bounds):
    lo, hi = bounds
    # scale "none" and a zero bias make the outputs integers, so they hit the integer bounds exactly:
    # hardtanh passes no gradient there (nor does torch.clamp from torch 2.14; 2.13's passes it), and
    # neither may the fused clamp
    if conv:
        layer = BinaryConv2d.from_float(nn.Conv2d(5, 4, 3, padding=1), co.Binary(scale="none"))
        x, args = spread(2, 5, 4, 4), ((layer.stride, layer.padding),)
    else:
        layer = BinaryLinear.from_float(nn.Linear(7, 5), co.Binary(scale="none"))
        x, args = spread(6, 7), (None,)
    if lo == -1.0:
        layer.bias.zero_()
    w = layer.weight_packed

    def packed(h):
        return binary_ste(h, w, layer.alpha, layer.bias, layer._pack_info(), *args, clamp_min=lo, clamp_max=hi)

    def reference(h):
        inf = float("inf")
        return F.hardtanh(dense(layer, h, torch.float32), -inf if lo is None else lo, inf if hi is None else hi)

    with torch.no_grad():
        if conv:
            fused = ops.binary_conv2d(ops.binary_pack_activation(x), w, layer.alpha, layer.bias, *args[0], lo, hi)
        else:
            fused = ops.binary_linear(ops.binary_pack_activation(x), w, layer.alpha, layer.bias, None, lo, hi)
    g = torch.randn(fused.shape)
    y, gx = grads(packed, x, g)
    assert torch.equal(y, fused)  # the kernels' own clamp, bit for bit
    _, expect = grads(reference, x, g)
    torch.testing.assert_close(gx, expect, rtol=1e-5, atol=1e-5)
    if lo == -1.0:
        assert (y == lo).any() and (y == hi).any()  # the boundary case was exercised


@pytest.mark.parametrize("conv", [True, False], ids=["conv", "linear"])
def test_backward_is_linear_in_grad_out(conv):
    layer = (BinaryConv2d.from_float(nn.Conv2d(6, 2, 3, stride=2)) if conv
             else BinaryLinear.from_float(nn.Linear(9, 4)))
    x = spread(1, 6, 5, 5) if conv else spread(3, 9)
    with torch.no_grad():
        out_shape = layer(x).shape

    def input_grad(g):
        xr = x.clone().requires_grad_(True)
        return torch.autograd.grad(layer(xr), xr, g, create_graph=True)[0]

    g = torch.randn(out_shape, dtype=torch.float64, requires_grad=True)
    # backward computes in float32; the map is linear, so a large eps costs no accuracy
    assert torch.autograd.gradcheck(input_grad, (g,), eps=0.5, atol=1e-4, rtol=1e-4)


def test_weights_are_frozen_and_a_buffer_requiring_grad_is_refused():
    layer = BinaryConv2d.from_float(nn.Conv2d(8, 4, 3))
    assert list(layer.parameters()) == []
    x = spread(1, 8, 5, 5).requires_grad_(True)
    layer(x).sum().backward()
    assert layer.alpha.grad is None and layer.bias.grad is None and x.grad is not None
    for name in ("alpha", "bias"):
        lin = BinaryLinear.from_float(nn.Linear(8, 3))
        getattr(lin, name).requires_grad_(True)
        y = lin(spread(2, 8))  # x needs no grad: the buffer alone records the graph
        with pytest.raises(RuntimeError, match=f"BinaryLinear: {name} requires grad, but .* frozen"):
            y.sum().backward()
    chain = BinaryChain([bconv(8, 8, 3, padding=1), bconv(8, 2, 1)])
    chain.layers[1].alpha.requires_grad_(True)
    with pytest.raises(RuntimeError, match="BinaryChain layer 1: alpha requires grad"):
        chain(spread(1, 8, 4, 4)).sum().backward()


def test_no_graph_in_inference():
    layers = [(BinaryConv2d.from_float(nn.Conv2d(8, 4, 3)), spread(1, 8, 5, 5)),
              (BinaryLinear.from_float(nn.Linear(8, 3)), spread(2, 8)),
              (BinaryChain([bconv(8, 8, 3, padding=1), bconv(8, 2, 1)]), spread(1, 8, 4, 4))]
    for layer, x in layers:
        ref = layer(x)
        assert ref.grad_fn is None  # grad mode on, but nothing requires grad
        xr = x.clone().requires_grad_(True)
        assert layer(xr).grad_fn is not None
        with torch.no_grad():
            y = layer(xr)
        assert y.grad_fn is None and not y.requires_grad and torch.equal(y, ref)
        with torch.inference_mode():
            y = layer(xr)
        assert y.grad_fn is None and torch.equal(y, ref)


def test_chain_input_grad_is_the_composed_ste_gradient():
    c1, c2, c3 = bconv(20, 70, 3, padding=1), bconv(70, 16, 3, stride=2, padding=1), bconv(16, 5, 1, bias=False)
    # small folded BatchNorm outputs put many intermediate values inside the STE window
    bn1, bn2 = batchnorm(70), batchnorm(16)
    chain = BinaryChain.from_modules([c1, bn1, nn.Hardtanh(), c2, bn2, c3])
    x = spread(2, 20, 6, 5)
    with torch.no_grad():
        inference = chain(x)
    g = torch.randn(inference.shape)
    y, gx = grads(chain, x, g)
    assert torch.equal(y, inference)

    def composed(h):
        for layer in chain.layers:
            h = dense(layer, h, torch.float32)
        return h

    _, expect = grads(composed, x, g)
    torch.testing.assert_close(gx, expect, rtol=1e-4, atol=1e-5)
    assert gx.abs().sum() > 0
    # bf16 input: the same values as the packed path, the gradient in x's dtype
    xb = x.bfloat16()
    with torch.no_grad():
        inference = chain(xb)
    y, gxb = grads(chain, xb, g)
    assert torch.equal(y, inference) and gxb.dtype == torch.bfloat16
    chain.train()
    with pytest.raises(RuntimeError, match="inference-only"):
        chain(x.requires_grad_(True))


def test_float_activation_layers_differentiate_exactly():
    # W1A32 runs F.conv2d / F.linear on the float input: plain autograd, no STE
    conv = BinaryConv2d.from_float(nn.Conv2d(6, 3, 3), co.Binary(binarize_activations=False))
    lin = BinaryLinear.from_float(nn.Linear(6, 3), co.Binary(binarize_activations=False))
    for layer, x in ((conv, spread(2, 6, 5, 5)), (lin, spread(2, 6))):
        g = torch.randn(layer(x).shape)
        _, gx = grads(layer, x, g)
        _, expect = grads(layer.to_float(), x, g)
        torch.testing.assert_close(gx, expect, rtol=1e-5, atol=1e-5)


def test_empty_batch_unbatched_and_strided_backward():
    layer = BinaryConv2d.from_float(nn.Conv2d(8, 4, 3, padding=1))
    x = spread(0, 8, 5, 5).requires_grad_(True)
    layer(x).sum().backward()
    assert x.grad.shape == x.shape
    x3 = spread(8, 5, 5)
    g = torch.randn(4, 5, 5)
    y, gx = grads(layer, x3, g)
    y4, gx4 = grads(layer, x3[None], g[None])
    assert torch.equal(y, y4[0]) and torch.equal(gx, gx4[0])
    # channels_last and non-contiguous input: the same values and gradient
    x4 = spread(2, 8, 5, 6)
    g4 = torch.randn(2, 4, 5, 6)
    y, gx = grads(layer, x4, g4)
    for variant in (x4.contiguous(memory_format=torch.channels_last), x4.transpose(2, 3).contiguous().transpose(2, 3)):
        yv, gxv = grads(layer, variant, g4)
        assert torch.equal(yv, y)
        torch.testing.assert_close(gxv, gx, rtol=1e-6, atol=1e-6)


def test_compiled_backward_matches_eager():
    model = nn.Sequential(BinaryConv2d.from_float(nn.Conv2d(6, 8, 3, padding=1)), nn.Flatten(),
                          BinaryLinear.from_float(nn.Linear(8 * 4 * 4, 3)))
    x = spread(2, 6, 4, 4)
    g = torch.randn(2, 3)
    y, gx = grads(model, x, g)
    # aot_eager: dynamo and AOT autograd trace the Function (what inductor would compile), seconds cheaper
    yc, gxc = grads(torch.compile(model, fullgraph=True, backend="aot_eager"), x, g)
    assert torch.equal(yc, y)
    torch.testing.assert_close(gxc, gx, rtol=1e-5, atol=1e-5)
    assert gx.abs().sum() > 0
