"""CPU ISA levels: read the active one, force a lower one (tests, benchmarks, comparisons).

Levels, lowest first: scalar, avx2, avx512, avx512_vnni, amx. The active level is the highest
this CPU and OS support, lowered by COMPRESSOPS_ISA (or torch's ATEN_CPU_CAPABILITY) if set.
An op without a kernel at the active level uses the next level down that it has.
"""

from __future__ import annotations

import contextlib

import torch

from . import _loader

LEVELS = ("scalar", "avx2", "avx512", "avx512_vnni", "amx")


def isa() -> str:
    """The active CPU ISA level, or "reference" when the native library is not loaded."""
    if not _loader.native_loaded():
        return "reference"
    return torch.ops.compressops._cpu_isa()


def detected_isa() -> str:
    """The highest level this CPU and OS support (ignoring any override)."""
    if not _loader.native_loaded():
        return "reference"
    return torch.ops.compressops._detected_cpu_isa()


def compiled_isas() -> list[str]:
    """Levels this build compiled kernels for."""
    if not _loader.native_loaded():
        return []
    return list(torch.ops.compressops._compiled_cpu_isas())


def available_isas() -> list[str]:
    """Levels that are both compiled and runnable on this CPU, lowest first."""
    top = detected_isa()
    if top == "reference":
        return []
    return [lv for lv in compiled_isas() if LEVELS.index(lv) <= LEVELS.index(top)]


def set_isa(level: str) -> None:
    """Force the active level for this process. Raises if the CPU lacks it or the name is unknown."""
    if level not in LEVELS:
        raise ValueError(f"unknown CPU ISA level {level!r}; expected one of {', '.join(LEVELS)}")
    if not _loader.native_loaded():
        raise RuntimeError(f"cannot select CPU ISA {level!r}: the native library is not loaded "
                           f"({_loader.load_error()})")
    torch.ops.compressops._set_cpu_isa(level)


def last_kernel_isa(op: str) -> str:
    """The level the last CPU call of `op` ran on ("" if it has not run).

    `pq_linear` at large batches may instead report "dense": it decoded the weight and ran
    torch's GEMM, because building lookup tables would have cost more (see `pq_linear_cpu`).
    """
    if not _loader.native_loaded():
        return ""
    return torch.ops.compressops._last_kernel_isa(op)


@contextlib.contextmanager
def cpu_isa(level: str):
    """Context manager that runs its body at `level` and restores the previous level after.

    Example:
        >>> with compressops.cpu_isa("avx2"):
        ...     y = layer(x)
    """
    previous = isa()
    set_isa(level)
    try:
        yield
    finally:
        torch.ops.compressops._set_cpu_isa(previous)
