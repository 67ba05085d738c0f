"""Pure-PyTorch definition of every compressops op: the spec, the fallback kernel, the test oracle.

One module per op family (reference/<family>.py). This package imports every one of them and
re-exports its __all__, so compressops.reference.<op> names each op's reference and a new family
is a new module here, nothing else.

Each function takes the op's arguments, validates them with its family's one validation function
(the `check_*` functions of compressops/formats/<family>.py, which the fake and Triton kernels
call too) and computes in float32/int32/float64 with plain torch. Integer accumulations are done
in float64, which is exact for every product sum these formats allow (|sum| < 2^53). Kernels must
match these functions bit for bit on integer paths.
"""

from __future__ import annotations

import importlib
import pkgutil

__all__: list[str] = []
for _family in pkgutil.iter_modules(__path__):
    _module = importlib.import_module(f"{__name__}.{_family.name}")
    globals().update({name: getattr(_module, name) for name in _module.__all__})
    __all__ += _module.__all__
