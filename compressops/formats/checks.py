"""Argument checks every op family shares (activations, bias, output dtype).

Each family's validation function (formats/<family>.py `check_*`) builds on these; the reference,
the fake kernel and the Triton kernel of an op all call that one function, so the three raise the
same ValueError messages. Conditions go through torch._check_value: on plain tensors it raises
ValueError, and on symbolic sizes (FakeTensor under torch.compile with dynamic shapes) it records
the condition instead of raising, so the fake kernels never fail on a size that is merely unknown.
"""

from __future__ import annotations

import torch
from torch._subclasses.fake_tensor import is_fake as _is_fake_tensor

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def is_fake(t: torch.Tensor) -> bool:
    """True when t has no readable data (FakeTensor under torch.compile/export, or a meta tensor).

    Checks that read data (pack headers, index ranges, scale values) skip such tensors; the
    kernel that runs on the real tensors checks them.
    """
    return t.device.type == "meta" or _is_fake_tensor(t)


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of the float tensor t (any shape, empty included) is finite.

    One reduction pass and no temporary of t's size (torch.isfinite(t).all() builds a bool tensor
    and costs about ten times as much on a large weight): min and max propagate NaN, and an Inf is
    the min or the max.
    """
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_x(x: torch.Tensor, op: str) -> None:
    """x must be a float32/bfloat16/float16 tensor with at least one dimension (..., K).

    The one input rule of every family: float64 (and float8) inputs raise here rather than being
    rounded silently; cast them to float32 first.
    """
    torch._check_value(x.dtype in FLOAT_DTYPES,
                       lambda: f"{op}: x must be float32, bfloat16 or float16, got {x.dtype}")
    torch._check_value(x.dim() >= 1, lambda: f"{op}: x must have at least one dimension (..., K)")


def check_devices(op: str, ref_name: str, ref: torch.Tensor, others: dict[str, torch.Tensor | None]) -> None:
    """Every tensor of `others` ({argument name: tensor or None}) must be on ref's device.

    An op computes on one device. The dispatcher picks one backend for a call whose tensors are on
    several (a meta tensor wins, then CUDA over CPU), so a meta x with CPU weights ran the fake
    kernel and returned a meta tensor from a CPU layer. Reads no data: fake tensors report the
    device of the tensors they stand for, so compiled graphs pass it.
    """
    for name, t in others.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{op}: {name} must be on {ref_name}'s device ({ref.device}), got {t.device}")


def check_k(x: torch.Tensor, k, op: str, source: str) -> None:
    """x's last dimension must equal k; `source` names where k comes from, e.g. "the weight has K"."""
    torch._check_value(x.shape[-1] == k,
                       lambda: f"{op}: x has K={x.shape[-1]} in its last dimension but {source}={k}")


def check_bias(bias: torch.Tensor | None, n, op: str, shape: str = "[N] = [{n}]") -> None:
    """bias must be None or a 1-D float tensor of n elements; `shape` formats the message's shape."""
    if bias is None:
        return
    # `and` returns its last operand unevaluated, so a symbolic size stays a SymBool (no guard).
    ok = bias.is_floating_point() and bias.dim() == 1 and bias.shape[0] == n
    torch._check_value(ok, lambda: f"{op}: bias must be a float tensor of shape {shape.format(n=n)}, got "
                                   f"{bias.dtype} {tuple(bias.shape)}")


def check_scale(w_scale: torch.Tensor, n, op: str) -> None:
    """w_scale must be float32 [N]: one scale per output channel."""
    ok = w_scale.dtype == torch.float32 and w_scale.dim() == 1 and w_scale.shape[0] == n
    torch._check_value(ok, lambda: f"{op}: w_scale must be float32 of shape [N] = [{n}], got {w_scale.dtype} "
                                   f"{tuple(w_scale.shape)}")


def resolve_out_dtype(x: torch.Tensor, out_dtype: torch.dtype | None, op: str) -> torch.dtype:
    """The output dtype of a float op: out_dtype, default x.dtype, one of FLOAT_DTYPES."""
    t = out_dtype or x.dtype
    torch._check_value(t in FLOAT_DTYPES, lambda: f"{op}: out_dtype must be float32, bfloat16 or float16, got {t}")
    return t


def check_packed(packed: torch.Tensor, op: str, name: str, pack_op: str, *, dims: int) -> None:
    """What can be checked of a pack without reading it (for fake tensors; the header reader does the
    rest): a `dims`-D uint8 tensor."""
    ok = packed.dtype == torch.uint8 and packed.dim() == dims
    torch._check_value(ok, lambda: f"{op}: {name} must be a {dims}-D uint8 tensor from compressops.ops.{pack_op}, "
                                   f"got {packed.dtype} of shape {tuple(packed.shape)}")
