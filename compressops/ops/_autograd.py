"""Input gradients of the linear compute ops, for training around frozen compressed layers.

Every linear compute op is y = x @ W.T + bias for a dense float32 weight W [N, K] its pack (and
family tensors) stand for, with x's rounding to int8 left out for the ops that quantize x (W8A8,
W4A8): their gradient is the straight-through estimator, the gradient of x @ W.T as if that
rounding were the identity. So one backward serves every family:

    grad_x    = grad_out @ W            (float32, then x's dtype and shape)
    grad_bias = grad_out summed over the leading dims

A family supplies only W, through `dense_weight=` of compressops.ops._register: a function
(op, packed, *family tensors) -> float32 [N, K] in compressops/formats/<family>.py. The backward
decodes W once (an opaque op, compressops::_linear_dense_weight, so torch.compile and torch.export
trace the backward without reading the pack's bytes) and multiplies with one torch GEMM; x is not
saved, only the pack. The backward is built from differentiable torch ops, so a double backward
works (it is linear in grad_out). The compressed weight is frozen: a gradient asked for the pack or
a family tensor raises, in the backward, naming it (a keyword-only one, which autograd cannot see,
raises at the call).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__: list[str] = []

_DENSE_WEIGHT: dict[str, Callable[..., Tensor]] = {}  # op -> its family's dense_weight
_LIB = torch.library.Library("compressops", "FRAGMENT")  # _linear_dense_weight and the hand-built Autograd kernels


def _linear_dense_weight(op: str, weight: list[Tensor], in_features: int) -> Tensor:
    """float32 [N, in_features]: the dense weight of compressops::<op>'s weight tensors (its pack,
    then its family tensors, in schema order)."""
    return _DENSE_WEIGHT[op](op, *weight)


def _fake_linear_dense_weight(op, weight, in_features):
    return weight[0].new_empty((weight[0].shape[0], in_features), dtype=torch.float32)


# A schema, a fake and a "default" kernel, like the C++-defined ops. The kernel goes in through
# Library.impl: torch.library.custom_op and register_kernel wrap kernels in torch._disable_dynamo,
# whose first call imports torch._dynamo (2-4 s), which would fall on a user's first backward.
_LIB.define("_linear_dense_weight(str op, Tensor[] weight, SymInt in_features) -> Tensor")
torch.library.register_fake("compressops::_linear_dense_weight", _fake_linear_dense_weight, lib=_LIB)
_LIB.impl("_linear_dense_weight", _linear_dense_weight, "CompositeExplicitAutograd")


def _is_tensor(arg) -> bool:
    """Whether a schema argument is a Tensor or an optional one."""
    return arg.type.isSubtypeOf(torch._C.OptionalType.ofTensor())


def _frozen_message(op: str, name: str) -> str:
    return (f"compressops::{op}: no gradient for {name}: the compressed weight is frozen; only x and bias get "
            f"gradients. Pass {name} without requires_grad (e.g. {name}.detach()), or train a float copy of "
            f"the layer (CompressedLinear.to_float())")


def register_input_grad(op: str, dense_weight: Callable[..., Tensor]) -> None:
    """Give compressops::<op> (schema (x, packed, <family tensors>, bias, out_dtype, *, <options>))
    the gradients of x and bias, with W = dense_weight(op, packed, *family tensors)."""
    _DENSE_WEIGHT[op] = dense_weight
    args = getattr(torch.ops.compressops, op).default._schema.arguments
    positional = [a for a in args if not a.kwarg_only]
    x_i = next(i for i, a in enumerate(positional) if a.name == "x")
    bias_i = next(i for i, a in enumerate(positional) if a.name == "bias")
    weight_i = [i for i, a in enumerate(positional) if _is_tensor(a) and i not in (x_i, bias_i)]
    frozen_kw = [a.name for a in args if a.kwarg_only and _is_tensor(a)]

    def setup_context(ctx, inputs, output, keyword_only_inputs=None):
        x, bias = inputs[x_i], inputs[bias_i]
        ctx.in_features, ctx.x_dtype = x.shape[-1], x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        ctx.save_for_backward(*(inputs[i] for i in weight_i))

    def backward(ctx, grad):
        # needs_input_grad covers the inputs the caller passed (trailing defaults may be left out)
        needs = list(ctx.needs_input_grad) + [False] * (len(positional) - len(ctx.needs_input_grad))
        for i in weight_i:
            if needs[i]:
                raise RuntimeError(_frozen_message(op, positional[i].name))
        grads: list[Tensor | None] = [None] * len(positional)
        g = grad.reshape(-1, grad.shape[-1]).float()
        if needs[x_i]:
            w = torch.ops.compressops._linear_dense_weight(op, list(ctx.saved_tensors), ctx.in_features)
            grads[x_i] = (g @ w).to(ctx.x_dtype).reshape(*grad.shape[:-1], ctx.in_features)
        if needs[bias_i]:
            grads[bias_i] = g.sum(0).to(ctx.bias_dtype)
        return tuple(grads)

    if not frozen_kw:
        torch.library.register_autograd(f"compressops::{op}", backward, setup_context=setup_context)
        return
    # torch.library.register_autograd refuses ops with keyword-only tensors (int8_linear's act_scale):
    # autograd cannot see them. Its kernel is built here the same way, and a keyword-only tensor that
    # requires grad raises at once, where it would otherwise silently get no gradient.
    from torch._library import autograd as library_autograd

    kernel = library_autograd.make_autograd_impl(getattr(torch.ops.compressops, op).default,
                                                 library_autograd.Info(backward, setup_context))

    def autograd_kernel(keyset, *args, **kwargs):
        if torch.is_grad_enabled():
            for name in frozen_kw:
                t = kwargs.get(name)
                if t is not None and t.requires_grad:
                    raise RuntimeError(_frozen_message(op, name))
        return kernel(keyset, *args, **kwargs)

    _LIB.impl(op, autograd_kernel, "Autograd", with_keyset=True)
