"""Drop-in compressed modules."""

from .int8_linear import Int8Linear

__all__ = ["Int8Linear"]

# [int4 module]

# [sparse modules]

# [pq module]
from .pq_linear import PQLinear  # noqa: E402
__all__ += ["PQLinear"]

# [binary modules]
