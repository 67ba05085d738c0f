"""Drop-in compressed modules."""

from .int8_linear import Int8Linear

__all__ = ["Int8Linear"]

# [int4 module]
from .int4_linear import Int4Linear  # noqa: E402

__all__ += ["Int4Linear"]

# [sparse modules]
from .sparse_linear import CSRLinear, Sparse24Linear  # noqa: E402

__all__ += ["Sparse24Linear", "CSRLinear"]

# [pq module]
from .pq_linear import PQLinear  # noqa: E402
__all__ += ["PQLinear"]

# [binary modules]
from .binary import BinaryConv2d, BinaryLinear  # noqa: E402
from .binary_chain import BinaryChain  # noqa: E402

__all__ += ["BinaryConv2d", "BinaryLinear", "BinaryChain"]
