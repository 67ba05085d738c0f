"""Routes of the sparse linear ops: read the process's setting, force one (tests, benchmarks, other CPUs).

At large batches the 2:4 and CSR ops may decode the weight a block of rows at a time and run a dense
GEMM instead of their sparse kernel (`last_kernel_isa` then reports "dense"), from batch sizes
fitted per family and CPU level on one machine (csrc/cpu/kernels/<family>/policy.h). The route is
one of ROUTES:

    "auto"    each op's fitted rule (the default);
    "kernel"  always the sparse kernel;
    "dense"   always the dense GEMM on the decoded weight.

Whatever the route, a call of sparse24_linear or csr_linear whose x holds a NaN or Inf takes the dense
route: the op computes the dense layer it replaces, x @ W.T + bias with the decoded W (as nn.Linear
and the reference), where an Inf meets the zeros the sparse kernel skips (Inf * 0 = NaN), so a result
never depends on the route or the batch size. (sparse24_int8_linear defines its own NaN rows.)

COMPRESSOPS_SPARSE_ROUTE=auto|kernel|dense sets it when the process starts: the native library reads
the variable once, at the first sparse call (or the first `current_sparse_route()`), as it reads
COMPRESSOPS_ISA; changing the environment later has no effect. `set_sparse_route` and the
`sparse_route` context manager change it at run time.

`set_sparse_route` changes the route of the whole process; the `sparse_route` context manager
changes it for the calling thread only, so contexts in several threads never leave the process changed.
"""

from __future__ import annotations

import contextlib

import torch

from . import _loader

ROUTES = ("auto", "kernel", "dense")


def current_sparse_route() -> str:
    """The calling thread's route of the 2:4 and CSR ops (its sparse_route context's, else the
    process's): "auto", "kernel" or "dense" ("auto" without the native library, whose reference ops
    have no routes).

    Raises:
        RuntimeError: COMPRESSOPS_SPARSE_ROUTE holds something else (and no route was set since).
    """
    if not _loader.native_loaded():
        return "auto"
    return torch.ops.compressops._thread_sparse_route() or torch.ops.compressops._sparse_route()


def set_sparse_route(route: str) -> None:
    """Force the route of the 2:4 and CSR ops for this process (every thread); "auto" restores each
    op's own rule.

    Raises:
        ValueError: `route` is not one of ROUTES.
        RuntimeError: no native library.
    """
    _check_route(route)
    torch.ops.compressops._set_sparse_route(route)


def _check_route(route: str) -> None:
    if route not in ROUTES:
        raise ValueError(f"unknown sparse route {route!r}; expected one of {', '.join(ROUTES)}")
    if not _loader.native_loaded():
        raise RuntimeError(f"cannot set the sparse route to {route!r}: the native library is not loaded "
                           f"({_loader.load_error()})")


@contextlib.contextmanager
def sparse_route(route: str):
    """Context manager that runs its body with the 2:4 and CSR ops on `route` ("auto", "kernel" or
    "dense") on the calling thread and restores that thread's previous setting after. Other threads
    keep their route. A float op's call whose x holds NaN or Inf takes the dense route even under
    "kernel" (see the module docstring).

    Example:
        >>> with compressops.sparse_route("kernel"):   # the sparse kernel even at large batches
        ...     y = layer(x)
    """
    _check_route(route)
    previous = torch.ops.compressops._thread_sparse_route()
    torch.ops.compressops._set_thread_sparse_route(route)
    try:
        yield
    finally:
        torch.ops.compressops._set_thread_sparse_route(previous)
