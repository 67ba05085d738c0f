"""Loads the native library (compressops._C -> libcompressops_ops.so).

When the library is missing, built for another torch, or disabled with
COMPRESSOPS_DISABLE_EXTENSION=1, every op still works through its pure-PyTorch reference, many
times slower: `load_error()` says why, `python -m compressops.info` prints it, and the first op that
runs its reference instead warns once (NativeFallbackWarning). With COMPRESSOPS_REQUIRE_NATIVE=1
importing compressops raises ImportError instead of falling back.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
import warnings
from pathlib import Path

import torch

_log = logging.getLogger("compressops")
_PKG = Path(__file__).parent
_state: dict = {"loaded": False, "error": None, "build_info": None, "warned": False}


class NativeFallbackWarning(RuntimeWarning):
    """An op ran its pure-PyTorch reference because the native library is not loaded."""


def _editable() -> bool:
    """Whether this is a source checkout (built in place) rather than an installed wheel."""
    return (_PKG.parent / "setup.py").exists() and (_PKG.parent / "csrc").is_dir()


def rebuild_advice() -> str:
    """What to run so the native library matches the running torch."""
    if _editable():
        return "rebuild it in the checkout with `pip install --no-build-isolation -e .` (or `make build`)"
    built = (build_info() or {}).get("torch_version", "?")
    return (f"install the torch this compressops was built for (torch {_major_minor(built)}.*), or build "
            f"compressops from source against torch {torch.__version__}")


def build_info() -> dict | None:
    """The contents of _build_info.json written at build time, or None if there is none."""
    if _state["build_info"] is None:
        path = _PKG / "_build_info.json"
        if path.exists():
            try:
                _state["build_info"] = json.loads(path.read_text())
            except (OSError, ValueError):
                _state["build_info"] = None
    return _state["build_info"]


def _major_minor(v: str) -> str:
    return ".".join(v.split("+")[0].split(".")[:2])


def _load() -> None:
    if os.environ.get("COMPRESSOPS_DISABLE_EXTENSION") == "1":
        _state["error"] = "disabled by COMPRESSOPS_DISABLE_EXTENSION=1"
        return
    info = build_info()
    if info and _major_minor(info.get("torch_version", "")) != _major_minor(torch.__version__):
        _state["error"] = (
            f"native library was built for torch {info.get('torch_version')} but torch "
            f"{torch.__version__} is running; {rebuild_advice()}"
        )
        _log.warning("compressops: %s; using the pure-PyTorch reference kernels", _state["error"])
        return
    try:
        from . import _C  # noqa: F401  (loading it registers the ops)

        _state["loaded"] = True
    except Exception as e:  # any failure means "no native ops", never a failed import
        _state["error"] = f"{type(e).__name__}: {e}"
        if not (_PKG / "_C.abi3.so").exists() and not list(_PKG.glob("_C*.so")):
            _state["error"] = "native library not built (no compressops/_C*.so)"
        _log.warning("compressops: native ops unavailable (%s); using the pure-PyTorch reference kernels",
                     _state["error"])
        if os.environ.get("COMPRESSOPS_VERBOSE") == "1":
            _log.warning("%s", traceback.format_exc())


def _require() -> None:
    """COMPRESSOPS_REQUIRE_NATIVE=1: no silent fallback to the reference kernels."""
    if os.environ.get("COMPRESSOPS_REQUIRE_NATIVE") == "1" and not _state["loaded"]:
        raise ImportError(f"compressops: COMPRESSOPS_REQUIRE_NATIVE=1 but the native library is not loaded: "
                          f"{_state['error']}")


def warn_fallback(op: str) -> None:
    """Warn once per process that `op` (and every op after it) runs its pure-PyTorch reference."""
    if _state["loaded"] or _state["warned"]:
        return
    _state["warned"] = True
    advice = "" if "COMPRESSOPS_DISABLE_EXTENSION" in str(_state["error"]) else f"; {rebuild_advice()}"
    warnings.warn(f"compressops::{op} runs its pure-PyTorch reference kernel, many times slower than the "
                  f"native one (native library not loaded: {_state['error']}{advice}). "
                  f"Set COMPRESSOPS_REQUIRE_NATIVE=1 to make this an error.", NativeFallbackWarning)


def native_loaded() -> bool:
    """True when the native library loaded and registered its kernels."""
    return _state["loaded"]


def load_error() -> str | None:
    """Why the native library is not in use, or None when it is."""
    return _state["error"]


_load()
_require()
