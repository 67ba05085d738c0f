"""Shared test helpers: ISA levels to cover, opcheck settings, random non-degenerate data."""

import os
import platform
import struct

import pytest
import torch

import compressops as co
from compressops.isa import EMULATED_SUFFIX, emulated_isas, kernel_level_for, levels, runnable_isa

NATIVE = co._loader.native_loaded()
requires_native = pytest.mark.skipif(not NATIVE, reason="native library not loaded")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# Native levels this build has and this CPU can run.
ISA_LEVELS = co.available_isas() if NATIVE else []
X86_64 = platform.machine().lower() in ("x86_64", "amd64")

OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


# COMPRESSOPS_TEST_CPU=<level> makes the tests treat this CPU as one whose highest level is <level>: the
# levels above run their emulated builds, as on a CPU that lacks them (e.g. COMPRESSOPS_TEST_CPU=avx2 shows,
# on an AVX-512 machine, what an AVX2-only CI run runs and how long it takes).
TEST_CPU = os.environ.get("COMPRESSOPS_TEST_CPU") or None


def _runnable(level: str) -> str:
    if TEST_CPU is not None and levels().index(level) > levels().index(TEST_CPU):
        emulated = level + EMULATED_SUFFIX
        return emulated if emulated in emulated_isas() else ""
    return runnable_isa(level)


def isa_params():
    """pytest params for every level: the level itself where this CPU has it, "<level>+emulated" where
    it lacks it. Nothing is skipped for lack of a level on x86-64: a level that neither runs natively
    nor has an emulated build here stays in the list under its own name, and the test fails when it
    cannot select it (a build without simde-py). Only a build without the native library, or a
    non-x86 machine, skips them."""
    params = []
    for lv in levels():
        choice = _runnable(lv) if NATIVE else ""
        if choice:
            params.append(pytest.param(choice, id=choice))
        elif NATIVE and X86_64:
            params.append(pytest.param(lv, id=lv))
        else:
            params.append(pytest.param(lv, id=lv, marks=pytest.mark.skip(reason=f"no native library or not x86-64: {lv}")))
    return params


def expected_kernel_level(op: str, level: str) -> str:
    """The level _last_kernel_isa(op) must report after a call at `level` (derived from _kernel_isas)."""
    return kernel_level_for(op, level)


def randn_nonzero(*shape, dtype=torch.float32):
    """Gaussian data with no exact zeros (a zero would hide sign and scale mistakes)."""
    x = torch.randn(*shape)
    x = torch.where(x == 0, torch.full_like(x, 0.5), x)
    return x.to(dtype)


def grad_leaf(t):
    """A copy of `t` that requires grad (an autograd leaf): gradient tests and opcheck samples."""
    return t.detach().clone().requires_grad_()


def call_both(fn_native, fn_ref, *args, **kwargs):
    """The first lines of the native op's and of the reference's errors for the same bad call (the
    contract: the same message from both)."""
    messages = []
    for fn in (fn_native, fn_ref):
        with pytest.raises((ValueError, RuntimeError)) as e:
            fn(*args, **kwargs)
        messages.append(str(e.value).splitlines()[0])
    return messages


def tampered(packed, offset, fmt, value):
    """A copy of `packed` with struct.pack(fmt, value) written at byte `offset` of its flat bytes."""
    bad = packed.clone()
    raw = struct.pack(fmt, value)
    bad.view(-1)[offset:offset + len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
    return bad


NON_FINITE = [pytest.param(v, id=name) for v, name in ((float("inf"), "inf"), (-float("inf"), "-inf"),
                                                        (float("nan"), "nan"))]


def non_finite_x(value: float, m: int, k: int) -> torch.Tensor:
    """float32 x [m, k] (k >= 6) holding `value` twice in row 0 and once in row m - 1; with m >= 3 the
    rows between stay finite."""
    x = randn_nonzero(m, k)
    x[0, 1] = x[0, k - 2] = value
    x[m - 1, 5] = value
    return x


def same_non_finite(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Asserts y has ref's dtype, shape and non-finite pattern (NaN, +Inf, -Inf); returns the mask of
    the finite outputs."""
    assert y.dtype == ref.dtype and y.shape == ref.shape, (y.dtype, ref.dtype, y.shape, ref.shape)
    for test in (torch.isnan, torch.isposinf, torch.isneginf):
        assert torch.equal(test(y), test(ref)), f"{test.__name__} pattern differs"
    return torch.isfinite(ref)
