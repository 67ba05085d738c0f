"""Loads the native library (compressops._C -> libcompressops_ops.so). Never raises.

When the library is missing, built for another torch, or disabled with
COMPRESSOPS_DISABLE_EXTENSION=1, every op still works through its pure-PyTorch reference;
`load_error()` says why, and `python -m compressops.info` prints it.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from pathlib import Path

import torch

_log = logging.getLogger("compressops")
_PKG = Path(__file__).parent
_state: dict = {"loaded": False, "error": None, "build_info": None}


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
            f"{torch.__version__} is running; rebuild with `pip install --no-build-isolation -e .`"
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


def native_loaded() -> bool:
    """True when the native library loaded and registered its kernels."""
    return _state["loaded"]


def load_error() -> str | None:
    """Why the native library is not in use, or None when it is."""
    return _state["error"]


_load()
