"""Shared test helpers: ISA levels to cover, opcheck settings, random non-degenerate data."""

import pytest
import torch

import compressops as co

NATIVE = co._loader.native_loaded()
requires_native = pytest.mark.skipif(not NATIVE, reason="native library not loaded")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# Every level this build has and this CPU can run; tests that loop over levels cover each one.
ISA_LEVELS = co.available_isas() if NATIVE else []

OPCHECK_UTILS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def isa_params():
    """pytest params for every runnable level, plus skipped placeholders for the ones this CPU lacks."""
    params = []
    for lv in ("scalar", "avx2", "avx512", "avx512_vnni", "amx"):
        marks = [] if lv in ISA_LEVELS else [pytest.mark.skip(reason=f"this CPU/build cannot run {lv}")]
        params.append(pytest.param(lv, marks=marks, id=lv))
    return params


def randn_nonzero(*shape, dtype=torch.float32):
    """Gaussian data with no exact zeros (a zero would hide sign and scale mistakes)."""
    x = torch.randn(*shape)
    x = torch.where(x == 0, torch.full_like(x, 0.5), x)
    return x.to(dtype)
