"""HalfLinear: the drop-in replacement of nn.Linear with its weight stored in float16."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn

from .. import ops
from ..configs import Family, Half, register_family
from ..formats import half as half_format
from .compressed_linear import CompressedLinear, meta_skeleton, on_meta

__all__ = ["HalfLinear"]


class HalfLinear(CompressedLinear):
    """nn.Linear with a float16 weight, computed in float32.

    Half the weight bytes of a float32 layer, so a memory-bound call (small batches) reads half as
    much. Inputs: float32/bfloat16/float16 (..., in_features), any leading dims; the output has the
    input's dtype.

    state_dict: weight float16 [out, in] and bias float32 [out] (if any), the canonical format of
    compressops/formats/half.py. In memory the layer holds only the pack (`weight_packed`, not
    saved), and `weight` is a view into it: state_dict and load_state_dict translate, so the weight
    is never held twice.

    Example:
        >>> q = HalfLinear.from_float(torch.nn.Linear(64, 32))
        >>> y = q(torch.randn(4, 64))
    """

    __jit_unused_properties__ = [*CompressedLinear.__jit_unused_properties__, "weight"]

    _version = 1
    # from_float refuses NaN/Inf and values past float16's range
    _value_bounds: ClassVar[dict[str, float | None]] = {"weight": None}

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None):
        super().__init__()
        if in_features < 1 or out_features < 1:
            raise ValueError(f"HalfLinear: in_features and out_features must be >= 1, got "
                             f"{in_features}, {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("weight_packed", half_format.zero_pack(out_features, in_features, device),
                             persistent=False)
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)

    @property
    def weight(self) -> torch.Tensor:
        """The float16 weight [out, in]: a view into the pack (writes to it change the layer)."""
        return half_format.unpack_weight(self.weight_packed)

    @classmethod
    def from_float(cls, mod: nn.Linear, config: Half | None = None, name: str = "") -> HalfLinear:
        """Round a float nn.Linear's weight to float16 (round to nearest even); the bias stays float32.

        Args:
            mod: nn.Linear (float weight [out, in]).
            config: Half() (it has no options).
            name: the layer's name, used in error messages.
        Raises:
            TypeError: mod is not an nn.Linear.
            ValueError: the weight holds NaN/Inf or values beyond float16's range.
        """
        label = name or "HalfLinear.from_float"
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"{label}: expected nn.Linear, got {type(mod).__name__}")
        if (skeleton := meta_skeleton(cls, mod, config or Half())) is not None:
            return skeleton
        w = half_format.to_half(mod.weight, name=label)
        q = cls(mod.in_features, mod.out_features, bias=mod.bias is not None, device=mod.weight.device)
        q.weight_packed = ops.half_pack_weight(w)
        if mod.bias is not None:
            q.bias.copy_(mod.bias.detach().float())
        return q

    @classmethod
    def skeleton(cls, mod: nn.Linear, config: Half) -> HalfLinear:
        """An empty HalfLinear with the shapes of float `mod`, for load_state_dict (compressops.load)."""
        return cls(mod.in_features, mod.out_features, bias=mod.bias is not None, device=mod.weight.device)

    @property
    def config(self) -> Half:
        return Half()

    @property
    def format_label(self) -> str:
        """Short format description for compressops.report."""
        return "float16"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.half_linear(x, self.weight_packed, self.bias)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] this layer computes with."""
        return self.weight.float()

    def compressed_bytes(self) -> int:
        """Bytes of the stored format (the state_dict's float16 weight and float32 bias)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def _canonical_spec(self):
        return {"weight": (torch.float16, (self.out_features, self.in_features))}

    def _canonical_state(self):
        return {"weight": self.weight}

    def _pack_canonical(self, tensors):
        self.weight_packed = ops.half_pack_weight(tensors["weight"])

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight=float16")


def _convert(mod: nn.Linear, config: Half, name: str, calibration=None, prepared=None) -> HalfLinear:
    return HalfLinear.from_float(mod, config, name=name)


def _unsupported_reason(config: Half, mod: nn.Linear) -> str | None:
    if on_meta(mod):  # no values to range-check: the skeleton takes whatever a load brings
        return None
    largest = float(mod.weight.detach().abs().max()) if mod.weight.numel() else 0.0
    if math.isfinite(largest) and largest > half_format.FP16_MAX:  # NaN/Inf: from_float raises
        return f"weights beyond float16's range (largest |w| = {largest:g} > {half_format.FP16_MAX:g})"
    return None


register_family(Family(
    config=Half, converts=(nn.Linear,), modules=(HalfLinear,), convert=_convert,
    unsupported_reason=_unsupported_reason, examples={"half": (Half(), "linear")},
))
