"""Binary: 1-bit weights (and activations), XNOR-popcount kernels (compressops.nn.BinaryConv2d/BinaryLinear)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from . import Config

_SCALES = ("channel", "none")


@dataclass(frozen=True)
class Binary(Config, format_name="binary"):
    """Binary (1-bit) weights, XNOR-popcount kernels (DESIGN.md section 4, compressops/formats/binary.py).

    Args:
        scale: "channel" (default): one fp32 scale per output channel, alpha = mean |w|;
            "none": alpha = 1 (pure +-1 weights).
        binarize_activations: True (default): activations are binarized at run time too (W1A1,
            XNOR-popcount kernels); False: activations stay float and the layer computes
            conv/linear(x, sign(w)) * alpha + bias (W1A32, additions and subtractions only).
        keep_first_last: leave the model's first and last convertible layer dense (the usual BNN
            recipe); compressops.convert applies it through model_filter.
    """

    scale: str = "channel"
    binarize_activations: bool = True
    keep_first_last: bool = True

    model_filter_reason: ClassVar[str] = "Binary(keep_first_last=True): first and last layer stay float"

    def __post_init__(self):
        if self.scale not in _SCALES:
            raise ValueError(f"Binary(scale={self.scale!r}): scale must be one of {', '.join(_SCALES)}")
