"""Int4Linear: the drop-in replacement of nn.Linear with group-wise 4-bit weights."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from .. import ops
from ..algorithms.gptq import HessianObserver, gptq_quantize
from ..configs import Family, Int4, register_family
from ..formats import int4 as int4_format
from .compressed_linear import CompressedLinear, meta_skeleton
from .embedding import Int4Embedding, unsupported_reason

__all__ = ["Int4Linear"]


class Int4Linear(CompressedLinear):
    """nn.Linear with 4-bit weights, one fp32 scale (and a 4-bit zero point) per group of
    `group_size` input channels of each output channel (compressops/formats/int4.py).

    Inputs: float32/bfloat16/float16 (..., in_features), any leading dims; the output has the
    input's dtype. The CPU kernels quantize each input row to int8 per group at run time (W4A8,
    about 0.5-1% relative error on top of the weight rounding).

    state_dict: qweight uint8 [out, K_pad/2], scales float32 [out, G], zeros uint8 [out, G]
    (asymmetric only), bias float32 [out] (if any): the canonical format. In memory the layer
    holds only the pack (`weight_packed`, not saved), which keeps every canonical byte; qweight,
    scales and zeros are properties that unpack them exactly (new tensors: to change the layer,
    load a state_dict). state_dict and load_state_dict translate, so the weight is never held twice.

    Example:
        >>> q = Int4Linear.from_float(torch.nn.Linear(256, 64), compressops.Int4(group_size=64))
        >>> y = q(torch.randn(4, 256))
    """

    __jit_unused_properties__ = [*CompressedLinear.__jit_unused_properties__, "qweight", "scales", "zeros"]

    _version = 1
    # group scales are max|w| or a range over 15: >= 0
    _value_bounds: ClassVar[dict[str, float | None]] = {"scales": 0.0}

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
        # an all-zero-weight layer (codes 0, scales 0), built without running the pack op
        self.register_buffer("weight_packed", int4_format.zero_pack(out_features, in_features, group_size, symmetric,
                                                                    device), persistent=False)
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)

    def _canonical(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(qweight, scales, zeros or None): the canonical tensors, unpacked bit for bit."""
        return int4_format.unpack_weight(self.weight_packed, "Int4Linear")[:3]

    @property
    def qweight(self) -> torch.Tensor:
        """uint8 [out, K_pad/2]: the canonical codes, unpacked from the pack (a new tensor)."""
        return self._canonical()[0]

    @property
    def scales(self) -> torch.Tensor:
        """float32 [out, G]: the canonical scales, unpacked from the pack (a new tensor)."""
        return self._canonical()[1]

    @property
    def zeros(self) -> torch.Tensor | None:
        """uint8 [out, G]: the canonical zero points (a new tensor), or None when symmetric (z = 8)."""
        return self._canonical()[2]

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
        if (skeleton := meta_skeleton(cls, mod, config)) is not None:
            return skeleton
        if config.method == "gptq":
            if hessian is None:
                raise ValueError(f"{label}: Int4(method='gptq') needs calibration inputs; pass calibration_data "
                                 f"to compressops.convert")
            qw, s, z = gptq_quantize(mod.weight, hessian, config.group_size, config.symmetric, name=label)
        else:
            qw, s, z = int4_format.quantize_weight(mod.weight, config.group_size, config.symmetric, name=label)
        q = cls(mod.in_features, mod.out_features, bias=mod.bias is not None, group_size=config.group_size,
                symmetric=config.symmetric, method=config.method, device=mod.weight.device)
        q.weight_packed = ops.int4_pack_weight(qw, s, z, mod.in_features, config.group_size)
        if mod.bias is not None:
            q.bias.copy_(mod.bias.detach().float())
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
        mod.weight_packed = ops.int4_pack_weight(qw, s, z, k, group_size)
        if bias is not None:
            mod.bias.copy_(bias.detach().float())
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
        return ops.int4_linear(x, self.weight_packed, self.bias)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [out, in] the layer holds: (q - z) * s."""
        return int4_format.dequantize(*self._canonical(), self.in_features, self.group_size)

    def compressed_bytes(self) -> int:
        """Bytes of the stored format (the state_dict's canonical tensors and bias)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def _canonical_spec(self):
        kp = int4_format.padded_k(self.in_features, self.group_size)
        groups = (self.out_features, kp // self.group_size)
        spec = {"qweight": (torch.uint8, (self.out_features, kp // 2)), "scales": (torch.float32, groups)}
        if not self.symmetric:  # a symmetric layer has no zeros: the base class reports one as unexpected
            spec["zeros"] = (torch.uint8, groups)
        return spec

    def _canonical_state(self):
        qweight, scales, zeros = self._canonical()
        return {"qweight": qweight, "scales": scales, **({"zeros": zeros} if zeros is not None else {})}

    def _check_canonical(self, tensors):
        if "zeros" in tensors and int(tensors["zeros"].max()) > 15:
            return f"zeros: zero points must lie in [0, 15], the checkpoint holds {int(tensors['zeros'].max())}"
        return None

    def _pack_canonical(self, tensors):
        self.weight_packed = ops.int4_pack_weight(tensors["qweight"], tensors["scales"], tensors.get("zeros"),
                                                  self.in_features, self.group_size)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight=int4 group_size={self.group_size} "
                f"{'symmetric' if self.symmetric else 'asymmetric'}, method={self.method}")


def _convert(mod: nn.Module, config: Int4, name: str, calibration=None, prepared=None) -> nn.Module:
    if isinstance(mod, nn.Embedding):  # no activations to calibrate with: round to nearest
        return Int4Embedding.from_float(mod, config, name=name)
    # calibration: the layer's input Hessian HessianObserver accumulated (method="gptq" only)
    return Int4Linear.from_float(mod, config, hessian=calibration, name=name)


def _unsupported(config: Int4, mod: nn.Module) -> str | None:
    if isinstance(mod, nn.Embedding):
        if not config.embeddings:
            return "Int4(embeddings=False) leaves embeddings dense (Int4(..., embeddings=True) converts them)"
        return unsupported_reason(mod)
    return None


register_family(Family(
    config=Int4, converts=(nn.Linear, nn.Embedding), modules=(Int4Linear, Int4Embedding), convert=_convert,
    unsupported_reason=_unsupported,
    make_observer=lambda config: HessianObserver(),
    examples={"int4": (Int4(group_size=32), "linear"),
              "int4_gptq_sym": (Int4(group_size=32, symmetric=True, method="gptq"), "linear")},
))
