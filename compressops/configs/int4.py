"""Int4: group-wise 4-bit weights (compressops.nn.Int4Linear)."""

from __future__ import annotations

from dataclasses import dataclass

from . import Config

_METHODS = ("rtn", "gptq")


@dataclass(frozen=True)
class Int4(Config, format_name="int4"):
    """Group-wise 4-bit weights (DESIGN.md section 4); CPU kernels run W4A8.

    Args:
        group_size: input channels per scale/zero point: 32, 64, 128 (default) or 256.
        symmetric: zero point fixed at 8 (one scale per group, no zero points) instead of a
            per-group zero point (asymmetric, default).
        method: "rtn" (round to nearest) or "gptq" (error-compensated rounding with the inverse
            Hessian of each layer's inputs; needs `calibration_data` in compressops.convert).
        embeddings: also convert nn.Embedding layers (to compressops.nn.Int4Embedding: group-wise
            4-bit rows along the embedding dimension, round to nearest whatever `method` says: an
            embedding has no input activations to calibrate with). Off by default, as for Int8. A
            Linear whose weight is tied to an Embedding's stays dense under Int4 (its int4 pack
            cannot be shared by a gather); compressops.report says why.
    """

    group_size: int = 128
    symmetric: bool = False
    method: str = "rtn"
    embeddings: bool = False

    def __post_init__(self):
        if self.group_size not in (32, 64, 128, 256):
            raise ValueError(f"Int4(group_size={self.group_size!r}): group_size must be 32, 64, 128 or 256")
        if self.method not in _METHODS:
            raise ValueError(f"Int4(method={self.method!r}): method must be one of {', '.join(_METHODS)}")
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"Int4(symmetric={self.symmetric!r}): symmetric must be a bool")

    @property
    def needs_calibration(self) -> bool:
        return self.method == "gptq"
