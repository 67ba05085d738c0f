"""CPU ISA levels: read the active one, force another (tests, benchmarks, comparisons).

Levels, lowest first: scalar, avx2, avx512, avx512_vnni, amx (the native library's list,
csrc/cpu/isa_levels.def). The active level is the highest this CPU and OS support, lowered by
COMPRESSOPS_ISA (or torch's ATEN_CPU_CAPABILITY) if set. An op without a kernel at the active level
uses the next level down that it has.

Emulated levels: the avx512, avx512_vnni and amx kernels are also built at the AVX2 baseline against
SIMDe and an AMX emulation header, so they run on any x86-64 CPU, slowly. They are used only when
asked for: `COMPRESSOPS_ISA=amx+emulated`, `set_isa("amx+emulated")` or
`cpu_isa("amx", emulated=True)`; `isa()` then returns "amx+emulated". A test and development tool:
speed under emulation means nothing.

`set_isa` changes the level of the whole process; the `cpu_isa` context manager changes it for the
calling thread only (ops choose their level on the thread that calls them), so contexts entered in
several threads at once never leave the process on another level.
"""

from __future__ import annotations

import contextlib

import torch

from . import _loader

EMULATED_SUFFIX = "+emulated"
# The documented order; the native library's own list (_cpu_isa_levels) is authoritative when loaded.
_DEFAULT_LEVELS = ("scalar", "avx2", "avx512", "avx512_vnni", "amx")


def levels() -> tuple[str, ...]:
    """Every level name, lowest first."""
    if not _loader.native_loaded():
        return _DEFAULT_LEVELS
    return tuple(torch.ops.compressops._cpu_isa_levels())


LEVELS = _DEFAULT_LEVELS


def isa() -> str:
    """The active CPU ISA level ("avx2", "amx+emulated"), or "reference" without the native library."""
    if not _loader.native_loaded():
        return "reference"
    return torch.ops.compressops._cpu_isa()


def detected_isa() -> str:
    """The highest level this CPU and OS support (ignoring any override)."""
    if not _loader.native_loaded():
        return "reference"
    return torch.ops.compressops._detected_cpu_isa()


def compiled_isas() -> list[str]:
    """Levels this build compiled kernels for, natively, then "<level>+emulated" for each emulated build."""
    if not _loader.native_loaded():
        return []
    return list(torch.ops.compressops._compiled_cpu_isas())


def emulated_isas() -> list[str]:
    """The "<level>+emulated" choices this build has (empty when SIMDe was missing at build time)."""
    return [lv for lv in compiled_isas() if lv.endswith(EMULATED_SUFFIX)]


def available_isas() -> list[str]:
    """Native levels that are both compiled and runnable on this CPU, lowest first."""
    top = detected_isa()
    if top == "reference":
        return []
    order = levels()
    return [lv for lv in compiled_isas()
            if not lv.endswith(EMULATED_SUFFIX) and order.index(lv) <= order.index(top)]


def runnable_isa(level: str) -> str:
    """How this machine runs `level`: the level itself where the CPU has it, else "<level>+emulated"
    where this build emulates it, else "" (not runnable here)."""
    if level in available_isas():
        return level
    emulated = level + EMULATED_SUFFIX
    return emulated if emulated in emulated_isas() else ""


def _checked_choice(level: str, emulated: bool) -> str:
    """The choice name "<level>[+emulated]" after the checks every selection shares."""
    name = level + EMULATED_SUFFIX if emulated and not level.endswith(EMULATED_SUFFIX) else level
    base = name[: -len(EMULATED_SUFFIX)] if name.endswith(EMULATED_SUFFIX) else name
    if base not in levels():
        raise ValueError(f"unknown CPU ISA level {level!r}; expected one of {', '.join(levels())}")
    if not _loader.native_loaded():
        raise RuntimeError(f"cannot select CPU ISA {name!r}: the native library is not loaded "
                           f"({_loader.load_error()})")
    return name


def _set(setter, name: str) -> None:
    try:
        setter(name)
    except RuntimeError as e:
        if "has no emulated build" in str(e):
            raise ValueError(str(e).splitlines()[0]) from None
        raise


def set_isa(level: str, emulated: bool = False) -> None:
    """Force the active level for this process (every thread without a cpu_isa context).
    `level` may carry "+emulated".

    Raises:
        ValueError: an unknown level name, or emulation asked for a level that has no emulated build.
        RuntimeError: a native level above what this CPU has, an emulated level this build lacks, or
            no native library.
    """
    _set(torch.ops.compressops._set_cpu_isa, _checked_choice(level, emulated))


def last_kernel_isa(op: str) -> str:
    """The level the last CPU call of `op` ran on ("" if it has not run), e.g. "avx2" or
    "avx512_vnni+emulated".

    The 2:4, CSR and PQ ops at large batches may instead report "dense": they decoded the weight
    and ran torch's GEMM, because that was cheaper than their own kernel there.
    """
    if not _loader.native_loaded():
        return ""
    return torch.ops.compressops._last_kernel_isa(op)


def kernel_isas(op: str) -> list[str]:
    """Levels `op` has CPU kernels for in this build, lowest first (natively or emulated)."""
    if not _loader.native_loaded():
        return []
    return list(torch.ops.compressops._kernel_isas(op))


def kernel_level_for(op: str, level: str) -> str:
    """The level `op` runs at when `level` is active: the highest level at or below it that the op
    has a kernel for, keeping "+emulated" when that level is an emulated one.

    Example:
        >>> kernel_level_for("int4_linear", "avx512_vnni")   # int4 has scalar and avx2 kernels
        'avx2'
    """
    emulated = level.endswith(EMULATED_SUFFIX)
    base = level[: -len(EMULATED_SUFFIX)] if emulated else level
    order = levels()
    has = kernel_isas(op)
    for lv in reversed(order[: order.index(base) + 1]):
        if lv in has:
            # Under emulation, the levels with an emulated build run it; avx2 and scalar run natively.
            emu = emulated and lv + EMULATED_SUFFIX in emulated_isas()
            return lv + EMULATED_SUFFIX if emu else lv
    return ""


@contextlib.contextmanager
def cpu_isa(level: str, emulated: bool = False):
    """Context manager that runs its body at `level` (emulated if asked) on the calling thread and
    restores that thread's previous level after. Other threads keep their level.

    Example:
        >>> with compressops.cpu_isa("avx2"):
        ...     y = layer(x)
        >>> with compressops.cpu_isa("amx", emulated=True):   # AMX kernels on any x86-64 CPU
        ...     y = layer(x)
    Raises:
        ValueError: as set_isa.
        RuntimeError: as set_isa.
    """
    name = _checked_choice(level, emulated)
    previous = torch.ops.compressops._thread_cpu_isa()
    _set(torch.ops.compressops._set_thread_cpu_isa, name)
    try:
        yield
    finally:
        torch.ops.compressops._set_thread_cpu_isa(previous)
