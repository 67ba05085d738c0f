"""CompressedLinear: what every compressed replacement of nn.Linear has in common."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from ..formats.checks import is_fake

__all__ = ["CompressedLinear", "check_state", "meta_skeleton", "on_meta", "registered_spec"]


def registered_spec(module: nn.Module) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """{name: (dtype, shape)} of module's own persistent buffers (state_dict entries), None ones left out."""
    return {name: (b.dtype, tuple(b.shape)) for name, b in module._buffers.items()
            if b is not None and name not in module._non_persistent_buffers_set}


def check_state(label: str, state_dict, prefix: str, spec: dict[str, tuple[torch.dtype, tuple[int, ...]]],
                bounds: dict[str, float | None]) -> tuple[list[str], list[str]]:
    """(problems, missing keys) of the checkpoint entries `spec` names, for a load that must change
    nothing unless all pass: each entry with exactly its dtype and shape (a load would otherwise cast
    silently: 200.7 into an int8 weight, 300 into uint8 codes), and values within `bounds`.

    Problems read "mismatch for <key>: ..." (load_state_dict's wording); `label` names the layer's class.
    """
    problems, missing = [], []
    for name, (dtype, shape) in spec.items():
        key = prefix + name
        t = state_dict.get(key)
        if t is None:
            missing.append(key)
        elif t.dtype != dtype or tuple(t.shape) != tuple(shape):
            problems.append(f"mismatch for {key}: the checkpoint holds {t.dtype} {tuple(t.shape)}, {label} needs "
                            f"{dtype} {tuple(shape)}")
        elif name in bounds and not is_fake(t):
            x = t.detach()
            if x.is_floating_point() and not bool(torch.isfinite(x).all()):
                problems.append(f"mismatch for {key}: the checkpoint holds NaN/Inf, {label} needs finite values")
            elif bounds[name] is not None and x.numel() and float(x.min()) < bounds[name]:
                problems.append(f"mismatch for {key}: the checkpoint holds {float(x.min()):g}, {label} needs values "
                                f">= {bounds[name]:g}")
    return problems, missing


def on_meta(mod: nn.Module) -> bool:
    """Whether float `mod`'s weight is on the meta device (it has shapes but no values)."""
    return mod.weight.device.type == "meta"


def meta_skeleton(cls, mod: nn.Module, config):
    """The skeleton `cls.skeleton(mod, config)` when float `mod`'s weight is on the meta device, else None.

    Every family's from_float calls it after its argument checks: a meta layer (torch's
    init_empty_weights, `device="meta"`) holds no values to quantize, and its compressed layer is the
    skeleton of the right shapes and config on the meta device, which `to_empty()` then
    load_state_dict / compressops.load fill, as they do for the float model.
    """
    return cls.skeleton(mod, config) if on_meta(mod) else None


