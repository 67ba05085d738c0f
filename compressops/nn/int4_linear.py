"""Int4Linear: the drop-in replacement of nn.Linear with group-wise 4-bit weights."""

from __future__ import annotations

import torch
from torch import nn

from .. import ops
from ..algorithms.gptq import HessianObserver, gptq_quantize
from ..configs import Family, Int4, register_family
from ..formats import int4 as int4_format
from .compressed_linear import CompressedLinear

__all__ = ["Int4Linear"]


class Int4Linear(CompressedLinear):
    """nn.Linear with 4-bit weights, one fp32 scale (and a 4-bit zero point) per group of
    `group_size` input channels of each output channel (compressops/formats/int4.py).

    Inputs: float32/bfloat16/float16 (..., in_features), any leading dims; the output has the
    input's dtype. The CPU kernels quantize each input row to int8 per group at run time (W4A8,
    about 0.5-1% relative error on top of the weight rounding).

    Buffers (state_dict): qweight uint8 [out, K_pad/2], scales float32 [out, G], zeros uint8
    [out, G] (asymmetric only), bias float32 [out] (if any). The prepacked kernel layout is a
    non-persistent buffer rebuilt on load_state_dict and .to(), never saved.

    Example:
        >>> q = Int4Linear.from_float(torch.nn.Linear(256, 64), compressops.Int4(group_size=64))
        >>> y = q(torch.randn(4, 256))
    """

    _fixed_dtype = ("scales", "bias")

    _version = 1

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group_size: int = 128,
                 symmetric: bool = False, method: str = "rtn", device=None):
        super().__init__()
        Int4(group_size=group_size, symmetric=symmetric, method=method)  # validates
        if in_features < 1 or out_features < 1:
            raise ValueError(f"Int4Linear: in_features and out_features must be >= 1, got "
                             f"{in_features}, {out_features}")
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.symmetric = symmetric
        self.method = method
        kp = int4_format.padded_k(in_features, group_size)
        g = kp // group_size
        # an all-zero-weight layer: codes at the zero point, scale 0
        z0 = 8 if symmetric else 0
        self.register_buffer("qweight", torch.full((out_features, kp // 2), z0 | (z0 << 4), dtype=torch.uint8,
                                                   device=device))
        self.register_buffer("scales", torch.zeros(out_features, g, dtype=torch.float32, device=device))
        self.register_buffer("zeros", None if symmetric else torch.zeros(out_features, g, dtype=torch.uint8,
                                                                          device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)
        self.register_buffer("weight_packed", None, persistent=False)
        self.repack()
        self.register_load_state_dict_post_hook(lambda module, keys: module.repack())

    def repack(self) -> None:
        """Rebuild the prepacked kernel layout from the canonical buffers (after changing them)."""
        self.weight_packed = ops.int4_pack_weight(self.qweight, self.scales, self.zeros, self.in_features,
                                                  self.group_size)

    @classmethod
    def from_float(cls, mod: nn.Linear, config: Int4 | None = None, hessian: torch.Tensor | None = None,
                   name: str = "") -> Int4Linear:
        """Quantize a float nn.Linear.

        Args:
            mod: nn.Linear (float weight [out, in]).
            config: Int4 config (default Int4()).
            hessian: float64 [in, in], sum of x^T x over the calibration inputs (method="gptq";
                compressops.convert computes it from calibration_data).
            name: the layer's name, used in error messages.
        Raises:
            ValueError: non-finite weights; method="gptq" without a Hessian.
        """
        config = config or Int4()
        label = name or "Int4Linear.from_float"
        if not isinstance(mod, nn.Linear):
            raise TypeError(f"{label}: expected nn.Linear, got {type(mod).__name__}")
        if config.method == "gptq":
            if hessian is None:
                raise ValueError(f"{label}: Int4(method='gptq') needs calibration inputs; pass calibration_data "
                                 f"to compressops.convert")
            qw, s, z = gptq_quantize(mod.weight, hessian, config.group_size, config.symmetric, name=label)
        else:
            qw, s, z = int4_format.quantize_weight(mod.weight, config.group_size, config.symmetric, name=label)
        q = cls(mod.in_features, mod.out_features, bias=mod.bias is not None, group_size=config.group_size,
                symmetric=config.symmetric, method=config.method, device=mod.weight.device)
        with torch.no_grad():
            q.qweight.copy_(qw)
            q.scales.copy_(s)
            if z is not None:
                q.zeros.copy_(z)
            if mod.bias is not None:
                q.bias.copy_(mod.bias.detach().float())
        q.repack()
        return q

    @classmethod
    def from_gptq(cls, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor | None,
                  bias: torch.Tensor | None = None, group_size: int = 128, in_features: int | None = None,
                  zero_offset: int = 1) -> Int4Linear:
        """Import one layer of an AutoGPTQ-style (v1, "gptq" format, act-order off) checkpoint.

        Args:
            qweight: int32 [K/8, N], 8 codes per int32 along K, low bits first.
            scales: fp16/fp32 [G, N], G = K / group_size.
            qzeros: int32 [G, N/8], 8 zero points per int32 along N (AutoGPTQ v1 stores z - 1), or
                None (z = 8).
            bias: optional [N].
            group_size: input channels per group (32, 64, 128 or 256).
            in_features: the layer's K when smaller than the checkpoint's (padded) K.
            zero_offset: added to the stored zero points: 1 for v1 checkpoints, 0 for those that
                store z itself (GPTQ "v2").
        Returns:
            an asymmetric Int4Linear computing with w[n, k] = (q - z) * s (the layout is described in
            compressops.formats.int4.gptq_to_canonical).
        Raises:
            ValueError: a dtype or shape that does not fit the layout.
        """
        qw, s, z, k = int4_format.gptq_to_canonical(qweight, scales, qzeros, group_size, in_features, zero_offset,
                                                     name="Int4Linear.from_gptq")
        mod = cls(k, qw.shape[0], bias=bias is not None, group_size=group_size, symmetric=False,
                  device=qweight.device)
        with torch.no_grad():
            mod.qweight.copy_(qw)
            mod.scales.copy_(s)
            mod.zeros.copy_(z)
            if bias is not None:
                mod.bias.copy_(bias.detach().float())
        mod.repack()
        return mod

    @classmethod
    def skeleton(cls, mod: nn.Linear, config: Int4) -> Int4Linear:
        """An empty Int4Linear with the shapes of float `mod`, for load_state_dict (compressops.load)."""
        return cls(mod.in_features, mod.out_features, bias=mod.bias is not None, group_size=config.group_size,
                   symmetric=config.symmetric, method=config.method, device=mod.weight.device)

    @property
    def config(self) -> Int4:
        return Int4(group_size=self.group_size, symmetric=self.symmetric, method=self.method)

    @property
    def format_label(self) -> str:
        """Short format description for compressops.report."""
        return f"int4 g{self.group_size} {'sym' if self.symmetric else 'asym'} ({self.method})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.int4_linear(x, self.weight_packed, self.out_features, self.bias)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] the layer holds: (q - z) * s."""
        return int4_format.dequantize(self.qweight, self.scales, self.zeros, self.in_features, self.group_size)

    def _after_move(self) -> None:
        if self.weight_packed is not None and self.weight_packed.device != self.qweight.device:
            self.repack()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight=int4 group_size={self.group_size} "
                f"{'symmetric' if self.symmetric else 'asymmetric'}, method={self.method}")


def _convert(mod: nn.Linear, config: Int4, name: str, calibration=None, prepared=None) -> Int4Linear:
    # calibration: the layer's input Hessian HessianObserver accumulated (method="gptq" only)
    return Int4Linear.from_float(mod, config, hessian=calibration, name=name)


register_family(Family(
    config=Int4, converts=(nn.Linear,), modules=(Int4Linear,), convert=_convert,
    make_observer=lambda config: HessianObserver(),
    examples={"int4": (Int4(group_size=32), "linear"),
              "int4_gptq_sym": (Int4(group_size=32, symmetric=True, method="gptq"), "linear")},
))
