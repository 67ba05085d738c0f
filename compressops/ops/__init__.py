"""Every compressops op, in four parts each: the schema (csrc/ops.cpp; its Python mirror
compressops/_schemas.py defines it when the native library is absent), a fake kernel, a
"default" kernel (the pure-PyTorch reference, used wherever no native kernel is registered) and a
typed public wrapper. A linear compute op also names its family's dense weight, which gives it the
gradients of x and bias (ops/_autograd.py).

One module per op family (ops/<family>.py) holds the family's fakes, default kernels and
wrappers; this package holds what they share and imports every one of them, re-exporting its
__all__ (so compressops.ops.<op> is the wrapper and a new family is a new module here).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import torch

from .. import _loader, _schemas
from ._autograd import register_input_grad

__all__ = ["native_kernels"]

_LIB = None


def _define_missing_schemas() -> None:
    """Without the native library, define the same schemas from Python so every op still exists."""
    global _LIB
    missing = [n for n in _schemas.SCHEMAS if not hasattr(torch.ops.compressops, n)]
    if not missing:
        return
    _LIB = torch.library.Library("compressops", "FRAGMENT")
    for name in missing:
        _LIB.define(name + _schemas.SCHEMAS[name])


_define_missing_schemas()


def native_kernels(op: str) -> list[str]:
    """Dispatch keys with a native (C++/CUDA) kernel for compressops::<op>, e.g. ["CPU"]."""
    lines = torch._C._dispatch_dump(f"compressops::{op}").splitlines()
    return [key for key in ("CPU", "CUDA") if any(ln.startswith(f"{key}: registered") and "library.py" not in ln
                                                   for ln in lines)]


TRITON_CUDA_OPS: dict[str, str] = {}  # op -> "compressops.triton.<module>.<fn>", its CUDA kernel


def _register_triton_cuda(op: str, module: str, fn: str) -> None:
    """Register compressops.triton.<module>.<fn> as the CUDA kernel of compressops::<op>.

    The Triton module is imported on the first CUDA call, never at import time. A native CUDA
    kernel (csrc/cuda) registered for the same op takes precedence: nothing is registered then.
    """
    if "CUDA" in native_kernels(op):
        return

    def cuda_kernel(*args, **kwargs):
        return getattr(importlib.import_module(f"compressops.triton.{module}"), fn)(*args, **kwargs)

    torch.library.register_kernel(f"compressops::{op}", "cuda", cuda_kernel)
    TRITON_CUDA_OPS[op] = f"compressops.triton.{module}.{fn}"


def _warning_once(op: str, default: Callable) -> Callable:
    """`default` that first warns (once per process) that the reference runs in place of the native
    library (compressops._loader.warn_fallback)."""

    def kernel(*args, **kwargs):
        _loader.warn_fallback(op)
        return default(*args, **kwargs)

    return kernel


def _register(op: str, fake: Callable, default: Callable, triton: str | None = None, *,
              dense_weight: Callable | None = None) -> None:
    """Register the fake and "default" kernels of compressops::<op> (and, given triton="<module>.<fn>",
    compressops.triton.<module>.<fn> as its CUDA kernel). Each family module calls this per op.

    A linear compute op passes dense_weight, its family's (op, packed, *family tensors) -> float32
    [N, K] (compressops/formats/<family>.py), and gets the gradients of x and bias (ops/_autograd.py).

    The fake is registered here, not in the family module, because csrc/ops.cpp declares
    m.set_python_module("compressops.ops") and torch checks that the fakes of C++-defined ops
    are registered from that very module.
    """
    torch.library.register_fake(f"compressops::{op}", fake)
    if not _loader.native_loaded():
        default = _warning_once(op, default)
    # "default" (CompositeExplicitAutograd), not CompositeImplicitAutograd: the reference stays one
    # opaque op in compiled graphs, and native CPU/CUDA kernels take precedence over it.
    torch.library.register_kernel(f"compressops::{op}", "CompositeExplicitAutograd", default)
    if triton is not None:
        _register_triton_cuda(op, *triton.split("."))
    if dense_weight is not None:
        register_input_grad(op, dense_weight)


for _family in pkgutil.iter_modules(__path__):
    _module = importlib.import_module(f"{__name__}.{_family.name}")
    globals().update({name: getattr(_module, name) for name in _module.__all__})
    __all__ += _module.__all__
