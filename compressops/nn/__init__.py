"""Drop-in compressed modules."""

from .int8_linear import Int8Linear

__all__ = ["Int8Linear"]

# [int4 module]

# [sparse modules]
from .sparse_linear import CSRLinear, Sparse24Linear  # noqa: E402

__all__ += ["Sparse24Linear", "CSRLinear"]

# [pq module]

# [binary modules]