class CompressedLinear(nn.Module):
    """Base of the nn.Linear replacements (Int8Linear, Int4Linear, Sparse24Linear, CSRLinear, PQLinear).

    A subclass sets `in_features`, `out_features` and a `bias` buffer (float32 [out] or None),
    registers its stored format as buffers (the prepacked kernel layout as a non-persistent one)
    and implements `dequantize()`. It gets compressops.report's labels and sizes, `to_float()`, and a
    `.to(dtype)` that leaves the stored format alone: the buffers named in `_fixed_dtype` keep their
    dtype (a format fixes its scales and bias at float32; a cast would silently change the layer).
    """

    float_type = nn.Linear  # the float module it replaces (compressops.load checks the model holds one)
    _fixed_dtype: tuple[str, ...] = ("bias",)
    # {stored tensor: lower bound} checked on load: NaN/Inf always refused, a float bound b also
    # refuses values below b (None: finite only). What each format's quantizer can produce.
    _value_bounds: ClassVar[dict[str, float | None]] = {}
    # The non-persistent buffer holding the pack, for layers whose canonical tensors live inside it.
    _pack_name = "weight_packed"
    # Report/bookkeeping properties that torch.jit.script need not (and cannot) compile.
    __jit_unused_properties__ = ["config", "format_label", "shape_label", "sparsity", "nnz", "num_subspaces"]

    @property
    def shape_label(self) -> str:
        return f"{self.out_features}x{self.in_features}"

    def dense_bytes(self) -> int:
        """Bytes of the fp32 weight and bias this layer replaces."""
        return 4 * (self.out_features * self.in_features + (self.out_features if self.bias is not None else 0))

    def compressed_bytes(self) -> int:
        """Bytes of the stored format: every persistent buffer (the prepacked layout is derived, not stored)."""
        return sum(b.numel() * b.element_size() for n, b in self.named_buffers(recurse=False)
                   if b is not None and n not in self._non_persistent_buffers_set)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out_features, in_features] this layer computes with."""
        raise NotImplementedError

    def to_float(self) -> nn.Linear:
        """An equivalent float32 nn.Linear (weight = dequantize(), the same bias)."""
        w = self.dequantize()
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=w.device)
        with torch.no_grad():
            lin.weight.copy_(w)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    def _apply(self, fn, recurse=True):
        keep = {n: getattr(self, n) for n in self._fixed_dtype if getattr(self, n, None) is not None}
        super()._apply(fn, recurse)
        for n, old in keep.items():
            new = getattr(self, n)
            if new.dtype != old.dtype:  # follow only the device change
                setattr(self, n, old.to(new.device))
        self._after_move()
        return self

    def _after_move(self) -> None:
        """Called after .to()/.cuda()/...: a subclass rebuilds what depends on the device."""

    # -- canonical tensors kept inside the pack --------------------------------------------------
    # A layer that holds only its pack (never the canonical copy of its weight as well) declares the
    # canonical tensors here; state_dict writes them, load_state_dict checks and packs them once.
    def _canonical_spec(self) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """{state_dict name: (dtype, shape)} of the canonical tensors kept inside the pack (not
        registered buffers). Empty: every stored tensor is a registered buffer."""
        return {}

    def _canonical_state(self) -> dict[str, torch.Tensor]:
        """The tensors of _canonical_spec, unpacked from the pack, fit to be saved (no view that
        would drag the whole pack into a file)."""
        return {}

    def _check_canonical(self, tensors: dict[str, torch.Tensor]) -> str | None:
        """A problem with loaded canonical tensors beyond dtype and shape, as "<name>: <why>", or None."""
        return None

    def _pack_canonical(self, tensors: dict[str, torch.Tensor]) -> None:
        """Build the pack from checked canonical tensors {name: tensor} (on the pack's device)."""
        raise NotImplementedError

    def _meta_state(self) -> dict[str, torch.Tensor] | None:
        """For a layer on the meta device (a skeleton: no pack bytes to unpack), meta tensors of the
        canonical dtypes and shapes, which is what state_dict's users (key and shape lists) need;
        None for a layer with data."""
        if getattr(self, self._pack_name).device.type != "meta":
            return None
        return {name: torch.empty(shape, dtype=dtype, device="meta") for name, (dtype, shape) in
                self._canonical_spec().items()}

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        state = self._meta_state()
        for name, t in (self._canonical_state() if state is None else state).items():
            destination[prefix + name] = t if keep_vars else t.detach()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _buffer_spec(self, state_dict, prefix: str) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
        """{name: (dtype, shape)} a checkpoint must hold for the registered persistent buffers: their
        own (a subclass whose buffer takes its size from the file overrides this)."""
        return registered_spec(self)

    def _before_copy(self, state_dict, prefix: str) -> None:
        """Called once the checkpoint passed every check, right before the buffers are copied."""

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        """Check everything the checkpoint holds for this layer first (dtypes exact, values, the
        canonical tensors), and change nothing unless it all passes: a failed load leaves the layer
        as it was. Returns whether the layer was loaded."""
        spec = self._canonical_spec()
        problems, missing = check_state(type(self).__name__, state_dict, prefix,
                                        {**self._buffer_spec(state_dict, prefix), **spec}, self._value_bounds)
        canonical = {name: state_dict[prefix + name] for name in spec if prefix + name not in missing}
        if not problems and len(canonical) == len(spec):
            problem = self._check_canonical(canonical)
            if problem:
                problems.append(f"mismatch for {prefix}{problem}")
        if problems or (strict and missing):
            error_msgs.extend(problems)
            missing_keys.extend(missing)
            return False
        self._before_copy(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        for name in spec:  # the base class knows only the registered buffers
            if prefix + name in unexpected_keys:
                unexpected_keys.remove(prefix + name)
            if prefix + name in missing:
                missing_keys.append(prefix + name)
        if spec and len(canonical) == len(spec):
            device = getattr(self, self._pack_name).device
            self._pack_canonical({name: t.detach().to(device) for name, t in canonical.items()})
        return True
