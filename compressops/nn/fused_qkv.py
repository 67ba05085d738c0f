"""Fused Q/K/V: one int8 GEMM for the three projections of a BERT-style self-attention.

The query, key and value projections of a self-attention read the same input. Converted one by one,
each Int8Linear quantizes that input again and runs its own GEMM with N = H; fused, the input is
quantized once and one GEMM runs over the three weights stacked into one pack [3H, K] (rows: query,
then key, then value). Dynamic activation quantization is per row and every output column depends
only on its own weight row, scale and bias, so the fused outputs are bit for bit the unfused ones.

What changes in the model (convert does it, through the model pass registered at the end of this
file, after the layers are converted; `fuse_qkv(model)` does it to a model loaded or converted before):

- the attention module gets a child `fused_qkv` (FusedQKV) holding the stacked pack and the
  concatenated scales and bias, all non-persistent: derived from the three layers, never saved;
- query, key and value stay Int8Linear modules with their own scales and bias; their own packs are
  dropped (the pack is held once, in `fused_qkv`) and they read their rows of it: their state_dict,
  `weight`, report rows, co.save/co.load and Hugging Face records are those of the unfused layers;
- a forward pre-hook on the attention module runs the fused GEMM on `hidden_states` and passes the
  [..., 3H] result on in its place; each projection, given that result, returns its columns (a view).

A projection called on anything else (an input with K features, as a cross-attention's key and value
are) runs the fused GEMM on it and returns its columns, which is correct but does the work of three;
a projection copied out of its model alone takes a private copy of the pack with it.

The attention classes fused are those whose forward reads `hidden_states` only through the three
projections and its leading shape (`ATTENTION_CLASSES`, checked against transformers 5.24); their
three projections must be Int8Linear with dynamic activations (a static scale is per layer, so one
quantization could not serve three), the same input size, K != 3H (so the fused result and a plain
input cannot be confused), all with a bias or none, on one device.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..configs import register_model_pass
from ..formats import int8 as int8_format
from .int8_linear import Int8Linear

__all__ = ["FusedQKV", "fuse_qkv", "unfuse_qkv"]

# Class names of self-attention modules whose forward uses hidden_states only as the input of
# self.query/key/value and for its shape[:-1].
ATTENTION_CLASSES = frozenset({"BertSelfAttention", "RobertaSelfAttention", "XLMRobertaSelfAttention",
                               "CamembertSelfAttention", "ElectraSelfAttention"})
PROJECTIONS = ("query", "key", "value")
CHILD = "fused_qkv"


class FusedQKV(nn.Module):
    """The stacked pack of one attention's three Int8Linear projections and their one GEMM.

    Buffers (non-persistent: rebuilt from the projections, never saved): weight_packed, the pack of
    the int8 weight [3H, K] (rows query, key, value); weight_scale float32 [3H]; bias float32 [3H]
    or None. forward(x): x float (..., K) -> (..., 3H) in x's dtype, what the three projections
    give, concatenated along the last dim.
    """

    def __init__(self, members: list[Int8Linear]):
        super().__init__()
        self.in_features = members[0].in_features
        self.out_features = sum(m.out_features for m in members)
        self.splits = tuple(m.out_features for m in members)
        weight = torch.cat([m.weight for m in members])
        self.register_buffer("weight_packed", ops.int8_pack_weight(weight), persistent=False)
        self.register_buffer("weight_scale", torch.cat([m.weight_scale for m in members]), persistent=False)
        self.register_buffer("bias", torch.cat([m.bias for m in members]) if members[0].bias is not None else None,
                             persistent=False)

    def set_params(self, start: int, scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Copy one member's scale float32 [n] (and bias [n]) into rows start:start+n (after it loaded a state)."""
        self.weight_scale[start:start + scale.shape[0]] = scale
        if bias is not None:
            self.bias[start:start + bias.shape[0]] = bias

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """The int8 weight rows [stop - start, K] of the stacked weight (a copy)."""
        return int8_format.unpack_weight(self.weight_packed)[start:stop].clone()

    def set_rows(self, start: int, weight: torch.Tensor) -> None:
        """Replace the rows from `start` on with int8 `weight` [n, K] and repack."""
        stacked = int8_format.unpack_weight(self.weight_packed)
        stacked[start:start + weight.shape[0]] = weight.to(stacked.device)
        self.weight_packed = ops.int8_pack_weight(stacked)

    def _apply(self, fn, recurse=True):
        # the scales and bias are float32 by format: a model's .half() moves them, never casts them
        keep = {n: getattr(self, n) for n in ("weight_scale", "bias") if getattr(self, n) is not None}
        super()._apply(fn, recurse)
        for n, old in keep.items():
            setattr(self, n, old.to(getattr(self, n).device))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.compressops.int8_linear(x, self.weight_packed, self.weight_scale, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features} ({' + '.join(map(str, self.splits))})"


