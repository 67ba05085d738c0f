"""Sparse24: 2:4 semi-structured sparsity (compressops.nn.Sparse24Linear)."""

from __future__ import annotations

from dataclasses import dataclass

from . import Config
from ._dtype import dtype_name, torch_dtype


@dataclass(frozen=True)
class Sparse24(Config, format_name="sparse24"):
    """2:4 semi-structured sparsity: the 2 largest |w| of every 4 along K are kept (DESIGN.md section 4).

    A weight that already has a 2:4 pattern keeps it exactly. Magnitude pruning without fine-tuning
    costs accuracy; prune and fine-tune with compressops.algorithms.pruning first for the best results.

    Args:
        dtype: kept-value dtype: None keeps the layer's float dtype (float32, or bfloat16 for a
            bfloat16 layer), torch.float32 / torch.bfloat16, or torch.int8 (per-channel scales,
            activations quantized to int8 per row at run time).
    """

    dtype: object = None

    def __post_init__(self):
        object.__setattr__(self, "dtype", dtype_name(self.dtype, "Sparse24", ("float32", "bfloat16", "int8")))

    def torch_dtype(self, default=None):
        """The kept-value torch.dtype, or `default` when dtype is None."""
        return torch_dtype(self.dtype, default)
