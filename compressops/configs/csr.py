"""CSR: unstructured sparsity in compressed sparse rows (compressops.nn.CSRLinear)."""

from __future__ import annotations

from dataclasses import dataclass

from . import Config
from ._dtype import dtype_name, torch_dtype


@dataclass(frozen=True)
class CSR(Config, format_name="csr"):
    """Unstructured sparsity stored as CSR (row pointer, 16/32-bit columns, values).

    Args:
        sparsity: fraction of weights set to zero by magnitude (e.g. 0.9), or None to keep the
            zeros the weight already has (a model pruned beforehand).
        scope: "layer" prunes each layer to `sparsity`; "global" uses one magnitude threshold over
            all layers compressops.convert converts with this config (so sparsity varies per layer).
        dtype: value dtype: None keeps the layer's float dtype (float32 or bfloat16), or
            torch.float32 / torch.bfloat16.
    """

    sparsity: float | None = None
    scope: str = "layer"
    dtype: object = None

    def __post_init__(self):
        if self.sparsity is not None and not (0.0 <= float(self.sparsity) < 1.0):
            raise ValueError(f"CSR(sparsity={self.sparsity!r}): sparsity must be None or in [0, 1)")
        if self.scope not in ("layer", "global"):
            raise ValueError(f"CSR(scope={self.scope!r}): scope must be 'layer' or 'global'")
        object.__setattr__(self, "dtype", dtype_name(self.dtype, "CSR", ("float32", "bfloat16")))

    def torch_dtype(self, default=None):
        """The value torch.dtype, or `default` when dtype is None."""
        return torch_dtype(self.dtype, default)
