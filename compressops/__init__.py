"""compressops: fast kernels and drop-in modules for compressed neural-network layers.

    import compressops as co
    model = co.convert(model, co.Int8())
    print(co.report(model))
"""

from . import _loader  # noqa: F401  (first: loading the native library registers the op schemas)
from . import ops  # noqa: F401  (fakes and reference kernels for every op)
from . import nn  # noqa: F401
from .configs import Int8
# [family configs]  (one import line per family below, and extend __all__ at the end)
from .configs import Int4
from .convert import convert
from .io import load, save
from .isa import available_isas, cpu_isa, detected_isa, isa, set_isa
from .report import report

__version__ = "0.1.0"


def info() -> dict:
    """Build info, load status, CPU ISA levels and per-op kernels (see compressops.info)."""
    from .info import info as _info

    return _info()


__all__ = ["Int8", "convert", "report", "save", "load", "info", "isa", "detected_isa", "available_isas",
           "cpu_isa", "set_isa", "nn", "ops"]

# [int4 exports]
__all__ += ["Int4"]

# [sparse exports]
from .configs import CSR, Sparse24  # noqa: E402

__all__ += ["Sparse24", "CSR"]

# [pq exports]
from .configs import PQ  # noqa: E402
__all__ += ["PQ"]

# [binary exports]
from .configs import Binary  # noqa: E402

__all__ += ["Binary"]