class _FeedFusedQKV:
    """Forward pre-hook of a fused attention: hidden_states -> its fused Q/K/V projection.

    Only while the module's three projections still read its `fused_qkv` (one replaced by another
    module, e.g. loaded from a file, leaves the attention to call them as they are).
    """

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        group = getattr(module, CHILD, None)
        if group is None or not all(getattr(getattr(module, p), "_qkv", None) is not None
                                    and getattr(module, p)._qkv[0] is group for p in PROJECTIONS):
            return None
        if args:
            return (group(args[0]), *args[1:]), kwargs
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": group(kwargs["hidden_states"])}
        return None


def _fusable(attention: nn.Module) -> list[Int8Linear] | None:
    """The three projections of `attention` when they can be fused (see the module docstring), else None."""
    if type(attention).__name__ not in ATTENTION_CLASSES or getattr(attention, CHILD, None) is not None:
        return None
    members = [getattr(attention, p, None) for p in PROJECTIONS]
    if not all(type(m) is Int8Linear and m.act == "dynamic" and m._qkv is None for m in members):
        return None
    k = members[0].in_features
    devices = {m.weight_packed.device for m in members}
    if (any(m.in_features != k for m in members) or k == sum(m.out_features for m in members)
            or len({m.bias is None for m in members}) != 1 or len(devices) != 1
            or next(iter(devices)).type == "meta"):
        return None
    return members


def fuse_qkv(model: nn.Module) -> int:
    """Fuse the int8 query/key/value projections of every self-attention of `model` that allows it
    (see the module docstring), in place. Exact: the model computes bit for bit what it did.

    Args:
        model: an nn.Module, typically converted with compressops.convert(model, Int8()).
    Returns:
        The number of attention modules fused (0 when none qualifies; fused ones are left as they are).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse_qkv: model must be an nn.Module, got {type(model).__name__}")
    fused = 0
    for attention in list(model.modules()):
        members = _fusable(attention)
        if members is None:
            continue
        group = FusedQKV(members)
        start = 0
        for m in members:
            m._join(group, start, start + m.out_features)
            start += m.out_features
        attention.add_module(CHILD, group)
        attention.register_forward_pre_hook(_FeedFusedQKV(), with_kwargs=True)
        fused += 1
    return fused


def unfuse_qkv(model: nn.Module) -> int:
    """Undo fuse_qkv in place: each projection gets its own pack again, the attention loses its
    `fused_qkv` child and pre-hook. The model computes bit for bit what it did (to compare the two paths).

    Args:
        model: an nn.Module.
    Returns:
        The number of attention modules unfused.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"unfuse_qkv: model must be an nn.Module, got {type(model).__name__}")
    unfused = 0
    for attention in list(model.modules()):
        group = getattr(attention, CHILD, None)
        if not isinstance(group, FusedQKV):
            continue
        for p in PROJECTIONS:
            member = getattr(attention, p)
            if isinstance(member, Int8Linear) and member._qkv is not None and member._qkv[0] is group:
                member._leave()
        del attention._modules[CHILD]
        for key in [k for k, h in attention._forward_pre_hooks.items() if isinstance(h, _FeedFusedQKV)]:
            attention._forward_pre_hooks.pop(key)
            attention._forward_pre_hooks_with_kwargs.pop(key, None)
        unfused += 1
    return unfused


register_model_pass(fuse_qkv)
