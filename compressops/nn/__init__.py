"""Drop-in compressed modules."""

from .int8_linear import Int8Linear

__all__ = ["Int8Linear"]

# [int4 module]

# [sparse modules]

# [pq module]

# [binary modules]
from .binary import BinaryConv2d, BinaryLinear  # noqa: E402

__all__ += ["BinaryConv2d", "BinaryLinear"]
